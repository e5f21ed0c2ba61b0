"""Accuracy of the shipped networks and of the whole echo pipeline on held-out phantoms.

Every figure is measured against the phantoms' exact truth on seeds of the held-out
``test`` split (``calib.datasets``), which training never sees, through an engine of
``--backend`` (the same engines the side-car runs):

* view: accuracy over the 8 classes (balanced), and the confusion matrix;
* segmentation: myocardium Dice at 256 x 256 (mean, min);
* flow: end-point error inside the myocardium, the network beside OpenCV DIS (preset
  medium) on the same frame pairs;
* end to end: held-out A4C clips through the echo app (view -> segmentation
  -> flow -> tracking -> strain); peak GLS and the six regional peak strains against the
  phantom's mid-wall truth;
* by knob: every held-out view frame, segmentation frame and end-to-end clip remade from
  its seed's config, split per knob of the appearance (``calib.appearance``), the scanner
  display (where the config has one) and the anatomy (``calib.datasets.random_anatomy``)
  into a low and a high half at the knob's median (per kind of sample; booleans and
  strings: by value): view accuracy, mean myocardium Dice and mean |peak GLS error| per bin;
* acceptance: view >= 98 %, myocardium Dice >= 0.90, mean |peak GLS error| <= 1.5 %-points.

``--appearance random`` draws the held-out phantoms with every appearance knob, the display
and the wider anatomy (``calib.datasets.random_echo_config``); ``--weights ROLE=PATH``
judges candidate weights (a state dict, TorchScript or ONNX file) instead of the shipped.

    python bench/accuracy.py                          # default backend, default sizes
    python bench/accuracy.py --backend torch --view-samples 400 --out bench/results/accuracy.json
    python bench/accuracy.py --appearance random --weights seg=engines/weights/seg_candidate.pt
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import json
import math
import platform
import sys
import time
from numbers import Real
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

sys.path.insert(0, str(ROOT / "bench"))

from echo_stream import stream_clip  # noqa: E402

from engines.spec import BACKENDS, PRECISION_CHOICES  # noqa: E402
from streamer.apps import add_weights_argument  # noqa: E402

#: the echo phantom appearances of the held-out sets (engines.train.common.APPEARANCES)
APPEARANCES = ("neutral", "random")
#: the issue's acceptance: view accuracy, mean myocardium Dice, mean |peak GLS error| (%-points)
ACCEPT_VIEW_ACCURACY = 0.98
ACCEPT_MYO_DICE = 0.90
ACCEPT_GLS_ABS_ERROR_PCT = 1.5


def batch_predict(engine):
    """Engines take batch 1; the evaluators pass batches."""
    def predict(x: np.ndarray) -> np.ndarray:
        return np.concatenate([engine(np.ascontiguousarray(x[i:i + 1], np.float32))
                               for i in range(len(x))])
    return predict


def recording(predict, per_batch):
    """``predict`` that also hands each batch's outputs, with the index of its first sample,
    to ``per_batch(start, outputs)`` (the evaluators walk their samples in order)."""
    done = [0]

    def wrapped(x: np.ndarray) -> np.ndarray:
        out = np.asarray(predict(x))
        per_batch(done[0], out)
        done[0] += len(out)
        return out
    return wrapped


# ------------------------------------------------------------------ knobs of a sample
def _flatten(prefix: str, value, out: dict) -> None:
    """Scalar knobs of a value: dataclasses by field, sequences of numbers by index, other
    sequences and mappings as one categorical string."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        for f in dataclasses.fields(value):
            _flatten(f"{prefix}.{f.name}", getattr(value, f.name), out)
    elif isinstance(value, (tuple, list)) and value and all(
            isinstance(v, Real) and not isinstance(v, bool) for v in value):
        for i, v in enumerate(value):
            out[f"{prefix}[{i}]"] = float(v)
    elif value is None or isinstance(value, (bool, str)):
        out[prefix] = value
    elif isinstance(value, Real):
        out[prefix] = float(value)
    else:
        out[prefix] = json.dumps(value, default=str, sort_keys=True)


def anatomy_knobs() -> tuple[str, ...]:
    """The config fields the "random" appearance's wider anatomy draws."""
    from calib.datasets import random_anatomy

    return tuple(random_anatomy(np.random.default_rng(0), "a4c"))


def config_knobs(cfg) -> dict:
    """``appearance.*``, ``display.*`` (when the config has a display) and ``anatomy.*``
    knobs of an echo phantom config."""
    out: dict = {}
    _flatten("appearance", cfg.appearance, out)
    if getattr(cfg, "display", None) is not None:
        _flatten("display", cfg.display, out)
    for name in anatomy_knobs():
        _flatten(f"anatomy.{name}", getattr(cfg, name), out)
    return out


