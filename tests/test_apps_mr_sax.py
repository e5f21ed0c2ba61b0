"""The MR short-axis app (streamer.apps.mr_sax): the slice's AHA level, beats of a gated
cine, quality control, and the whole app with the shipped joint network on a held-out MR
phantom against its truth."""

from __future__ import annotations

import numpy as np
import pytest

from calib.datasets import (
    infarct_slice_config,
    random_mr_config,
    split_seeds,
    wall_motion_stack_configs,
)
from calib.mr import make_mr_clip
from engines.spec import fit_geometry
from streamer.app import BEAT_CLOSED, BeatBoundary, BeatFrames
from streamer.apps import AnalysisConfig, EngineConfig, build_analysis
from streamer.apps.common import TrackingGrid
from streamer.apps.mr_sax import (
    CheckSaxMeasurability,
    MapInfarct,
    MeasureSaxStrain,
    MrShortAxisConfig,
    SaxGeometry,
    SaxQualityConfig,
    ScoreWallMotion,
    SegmentAndMove,
    SliceBeat,
    SliceConfig,
    StackCycles,
    SummariseSaxBeat,
    SummariseStack,
    slice_level,
    stack_stream,
)
from streamer.io.protocol import FrameMessage
from streamer.measure.sax import aha_segment_map
from streamer.measure.sax_tracking import SaxTrack
from streamer.vocab import (
    AHA_NAMES,
    AHA_SEGMENTS,
    SAX_LEVELS,
    WALL_MOTION_CLASSES,
    WALL_MOTION_SCORES,
    MRLabel,
)

# -- the slice's level, geometry, quality (no engine) ----------------------------------------


def test_the_level_is_the_slices_third_of_the_stack_or_the_option():
    levels = [slice_level({"n_slices": 9, "slice_index": k}, SliceConfig()) for k in range(9)]
    assert levels == ["basal"] * 3 + ["mid"] * 3 + ["apical"] * 3
    last = SliceConfig(base="last")
    assert slice_level({"n_slices": 9, "slice_index": 0}, last) == "apical"
    # auto: the stack's geometry in the start (the apex first here), else slice 0 basal
    apex_first = {"n_slices": 9, "slice_index": 0, "base_first": False}
    assert slice_level(apex_first, SliceConfig()) == "apical"
    assert slice_level({**apex_first, "base_first": None}, SliceConfig()) == "basal"
    assert slice_level(apex_first, SliceConfig(base="first")) == "basal"
    assert slice_level({}, SliceConfig()) is None  # a single clip: the start does not say
    assert slice_level({"n_slices": 3, "slice_index": 5}, SliceConfig()) is None
    assert slice_level({}, SliceConfig(level="mid")) == "mid"
    with pytest.raises(ValueError, match="level"):
        SliceConfig(level="equator")


def grid(size=(64, 64), spacing=(2.0, 2.0)):
    return TrackingGrid(fit_geometry(size, size), spacing)


def test_geometry_gives_areas_in_mm2_and_says_when_the_rv_does_not_touch():
    labels = np.zeros((64, 64), np.uint8)
    labels[20:30, 20:30] = MRLabel.LV_MYOCARDIUM
    labels[23:27, 23:27] = MRLabel.LV_CAVITY
    labels[40:44, 40:45] = MRLabel.RV_CAVITY
    out = SaxGeometry().process(mr_frame(0, 4), labels, grid(),
                                {"n_slices": 3, "slice_index": 1})
    assert out["areas_mm2"] == {"lv_cavity": 64.0, "lv_myocardium": 336.0, "rv_cavity": 80.0}
    assert out["insertion"] is None and out["rv_insertion_mm"] is None
    assert out["aha_level"] == "mid" and out["flags"] == ["no_rv_insertion"]
    assert out["cardiac_phase"] == 4


def test_strain_out_of_range_or_an_untracked_wall_publishes_no_number():
    check = CheckSaxMeasurability(SaxQualityConfig())
    track = SaxTrack(0.0, np.zeros((4, 2)), np.ones((4, 2)), True)
    out = check.process(track, -60.0, 30.0, {"7": -60.0}, {"7": 30.0})
    assert out["circumferential_strain_pct"] is None and out["measurable"] is False
    assert out["flags"] == ["not_measurable:strain_range"]
    out = check.process(track, -15.0, 30.0, None, None)  # no AHA frame: global values only
    assert out["circumferential_strain_pct"] == -15.0 and out["measurable"] is True
    assert out["segment_circumferential_strain_pct"] is None
    assert out["flags"] == ["not_measurable:segments"]
    track.valid = False
    assert check.process(track, None, None, None, None)["flags"] == ["not_measurable:tracking"]


