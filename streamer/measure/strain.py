"""Strain from tracked myocardial contours: GLS, regional strain, strain rate, beats, and
circumferential / radial strain of MR short-axis contours per AHA segment.

Arrays in, arrays out (numpy, scipy.signal).

Echo A4C (``points_mm``: N = 120 centreline points [row, col] mm, basal septum -> apex ->
basal lateral)
- l(t): arc length of the centreline polyline; GLS e(t) = (l(t) - l0) / l0 in %, l0 the
  length at the end-diastole (ED) that starts the current beat.
- Six regional segments of equal arc at ED, three per wall: at each ED (each reference
  frame) the tracked centreline is divided into six pieces of equal arc length
  (:func:`equal_arc_bounds`: fractional point indices, ~ k (N-1)/6 when the points are
  equally spaced then, i.e. for N = 120 about the points 0-19 basal septal, 20-39 mid
  septal, 40-59 apical septal, 60-79 apical lateral, 80-99 mid lateral, 100-119 basal
  lateral), and those fractional indices are kept through the beat.  Because the points
  are tracked, a segment follows the same myocardium; its strain is the relative change of
  its arc length against the same segment at ED.  The six lengths add up to l(t).
  (Re-dividing at every ED matters when the points are not equally spaced at ED: a track
  started mid-cycle, or points that slid along the wall; with a dysfunctional segment a
  boundary 0.5 mm off moves the regional value by ~0.5 %.)
- Definition (the same as the echo phantom's ``midwall_*`` truth, calib.echo): strain is
  measured on the **mid-wall** - the material layer halfway between endocardium and
  epicardium along the wall normal at ED (what :mod:`.centerline` extracts from the ED
  mask), its points followed through the cycle (:class:`.tracking.CentrelineTracker`);
  segments are thirds of each wall by ED arc length.  Layer matters: strain varies across
  the wall (more shortening towards the endocardium, ~1 strain-% per mm in the phantom),
  and a layer 0.3-0.8 mm off the mid-wall, varying along the wall, changes a regional value
  by up to ~0.6 %.
- Strain rate (1/s): (dl/dt) / l0, by finite differences over the timestamps (central
  offline, backward online).
- ED: from ECG R-wave flags when the stream has them, else at the maxima of a cycle curve
  (prominence at least ``prominence_frac`` of its range, at least ``min_beat_s`` apart):
  online, the LV cavity area where the caller gives it (``BeatConfig.ed_from``: the
  frame of the largest cavity, as echocardiography defines end-diastole without an ECG),
  else the centreline length.  ES: the frame of the most negative GLS of the
  beat; peak-systolic GLS is the GLS there; regional peaks are each segment's own most
  negative value in the beat.

MR short axis: see :func:`sax_strain` and :func:`aha_segment_ids`.
"""

from __future__ import annotations

import warnings
from collections import deque
from dataclasses import dataclass, field

import numpy as np
from scipy.ndimage import median_filter
from scipy.signal import find_peaks

from streamer.options import option
from streamer.vocab import A4C_SEGMENTS

# --------------------------------------------------------------------------------------
# lengths
# --------------------------------------------------------------------------------------


def polyline_length(points: np.ndarray) -> np.ndarray:
    """Arc length of (..., N, 2) polylines -> (...)."""
    p = np.asarray(points, dtype=np.float64)
    d = np.diff(p, axis=-2)
    return np.sqrt((d * d).sum(-1)).sum(-1)


def segment_bounds(n_points: int, n_segments: int = 6) -> np.ndarray:
    """Fractional point indices of the segment boundaries, (n_segments + 1,)."""
    return np.linspace(0.0, n_points - 1.0, n_segments + 1)


def equal_arc_bounds(points: np.ndarray, n_segments: int = 6) -> np.ndarray:
    """Fractional point indices (n_segments + 1,) that divide one polyline (N, 2) into
    n_segments pieces of equal arc length (the first 0, the last N - 1).

    Applied to the tracked points of an end-diastolic frame, these are the ED segment
    boundaries; kept fixed through the beat they are material, as the points are."""
    p = np.asarray(points, dtype=np.float64)
    n = p.shape[-2]
    seg = np.sqrt((np.diff(p, axis=-2) ** 2).sum(-1))
    if not np.all(np.isfinite(seg)):
        return segment_bounds(n, n_segments)
    cum = np.concatenate([[0.0], np.cumsum(seg)])
    if cum[-1] <= 0:
        return segment_bounds(n, n_segments)
    b = np.interp(np.linspace(0.0, cum[-1], n_segments + 1), cum, np.arange(n, dtype=np.float64))
    b[0], b[-1] = 0.0, n - 1.0
    return b


