"""Train Cardiac-MOS on phantom hearts (issue 16): ``python -m engines.train.wall_motion``.

Data: :func:`calib.datasets.wall_motion_samples` -- phantom hearts of three short-axis
slices whose 16 AHA segments move by prescribed wall-motion classes (coronary territories,
each segment's motion spread inside its class), each segment in polar coordinates as
:mod:`streamer.measure.polar` makes it, cropped and aligned by the phantom's *true*
end-diastolic labels (the app will align by its own labels: a difference to measure when
the stage exists). Training on the ``train`` split at ``--train-frames`` (the paper's 20-
and 25-frame cycles), the metrics on held-out ``test`` hearts at each of ``--test-frames``
(30 and 50 judge conv-KI: frame counts training never saw). No ``val`` split yet: the model
of the last epoch is judged.

Cross-validation by subject, as the paper (``--folds 3 --fold K``): the training hearts of
each frame count are split in three by their index (heart i is in fold i mod 3); fold K's
hearts are held out and judged (``fold_test`` in the record), the other two thirds train.
The ``test`` split's hearts are held out from every fold (``bench/wall_motion_cv.py`` runs
the folds and the variants and tabulates them).

Variants (:data:`engines.nets.cardiac_mos.VARIANTS`): the baseline CNN first, then the
non-local variants fine-tuned from it (``--init BASELINE.pt``), as the paper does. Loss:
cross-entropy over the segments, each class weighted by 1 / sqrt(its share of the training
segments) (normal segments are most of them). Augmentation: per segment a random gain and
gamma, and a mirror of the angle axis (a segment's motion class does not depend on which
way its sector is read).

Metrics (:func:`scoring_metrics`): segment accuracy over the four classes, abnormal / normal
accuracy, Cohen's kappa, and the Pearson correlation of each heart's motion score index
(mean score of its 16 segments) with the truth's -- the paper's figures for sub-NL-1 are
77.4 % and 0.926.

    python -m engines.train.wall_motion --variant cnn --out /tmp/wm/cnn.pt   # the shipped
    python -m engines.train.wall_motion --variant sub_nl --init /tmp/wm/cnn.pt --epochs 3 \
        --lr 3e-4 --out /tmp/wm/sub_nl.pt
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from engines.nets import cardiac_mos
from engines.train import common

ROLE = "wall_motion"
BUILDER = "wall_motion_samples"


def scoring_metrics(true: np.ndarray, pred: np.ndarray) -> dict:
    """Segment accuracy, abnormal/normal accuracy, Cohen's kappa (4 classes) and the MSI
    Pearson correlation of (hearts, 16) class codes (0 normal .. 3 dyskinetic)."""
    true, pred = np.asarray(true).ravel(), np.asarray(pred).ravel()
    n_classes = len(cardiac_mos.CLASSES)
    confusion = np.zeros((n_classes, n_classes), np.int64)
    np.add.at(confusion, (true, pred), 1)
    total = confusion.sum()
    observed = np.trace(confusion) / total
    expected = float((confusion.sum(0) * confusion.sum(1)).sum()) / total**2
    kappa = (observed - expected) / (1 - expected) if expected < 1 else 1.0
    scores = np.asarray(cardiac_mos.WALL_MOTION_SCORES)
    msi_true = scores[true.reshape(-1, 16)].mean(1)
    msi_pred = scores[pred.reshape(-1, 16)].mean(1)
    if msi_true.std() > 0 and msi_pred.std() > 0:
        msi_r = float(np.corrcoef(msi_true, msi_pred)[0, 1])
    else:
        msi_r = float("nan")
    return {"accuracy": float(observed), "binary_accuracy": float(((true > 0) == (pred > 0)).mean()),
            "kappa": float(kappa), "msi_pearson": msi_r,
            "msi_abs_error": float(np.abs(msi_true - msi_pred).mean()),
            "hearts": int(len(msi_true)), "segments": int(total), "confusion": confusion.tolist()}


def load(split: str, n: int, frames: int, offset: int = 0) -> dict:
    from engines.train.data import dataset

    kw = {"frames": frames}
    if offset:
        kw["offset"] = offset
    return dataset(BUILDER, split, n, **kw)


def to_input(segments: np.ndarray) -> torch.Tensor:
    """uint8 (N, 16, T, R, A) -> float32 (N, 16, 1, T, R, A) in [0, 1]."""
    return torch.from_numpy(segments.astype(np.float32) / 255.0).unsqueeze(2)


def augment(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """A random gain and gamma per segment, and a random mirror of the angle axis."""
    shape = (*x.shape[:2], 1, 1, 1, 1)
    gamma = torch.exp(torch.empty(shape).uniform_(-0.3, 0.3, generator=g))
    gain = torch.empty(shape).uniform_(0.85, 1.15, generator=g)
    x = (x.clamp_min(0) ** gamma * gain).clamp(0, 1)
    flip = torch.rand(shape, generator=g) < 0.5
    return torch.where(flip, x.flip(-1), x)


@torch.inference_mode()
def predict(model: torch.nn.Module, segments: np.ndarray, batch: int = 2) -> np.ndarray:
    model.eval()
    out = [model(to_input(segments[i:i + batch])).argmax(-1).numpy()
           for i in range(0, len(segments), batch)]
    return np.concatenate(out)


def split_fold(data: dict, folds: int, fold: int) -> tuple[dict, dict]:
    """(training, held-out) parts of one data set: heart i is in fold i mod ``folds``."""
    held = np.arange(len(data["classes"])) % folds == fold
    return ({k: v[~held] for k, v in data.items()}, {k: v[held] for k, v in data.items()})


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m engines.train.wall_motion", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--variant", default="cnn", choices=tuple(cardiac_mos.VARIANTS))
    p.add_argument("--init", type=Path, help="start from these weights (the baseline, to fine-tune "
                                             "a non-local variant; blocks it lacks start as identity)")
    p.add_argument("--train-hearts", type=int, default=80,
                   help="training hearts per frame count (default %(default)s)")
    p.add_argument("--train-frames", type=int, nargs="+", default=[20, 25])
    p.add_argument("--test-hearts", type=int, default=20,
                   help="held-out hearts at each training frame count (default %(default)s)")
    p.add_argument("--ki-test-hearts", type=int, default=12,
                   help="held-out hearts at each other frame count, for conv-KI (default %(default)s)")
    p.add_argument("--test-frames", type=int, nargs="+", default=[20, 25, 30, 50])
    p.add_argument("--folds", type=int, default=1,
                   help="split the training hearts into this many folds by subject and hold "
                        "fold --fold out (default %(default)s: no split)")
    p.add_argument("--fold", type=int, default=0, help="the held-out fold (0-based)")
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--batch", type=int, default=2, help="hearts per step (default %(default)s)")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, required=True, help="the state dict (a JSON record beside it)")
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.folds < 1 or not 0 <= args.fold < args.folds:
        parser.error(f"--fold {args.fold} must lie in 0..--folds - 1 ({args.folds - 1})")
    g = common.seed_everything(args.seed)
    common.set_threads(args.threads)
    clock = common.Stopwatch()
    # frame counts of the test split each take their own hearts (seeds after the previous)
    train = [load("train", args.train_hearts, t, offset=k * args.train_hearts)
             for k, t in enumerate(args.train_frames)]
    fold_test = {}
    if args.folds > 1:
        parts = [split_fold(d, args.folds, args.fold) for d in train]
        train = [a for a, _ in parts]
        fold_test = {t: b for t, (_, b) in zip(args.train_frames, parts)}
    counts = [args.test_hearts if t in args.train_frames else args.ki_test_hearts
              for t in args.test_frames]
    offsets = np.cumsum([0, *counts])
    test = {t: load("test", n, t, offset=int(o)) for t, n, o in zip(args.test_frames, counts, offsets)}
    data_s = clock.seconds
    model = cardiac_mos.build(args.variant)
    if args.init is not None:
        missing, unexpected = model.load_state_dict(
            torch.load(args.init, map_location="cpu", weights_only=True), strict=False)
        if unexpected or any(not k.startswith(("seg_nl.", "sub_nl.")) for k in missing):
            raise SystemExit(f"{args.init}: not a Cardiac-MOS state dict for this architecture "
                             f"(missing {missing[:5]}, unexpected {unexpected[:5]})")
    classes = np.concatenate([d["classes"].ravel() for d in train])
    share = np.bincount(classes, minlength=4) / classes.size
    weight = common.inverse_sqrt_weights(share)
    optimiser = torch.optim.Adam(model.parameters(), lr=args.lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, args.epochs)
    history = []
    for epoch in range(args.epochs):
        model.train()
        batches = [(k, idx) for k, d in enumerate(train)
                   for idx in common.batch_indices(len(d["classes"]), args.batch, g)]
        order = torch.randperm(len(batches), generator=g).tolist()
        losses = []
        for i in common.progress(order, desc=f"epoch {epoch + 1}/{args.epochs}"):
            k, idx = batches[i]
            x = augment(to_input(train[k]["segments"][idx]), g)
            y = torch.from_numpy(train[k]["classes"][idx])
            loss = F.cross_entropy(model(x).reshape(-1, 4), y.reshape(-1), weight=weight)
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            losses.append(loss.item())
        schedule.step()
        history.append({"epoch": epoch + 1, "loss": float(np.mean(losses))})
        print(f"epoch {epoch + 1}: loss {history[-1]['loss']:.4f} ({clock.seconds:.0f} s)",
              file=sys.stderr, flush=True)
    train_s = clock.seconds - data_s
    predictions = {name: {str(t): (d["classes"], predict(model, d["segments"]))
                          for t, d in sets.items()}
                   for name, sets in (("test", test), ("fold_test", fold_test))}
    metrics, fold_metrics = ({t: scoring_metrics(*pair) for t, pair in predictions[name].items()}
                             for name in ("test", "fold_test"))
    for name, table in (("test", metrics), (f"fold {args.fold} of {args.folds}", fold_metrics)):
        for t, m in table.items():
            print(f"{name}, {t} frames: accuracy {m['accuracy']:.3f}, binary "
                  f"{m['binary_accuracy']:.3f}, kappa {m['kappa']:.3f}, MSI r "
                  f"{m['msi_pearson']:.3f} ({m['hearts']} hearts)")
    header = common.record_header(args, ROLE)
    record = {**header, "variant": args.variant, "data": {
        "builder": f"calib.datasets.{BUILDER}", "train_hearts_per_frames": args.train_hearts,
        "train_frames": args.train_frames, "test_frames": args.test_frames,
        "folds": args.folds, "fold": args.fold,
        "train_hearts": int(sum(len(d["classes"]) for d in train)),
        "class_share_train": share.round(4).tolist()}, "history": history, "test": metrics,
        "fold_test": fold_metrics,
        # per held-out heart: the truth's and the model's class codes (hearts, 16), for
        # pooling folds (bench/wall_motion_cv.py)
        "predictions": {name: {t: {"true": a.tolist(), "pred": b.tolist()}
                               for t, (a, b) in sets.items()}
                        for name, sets in predictions.items()},
        "wall_s": {"data": round(data_s, 1), "train": round(train_s, 1)}}
    js = common.save_weights(model, ROLE, record, args.out)
    print(f"wrote {args.out} and {js}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

