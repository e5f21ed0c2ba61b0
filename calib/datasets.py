"""Training / validation / held-out test sets drawn from the phantoms, with fixed seeds.

Every sample is a phantom clip made from one integer seed; the seed fixes the anatomy,
imaging parameters, motion, speckle and noise (``random_echo_config`` /
``random_mr_config``), so a sample is remade exactly from its seed.  The splits own
disjoint seed ranges that never change:

=========  ==========================  ==================================================
split      seeds                        use
=========  ==========================  ==================================================
train      0 .. 999 999                 training
val        1 000 000 .. 1 099 999       model selection, early stopping
test       2 000 000 .. 2 099 999       held-out evaluation only -- never train on it
calib      3 000 000 .. 3 009 999       INT8 calibration of the engines (not test data)
=========  ==========================  ==================================================

Builders return dicts of stacked arrays plus ``seeds`` (and ``split``), ready for
``np.savez`` via :func:`write_dataset`:

* :func:`view_samples` -- image, view label (0..7 in ``streamer.vocab.VIEW_CLASSES`` order), balanced;
* :func:`segmentation_samples` -- image, LV myocardium and cavity masks (apical views);
* :func:`flow_samples` -- consecutive frame pairs, truth flow (dx, dy) and the myocardium;
* :func:`mr_segmentation_samples` -- MR magnitude, myocardium, LV cavity, RV masks;
* :func:`calibration_images` -- inputs only, from the ``calib`` split.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from calib.appearance import DROPOUT_REGIONS, EchoAppearance, displayed_motion
from calib.display import PALETTES as DISPLAY_PALETTES
from calib.display import ScannerDisplay, grey_frames
from calib.echo import EchoPhantomConfig, make_echo_clip
from calib.errors import PhantomParameterError
from calib.speckle import SpeckleConfig
from streamer.vocab import A4C_SEGMENTS, AHA_SEGMENTS, SAX_LEVELS, VIEW_CLASSES

SPLITS = {
    "train": (0, 1_000_000),
    "val": (1_000_000, 1_100_000),
    "test": (2_000_000, 2_100_000),
    "calib": (3_000_000, 3_010_000),
}


def split_seeds(split: str, n: int, offset: int = 0) -> np.ndarray:
    """Seeds ``offset .. offset + n - 1`` of a split (raises when the split is exhausted)."""
    if split not in SPLITS:
        raise PhantomParameterError(f"split={split!r} is unknown; choose one of {', '.join(SPLITS)}")
    lo, hi = SPLITS[split]
    if n < 0 or offset < 0 or lo + offset + n > hi:
        raise PhantomParameterError(f"split {split} holds seeds {lo}..{hi - 1}; asked for {n} from offset {offset}")
    return np.arange(lo + offset, lo + offset + n, dtype=np.int64)


def split_of(seed: int) -> str:
    for name, (lo, hi) in SPLITS.items():
        if lo <= seed < hi:
            return name
    return "none"


def _u(rng, lo, hi):
    return float(rng.uniform(lo, hi))


def random_speckle(rng: np.random.Generator) -> SpeckleConfig:
    return SpeckleConfig(
        center_frequency_mhz=_u(rng, 2.0, 4.0), axial_fwhm_mm=_u(rng, 0.7, 1.2),
        lateral_fwhm_deg=_u(rng, 1.8, 3.2), lateral_min_fwhm_mm=_u(rng, 2.0, 3.5),
        sidelobe_db=_u(rng, -30, -18), scatterers_per_mm2=_u(rng, 3.0, 4.5),
        dynamic_range_db=_u(rng, 50, 70), myocardium_grey=_u(rng, 0.32, 0.5),
        noise_db=_u(rng, -75, -55), tgc_compensation=_u(rng, 0.75, 0.95),
        decorrelation=_u(rng, 0.03, 0.15), dropout=_u(rng, 0.1, 0.8),
        clutter_db=_u(rng, -30, -12), compression_gamma=_u(rng, 0.8, 1.3),
        display_blur_mm=_u(rng, 0.4, 1.2))


def random_appearance(rng: np.random.Generator) -> EchoAppearance:
    """Every appearance knob (calib.appearance) drawn over the range real scanners show,
    but ``surround_echo_db`` (neutral): the view classifier and the segmenter trained with
    it drawn U(0, 26) dB did worse on pydicom's real A4C cine (docs/benchmarks.md)."""
    return EchoAppearance(
        wall_echo_variation=_u(rng, 0.0, 0.8), lateral_wall_gain=_u(rng, 0.2, 1.0),
        dropout_gain=_u(rng, 0.1, 1.0), dropout_region=str(rng.choice(DROPOUT_REGIONS)),
        dropout_width_deg=_u(rng, 10.0, 30.0), bright_annulus_gain=_u(rng, 0.0, 3.0),
        pericardium_gain=_u(rng, 0.0, 3.0), axial_resolution_mm=_u(rng, 0.9, 2.0),
        blood_echo_db=_u(rng, -25.0, 3.0), leaflet_gain=_u(rng, 0.5, 3.0),
        persistence=_u(rng, 0.05, 0.4) if rng.random() < 0.5 else 0.0,
        septum_gain=_u(rng, 0.8, 2.5), rv_wall_gain=_u(rng, 0.15, 1.1), rv_scale=_u(rng, 0.75, 1.4),
        clutter_gain_db=_u(rng, 0.0, 14.0))


