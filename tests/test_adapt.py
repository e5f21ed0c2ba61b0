"""engines/adapt.py and `cardiostream engines adapt`: self-supervised adaptation of the flow
network (Qin et al. 2018's unsupervised motion objective) to unlabelled clips."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
import torch

from engines import adapt
from engines.byo import load_model, shipped_model


def texture(size: int = 64, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return cv2.GaussianBlur(rng.random((size, size)).astype(np.float32), (0, 0), 2.0)


def shifted_clip(n: int = 5, dx: float = 1.5, size: int = 64) -> np.ndarray:
    """A texture moving right by dx px per frame."""
    base = texture(size + 32)
    frames = []
    for t in range(n):
        m = np.float32([[1, 0, dx * t], [0, 1, 0]])  # forward map: content moves +dx per frame
        frames.append(cv2.warpAffine(base, m, (size + 32, size + 32),
                                     flags=cv2.INTER_CUBIC)[16:-16, 16:-16])
    return np.stack(frames)


class Constant(torch.nn.Module):
    """A 'flow network' that answers one constant flow (dx, dy) for every pair."""

    def __init__(self, dx: float, dy: float = 0.0):
        super().__init__()
        self.dx, self.dy = dx, dy

    def forward(self, pairs):
        n, _, h, w = pairs.shape
        return torch.tensor([self.dx, self.dy]).view(1, 2, 1, 1).expand(n, 2, h, w)


def test_the_true_motion_minimises_the_photometric_term():
    """The convention: flow (dx, dy) is frame t -> t+1, and the next frame warped back by it
    matches this frame."""
    frames = torch.from_numpy(shifted_clip())[None, :3]
    config = adapt.AdaptConfig()
    right = adapt.objective_terms(Constant(1.5), frames, config)
    zero = adapt.objective_terms(Constant(0.0), frames, config)
    wrong = adapt.objective_terms(Constant(-1.5), frames, config)
    assert float(right["photometric"]) < 0.05 * float(zero["photometric"])
    assert float(zero["photometric"]) < float(wrong["photometric"])
    assert float(right["spatial"]) == 0.0 and float(right["temporal"]) == 0.0


def test_the_smoothness_terms_see_rough_and_changing_flow():
    frames = torch.from_numpy(shifted_clip())[None, :3]
    config = adapt.AdaptConfig()

    class Rough(torch.nn.Module):
        def forward(self, pairs):
            n, _, h, w = pairs.shape
            flow = torch.zeros(n, 2, h, w)
            flow[:, 0, :, ::2] = 2.0  # stripes: rough in x
            flow[n // 2:] += 1.0  # the second pair of each triple moves differently
            return flow

    terms = adapt.objective_terms(Rough(), frames, config)
    # Huber(2 px, delta 0.5) = 0.5 * (2 - 0.25) on every x-step of the dx channel: half the
    # values of the (dx, dy) gradient are 0.875, the other half 0
    assert float(terms["spatial"]) == pytest.approx(0.875 / 2)
    assert float(terms["temporal"]) == pytest.approx(0.5 * (1.0 - 0.25))


def test_prepare_frames_fits_any_clip_to_the_networks_grid():
    rgb = np.zeros((3, 120, 160, 3), np.uint8)
    rgb[..., 1] = 255
    out = adapt.prepare_frames(rgb)
    assert out.shape == (3, 256, 256) and out.dtype == np.float32
    assert out.max() == pytest.approx(0.587, abs=0.01)  # BT.601 luma of pure green


def test_adaptation_changes_a_copy_and_reports_the_objective_before_and_after():
    model = shipped_model("flow").module
    start = {k: v.clone() for k, v in model.state_dict().items()}
    clip = adapt.prepare_frames(shifted_clip(8, dx=2.0, size=128))
    result = adapt.adapt_flow(model, clip[:5], clip[5:], adapt.AdaptConfig(steps=3,
                                                                            batch_pairs=2))
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in start.items())  # untouched
    assert any(not torch.equal(v, result.model.state_dict()[k]) for k, v in start.items())
    record = result.record
    assert set(record["before"]) == set(record["after"]) == {"fit", "judge"}
    assert record["fit_frames"] == 5 and record["judge_frames"] == 3
    with pytest.raises(ValueError, match="at least 3"):
        adapt.adapt_flow(model, clip[:2])


def test_cli_adapts_on_a_clip_and_writes_weights_the_runtime_can_load(npz_clip, tmp_path,
                                                                      capsys):
    from streamer.cli import main

    out = tmp_path / "adapted" / "flow.pt"
    assert main(["engines", "adapt", str(npz_clip), "--fit-frames", "0:6", "--judge-frames",
                 "6:12", "--steps", "2", "--out", str(out)]) == 0
    record = json.loads((out.parent / "flow.json").read_text())
    assert record["fit_frames"] == [0, 6] and record["clips"][0]["judge_frames"] == 6
    assert load_model("flow", out).kind == "state_dict"
    assert "--weights flow=" in capsys.readouterr().out
    # judging on frames it adapted on would flatter it: refused
    assert main(["engines", "adapt", str(npz_clip), "--fit-frames", "0:6", "--judge-frames",
                 "4:12", "--steps", "1", "--out", str(out)]) == 2
    assert "overlap" in capsys.readouterr().err


def test_segmenter_consistency_is_zero_for_masks_that_move_with_the_flow():
    """Two identical frames with zero flow: the class probabilities agree exactly."""
    seg = shipped_model("seg").module
    frame = adapt.prepare_frames(shifted_clip(1, size=128), seg_size := (128, 128))[0]
    pairs = torch.from_numpy(np.stack([frame, frame])[None])
    flow = torch.zeros(1, 2, *seg_size)
    terms = adapt.seg_objective_terms(seg, seg, pairs, flow, adapt.AdaptConfig())
    assert float(terms["consistency"]) == pytest.approx(0.0, abs=1e-10)
    moved = torch.ones(1, 2, *seg_size) * 6.0  # a wrong motion breaks the agreement
    assert float(adapt.seg_objective_terms(seg, seg, pairs, moved, adapt.AdaptConfig())[
        "consistency"]) > 0


def test_segmenter_adaptation_changes_a_copy_and_reports_before_and_after():
    seg, flow = shipped_model("seg").module, shipped_model("flow").module
    start = {k: v.clone() for k, v in seg.state_dict().items()}
    clip = shifted_clip(6, dx=2.0, size=128)
    grids = (adapt.prepare_frames(clip, (128, 128)), adapt.prepare_frames(clip))
    judge = (grids[0][3:], grids[1][3:])
    result = adapt.adapt_seg(seg, flow, grids[0][:3], grids[1][:3], judge,
                             adapt.AdaptConfig(steps=2, batch_pairs=2, learning_rate=1e-3))
    assert all(torch.equal(v, seg.state_dict()[k]) for k, v in start.items())
    assert any(not torch.equal(v, result.model.state_dict()[k]) for k, v in start.items()
               if v.dtype.is_floating_point)
    assert set(result.record["after"]) == {"fit", "judge"}
    assert {"consistency", "anchor"} <= set(result.record["before"]["judge"])
