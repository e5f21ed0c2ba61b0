"""Self-supervised adaptation of the flow network and the segmenter to a site's own,
unlabelled clips.

The shipped networks learned phantoms only. A site's own recordings have no labels, but
they constrain motion by themselves: the next frame, warped back by the estimated motion,
should look like this frame. This is the unsupervised motion objective of Qin et al. 2018
(joint learning of motion estimation and segmentation for cardiac MR):

    L = mean((I_t - W(I_t+1, u_t))^2)                         photometric error
        + lambda_s * Huber(d u_t / dx, d u_t / dy)           spatial smoothness
        + lambda_t * Huber(u_t+1 - u_t)                       temporal smoothness

with ``W(I, u)`` the frame ``I`` sampled at ``x + u(x)`` (:func:`engines.nets.flownet.warp`),
``u_t`` the flow from frame t to t+1 in pixels, and the Huber penalty taken with a width
of ``huber_delta_px`` pixels. :func:`adapt_flow` fine-tunes the flow network's weights on
the frames of the clips a site names (``fit`` frames) and reports the objective before and
after on those and on frames it never trained on (``judge`` frames), so a user sees whether
it generalised. Never adapt on frames you will report results for.

The segmenter is adapted the same way, with the flow network (fixed) supplying the motion:
its class probabilities of the next frame, warped back by the flow, should match those of
this frame (temporal consistency, as in Qin et al.'s joint model), while a cross-entropy
against the starting network's own labels (weight ``seg_anchor``) keeps it from drifting to
a trivially consistent answer (everything background):

    L_seg = mean((P_t - W(P_t+1, u_t))^2) + seg_anchor * CE(S(I_t), argmax S0(I_t))

The engines read no clips (they sit below ``streamer.io``): callers hand the frames over as
arrays (``cardiostream engines adapt`` reads them through the CLI's clip reader).
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F

from engines.nets import flownet
from engines.spec import fit_to_input, network_image


@dataclass(frozen=True)
class AdaptConfig:
    """How the flow network is adapted (defaults: a few minutes on 2 CPU cores)."""

    steps: int = 150
    batch_pairs: int = 4
    learning_rate: float = 2e-5
    #: weight of the Huber penalty on the flow's spatial gradients
    smooth_spatial: float = 0.05
    #: weight of the Huber penalty on the change of flow between consecutive pairs
    smooth_temporal: float = 0.02
    #: width of the Huber penalty, px (per px for gradients)
    huber_delta_px: float = 0.5
    #: segmenter: weight of the cross-entropy against the starting network's labels
    seg_anchor: float = 0.1
    seed: int = 0

    def __post_init__(self):
        if self.steps < 1 or self.batch_pairs < 1:
            raise ValueError("steps and batch_pairs must be >= 1")
        if not self.learning_rate > 0:
            raise ValueError(f"learning_rate must be > 0, got {self.learning_rate}")


def prepare_frames(frames: list[np.ndarray] | np.ndarray,
                   size: tuple[int, int] = flownet.SPEC.size) -> np.ndarray:
    """Frames (grey or RGB, any integer or float dtype) -> (T, H, W) float32 in [0, 1] on the
    network's input grid, as the runtime's preprocessing and ``fit_to_input`` give them."""
    out = [fit_to_input(np.nan_to_num(network_image(np.asarray(pixels))), size)[0]
           for pixels in frames]
    return np.stack(out).astype(np.float32)


def _huber(x: torch.Tensor, delta: float) -> torch.Tensor:
    return F.huber_loss(x, torch.zeros_like(x), delta=delta, reduction="mean")


def objective_terms(model: flownet.FlowNet, frames: torch.Tensor, config: AdaptConfig
                    ) -> dict[str, torch.Tensor]:
    """The objective on consecutive triples: ``frames`` (N, 3, H, W) -> its terms (means)."""
    pairs = torch.cat([frames[:, 0:2], frames[:, 1:3]])  # (2N, 2, H, W): t->t+1, t+1->t+2
    flow = model(pairs)
    warped = flownet.warp(pairs[:, 1:2], flow)
    photometric = torch.mean((pairs[:, 0:1] - warped) ** 2)
    d = config.huber_delta_px
    spatial = (_huber(flow[..., :, 1:] - flow[..., :, :-1], d)
               + _huber(flow[..., 1:, :] - flow[..., :-1, :], d))
    n = frames.shape[0]
    temporal = _huber(flow[n:] - flow[:n], d)
    total = photometric + config.smooth_spatial * spatial + config.smooth_temporal * temporal
    return {"total": total, "photometric": photometric, "spatial": spatial,
            "temporal": temporal}


def evaluate(model: flownet.FlowNet, frames: np.ndarray, config: AdaptConfig,
             batch: int = 8) -> dict[str, float]:
    """The objective's terms over every consecutive triple of ``frames`` (T, H, W)."""
    if len(frames) < 3:
        raise ValueError(f"the objective needs at least 3 frames, got {len(frames)}")
    triples = torch.from_numpy(np.stack([frames[i:i + 3] for i in range(len(frames) - 2)]))
    model.eval()
    return _mean_terms(len(triples), batch,
                       lambda k, stop: objective_terms(model, triples[k:stop], config))