# -- beats of a gated cine (a fake wall that contracts and relaxes) ------------------------


def ring_track(t_s: float, scale: float, valid: bool = True, flags=()) -> SaxTrack:
    a = np.linspace(0, 2 * np.pi, 48, endpoint=False)
    unit = np.stack([-np.sin(a), np.cos(a)], 1)
    endo, epi = 20.0 * scale * unit + 50.0, (30.0 * scale ** 0.5) * unit + 50.0
    return SaxTrack(t_s, endo, epi, valid, list(flags))


#: the fake ring's mid-wall at its smallest (scale 0.85) against end-diastole, %
PEAK_CIRC = 100 * ((20.0 * 0.85 + 30.0 * 0.85 ** 0.5) / 50.0 - 1)


def mr_frame(seq: int, phase: int | None) -> FrameMessage:
    return FrameMessage(stream="s/slice-0", seq=seq, t_acq_ns=seq * 40_000_000, modality="MR",
                        pixels=np.zeros((4, 4), np.uint16), spacing_mm=(1.0, 1.0), fps=25.0,
                        phase_index=phase)


def run_strain(phases, n_phases=None, invalid=()):
    stage, outs = MeasureSaxStrain(), []
    for seq, phase in enumerate(phases):
        p = phase if phase is not None else seq
        scale = 1.0 - 0.15 * np.sin(np.pi * p / 10.0) ** 2
        track = ring_track(seq * 0.04, scale, valid=seq not in invalid,
                           flags=("reinitialised",) if seq - 1 in invalid else ())
        meta = {} if n_phases is None else {"n_phases": n_phases}
        areas = {"lv_cavity": round(1000.0 * scale ** 2, 2)}  # smallest at phase 5: ES
        outs.append(stage.process(mr_frame(seq, phase), meta, track, None, "mid", areas))
    return outs


def test_a_beat_closes_at_the_last_phase_the_start_announces():
    outs = run_strain(range(10), n_phases=10)
    closed = [o[BEAT_CLOSED] for o in outs]
    assert closed[:9] == [None] * 9
    assert (closed[9].ed_seq, closed[9].end_seq, closed[9].fields) == (
        0, 9, {"closed_by": "last_phase", "reference_phase": 0, "reference_until_seq": 9})
    assert outs[0]["phase"] == "ED" and outs[0]["circumferential_unchecked_pct"] == 0.0
    circ = [o["circumferential_unchecked_pct"] for o in outs]
    assert min(circ) == pytest.approx(PEAK_CIRC, abs=0.01) and np.argmin(circ) == 5
    assert outs[5]["radial_unchecked_pct"] > 0  # the wall thickens as the ring shrinks


def test_without_n_phases_the_next_phase_0_closes_the_beat():
    outs = run_strain([0, 1, 2, 3, 0, 1, 2])
    closed = [o[BEAT_CLOSED] for o in outs]
    assert [c is not None for c in closed] == [False] * 4 + [True, False, False]
    assert (closed[4].ed_seq, closed[4].end_seq, closed[4].fields["closed_by"]) == (0, 4, "next_ed")
    assert [o["beat"] for o in outs] == [0, 0, 0, 0, 1, 1, 1]
    assert outs[4]["phase"] == "ED"


def _summary(outs):
    boundary = next(o[BEAT_CLOSED] for o in outs if o[BEAT_CLOSED] is not None)
    samples = [o["sax_sample"] for o in outs if o["sax_sample"] is not None]
    seqs = [s for s, o in enumerate(outs) if o["sax_sample"] is not None]
    beat = BeatFrames("s/slice-0", boundary, seqs,
                      {"sax_sample": samples, "measurable": [True] * len(samples)})
    return boundary, SummariseSaxBeat().process(beat)