def segment_lengths(points: np.ndarray, n_segments: int = 6, bounds=None) -> np.ndarray:
    """Arc lengths of the n segments of (..., N, 2) polylines -> (..., n).

    ``bounds``: fractional point indices of the n + 1 boundaries (default: equal index
    spacing, :func:`segment_bounds`), one set for all, or one set per polyline
    (..., n + 1)."""
    p = np.asarray(points, dtype=np.float64)
    n = p.shape[-2]
    d = np.diff(p, axis=-2)
    seg = np.sqrt((d * d).sum(-1))  # (..., N-1): edge i joins point i and i+1
    cum = np.concatenate([np.zeros(seg.shape[:-1] + (1,)), np.cumsum(seg, axis=-1)], axis=-1)
    b = segment_bounds(n, n_segments) if bounds is None else np.asarray(bounds, dtype=np.float64)
    i0 = np.clip(np.floor(b).astype(int), 0, n - 2)
    f = b - i0
    if b.ndim == 1:
        at = cum[..., i0] + f * seg[..., i0]  # cumulative length at each fractional bound
    else:
        at = np.take_along_axis(cum, i0, -1) + f * np.take_along_axis(seg, i0, -1)
    return np.diff(at, axis=-1)


def strain_pct(length, length0) -> np.ndarray:
    """100 (l - l0) / l0."""
    length = np.asarray(length, dtype=np.float64)
    return 100.0 * (length - length0) / length0


# --------------------------------------------------------------------------------------
# beats
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BeatConfig:
    min_beat_s: float = 0.4  # shortest accepted RR interval (150 bpm)
    prominence_frac: float = 0.3  # ED peak prominence, fraction of the cycle curve's range
    smooth_s: float = 0.04  # moving-average window on the cycle curve for ED detection
    online_window_s: float = 4.0  # history the online detector looks back over
    median_frames: int = 5  # running median (odd) on the cycle curve: glitches of <= 2 frames
    ed_from: str = option(
        "cavity_area", "without an ECG, end-diastole is the frame of largest LV cavity "
        "(cavity_area: the segmenter's cavity, summed) or of the longest tracked centreline "
        "(length)", flag="--ed-from", choices=("cavity_area", "length"))

    def __post_init__(self):
        if self.ed_from not in ("cavity_area", "length"):
            raise ValueError(f"ed_from {self.ed_from!r} is unknown; choose cavity_area or length")


@dataclass
class Beat:
    """One cardiac cycle, ED to the next ED (end_index excluded).

    Indices are frame indices of the analysed sequence; regional values follow A4C_SEGMENTS.
    """

    index: int
    ed_index: int
    es_index: int
    end_index: int
    ed_t_s: float
    es_t_s: float
    duration_s: float
    ed_length_mm: float
    es_length_mm: float
    peak_gls_pct: float
    regional_peak_pct: np.ndarray
    regional_es_pct: np.ndarray
    ed_source: str
    flags: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {
            "index": self.index, "ed_index": self.ed_index, "es_index": self.es_index,
            "end_index": self.end_index, "ed_t_s": self.ed_t_s, "es_t_s": self.es_t_s,
            "duration_s": self.duration_s, "ed_length_mm": self.ed_length_mm,
            "es_length_mm": self.es_length_mm, "peak_gls_pct": self.peak_gls_pct,
            "regional_peak_pct": dict(zip(A4C_SEGMENTS, map(float, self.regional_peak_pct))),
            "regional_es_pct": dict(zip(A4C_SEGMENTS, map(float, self.regional_es_pct))),
            "ed_source": self.ed_source, "flags": list(self.flags),
        }


