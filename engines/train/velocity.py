"""Train 3D-EAR on velocity-mapping phantom slices (issue 17): ``python -m engines.train.velocity``.

Data: :func:`calib.datasets.velocity_mapping_samples` -- short-axis phantom slices as black-blood
velocity-mapping acquisitions (magnitude and three velocity channels from the same motion,
VENC, phase noise growing where the magnitude is low, background phase offsets, wraps),
each as the central region the app reads (:func:`streamer.measure.roi.central_roi`:
128 x 128 pixels of 1.4 mm) over one cycle. Training on the ``train`` split at
``--train-frames`` (20 and 25 frames per cycle), judged on held-out ``test`` slices at
``--test-frames`` (50: the acquisitions' count, which training never saw). Every cycle
reaches the network in beat time (:data:`engines.velocity.BEAT_FRAMES` frames), as the app
runs it.

Input: :func:`engines.nets.ear3d.normalise` of the magnitude and the measured velocities
(``--channels magnitude`` for the magnitude-only ablation). Loss: ``--loss`` (cross-entropy,
Dice or Dice-IoU: :func:`engines.nets.ear3d.loss`). Augmentation: a random 88 x 88 window
of the region (the network is convolutional in space), one of the eight flips and quarter
turns **with the in-plane velocity components turned alike** (a horizontal flip negates
v_x, a transpose swaps v_x and v_y: the velocities stay those of the moved tissue), a gain
and gamma on the magnitude, and a random velocity offset per channel (a residual background
phase).

Metrics (:func:`segmentation_metrics` on the test slices, every frame, after
:func:`streamer.measure.velocity.postprocess_myocardium`; ``raw`` before it): myocardium Dice
(per slice, then the mean), sensitivity and positive predictive value (pooled pixels).

    python -m engines.train.velocity --out engines/weights/velocity.pt     # the shipped ear3d
    python -m engines.train.velocity --variant unet3d --loss dice --out /tmp/vm/unet3d-dice.pt
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

from engines.beat_networks import resample_cycle
from engines.nets import ear3d
from engines.train import common
from engines.velocity import BEAT_FRAMES, cycle_probability

ROLE = "velocity"
BUILDER = "velocity_mapping_samples"
#: side of the random training window, pixels (a multiple of 2 ** levels)
CROP_PX = 88
INPUT_CHANNELS = ("all", "magnitude")


def load(split: str, n: int, frames: int, offset: int = 0) -> dict:
    from engines.train.data import dataset

    kw = {"frames": frames}
    if offset:
        kw["offset"] = offset
    return dataset(BUILDER, split, n, **kw)


def network_input(magnitude: np.ndarray, velocity_cm_s: np.ndarray | None) -> torch.Tensor:
    """One cycle in beat time (BEAT_FRAMES, S, S) magnitude and (.., 3) velocity (None:
    magnitude only) -> (1, C, BEAT_FRAMES, S, S) float32, as the app feeds the network."""
    return ear3d.normalise(np.asarray(magnitude, np.float32),
                           None if velocity_cm_s is None else np.asarray(velocity_cm_s, np.float32))[None]


def in_beat_time(magnitude: np.ndarray, velocity: np.ndarray, myocardium: np.ndarray):
    """A training cycle re-sampled to :data:`engines.velocity.BEAT_FRAMES` frames (the mask
    by its interpolated share, over a half)."""
    return (resample_cycle(magnitude.astype(np.float32), BEAT_FRAMES),
            resample_cycle(velocity.astype(np.float32), BEAT_FRAMES),
            resample_cycle(myocardium.astype(np.float32), BEAT_FRAMES) > 0.5)


def turn(magnitude: np.ndarray, velocity: np.ndarray, masks: list[np.ndarray], k: int, flip: bool):
    """Rotate the frames by k quarter turns (np.rot90 on the (row, col) axes) and then flip
    the columns when ``flip``, with the in-plane velocity components (v_x along +columns, v_y
    along +rows) turned alike; ``masks`` follow the pixels."""
    v = velocity.copy()
    for _ in range(k % 4):
        # np.rot90(a, 1, axes=(rows, cols)): new[r, c] = old[c, W - 1 - r]; a vector (dx, dy)
        # along (cols, rows) becomes (dy, -dx)
        v = np.stack([v[..., 1], -v[..., 0], v[..., 2]], axis=-1)
    rot = lambda a: np.rot90(a, k, axes=(1, 2))  # noqa: E731
    m, v, masks = rot(magnitude), rot(v), [rot(x) for x in masks]
    if flip:
        m, v, masks = m[:, :, ::-1], v[:, :, ::-1].copy(), [x[:, :, ::-1] for x in masks]
        v[..., 0] = -v[..., 0]
    return (np.ascontiguousarray(m), np.ascontiguousarray(v),
            [np.ascontiguousarray(x) for x in masks])


def augment(magnitude: np.ndarray, velocity: np.ndarray, myocardium: np.ndarray,
            g: torch.Generator, crop: int = CROP_PX) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One training cycle: a random ``crop`` x ``crop`` window, a flip / quarter turn, gain and gamma
    on the magnitude, an offset per velocity channel (module docstring)."""
    r = lambda lo, hi: float(torch.empty(1).uniform_(lo, hi, generator=g))  # noqa: E731
    S = magnitude.shape[-1]
    y0, x0 = (int(torch.randint(S - crop + 1, (1,), generator=g)) for _ in range(2))
    win = (slice(None), slice(y0, y0 + crop), slice(x0, x0 + crop))
    m, v, [y] = turn(magnitude[win].astype(np.float32), velocity[win].astype(np.float32),
                     [myocardium[win]], int(torch.randint(4, (1,), generator=g)),
                     bool(torch.randint(2, (1,), generator=g)))
    top = float(np.percentile(m, 99)) or 1.0
    m = (np.clip(m / top, 0, None) ** np.exp(r(-0.3, 0.3)) * top * r(0.7, 1.4)).astype(np.float32)
    v = v + np.asarray([r(-0.5, 0.5) for _ in range(3)], np.float32)
    return m, v, y