def test_a_track_lost_before_end_systole_restarts_strain_and_the_beat_is_poor():
    outs = run_strain(range(10), n_phases=10, invalid=(3,))
    assert outs[3]["circumferential_unchecked_pct"] is None
    assert "reference_not_ed" in outs[4]["flags"]
    assert outs[4]["circumferential_unchecked_pct"] == 0.0  # the new reference
    boundary, summary = _summary(outs)
    assert boundary.fields["reference_phase"] == 0 and boundary.fields["reference_until_seq"] == 2
    assert summary["es_seq"] == 5                            # the smallest cavity, after the gap
    assert summary["quality"] == "poor" and summary["peak_circumferential_strain_pct"] is None
    assert summary["flags"] == ["es_not_tracked"]


def test_a_track_lost_in_diastole_keeps_the_systolic_peaks():
    """A wall lost after end-systole and found again: the peaks are over the frames tracked
    against end-diastole, the frames after the restart (strain against a new reference)
    do not count towards them."""
    outs = run_strain(range(10), n_phases=10, invalid=(7,))
    assert "strain_restarted" not in outs[8]["flags"] and "reference_not_ed" in outs[8]["flags"]
    boundary, summary = _summary(outs)
    assert boundary.fields["reference_phase"] == 0 and boundary.fields["reference_until_seq"] == 6
    assert summary["es_seq"] == 5 and summary["quality"] == "good"
    assert summary["peak_circumferential_strain_pct"] == pytest.approx(PEAK_CIRC, abs=0.01)
    assert "flags" not in summary


def test_the_beat_summary_finds_end_systole_and_the_peaks():
    outs = run_strain(range(10), n_phases=10)
    boundary = outs[9][BEAT_CLOSED]
    samples = [o["sax_sample"] for o in outs]
    areas = [1000.0 * (1 - 0.3 * np.sin(np.pi * p / 10.0) ** 2) for p in range(10)]
    samples = [type(s)(s.t_s, s.endo_mm, s.epi_mm, a, s.insertion, s.level)
               for s, a in zip(samples, areas)]
    beat = BeatFrames("s/slice-0", boundary, list(range(10)),
                      {"sax_sample": samples, "measurable": [True] * 10})
    summary = SummariseSaxBeat().process(beat)
    assert summary["es_seq"] == 5 and summary["quality"] == "good"
    assert summary["fractional_area_change_pct"] == pytest.approx(30.0, abs=0.01)
    assert summary["peak_circumferential_strain_pct"] == pytest.approx(PEAK_CIRC, abs=0.01)
    assert summary["segment_peak_circumferential_strain_pct"] is None  # no RV insertion


# -- the whole app with the shipped network ------------------------------------------------


@pytest.fixture(scope="module")
def mr_analysis():
    return build_analysis(AnalysisConfig(app="mr-sax", engines=EngineConfig(threads=1)))


def test_the_app_measures_a_held_out_phantom_against_its_truth(mr_analysis, bench_module):
    """A phantom of the test split (never trained on), mid level: a result per frame,
    one good beat at the last phase; global peak circumferential strain within 3 %-points
    of the truth (the mean of its segments'), the AHA segment of >= 90 % of the
    myocardium right."""
    seed = int(split_seeds("test", 1, offset=5)[0])
    clip = make_mr_clip(random_mr_config(seed, slice_level="mid"))
    run = bench_module("mr_phantoms").run_slice(mr_analysis, clip, "phantom/slice-1",
                                                SAX_LEVELS.index("mid"))
    results, beats, labels = run["results"], run["beats"], run["labels"]
    assert len(results) == len(clip.frames) and len(beats) == 1
    assert sum(bool(r["measurable"]) for r in results) >= 0.9 * len(results)
    beat = beats[0]
    assert beat["quality"] == "good" and beat["closed_by"] == "last_phase"
    assert beat["aha_level"] == "mid"
    truth = clip.truth
    true_peak = float(truth.circ_strain_pct.mean(1).min())
    assert beat["peak_circumferential_strain_pct"] == pytest.approx(true_peak, abs=3.0)
    assert set(beat["segment_peak_circumferential_strain_pct"]) == {
        str(s) for s in truth.segment_ids}
    assert abs(beat["es_seq"] - int(truth.es_frames[0])) <= 2
    right = total = 0
    for t in range(0, len(labels), 4):
        seg = aha_segment_map(labels[t], "mid")
        both = (truth.myocardium[t] > 0) & (labels[t] == MRLabel.LV_MYOCARDIUM)
        right += int((seg[both] == truth.segments[t][both]).sum())
        total += int(both.sum())
    assert right / total >= 0.9
    # results in the frame's mm: the RV insertion points lie near the phantom's
    first = results[0]["rv_insertion_mm"]
    assert np.hypot(*np.subtract(first["anterior"], truth.insertion_points_mm[0, 0])) < 6.0