def _fill_nan(y: np.ndarray, t: np.ndarray) -> np.ndarray:
    ok = np.isfinite(y)
    if ok.all() or not ok.any():
        return y
    return np.interp(t, t[ok], y[ok])


def _debounce(idx: np.ndarray, t: np.ndarray, min_s: float) -> np.ndarray:
    out: list[int] = []
    for i in idx:
        if not out or t[i] - t[out[-1]] >= min_s:
            out.append(int(i))
    return np.asarray(out, dtype=int)


def ed_from_ecg(t_s: np.ndarray, ecg_r: np.ndarray, min_beat_s: float = 0.4) -> np.ndarray:
    """ED frame indices from per-frame R-wave flags (the first flag of each cluster)."""
    t = np.asarray(t_s, dtype=np.float64)
    return _debounce(np.flatnonzero(np.asarray(ecg_r, dtype=bool)), t, min_beat_s)


def ed_from_cycle(t_s: np.ndarray, curve: np.ndarray, config: BeatConfig | None = None,
                  confirmed_only: bool = False) -> np.ndarray:
    """ED frame indices at maxima of a cycle curve: the centreline length, or the LV
    cavity area.

    Maxima must stand out by ``prominence_frac`` of the curve's range (5th-95th
    percentile) and be ``min_beat_s`` apart (the higher one wins).  The first frame counts
    as a candidate (a clip that starts at ED); the last frame only when
    ``confirmed_only`` is False and it stands out like the others.

    The curve is first taken through a running median of ``median_frames`` frames (in
    frames, not seconds: a segmentation glitch is a frame's): up to two frames in a row
    whose mask lost or gained a piece neither make a maximum nor confirm one by their
    dip.  With ``confirmed_only`` the last frames, whose window is not complete
    yet, are left out (a maximum is confirmed half a window later).
    """
    cfg = config or BeatConfig()
    t = np.asarray(t_s, dtype=np.float64)
    L = _fill_nan(np.asarray(curve, dtype=np.float64), t)
    if len(L) < 3 or not np.all(np.isfinite(L)):
        return np.zeros(0, dtype=int)
    dt = float(np.median(np.diff(t))) if len(t) > 1 else 1.0
    m = max(1, int(cfg.median_frames) // 2 * 2 + 1)  # odd
    Lm = median_filter(L, size=m, mode="nearest")
    if confirmed_only:
        n = len(L) - m // 2
        if n < 3:
            return np.zeros(0, dtype=int)
        t, L, Lm = t[:n], L[:n], Lm[:n]
    w = max(1, int(round(cfg.smooth_s / max(dt, 1e-9))))
    if w > 1:
        k = np.ones(w) / w
        Ls = np.convolve(np.pad(Lm, (w // 2, w - 1 - w // 2), mode="edge"), k, mode="valid")
    else:
        Ls = Lm
    amp = float(np.percentile(Ls, 95) - np.percentile(Ls, 5))
    if amp <= 0:
        return np.zeros(0, dtype=int)
    low = Ls.min() - amp
    padded = np.concatenate([[low], Ls, [Ls[-1] if confirmed_only else low]])
    peaks, _ = find_peaks(padded, prominence=cfg.prominence_frac * amp)
    peaks = peaks - 1
    peaks = peaks[(peaks >= 0) & (peaks < len(L))]
    if confirmed_only:
        peaks = peaks[peaks < len(L) - 1]
    if len(peaks) == 0:
        return peaks.astype(int)
    # edge peaks only if as high as the interior ones (a clip starting mid-systole is not ED)
    interior = peaks[(peaks > 0) & (peaks < len(L) - 1)]
    if len(interior):
        floor = Ls[interior].min() - 0.25 * amp
        peaks = np.array([p for p in peaks if (0 < p < len(L) - 1) or Ls[p] >= floor], dtype=int)
    # refine within the median's and the smoothing's window on the raw curve (a median
    # flattens the cusp of end-diastole and can move its maximum by a frame or two; a
    # spike within that window can take it instead)
    h = max(w, m) // 2
    ref = []
    for p in peaks:
        a, b = max(0, p - h), min(len(L), p + h + 1)
        ref.append(a + int(np.argmax(L[a:b])))
    peaks = np.asarray(ref, dtype=int)
    # minimum separation, higher peak first
    order = np.argsort(-Lm[peaks])
    kept: list[int] = []
    for i in order:
        if all(abs(t[peaks[i]] - t[k]) >= cfg.min_beat_s for k in kept):
            kept.append(int(peaks[i]))
    return np.sort(np.asarray(kept, dtype=int))


# --------------------------------------------------------------------------------------
# offline analysis of an A4C sequence
# --------------------------------------------------------------------------------------


@dataclass
class A4CStrain:
    """Strain of a whole A4C sequence (T frames).

    length_mm (T,), segment_length_mm (T, 6) (segments of the frame's reference ED, see the
    module docstring), gls_pct (T,), regional_pct (T, 6), strain_rate_per_s (T,),
    ed_indices (K,), beats (complete cycles only), ed_source ``ecg`` | ``length`` | ``none``.
    Frames before the first ED use the first ED as reference; with no ED at all, the first
    valid frame (flag ``no_ed``).
    """

    t_s: np.ndarray
    length_mm: np.ndarray
    segment_length_mm: np.ndarray
    gls_pct: np.ndarray
    regional_pct: np.ndarray
    strain_rate_per_s: np.ndarray
    ed_indices: np.ndarray
    beats: list[Beat]
    ed_source: str
    flags: list[str] = field(default_factory=list)


def _beat(k: int, a: int, b: int, t: np.ndarray, L: np.ndarray, gls: np.ndarray,
          reg: np.ndarray, source: str, usable: np.ndarray | None = None) -> Beat:
    """Beat ``k`` from frame ``a`` to ``b`` (excluded); end-systole and the peaks are taken
    over the frames ``usable`` (a, ..., b - 1) allows, all when None."""
    g, r = gls[a:b], reg[a:b]
    if usable is not None:
        usable = np.asarray(usable, dtype=bool)
        g, r = np.where(usable, g, np.nan), np.where(usable[:, None], r, np.nan)
    flags: list[str] = []
    if not np.any(np.isfinite(g)):
        es = a
        flags.append("no_valid_frames")
    else:
        es = a + int(np.nanargmin(g))
    if np.any(~np.isfinite(g)):
        flags.append("missing_frames")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN segments stay NaN
        rpk = np.nanmin(r, axis=0)
    dur = float(t[b] - t[a]) if b < len(t) else float(t[b - 1] - t[a])
    peak = float("nan") if "no_valid_frames" in flags else float(gls[es])
    return Beat(k, a, es, b, float(t[a]), float(t[es]), dur, float(L[a]), float(L[es]),
                peak, rpk, reg[es].copy(), source, flags)


def beat_from_points(index: int, t_s: np.ndarray, points_mm: np.ndarray, ed_source: str,
                     n_segments: int = 6, usable: np.ndarray | None = None) -> Beat:
    """One closed beat from its frames: ``t_s`` (T,) and ``points_mm`` (T, N, 2) from its
    end-diastole to the next one (both included; the closing ED is the beat's end).

    Segments are equal in arc length at the opening ED and material through the beat (as
    :class:`StrainMonitor` draws them); strain is against the opening ED.  ``usable``
    (T - 1,) bool, when given, says which frames may be the beat's end-systole and give
    its peaks (those whose measurement passed quality control)."""
    t = np.asarray(t_s, dtype=np.float64)
    P = np.asarray(points_mm, dtype=np.float64)
    L = polyline_length(P)  # (T,): each frame's length, as StrainMonitor computes it
    S = segment_lengths(P, n_segments, bounds=equal_arc_bounds(P[0], n_segments))
    return _beat(index, 0, len(t) - 1, t, L, strain_pct(L, L[0]), strain_pct(S, S[0]),
                 ed_source, usable)


def analyse_a4c(t_s: np.ndarray, points_mm: np.ndarray, ecg_r: np.ndarray | None = None,
                config: BeatConfig | None = None, n_segments: int = 6) -> A4CStrain:
    """GLS, regional strain, strain rate and beats of a tracked centreline sequence.

    t_s (T,) seconds; points_mm (T, N, 2) [row, col] mm (NaN rows = invalid frames);
    ecg_r (T,) bool R-wave flags or None.
    """
    cfg = config or BeatConfig()
    t = np.asarray(t_s, dtype=np.float64)
    P = np.asarray(points_mm, dtype=np.float64)
    L = polyline_length(P)
    S = segment_lengths(P, n_segments)
    flags: list[str] = []
    source = "none"
    ed = np.zeros(0, dtype=int)
    if ecg_r is not None and np.any(ecg_r):
        ed = ed_from_ecg(t, ecg_r, cfg.min_beat_s)
        source = "ecg"
    else:
        if ecg_r is not None:
            flags.append("no_ecg_r")
        ed = ed_from_cycle(t, L, cfg)
        source = "length" if len(ed) else "none"
    # a detected ED on an invalid frame moves to the nearest valid one
    ok = np.isfinite(L)
    if not ok.any():
        nanT = np.full(len(t), np.nan)
        return A4CStrain(t, L, S, nanT, np.full((len(t), n_segments), np.nan), nanT.copy(),
                         ed, [], source, flags + ["no_valid_frames"])
    valid_idx = np.flatnonzero(ok)
    ed = np.unique(np.array([valid_idx[np.argmin(np.abs(valid_idx - e))] for e in ed], dtype=int))
    ref = np.zeros(len(t), dtype=int)
    if len(ed) == 0:
        flags.append("no_ed")
        ref[:] = valid_idx[0]
    else:
        pos = np.searchsorted(ed, np.arange(len(t)), side="right") - 1
        ref = ed[np.maximum(pos, 0)]
    L0 = L[ref]
    gls = strain_pct(L, L0)
    # segments: equal arc at each reference (ED) frame, then material through its beat
    B = np.empty((len(t), n_segments + 1))
    for r in np.unique(ref):
        B[ref == r] = equal_arc_bounds(P[r], n_segments)
    S = segment_lengths(P, n_segments, bounds=B)
    reg = strain_pct(S, S[ref])
    with np.errstate(invalid="ignore"):
        dL = np.gradient(L, t) if len(t) > 1 else np.zeros_like(L)
    sr = dL / L0
    beats = [_beat(k, int(ed[k]), int(ed[k + 1]), t, L, gls, reg, source) for k in range(len(ed) - 1)]
    return A4CStrain(t, L, S, gls, reg, sr, ed, beats, source, flags)


# --------------------------------------------------------------------------------------
# online (per frame) A4C strain
# --------------------------------------------------------------------------------------


@dataclass
class FrameStrain:
    """Strain of one frame.

    gls_pct / regional_pct against the current beat's ED (the first valid frame until an
    ED is known: flag ``no_ed_yet``); strain_rate_per_s by a backward difference;
    beat_index: number of the beat this frame belongs to (0 before the first ED);
    is_ed: this frame was an ED by the ECG; new_ed_frame: frame number of an ED found now
    in the length cycle (found a few frames late, once the length has fallen after it);
    beat: the cycle completed by that ED, if any.
    """

    frame: int
    t_s: float
    length_mm: float
    gls_pct: float
    regional_pct: np.ndarray
    strain_rate_per_s: float
    beat_index: int
    is_ed: bool
    new_ed_frame: int | None
    beat: Beat | None
    flags: list[str] = field(default_factory=list)


class StrainMonitor:
    """Per-frame GLS, regional strain, strain rate and beat segmentation for a live stream.

    ``update(t_s, points_mm, ecg_r=None, cavity_area=None)`` once per frame.  Once any R
    flag has been seen the ECG alone sets ED; otherwise ED comes from the cycle of the LV
    cavity area (``config.ed_from == "cavity_area"`` and the caller gives it) or of the
    centreline length, confirmed a few frames after its maximum (GLS of those frames is
    reported against the previous ED).  The
    stream's first frame becomes an ED only when the next ED shows it as long (a stream that
    starts mid-systole closes no beat from it); until the first ED, GLS is against the first
    frame and flagged ``no_ed_yet``.

    Bounded: it keeps the frames of the last ``online_window_s + 1`` seconds (what the ED
    detector looks back over) and the reference frame's lengths, so memory and the cost of
    closing a beat stay constant over a stream of any length.  Frame numbers (``frame``,
    ``ed_frames``, a beat's indices) count every frame of the stream; ``ed_frames`` and
    ``beats`` hold the last :data:`KEEP_BEATS`.  A beat longer than the kept history (no
    physiological one is) is not closed, only its new end-diastole set.
    """

    KEEP_BEATS = 16

    def __init__(self, config: BeatConfig | None = None, n_segments: int = 6):
        self.config = config or BeatConfig()
        self.n_segments = n_segments
        self._first = 0  # frame number of the first kept frame
        self._t: deque[float] = deque()
        self._L: deque[float] = deque()
        self._C: deque[float] = deque()  # the curve whose maxima are ED (area or length)
        self._S: deque[np.ndarray] = deque()
        self._ed_frames: deque[int] = deque(maxlen=self.KEEP_BEATS)
        self._beats: deque[Beat] = deque(maxlen=self.KEEP_BEATS)
        self._n_beats = 0
        self._n_eds = 0
        self.use_ecg = False
        self._cycle_source = "length"  # what the ED detector's curve is (without an ECG)
        self._ref: int | None = None
        self._ref_L = float("nan")
        self._ref_S: np.ndarray | None = None
        # points of recent frames (those the next ED can still land on), and the segment
        # boundaries of the current reference (equal arc at its frame)
        self._P: dict[int, np.ndarray] = {}
        self._bounds: np.ndarray | None = None

    @property
    def n_frames(self) -> int:
        """Frames seen."""
        return self._first + len(self._t)

    @property
    def first_frame(self) -> int:
        """Frame number of the oldest frame kept."""
        return self._first

    @property
    def ed_frames(self) -> list[int]:
        """Frame numbers of the last end-diastoles found (at most KEEP_BEATS)."""
        return list(self._ed_frames)

    @property
    def beats(self) -> list[Beat]:
        """The last beats closed (at most KEEP_BEATS)."""
        return list(self._beats)

    def _set_ref(self, ref: int) -> None:
        """New reference (ED) frame: its equal-arc segment boundaries, and the segment
        lengths of the kept frames since then recomputed with them."""
        self._ref = ref
        self._bounds = equal_arc_bounds(self._P[ref], self.n_segments)
        for j in range(ref, self.n_frames):
            if j in self._P:
                self._S[j - self._first] = segment_lengths(self._P[j], self.n_segments,
                                                           bounds=self._bounds)
        self._ref_L = self._L[ref - self._first]
        self._ref_S = self._S[ref - self._first]

    def _close_beat(self, new_ed: int) -> Beat | None:
        beat = None
        if self._ed_frames and self._ed_frames[-1] >= self._first:
            a, off = self._ed_frames[-1], self._first
            t = np.asarray(self._t)
            L = np.asarray(self._L)
            S = np.asarray(self._S)
            gls = strain_pct(L, L[a - off])
            reg = strain_pct(S, S[a - off])
            beat = _beat(self._n_beats, a - off, new_ed - off, t, L, gls, reg,
                         "ecg" if self.use_ecg else self._cycle_source)
            beat.ed_index += off
            beat.es_index += off
            beat.end_index += off
            self._n_beats += 1
            self._beats.append(beat)
        self._ed_frames.append(new_ed)
        self._n_eds += 1
        self._set_ref(new_ed)
        return beat

    def _forget(self, t_s: float) -> None:
        """Drop the frames the ED detector no longer looks at, and their points."""
        horizon = t_s - self.config.online_window_s - 1.0
        while len(self._t) > 1 and self._t[0] < horizon:
            self._t.popleft()
            self._L.popleft()
            self._C.popleft()
            self._S.popleft()
            self._P.pop(self._first, None)
            self._first += 1

    def update(self, t_s: float, points_mm: np.ndarray, ecg_r: bool | None = None,
               cavity_area: float | None = None) -> FrameStrain:
        cfg = self.config
        frame = self.n_frames
        off = self._first
        P = np.asarray(points_mm, dtype=np.float64)
        L = float(polyline_length(P))
        self._t.append(float(t_s))
        self._L.append(L)
        if cfg.ed_from == "cavity_area" and cavity_area is not None \
                and self._cycle_source != "cavity_area":
            # the first area: the curve holds areas from now on (lengths before are unknown
            # areas, and a frame without one is a gap the detector interpolates)
            self._C = deque([float("nan")] * len(self._C))
            self._cycle_source = "cavity_area"
        if self._cycle_source == "cavity_area":
            self._C.append(float("nan") if cavity_area is None else float(cavity_area))
        else:
            self._C.append(L)
        if np.isfinite(L):
            self._P[frame] = P.copy()
        self._S.append(segment_lengths(P, self.n_segments, bounds=self._bounds))
        flags: list[str] = []
        ok = np.isfinite(L)
        if not ok:
            flags.append("no_points")
        is_ed = False
        new_ed = None
        beat = None
        if ecg_r:
            self.use_ecg = True
        if self.use_ecg:
            if ecg_r and ok and (not self._ed_frames or self._ed_frames[-1] < off
                                 or t_s - self._t[self._ed_frames[-1] - off] >= cfg.min_beat_s):
                beat = self._close_beat(frame)
                is_ed = True
                new_ed = frame
        elif ok:
            t = np.asarray(self._t)
            lo = int(np.searchsorted(t, t_s - cfg.online_window_s))
            cand = ed_from_cycle(t[lo:], np.asarray(self._C)[lo:], cfg, confirmed_only=True) + lo
            if not (cand > lo).any():
                # the window's first frame is an ED only next to an interior ED as high as it
                # (ed_from_cycle's rule): on its own it may be a clip that starts mid-systole
                cand = cand[cand > lo]
            last = self._ed_frames[-1] - off if self._ed_frames else -1
            for c in cand:
                if c > last and (last < 0 or t[c] - t[last] >= cfg.min_beat_s) \
                        and np.isfinite(self._L[c]):
                    # a first ED only once a full systole has been seen after it
                    beat = self._close_beat(int(c) + off)
                    new_ed = int(c) + off
                    last = int(c)
        if self._ref is None and ok:
            self._set_ref(frame)
        S = self._S[frame - off]
        if not self._n_eds:
            flags.append("no_ed_yet")
        ref = self._ref
        if ref is None or not ok:
            gls = float("nan")
            reg = np.full(self.n_segments, np.nan)
            sr = float("nan")
        else:
            L0 = self._ref_L
            gls = float(strain_pct(L, L0))
            reg = strain_pct(S, self._ref_S)
            sr = float("nan")
            if frame > off and np.isfinite(self._L[frame - 1 - off]):
                dt = t_s - self._t[frame - 1 - off]
                if dt > 0:
                    sr = (L - self._L[frame - 1 - off]) / dt / L0
        self._forget(t_s)
        return FrameStrain(frame, float(t_s), L, gls, reg, sr, self._n_eds, is_ed, new_ed,
                           beat, flags)


# --------------------------------------------------------------------------------------
# MR short axis
# --------------------------------------------------------------------------------------


def aha_segment_ids(points_mm: np.ndarray, centre_mm, anterior_rv_insertion_rad: float,
                    level: str = "mid", ccw: bool = True) -> np.ndarray:
    """AHA segment id (1-16) of each short-axis point (M, 2) [row, col].

    Angles are measured around ``centre_mm`` counter-clockwise *on screen*:
    theta = atan2(-(row - r0), col - c0), 0 = towards larger col, pi/2 = up.
    ``anterior_rv_insertion_rad`` is the anterior RV insertion point's angle in that
    convention.  In the standard display (RV on the image left, anterior up) the septum
    lies counter-clockwise from the anterior insertion (``ccw=True``); pass ``ccw=False``
    for a mirrored display.  With phi the angle from the insertion towards the septum:
    basal/mid segments are 60 degrees wide, phi in [0, 60) anteroseptal (2 / 8),
    [60, 120) inferoseptal, [120, 180) inferior, [180, 240) inferolateral,
    [240, 300) anterolateral, [300, 360) anterior (1 / 7) - segment 1 starts at the insertion
    point on its non-septal side.  Apical: four 90-degree sectors centred on the septum's
    middle (phi = 60): phi in [15, 105) septal (14), [105, 195) inferior (15),
    [195, 285) lateral (16), else anterior (13).
    """
    p = np.asarray(points_mm, dtype=np.float64).reshape(-1, 2)
    c = np.asarray(centre_mm, dtype=np.float64).reshape(2)
    theta = np.arctan2(-(p[:, 0] - c[0]), p[:, 1] - c[1])
    phi = theta - anterior_rv_insertion_rad if ccw else anterior_rv_insertion_rad - theta
    phi = np.degrees(np.mod(phi, 2 * np.pi))
    if level in ("basal", "mid"):
        k = np.floor(phi / 60.0).astype(int) % 6  # 0 = anteroseptal ... 5 = anterior
        ids = (k + 1) % 6 + 1
        return ids + (6 if level == "mid" else 0)
    if level == "apical":
        k = np.floor(np.mod(phi - 15.0, 360.0) / 90.0).astype(int) % 4
        return np.array([14, 15, 16, 13])[k]
    raise ValueError("level must be 'basal', 'mid' or 'apical'")


@dataclass
class SaxStrain:
    """Short-axis strain over T frames against frame ``ed_index``.

    circumferential_pct (T,): perimeter change of the closed mid-wall contour;
    radial_pct (T,): change of the mean wall thickness |epi_i - endo_i|;
    segment_ids (S,): AHA ids present; segment_circumferential_pct / segment_radial_pct
    (T, S): the same per segment (mid-wall arc of the segment's edges; mean thickness of its
    points); point_segment (M,): AHA id of every contour point (from its ED position).
    """

    circumferential_pct: np.ndarray
    radial_pct: np.ndarray
    segment_ids: np.ndarray
    segment_circumferential_pct: np.ndarray
    segment_radial_pct: np.ndarray
    point_segment: np.ndarray
    flags: list[str] = field(default_factory=list)


def sax_strain(endo_mm: np.ndarray, epi_mm: np.ndarray, anterior_rv_insertion_rad: float,
               level: str = "mid", ed_index: int = 0, centre_mm=None,
               ccw: bool = True) -> SaxStrain:
    """Circumferential and radial strain of a short-axis slice, globally and per AHA segment.

    endo_mm, epi_mm: (T, M, 2) [row, col] closed contours with corresponding points (point i
    of endo faces point i of epi and follows the same myocardium over time, e.g. tracked
    points).  The mid-wall contour is their mean.  centre_mm defaults to the ED mid-wall
    centroid.
    """
    endo = np.asarray(endo_mm, dtype=np.float64)
    epi = np.asarray(epi_mm, dtype=np.float64)
    if endo.shape != epi.shape or endo.ndim != 3:
        raise ValueError("endo_mm and epi_mm must both be (T, M, 2)")
    mid = 0.5 * (endo + epi)
    edges = np.roll(mid, -1, axis=1) - mid  # edge i: point i -> i+1 (closed)
    elen = np.sqrt((edges**2).sum(-1))  # (T, M)
    perim = elen.sum(-1)
    thick = np.sqrt(((epi - endo) ** 2).sum(-1))  # (T, M)
    circ = strain_pct(perim, perim[ed_index])
    rad = strain_pct(thick.mean(-1), thick[ed_index].mean())
    c = mid[ed_index].mean(0) if centre_mm is None else np.asarray(centre_mm, dtype=np.float64)
    pid = aha_segment_ids(mid[ed_index], c, anterior_rv_insertion_rad, level, ccw)
    emid = mid[ed_index] + 0.5 * edges[ed_index]
    eid = aha_segment_ids(emid, c, anterior_rv_insertion_rad, level, ccw)
    ids = np.unique(pid)
    seg_c = np.empty((len(mid), len(ids)))
    seg_r = np.empty((len(mid), len(ids)))
    flags: list[str] = []
    for j, sid in enumerate(ids):
        le = elen[:, eid == sid].sum(-1)
        th = thick[:, pid == sid].mean(-1)
        seg_c[:, j] = strain_pct(le, le[ed_index]) if le[ed_index] > 0 else np.nan
        seg_r[:, j] = strain_pct(th, th[ed_index])
    expected = 4 if level == "apical" else 6
    if len(ids) < expected:
        flags.append("missing_segments")
    return SaxStrain(circ, rad, ids, seg_c, seg_r, pid, flags)
