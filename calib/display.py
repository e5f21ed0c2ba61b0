"""Scanner-display knobs of the echo phantom: how a scanner shows the sector, never the tissue.

:class:`ScannerDisplay` (held by ``EchoPhantomConfig.display``) describes what a real
scanner's frame shows around the B-mode sector and the default phantom does not: the sector
smaller than the frame and off centre on a black canvas, a frame of fewer pixels than the
display (resolution loss), scanner text in the corners, a depth scale, the orientation
marker dot, a toolbar strip at the bottom, a sweeping ECG trace, a colour tint palette and
JPEG compression.  Every knob's default is neutral and a neutral display is not applied at
all, so a config with the default display renders the same frames and truth, bit for bit,
as before the knobs existed.

:func:`apply_display` runs last, on the rendered clip, in this order: place (resize by the
scale, paste into the canvas at the offset), ``native_scale`` (down and up again), palette
(tint the image), overlays (drawn in their own colours over the tinted image), chroma
subsampling (``ybr`` palette only) and JPEG.

Truth.  Only the placement moves anything, and the truth moves with it exactly (one
:class:`Placement`, used for images, flow and points).  Pixel centres follow the phantom's
convention (pixel (r, c) centre at (r, c) * spacing mm, ``SectorGeometry.pixel_grid_mm``)
and ``cv2.resize``'s half-pixel one: a point at pixel ``i`` of the rendered frame lands at
``(i + 0.5) * scale - 0.5 + offset`` of the canvas, and the new spacing is ``spacing /
scale``.  Masks are remade from the soft masks resized like the image (area average when
shrinking) and thresholded at 128, so hard and soft masks stay consistent; the flow is
resized linearly and multiplied by the scale (pixels of the canvas), zero outside the
placed image; mm points (centrelines) are mapped through the same pixel transform.  Strain
truths, phases and ED/ES frames do not change.  Overlays, palette, ``native_scale`` and JPEG
never change the truth (they are not tissue).

Frames stay (n, rows, cols) uint8 with the ``grey`` palette; every other palette gives RGB
(n, rows, cols, 3) uint8.  Random parts (text, layout, ECG sweep) come from their own
stream, derived from the clip's seed (:func:`display_rng`), so the clip is remade exactly
from its config.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import cv2
import numpy as np

from calib.errors import PhantomParameterError, require_choice, require_int_range, require_range

#: tint palettes; "grey" keeps single-channel frames, the others give RGB
PALETTES = ("grey", "grey_rgb", "bronze", "blue", "ybr")
#: stream key of the display's own random numbers (with the clip seed)
_DISPLAY_STREAM = 0xD15B
_FLAGS = ("text_overlay", "depth_scale", "marker_dot", "toolbar", "ecg_trace")
#: per-channel (gamma, gain) of each tint: channel = gain * grey ** gamma (grey in 0..1).
#: "ybr" is fitted to pydicom's examples_ybr_color.dcm (a faint cool grey), "bronze" and
#: "blue" are the sepia and blue maps scanners offer.
_TINTS = {
    "grey_rgb": ((1.0, 1.0, 1.0), (1.0, 1.0, 1.0)),
    "bronze": ((0.85, 1.0, 1.3), (1.0, 0.86, 0.68)),
    "blue": ((1.2, 1.06, 0.88), (0.8, 0.9, 1.0)),
    "ybr": ((1.05, 1.037, 1.0), (0.973, 0.998, 1.0)),
}


@dataclass(frozen=True)
class ScannerDisplay:
    """Scanner-display knobs (units in the names); the defaults are neutral (not applied)."""

    canvas_rows: int | None = None     # 32..2048: output frame rows (None = the rendered rows)
    canvas_cols: int | None = None     # 32..2048: output frame cols (None = the rendered cols)
    sector_scale: float = 1.0          # 0.1..1: rendered frame size in the canvas relative to
    #                                    the largest that fits (aspect kept; 1 = fits exactly)
    offset_rows_frac: float = 0.0      # -1..1: shift of the placed frame's centre, fraction of
    offset_cols_frac: float = 0.0      #   half the free margin (-1 = flush top / left)
    native_scale: float = 1.0          # 1..8: down- and upsample by this factor (a scanner
    #                                    frame of fewer pixels; 1 = none)
    text_overlay: bool = False         # scanner text in the top corners (preset, probe, MI, TIS)
    depth_scale: bool = False          # column of depth dots beside the sector and the depth (cm)
    marker_dot: bool = False           # green orientation marker beside the sector apex
    toolbar: bool = False              # strip of boxes with small text along the bottom
    ecg_trace: bool = False            # sweeping ECG (R peaks at end-diastole) near the bottom
    overlay_grey: float = 0.75         # 0..1: brightness of the overlays
    palette: str = "grey"              # tint: grey (single channel), grey_rgb, bronze, blue, ybr
    jpeg_quality: int | None = None    # 10..100: JPEG each frame at this quality (None = no JPEG)

    def __post_init__(self) -> None:
        for name in ("canvas_rows", "canvas_cols"):
            if getattr(self, name) is not None:
                require_int_range(name, getattr(self, name), 32, 2048)
        require_range("sector_scale", self.sector_scale, 0.1, 1.0)
        require_range("offset_rows_frac", self.offset_rows_frac, -1.0, 1.0)
        require_range("offset_cols_frac", self.offset_cols_frac, -1.0, 1.0)
        require_range("native_scale", self.native_scale, 1.0, 8.0)
        for name in _FLAGS:
            if not isinstance(getattr(self, name), (bool, np.bool_)):
                raise PhantomParameterError(f"{name}={getattr(self, name)!r} must be true or false")
        require_range("overlay_grey", self.overlay_grey, 0.0, 1.0)
        require_choice("palette", self.palette, PALETTES)
        if self.jpeg_quality is not None:
            require_int_range("jpeg_quality", self.jpeg_quality, 10, 100)

    @property
    def is_neutral(self) -> bool:
        return (self.canvas_rows is None and self.canvas_cols is None and self.sector_scale == 1.0
                and self.offset_rows_frac == 0.0 and self.offset_cols_frac == 0.0
                and self.native_scale == 1.0 and not any(getattr(self, f) for f in _FLAGS)
                and self.palette == "grey" and self.jpeg_quality is None)

    @property
    def has_overlays(self) -> bool:
        return any(getattr(self, f) for f in _FLAGS)

    def to_dict(self) -> dict:
        return {k: (bool(v) if k in _FLAGS else v) for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def coerce(cls, value) -> ScannerDisplay:
        if value is None:
            return cls()
        if isinstance(value, cls):
            return value
        return cls(**dict(value))


def display_rng(seed: int) -> np.random.Generator:
    """The display's own random stream of a clip (does not touch the clip's streams)."""
    return np.random.default_rng([int(seed), _DISPLAY_STREAM])


# ========================================================================= placement
@dataclass(frozen=True)
class Placement:
    """The rendered frame resized by ``scale`` and pasted at ``offset_px`` into the canvas.

    A point at pixel ``p`` of the rendered frame lands at ``(p + 0.5) * scale - 0.5 +
    offset_px`` (``cv2.resize``'s half-pixel convention, isotropic); the placed image covers
    canvas rows ``offset_px[0] .. + placed_shape[0]`` and the same for cols."""

    scale: float
    offset_px: tuple[int, int]       # (row, col) of the placed image's top-left pixel
    placed_shape: tuple[int, int]    # (rows, cols) of the resized image
    canvas_shape: tuple[int, int]    # (rows, cols) of the output frame

    @classmethod
    def fit(cls, display: ScannerDisplay, shape: tuple[int, int]) -> Placement:
        rows, cols = int(shape[0]), int(shape[1])
        out = (display.canvas_rows or rows, display.canvas_cols or cols)
        scale = display.sector_scale * min(out[0] / rows, out[1] / cols)
        if out == (rows, cols) and scale == 1.0:
            placed = (rows, cols)
        else:
            placed = cv2.resize(np.zeros((rows, cols), np.uint8), None, fx=scale, fy=scale,
                                interpolation=cv2.INTER_LINEAR).shape[:2]
        offset = tuple(int(round(0.5 * (o - p) * (1.0 + f))) for o, p, f in
                       zip(out, placed, (display.offset_rows_frac, display.offset_cols_frac)))
        return cls(float(scale), offset, tuple(placed), tuple(out))

    @property
    def is_identity(self) -> bool:
        return self.scale == 1.0 and self.offset_px == (0, 0) and self.placed_shape == self.canvas_shape

    def points_px(self, px: np.ndarray) -> np.ndarray:
        """[row, col] pixel positions (..., 2) of the rendered frame -> canvas pixels."""
        return (np.asarray(px, dtype=np.float64) + 0.5) * self.scale - 0.5 + np.asarray(self.offset_px, float)

    def points_mm(self, mm: np.ndarray, spacing_mm: float) -> np.ndarray:
        """[row, col] mm (from the rendered frame's pixel (0, 0)) -> mm of the canvas (NaN stays)."""
        return self.points_px(np.asarray(mm, dtype=np.float64) / spacing_mm) * (spacing_mm / self.scale)

    def image(self, img: np.ndarray, smooth: bool = True) -> np.ndarray:
        """One image (rows, cols[, channels]) resized and pasted on a zero canvas.

        ``smooth``: area average when shrinking (an image, a coverage), else linear
        interpolation (point samples: a flow field)."""
        if self.is_identity:
            return img.copy()
        interp = cv2.INTER_AREA if smooth and self.scale < 1.0 else cv2.INTER_LINEAR
        small = cv2.resize(img, None, fx=self.scale, fy=self.scale, interpolation=interp)
        out = np.zeros(self.canvas_shape + img.shape[2:], dtype=img.dtype)
        r0, c0 = self.offset_px
        h = min(small.shape[0], self.canvas_shape[0] - r0)
        w = min(small.shape[1], self.canvas_shape[1] - c0)
        out[r0:r0 + h, c0:c0 + w] = small[:h, :w]
        return out

    def images(self, stack: np.ndarray, smooth: bool = True) -> np.ndarray:
        return np.stack([self.image(a, smooth) for a in stack]) if len(stack) else \
            np.zeros((0,) + self.canvas_shape + stack.shape[3:], stack.dtype)


def map_truth(truth, placement: Placement, spacing_mm: float):
    """The truth (``calib.echo.EchoTruth``) of the placed frame: masks, flow and mm points
    through ``placement`` (module docstring); everything else as it is."""
    if placement.is_identity:
        return dataclasses.replace(truth)
    myo_s = placement.images(truth.myocardium_soft)
    cav_s = placement.images(truth.cavity_soft)
    sector = placement.image(truth.sector_mask.astype(np.uint8) * np.uint8(255)) >= 128
    disp = placement.images(truth.displacement.astype(np.float32), smooth=False) * np.float32(placement.scale)

    def pts(a):
        return None if a is None else placement.points_mm(a, spacing_mm)

    return dataclasses.replace(
        truth, myocardium=(myo_s >= 128).astype(np.uint8), cavity=(cav_s >= 128).astype(np.uint8),
        myocardium_soft=myo_s, cavity_soft=cav_s, displacement=disp.astype(np.float32),
        sector_mask=sector.astype(np.uint8), centreline_mm=pts(truth.centreline_mm),
        centreline_equal_mm=pts(truth.centreline_equal_mm),
        midwall_centreline_mm=pts(truth.midwall_centreline_mm))


# ========================================================================== overlays
_FONT = cv2.FONT_HERSHEY_SIMPLEX


def _ecg_mv(phase: np.ndarray, rr_s: float) -> np.ndarray:
    """A PQRST-like ECG (R = 1) at cardiac phases (cycles); the R peak at integer phase (ED)."""
    dt = (np.mod(np.asarray(phase, dtype=np.float64) + 0.5, 1.0) - 0.5) * rr_s
    waves = ((0.12, -0.16, 0.022), (-0.12, -0.028, 0.008), (1.0, 0.0, 0.010),
             (-0.25, 0.026, 0.009), (0.28, 0.3 * math.sqrt(rr_s), 0.045))
    return sum(a * np.exp(-0.5 * ((dt - c) / w) ** 2) for a, c, w in waves)


@dataclass
class _Layout:
    """Every random choice of the overlays, drawn in one fixed order (so switching one
    overlay on or off does not change the others)."""

    text_h_frac: float
    left_lines: list
    right_lines: list
    footer: str
    marker_side: int
    marker_dx_frac: float
    marker_dy_frac: float
    marker_r_frac: float
    toolbar_h_frac: float
    toolbar_w_frac: float
    toolbar_items: list
    ecg_colour: tuple
    ecg_row_frac: float
    ecg_amp_frac: float
    ecg_sweep_s: float
    ecg_t0_s: float
    ecg_noise: float


def _draw_layout(rng: np.random.Generator, heart_rate_bpm: float) -> _Layout:
    def pick(seq):
        return seq[int(rng.integers(len(seq)))]

    left = [pick(["PLA", "GE", "Adult", "Cardiac", "ECHO"]),
            pick(["Gen THI", "Res THI", "Pen", "Gen", "THI", "Harm"]),
            pick(["S", "M", "", "2D"])]
    right = [pick(["Crd", "Adult", "Card", "Echo"]),
             pick(["P21", "M5S", "S5-1", "X5-1", "3Sc", "4V", "P4-2"]),
             "", "MI", f"{rng.uniform(0.6, 1.5):.1f}", "TIS", f"{rng.uniform(0.2, 1.5):.1f}"]
    footer = pick([f"FR {int(rng.integers(30, 90))}Hz", f"HR {int(round(heart_rate_bpm))}bpm",
                   f"G {int(rng.integers(30, 70))}", f"DR {int(rng.integers(45, 75))}", ""])
    items = [pick(["Gen", "Res", "Pen"]), str(int(rng.integers(0, 4))), "Sector",
             pick(["MB Off", "MB On"]), pick(["On", "Off"]), f"Page {int(rng.integers(1, 4))}/3",
             pick(["Zoom", "Depth", "Gain", "Auto"])]
    ecg_colour = pick([(60, 255, 90), (255, 255, 60), (80, 255, 200)])
    return _Layout(
        text_h_frac=rng.uniform(0.018, 0.032), left_lines=left, right_lines=right, footer=footer,
        marker_side=1 if rng.random() < 0.8 else -1, marker_dx_frac=rng.uniform(0.05, 0.12),
        marker_dy_frac=rng.uniform(-0.01, 0.02), marker_r_frac=rng.uniform(0.006, 0.012),
        toolbar_h_frac=rng.uniform(0.04, 0.065), toolbar_w_frac=rng.uniform(0.6, 1.0),
        toolbar_items=items[:int(rng.integers(4, len(items) + 1))], ecg_colour=ecg_colour,
        ecg_row_frac=rng.uniform(0.82, 0.9), ecg_amp_frac=rng.uniform(0.025, 0.05),
        ecg_sweep_s=rng.uniform(1.5, 3.5), ecg_t0_s=rng.uniform(0.0, 4.0),
        ecg_noise=rng.uniform(0.0, 0.03))


class _Overlay:
    """Premultiplied RGB overlay (float-free: uint8 colour and alpha layers) for one canvas."""

    def __init__(self, shape: tuple[int, int]):
        self.rgb = np.zeros(shape + (3,), np.uint8)
        self.alpha = np.zeros(shape, np.uint8)

    def copy(self) -> _Overlay:
        o = _Overlay.__new__(_Overlay)
        o.rgb, o.alpha = self.rgb.copy(), self.alpha.copy()
        return o

    def text(self, s: str, org, scale: float, colour) -> None:
        if s:
            cv2.putText(self.rgb, s, org, _FONT, scale, colour, 1, cv2.LINE_AA)
            cv2.putText(self.alpha, s, org, _FONT, scale, 255, 1, cv2.LINE_AA)

    def circle(self, centre, r: int, colour) -> None:
        cv2.circle(self.rgb, centre, r, colour, -1, cv2.LINE_AA)
        cv2.circle(self.alpha, centre, r, 255, -1, cv2.LINE_AA)

    def rect(self, p0, p1, colour, filled: bool, alpha: int = 255) -> None:
        th = -1 if filled else 1
        cv2.rectangle(self.rgb, p0, p1, tuple(int(c * alpha / 255) for c in colour), th)
        cv2.rectangle(self.alpha, p0, p1, alpha, th)

    def polyline(self, pts_xy: np.ndarray, colour) -> None:
        if len(pts_xy) >= 2:
            p = [np.round(pts_xy * 4).astype(np.int32)]       # shift=2: quarter pixels
            cv2.polylines(self.rgb, p, False, colour, 1, cv2.LINE_AA, shift=2)
            cv2.polylines(self.alpha, p, False, 255, 1, cv2.LINE_AA, shift=2)

    def over(self, img: np.ndarray) -> np.ndarray:
        """Composite over ``img`` (rows, cols) grey or (rows, cols, 3) RGB uint8."""
        a = self.alpha.astype(np.float32) / 255.0
        if img.ndim == 2:
            fg = self.rgb.max(axis=-1).astype(np.float32)
            out = img.astype(np.float32) * (1.0 - a) + fg
        else:
            out = img.astype(np.float32) * (1.0 - a[..., None]) + self.rgb.astype(np.float32)
        return np.clip(out + 0.5, 0, 255).astype(np.uint8)


def _static_overlay(display: ScannerDisplay, lay: _Layout, shape, sector_px: dict) -> _Overlay:
    H, W = shape
    ov = _Overlay(shape)
    g = int(round(255 * display.overlay_grey))
    grey = (g, g, g)
    th = max(4.0, lay.text_h_frac * H)
    scale = th / cv2.getTextSize("X", _FONT, 1.0, 1)[0][1]
    step = int(round(1.6 * th))
    pad = max(2, int(round(0.01 * W)))
    if display.text_overlay:
        for i, s in enumerate(lay.left_lines):
            ov.text(s, (pad, int(round(th + 0.5 * th)) + i * step), scale, grey)
        for i, s in enumerate(lay.right_lines):
            w = cv2.getTextSize(s, _FONT, scale, 1)[0][0] if s else 0
            ov.text(s, (W - pad - w, int(round(th + 0.5 * th)) + i * step), scale, grey)
        ov.text(lay.footer, (pad, int(round(th + 0.5 * th)) + (len(lay.left_lines) + 1) * step),
                scale, grey)
    apex_r, apex_c = sector_px["apex"]
    if display.depth_scale:
        col = int(round(min(sector_px["right_col"] + 0.015 * W, W - 3)))
        cm = sector_px["cm_rows"]
        for k, r in enumerate(cm):
            if 0 <= r < H:
                rr = int(round(r))
                if k % 5 == 0:
                    ov.rect((col - 1, rr - 1), (col + 1, rr + 1), grey, True)
                else:
                    ov.rect((col, rr), (col, rr), grey, True)
        s = str(int(round(sector_px["depth_cm"])))
        w = cv2.getTextSize(s, _FONT, scale, 1)[0][0]
        ov.text(s, (max(0, col - 2 - w), int(round(min(cm[-1], H - 2)))), scale, grey)
    if display.marker_dot:
        r = max(1, int(round(lay.marker_r_frac * H)))
        c = (int(round(apex_c + lay.marker_side * lay.marker_dx_frac * W)),
             int(round(apex_r + lay.marker_dy_frac * H)))
        ov.circle(c, r, (int(0.3 * g), g, int(0.5 * g)))
    if display.toolbar:
        h = max(5, int(round(lay.toolbar_h_frac * H)))
        w = int(round(lay.toolbar_w_frac * W))
        x0, y0 = (W - w) // 2, H - h
        bg = (int(0.16 * g), int(0.18 * g), int(0.24 * g))
        ov.rect((x0, y0), (x0 + w - 1, H - 1), bg, True, alpha=235)
        n = len(lay.toolbar_items)
        bw = w / n
        ts = 0.8 * scale
        for i, s in enumerate(lay.toolbar_items):
            bx = int(round(x0 + i * bw))
            if i:
                ov.rect((bx, y0 + 1), (bx, H - 2), (int(0.45 * g),) * 3, True)
            ic = max(2, h // 3)
            ov.rect((bx + 3, y0 + h // 2 - ic // 2), (bx + 3 + ic, y0 + h // 2 + ic // 2),
                    (int(0.5 * g), int(0.6 * g), g), False)
            ov.text(s, (bx + 6 + ic, y0 + h // 2 + int(0.4 * th)), ts, grey)
    return ov


def _ecg_points(lay: _Layout, shape, t_s: float, phase0: float, rate_hz: float,
                rr_s: float) -> list[np.ndarray]:
    """The ECG polyline(s) (x, y) px at clip time ``t_s``: a sweep that writes left to right,
    with a gap erasing the previous sweep just ahead of the cursor."""
    H, W = shape
    x0, x1 = 0.08 * W, 0.92 * W
    width = x1 - x0
    gap = 0.04 * width
    x = np.arange(x0, x1, 0.5)
    cursor = x0 + (np.mod(t_s + lay.ecg_t0_s, lay.ecg_sweep_s) / lay.ecg_sweep_s) * width
    back = np.mod(cursor - x, width)                     # px behind the cursor
    age_s = back / width * lay.ecg_sweep_s
    ph = phase0 + (t_s - age_s) * rate_hz
    v = _ecg_mv(ph, rr_s) + lay.ecg_noise * np.sin(2 * np.pi * 0.3 * (t_s - age_s))
    y = lay.ecg_row_frac * H - lay.ecg_amp_frac * H * v
    keep = back <= width - gap
    xy = np.stack([x, y], axis=1)
    left, right = keep & (x <= cursor), keep & (x > cursor)
    return [xy[left], xy[right]]


# ============================================================================ apply
def _tint_lut(palette: str) -> np.ndarray:
    gam, gain = _TINTS[palette]
    g = np.arange(256, dtype=np.float64) / 255.0
    return np.stack([np.clip(255.0 * gn * g ** gm + 0.5, 0, 255) for gm, gn in zip(gam, gain)],
                    axis=-1).astype(np.uint8)             # (256, 3)


def _chroma_422(rgb: np.ndarray) -> np.ndarray:
    """Horizontal 2:1 chroma subsampling, as a YBR_FULL_422 frame is stored."""
    ycc = cv2.cvtColor(rgb, cv2.COLOR_RGB2YCrCb)
    h, w = ycc.shape[:2]
    ch = ycc[..., 1:].astype(np.float32)
    half = cv2.resize(ch, ((w + 1) // 2, h), interpolation=cv2.INTER_AREA)
    ycc[..., 1:] = np.clip(cv2.resize(half, (w, h), interpolation=cv2.INTER_LINEAR) + 0.5, 0, 255)
    return cv2.cvtColor(ycc, cv2.COLOR_YCrCb2RGB)


def _jpeg(img: np.ndarray, quality: int) -> np.ndarray:
    """JPEG round trip of one frame (RGB kept RGB: cv2 encodes BGR)."""
    params = [cv2.IMWRITE_JPEG_QUALITY, int(quality)]
    if img.ndim == 2:
        ok, buf = cv2.imencode(".jpg", img, params)
        return cv2.imdecode(buf, cv2.IMREAD_GRAYSCALE)
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(img, cv2.COLOR_RGB2BGR), params)
    return cv2.cvtColor(cv2.imdecode(buf, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


def _native(img: np.ndarray, factor: float) -> np.ndarray:
    """Down by ``factor`` (area) and up again (linear) onto the same pixel grid exactly."""
    h, w = img.shape[:2]
    low = cv2.resize(img, None, fx=1.0 / factor, fy=1.0 / factor, interpolation=cv2.INTER_AREA)
    m = np.array([[factor, 0.0, 0.5 * factor - 0.5], [0.0, factor, 0.5 * factor - 0.5]])
    return cv2.warpAffine(low, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


def _sector_px(geom, placement: Placement) -> dict:
    """Apex, right edge and 1-cm depth rows of the sector in canvas pixels."""
    sp = geom.spacing_mm
    apex = np.asarray(geom.apex_mm, dtype=np.float64)
    depths = np.arange(0.0, geom.depth_mm + 1e-9, 10.0)
    cm = placement.points_px(np.stack([apex[0] + depths, np.full_like(depths, apex[1])], 1) / sp)
    right = placement.points_px(np.array([apex[0], apex[1] + geom.depth_mm * math.sin(geom.half_angle_rad)]) / sp)
    a = placement.points_px(apex / sp)
    return {"apex": (float(a[0]), float(a[1])), "right_col": float(right[1]),
            "cm_rows": cm[:, 0], "depth_cm": geom.depth_mm / 10.0}


def apply_display(display: ScannerDisplay, frames: np.ndarray, truth, geom, fps: float,
                  rng: np.random.Generator, heart_rate_bpm: float | None = None):
    """Show a rendered clip as a scanner would; returns ``(frames, truth, spacing_mm)``.

    ``frames`` (n, rows, cols) uint8, ``truth`` its ``calib.echo.EchoTruth``, ``geom`` the
    clip's ``SectorGeometry`` (spacing, apex and depth: where the depth scale and marker go),
    ``fps`` and ``heart_rate_bpm`` time the ECG sweep (the heart rate defaults to the one of
    ``truth.phase``), ``rng`` the display's stream (:func:`display_rng`).  The frames come
    back grey (n, R, C) or RGB (n, R, C, 3) uint8 (``palette``), the truth mapped with the
    placement, and the canvas's pixel spacing in mm (module docstring)."""
    n = frames.shape[0]
    spacing = float(geom.spacing_mm)
    placement = Placement.fit(display, frames.shape[1:3])
    out = placement.images(frames)
    new_truth = map_truth(truth, placement, spacing)
    if display.native_scale != 1.0:
        out = np.stack([_native(f, display.native_scale) for f in out]) if n else out
    if heart_rate_bpm is None:
        ph = np.asarray(truth.phase, dtype=np.float64)
        heart_rate_bpm = (ph[1] - ph[0]) * fps * 60.0 if ph.size > 1 else 70.0
    lay = _draw_layout(rng, heart_rate_bpm)            # always drawn: a fixed stream order
    if display.palette != "grey":
        out = _tint_lut(display.palette)[out]            # (n, R, C, 3) RGB
    if display.has_overlays:
        static = _static_overlay(display, lay, placement.canvas_shape, _sector_px(geom, placement))
        rate = heart_rate_bpm / 60.0
        phase0 = float(truth.phase[0]) if len(truth.phase) else 0.0
        g = display.overlay_grey
        colour = tuple(int(round(c * g)) for c in lay.ecg_colour)
        for t in range(n):
            ov = static
            if display.ecg_trace:
                ov = static.copy()
                for seg in _ecg_points(lay, placement.canvas_shape, t / fps, phase0, rate, 1.0 / rate):
                    ov.polyline(seg, colour)
            out[t] = ov.over(out[t])
    if display.palette == "ybr":
        out = np.stack([_chroma_422(f) for f in out]) if n else out
    if display.jpeg_quality is not None:
        out = np.stack([_jpeg(f, display.jpeg_quality) for f in out]) if n else out
    return np.ascontiguousarray(out, dtype=np.uint8), new_truth, spacing / placement.scale


def grey_frames(frames: np.ndarray) -> np.ndarray:
    """Frames as the networks' grey plane: RGB (n, R, C, 3) uint8 -> luma (n, R, C) uint8
    through OpenCV, as the runtime's pre-processing does (``engines.spec.grey_plane``,
    which calib may not import); grey frames as they are."""
    if frames.ndim != 4:
        return frames
    return np.stack([cv2.cvtColor(np.ascontiguousarray(f), cv2.COLOR_RGB2GRAY) for f in frames])