def test_a_second_heart_pasted_into_the_frame_is_dropped_unless_all_lv_is_asked_for(mr_analysis):
    """The shipped network on a phantom frame whose heart is copied into a corner: it draws
    LV in both places; the default keeps the larger region only (labels and myocardium
    probability), ``lv_component="all"`` keeps both."""
    import cv2

    clip = make_mr_clip(random_mr_config(int(split_seeds("test", 1, offset=5)[0]), slice_level="mid"))
    image = np.array(clip.frames[0], np.float32)
    lv = clip.truth.label_map()[0]
    rows, cols = np.nonzero((lv == MRLabel.LV_CAVITY) | (lv == MRLabel.LV_MYOCARDIUM))
    r0, r1, c0, c1 = rows.min() - 4, rows.max() + 5, cols.min() - 4, cols.max() + 5
    patch = cv2.resize(image[r0:r1, c0:c1], None, fx=0.7, fy=0.7, interpolation=cv2.INTER_AREA)
    h, w = image.shape
    corner = (0, 0) if r0 > h // 2 or c0 > w // 2 else (h - patch.shape[0], w - patch.shape[1])
    image[corner[0]:corner[0] + patch.shape[0], corner[1]:corner[1] + patch.shape[1]] = patch
    frame = FrameMessage(stream="s", seq=0, t_acq_ns=0, modality="MR", pixels=image,
                         spacing_mm=tuple(clip.spacing_mm), fps=clip.fps, phase_index=0)
    engine = mr_analysis.apps["mr-sax"].engines["mr"]

    def lv_regions(out):
        lv_mask = np.isin(out["grid_labels"], (MRLabel.LV_CAVITY, MRLabel.LV_MYOCARDIUM))
        return cv2.connectedComponents(lv_mask.astype(np.uint8), connectivity=4)[0] - 1

    everything = SegmentAndMove(engine, lv_component="all").process(frame, image)
    largest = SegmentAndMove(engine, lv_component="largest").process(frame, image)
    assert lv_regions(everything) >= 2 and lv_regions(largest) == 1
    dropped = (everything["grid_labels"] != largest["grid_labels"])
    assert dropped.sum() > 50 and (largest["grid_labels"][dropped] == MRLabel.BACKGROUND).all()
    assert (largest["myocardium_p"][dropped] == 0).all()
    kept = ~dropped
    assert np.array_equal(largest["myocardium_p"][kept], everything["myocardium_p"][kept])
    with pytest.raises(ValueError, match="lv_component"):
        SegmentAndMove(engine, lv_component="biggest")


class _RecordingEngine:
    """A stand-in for the joint network's engine that records its inputs and answers a
    flow of (seq, 2 seq) px against the reference and a state plane of seq + 1."""

    class spec:
        size = (32, 32)

    def __init__(self):
        self.inputs = []

    def __call__(self, x):
        self.inputs.append(x[0].copy())
        k = len(self.inputs)
        out = np.zeros((1, 7, 32, 32), np.float32)
        out[0, 0] = 1.0                                          # background everywhere
        out[0, 4], out[0, 5], out[0, 6] = k, 2 * k, k
        return out