def random_anatomy(rng: np.random.Generator, view: str) -> dict:
    """Anatomy and timing over the range of real adult hearts and scanners (the "random"
    appearance's overrides of :func:`random_echo_config`'s narrower defaults): end-diastolic
    LV long axis 70-110 mm, the apex anywhere from 10 degrees left to 15 right of the sector's
    midline and the long axis tilted -6..20 degrees, frame rates 25-80 fps, a depth that
    holds the heart."""
    lv_length = _u(rng, 70.0, 110.0)
    apex_depth = _u(rng, 15.0, 40.0)
    depth_lo = {"sc4c": 170.0, "ivc": 150.0, "psax": 120.0, "plax": 130.0}.get(view, 140.0)
    return dict(lv_length_mm=lv_length, lv_width_mm=_u(rng, 0.42, 0.62) * lv_length,
                apex_depth_mm=apex_depth, fps=_u(rng, 25.0, 80.0),
                apex_azimuth_deg=_u(rng, -10.0, 15.0), axis_tilt_deg=_u(rng, -6.0, 20.0),
                depth_mm=max(_u(rng, depth_lo, depth_lo + 50.0), apex_depth + 1.6 * lv_length))


def random_display(rng: np.random.Generator) -> ScannerDisplay:
    """Every scanner-display knob (calib.display) drawn over what real scanner frames show.

    The canvas stays the rendered size (the builders keep network-size frames); the sector
    fills 0.4-1 of it (a real 480x640 frame fitted aspect-kept into 256x256 shows its
    sector at 0.45-0.8), placed anywhere in the free margin vertically and near the centre
    horizontally; each overlay is on with probability 0.5-0.7; palette grey 60 %, a tint
    40 %; no JPEG 40 %, else quality 30-95; a native frame up to 2.5 times coarser.
    :func:`random_echo_config` draws it with the "random" appearance."""
    tints = [p for p in DISPLAY_PALETTES if p != "grey"]
    return ScannerDisplay(
        sector_scale=_u(rng, 0.4, 1.0), offset_rows_frac=_u(rng, -1.0, 1.0),
        offset_cols_frac=_u(rng, -0.4, 0.4),
        native_scale=_u(rng, 1.0, 2.5) if rng.random() < 0.7 else 1.0,
        text_overlay=bool(rng.random() < 0.7), depth_scale=bool(rng.random() < 0.6),
        marker_dot=bool(rng.random() < 0.6), toolbar=bool(rng.random() < 0.5),
        ecg_trace=bool(rng.random() < 0.5), overlay_grey=_u(rng, 0.45, 0.95),
        palette="grey" if rng.random() < 0.6 else str(tints[int(rng.integers(len(tints)))]),
        jpeg_quality=None if rng.random() < 0.4 else int(rng.integers(30, 96)))


#: stream key of the appearance draws (with the seed); apart from the config's own stream
_APPEARANCE_KEY = 0xA9E0


