"""cardiostream velocity-plot: one PNG per measured velocity-mapping cycle of an analyze
output, and a clear error where there is none."""

from __future__ import annotations

import json

import numpy as np
import pytest

from streamer.velocity_plot import velocity_beats, write_velocity_plots


def beat(stream="vm/slice-0", segments=True, measured=True):
    t = np.linspace(0, 2 * np.pi, 20)
    curve = [round(float(v), 3) for v in np.sin(t)]
    row = {"v": 1, "kind": "beat", "stream": stream, "beat": 0, "ed_seq": 0, "es_frame": 7,
           "aha_level": "mid", "velocity_status": "measured" if measured else "no_myocardium"}
    for name in ("radial", "circumferential", "longitudinal"):
        row[f"{name}_velocity_cm_s"] = curve if measured else None
        for p in ("systolic", "early_diastolic", "late_diastolic"):
            row[f"peak_{p}_{name}_velocity_cm_s"] = 1.0 if measured else None
    row["segment_velocity_cm_s"] = ({str(a): {n: curve for n in ("radial", "circumferential",
                                                              "longitudinal")}
                                     for a in range(7, 13)} if segments else None)
    return row


def test_a_png_per_measured_cycle(tmp_path):
    path = tmp_path / "a.jsonl"
    rows = [{"v": 1, "kind": "start", "stream": "vm/slice-0", "meta": {}}, beat(),
            beat("vm/slice-1", segments=False), beat("vm/slice-2", measured=False)]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    assert len(velocity_beats(rows)) == 2
    pngs = write_velocity_plots(path, tmp_path / "png")
    assert [p.name for p in pngs] == ["vm_slice-0-cycle-0.png", "vm_slice-1-cycle-0.png"]
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in pngs)


def test_no_measured_cycle_is_a_clear_error(tmp_path, capsys):
    from streamer.cli import main

    path = tmp_path / "b.jsonl"
    path.write_text(json.dumps(beat(measured=False)) + "\n")
    with pytest.raises(ValueError, match="no measured velocity-mapping cycle"):
        write_velocity_plots(path, tmp_path)
    assert main(["velocity-plot", str(path), "--out", str(tmp_path)]) == 2
    assert "mr-velocity" in capsys.readouterr().err
