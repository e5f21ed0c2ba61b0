"""Train OF-RNN on phantom slices (issue 16): ``python -m engines.train.infarct``.

Data: :func:`calib.datasets.infarct_samples` -- short-axis phantom slices, 70 % of them with
a subendocardial to transmural infarct over 1-3 neighbouring segments whose motion follows
it, the others with :func:`calib.datasets.random_mr_config`'s wall-motion draws (a
hypokinetic segment with no infarct is there to be told apart), each as the LV region of
interest (64 x 64, around the truth's end-diastolic LV; the app crops around its own labels)
over one beat. The flow the network's global branch reads is computed here, per batch, by
:func:`streamer.measure.roi.roi_flow` (OpenCV DIS on the region's frames), as the app does.

Training on the ``train`` split at ``--train-frames`` (20 and 25), judged on held-out
``test`` slices at each of ``--test-frames`` (30 and 50: counts training never saw). Loss:
cross-entropy over the end-diastolic myocardium's pixels (classes weighted by 1 / sqrt of
their share) plus ``--ae-weight`` x the stacked auto-encoder's reconstruction loss.
Augmentation: the eight flips and quarter turns of the region (the flow recomputed on the
transformed frames), a random gain and gamma.

Metrics (:func:`pixel_metrics`, on the test slices' myocardial pixels): pixel accuracy,
sensitivity and specificity for infarct (the paper: 94.35 / 91.23 / 98.42 %), the Dice of the
infarct region (pooled over slices), and the time per slice-beat (eager fp32, one thread).

    python -m engines.train.infarct --threads 1 --out /tmp/infarct/infarct.pt   # the shipped: 30 epochs
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from engines.nets import of_rnn
from engines.train import common

ROLE = "infarct"
BUILDER = "infarct_samples"


def pixel_metrics(true: np.ndarray, pred: np.ndarray) -> dict:
    """Accuracy, sensitivity, specificity and Dice of boolean infarct labels over pixels."""
    true, pred = np.asarray(true, bool).ravel(), np.asarray(pred, bool).ravel()
    tp, tn = int((true & pred).sum()), int((~true & ~pred).sum())
    fp, fn = int((~true & pred).sum()), int((true & ~pred).sum())
    total = tp + tn + fp + fn
    return {"accuracy": (tp + tn) / total if total else float("nan"),
            "sensitivity": tp / (tp + fn) if tp + fn else float("nan"),
            "specificity": tn / (tn + fp) if tn + fp else float("nan"),
            "dice": 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else float("nan"),
            "pixels": total, "infarct_pixels": tp + fn}


def load(split: str, n: int, frames: int, offset: int = 0) -> dict:
    from engines.train.data import dataset

    kw = {"frames": frames}
    if offset:
        kw["offset"] = offset
    return dataset(BUILDER, split, n, **kw)


def inputs(frames_u8: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 (N, T, 64, 64) region frames -> float (N, T, 64, 64) in [0, 1] and their flow
    (N, T, 2, 64, 64) (:func:`streamer.measure.roi.roi_flow`)."""
    from streamer.measure.roi import roi_flow

    x = frames_u8.astype(np.float32) / 255.0
    flow = np.stack([roi_flow(f) for f in x])
    return torch.from_numpy(x), torch.from_numpy(flow)


def augment(frames: np.ndarray, masks: list[np.ndarray], g: torch.Generator):
    """One of the eight flips / quarter turns for the whole batch, and a gain and gamma per
    slice, on uint8 (N, T, 64, 64) frames and (N, 64, 64) masks."""
    k = int(torch.randint(4, (1,), generator=g))
    flip = bool(torch.randint(2, (1,), generator=g))

    def turn(a):
        a = np.rot90(a, k, axes=(-2, -1))
        return np.ascontiguousarray(a[..., ::-1] if flip else a)

    x = turn(frames).astype(np.float32) / 255.0
    n = len(x)
    gamma = np.exp(torch.empty(n).uniform_(-0.3, 0.3, generator=g).numpy())[:, None, None, None]
    gain = torch.empty(n).uniform_(0.85, 1.15, generator=g).numpy()[:, None, None, None]
    x = np.clip(x ** gamma * gain, 0, 1)
    return np.round(x * 255).astype(np.uint8), [turn(m) for m in masks]


@torch.inference_mode()
def predict(model: of_rnn.OFRNN, data: dict, batch: int = 4) -> np.ndarray:
    """Infarct probability (N, 64, 64) of a data set's slices, on their myocardium (0 off it)."""
    model.eval()
    out = []
    for i in range(0, len(data["frames"]), batch):
        x, flow = inputs(data["frames"][i:i + batch])
        mask = torch.from_numpy(data["myocardium"][i:i + batch])
        out.append(of_rnn.infarct_probability(model(x, flow, mask)).numpy())
    return np.concatenate(out)