def random_echo_config(seed: int, view: str | None = None, rows: int = 256, cols: int = 256,
                       frames: int = 2, start_phase: float | None = None,
                       appearance: str | EchoAppearance = "neutral", **overrides) -> EchoPhantomConfig:
    """An echo clip config whose anatomy, timing and imaging are drawn from ``seed``.

    ``appearance``: "neutral" (the default: every appearance knob neutral, the configs and
    frames of every existing data set), "random" (:func:`random_appearance`,
    :func:`random_display` and the wider :func:`random_anatomy`, from their own stream of
    the seed; the frames may be RGB, see :func:`calib.display.grey_frames`), or an
    EchoAppearance.
    """
    seed = int(seed)
    if isinstance(appearance, EchoAppearance):
        app = appearance
    elif appearance == "neutral":
        app = None
    elif appearance == "random":
        rng_app = np.random.default_rng([seed, _APPEARANCE_KEY])
        app = random_appearance(rng_app)
    else:
        raise PhantomParameterError(
            f"appearance={appearance!r} is unknown; choose neutral, random or an EchoAppearance")
    rng = np.random.default_rng([seed, 0xEC40])
    if view is None:
        view = VIEW_CLASSES[seed % len(VIEW_CLASSES)]
    dys = {}
    if rng.random() < 0.3:
        for s in rng.choice(A4C_SEGMENTS, size=rng.integers(1, 3), replace=False):
            dys[str(s)] = float(rng.choice([0.5, 0.0, -0.3]))
    depth_lo = {"sc4c": 170.0, "ivc": 150.0, "psax": 120.0, "plax": 130.0}.get(view, 140.0)
    kw = dict(
        view=view, rows=rows, cols=cols, frames=frames, seed=seed,
        heart_rate_bpm=_u(rng, 50, 110), fps=_u(rng, 40, 90),
        start_phase=_u(rng, 0, 1) if start_phase is None else start_phase,
        gls_pct=float(np.clip(rng.normal(-19, 3.5), -30, -6)), dysfunction=dys,
        depth_mm=_u(rng, depth_lo, depth_lo + 50), sector_angle_deg=_u(rng, 70, 90),
        lv_length_mm=_u(rng, 72, 95), lv_width_mm=_u(rng, 38, 56), wall_base_mm=_u(rng, 8, 12),
        wall_apex_mm=_u(rng, 5, 8), base_angle_deg=_u(rng, 72, 88), apex_depth_mm=_u(rng, 20, 40),
        apex_azimuth_deg=_u(rng, -6, 8), axis_tilt_deg=_u(rng, -2, 16),
        inward_motion_per_strain=_u(rng, 0.3, 0.6), thickening_exponent=_u(rng, 1.2, 1.8),
        speckle=random_speckle(rng))
    if app is not None:
        kw["appearance"] = app
    if appearance == "random":
        kw["display"] = random_display(rng_app)
        kw.update(random_anatomy(rng_app, view))
    kw.update(overrides)
    return EchoPhantomConfig(**kw)


def random_mr_config(seed: int, slice_level: str | None = None, **overrides):
    from calib.mr import MRPhantomConfig
    seed = int(seed)
    rng = np.random.default_rng([seed, 0x3A7])
    level = slice_level or SAX_LEVELS[seed % 3]
    base_r = {"basal": 26.0, "mid": 23.0, "apical": 16.0}[level]
    wm, infarct = {}, []
    if rng.random() < 0.4:
        for s in rng.choice(AHA_SEGMENTS[level], size=rng.integers(1, 4), replace=False):
            wm[str(int(s))] = int(rng.choice([1, 2, 3], p=[0.5, 0.35, 0.15]))
    if rng.random() < 0.3:
        infarct = [int(s) for s in rng.choice(AHA_SEGMENTS[level], size=rng.integers(1, 3), replace=False)]
    kw = dict(slice_level=level, seed=seed, heart_rate_bpm=_u(rng, 55, 95),
              frames=int(rng.integers(20, 31)), peak_circ_strain_pct=float(np.clip(rng.normal(-18, 2.5), -28, -8)),
              peak_radial_strain_pct=float(np.clip(rng.normal(45, 10), 15, 80)), wall_motion=wm,
              infarct_segments=infarct, infarct_transmurality=_u(rng, 0.3, 1.0),
              lv_endo_radius_mm=base_r * _u(rng, 0.85, 1.2), wall_thickness_mm=_u(rng, 7, 12),
              lv_offset_mm=(_u(rng, -10, 10), _u(rng, -6, 14)), rv_insertion_deg=_u(rng, 110, 132),
              noise_sigma=_u(rng, 4, 12), acquisition_fraction=_u(rng, 0.7, 1.0))
    kw.update(overrides)
    return MRPhantomConfig(**kw)


#: the AHA segments each coronary artery usually supplies (Cerqueira et al. 2002): a
#: wall-motion abnormality follows a territory
CORONARY_TERRITORIES = {"LAD": (1, 2, 7, 8, 13, 14, 17), "RCA": (3, 4, 9, 10, 15),
                        "LCx": (5, 6, 11, 12, 16)}


