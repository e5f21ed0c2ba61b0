"""analyze: the side-car's apps in one process, JSON lines out; several clips as several
streams, interleaved by acquisition time."""

import json

import numpy as np
import pytest

from streamer.analyze import analyze
from streamer.apps import AnalysisConfig, build_analysis
from streamer.io.clips import open_clip, open_input
from streamer.replay import ReplayConfig


def lines(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_one_result_per_frame_between_start_and_end(npz_clip, tmp_path):
    out = tmp_path / "r.jsonl"
    seen = []
    with open_clip(npz_clip) as reader:
        summary = analyze(reader, out, build_analysis(AnalysisConfig(app="none")),
                          ReplayConfig(stream="a"),
                          on_frame=seen.append)
    rows = lines(out)
    assert [r["kind"] for r in rows] == ["start"] + ["result"] * 12 + ["end"]
    assert [r["seq"] for r in rows[1:-1]] == list(range(12))
    assert all(r["v"] == 1 and r["stream"] == "a" for r in rows)
    assert rows[0]["meta"]["app"]["name"] == "none"
    assert rows[1]["app"] == "none"
    assert rows[1]["flags"] == ["analysis_off"] and "preprocess" in rows[1]["latency_ms"]
    assert rows[-1]["meta"]["processed"] == 12
    assert (summary.frames, summary.results, summary.errors) == (12, 12, 0)
    assert seen == list(range(1, 13))


def test_a_nan_frame_is_an_error_line_and_the_rest_go_on(tmp_path):
    frames = np.ones((4, 8, 8), np.float32)
    frames[2, 1, 1] = np.nan
    clip = tmp_path / "nan.npz"
    np.savez(clip, frames=frames, spacing_mm=np.array([1.0, 1.0]), fps=np.array(20.0),
             modality=np.array("MR"))
    out = tmp_path / "r.jsonl"
    with open_clip(clip) as reader:
        summary = analyze(reader, out, build_analysis(AnalysisConfig(app="none")))
    rows = lines(out)
    assert [r["kind"] for r in rows[1:-1]] == ["result", "result", "error", "result"]
    assert rows[3]["code"] == "bad_pixels" and rows[3]["seq"] == 2
    assert summary.errors == 1 and summary.results == 3


def mr_clip(path, n, fps):
    frames = np.random.default_rng(n).random((n, 8, 8)).astype(np.float32)
    np.savez(path, frames=frames, spacing_mm=np.array([1.0, 1.0]), fps=np.array(fps),
             modality=np.array("MR"))
    return path


def test_several_clips_are_interleaved_streams_each_with_its_own_state(tmp_path):
    """Two slices of an MR stack at 20 and 10 fps: merged by acquisition time, routed by
    modality (auto) to the MR app, each slice its own stream."""
    a, b = mr_clip(tmp_path / "a.npz", 4, 20.0), mr_clip(tmp_path / "b.npz", 2, 10.0)
    out = tmp_path / "r.jsonl"
    analysis = build_analysis(AnalysisConfig())  # auto: routed by modality
    with open_clip(a) as ra, open_clip(b) as rb:
        summary = analyze([ra, rb], out, analysis,
                          [ReplayConfig(stream="s/slice-0"), ReplayConfig(stream="s/slice-1")],
                          t0_ns=0)
    rows = lines(out)
    assert all(r["meta"]["app"]["name"] == "mr-sax" for r in rows if r["kind"] == "start")
    assert all(r["app"] == "mr-sax" for r in rows if r["kind"] == "result")
    order = [(r["kind"], r["stream"], r.get("seq")) for r in rows]
    assert order == [
        ("start", "s/slice-0", None), ("start", "s/slice-1", None),
        ("result", "s/slice-0", 0), ("result", "s/slice-1", 0),  # both at t = 0: given order
        ("result", "s/slice-0", 1),                              # 0.05 s
        ("result", "s/slice-0", 2), ("result", "s/slice-1", 1),  # 0.10 s
        ("end", "s/slice-1", None),                              # b's last frame was at 0.10 s
        ("result", "s/slice-0", 3),                              # 0.15 s
        ("end", "s/slice-0", None)]
    assert all(set(r["areas_mm2"]) == {"lv_cavity", "lv_myocardium", "rv_cavity"}
               for r in rows if r["kind"] == "result")
    ends = {r["stream"]: r["meta"]["processed"] for r in rows if r["kind"] == "end"}
    assert ends == {"s/slice-0": 4, "s/slice-1": 2}
    assert (summary.frames, summary.results, summary.errors) == (6, 6, 0)
    # a fixed t0: every acquisition time is known
    assert [r["t_acq_ns"] for r in rows if r["kind"] == "result" and r["stream"] == "s/slice-1"] \
        == [0, 100_000_000]


def test_several_clips_need_one_stream_name_each(tmp_path):
    a, b = mr_clip(tmp_path / "a.npz", 2, 20.0), mr_clip(tmp_path / "b.npz", 2, 20.0)
    analysis = build_analysis(AnalysisConfig(app="none"))
    with open_clip(a) as ra, open_clip(b) as rb:
        with pytest.raises(ValueError, match="both be stream 'same'"):
            analyze([ra, rb], tmp_path / "r.jsonl", analysis, ReplayConfig(stream="same"))
    with open_clip(a) as ra, open_clip(b) as rb:
        with pytest.raises(ValueError, match="2 clips but 1 replay configs"):
            analyze([ra, rb], tmp_path / "r.jsonl", analysis, [ReplayConfig(stream="x")])


def test_cli_analyze_of_clips_with_the_same_name_numbers_their_streams(npz_clip, tmp_path):
    import shutil

    from streamer.cli import main

    other = tmp_path / "other"
    other.mkdir()
    shutil.copy(npz_clip, other / npz_clip.name)
    out = tmp_path / "both.jsonl"
    assert main(["analyze", str(npz_clip), str(other / npz_clip.name), "--app", "none",
                 "--out", str(out), "--no-progress", "--keep-identifiers"]) == 0
    rows = lines(out)
    assert [r["stream"] for r in rows if r["kind"] == "start"] == ["clip-1", "clip-2"]
    ends = {r["stream"]: r["meta"]["processed"] for r in rows if r["kind"] == "end"}
    assert ends == {"clip-1": 12, "clip-2": 12}


def test_cli_analyze_of_a_stack_writes_each_slice_as_its_own_stream(write_nifti_stack, tmp_path):
    from streamer.cli import main

    data = np.random.default_rng(3).integers(0, 900, (6, 5, 3, 4)).astype(np.int16)  # x, y, z, t
    path = write_nifti_stack(tmp_path / "sax.nii.gz", data, (1.5, 1.25, 8.0, 40.0))
    out = tmp_path / "stack.jsonl"
    assert main(["analyze", str(path), "--modality", "MR", "--app", "mr-sax", "--out", str(out),
                 "--no-progress", "--keep-identifiers"]) == 0
    rows = lines(out)
    names = [f"sax/slice-{k}" for k in range(3)]
    # a beat per slice: its start says n_phases, so the last phase closes the cycle; the
    # beat of the slice that completes the stack is followed by the stack's wall motion
    assert [(r["kind"], r["stream"]) for r in rows if r["kind"] != "result"] == [
        (kind, name) for name in names for kind in ("start", "beat", "end")][:-1] + [
        ("wall_motion", "sax"), ("end", names[-1])]
    [wall] = [r for r in rows if r["kind"] == "wall_motion"]
    # noise holds no LV: nothing is scored, and the message says so
    assert wall["missing_segments"] == list(range(1, 17)) and wall["msi"] is None
    assert wall["missing_reasons"] == dict.fromkeys(("basal", "mid", "apical"), "no_lv_slice")
    assert [s["aha"] for s in wall["segments"]] == list(range(1, 17))
    assert all(r["closed_by"] == "last_phase" for r in rows if r["kind"] == "beat")
    results = [r for r in rows if r["kind"] == "result"]
    assert [(r["stream"], r["seq"]) for r in results] == [(n, p) for n in names for p in range(4)]
    # the slices step to the patient's head, towards the base: slice 0 is the apical one
    assert all(r["aha_level"] == level for name, level in zip(names, ("apical", "mid", "basal"))
               for r in results if r["stream"] == name)
    starts = [r for r in rows if r["kind"] == "start"]
    assert [s["meta"]["slice_position_mm"] for s in starts] == pytest.approx([30.0, 38.0, 46.0])
    assert len({s["meta"]["stack_id"] for s in starts}) == 1
    # --slice K: that slice alone, as one clip in the stream named after the file, that still
    # knows its place in the stack (so its AHA level)
    one = tmp_path / "one.jsonl"
    assert main(["analyze", str(path), "--slice", "1", "--modality", "MR", "--app", "mr-sax",
                 "--out", str(one), "--no-progress", "--keep-identifiers"]) == 0
    rows = lines(one)
    assert {r["stream"] for r in rows} == {"sax"} and len(rows) == 7  # start, 4, beat, end
    assert rows[0]["meta"]["stack_id"] == starts[0]["meta"]["stack_id"]
    assert (rows[0]["meta"]["slice_index"], rows[0]["meta"]["n_slices"]) == (1, 3)
    results = [r for r in rows if r["kind"] == "result"]
    assert [r["aha_level"] for r in results] == ["mid"] * 4
    assert not any("no_aha_level" in r["flags"] for r in results)


def test_a_stack_and_a_clip_of_its_slice_name_cannot_be_analysed_together(write_nifti_stack,
                                                                          tmp_path):
    path = write_nifti_stack(tmp_path / "sax.nii", np.zeros((6, 5, 2, 3), np.int16),
                             (1.5, 1.25, 8.0, 40.0))
    clip = mr_clip(tmp_path / "b.npz", 2, 10.0)
    analysis = build_analysis(AnalysisConfig(app="none"))
    with open_input(path) as stack, open_clip(clip) as other:
        with pytest.raises(ValueError, match="both be stream 'sax/slice-1'"):
            analyze([stack, other], tmp_path / "r.jsonl", analysis,
                    [ReplayConfig(modality="MR", keep_identifiers=True),
                     ReplayConfig(stream="sax/slice-1")])


# -- --masks-out: the MR label maps of every slice and phase ------------------------------


def test_masks_out_writes_the_label_maps_of_a_nifti_stack(write_nifti_stack, tmp_path):
    from streamer.cli import main

    data = np.random.default_rng(4).integers(0, 900, (40, 32, 3, 5)).astype(np.int16)
    path = write_nifti_stack(tmp_path / "sax.nii.gz", data, (1.5, 1.5, 8.0, 40.0),
                             origin=(-12.0, 7.0, 0.0))  # a slice at position 0 mm
    out, masks = tmp_path / "r.jsonl", tmp_path / "masks.npz"
    assert main(["analyze", str(path), "--app", "mr-sax", "--modality", "MR", "--out", str(out),
                 "--masks-out", str(masks), "--no-progress"]) == 0
    with open_clip(path, slice_index=0) as reader:
        frame_shape = reader.info.shape[:2]
    z = np.load(masks)
    assert set(z.files) == {"labels", "instance_number", "slice_position_mm", "trigger_time_ms"}
    assert z["labels"].dtype == np.uint8 and z["labels"].shape == (3, 5, *frame_shape)
    assert set(np.unique(z["labels"])) <= {0, 1, 2, 3}
    assert (z["instance_number"] == -1).all() and z["instance_number"].shape == (3, 5)
    assert z["slice_position_mm"] == pytest.approx([0.0, 8.0, 16.0])
    assert z["trigger_time_ms"][0] == pytest.approx([0.0, 40.0, 80.0, 120.0, 160.0])
    # the results carry nothing but headers in the .jsonl
    assert all("labels" not in r for r in lines(out))


@pytest.mark.filterwarnings("ignore:Invalid value for VR UI")
def test_masks_out_of_a_real_dicom_series_follows_its_instances(sunnybrook_series, tmp_path):
    """The Sunnybrook series: 12 x 20 maps in the images' own rows and columns, each tagged
    with its DICOM InstanceNumber (slice after slice, 20 phases each), the LV found."""
    from streamer.cli import main

    masks = tmp_path / "masks.npz"
    assert main(["analyze", str(sunnybrook_series), "--out", str(tmp_path / "r.jsonl"),
                 "--masks-out", str(masks), "--no-progress"]) == 0
    z = np.load(masks)
    assert z["labels"].shape == (12, 20, 256, 256)
    numbers = z["instance_number"]
    assert sorted(numbers.ravel().tolist()) == list(range(1, 241))
    assert (np.diff(numbers, axis=1) == 1).all()  # 20 phases of a slice, then the next slice
    assert np.all(np.diff(z["slice_position_mm"]) > 0)
    assert np.all(np.diff(z["trigger_time_ms"], axis=1) > 0)
    mid = z["labels"][6]
    assert ((mid == 1).sum((1, 2)) > 200).all()  # an LV cavity on every phase of a mid slice
    assert ((mid == 2).sum((1, 2)) > 200).all()
    # each slice's infarct map (OF-RNN) of its first mapped beat, on its ED myocardium only
    p = z["infarct_p"]
    assert p.shape == (12, 256, 256) and p.dtype == np.float32
    assert np.isfinite(p[6]).all() and (p[6] >= 0).all() and (p[6] <= 1).all()
    assert (p[6][z["labels"][6, 0] != 2] < 0.05).all()   # off the ED myocardium (resampled)
    mapped = [k for k in range(12) if np.isfinite(p[k]).all()]
    assert 6 in mapped and all(np.isnan(p[k]).all() for k in range(12) if k not in mapped)
    beats = [r for r in lines(tmp_path / "r.jsonl") if r["kind"] == "beat"]
    assert [b["infarct_status"] == "mapped" for b in beats] == [k in mapped for k in range(12)]
    assert all("infarct_p" not in b for b in beats)


def test_masks_out_needs_mr_frames_and_one_input(tmp_path, capsys):
    from streamer.cli import main

    a = mr_clip(tmp_path / "a.npz", 3, 20.0)
    assert main(["analyze", str(a), "--app", "none", "--out", str(tmp_path / "r.jsonl"),
                 "--masks-out", str(tmp_path / "m.npz"), "--no-progress"]) == 2
    assert "no label maps to write" in capsys.readouterr().err
    assert main(["analyze", str(a), str(a), "--out", str(tmp_path / "r.jsonl"),
                 "--masks-out", str(tmp_path / "m.npz"), "--no-progress"]) == 2
    assert "one clip or stack" in capsys.readouterr().err
    assert not (tmp_path / "m.npz").exists()