def time_per_slice_beat(model: of_rnn.OFRNN, data: dict, repeats: int = 5) -> float:
    """Median seconds of one slice-beat on one thread (flow and network, masked)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        times = []
        for r in range(repeats):
            i = r % len(data["frames"])
            t0 = time.perf_counter()
            with torch.inference_mode():
                x, flow = inputs(data["frames"][i:i + 1])
                model(x, flow, torch.from_numpy(data["myocardium"][i:i + 1]))
            times.append(time.perf_counter() - t0)
        return float(np.median(times))
    finally:
        torch.set_num_threads(threads)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m engines.train.infarct", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--train-slices", type=int, default=80,
                   help="training slices per frame count (default %(default)s)")
    p.add_argument("--train-frames", type=int, nargs="+", default=[20, 25])
    p.add_argument("--test-slices", type=int, default=24,
                   help="held-out slices per test frame count (default %(default)s)")
    p.add_argument("--test-frames", type=int, nargs="+", default=[20, 25, 30, 50])
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--batch", type=int, default=4, help="slices per step (default %(default)s)")
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--ae-weight", type=float, default=0.1,
                   help="weight of the auto-encoder's reconstruction loss (default %(default)s)")
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
    test = {t: load("test", args.test_slices, t, offset=k * args.test_slices)
            for k, t in enumerate(args.test_frames)}
    data_s = clock.seconds
    model = of_rnn.build()
    infarct = np.concatenate([d["infarct"][d["myocardium"]] for d in train])
    share = np.array([1 - infarct.mean(), infarct.mean()])
    weight = common.inverse_sqrt_weights(share)
    optimiser = torch.optim.Adam(model.parameters(), lr=args.lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, args.epochs)
    history = []
    for epoch in range(args.epochs):
        model.train()
        batches = [(k, idx) for k, d in enumerate(train)
                   for idx in common.batch_indices(len(d["frames"]), args.batch, g)]
        order = torch.randperm(len(batches), generator=g).tolist()
        losses = []
        for i in common.progress(order, desc=f"epoch {epoch + 1}/{args.epochs}"):
            k, idx = batches[i]
            d = train[k]
            frames, (myo, inf) = augment(d["frames"][idx], [d["myocardium"][idx],
                                                            d["infarct"][idx]], g)
            x, flow = inputs(frames)
            mask = torch.from_numpy(myo)
            logits, feats, recon = model.forward_with_reconstruction(x, flow, mask)
            target = torch.from_numpy(inf.astype(np.int64))
            ce = F.cross_entropy(logits.permute(0, 2, 3, 1)[mask], target[mask], weight=weight)
            loss = ce + args.ae_weight * of_rnn.reconstruction_loss(feats, recon, mask)
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            losses.append(loss.item())
        schedule.step()
        history.append({"epoch": epoch + 1, "loss": float(np.mean(losses))})
        print(f"epoch {epoch + 1}: loss {history[-1]['loss']:.4f} ({clock.seconds:.0f} s)",
              file=sys.stderr, flush=True)
    train_s = clock.seconds - data_s
    metrics = {}
    for t, d in test.items():
        p = predict(model, d)
        myo = d["myocardium"]
        metrics[str(t)] = pixel_metrics(d["infarct"][myo], p[myo] > 0.5)
        m = metrics[str(t)]
        print(f"test {t} frames: accuracy {m['accuracy']:.4f}, sensitivity {m['sensitivity']:.4f}, "
              f"specificity {m['specificity']:.4f}, Dice {m['dice']:.3f} ({len(myo)} slices)")
    seconds = time_per_slice_beat(model, next(iter(test.values())))
    print(f"time per slice-beat (flow + network, one thread): {seconds:.3f} s")
    header = common.record_header(args, ROLE)
    record = {**header, "network": "engines.nets.of_rnn", "data": {
        "builder": f"calib.datasets.{BUILDER}", "train_slices_per_frames": args.train_slices,
        "train_frames": args.train_frames, "test_frames": args.test_frames,
        "infarct_pixel_share_train": round(float(share[1]), 4)},
        "history": history, "test": metrics, "seconds_per_slice_beat": round(seconds, 4),
        "wall_s": {"data": round(data_s, 1), "train": round(train_s, 1)}}
    js = common.save_weights(model, ROLE, record, args.out)
    print(f"wrote {args.out} and {js}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
