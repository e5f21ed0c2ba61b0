"""Pieces shared by the training commands: seeding, threads, data, progress, saving.

A training run is reproducible from its JSON record: the command, the torch version,
the seed, the data splits with their seed ranges and sample counts, the epochs and the
held-out metrics are written next to the weights, with the weights' sha256.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import random
import shlex
import sys
import time
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch

from engines.cache import file_digest
from engines.nets import WEIGHTS_DIR


# ------------------------------------------------------------------ run set-up
def seed_everything(seed: int) -> torch.Generator:
    """Seed python, numpy and torch; deterministic kernels; a torch generator for the run."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)
    if torch.backends.cudnn.is_available():
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True
    g = torch.Generator()
    g.manual_seed(seed)
    return g


def set_threads(threads: int) -> int:
    """Intra-op threads for torch (and the BLAS/OpenMP pools it spawns); returns the count."""
    threads = max(1, int(threads))
    torch.set_num_threads(threads)
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ.setdefault(var, str(threads))
    return threads


def pick_device(name: str = "cpu") -> torch.device:
    """``cpu``, ``cuda`` or ``auto`` (cuda when available)."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit(f"--device {name}: CUDA is not available on this machine")
    return torch.device(name)


def progress(iterable: Iterable | None = None, **kwargs):
    """A tqdm progress bar on stderr (off when ``CARDIOSTREAM_NO_PROGRESS`` is set)."""
    from tqdm.auto import tqdm

    kwargs.setdefault("dynamic_ncols", True)
    kwargs.setdefault("leave", False)
    kwargs.setdefault("disable", bool(os.environ.get("CARDIOSTREAM_NO_PROGRESS")))
    return tqdm(iterable, **kwargs)


def add_common_arguments(parser: argparse.ArgumentParser, role: str, default_weights: str,
                         epochs: int, samples: int, val_samples: int, test_samples: int,
                         batch_size: int, lr: float, unit: str = "frames") -> None:
    """``--epochs --samples --val-samples --test-samples --batch-size --lr --seed --threads
    --device --out``; ``unit`` names what a sample is in the help (frames, pairs)."""
    parser.add_argument("--epochs", type=int, default=epochs, help="passes over the training set (default %(default)s)")
    parser.add_argument("--samples", type=int, default=samples,
                        help="training samples drawn from the phantom 'train' split (default %(default)s)")
    parser.add_argument("--val-samples", type=int, default=val_samples,
                        help=f"{unit} from the 'val' split (default %(default)s)")
    parser.add_argument("--test-samples", type=int, default=test_samples,
                        help=f"{unit} from the held-out 'test' split (default %(default)s)")
    parser.add_argument("--batch-size", type=int, default=batch_size, help="(default %(default)s)")
    parser.add_argument("--lr", type=float, default=lr,
                        help="peak learning rate of the one-cycle schedule (default %(default)s)")
    parser.add_argument("--appearance", choices=APPEARANCES, default="random",
                        help="phantom appearance of the train, val and test sets: 'random' draws "
                             "every appearance knob, the scanner display and the wider anatomy per "
                             "clip (calib.datasets.random_echo_config); 'neutral' is the plain "
                             "phantom of the first weights (default %(default)s)")
    add_run_arguments(parser, role, default_weights)


def add_run_arguments(parser: argparse.ArgumentParser, role: str, default_weights: str) -> None:
    """``--seed --threads --device --out``: how any trainer runs and where it writes."""
    parser.add_argument("--seed", type=int, default=0, help="seed of weights init, shuffling, augmentation (default %(default)s)")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default %(default)s)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or auto (default %(default)s)")
    parser.add_argument("--out", type=Path, default=WEIGHTS_DIR / default_weights,
                        help=f"state dict to write; the JSON record goes beside it as {role}.json "
                             "(default: the shipped weights %(default)s)")


# ------------------------------------------------------------------ data
#: the echo phantom appearances a trainer can draw its sets with (calib.datasets)
APPEARANCES = ("random", "neutral")


def load_split(builder: str, split: str, n: int, frames_per_clip: int, chunk: int,
               first_clip: int = 0, per_clip: str = "frames_per_clip",
               **kwargs) -> tuple[dict[str, np.ndarray], dict]:
    """``n`` samples of a split, built (and cached) in chunks of ``chunk`` samples.

    ``chunk`` must be a multiple of ``frames_per_clip``; chunk ``k`` holds the clips
    ``k * chunk / frames_per_clip ..`` of the split, so the samples are those of one
    builder call with the same ``frames_per_clip`` (and a partly built set is reused).
    ``per_clip`` is the builder's name for the samples per clip (``pairs_per_clip`` for
    frame pairs). ``first_clip`` starts at that clip of the split (a second set beside the
    first one's clips). Returns the concatenated arrays and a record of the split (seed
    range, counts).
    """
    from engines.train.data import dataset

    if chunk % frames_per_clip:
        raise ValueError(f"chunk={chunk} is not a multiple of {per_clip}={frames_per_clip}")
    parts = []
    done = 0
    while done < n:
        m = min(chunk, n - done)
        kw = _non_default(builder, {per_clip: frames_per_clip,
                                    "offset": first_clip + done // frames_per_clip, **kwargs})
        parts.append(dataset(builder, split, m, **kw))
        done += m
    out = {k: np.concatenate([p[k] for p in parts]) for k in parts[0] if parts[0][k].ndim > 0}
    return out, split_record(builder, split, out, **{per_clip: frames_per_clip}, chunk=chunk,
                             **({"first_clip": first_clip} if first_clip else {}), **kwargs)


def _non_default(builder: str, kwargs: dict) -> dict:
    """``kwargs`` less those equal to the builder's defaults (one cache key per data set)."""
    import inspect

    from calib import datasets

    params = inspect.signature(getattr(datasets, builder)).parameters
    return {k: v for k, v in kwargs.items()
            if not (k in params and params[k].default is not inspect.Parameter.empty and params[k].default == v)}


