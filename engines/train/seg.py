"""Train the LV myocardium / cavity segmenter on phantom frames (``cardiostream engines train seg``).

Data: :func:`calib.datasets.segmentation_samples` (apical views a4c / a2c / alax,
several frames per clip over one cardiac cycle). The 256 x 256 truth masks become soft
class maps at the network's input size (area downsampling), so the network learns the
partial-volume boundary that bilinear upsampling of its logits turns back into a
256 x 256 mask.

Schedule (to fit a CPU budget): the first ``--epochs`` minus ``--full-frame-epochs``
epochs run on cheap random crops (``--crop``, mostly centred near the myocardium) of the
network input -- the network is fully convolutional, and its batch-norm statistics are
re-estimated on full frames after each crop epoch -- and the last
``--full-frame-epochs`` on full 128 x 128 inputs, so the network sees the whole view
(cavity context) with the batch-norm statistics it is evaluated with. One learning-rate
schedule over all epochs: warm-up over 15 %, then cosine decay to ~0 (one-cycle), so the
full-frame epochs run at the lower, decaying rates. Loss: soft cross-entropy plus soft
Dice of myocardium and cavity. Augmentation: gain, gamma, noise, small scale / rotation /
shift. Model selection on ``val`` (myocardium Dice, every epoch), metrics on the
held-out ``test`` split at 256 x 256.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
import torch.nn.functional as F

from engines.nets import segmenter
from engines.spec import fit_geometry, fit_to_input
from engines.train import common
from streamer.vocab import SEG_CLASSES, VIEW_CLASSES

ROLE = "seg"
BUILDER = "segmentation_samples"
FRAMES_PER_CLIP = {"train": 8, "val": 4, "test": 4}
CHUNK = 400


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        ROLE, help="train the myocardium / cavity segmenter on phantom frames",
        description="Train the U-Net segmenter (engines.nets.segmenter: background, LV myocardium, "
                    "LV cavity) on phantom frames from calib.datasets.segmentation_samples; pick the "
                    "best epoch on the 'val' split by myocardium Dice, report Dice at 256 x 256 on the "
                    "held-out 'test' split, and write the state dict plus a JSON record.")
    common.add_common_arguments(p, ROLE, segmenter.SPEC.weights_file, epochs=9, samples=4000,
                                val_samples=200, test_samples=400, batch_size=16, lr=4e-3)
    p.add_argument("--crop", type=int, default=64,
                   help="side of the random training crops in network pixels; 0 trains on full inputs (default %(default)s)")
    p.add_argument("--full-frame-epochs", type=int, default=6,
                   help="the last N of the --epochs run on full network inputs instead of crops "
                        "(default %(default)s)")
    p.set_defaults(func=run)
    return p


def prepare(images: np.ndarray, size=segmenter.SPEC.size) -> np.ndarray:
    """uint8 (N, rows, cols) frames -> float32 (N, 1, H, W) network inputs in [0, 1]."""
    return np.stack([fit_to_input(im.astype(np.float32) / 255.0, size)[0] for im in images])[:, None]


def soft_targets(myocardium: np.ndarray, cavity: np.ndarray, size=segmenter.SPEC.size) -> np.ndarray:
    """(N, 2, H, W) uint8 (x 255) area fractions of myocardium and cavity at the input size."""
    out = np.empty((len(myocardium), 2) + tuple(size), np.uint8)
    for i, (m, c) in enumerate(zip(myocardium, cavity)):
        m = m.astype(np.float32)
        c = c.astype(np.float32) * (1 - m)          # one class per pixel; myocardium wins
        out[i, 0] = np.round(fit_to_input(m, size)[0] * 255)
        out[i, 1] = np.round(fit_to_input(c, size)[0] * 255)
    return out


def logits_to_labels(logits: np.ndarray, frame_shape: tuple[int, int]) -> np.ndarray:
    """(N, 3, H, W) logits -> (N, rows, cols) labels on the frame grid (bilinear logits, argmax)."""
    fit = fit_geometry(frame_shape, logits.shape[-2:])
    t = torch.from_numpy(np.ascontiguousarray(logits[:, :, fit.top:fit.top + fit.rows, fit.left:fit.left + fit.cols],
                                              np.float32))
    if t.shape[-2:] != tuple(frame_shape):
        t = F.interpolate(t, size=tuple(frame_shape), mode="bilinear", align_corners=False)
    return t.argmax(1).numpy().astype(np.uint8)


def dice(pred: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Per-frame Dice of boolean (N, rows, cols) masks (1 where both are empty)."""
    inter = (pred & truth).sum((1, 2))
    total = pred.sum((1, 2)) + truth.sum((1, 2))
    return np.where(total > 0, 2.0 * inter / np.maximum(total, 1), 1.0)