def _mr_frame(seq, phase, value):
    """A frame whose image differs from frame to frame (normalised per image, so a pattern
    rolled by ``value`` / 10 columns, not a gain)."""
    base = np.random.default_rng(0).random((32, 32)).astype(np.float32)
    return FrameMessage(stream="s", seq=seq, t_acq_ns=seq * 40_000_000, modality="MR",
                        pixels=np.roll(base, int(value) // 10, axis=1),
                        spacing_mm=(1.5, 1.5), fps=25.0, phase_index=phase)


def test_segment_and_move_pairs_each_frame_with_the_cycles_first():
    """The network sees (reference, this frame, state): the reference is the stream's first
    frame until the phase index wraps, where the next cycle's first frame takes its place
    and the state starts at zero again; the frame-to-frame flow is only made on request."""
    from streamer.measure.sampling import step_flow_from_reference

    engine = _RecordingEngine()
    stage = SegmentAndMove(engine, lv_component="all", step_flow=True)
    outs = [stage.process(f, np.asarray(f.pixels)) for f in
            (_mr_frame(0, 0, 0.0), _mr_frame(1, 1, 10.0), _mr_frame(2, 2, 20.0),
             _mr_frame(3, 0, 30.0), _mr_frame(4, 1, 40.0))]
    ref0, ref3 = engine.inputs[0][1], engine.inputs[3][1]
    assert [np.array_equal(x[0], ref0) for x in engine.inputs[:3]] == [True] * 3
    assert np.array_equal(engine.inputs[3][0], ref3) and np.array_equal(engine.inputs[4][0], ref3)
    assert not np.array_equal(ref0, ref3)
    states = [float(x[2].max()) for x in engine.inputs]
    assert states == [0.0, 0.0, 2.0, 0.0, 0.0]                  # carried in a cycle, zero at its start
    assert outs[0]["flow"] is None and outs[3]["flow"] is None  # a cycle's first frame
    assert np.allclose(outs[1]["flow"], [2.0, 4.0])            # the reference -> frame 1 itself
    expect = step_flow_from_reference(np.full((32, 32, 2), [2.0, 4.0], np.float32),
                                      np.full((32, 32, 2), [3.0, 6.0], np.float32))
    assert np.allclose(outs[2]["flow"], expect) and np.allclose(expect, [1.0, 2.0])
    plain = SegmentAndMove(_RecordingEngine(), lv_component="all")
    assert all(plain.process(f, np.asarray(f.pixels))["flow"] is None
               for f in (_mr_frame(0, 0, 0.0), _mr_frame(1, 1, 10.0)))


# -- the stack's volumes, gathered slice stream by slice stream ----------------------------


def stack_beat(k: int, cavity_mm2, n_slices: int = 3, stack_id: str = "st1") -> BeatFrames:
    """The beat of slice k: its start's meta and its areas per phase."""
    meta = {"stack_id": stack_id, "n_slices": n_slices, "slice_index": k,
            "n_phases": len(cavity_mm2), "slice_position_mm": 10.0 * k,
            "slice_thickness_mm": 8.0}
    areas = [{"lv_cavity": float(c), "lv_myocardium": 600.0, "rv_cavity": 0.0}
             for c in cavity_mm2]
    n = len(cavity_mm2)
    return BeatFrames(f"s/slice-{k}", BeatBoundary(0, 0, n - 1, {}), list(range(n)),
                      {"areas_mm2": areas, "cardiac_phase": list(range(n)),
                       "stream_meta": [meta] * n})


def test_the_slice_that_completes_its_stack_gives_volumes_and_ef():
    stacks = StackCycles()
    stage = SummariseStack(stacks)
    # base (large), mid, apex (small cavity): the ends under a quarter of the largest
    assert stage.process(stack_beat(0, [300, 150, 200, 350]))["stack"] is None
    assert stage.process(stack_beat(2, [200, 100, 150, 250]))["stack"] is None
    out = stage.process(stack_beat(1, [1500, 900, 1200, 1600]))["stack"]
    assert out["stack_id"] == "st1" and out["n_slices"] == 3
    assert out["covers_lv"] is True and out["phases_missing"] == 0
    assert (out["ed_phase"], out["es_phase"], out["slice_spacing_mm"]) == (3, 1, 10.0)
    assert out["edv_ml"] == pytest.approx(22.0) and out["esv_ml"] == pytest.approx(11.5)
    assert out["ef_pct"] == pytest.approx(100 * 10.5 / 22.0, abs=0.01)
    assert out["mass_g"] == pytest.approx(3 * 600 * 10 / 1000 * 1.05)
    assert out["slice_levels"] == ["basal", "mid", "apical"]
    # the stack starts afresh: the next slice beat is the first of a new round
    assert stage.process(stack_beat(0, [300, 150, 200, 350]))["stack"] is None


def test_a_stack_that_does_not_cover_the_lv_gives_no_volumes():
    stage = SummariseStack(StackCycles())
    for k in (0, 1):
        stage.process(stack_beat(k, [1500, 900, 1200, 1600]))
    out = stage.process(stack_beat(2, [1400, 800, 1000, 1500]))["stack"]
    assert out["covers_lv"] is False and "ef_pct" not in out


def test_stacks_waiting_for_slices_are_bounded():
    stacks = StackCycles(max_stacks=2)
    stage = SummariseStack(stacks)
    for name in ("a", "b", "c"):
        stage.process(stack_beat(0, [100, 50], stack_id=name))
    assert list(stacks._stacks) == ["b", "c"]  # the stack heard of longest ago went
    # a single clip (no stack in its start) has no stack summary
    beat = stack_beat(0, [100, 50])
    beat.values["stream_meta"] = [{}] * 2
    assert stage.process(beat) == {"stack": None}


def test_the_anterior_direction_follows_the_patient_orientation():
    from streamer.apps.mr_sax import anterior_direction

    # axial (rows run posterior): anterior up; sagittal (columns run posterior): left
    assert anterior_direction({"image_orientation_patient": [1, 0, 0, 0, 1, 0]}) == (-1.0, 0.0)
    assert anterior_direction({"image_orientation_patient": [0, 1, 0, 0, 0, -1]}) == (0.0, -1.0)
    # an axial image turned upside down: anterior down
    assert anterior_direction({"image_orientation_patient": [-1, 0, 0, 0, -1, 0]}) == (1.0, 0.0)
    # unknown, or anterior across the slice (coronal): the standard display's up
    assert anterior_direction({}) == (-1.0, 0.0)
    assert anterior_direction({"image_orientation_patient": [1, 0, 0, 0, 0, -1]}) == (-1.0, 0.0)


# -- wall-motion scores per stack and beat (Cardiac-MOS) ------------------------------------


def held_out_heart(frames: int, k: int = 0) -> tuple[list, np.ndarray]:
    """A phantom heart of the test split past the trainer's test hearts (never trained on):
    its basal, mid and apical slices, and the 16 segments' true class codes."""
    seed = int(split_seeds("test", 1, offset=300 + k)[0])
    clips = [make_mr_clip(c) for c in wall_motion_stack_configs(seed, frames=frames)]
    truth = np.zeros(16, int)
    for clip in clips:
        truth[np.asarray(clip.truth.segment_ids) - 1] = clip.truth.segment_scores
    return clips, truth


def test_a_held_out_heart_is_scored_segment_by_segment(mr_analysis, bench_module):
    """Three slices of one phantom heart sent as the slice streams of one stack: after the
    third slice's beat, a wall_motion message with all 16 segments scored from the app's
    own labels, its fields consistent, and most segments right."""
    clips, truth = held_out_heart(20)
    fields, scoring_ms = bench_module("wall_motion_app").run_stack(mr_analysis, clips, "heart")
    assert fields is not None and fields["stack_id"] == "heart" and fields["frames"] == 20
    assert fields["scored_segments"] == 16 and fields["missing_segments"] == []
    assert fields["slices"] == {"basal": 0, "mid": 1, "apical": 2}
    assert fields["anchors"] == {"basal": "basal", "mid": "mid", "apical": "mid"}
    segments = fields["segments"]
    assert [s["aha"] for s in segments] == list(range(1, 17))
    assert all(s["name"] == AHA_NAMES[s["aha"]] for s in segments)
    for s in segments:
        p = np.asarray(s["p"])
        assert p.sum() == pytest.approx(1.0, abs=1e-3)
        assert s["label"] == WALL_MOTION_CLASSES[int(np.argmax(p))]
        assert s["score"] == WALL_MOTION_SCORES[s["label"]]
    assert fields["msi"] == pytest.approx(np.mean([s["score"] for s in segments]), abs=1e-3)
    codes = np.array([WALL_MOTION_CLASSES.index(s["label"]) for s in segments])
    assert (codes == truth).sum() >= 12, (codes, truth)
    assert "phantom" in fields["trained_on"] and scoring_ms > 0


def test_a_stack_without_an_apical_slice_scores_the_segments_it_has(mr_analysis, bench_module):
    """The apical slice replaced by noise (no LV): basal and mid are scored, 13-16 are
    missing and the message says why; a 30-frame heart (a count training never saw) runs."""
    from types import SimpleNamespace

    clips, _ = held_out_heart(30, k=1)
    noise = np.random.default_rng(0).integers(0, 60, clips[2].frames.shape).astype(
        clips[2].frames.dtype)
    clips[2] = SimpleNamespace(frames=noise, fps=clips[2].fps, spacing_mm=clips[2].spacing_mm)
    fields, _ = bench_module("wall_motion_app").run_stack(mr_analysis, clips, "heart")
    assert fields["missing_segments"] == [13, 14, 15, 16] and fields["scored_segments"] == 12
    assert fields["missing_reasons"] == {"apical": "no_lv_slice"}
    assert fields["slices"] == {"basal": 0, "mid": 1, "apical": None}
    assert fields["anchors"] == {"basal": "basal", "mid": "mid", "apical": None}
    assert all(s["score"] is None and s["p"] is None for s in fields["segments"][12:])
    assert fields["frames"] == 30


def test_a_single_slice_gives_no_wall_motion_and_stacks_are_bounded():
    stacks = StackCycles(max_stacks=2, max_slices=4)
    assert stacks.add("a", 5, SliceBeat(0)) is None and "a" not in stacks._stacks  # too many
    for name in ("a", "b", "c"):
        assert stacks.add(name, 2, SliceBeat(0)) is None
    assert list(stacks._stacks) == ["b", "c"]
    assert [s.slice_index for s in stacks.add("c", 2, SliceBeat(1))] == [0, 1]
    assert stacks.rounds == {"c": 1}  # the stack's beats are numbered across its streams
    # a clip with no stack in its start is not gathered
    stage = ScoreWallMotion(scorer=None, stacks=StackCycles())
    beat = BeatFrames("s", BeatBoundary(0, 0, 1, {}), [0, 1],
                      {"grid_image": [None] * 2, "grid_labels": [None] * 2, "grid": [None] * 2,
                       "stream_meta": [{"n_phases": 2}] * 2, "cardiac_phase": [0, 1]})
    assert stage.process(beat) == {}
    assert stack_stream("stack-ab/slice-12") == "stack-ab" and stack_stream("echo") == "echo"
    assert stack_stream("x/slice-y") == "x/slice-y"


# -- infarct maps per slice and beat (OF-RNN) ------------------------------------------------


@pytest.fixture(scope="module")
def mr_analysis_with_maps():
    return build_analysis(AnalysisConfig(app="mr-sax", engines=EngineConfig(threads=1), apps={
        "mr-sax": MrShortAxisConfig(send_labels=True)}))


def test_a_held_out_infarct_is_mapped_where_it_lies(mr_analysis_with_maps, bench_module):
    """A held-out phantom slice with a transmural infarct: the beat maps it (status, area,
    segment shares, the map in the frame's rows and columns), over the true infarct."""
    seeds = split_seeds("test", 40, offset=600)
    seed = next(int(s) for s in seeds
                if len(infarct_slice_config(int(s)).infarct_segments) >= 2
                and infarct_slice_config(int(s)).infarct_transmurality > 0.6)
    cfg = infarct_slice_config(seed, frames=20)
    clip = make_mr_clip(cfg)
    fields, p, ms = bench_module("infarct_app").run_slice(mr_analysis_with_maps, clip, "s")
    assert fields["infarct_status"] == "mapped" and ms > 0
    assert p.shape == clip.frames.shape[1:] and p.dtype == np.float32
    ed = int(clip.truth.ed_frames[0])
    truth, myo = clip.truth.infarct[ed] > 0, clip.truth.myocardium[ed] > 0
    assert set(fields["infarct_segment_share"]) == {str(s) for s in AHA_SEGMENTS[cfg.slice_level]}
    assert fields["infarct_area_mm2"] > 0 and 0 < fields["infarct_p_max"] <= 1
    got = p > 0.5
    dice = 2 * (got & truth & myo).sum() / ((got & myo).sum() + (truth & myo).sum())
    assert dice >= 0.5, dice
    infarcted = [fields["infarct_segment_share"][str(s)] for s in cfg.infarct_segments]
    remote = [v for k, v in fields["infarct_segment_share"].items()
              if int(k) not in cfg.infarct_segments]
    assert min(infarcted) > max(remote), fields["infarct_segment_share"]


def test_a_beat_too_short_is_not_mapped_and_says_why():
    stage = MapInfarct(mapper=None, slices=SliceConfig(), send_map=True)
    n = 4
    beat = BeatFrames("s", BeatBoundary(0, 0, n - 1, {"reference_phase": 0}), list(range(n)),
                      {"grid_image": [np.zeros((8, 8), np.float32)] * n,
                       "grid_labels": [np.zeros((8, 8), np.uint8)] * n,
                       "grid": [None] * n, "stream_meta": [{}] * n,
                       "cardiac_phase": list(range(n))})
    out = stage.process(beat)
    assert out["infarct_status"] == "too_few_frames" and out["infarct_p"] is None
    assert set(out) == set(MapInfarct.outputs)