def held_out_config(seed: int, appearance: str, **kw):
    """The config a data-set builder draws for ``seed`` (with its redraws from derived seeds
    when the config is invalid, as ``calib.datasets._echo_clip`` does; a config that only
    fails while the clip is made is not redrawn here)."""
    from calib.datasets import random_echo_config
    from calib.errors import PhantomParameterError

    for attempt in range(5):
        try:
            return random_echo_config(seed if attempt == 0 else seed * 7919 + attempt,
                                      appearance=appearance, **kw)
        except PhantomParameterError:
            continue
    return random_echo_config(seed, appearance=appearance, **kw)


def view_sample_config(seed: int, appearance: str, frames_per_clip: int):
    """The config of a ``calib.datasets.view_samples`` clip (view = seed % 8)."""
    from calib.datasets import random_echo_config

    if frames_per_clip == 1:
        return held_out_config(seed, appearance, frames=1)
    hr = random_echo_config(seed).heart_rate_bpm
    return held_out_config(seed, appearance, frames=frames_per_clip,
                           fps=frames_per_clip * hr / 60.0)


def seg_sample_config(seed: int, appearance: str, frames_per_clip: int):
    """The config of a ``calib.datasets.segmentation_samples`` clip (its default views)."""
    from calib import datasets

    views = inspect.signature(datasets.segmentation_samples).parameters["views"].default
    view = views[seed % len(views)]
    hr = datasets.random_echo_config(seed, view=view).heart_rate_bpm
    return held_out_config(seed, appearance, view=view, frames=frames_per_clip,
                           fps=frames_per_clip * hr / 60.0)


# ------------------------------------------------------------------ the table by knob
#: per-sample metric of each kind of sample: the record key and the table column
METRICS = (("view", "correct", "view_accuracy"), ("seg", "dice", "myocardium_dice"),
           ("gls", "gls_abs_error_pct", "peak_gls_abs_error_pct"))


def _is_number(v) -> bool:
    return isinstance(v, Real) and not isinstance(v, bool)


def _fmt(v) -> str:
    return f"{v:.4g}" if _is_number(v) else str(v)


def by_knob(records: list[dict]) -> dict:
    """Records -> per knob, its bins with the mean metric of each kind of sample in each.

    A record is ``{"kind": "view" | "seg" | "gls", "knobs": {name: value}, <metric>}`` with
    the metric ``correct`` (view), ``dice`` (seg) or ``gls_abs_error_pct`` (gls). A numeric
    knob splits each kind's samples at that kind's median of the knob into ``low`` (<=
    median) and ``high`` (> median), so every column compares two halves of its own samples
    (a ``None`` value has a bin of its own); booleans and strings bin by value. A knob with
    one value over all records has no rows (it is listed under ``constant``).

    Returns ``{"knobs": {knob: [rows]}, "constant": {knob: value}}``; a row holds ``bin``,
    ``median`` (per kind, numeric knobs), ``n`` (per kind) and the mean metrics
    (``view_accuracy``, ``myocardium_dice``, ``peak_gls_abs_error_pct``; None where the
    bin holds no sample of that kind).
    """
    names = sorted({k for r in records for k in r["knobs"]})
    table, constant = {}, {}
    for name in names:
        values = [r["knobs"].get(name) for r in records]
        distinct = {json.dumps(v, sort_keys=True) for v in values}
        if len(distinct) <= 1:
            constant[name] = values[0] if values else None
            continue
        numeric = all(v is None or _is_number(v) for v in values)
        if numeric:
            medians = {}
            for kind, _, _ in METRICS:
                numbers = [v for r, v in zip(records, values) if r["kind"] == kind and _is_number(v)]
                medians[kind] = float(np.median(numbers)) if numbers else None

            bins = [("low", lambda r, v, m=medians: _is_number(v) and v <= m[r["kind"]]),
                    ("high", lambda r, v, m=medians: _is_number(v) and v > m[r["kind"]])]
            if any(v is None for v in values):
                bins.append(("None", lambda r, v: v is None))
        else:
            medians = None
            bins = [(_fmt(json.loads(k)), lambda r, v, k=k: json.dumps(v, sort_keys=True) == k)
                    for k in sorted(distinct)]
        rows = []
        for label, member in bins:
            inside = [r for r, v in zip(records, values) if member(r, v)]
            row = {"bin": label, "n": {kind: sum(r["kind"] == kind for r in inside)
                                       for kind, _, _ in METRICS}}
            if medians is not None:
                row["median"] = medians
            for kind, key, column in METRICS:
                vals = [float(r[key]) for r in inside if r["kind"] == kind and r.get(key) is not None]
                row[column] = float(np.mean(vals)) if vals else None
            rows.append(row)
        table[name] = rows
    return {"knobs": table, "constant": constant}


