"""Bull's-eye PNGs (streamer.bullseye, `cardiostream bullseye`) from `analyze` of a real
NIfTI file holding a phantom heart's short-axis stack."""

from __future__ import annotations

import json

import cv2
import pytest

from streamer.bullseye import RINGS, StackBeat, stack_beats, write_bullseyes
from streamer.cli import main
from streamer.vocab import AHA_SEGMENTS


def test_analyze_then_bullseye_draws_one_png_per_stack_beat(phantom_heart_nifti, tmp_path, capsys):
    path, _ = phantom_heart_nifti()
    out = tmp_path / "heart.jsonl"
    assert main(["analyze", str(path), "--modality", "MR", "--app", "mr-sax", "--out", str(out),
                 "--no-progress", "--stream", "heart"]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    [wall] = [r for r in rows if r["kind"] == "wall_motion"]
    assert wall["stream"] == "heart" and wall["scored_segments"] == 16
    [beat] = list(stack_beats(rows))
    assert [b["stream"] for b in beat.slice_beats] == [f"heart/slice-{k}" for k in range(3)]
    strain = beat.segment_strain_pct()
    assert set(strain) <= set(range(1, 17)) and all(-45 < v < 5 for v in strain.values())
    share = beat.segment_infarct_share()
    assert set(share) <= set(range(1, 17)) and all(0 <= v <= 1 for v in share.values())
    capsys.readouterr()
    assert main(["bullseye", str(out), "--out", str(tmp_path / "png")]) == 0
    [png] = capsys.readouterr().out.split()
    assert png.endswith("heart-beat0.png")
    image = cv2.imread(png)
    assert image is not None and image.shape[0] > 300 and image.shape[1] > 900


def test_a_file_without_wall_motion_is_refused_with_its_name(tmp_path, capsys):
    out = tmp_path / "echo.jsonl"
    out.write_text(json.dumps({"kind": "beat", "stream": "echo", "beat": 0}) + "\n")
    assert main(["bullseye", str(out), "--out", str(tmp_path)]) == 2
    assert "echo.jsonl: no wall_motion message" in capsys.readouterr().err
    out.write_text("{not json\n")
    with pytest.raises(ValueError, match="echo.jsonl:1: not a JSON line"):
        write_bullseyes(out, tmp_path)


def test_strain_is_the_median_over_slices_and_the_layout_covers_16_segments():
    beats = [{"kind": "beat", "stream": "s/slice-0",
              "segment_peak_circumferential_strain_pct": {"7": -10.0, "8": -20.0}},
             {"kind": "beat", "stream": "s/slice-1",
              "segment_peak_circumferential_strain_pct": {"7": -14.0, "8": None}},
             {"kind": "beat", "stream": "s/slice-2",
              "segment_peak_circumferential_strain_pct": {"7": -30.0}},
             {"kind": "beat", "stream": "other/slice-0",
              "segment_peak_circumferential_strain_pct": {"7": 99.0}},
             {"kind": "wall_motion", "stream": "s", "beat": 0}]
    [beat] = list(stack_beats(beats))
    assert isinstance(beat, StackBeat) and beat.segment_strain_pct() == {7: -14.0, 8: -20.0}
    assert beat.segment_infarct_share() == {}
    assert sum(len(AHA_SEGMENTS[level]) for level in RINGS) == 16
    for level, (_, _, _, width) in RINGS.items():
        assert width * len(AHA_SEGMENTS[level]) == 360
