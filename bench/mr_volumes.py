"""LV volumes and EF of the MR app on the real Sunnybrook patients, against the experts'.

Each patient's series goes through the ``mr-sax`` app as ``cardiostream analyze
--masks-out`` sends it (slice after slice, the app's label maps of every slice and phase).
The experts contoured the LV cavity at end-diastole and end-systole on some slices; on
exactly those slices and phases the app's cavity areas and the experts' give two volumes
by disk summation (area x the distance between slice centres), and two EFs. Beside them,
the app's own stack summary over every slice (its ED and ES, the phases of the largest
and smallest total cavity; the ``stack`` field of the last slice's beat).

With ``--weights-dir DIR`` each patient is measured with ``DIR/fold-PATIENT/mr.pt``, the
weights of the leave-one-patient-out fold that never saw that patient
(``bench/mr_lopo.py``); without it, with the shipped weights, which were trained on all
three patients, so the figures are then not held out (said in the output).

    python bench/mr_volumes.py [--weights-dir /tmp/mr_lopo] [--out bench/results/mr_volumes.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from engines.train.mr import SUNNYBROOK_PATIENTS, default_sunnybrook  # noqa: E402
from streamer.analyze import analyze  # noqa: E402
from streamer.apps import AnalysisConfig, EngineConfig, build_analysis  # noqa: E402
from streamer.apps.mr_sax import MrShortAxisConfig  # noqa: E402
from streamer.io.clips import open_stack  # noqa: E402
from streamer.io.sunnybrook import read_patient  # noqa: E402
from streamer.measure.sax import ejection_fraction_pct, slice_spacing_mm  # noqa: E402
from streamer.replay import ReplayConfig  # noqa: E402
from streamer.vocab import MRLabel  # noqa: E402


def run_app(series: Path, weights: Path | None, threads: int, workdir: Path):
    """The app over the series: its label maps (slices, phases, rows, cols) and the stack
    summary of the last slice's beat."""
    engines = EngineConfig(threads=threads, weights=(("mr", str(weights)),) if weights else ())
    analysis = build_analysis(AnalysisConfig(app="mr-sax", engines=engines,
                                             apps={"mr-sax": MrShortAxisConfig(send_labels=True)}))
    out, masks = workdir / "results.jsonl", workdir / "masks.npz"
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Invalid value for VR UI")
        with open_stack(series) as stack:
            analyze(stack, out, analysis, ReplayConfig(), t0_ns=0, masks_out=masks)
    messages = [json.loads(line) for line in out.read_text().splitlines()]
    stacks = [m["stack"] for m in messages if m["kind"] == "beat" and m.get("stack")]
    return np.load(masks)["labels"], (stacks[-1] if stacks else None)


def measure(patient: dict, labels: np.ndarray) -> dict:
    """Expert and app volumes on the contoured slices at the contoured phases."""
    px_mm2 = float(np.prod(patient["spacing_mm"]))
    dz = slice_spacing_mm(patient["slice_position_mm"])
    ls, lp = patient["label_slice"], patient["label_phase"]
    volumes = {}
    for phase in sorted(set(lp.tolist())):
        k = np.flatnonzero(lp == phase)
        expert = float(patient["cavity"][k].sum()) * px_mm2 * dz / 1000.0
        app = sum(int((labels[s, phase] == MRLabel.LV_CAVITY).sum()) for s in ls[k]) \
            * px_mm2 * dz / 1000.0
        volumes[int(phase)] = {"slices": ls[k].tolist(), "expert_ml": round(expert, 2),
                               "app_ml": round(app, 2)}
    ed = max(volumes, key=lambda p: volumes[p]["expert_ml"])
    es = min(volumes, key=lambda p: volumes[p]["expert_ml"])
    ef_expert = ejection_fraction_pct(volumes[ed]["expert_ml"], volumes[es]["expert_ml"])
    ef_app = ejection_fraction_pct(volumes[ed]["app_ml"], volumes[es]["app_ml"])
    return {"ed_phase": ed, "es_phase": es, "volumes": volumes,
            "ef_expert_pct": round(ef_expert, 2), "ef_app_pct": round(ef_app, 2),
            "ef_error_pct": round(ef_app - ef_expert, 2)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--weights-dir", type=Path, help="fold weights DIR/fold-PATIENT/mr.pt "
                    "(held out); default the shipped weights (not held out)")
    ap.add_argument("--sunnybrook", type=Path, default=None)
    ap.add_argument("--patients", default=",".join(SUNNYBROOK_PATIENTS), metavar="ID[,ID]",
                    help="patients to measure (default: all three)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "mr_volumes.json")
    args = ap.parse_args(argv)
    root = args.sunnybrook or default_sunnybrook()
    rows = []
    print(f"{'patient':11s} {'weights':9s} {'ED/ES':>6s} {'expert EDV/ESV ml':>18s} "
          f"{'app EDV/ESV ml':>15s} {'EF expert':>9s} {'EF app':>7s} {'error':>6s} "
          f"{'app stack EDV/ESV/EF (all slices)':>34s}")
    for pid in args.patients.split(","):
        weights = args.weights_dir / f"fold-{pid}" / "mr.pt" if args.weights_dir else None
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Invalid value for VR UI")
            patient = read_patient(root, pid)
        with tempfile.TemporaryDirectory() as tmp:
            labels, stack = run_app(root / "dicoms" / pid, weights, args.threads, Path(tmp))
        row = {"patient": pid, "weights": str(weights) if weights else "shipped",
               "held_out": weights is not None, **measure(patient, labels), "app_stack": stack}
        rows.append(row)
        v, ed, es = row["volumes"], row["ed_phase"], row["es_phase"]
        whole = ("-" if not stack or stack.get("ef_pct") is None else
                 f"{stack['edv_ml']:.0f}/{stack['esv_ml']:.0f}/{stack['ef_pct']:.1f}")
        print(f"{pid:11s} {'fold' if weights else 'shipped':9s} {ed:>3d}/{es:<2d} "
              f"{v[ed]['expert_ml']:8.1f}/{v[es]['expert_ml']:<9.1f} "
              f"{v[ed]['app_ml']:7.1f}/{v[es]['app_ml']:<7.1f} {row['ef_expert_pct']:9.1f} "
              f"{row['ef_app_pct']:7.1f} {row['ef_error_pct']:+6.1f} {whole:>34s}", flush=True)
    if not args.weights_dir:
        print("shipped weights: trained on all three patients, so these are NOT held-out figures")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"command": " ".join(sys.argv), "patients": rows}, indent=1))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