def split_record(builder: str, split: str, samples: dict, **kwargs) -> dict:
    seeds = np.asarray(samples["seeds"])
    return {"builder": f"calib.datasets.{builder}", "split": split, "samples": int(len(seeds)),
            "clips": int(len(np.unique(seeds))), "seed_min": int(seeds.min()), "seed_max": int(seeds.max()),
            **{k: v for k, v in kwargs.items()}}


def batch_indices(n: int, batch_size: int, generator: torch.Generator | None = None,
                  shuffle: bool = True, drop_last: bool = False) -> list[np.ndarray]:
    order = (torch.randperm(n, generator=generator).numpy() if shuffle else np.arange(n))
    stop = n - n % batch_size if drop_last and n >= batch_size else n
    return [order[i:i + batch_size] for i in range(0, stop, batch_size)]


def predict_in_batches(predict, x: np.ndarray, batch_size: int = 32) -> np.ndarray:
    return np.concatenate([np.asarray(predict(x[i:i + batch_size])) for i in range(0, len(x), batch_size)])


def torch_predict(model: torch.nn.Module, device: torch.device | str = "cpu"):
    """``predict(batch array) -> output array`` for an eager torch model (eval, no grad)."""
    def predict(x: np.ndarray) -> np.ndarray:
        model.eval()
        with torch.no_grad():
            return model(torch.from_numpy(np.ascontiguousarray(x, np.float32)).to(device)).float().cpu().numpy()
    return predict


# ------------------------------------------------------------------ augmentation
def augment_intensity(x: torch.Tensor, g: torch.Generator, gain=(0.7, 1.35), gamma=(0.7, 1.45),
                      noise=0.04) -> torch.Tensor:
    """Per-image gain, gamma and additive Gaussian noise on [0, 1] images (N, C, H, W)."""
    n = x.shape[0]
    shape = (n,) + (1,) * (x.dim() - 1)

    def u(lo, hi):
        return lo + (hi - lo) * torch.rand(shape, generator=g)

    x = x.clamp(0, 1) ** u(*gamma) * u(*gain)
    x = x + torch.randn(x.shape, generator=g) * (noise * torch.rand(shape, generator=g))
    return x.clamp(0, 1)


