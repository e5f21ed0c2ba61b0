"""The velocity-mapping app (issue 17): routing by channels, per-frame results and the
cycle's beat message with its curves against the phantom's truth, the labels into
``--masks-out``, a replay into a side-car over loopback, and bad input (no VENC, wrong or
mismatched channels, NaN, phase that is all noise)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from streamer.analyze import analyze
from streamer.apps import AnalysisConfig, build_analysis
from streamer.apps.mr_velocity import PEAKS, VelocityMappingApp, VelocityMappingConfig
from streamer.io.clips import open_clip
from streamer.measure import velocity as vm
from streamer.replay import ReplayConfig

FRAMES = 24


@pytest.fixture(scope="module")
def phantom(tmp_path_factory):
    """A held-out basal velocity-mapping phantom slice (black blood, background offsets)
    written as the phantoms are (.npz with channels magnitude, v_col_mm_s, v_row_mm_s,
    v_through_mm_s and venc_mm_s in its metadata), and its clip."""
    from calib.datasets import split_seeds, velocity_mapping_config
    from calib.io import write_phantom
    from calib.mr import make_mr_clip

    seed = int(split_seeds("test", 1, offset=90)[0])
    cfg = velocity_mapping_config(seed, frames=FRAMES, slice_level="basal", rows=176, cols=176,
                                  pixel_mm=1.4)
    clip = make_mr_clip(cfg)
    path, _ = write_phantom(clip, tmp_path_factory.mktemp("vm") / "slice.npz")
    return path, clip


@pytest.fixture(scope="module")
def analysis():
    return build_analysis(AnalysisConfig(app="auto", apps={
        "mr-velocity": VelocityMappingConfig(send_labels=True, level="basal")}))


def rows_of(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def run(analysis, path, tmp_path, name="out.jsonl", **replay):
    out = tmp_path / name
    with open_clip(path) as reader:
        analyze(reader, out, analysis, ReplayConfig(stream="vm", **replay))
    return rows_of(out)


def test_a_velocity_clip_is_routed_to_the_app_and_measured_against_truth(phantom, analysis,
                                                                        tmp_path):
    path, clip = phantom
    rows = run(analysis, path, tmp_path)
    start = rows[0]
    assert start["meta"]["app"]["name"] == "mr-velocity"
    assert start["meta"]["channels"][0] == "magnitude" and start["meta"]["venc_cm_s"] > 0
    engine = start["meta"]["app"]["engines"]["velocity"]
    assert engine["backend"] == "torch" and "phantom" in engine["trained_on"]
    results = [r for r in rows if r["kind"] == "result"]
    assert [r["cycle_frame"] for r in results] == list(range(FRAMES))
    assert all(r["beat"] == 0 and "venc_unknown" not in r["flags"] for r in results)
    [beat] = [r for r in rows if r["kind"] == "beat"]
    assert beat["velocity_status"] == "measured" and beat["quality"] == "good"
    assert beat["frames"] == FRAMES and beat["aha_level"] == "basal"
    truth = vm.velocity_curves(clip.truth.velocity_mm_s / 10.0, clip.truth.myocardium > 0)
    for name in vm.CURVES:
        measured = np.asarray(beat[f"{name}_velocity_cm_s"])
        rms = float(np.sqrt(np.mean((measured - truth.curve(name)) ** 2)))
        assert rms < 0.5, (name, rms)
    assert abs(beat["es_frame"] - int(clip.truth.es_frames[0])) <= 1
    assert all(name in beat for name in PEAKS)
    assert beat["peak_systolic_radial_velocity_cm_s"] > 1.0
    assert beat["peak_early_diastolic_longitudinal_velocity_cm_s"] < -1.0
    assert set(beat["segment_velocity_cm_s"]) == {"1", "2", "3", "4", "5", "6"}
    assert beat["phase_unwrapped_share"] == 0.0 and beat["background_offset_cm_s"] > 0


def test_labels_travel_with_the_beat_and_go_into_masks_out(phantom, tmp_path):
    from streamer.cli import main

    path, clip = phantom
    out, masks = tmp_path / "r.jsonl", tmp_path / "masks.npz"
    assert main(["analyze", str(path), "--out", str(out), "--masks-out", str(masks),
                 "--vm-labels", "--no-progress"]) == 0
    with np.load(masks) as z:
        labels = z["labels"]
    assert labels.shape == (1, FRAMES, *clip.frames.shape[1:])
    myo = clip.truth.myocardium > 0
    assert set(np.unique(labels)) <= {0, 2}
    dice = 2 * ((labels[0] == 2) & myo).sum() / ((labels[0] == 2).sum() + myo.sum())
    assert dice > 0.75


def test_mr_without_velocity_channels_still_goes_to_the_short_axis_app(analysis, tmp_path):
    frames = np.random.default_rng(0).random((4, 64, 64)).astype(np.float32)
    clip = tmp_path / "cine.npz"
    np.savez(clip, frames=frames, spacing_mm=np.array([1.5, 1.5]), fps=np.array(20.0),
             modality=np.array("MR"))
    rows = run(analysis, clip, tmp_path)
    assert rows[0]["meta"]["app"]["name"] == "mr-sax"
    assert VelocityMappingApp.takes(["magnitude", "v_x", "v_y", "v_z"])
    assert not VelocityMappingApp.takes(None) and not VelocityMappingApp.takes(["magnitude"])


def _vm_clip(tmp_path, name, clip, velocity_mm_s=None, channels=None, venc=True, nan=False):
    v = clip.velocity_mm_s if velocity_mm_s is None else velocity_mm_s
    frames = np.concatenate([clip.frames.astype(np.float32)[..., None], v.astype(np.float32)], -1)
    if nan:
        frames[3, 10, 10, 1] = np.nan
    meta = {"venc_mm_s": clip.config.venc_mm_s} if venc else {}
    path = tmp_path / name
    np.savez(path, frames=frames, spacing_mm=np.asarray(clip.spacing_mm), fps=np.array(clip.fps),
             modality=np.array("MR"),
             channels=np.array(channels or ["magnitude", "v_col_mm_s", "v_row_mm_s",
                                            "v_through_mm_s"]),
             metadata_json=np.array(json.dumps(meta)))
    return path


def test_bad_input_gets_a_clear_error_or_flag_and_the_stream_goes_on(phantom, analysis, tmp_path):
    _, clip = phantom
    # no VENC: measured, flagged, wraps not undone
    rows = run(analysis, _vm_clip(tmp_path, "novenc.npz", clip, venc=False), tmp_path, "a.jsonl")
    results = [r for r in rows if r["kind"] == "result"]
    assert all("venc_unknown" in r["flags"] for r in results)
    [beat] = [r for r in rows if r["kind"] == "beat"]
    assert beat["phase_unwrapped_share"] is None and beat["venc_cm_s"] is None
    # a NaN velocity: that frame is an error, the others are answered, the cycle is cut
    rows = run(analysis, _vm_clip(tmp_path, "nan.npz", clip, nan=True), tmp_path, "b.jsonl")
    errors = [r for r in rows if r["kind"] == "error"]
    assert [(e["code"], e["seq"]) for e in errors] == [("bad_pixels", 3)]
    assert len([r for r in rows if r["kind"] == "result"]) == FRAMES - 1
    [beat] = [r for r in rows if r["kind"] == "beat"]
    assert (beat["quality"], beat["velocity_status"]) == ("poor", "frames_missing")
    # all-wrapped phase: the velocity channels are noise within +-VENC
    venc = clip.config.venc_mm_s
    noise = np.random.default_rng(2).uniform(-venc, venc, clip.velocity_mm_s.shape)
    rows = run(analysis, _vm_clip(tmp_path, "noise.npz", clip, velocity_mm_s=noise), tmp_path,
               "c.jsonl")
    [beat] = [r for r in rows if r["kind"] == "beat"]
    assert beat["quality"] == "poor"
    assert beat["velocity_status"] in ("phase_unreliable", "no_myocardium")
    assert all(beat[name] is None for name in PEAKS)
    # channels that are not magnitude and three velocities, forced into the app: refused
    bad = _vm_clip(tmp_path, "bad.npz", clip, channels=["magnitude", "v_x", "v_y", "phase"])
    forced = build_analysis(AnalysisConfig(app="mr-velocity"))
    rows = run(forced, bad, tmp_path, "d.jsonl")
    codes = {r["code"] for r in rows if r["kind"] == "error"}
    assert codes == {"bad_channels"} and "v_z" in rows[1]["message"]


def test_a_velocity_clip_replayed_into_a_side_car_gives_results_and_a_beat(phantom):
    """Issue 17, acceptance 4: over loopback, one result per frame and the cycle's beat
    message with its peaks, with the per-frame latency in each result."""
    from streamer.cli import main
    from streamer.io.sockets import ResultSubscriber, SubscriberConfig
    from streamer.sidecar import SideCar, SideCarConfig

    path, _ = phantom
    config = SideCarConfig(ingest="tcp://127.0.0.1:*", publish="tcp://127.0.0.1:*", lossless=True)
    with SideCar(config, build_analysis(AnalysisConfig())) as sidecar, \
            ResultSubscriber(SubscriberConfig(sidecar.publish_endpoint)) as subscriber:
        assert main(["replay", str(path), "--to", sidecar.ingest_endpoint, "--max-rate",
                     "--quiet", "--stream", "vm"]) == 0
        messages = []
        while not messages or messages[-1].kind != "end":
            message = subscriber.recv(timeout_s=60)
            assert message is not None, "the side-car stopped answering"
            messages.append(message)
    results = [m for m in messages if m.kind == "result"]
    assert len(results) == FRAMES and all(r.app == "mr-velocity" for r in results)
    assert all("cycle" in r.latency_ms for r in results)
    [beat] = [m for m in messages if m.kind == "beat"]
    assert beat.fields["velocity_status"] == "measured"
    assert beat.fields["peak_systolic_longitudinal_velocity_cm_s"] > 0
    assert not [m for m in messages if m.kind == "error"]


def test_a_scanners_dicom_export_is_read_and_measured(phantom, analysis, tmp_path):
    """A folder with the slice's magnitude series and three phase series (the standard MR
    Velocity Encoding Sequence, signed 16-bit phase, encodings along the image axes) in an
    oblique short-axis orientation: read into the four channels with its VENC, routed to the
    app and measured like the phantom's own file."""
    from streamer.io.clips.velocity_series import write_velocity_series

    _, clip = phantom
    folder = tmp_path / "vm_dicom"
    venc = clip.config.venc_mm_s / 10.0
    # a short-axis plane: columns towards the patient's left-posterior, rows towards the
    # feet-anterior, so that the normal points to the apex side
    iop = (0.70711, 0.70711, 0.0, -0.21213, 0.21213, -0.95394)
    write_velocity_series(folder, clip.frames.astype(np.float32), clip.truth.velocity_mm_s / 10.0,
                          clip.spacing_mm, np.arange(FRAMES) * 1000.0 / clip.fps, venc,
                          style="standard", image_orientation_patient=iop)
    with open_clip(folder) as reader:
        assert reader.info.channels == ("magnitude", "v_x", "v_y", "v_z")
        assert reader.info.metadata["venc_cm_s"] == pytest.approx(venc, rel=1e-3)
    rows = run(analysis, folder, tmp_path, "dicom.jsonl")
    assert rows[0]["meta"]["app"]["name"] == "mr-velocity"
    [beat] = [r for r in rows if r["kind"] == "beat"]
    assert beat["velocity_status"] == "measured"
    truth = vm.velocity_curves(clip.truth.velocity_mm_s / 10.0, clip.truth.myocardium > 0)
    radial = np.asarray(beat["radial_velocity_cm_s"])
    assert np.sqrt(np.mean((radial - truth.radial) ** 2)) < 0.5
