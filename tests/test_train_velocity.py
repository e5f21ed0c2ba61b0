"""engines.train.velocity: the flips and turns move the velocity vectors with the tissue, the
metrics, and a tiny run that trains, judges and writes its record (and the app's loader
reads the variant from it)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from engines.train import velocity as trainer
from streamer.measure import velocity as vm


def _ring_cycle(T=4, S=48):
    """A ring contracting towards (24, 20): inward motion, and a through-plane one."""
    rr, cc = np.mgrid[0:S, 0:S].astype(float)
    dr, dc = rr - 24.0, cc - 20.0
    d = np.hypot(dr, dc)
    ring = (d > 8) & (d < 14)
    v = np.zeros((T, S, S, 3), np.float32)
    v[..., 0] = -2.0 * dc / np.maximum(d, 1e-9)
    v[..., 1] = -2.0 * dr / np.maximum(d, 1e-9)
    v[..., 2] = 1.0
    v[..., 0] += 0.7 * dr / np.maximum(d, 1e-9)  # and a counter-clockwise part: v_x = +e_row
    v[..., 1] += -0.7 * dc / np.maximum(d, 1e-9)
    return np.ones((T, S, S), np.float32), v, np.broadcast_to(ring, (T, S, S)).copy()


@pytest.mark.parametrize("k, flip", [(0, False), (1, False), (2, False), (3, False),
                                     (0, True), (1, True), (3, True)])
def test_turns_and_flips_carry_the_velocities_with_the_tissue(k, flip):
    m, v, ring = _ring_cycle()
    before = vm.velocity_curves(v, ring)
    _, v2, [ring2] = trainer.turn(m, v, [ring], k, flip)
    after = vm.velocity_curves(v2, ring2)
    assert after.radial[0] == pytest.approx(before.radial[0], abs=0.05)      # 2 cm/s inwards
    assert after.longitudinal[0] == pytest.approx(1.0, abs=1e-6)
    # a mirror turns counter-clockwise into clockwise; a rotation keeps it
    sign = -1 if flip else 1
    assert after.circumferential[0] == pytest.approx(sign * before.circumferential[0], abs=0.05)
    assert before.radial[0] == pytest.approx(2.0, abs=0.05)
    assert before.circumferential[0] == pytest.approx(0.7, abs=0.05)


def test_segmentation_metrics():
    t = np.zeros((2, 1, 4, 4), bool)
    p = np.zeros_like(t)
    t[0, 0, :2], p[0, 0, :1] = True, True           # slice 0: half found
    t[1, 0, 0, 0], p[1, 0, 0, 0] = True, True       # slice 1: exact
    p[1, 0, 3, 3] = True                            # and one false positive
    m = trainer.segmentation_metrics(t, p)
    assert m["dice_per_slice"] == [pytest.approx(2 * 4 / 12, abs=1e-4), pytest.approx(2 / 3, abs=1e-4)]
    assert m["sensitivity"] == pytest.approx(5 / 9) and m["ppv"] == pytest.approx(5 / 6)


def test_a_tiny_run_trains_judges_and_writes_its_record(tmp_path, monkeypatch):
    from engines.velocity import load_segmenter

    monkeypatch.setenv("CARDIOSTREAM_DATA", str(tmp_path / "data"))
    monkeypatch.setenv("CARDIOSTREAM_NO_PROGRESS", "1")
    out = tmp_path / "vm.pt"
    assert trainer.main(["--variant", "unet3d", "--loss", "dice", "--channels", "magnitude",
                         "--train-slices", "1", "--train-frames", "4", "--test-slices", "1",
                         "--test-frames", "6", "--steps", "2", "--crop", "64", "--threads", "1",
                         "--out", str(out)]) == 0
    record = json.loads((tmp_path / "velocity.json").read_text())
    assert (record["variant"], record["loss"], record["channels"]) == ("unet3d", "dice", "magnitude")
    assert 0 <= record["test"]["dice"] <= 1 and record["test"]["frames"] == [6]
    segmenter = load_segmenter(out)      # the variant and input from the record beside it
    assert segmenter.variant == "unet3d" and segmenter.magnitude_only
    p = segmenter(np.random.rand(5, 32, 32).astype(np.float32),
                  np.zeros((5, 32, 32, 3), np.float32))
    assert p.shape == (5, 32, 32) and np.isfinite(p).all()
    torch.load(out, weights_only=True)
