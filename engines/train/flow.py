"""Train the dense-flow network on phantom frame pairs (``cardiostream engines train flow``).

Data: :func:`calib.datasets.flow_samples` -- consecutive frames of echo phantom clips
(apical views a4c / a2c / alax) with the exact truth displacement (dx, dy) px from the
previous to the current frame, defined over the whole image, and the myocardium mask of
the previous frame.

Training runs on random crops (``--crop``, mostly centred on the myocardium) to fit a
CPU budget; the network is fully convolutional. Loss: end-point error, weighted towards
the myocardium (``--myo-weight``) but over the whole crop, on the final full-resolution
flow and on every coarser pyramid level (truth area-downsampled). Augmentation: gain,
gamma and noise, left-right flips (dx negated). Model selection on ``val`` (EPE in the
myocardium); metrics on the held-out ``test`` split at 256 x 256, next to OpenCV DIS
(preset MEDIUM) on the same pairs.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
import torch.nn.functional as F

from engines.nets import flownet
from engines.spec import fit_geometry, fit_to_input
from engines.train import common

ROLE = "flow"
BUILDER = "flow_samples"
#: frame pairs per phantom clip (more pairs per clip = cheaper data, fewer anatomies)
PAIRS_PER_CLIP = {"train": 8, "val": 4, "test": 4}
#: pairs per cached data-set file
CHUNK = 2048


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        ROLE, help="train the dense-flow network on phantom frame pairs",
        description="Train the PWC-style flow network (engines.nets.flownet) on consecutive phantom "
                    "frames with exact truth motion from calib.datasets.flow_samples; pick the best "
                    "epoch on the 'val' split by end-point error in the myocardium, report it at "
                    "256 x 256 on the held-out 'test' split next to OpenCV DIS (preset MEDIUM), and "
                    "write the state dict plus a JSON record.")
    common.add_common_arguments(p, ROLE, flownet.SPEC.weights_file, epochs=48, samples=2048,
                                val_samples=64, test_samples=128, batch_size=8, lr=1.5e-3,
                                unit="pairs")
    p.add_argument("--clip", type=float, default=1.0, help="gradient-norm clipping (default %(default)s)")
    p.add_argument("--crop", type=int, default=96,
                   help="side of the random training crops (multiple of 8); 0 trains on full inputs (default %(default)s)")
    p.add_argument("--myo-weight", type=float, default=8.0,
                   help="extra loss weight of myocardium pixels (1 + this inside) (default %(default)s)")
    p.add_argument("--rel-weight", type=float, default=0.5,
                   help="weight of the relative error term: Charbonnier of |flow - truth| / (|truth| + "
                        "--rel-eps) over the myocardium, which up-weights small motion (default %(default)s)")
    p.add_argument("--rel-eps", type=float, default=0.1,
                   help="px added to |truth| in the relative error term (default %(default)s)")
    p.add_argument("--slope-weight", type=float, default=0.5,
                   help="weight of the anti-shrinkage term: |s - 1| for the batch's least-squares slope s "
                        "of flow vs truth in the myocardium per component (dx, dy), plus |r - 1| for the "
                        "small-motion-weighted fraction of truth r (default %(default)s)")
    p.add_argument("--select-slope-penalty", type=float, default=1.0,
                   help="model selection: px of val EPE charged per unit that a val slope (dx, dy) lies "
                        "outside 0.85-1.1; 0 selects on val EPE in the myocardium alone (default %(default)s)")
    p.add_argument("--arch", action="append", default=[], metavar="NAME=V[,V..]",
                   help="override a hyperparameter of engines.nets.flownet.DEFAULTS, e.g. radii=1,1,2 "
                        "(repeatable; recorded with the weights)")
    p.add_argument("--full-epochs", type=int, default=0,
                   help="last epochs (of --epochs) trained on full frames instead of crops (default %(default)s)")
    p.set_defaults(func=run)
    return p


def arch_overrides(items: list[str]) -> dict:
    """``["radii=1,1,2", "estimator_width=12"]`` -> ``{"radii": (1, 1, 2), "estimator_width": 12}``."""
    out = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or name not in flownet.DEFAULTS:
            raise SystemExit(f"--arch {item!r}: expected NAME=VALUE with NAME one of "
                             f"{', '.join(flownet.DEFAULTS)}")
        try:
            values = tuple(int(v) for v in value.split(",") if v.strip())
        except ValueError:
            raise SystemExit(f"--arch {item!r}: values must be integers") from None
        default = flownet.DEFAULTS[name]
        out[name] = values if isinstance(default, tuple) else (values[0] if len(values) == 1 else None)
        if out[name] is None:
            raise SystemExit(f"--arch {item!r}: {name} takes one integer")
    return out


# ------------------------------------------------------------------ data and metrics
def prepare(pairs: np.ndarray, size=flownet.SPEC.size) -> np.ndarray:
    """uint8 (N, 2, rows, cols) frame pairs -> float32 (N, 2, H, W) network inputs in [0, 1]."""
    if pairs.shape[-2:] == tuple(size):
        return pairs.astype(np.float32) * np.float32(1 / 255)
    return np.stack([np.stack([fit_to_input(f.astype(np.float32) / 255.0, size)[0] for f in pair])
                     for pair in pairs])


def to_frame_flow(flow: np.ndarray, frame_shape: tuple[int, int]) -> np.ndarray:
    """Network flows (N, 2, H, W) -> frame-grid flows (N, rows, cols, 2) in frame pixels."""
    fit = fit_geometry(frame_shape, flow.shape[-2:])
    f = np.ascontiguousarray(flow[:, :, fit.top:fit.top + fit.rows, fit.left:fit.left + fit.cols], np.float32)
    t = torch.from_numpy(f)
    if t.shape[-2:] != tuple(frame_shape):
        t = F.interpolate(t, size=tuple(frame_shape), mode="bilinear", align_corners=False)
    return (t / fit.scale).permute(0, 2, 3, 1).numpy()


def _epe(flow: np.ndarray, truth: np.ndarray) -> np.ndarray:
    return np.linalg.norm(flow.astype(np.float64) - truth, axis=-1)


#: truth displacement bins (px) of the fraction-of-truth metric
SIZE_BINS = (0.0, 0.1, 0.2, 0.4, 1.0, np.inf)


def shrinkage(flow: np.ndarray, truth: np.ndarray, mask: np.ndarray) -> dict:
    """How much of the true motion ``flow`` (N, rows, cols, 2) reproduces over ``mask``.

    ``slope_dx`` / ``slope_dy``: least-squares slope (with intercept) of estimated vs truth
    component; ``fraction_of_truth``: sum(flow . truth) / sum(|truth|^2) per bin of |truth|
    (px, :data:`SIZE_BINS`), i.e. the share of the true motion recovered (1 = unbiased,
    < 1 = shrunk), with the pixel count of each bin.
    """
    p, t = flow[mask].astype(np.float64), truth[mask].astype(np.float64)
    out = {}
    for c, name in enumerate(("dx", "dy")):
        tc, pc = t[:, c] - t[:, c].mean(), p[:, c] - p[:, c].mean()
        var = float((tc * tc).sum())
        out[f"slope_{name}"] = float((tc * pc).sum() / var) if var > 0 else float("nan")
        out[f"intercept_{name}_px"] = float(p[:, c].mean() - out[f"slope_{name}"] * t[:, c].mean()) if var > 0 else float("nan")
    mag = np.linalg.norm(t, axis=-1)
    dot, sq = (p * t).sum(-1), (t * t).sum(-1)
    bins = []
    for lo, hi in zip(SIZE_BINS[:-1], SIZE_BINS[1:]):
        sel = (mag >= lo) & (mag < hi)
        frac = float(dot[sel].sum() / sq[sel].sum()) if sel.any() and sq[sel].sum() > 0 else float("nan")
        bins.append({"truth_px": [lo, None if np.isinf(hi) else hi], "pixels": int(sel.sum()), "fraction": frac})
    out["fraction_of_truth"] = bins
    return out


def evaluate(predict, samples: dict, batch_size: int = 16, dis: bool = True) -> dict:
    """End-point errors of ``predict`` (N, 2, H, W) inputs -> (N, 2, H, W) flows on phantom pairs.

    ``samples`` is a :func:`calib.datasets.flow_samples` dict. Errors are in frame pixels:
    mean over the myocardium pixels of all pairs (previous frame's truth mask) and over
    the whole image; with ``dis``, the same for OpenCV DIS (preset MEDIUM) on the uint8
    pairs, with DIS's median runtime per pair.
    """
    import cv2

    pairs, truth, myo = samples["pairs"], samples["flow"], samples["myocardium"] > 0
    x = prepare(pairs)
    flow = to_frame_flow(common.predict_in_batches(predict, x, batch_size), pairs.shape[-2:])
    e = _epe(flow, truth)
    zero = np.linalg.norm(truth.astype(np.float64), axis=-1)
    out = {"n_pairs": int(len(pairs)), "evaluated_at": list(pairs.shape[-2:]),
           "epe_myocardium_px": float(e[myo].mean()), "epe_image_px": float(e.mean()),
           "epe_myocardium_pair_median_px": float(np.median([ei[m].mean() for ei, m in zip(e, myo) if m.any()])),
           "epe_zero_flow_myocardium_px": float(zero[myo].mean()),
           **shrinkage(flow, truth, myo)}
    if dis:
        d = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)
        flows, times = [], []
        for a, b in pairs:
            t0 = time.perf_counter()
            flows.append(d.calc(np.ascontiguousarray(a), np.ascontiguousarray(b), None))
            times.append(time.perf_counter() - t0)
        ed = _epe(np.stack(flows), truth)
        sd = shrinkage(np.stack(flows), truth, myo)
        out.update(epe_dis_medium_px=float(ed[myo].mean()), epe_dis_medium_image_px=float(ed.mean()),
                   dis_medium_ms_median=float(np.median(times) * 1e3),
                   dis_medium_slope_dx=sd["slope_dx"], dis_medium_slope_dy=sd["slope_dy"],
                   dis_medium_fraction_of_truth=sd["fraction_of_truth"])
    return out


def load(split: str, n: int, appearance: str = "neutral") -> tuple[dict, dict]:
    """``n`` pairs of ``split`` (cached on disk, in chunks of :data:`CHUNK`:
    :func:`engines.train.common.load_split`) and its record."""
    return common.load_split(BUILDER, split, n, PAIRS_PER_CLIP[split], CHUNK,
                             per_clip="pairs_per_clip", appearance=appearance)


# ------------------------------------------------------------------ training
def _crop_corners(myo: np.ndarray, idx: np.ndarray, crop: int, size: tuple[int, int], g: torch.Generator,
                  p_centred: float = 0.8) -> list[tuple[int, int]]:
    """Top-left corners of crops, centred on a random myocardium pixel with probability ``p_centred``."""
    h, w = size
    corners = []
    for i in idx:
        u = torch.rand(3, generator=g).tolist()
        rows, cols = np.nonzero(myo[i])
        if u[0] < p_centred and len(rows):
            k = int(u[1] * len(rows))
            r, c = int(rows[k]) - crop // 2, int(cols[k]) - crop // 2
            jitter = torch.randint(-crop // 4, crop // 4 + 1, (2,), generator=g).tolist()
            r, c = r + jitter[0], c + jitter[1]
        else:
            r, c = int(u[1] * (h - crop + 1)), int(u[2] * (w - crop + 1))
        corners.append((min(max(r, 0), h - crop), min(max(c, 0), w - crop)))
    return corners


def make_batch(pairs: np.ndarray, flows: np.ndarray, myo: np.ndarray, idx: np.ndarray, crop: int,
               g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Augmented crops: inputs (B, 2, c, c) in [0, 1], truth flow (B, 2, c, c), myocardium (B, 1, c, c)."""
    h, w = pairs.shape[-2:]
    if crop:
        corners = _crop_corners(myo, idx, crop, (h, w), g)
        sl = [(slice(r, r + crop), slice(c, c + crop)) for r, c in corners]
    else:
        sl = [(slice(0, h), slice(0, w))] * len(idx)
    x = torch.from_numpy(np.stack([pairs[i][:, a, b] for i, (a, b) in zip(idx, sl)]).astype(np.float32) / 255.0)
    f = torch.from_numpy(np.stack([flows[i][a, b] for i, (a, b) in zip(idx, sl)])).permute(0, 3, 1, 2).contiguous()
    m = torch.from_numpy(np.stack([myo[i][a, b] for i, (a, b) in zip(idx, sl)]).astype(np.float32))[:, None]
    flip = torch.rand(len(idx), generator=g) < 0.5
    if flip.any():
        x[flip] = x[flip].flip(-1)
        m[flip] = m[flip].flip(-1)
        f[flip] = f[flip].flip(-1) * torch.tensor([-1.0, 1.0]).view(1, 2, 1, 1)
    x = common.augment_intensity(x, g, noise=0.03)
    return x, f, m


def shrink_terms(pred: torch.Tensor, truth: torch.Tensor, myo: torch.Tensor, rel_eps: float = 0.1,
                 tiny: float = 1e-6) -> tuple[torch.Tensor, torch.Tensor]:
    """Anti-shrinkage terms of a batch, over the myocardium pixels of (B, 2, h, w) flows.

    ``rel``: mean Charbonnier of |pred - truth| / (|truth| + ``rel_eps``) (relative error,
    large for small true motion that is missed). ``slope``: |s_dx - 1| + |s_dy - 1| for the
    least-squares slopes (with intercept) of pred vs truth per component, plus |r - 1| for
    r = sum(w pred . truth) / sum(w |truth|^2) with w = 1 / (|truth| + rel_eps)^2, the
    share of the true motion recovered with small motion weighted up. Both are zero-safe
    (no myocardium -> 0).
    """
    m = myo[:, 0] > 0.5
    if not bool(m.any()):
        z = pred.sum() * 0.0
        return z, z
    p = pred.permute(0, 2, 3, 1)[m]                       # (P, 2)
    t = truth.permute(0, 2, 3, 1)[m]
    mag = torch.sqrt((t * t).sum(1) + 1e-12)
    err = torch.sqrt(((p - t) ** 2).sum(1) / (mag + rel_eps) ** 2 + 1e-6)
    rel = err.mean()
    tc, pc = t - t.mean(0), p - p.mean(0)
    slopes = (tc * pc).sum(0) / ((tc * tc).sum(0) + tiny)
    w = 1.0 / (mag + rel_eps) ** 2
    r = (w * (p * t).sum(1)).sum() / ((w * (t * t).sum(1)).sum() + tiny)
    slope = (slopes - 1.0).abs().sum() + (r - 1.0).abs()
    return rel, slope


def loss_fn(model: flownet.FlowNet, x: torch.Tensor, truth: torch.Tensor, myo: torch.Tensor,
            myo_weight: float, coarse_weight: float = 0.5, rel_weight: float = 0.0, rel_eps: float = 0.1,
            slope_weight: float = 0.0) -> torch.Tensor:
    """Weighted EPE of the final flow plus ``coarse_weight`` x that of each coarser level,
    plus ``rel_weight`` x ``rel`` and ``slope_weight`` x ``slope`` of :func:`shrink_terms`
    on the final flow."""
    levels = model.forward_levels(x)
    h, w = x.shape[-2:]
    loss = x.new_zeros(())
    for k, (lv, flow) in enumerate(levels):
        s = 2 ** lv
        if k == len(levels) - 1:
            pred, tgt, wt, scale = flownet.upsample(flow, (h, w), float(s)), truth, myo, 1.0
        else:
            pred, tgt, wt, scale = flow, F.avg_pool2d(truth, s) / s, F.avg_pool2d(myo, s), coarse_weight * s
        if k == len(levels) - 1 and (rel_weight or slope_weight):
            rel, slope = shrink_terms(pred, tgt, wt, rel_eps)
            loss = loss + rel_weight * rel + slope_weight * slope
        wt = 1.0 + myo_weight * wt
        epe = torch.sqrt(((pred - tgt) ** 2).sum(1, keepdim=True) + 1e-8)
        loss = loss + scale * (epe * wt).sum() / wt.sum()
    return loss


#: slopes (dx, dy) of flow vs truth counted as unbiased by model selection
SLOPE_OK = (0.85, 1.1)


def selection_score(val: dict, slope_penalty: float = 1.0) -> float:
    """Higher is better: minus the val EPE in the myocardium, minus ``slope_penalty`` px per
    unit that a slope lies outside :data:`SLOPE_OK` (so an epoch that shrinks motion loses to
    an unbiased one unless it is much more accurate)."""
    if not slope_penalty:
        return -val["epe_myocardium_px"]
    lo, hi = SLOPE_OK
    out = sum(max(lo - val[k], 0.0, val[k] - hi) for k in ("slope_dx", "slope_dy"))
    return -val["epe_myocardium_px"] - slope_penalty * (out if np.isfinite(out) else 10.0)


def run(args: argparse.Namespace) -> int:
    threads = common.set_threads(args.threads)
    device = common.pick_device(args.device)
    g = common.seed_everything(args.seed)
    clock = common.Stopwatch()
    header = common.record_header(args, ROLE)
    div = 2 ** len(flownet.DEFAULTS["widths"])
    if args.crop % div:
        raise SystemExit(f"--crop {args.crop} must be a multiple of {div}")

    tr, tr_rec = load("train", args.samples, args.appearance)
    va, va_rec = load("val", args.val_samples, args.appearance)
    pairs, flows, myo = tr["pairs"], tr["flow"], tr["myocardium"] > 0
    crop = args.crop if 0 < args.crop < min(pairs.shape[-2:]) else 0
    full_epochs = min(max(args.full_epochs, 0), args.epochs)
    data_s = clock.seconds

    model = flownet.build(**arch_overrides(args.arch)).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=1e-4)
    steps = args.epochs * -(-len(pairs) // args.batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr, total_steps=max(1, steps), pct_start=0.1)
    best, history = common.BestEpoch(), []
    bar = common.progress(total=steps, desc="train flow")
    for epoch in range(args.epochs):
        model.train()
        total = 0.0
        ecrop = 0 if epoch >= args.epochs - full_epochs else crop
        for idx in common.batch_indices(len(pairs), args.batch_size, g):
            xb, fb, mb = make_batch(pairs, flows, myo, idx, ecrop, g)
            loss = loss_fn(model, xb.to(device), fb.to(device), mb.to(device), args.myo_weight,
                           rel_weight=args.rel_weight, rel_eps=args.rel_eps, slope_weight=args.slope_weight)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), args.clip)
            opt.step()
            sched.step()
            total += loss.item() * len(idx)
            bar.update(1)
            bar.set_postfix(epoch=epoch + 1, loss=f"{loss.item():.3f}")
        val = evaluate(common.torch_predict(model, device), va, dis=False)
        history.append({"epoch": epoch + 1, "train_loss": total / len(pairs),
                        "val_epe_myocardium_px": val["epe_myocardium_px"], "val_epe_image_px": val["epe_image_px"],
                        "val_slope_dx": val["slope_dx"], "val_slope_dy": val["slope_dy"],
                        "seconds": round(clock.seconds - data_s, 1)})
        bar.write(f"epoch {epoch + 1}: loss {total / len(pairs):.4f}, val EPE myocardium "
                  f"{val['epe_myocardium_px']:.4f} px, image {val['epe_image_px']:.4f} px, slopes dx "
                  f"{val['slope_dx']:.3f} dy {val['slope_dy']:.3f} ({clock.seconds - data_s:.0f} s)")
        best.offer(selection_score(val, args.select_slope_penalty), epoch, model, val)
    bar.close()
    model.load_state_dict(best.state)
    model.eval()
    train_s = clock.seconds - data_s

    te, te_rec = load("test", args.test_samples, args.appearance)
    test = evaluate(common.torch_predict(model, device), te)
    record = common.training_record(
        header, flownet.SPEC, threads=threads, device=device,
        data={"train": tr_rec, "val": va_rec, "test": te_rec}, epochs=args.epochs, best=best,
        history=history, val_keys=("epe_myocardium_px", "epe_image_px", "slope_dx", "slope_dy"),
        test=test, data_s=data_s, train_s=train_s, total_s=clock.seconds, hparams=model.hparams,
        crop=crop)
    js = common.save_weights(model.cpu(), ROLE, record, args.out)
    print(f"flow: test EPE in the myocardium {test['epe_myocardium_px']:.4f} px (DIS medium "
          f"{test['epe_dis_medium_px']:.4f} px, zero flow {test['epe_zero_flow_myocardium_px']:.4f} px; "
          f"slopes dx {test['slope_dx']:.3f} dy {test['slope_dy']:.3f}; "
          f"{test['n_pairs']} pairs), best epoch {best.epoch}/{args.epochs}, train {train_s:.0f} s; "
          f"wrote {args.out} and {js}")
    return 0


def main(argv=None) -> int:
    return common.trainer_main(add_parser, ROLE, argv)


if __name__ == "__main__":
    raise SystemExit(main())