def wall_motion_classes(rng: np.random.Generator) -> dict[int, int]:
    """A heart's wall-motion class (code 0..3) for each of the 16 AHA segments: normal
    throughout (30 %), else one (70 %) or two coronary territories affected: a run of
    consecutive segments of the territory (its own order) hypokinetic, akinetic or
    dyskinetic (45 / 40 / 15 %), some of the territory's other segments hypokinetic."""
    classes = dict.fromkeys(range(1, 17), 0)
    if rng.random() < 0.3:
        return classes
    names = list(CORONARY_TERRITORIES)
    for name in rng.choice(names, size=1 if rng.random() < 0.7 else 2, replace=False):
        territory = [s for s in CORONARY_TERRITORIES[str(name)] if s <= 16]
        n = int(rng.integers(1, len(territory) + 1))
        start = int(rng.integers(0, len(territory) - n + 1))
        core = int(rng.choice([1, 2, 3], p=[0.45, 0.40, 0.15]))
        for k, s in enumerate(territory):
            if start <= k < start + n:
                classes[s] = max(classes[s], core)
            elif classes[s] == 0 and rng.random() < 0.3:
                classes[s] = 1
    return classes


def wall_motion_stack_configs(seed: int, frames: int | None = None, **overrides) -> list:
    """One phantom heart as a basal, a mid and an apical short-axis slice (three
    :class:`calib.mr.MRPhantomConfig`, one beat each) sharing its timing, strains, size,
    image quality and its 16 segments' wall-motion classes (:func:`wall_motion_classes`),
    each segment's motion drawn inside its class's range
    (:data:`calib.mr.WALL_MOTION_FACTOR_RANGES`): the data of Cardiac-MOS (issue 16).
    ``frames``: frames of the beat (default: 20 or 25, as the paper's training cycles)."""
    from calib.mr import WALL_MOTION_FACTOR_RANGES, MRPhantomConfig

    seed = int(seed)
    rng = np.random.default_rng([seed, 0x57A])
    classes = wall_motion_classes(rng)
    factors = {s: float(rng.uniform(*WALL_MOTION_FACTOR_RANGES[c])) for s, c in classes.items()}
    size = _u(rng, 0.85, 1.2)
    shared = dict(seed=seed, heart_rate_bpm=_u(rng, 55, 95),
                  frames=int(frames if frames is not None else rng.choice([20, 25])),
                  peak_circ_strain_pct=float(np.clip(rng.normal(-18, 2.5), -28, -10)),
                  peak_radial_strain_pct=float(np.clip(rng.normal(45, 10), 20, 80)),
                  wall_thickness_mm=_u(rng, 7, 12), lv_offset_mm=(_u(rng, -10, 10), _u(rng, -6, 14)),
                  rv_insertion_deg=_u(rng, 110, 132), noise_sigma=_u(rng, 4, 12),
                  acquisition_fraction=_u(rng, 0.7, 1.0))
    base_r = {"basal": 26.0, "mid": 23.0, "apical": 16.0}
    out = []
    for level in SAX_LEVELS:
        segs = AHA_SEGMENTS[level]
        kw = dict(shared, slice_level=level, lv_endo_radius_mm=base_r[level] * size,
                  wall_motion={str(s): classes[s] for s in segs},
                  wall_motion_factors={str(s): factors[s] for s in segs})
        kw.update(overrides)
        out.append(MRPhantomConfig(**kw))
    return out


def infarct_slice_config(seed: int, frames: int | None = None, **overrides):
    """One short-axis phantom slice for OF-RNN (issue 16): :func:`random_mr_config`'s slice
    (level by seed, its anatomy, image quality and wall-motion draws), with an infarct in 70 %
    of slices: 1-3 neighbouring segments of the level (circularly), transmurality 0.25-1.0
    of the wall from the endocardium (subendocardial to transmural), its segments'
    motion following it (akinetic above half the wall, else hypokinetic: the phantom's
    rule); the other segments keep :func:`random_mr_config`'s wall-motion draws, so that
    a hypokinetic segment without infarct is there to be told apart."""
    seed = int(seed)
    rng = np.random.default_rng([seed, 0x1FA])
    level = SAX_LEVELS[seed % 3]
    segments = AHA_SEGMENTS[level]
    infarct: list[int] = []
    if rng.random() < 0.7:
        size, start = int(rng.integers(1, 4)), int(rng.integers(0, len(segments)))
        infarct = [int(segments[(start + k) % len(segments)]) for k in range(size)]
    base = random_mr_config(seed, slice_level=level)
    wall_motion = {s: c for s, c in base.wall_motion.items() if int(s) not in infarct}
    kw = dict(slice_level=level, infarct_segments=infarct, wall_motion=wall_motion,
              infarct_transmurality=_u(rng, 0.25, 1.0))
    if frames is not None:
        kw["frames"] = int(frames)
    return random_mr_config(seed, **{**kw, **overrides})