def augment_scanner_fields(x: torch.Tensor, g: torch.Generator, gain_log_sd=(0.0, 0.5),
                           haze=(0.0, 0.4), haze_p=0.7, haze_depth=(0.08, 0.4)) -> torch.Tensor:
    """Two scanner effects drawn per image on [0, 1] echo frames (N, 1, H, W) that are black
    outside the sector, wider than the phantom's own knobs draw them:

    * a smooth gain field: a 4x4 grid of log-gains with a standard deviation drawn from
      ``gain_log_sd``, upsampled bicubically (uneven echogenicity, TGC, a dim wall or a bright
      septum of another scanner);
    * near-field haze (with probability ``haze_p``): speckle of amplitude drawn from ``haze``
      that fades with depth below the top of the sector's middle columns, where the apex sits,
      over a depth drawn from ``haze_depth`` (fraction of the image height): the
      reverberation that fills a real apex.

    Pixels outside the sector (and thin overlays: the sector is the part of the image where
    most of a 9x9 neighbourhood is not black) get no haze.
    """
    n, _, h, w = x.shape
    f = torch.nn.functional

    def u(lo, hi):
        return lo + (hi - lo) * torch.rand((n, 1, 1, 1), generator=g)

    sector = (f.avg_pool2d((x > 0.03).float(), 9, 1, 4) > 0.3).float()
    log_gain = torch.randn((n, 1, 4, 4), generator=g) * u(*gain_log_sd)
    x = x * f.interpolate(log_gain, size=(h, w), mode="bicubic", align_corners=False).exp()
    rows = torch.arange(h, dtype=torch.float32).view(1, 1, h, 1)
    middle = sector[..., w * 3 // 10: w * 7 // 10]
    top = torch.where(middle.sum(3, keepdim=True) > 0, rows, torch.full_like(rows, h)).amin(2, keepdim=True)
    fade = torch.exp(-(rows - top) / (h * u(*haze_depth))) * (rows >= top)
    speckle = f.avg_pool2d(-torch.log(torch.rand(x.shape, generator=g).clamp(min=1e-6)), 3, 1, 1)
    amplitude = u(*haze) * (torch.rand((n, 1, 1, 1), generator=g) < haze_p)
    return (x + amplitude * fade * speckle * sector).clamp(0, 1)


def inverse_sqrt_weights(share) -> torch.Tensor:
    """Cross-entropy class weights 1 / sqrt(each class's share of the training labels)
    (shares under 0.1 % count as 0.1 %), scaled to a mean of 1."""
    weight = torch.tensor(1.0 / np.sqrt(np.maximum(np.asarray(share, float), 1e-3)),
                          dtype=torch.float32)
    return weight / weight.mean()


def random_affine(n: int, g: torch.Generator, scale=(0.9, 1.1), shift=0.06, rotate_deg=6.0) -> torch.Tensor:
    """(N, 2, 3) ``affine_grid`` matrices: isotropic scale, rotation, shift (fraction of the size)."""
    s = scale[0] + (scale[1] - scale[0]) * torch.rand(n, generator=g)
    a = torch.deg2rad((2 * torch.rand(n, generator=g) - 1) * rotate_deg)
    t = (2 * torch.rand(n, 2, generator=g) - 1) * shift * 2
    c, si = torch.cos(a) / s, torch.sin(a) / s
    return torch.stack([torch.stack([c, -si, t[:, 0]], 1), torch.stack([si, c, t[:, 1]], 1)], 1)


def warp(x: torch.Tensor, theta: torch.Tensor, mode: str = "bilinear") -> torch.Tensor:
    grid = torch.nn.functional.affine_grid(theta, list(x.shape), align_corners=False)
    return torch.nn.functional.grid_sample(x, grid, mode=mode, padding_mode="zeros", align_corners=False)


# ------------------------------------------------------------------ saving
#: sha256 of a file's bytes (the engine cache's digest)
sha256_file = file_digest


def command_line(argv: list[str] | None = None) -> str:
    """The command as typed: ``cardiostream engines train ...`` when run through the CLI."""
    argv = sys.argv if argv is None else argv
    if not argv:
        return ""
    prog = [Path(argv[0]).name]
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    if argv[0].endswith(".py") and spec is not None and spec.name:
        prog = ["python", "-m", spec.name]           # python -m engines.train.seg ...
    return shlex.join([*prog, *argv[1:]])


def record_header(args: argparse.Namespace, role: str) -> dict:
    """The run's command and environment, for the JSON record (``args.command_line``, set
    by :func:`trainer_main` when called from Python, stands for the command line)."""
    from engines.train.data import generator_digest

    skip = {"func", "out", "command_line"}
    return {"role": role, "command": getattr(args, "command_line", None) or command_line(),
            "generator_digest": generator_digest(),  # the phantom source the sets came from
            "arguments": {k: (str(v) if isinstance(v, Path) else v) for k, v in sorted(vars(args).items())
                          if k not in skip and not callable(v)},
            "torch": torch.__version__, "numpy": np.__version__, "python": platform.python_version(),
            "machine": platform.machine(), "started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


def save_weights(model: torch.nn.Module, role: str, record: dict, out: str | Path) -> Path:
    """Write ``model``'s state dict (CPU tensors) to ``out`` and ``<role>.json`` beside it.

    The record gets ``weights_file``, ``weights_bytes``, ``weights_sha256`` and
    ``parameters`` added; returns the JSON path.
    """
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    tmp = out.with_suffix(out.suffix + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, out)
    rec = dict(record)
    rec.update(weights_file=out.name, weights_bytes=out.stat().st_size, weights_sha256=sha256_file(out),
               parameters=int(sum(p.numel() for p in model.parameters())))
    js = out.with_name(f"{role}.json")
    js.write_text(json.dumps(rec, indent=2, sort_keys=False, default=_json_default) + "\n")
    return js


def _json_default(o):
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"{type(o).__name__} is not JSON serialisable")


def load_state(model: torch.nn.Module, path: str | Path) -> torch.nn.Module:
    model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    return model.eval()


class Stopwatch:
    def __init__(self):
        self.t0 = time.perf_counter()

    @property
    def seconds(self) -> float:
        return time.perf_counter() - self.t0


def trainer_main(add_parser, role: str, argv: list[str] | None = None) -> int:
    """``python -m engines.train.<role> <role> ...``: one trainer's parser, then its run."""
    parser = argparse.ArgumentParser(prog="cardiostream engines train")
    add_parser(parser.add_subparsers(dest="role", required=True))
    args = parser.parse_args(argv)
    if argv is not None:  # called from Python: record the equivalent command
        args.command_line = shlex.join(["python", "-m", f"engines.train.{role}", *argv])
    return args.func(args)


class BestEpoch:
    """The model state of the best epoch so far by ``key`` (ties go to the later epoch)."""

    def __init__(self):
        self.key = self.state = self.val = None
        self.epoch = 0  # 1-based

    def offer(self, score, epoch: int, model: torch.nn.Module, val: dict) -> None:
        key = (score, epoch)
        if self.key is None or key >= self.key:
            self.key, self.state, self.val = key, copy.deepcopy(model.state_dict()), val
            self.epoch = epoch + 1


def training_record(header: dict, spec, *, threads: int, device, data: dict,
                    epochs: int, best: BestEpoch, history: list, val_keys: tuple[str, ...], test: dict,
                    data_s: float, train_s: float, total_s: float, **extra) -> dict:
    """The JSON record every trainer writes beside its weights; ``extra`` after the device."""
    return {**header, "arch": spec.arch, "input": list(spec.input.shape), "threads": threads,
            "device": str(device), **extra, "data": data, "epochs": epochs,
            "best_epoch": best.epoch, "history": history,
            "val": {k: best.val[k] for k in val_keys}, "test": test,
            "wall_s": {"data": round(data_s, 1), "train": round(train_s, 1), "total": round(total_s, 1)}}