def evaluate(predict, samples: dict, batch_size: int = 16) -> dict:
    """Dice of ``predict`` (inputs (N, 1, H, W) -> logits (N, 3, H, W)) on segmentation samples.

    ``samples``: ``images`` (N, rows, cols) uint8, ``myocardium`` and ``cavity`` masks at
    the frame size (256 x 256 for the phantom sets), optional ``views``. The logits are
    upsampled bilinearly to the frame before the argmax; Dice per frame, summarised.
    """
    images = samples["images"]
    myo_d, cav_d = [], []
    for i in range(0, len(images), batch_size):
        logits = np.asarray(predict(prepare(images[i:i + batch_size])))
        lab = logits_to_labels(logits, images.shape[1:])
        myo_d.append(dice(lab == 1, samples["myocardium"][i:i + batch_size].astype(bool)))
        cav_d.append(dice(lab == 2, samples["cavity"][i:i + batch_size].astype(bool)
                          & ~samples["myocardium"][i:i + batch_size].astype(bool)))
    myo_d, cav_d = np.concatenate(myo_d), np.concatenate(cav_d)
    out = {"frames": int(len(images)), "myocardium_dice_mean": float(myo_d.mean()),
           "myocardium_dice_median": float(np.median(myo_d)), "myocardium_dice_min": float(myo_d.min()),
           "myocardium_dice_p05": float(np.percentile(myo_d, 5)),
           "cavity_dice_mean": float(cav_d.mean()), "cavity_dice_min": float(cav_d.min()),
           "classes": list(SEG_CLASSES), "evaluated_at": list(images.shape[1:])}
    if "views" in samples:
        views = np.asarray(samples["views"])
        out["myocardium_dice_by_view"] = {VIEW_CLASSES[v]: float(myo_d[views == v].mean()) for v in np.unique(views)}
    return out