def infarct_samples(split: str, n: int, offset: int = 0, frames: int = 25) -> dict:
    """``n`` phantom slices (:func:`infarct_slice_config`, beats of ``frames`` frames) as
    OF-RNN sees them: the LV region of interest (:class:`streamer.measure.roi.LvRoi` around
    the truth's end-diastolic LV) over the beat, ``frames`` (n, T, 64, 64) uint8 (x 255,
    :func:`streamer.measure.roi.normalise_beat`); ``myocardium`` and ``infarct`` (n, 64, 64)
    bool, the truth's at end-diastole in the region; ``transmurality`` (n,) and
    ``infarct_segments`` (n, 16) bool. The flow is the trainer's to compute
    (:func:`streamer.measure.roi.roi_flow`)."""
    from calib.mr import make_mr_clip
    from streamer.measure.polar import epicardial_radius_px
    from streamer.measure.roi import ROI_PX, LvRoi, normalise_beat
    from streamer.measure.sax import lv_centre_px

    seeds = split_seeds(split, n, offset)
    out = {"frames": np.empty((n, frames, ROI_PX, ROI_PX), np.uint8),
           "myocardium": np.empty((n, ROI_PX, ROI_PX), bool),
           "infarct": np.empty((n, ROI_PX, ROI_PX), bool),
           "transmurality": np.zeros(n, np.float32),
           "infarct_segments": np.zeros((n, 16), bool)}
    for i, s in enumerate(seeds):
        cfg = infarct_slice_config(int(s), frames=frames)
        clip = make_mr_clip(cfg)
        ed = int(clip.truth.ed_frames[0])
        labels = clip.truth.label_map()[ed]
        roi = LvRoi.around(lv_centre_px(labels), epicardial_radius_px(labels))
        out["frames"][i] = np.round(normalise_beat(roi.images(clip.frames)) * 255.0)
        out["myocardium"][i] = roi.images((clip.truth.myocardium[ed] > 0).astype(np.uint8),
                                          nearest=True) > 0
        out["infarct"][i] = roi.images(clip.truth.infarct[ed], nearest=True) > 0
        out["transmurality"][i] = cfg.infarct_transmurality if cfg.infarct_segments else 0.0
        out["infarct_segments"][i, np.asarray(cfg.infarct_segments, int) - 1] = True
    return {**out, "seeds": np.asarray(seeds), "split": split}


def velocity_mapping_config(seed: int, frames: int | None = None, **overrides):
    """One short-axis velocity-mapping slice (tissue phase mapping, issue 17):
    :func:`random_mr_config`'s slice (level by seed; its anatomy, wall motion and infarct
    draws, image quality) as a black-blood gradient-echo acquisition: blood at 3-15 % of the
    bSSFP blood's signal (9-43 against the myocardium's 82: darker than the wall, as the
    blood suppression makes it), VENC 15-30 cm/s, a background phase offset of up to 0.2-2.5 cm/s
    per channel, a pixel of 1.2-1.8 mm (a field of view of 307-461 mm), frames of one cycle
    (``frames``; default 20-30 drawn; acquisitions have ~50)."""
    seed = int(seed)
    rng = np.random.default_rng([seed, 0x7E1])
    kw = dict(blood_signal=_u(rng, 0.03, 0.15), venc_mm_s=_u(rng, 150.0, 300.0),
              phase_offset_mm_s=_u(rng, 2.0, 25.0), pixel_mm=_u(rng, 1.2, 1.8))
    if frames is not None:
        kw["frames"] = int(frames)
    return random_mr_config(seed, **{**kw, **overrides})