def _mean_terms(n: int, batch: int, terms_of) -> dict[str, float]:
    """The mean over ``n`` items of each objective term, ``terms_of(k, stop)`` giving the
    terms (means) of items k..stop-1; no gradients."""
    sums: dict[str, float] = {}
    with torch.no_grad():
        for k in range(0, n, batch):
            stop = min(k + batch, n)
            for name, value in terms_of(k, stop).items():
                sums[name] = sums.get(name, 0.0) + float(value) * (stop - k)
    return {name: value / n for name, value in sums.items()}


def _optimise(model: torch.nn.Module, batch_loss, config: AdaptConfig, progress
              ) -> list[float]:
    """Adam on ``batch_loss()`` (the objective of a fresh random batch) for ``config.steps``
    steps, gradients clipped to norm 1; the loss of each step."""
    optimiser = torch.optim.Adam(model.parameters(), lr=config.learning_rate)
    losses: list[float] = []
    for step in range(config.steps):
        loss = batch_loss()
        optimiser.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimiser.step()
        losses.append(loss.item())
        if progress is not None:
            progress(step + 1, config.steps, losses[-1])
        if not math.isfinite(losses[-1]):
            raise FloatingPointError(f"the objective became {losses[-1]} at step {step}")
    return losses


@dataclass
class AdaptResult:
    model: flownet.FlowNet
    record: dict