def _crop_corners(t: torch.Tensor, crop: int, g: torch.Generator, p_centred: float = 0.75) -> list[tuple[int, int]]:
    """Top-left corners: mostly around a random myocardium pixel, otherwise anywhere."""
    n, _, h, w = t.shape
    corners = []
    for i in range(n):
        ys, xs = torch.nonzero(t[i, 0] > 0.5, as_tuple=True)
        if len(ys) and float(torch.rand(1, generator=g)) < p_centred:
            k = int(torch.randint(len(ys), (1,), generator=g))
            jy, jx = (torch.randint(-crop // 3, crop // 3 + 1, (2,), generator=g)).tolist()
            cy, cx = int(ys[k]) + jy, int(xs[k]) + jx
        else:
            cy, cx = (int(torch.randint(h, (1,), generator=g)), int(torch.randint(w, (1,), generator=g)))
        corners.append((min(max(cy - crop // 2, 0), h - crop), min(max(cx - crop // 2, 0), w - crop)))
    return corners


def _batch(x, tgt, idx, crop, g):
    """Augmented (images, soft targets (N, 3, ., .)) for the indices ``idx``."""
    xb = x[idx]
    tb = tgt[idx].float() / 255.0
    theta = common.random_affine(len(idx), g)
    xb = common.warp(xb, theta)
    tb = common.warp(tb, theta)
    if crop:
        corners = _crop_corners(tb, crop, g)
        xb = torch.stack([xb[i, :, r:r + crop, c:c + crop] for i, (r, c) in enumerate(corners)])
        tb = torch.stack([tb[i, :, r:r + crop, c:c + crop] for i, (r, c) in enumerate(corners)])
    xb = common.augment_intensity(xb, g)
    tb = torch.cat([(1 - tb.sum(1, keepdim=True)).clamp(0, 1), tb], 1)
    return xb, tb


def loss_fn(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Soft cross-entropy + (1 - soft Dice) averaged over myocardium and cavity."""
    ce = -(target * F.log_softmax(logits, 1)).sum(1).mean()
    p = logits.softmax(1)[:, 1:]
    t = target[:, 1:]
    inter = (p * t).sum((0, 2, 3))
    d = (2 * inter + 1) / (p.sum((0, 2, 3)) + t.sum((0, 2, 3)) + 1)
    return ce + (1 - d).mean()


@torch.no_grad()
def recalibrate_batchnorm(model: torch.nn.Module, x: torch.Tensor, batch_size: int = 16) -> None:
    """Re-estimate batch-norm running statistics on full network inputs (cumulative average)."""
    bns = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    saved = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
    model.train()
    for i in range(0, len(x), batch_size):
        model(x[i:i + batch_size])
    for m, mom in zip(bns, saved):
        m.momentum = mom
    model.eval()


def run(args: argparse.Namespace) -> int:
    threads = common.set_threads(args.threads)
    device = common.pick_device(args.device)
    g = common.seed_everything(args.seed)
    clock = common.Stopwatch()
    header = common.record_header(args, ROLE)

    tr, tr_rec = common.load_split(BUILDER, "train", args.samples, FRAMES_PER_CLIP["train"], CHUNK,
                                   appearance=args.appearance)
    va, va_rec = common.load_split(BUILDER, "val", args.val_samples, FRAMES_PER_CLIP["val"], CHUNK,
                                   appearance=args.appearance)
    x = torch.from_numpy(prepare(tr["images"]))
    tgt = torch.from_numpy(soft_targets(tr["myocardium"], tr["cavity"]))
    crop = args.crop if 0 < args.crop < min(x.shape[-2:]) else 0
    full_epochs = min(args.epochs, max(0, args.full_frame_epochs)) if crop else args.epochs
    bn_frames = x[torch.randperm(len(x), generator=g)[:min(len(x), 256)]]
    data_s = clock.seconds

    model = segmenter.build().to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=1e-4)
    steps = args.epochs * -(-len(x) // args.batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr, total_steps=max(1, steps), pct_start=0.15,
                                                anneal_strategy="cos")
    best, history = common.BestEpoch(), []
    bar = common.progress(total=steps, desc="train seg")
    for epoch in range(args.epochs):
        model.train()
        total = 0.0
        ecrop = crop if epoch < args.epochs - full_epochs else 0
        lr0 = sched.get_last_lr()[0]
        for idx in common.batch_indices(len(x), args.batch_size, g):
            xb, tb = _batch(x, tgt, idx, ecrop, g)
            loss = loss_fn(model(xb.to(device)), tb.to(device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(idx)
            bar.update(1)
            bar.set_postfix(epoch=epoch + 1, loss=f"{loss.item():.3f}")
        if ecrop:
            recalibrate_batchnorm(model, bn_frames.to(device))
        val = evaluate(common.torch_predict(model, device), va)
        history.append({"epoch": epoch + 1, "crop": ecrop, "lr_start": lr0, "train_loss": total / len(x),
                        "val_myocardium_dice": val["myocardium_dice_mean"],
                        "val_cavity_dice": val["cavity_dice_mean"],
                        "wall_s": round(clock.seconds - data_s, 1)})
        print(f"seg: epoch {epoch + 1}/{args.epochs} crop {ecrop or 'full'} loss {total / len(x):.4f} "
              f"val myocardium {val['myocardium_dice_mean']:.4f} cavity {val['cavity_dice_mean']:.4f} "
              f"({clock.seconds - data_s:.0f} s)", flush=True)
        best.offer(val["myocardium_dice_mean"], epoch, model, val)
    bar.close()
    model.load_state_dict(best.state)
    train_s = clock.seconds - data_s

    te, te_rec = common.load_split(BUILDER, "test", args.test_samples, FRAMES_PER_CLIP["test"], CHUNK,
                                   appearance=args.appearance)
    test = evaluate(common.torch_predict(model, device), te)
    record = common.training_record(
        header, segmenter.SPEC, threads=threads, device=device,
        data={"train": tr_rec, "val": va_rec, "test": te_rec}, epochs=args.epochs, best=best,
        history=history, val_keys=("myocardium_dice_mean", "cavity_dice_mean"), test=test,
        data_s=data_s, train_s=train_s, total_s=clock.seconds, crop=crop,
        full_frame_epochs=full_epochs, lr_schedule="one-cycle: 15 % cosine warm-up, cosine decay")
    js = common.save_weights(model.cpu(), ROLE, record, args.out)
    print(f"seg: test myocardium Dice {test['myocardium_dice_mean']:.4f} (min {test['myocardium_dice_min']:.4f}, "
          f"{test['frames']} frames), cavity {test['cavity_dice_mean']:.4f}, best epoch {best.epoch}/"
          f"{args.epochs}, train {train_s:.0f} s; wrote {args.out} and {js}")
    return 0


def main(argv=None) -> int:
    return common.trainer_main(add_parser, ROLE, argv)


if __name__ == "__main__":
    raise SystemExit(main())