def velocity_mapping_samples(split: str, n: int, offset: int = 0, frames: int | None = None) -> dict:
    """``n`` velocity-mapping phantom slices (:func:`velocity_mapping_config`) as the
    network sees them: the central region (:func:`streamer.measure.roi.central_roi`,
    128 x 128 pixels of 1.4 mm), padded to ``T`` = the longest cycle with ``frames_n`` the
    real count: ``magnitude`` (n, T, 128, 128) float16 (raw scale), ``velocity_cm_s``
    (n, T, 128, 128, 3) float16 (measured: noisy, offset, wrapped as acquired),
    ``myocardium`` (n, T, 128, 128) bool (the truth's, nearest), ``true_velocity_cm_s``
    (n, T, 128, 128, 3) float16 (noise-free), ``segments`` (n, T, 128, 128) uint8 (AHA,
    nearest), ``es_frame`` (n,), ``venc_cm_s`` (n,), ``level`` (n,) 0 basal .. 2 apical."""
    from calib.mr import make_mr_clip
    from streamer.measure.roi import VM_ROI_PX, central_roi, region_velocity
    from streamer.vocab import SAX_LEVELS

    seeds = split_seeds(split, n, offset)
    cfgs = [velocity_mapping_config(int(s), frames=frames) for s in seeds]
    T = max(c.frames for c in cfgs)
    S = VM_ROI_PX
    out = {"magnitude": np.zeros((n, T, S, S), np.float16),
           "velocity_cm_s": np.zeros((n, T, S, S, 3), np.float16),
           "true_velocity_cm_s": np.zeros((n, T, S, S, 3), np.float16),
           "myocardium": np.zeros((n, T, S, S), bool),
           "segments": np.zeros((n, T, S, S), np.uint8),
           "frames_n": np.zeros(n, np.int64), "es_frame": np.zeros(n, np.int64),
           "venc_cm_s": np.zeros(n, np.float32), "level": np.zeros(n, np.int64)}
    for i, cfg in enumerate(cfgs):
        clip = make_mr_clip(cfg)
        roi = central_roi(clip.frames.shape[1:], clip.spacing_mm)
        t = cfg.frames
        out["frames_n"][i] = t
        out["magnitude"][i, :t] = roi.images(clip.frames.astype(np.float32))
        out["velocity_cm_s"][i, :t] = region_velocity(roi, clip.velocity_mm_s / 10.0)
        out["true_velocity_cm_s"][i, :t] = region_velocity(roi, clip.truth.velocity_mm_s / 10.0)
        out["myocardium"][i, :t] = roi.images(clip.truth.myocardium, nearest=True) > 0
        out["segments"][i, :t] = roi.images(clip.truth.segments, nearest=True).astype(np.uint8)
        out["es_frame"][i] = int(clip.truth.es_frames[0])
        out["venc_cm_s"][i] = cfg.venc_mm_s / 10.0
        out["level"][i] = SAX_LEVELS.index(cfg.slice_level)
    return {**out, "seeds": np.asarray(seeds), "split": split}


def _echo_clip(seed: int, **kw):
    """Clip for a seed; configs the motion model cannot realise are redrawn from a derived seed."""
    for attempt in range(5):
        try:
            cfg = random_echo_config(seed if attempt == 0 else seed * 7919 + attempt, **kw)
            cfg.seed = seed
            return make_echo_clip(cfg)
        except PhantomParameterError:
            continue
    raise PhantomParameterError(f"seed {seed}: no realisable phantom configuration")