def format_by_knob(result: dict) -> str:
    """The table: knob, bin, n (view/seg/gls), view acc, Dice, |GLS err|, and the medians
    (view/seg/gls) the numeric knobs split at."""
    head = (f"{'knob':<34} {'bin':<8} {'n view/seg/gls':>15} {'view acc':>9} {'Dice':>7} "
            f"{'|GLS err|':>10}  median view/seg/gls")
    lines = [head, "-" * len(head)]

    def cell(v, fmt, width):
        return f"{'-':>{width}}" if v is None else f"{v:{width}{fmt}}"

    for name, rows in result["knobs"].items():
        for i, row in enumerate(rows):
            n = "/".join(str(row["n"][kind]) for kind, _, _ in METRICS)
            median = ("/".join("-" if row["median"][kind] is None else _fmt(row["median"][kind])
                               for kind, _, _ in METRICS) if "median" in row and i == 0 else "")
            lines.append(f"{name if i == 0 else '':<34} {row['bin']:<8} {n:>15} "
                         f"{cell(row['view_accuracy'], '.3f', 9)} "
                         f"{cell(row['myocardium_dice'], '.3f', 7)} "
                         f"{cell(row['peak_gls_abs_error_pct'], '.2f', 10)}  {median}".rstrip())
    if result["constant"]:
        lines.append("constant (one value over all samples): " + ", ".join(
            f"{k}={_fmt(v)}" for k, v in result["constant"].items()))
    return "\n".join(lines)


# ------------------------------------------------------------------ measurements
def per_sample_metric(role: str, samples: dict):
    """``(results, keep)``: ``keep(start, outputs)`` (for :func:`recording`) appends each
    sample's view prediction (view) or myocardium Dice (seg) to ``results``; nothing for flow."""
    from engines.train import seg

    results: list = []

    def keep(start: int, outputs: np.ndarray) -> None:
        if role == "view":
            results.extend(outputs.argmax(1).tolist())
        elif role == "seg":
            images = samples["images"]
            labels = seg.logits_to_labels(outputs, images.shape[1:])
            truth = samples["myocardium"][start:start + len(labels)].astype(bool)
            results.extend(seg.dice(labels == 1, truth).tolist())
    return results, keep


def network_accuracy(args, records: list[dict] | None = None) -> dict:
    """Held-out sets through an engine per role; per-sample view correctness and myocardium
    Dice (with each sample's config knobs) are appended to ``records``."""
    from engines.backends import create_engine
    from engines.train import common, flow, seg, view

    weights = dict(args.weights)

    def held_out(module, n):
        """The trainer's own held-out set (test split, its frames per clip): cached."""
        if module is flow:
            return flow.load("test", n, args.appearance)[0]
        # appearance="neutral" is the builders' default: _non_default keeps the cache keys
        return common.load_split(module.BUILDER, "test", n, module.FRAMES_PER_CLIP["test"],
                                 module.CHUNK, appearance=args.appearance)[0]

    out = {}
    for role, module, n in (("view", view, args.view_samples), ("seg", seg, args.seg_samples),
                            ("flow", flow, args.flow_pairs)):
        if n <= 0:
            continue
        engine = create_engine(role, backend=args.backend, precision=args.precision,
                               threads=args.threads, weights=weights.get(role))
        samples = held_out(module, n)
        per_sample, keep = per_sample_metric(role, samples)
        t0 = time.perf_counter()
        metrics = module.evaluate(recording(batch_predict(engine), keep), samples)
        metrics["seconds"] = round(time.perf_counter() - t0, 2)
        metrics["engine"] = f"{engine.backend}/{engine.precision}"
        metrics["weights"] = weights.get(role, "shipped")
        out[role] = metrics
        print(f"{role}: {json.dumps({k: v for k, v in metrics.items() if not isinstance(v, list)})}")
        if records is not None and module is not flow:
            if len(per_sample) != len(samples["seeds"]):
                raise RuntimeError(f"{role}: {len(per_sample)} per-sample results for "
                                   f"{len(samples['seeds'])} samples")
            fpc = module.FRAMES_PER_CLIP["test"]
            knobs_of: dict[int, dict] = {}
            for i, s in enumerate(np.asarray(samples["seeds"]).tolist()):
                if s not in knobs_of:
                    cfg = (view_sample_config if module is view else seg_sample_config)(
                        int(s), args.appearance, fpc)
                    knobs_of[s] = config_knobs(cfg)
                if module is view:
                    records.append({"kind": "view", "seed": s, "knobs": knobs_of[s],
                                    "correct": bool(per_sample[i] == samples["labels"][i])})
                else:
                    records.append({"kind": "seg", "seed": s, "knobs": knobs_of[s],
                                    "dice": float(per_sample[i])})
    return out


