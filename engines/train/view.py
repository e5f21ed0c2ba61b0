"""Train the view classifier on phantom frames (``cardiostream engines train view``).

Data: :func:`calib.datasets.view_samples`, several frames per clip spread over one
cardiac cycle, labels balanced over the eight views. Split ``train`` for training,
``val`` for model selection (best epoch), ``test`` (held-out seeds) for the metrics in
the JSON record. Augmentation: mirroring, small scale / rotation / shift, a smooth gain field and
near-field haze, then gain, gamma and noise.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
import torch.nn.functional as F

from engines.nets import view_classifier
from engines.spec import fit_to_input
from engines.train import common
from streamer.vocab import VIEW_CLASSES

ROLE = "view"
BUILDER = "view_samples"
FRAMES_PER_CLIP = {"train": 8, "val": 4, "test": 4}
CHUNK = 512


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        ROLE, help="train the view classifier on phantom frames",
        description="Train the 8-class echo view classifier (engines.nets.view_classifier) on "
                    "phantom frames from calib.datasets.view_samples; pick the best epoch on the "
                    "'val' split, report accuracy on the held-out 'test' split, and write the "
                    "state dict plus a JSON record (command, seeds, metrics, sha256).")
    common.add_common_arguments(p, ROLE, view_classifier.SPEC.weights_file, epochs=16, samples=10240,
                                val_samples=256, test_samples=512, batch_size=32, lr=3e-3)
    p.add_argument("--neutral-samples", type=int, default=1536, metavar="N",
                   help="plain-phantom frames (every appearance knob off, no display) added to a "
                        "random-appearance training set, from the next train seeds: the plain "
                        "phantom is one corner of the random draw that training would rarely see "
                        "(default %(default)s; 0 = none)")
    p.add_argument("--flip", type=float, default=0.5, metavar="P",
                   help="probability of a left-right mirrored training frame: the view does not "
                        "change when a scanner shows the LV on the left (Mayo convention) "
                        "(default %(default)s)")
    p.add_argument("--scanner-fields", action=argparse.BooleanOptionalAction, default=True,
                   help="draw a smooth gain field and near-field haze over each training frame "
                        "(common.augment_scanner_fields): real apical views have a dim, uneven "
                        "wall and a hazy apex that the phantom draws too narrowly; without it the "
                        "classifier calls a real A4C a2c or alax (default on)")
    p.set_defaults(func=run)
    return p


def prepare(images: np.ndarray, size=view_classifier.SPEC.size) -> np.ndarray:
    """uint8 (N, rows, cols) frames -> float32 (N, 1, H, W) network inputs in [0, 1]."""
    return np.stack([fit_to_input(im.astype(np.float32) / 255.0, size)[0] for im in images])[:, None]


def evaluate(predict, samples: dict, batch_size: int = 32) -> dict:
    """Accuracy of ``predict`` (inputs (N, 1, H, W) -> logits (N, 8)) on view samples.

    ``samples``: ``images`` (N, rows, cols) uint8 and ``labels`` (N,). Returns accuracy,
    balanced accuracy (mean recall per view), macro F1, per-view recall and the confusion
    matrix (rows truth, columns prediction, in :data:`VIEW_CLASSES` order).
    """
    x = prepare(samples["images"])
    logits = common.predict_in_batches(predict, x, batch_size)
    pred = logits.argmax(1)
    y = np.asarray(samples["labels"])
    k = len(VIEW_CLASSES)
    cm = np.zeros((k, k), np.int64)
    np.add.at(cm, (y, pred), 1)
    support = cm.sum(1)
    recall = np.where(support > 0, np.diag(cm) / np.maximum(support, 1), np.nan)
    precision = np.where(cm.sum(0) > 0, np.diag(cm) / np.maximum(cm.sum(0), 1), np.nan)
    f1 = np.where(recall + precision > 0, 2 * recall * precision / np.maximum(recall + precision, 1e-12), 0.0)
    present = support > 0
    return {"frames": int(len(y)), "accuracy": float((pred == y).mean()),
            "balanced_accuracy": float(np.nanmean(recall[present])),
            "macro_f1": float(np.mean(f1[present])),
            "recall": {v: (None if np.isnan(r) else float(r)) for v, r in zip(VIEW_CLASSES, recall)},
            "confusion": cm.tolist(), "classes": list(VIEW_CLASSES)}


def run(args: argparse.Namespace) -> int:
    threads = common.set_threads(args.threads)
    device = common.pick_device(args.device)
    g = common.seed_everything(args.seed)
    clock = common.Stopwatch()
    header = common.record_header(args, ROLE)

    tr, tr_rec = common.load_split(BUILDER, "train", args.samples, FRAMES_PER_CLIP["train"], CHUNK,
                                   appearance=args.appearance)
    if args.neutral_samples > 0 and args.appearance != "neutral":
        plain, plain_rec = common.load_split(
            BUILDER, "train", args.neutral_samples, FRAMES_PER_CLIP["train"], CHUNK,
            first_clip=-(-args.samples // FRAMES_PER_CLIP["train"]))
        tr = {k: np.concatenate([tr[k], plain[k]]) for k in tr}
        tr_rec = {"random": tr_rec, "neutral": plain_rec}
    va, va_rec = common.load_split(BUILDER, "val", args.val_samples, FRAMES_PER_CLIP["val"], CHUNK,
                                   appearance=args.appearance)
    x = torch.from_numpy(prepare(tr["images"]))
    y = torch.from_numpy(tr["labels"].astype(np.int64))
    data_s = clock.seconds

    model = view_classifier.build().to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=1e-4)
    steps = args.epochs * -(-len(x) // args.batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr, total_steps=max(1, steps), pct_start=0.2)
    best, history = common.BestEpoch(), []
    bar = common.progress(total=steps, desc="train view")
    for epoch in range(args.epochs):
        model.train()
        total = 0.0
        for idx in common.batch_indices(len(x), args.batch_size, g):
            xb = common.warp(x[idx], common.random_affine(len(idx), g))
            mirror = torch.rand(len(idx), generator=g) < args.flip
            xb[mirror] = xb[mirror].flip(-1)
            if args.scanner_fields:
                xb = common.augment_scanner_fields(xb.clamp(0, 1), g)
            xb = common.augment_intensity(xb, g).to(device)
            loss = F.cross_entropy(model(xb), y[idx].to(device), label_smoothing=0.05)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(idx)
            bar.update(1)
            bar.set_postfix(epoch=epoch + 1, loss=f"{loss.item():.3f}")
        val = evaluate(common.torch_predict(model, device), va)
        history.append({"epoch": epoch + 1, "train_loss": total / len(x),
                        "val_accuracy": val["accuracy"], "val_balanced_accuracy": val["balanced_accuracy"]})
        best.offer(val["balanced_accuracy"], epoch, model, val)
    bar.close()
    model.load_state_dict(best.state)
    train_s = clock.seconds - data_s

    te, te_rec = common.load_split(BUILDER, "test", args.test_samples, FRAMES_PER_CLIP["test"], CHUNK,
                                   appearance=args.appearance)
    test = evaluate(common.torch_predict(model, device), te)
    record = common.training_record(
        header, view_classifier.SPEC, threads=threads, device=device,
        data={"train": tr_rec, "val": va_rec, "test": te_rec}, epochs=args.epochs, best=best,
        history=history, val_keys=("accuracy", "balanced_accuracy"), test=test, data_s=data_s,
        train_s=train_s, total_s=clock.seconds)
    js = common.save_weights(model.cpu(), ROLE, record, args.out)
    print(f"view: test accuracy {test['accuracy']:.4f} (balanced {test['balanced_accuracy']:.4f}, "
          f"{test['frames']} frames), best epoch {best.epoch}/{args.epochs}, "
          f"train {train_s:.0f} s; wrote {args.out} and {js}")
    return 0


def main(argv=None) -> int:
    return common.trainer_main(add_parser, ROLE, argv)


if __name__ == "__main__":
    raise SystemExit(main())