def view_samples(split: str, n: int, rows: int = 256, cols: int = 256, offset: int = 0,
                 frames_per_clip: int = 1, appearance: str = "neutral") -> dict:
    """Images with view labels; label = seed % 8, so any 8 consecutive seeds are balanced.

    ``frames_per_clip`` > 1 takes that many frames spread over one cardiac cycle from each
    clip (frames of a clip are consecutive in the output; ``offset`` counts clips), so
    ``n`` a multiple of ``8 * frames_per_clip`` stays balanced. A frame costs little once
    its clip's scene is built. ``appearance``: as :func:`random_echo_config`'s.
    """
    if frames_per_clip < 1:
        raise PhantomParameterError(f"frames_per_clip={frames_per_clip} must be at least 1")
    n_clips = -(-n // frames_per_clip)
    seeds = split_seeds(split, n_clips, offset)
    imgs = np.empty((n_clips * frames_per_clip, rows, cols), np.uint8)
    labels = np.empty(n_clips * frames_per_clip, np.int64)
    for i, s in enumerate(seeds):
        if frames_per_clip == 1:
            clip = _echo_clip(int(s), rows=rows, cols=cols, frames=1, appearance=appearance)
        else:
            hr = random_echo_config(int(s)).heart_rate_bpm
            clip = _echo_clip(int(s), rows=rows, cols=cols, frames=frames_per_clip,
                              fps=frames_per_clip * hr / 60.0, appearance=appearance)
        k = slice(i * frames_per_clip, (i + 1) * frames_per_clip)
        imgs[k] = grey_frames(clip.frames)
        labels[k] = clip.truth.view_index
    return {"images": imgs[:n], "labels": labels[:n],
            "seeds": np.repeat(seeds, frames_per_clip)[:n], "split": split,
            "label_names": np.array(VIEW_CLASSES)}


def segmentation_samples(split: str, n: int, rows: int = 256, cols: int = 256, offset: int = 0,
                         frames_per_clip: int = 4, views=("a4c", "a2c", "alax"),
                         appearance: str = "neutral") -> dict:
    """LV myocardium / cavity masks; ``frames_per_clip`` frames spread over one cycle."""
    n_clips = -(-n // frames_per_clip)
    seeds = split_seeds(split, n_clips, offset)
    imgs, myo, cav, sd, views_out = [], [], [], [], []
    for s in seeds:
        v = views[int(s) % len(views)]
        cfg_probe = random_echo_config(int(s), view=v)
        fps = frames_per_clip * cfg_probe.heart_rate_bpm / 60.0
        clip = _echo_clip(int(s), view=v, rows=rows, cols=cols, frames=frames_per_clip, fps=fps,
                          appearance=appearance)
        grey = grey_frames(clip.frames)
        for t in range(frames_per_clip):
            imgs.append(grey[t])
            myo.append(clip.truth.myocardium[t])
            cav.append(clip.truth.cavity[t])
            sd.append(s)
            views_out.append(clip.truth.view_index)
    k = slice(0, n)
    return {"images": np.stack(imgs)[k], "myocardium": np.stack(myo)[k], "cavity": np.stack(cav)[k],
            "seeds": np.array(sd)[k], "views": np.array(views_out)[k], "split": split}


def flow_samples(split: str, n: int, rows: int = 256, cols: int = 256, offset: int = 0,
                 pairs_per_clip: int = 4, views=("a4c", "a2c", "alax"),
                 appearance: str = "neutral") -> dict:
    """Consecutive frame pairs at the clip's frame rate with the truth flow (dx, dy) px:
    the motion the frames show (:func:`calib.appearance.displayed_motion`, the tissue's
    own unless the display averages frames)."""
    n_clips = -(-n // pairs_per_clip)
    seeds = split_seeds(split, n_clips, offset)
    pairs, flows, masks, sd = [], [], [], []
    for s in seeds:
        v = views[int(s) % len(views)]
        clip = _echo_clip(int(s), view=v, rows=rows, cols=cols, frames=pairs_per_clip + 1,
                          appearance=appearance)
        grey = grey_frames(clip.frames)
        shown = displayed_motion(clip.truth.displacement, clip.config.appearance.persistence)
        for t in range(pairs_per_clip):
            pairs.append(grey[t:t + 2])
            flows.append(shown[t])
            masks.append(clip.truth.myocardium[t])
            sd.append(s)
    k = slice(0, n)
    return {"pairs": np.stack(pairs)[k], "flow": np.stack(flows)[k], "myocardium": np.stack(masks)[k],
            "seeds": np.array(sd)[k], "split": split}


def mr_segmentation_samples(split: str, n: int, offset: int = 0, frames_per_clip: int = 3,
                            rows: int = 256, cols: int = 256) -> dict:
    from calib.mr import make_mr_clip
    n_clips = -(-n // frames_per_clip)
    seeds = split_seeds(split, n_clips, offset)
    imgs, myo, cav, rv, sd = [], [], [], [], []
    for s in seeds:
        cfg = random_mr_config(int(s), rows=rows, cols=cols, frames=frames_per_clip)
        clip = make_mr_clip(cfg)
        for t in range(frames_per_clip):
            imgs.append(clip.frames[t])
            myo.append(clip.truth.myocardium[t])
            cav.append(clip.truth.cavity[t])
            rv.append(clip.truth.rv[t])
            sd.append(s)
    k = slice(0, n)
    return {"images": np.stack(imgs)[k], "myocardium": np.stack(myo)[k], "cavity": np.stack(cav)[k],
            "rv": np.stack(rv)[k], "seeds": np.array(sd)[k], "split": split}


def mr_sequence_samples(split: str, n: int, offset: int = 0, frames: int = 20, rows: int = 256,
                        cols: int = 256, motion: bool = False) -> dict:
    """``n`` whole short-axis cine phantoms (one cardiac cycle of ``frames`` frames each, the
    phases of the Sunnybrook cines): ``frames`` (n, T, rows, cols) uint16 magnitude, ``labels``
    (n, T, rows, cols) uint8 (:class:`streamer.vocab.MRLabel`), ``spacing_mm`` (n, 2); with
    ``motion``, ``displacement`` (n, T, rows, cols, 2) float32, the truth (dx, dy) px from
    frame t to t + 1 on frame t's grid. ``offset`` counts clips of the split."""
    from calib.mr import make_mr_clip
    seeds = split_seeds(split, n, offset)
    out = {"frames": np.empty((n, frames, rows, cols), np.uint16),
           "labels": np.empty((n, frames, rows, cols), np.uint8), "spacing_mm": np.empty((n, 2))}
    if motion:
        out["displacement"] = np.empty((n, frames, rows, cols, 2), np.float32)
    for i, s in enumerate(seeds):
        clip = make_mr_clip(random_mr_config(int(s), rows=rows, cols=cols, frames=frames))
        out["frames"][i] = clip.frames
        out["labels"][i] = clip.truth.label_map()
        out["spacing_mm"][i] = clip.spacing_mm
        if motion:
            out["displacement"][i] = clip.truth.displacement
    return {**out, "seeds": np.asarray(seeds), "split": split}


def wall_motion_samples(split: str, n: int, offset: int = 0, frames: int = 20,
                        crop_factor: float = 1.6) -> dict:
    """``n`` phantom hearts (:func:`wall_motion_stack_configs`, beats of ``frames`` frames)
    as Cardiac-MOS sees them: ``segments`` (n, 16, frames, 80, 60) uint8, each AHA segment
    (index = AHA id - 1) in polar coordinates (:func:`streamer.measure.polar.segment_polar`,
    x 255), cropped and aligned by the truth's end-diastolic labels (the LV centre and the RV
    insertion points of each slice's first end-diastole); ``classes`` (n, 16) wall-motion
    class codes; ``factors`` (n, 16) each segment's motion as a fraction of normal."""
    from calib.mr import make_mr_clip
    from streamer.measure.polar import ANGLES, CROP_PX, segment_polar
    from streamer.measure.sax import rv_insertion_points

    seeds = split_seeds(split, n, offset)
    out = {"segments": np.empty((n, 16, frames, CROP_PX // 2, ANGLES), np.uint8),
           "classes": np.empty((n, 16), np.int64), "factors": np.empty((n, 16), np.float32)}
    for i, s in enumerate(seeds):
        for cfg in wall_motion_stack_configs(int(s), frames=frames):
            clip = make_mr_clip(cfg)
            labels = clip.truth.label_map()[int(clip.truth.ed_frames[0])]
            polar = segment_polar(clip.frames, labels, rv_insertion_points(labels),
                                  cfg.slice_level, crop_factor=crop_factor)
            for aha, image in polar.items():
                out["segments"][i, aha - 1] = np.round(image * 255.0).astype(np.uint8)
            for k, aha in enumerate(clip.truth.segment_ids):
                out["classes"][i, aha - 1] = clip.truth.segment_scores[k]
                out["factors"][i, aha - 1] = clip.truth.segment_factors[k, 0]
    return {**out, "seeds": np.asarray(seeds), "split": split}


def calibration_images(n: int, kind: str = "view", rows: int = 256, cols: int = 256) -> np.ndarray:
    """Representative engine inputs for INT8 calibration, from the ``calib`` split only."""
    if kind == "view":
        return view_samples("calib", n, rows, cols)["images"]
    if kind == "segmentation":
        return segmentation_samples("calib", n, rows, cols)["images"]
    if kind == "flow":
        return flow_samples("calib", n, rows, cols)["pairs"]
    if kind == "mr":
        return mr_segmentation_samples("calib", n, rows=rows, cols=cols)["images"]
    raise PhantomParameterError(f"kind={kind!r} is unknown; choose view, segmentation, flow or mr")


def write_dataset(path, samples: dict) -> Path:
    """Write a builder's output as .npz; the split, its seed range and the seeds go with it."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    split = samples.get("split", "")
    meta = {"split": split, "seed_range": list(SPLITS.get(split, (None, None))),
            "generator": "calib.datasets", "views": list(VIEW_CLASSES)}
    arrays = {k: v for k, v in samples.items() if isinstance(v, np.ndarray)}
    np.savez_compressed(p, meta_json=np.array(json.dumps(meta)), **arrays)
    return p