def segmentation_metrics(truth: np.ndarray, predicted: np.ndarray) -> dict:
    """Dice per slice (mean), pooled sensitivity and PPV of boolean (N, T, H, W) masks."""
    t, p = np.asarray(truth, bool), np.asarray(predicted, bool)
    tp = (t & p).reshape(len(t), -1).sum(1)
    fp = (~t & p).reshape(len(t), -1).sum(1)
    fn = (t & ~p).reshape(len(t), -1).sum(1)
    dice = 2 * tp / np.maximum(2 * tp + fp + fn, 1)
    return {"dice": float(dice.mean()), "dice_per_slice": [round(float(d), 4) for d in dice],
            "sensitivity": float(tp.sum() / max(tp.sum() + fn.sum(), 1)),
            "ppv": float(tp.sum() / max(tp.sum() + fp.sum(), 1))}


def predict(model: ear3d.EAR3D, data: dict, magnitude_only: bool = False) -> np.ndarray:
    """Myocardium probability (N, T, S, S) of a data set's cycles (each its own frames, the
    network in beat time as the app runs it: engines.velocity.cycle_probability)."""
    model.eval()
    out = np.zeros(data["myocardium"].shape, np.float32)
    for i in range(len(out)):
        t = int(data["frames_n"][i])
        out[i, :t] = cycle_probability(model, data["magnitude"][i, :t],
                                       None if magnitude_only else data["velocity_cm_s"][i, :t])
    return out