def adapt_flow(model: flownet.FlowNet, fit: np.ndarray, judge: np.ndarray | None = None,
               config: AdaptConfig = AdaptConfig(), progress=None) -> AdaptResult:
    """Fine-tune a copy of ``model`` on the ``fit`` frames (T, H, W in [0, 1], on the
    network's grid: :func:`prepare_frames`); the objective before and after on ``fit`` and
    on ``judge`` (frames it never trains on) goes in the record."""
    if len(fit) < 3:
        raise ValueError(f"adaptation needs at least 3 consecutive frames, got {len(fit)}")
    torch.manual_seed(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    adapted = copy.deepcopy(model)
    before = {"fit": evaluate(model, fit, config)}
    if judge is not None:
        before["judge"] = evaluate(model, judge, config)
    triples = torch.from_numpy(np.stack([fit[i:i + 3] for i in range(len(fit) - 2)]))

    def batch_loss() -> torch.Tensor:
        pick = torch.randint(len(triples), (config.batch_pairs,), generator=generator)
        batch = triples[pick]
        if torch.rand((), generator=generator) < 0.5:  # the same motion, mirrored
            batch = batch.flip(-1)
        return objective_terms(adapted, batch, config)["total"]

    t0 = time.perf_counter()
    losses = _optimise(adapted.eval(), batch_loss, config, progress)  # no normalisation layers
    after = {"fit": evaluate(adapted, fit, config)}
    if judge is not None:
        after["judge"] = evaluate(adapted, judge, config)
    record = {"objective": "Qin et al. 2018: photometric MSE + Huber spatial and temporal "
                           "smoothness of the flow",
              "config": asdict(config), "fit_frames": len(fit),
              "judge_frames": None if judge is None else len(judge),
              "before": before, "after": after, "seconds": round(time.perf_counter() - t0, 1),
              "loss_first_last": [losses[0], losses[-1]]}
    return AdaptResult(adapted, record)


# --------------------------------------------------------------------------
# the segmenter: temporal consistency of its masks along the flow


def flows_between(flow_model: flownet.FlowNet, frames: np.ndarray, size: tuple[int, int],
                  batch: int = 8) -> torch.Tensor:
    """The flow (fixed, no gradient) from each frame to the next, (T-1, 2, h, w) in pixels
    of a ``size`` grid (the segmenter's: the same letterbox at another scale)."""
    flow_model.eval()
    out = []
    with torch.no_grad():
        for k in range(0, len(frames) - 1, batch):
            stop = min(k + batch, len(frames) - 1)
            pairs = torch.from_numpy(np.stack([frames[k:stop], frames[k + 1:stop + 1]], axis=1))
            flow = flow_model(pairs)
            scale = size[0] / flow.shape[-2]
            out.append(F.interpolate(flow, size=size, mode="bilinear", align_corners=False)
                       * scale)
    return torch.cat(out)


def seg_objective_terms(model: torch.nn.Module, start: torch.nn.Module, frames: torch.Tensor,
                        flow: torch.Tensor, config: AdaptConfig) -> dict[str, torch.Tensor]:
    """``frames`` (N, 2, h, w): pairs (t, t+1) on the segmenter's grid; ``flow`` (N, 2, h, w)
    t -> t+1 on that grid -> the terms (means)."""
    n = frames.shape[0]
    logits = model(frames.reshape(n * 2, 1, *frames.shape[2:]))
    p = torch.softmax(logits, dim=1).reshape(n, 2, logits.shape[1], *logits.shape[2:])
    warped = flownet.warp(p[:, 1], flow)
    consistency = torch.mean((p[:, 0] - warped) ** 2)
    with torch.no_grad():
        labels = start(frames[:, :1]).argmax(dim=1)
    anchor = F.cross_entropy(logits.reshape(n, 2, *logits.shape[1:])[:, 0], labels)
    return {"total": consistency + config.seg_anchor * anchor, "consistency": consistency,
            "anchor": anchor}


def _seg_pairs(frames: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.stack([frames[:-1], frames[1:]], axis=1))


def evaluate_seg(model, start, frames: np.ndarray, flow: torch.Tensor, config: AdaptConfig,
                 batch: int = 16) -> dict[str, float]:
    """The segmenter objective's terms over every consecutive pair of ``frames``."""
    pairs = _seg_pairs(frames)
    model.eval()
    return _mean_terms(len(pairs), batch, lambda k, stop: seg_objective_terms(
        model, start, pairs[k:stop], flow[k:stop], config))


def adapt_seg(model: torch.nn.Module, flow_model: flownet.FlowNet, fit_seg: np.ndarray,
              fit_flow: np.ndarray, judge: tuple[np.ndarray, np.ndarray] | None = None,
              config: AdaptConfig = AdaptConfig(), progress=None) -> AdaptResult:
    """Fine-tune a copy of the segmenter ``model`` on consecutive ``fit`` frames, given on the
    segmenter's grid (``fit_seg``) and on the flow network's (``fit_flow``); ``judge``
    likewise, never trained on."""
    if len(fit_seg) < 2 or len(fit_seg) != len(fit_flow):
        raise ValueError("adaptation needs at least 2 consecutive frames on both grids")
    torch.manual_seed(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    start = copy.deepcopy(model).eval()
    adapted = copy.deepcopy(model).eval()  # eval: any normalisation keeps its statistics
    size = tuple(fit_seg.shape[1:])
    flow = flows_between(flow_model, fit_flow, size)
    judge_flow = flows_between(flow_model, judge[1], size) if judge is not None else None
    before = {"fit": evaluate_seg(model, start, fit_seg, flow, config)}
    if judge is not None:
        before["judge"] = evaluate_seg(model, start, judge[0], judge_flow, config)
    pairs = _seg_pairs(fit_seg)

    def batch_loss() -> torch.Tensor:
        pick = torch.randint(len(pairs), (config.batch_pairs,), generator=generator)
        return seg_objective_terms(adapted, start, pairs[pick], flow[pick], config)["total"]

    t0 = time.perf_counter()
    losses = _optimise(adapted, batch_loss, config, progress)
    after = {"fit": evaluate_seg(adapted, start, fit_seg, flow, config)}
    if judge is not None:
        after["judge"] = evaluate_seg(adapted, start, judge[0], judge_flow, config)
    record = {"objective": "temporal consistency of the class probabilities along the flow "
                           "+ seg_anchor x cross-entropy against the starting labels",
              "config": asdict(config), "fit_frames": len(fit_seg),
              "judge_frames": None if judge is None else len(judge[0]),
              "before": before, "after": after, "seconds": round(time.perf_counter() - t0, 1),
              "loss_first_last": [losses[0], losses[-1]]}
    return AdaptResult(adapted, record)