def clip_peak_gls(gls_pct: np.ndarray, min_fraction: float) -> float | None:
    """A clip's peak GLS: its most negative published value (NaN: a frame without one),
    or None (not measured) when fewer than ``min_fraction`` of its frames published one."""
    gls_pct = np.asarray(gls_pct, dtype=np.float64)
    published = np.isfinite(gls_pct)
    if not published.any() or published.sum() < min_fraction * len(gls_pct):
        return None
    return float(gls_pct[published].min())


def gls_accuracy(args, records: list[dict] | None = None) -> dict:
    """Held-out A4C clips, one cardiac cycle from end-diastole, through the echo app; each
    clip's |peak GLS error| with its config knobs is appended to ``records``.

    A clip's peak is its most negative published GLS, counted only when the app published
    GLS on at least ``QualityConfig.fair_fraction`` of its frames - the share the app's
    own beat summary needs before it gives a beat a peak; a clip under it is reported as
    not measured (the app said it could not follow the wall) and counted apart."""
    from calib.datasets import random_echo_config, split_seeds
    from calib.echo import make_echo_clip
    from calib.errors import PhantomParameterError
    from streamer.apps import AnalysisConfig, EngineConfig, build_analysis
    from streamer.apps.echo import QualityConfig
    from streamer.processor import FrameProcessor
    from streamer.vocab import A4C_SEGMENTS

    fair = QualityConfig().fair_fraction

    analysis = build_analysis(AnalysisConfig(app="echo", engines=EngineConfig(
        backend=args.backend, precision=args.precision, threads=args.threads,
        weights=tuple(args.weights))))
    processor = FrameProcessor(analysis)
    rows = []
    for seed in split_seeds("test", args.gls_clips, offset=args.gls_offset):
        probe = random_echo_config(int(seed), view="a4c", appearance=args.appearance)
        # fps given explicitly (the random anatomy draws one too): one cycle from ED
        fps = 50.0
        frames = int(math.ceil(1.05 * 60.0 / probe.heart_rate_bpm * fps))
        try:
            clip = make_echo_clip(random_echo_config(int(seed), view="a4c", frames=frames, fps=fps,
                                                     start_phase=0.0, appearance=args.appearance))
        except PhantomParameterError as e:
            print(f"seed {seed}: not realisable, skipped ({e})")
            rows.append({"seed": int(seed), "skipped": str(e)})
            continue
        knobs = config_knobs(clip.config)
        gls, regional, analysed = [], [], 0
        for result, _ in stream_clip(processor, f"phantom-{seed}", clip.frames, fps,
                                     clip.spacing_mm):
            ok = result.kind == "result" and result.fields["gls_pct"] is not None
            analysed += ok
            gls.append(result.fields["gls_pct"] if ok else np.nan)
            regional.append([result.fields["regional_pct"][k] for k in A4C_SEGMENTS] if ok
                            else [np.nan] * 6)
        gls, regional = np.asarray(gls, float), np.asarray(regional, float)
        truth_gls = clip.truth.midwall_gls_pct[:frames]
        truth_reg = clip.truth.midwall_regional_pct[:frames]
        peak = clip_peak_gls(gls, fair)
        measured = peak is not None
        row = {"seed": int(seed), "frames": frames, "analysed": analysed, "measured": measured,
               "dysfunction": dict(clip.config.dysfunction),
               "peak_gls_truth_pct": float(truth_gls.min()), "peak_gls_pct": peak,
               "knobs": knobs}
        if measured:
            row["peak_gls_error_pct"] = row["peak_gls_pct"] - row["peak_gls_truth_pct"]
            row["regional_peak_error_pct"] = dict(zip(
                A4C_SEGMENTS, map(float, np.nanmin(regional, 0) - truth_reg.min(0))))
            if records is not None:
                records.append({"kind": "gls", "seed": int(seed), "knobs": knobs,
                                "gls_abs_error_pct": abs(row["peak_gls_error_pct"])})
        rows.append(row)
        print(f"seed {seed}: GLS published on {analysed}/{frames} frames, peak GLS "
              f"{row['peak_gls_pct'] if measured else 'not measured'} vs truth "
              f"{row['peak_gls_truth_pct']:.2f} %")
    errors = [abs(r["peak_gls_error_pct"]) for r in rows if "peak_gls_error_pct" in r]
    regional_errors = [abs(v) for r in rows for v in r.get("regional_peak_error_pct", {}).values()]
    return {"clips": rows,
            "clips_measured": sum(bool(r.get("measured")) for r in rows),
            "clips_total": len(rows), "min_published_fraction": fair,
            "peak_gls_abs_error_pct": {"mean": float(np.mean(errors)), "max": float(np.max(errors))}
            if errors else None,
            "regional_peak_abs_error_pct": {"mean": float(np.mean(regional_errors)),
                                            "max": float(np.max(regional_errors))}
            if regional_errors else None}