def evaluate(model: ear3d.EAR3D, data: dict, magnitude_only: bool = False) -> dict:
    """Metrics of the test set, after and before the post-processing, and the seconds per
    cycle (median)."""
    from streamer.measure.velocity import postprocess_myocardium

    t0 = time.perf_counter()
    p = predict(model, data, magnitude_only) > 0.5
    seconds = (time.perf_counter() - t0) / max(len(p), 1)
    post = np.stack([postprocess_myocardium(x) for x in p])
    return {**segmentation_metrics(data["myocardium"], post),
            "raw": segmentation_metrics(data["myocardium"], p),
            "seconds_per_cycle": round(seconds, 3), "slices": int(len(p)),
            "frames": sorted({int(t) for t in data["frames_n"]})}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m engines.train.velocity", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--variant", choices=ear3d.VARIANTS, default=ear3d.DEFAULT_VARIANT,
                   help="network (the paper's Table 1 rows; default %(default)s)")
    p.add_argument("--loss", choices=ear3d.LOSSES, default="dice_iou",
                   help="training loss (default %(default)s)")
    p.add_argument("--channels", choices=INPUT_CHANNELS, default="all",
                   help="all: magnitude and three velocities; magnitude: the magnitude only "
                        "(the multichannel ablation)")
    p.add_argument("--train-slices", type=int, default=60,
                   help="training slices per frame count (default %(default)s)")
    p.add_argument("--train-frames", type=int, nargs="+", default=[20, 25])
    p.add_argument("--test-slices", type=int, default=24,
                   help="held-out slices (default %(default)s)")
    p.add_argument("--test-frames", type=int, default=50)
    p.add_argument("--steps", type=int, default=1700, help="training cycles seen (default %(default)s)")
    p.add_argument("--crop", type=int, default=CROP_PX,
                   help="side of the random training window, pixels, a multiple of 8 "
                        "(default %(default)s)")
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--init", type=Path, default=None,
                   help="start from these weights (a variant's shared parts load; strict=False)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, required=True, help="the state dict (a JSON record beside it)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    g = common.seed_everything(args.seed)
    common.set_threads(args.threads)
    clock = common.Stopwatch()
    train = [load("train", args.train_slices, t, offset=k * args.train_slices)
             for k, t in enumerate(args.train_frames)]
    test = load("test", args.test_slices, args.test_frames)
    data_s = clock.seconds
    magnitude_only = args.channels == "magnitude"
    model = ear3d.build(args.variant, in_channels=1 if magnitude_only else len(ear3d.CHANNELS))
    if args.init is not None:
        state = torch.load(args.init, map_location="cpu", weights_only=True)
        missing, unexpected = model.load_state_dict(state, strict=False)
        print(f"init from {args.init}: {len(state) - len(unexpected)} tensors loaded, "
              f"{len(missing)} new", file=sys.stderr)
    optimiser = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, args.lr, total_steps=args.steps,
                                                   pct_start=0.1)
    pool = [(k, i) for k, d in enumerate(train) for i in range(len(d["frames_n"]))]
    history, losses = [], []
    model.train()
    for step in common.progress(range(args.steps), desc="steps"):
        k, i = pool[int(torch.randint(len(pool), (1,), generator=g))]
        d = train[k]
        t = int(d["frames_n"][i])
        m, v, y = augment(*in_beat_time(d["magnitude"][i, :t], d["velocity_cm_s"][i, :t],
                                        d["myocardium"][i, :t]), g, args.crop)
        x = network_input(m, None if magnitude_only else v)
        loss = ear3d.loss(model(x), torch.from_numpy(y[None]), args.loss)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        schedule.step()
        losses.append(loss.item())
        if (step + 1) % 100 == 0 or step + 1 == args.steps:
            history.append({"step": step + 1, "loss": float(np.mean(losses))})
            print(f"step {step + 1}: loss {history[-1]['loss']:.4f} ({clock.seconds:.0f} s)",
                  file=sys.stderr, flush=True)
            losses = []
    train_s = clock.seconds - data_s
    metrics = evaluate(model, test, magnitude_only)
    print(f"test ({metrics['slices']} slices, {args.test_frames} frames): Dice {metrics['dice']:.4f} "
          f"(raw {metrics['raw']['dice']:.4f}), sensitivity {metrics['sensitivity']:.4f}, "
          f"PPV {metrics['ppv']:.4f}, {metrics['seconds_per_cycle']:.2f} s per cycle")
    record = {**common.record_header(args, ROLE), "network": "engines.nets.ear3d",
              "variant": args.variant, "loss": args.loss, "channels": args.channels,
              "hparams": model.hparams if hasattr(model, "hparams") else None,
              "data": {"builder": f"calib.datasets.{BUILDER}",
                       "train_slices_per_frames": args.train_slices,
                       "train_frames": args.train_frames, "test_slices": args.test_slices,
                       "test_frames": args.test_frames},
              "history": history, "test": metrics,
              "wall_s": {"data": round(data_s, 1), "train": round(train_s, 1)}}
    js = common.save_weights(model, ROLE, record, args.out)
    print(f"wrote {args.out} and {js}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