def acceptance(report: dict) -> dict:
    """The issue's thresholds against the measured figures (None: not measured)."""
    nets, e2e = report.get("networks", {}), report.get("end_to_end") or {}
    gls = e2e.get("peak_gls_abs_error_pct")
    checks = {
        "view_accuracy": (nets.get("view", {}).get("accuracy"), ">=", ACCEPT_VIEW_ACCURACY),
        "myocardium_dice_mean": (nets.get("seg", {}).get("myocardium_dice_mean"), ">=",
                                 ACCEPT_MYO_DICE),
        "peak_gls_abs_error_mean_pct": (gls["mean"] if gls else None, "<=",
                                        ACCEPT_GLS_ABS_ERROR_PCT)}
    out = {}
    for name, (value, op, limit) in checks.items():
        ok = None if value is None else (value >= limit if op == ">=" else value <= limit)
        out[name] = {"value": value, "limit": f"{op} {limit}", "pass": ok}
    verdicts = [c["pass"] for c in out.values()]
    # False when one fails, None (incomplete) when one was not measured, else True
    out["pass"] = (False if False in verdicts else None if None in verdicts else True)
    return out


def format_acceptance(acc: dict) -> str:
    parts = []
    for name, c in acc.items():
        if name == "pass":
            continue
        verdict = "n/a" if c["pass"] is None else ("PASS" if c["pass"] else "FAIL")
        value = "-" if c["value"] is None else f"{c['value']:.4g}"
        parts.append(f"{name} {value} ({c['limit']}) {verdict}")
    overall = {True: "PASS", False: "FAIL", None: "INCOMPLETE"}[acc["pass"]]
    return "acceptance: " + "; ".join(parts) + f" => {overall}"


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", default="auto", choices=BACKENDS)
    parser.add_argument("--precision", default="fp32", choices=PRECISION_CHOICES)
    parser.add_argument("--threads", type=int)
    parser.add_argument("--appearance", default="neutral", choices=APPEARANCES,
                        help="phantom appearance of the held-out sets and clips: 'random' draws "
                             "every appearance knob, the display and the wider anatomy per clip; "
                             "'neutral' is the plain phantom (default %(default)s)")
    add_weights_argument(parser)
    parser.add_argument("--view-samples", type=int, default=512,
                        help="held-out view frames (a multiple of 32 stays balanced)")
    parser.add_argument("--seg-samples", type=int, default=400, help="held-out seg frames")
    parser.add_argument("--flow-pairs", type=int, default=128, help="held-out frame pairs")
    parser.add_argument("--gls-clips", type=int, default=8, help="held-out A4C clips, end to end")
    parser.add_argument("--gls-offset", type=int, default=50_000,
                        help="first test-split seed offset for the end-to-end clips")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "accuracy.json")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    report = {"benchmark": "accuracy on held-out phantoms",
              "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
              "machine": platform.platform(), "backend": args.backend,
              "precision": args.precision, "appearance": args.appearance,
              "weights": {role: path for role, path in args.weights}}
    records: list[dict] = []
    report["networks"] = network_accuracy(args, records)
    if args.gls_clips > 0:
        report["end_to_end"] = gls_accuracy(args, records)
        e2e = report["end_to_end"]
        print(f"end to end: {e2e['clips_measured']} of {e2e['clips_total']} clips measured; "
              f"peak GLS abs error {e2e['peak_gls_abs_error_pct']}, regional "
              f"{e2e['regional_peak_abs_error_pct']} (strain-%)")
    if records:
        report["by_knob"] = by_knob(records)
        print(format_by_knob(report["by_knob"]))
    report["acceptance"] = acceptance(report)
    print(format_acceptance(report["acceptance"]))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2, default=float))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
