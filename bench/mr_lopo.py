"""Leave-one-patient-out on the three Sunnybrook patients: the joint MR network, judged on real hearts.

For each fold one patient is held out of all training (its labels and its frames for the
motion loss), the network is trained by ``engines.train.mr`` on the other two plus MR
phantoms, and judged on the held-out patient (``engines.train.mr.evaluate_patient``):

* myocardium Dice at the contoured end-diastolic images (the only ones with an
  epicardial contour in these patients) and LV cavity Dice at the contoured ED and ES
  images (acceptance, issue 13: mean myocardium >= 0.80, cavity >= 0.90), of the labels the
  app publishes (the largest connected LV region kept, ``--mr-lv-component largest``) and,
  beside them, of the network's raw arg-max;
* motion as Qin et al. judge it: the ES endocardial contour brought to ED by the network's
  motion from ED to ES (every frame of the sequence against ED, as the app runs it), mean
  contour distance to the expert ED contour in mm (acceptance <= 1.5 mm), beside the
  distance without motion;
* Dice of cavity / myocardium / RV and the motion's end-point error on held-out phantoms
  (frame 0 -> every later frame, in frame 0's myocardium).

Prints a table and writes ``mr_lopo.json`` (the folds' records: command, data, metrics).
Each fold's weights and record go to ``OUT/fold-PATIENT/``; ``--reuse`` tabulates folds
whose record is already there instead of training them again (a fold trained on its own
with ``cardiostream engines train mr --holdout-patient P --out OUT/fold-P/mr.pt``).

    python bench/mr_lopo.py --out /tmp/mr_lopo --threads 2 [--folds SCD0000101,...] [--reuse]
        [--init-from EARLIER_OUT] [-- trainer options, e.g. --joint-steps 2000]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from engines.train import mr  # noqa: E402

#: issue 13's acceptance on the held-out patients
ACCEPT = {"myocardium_dice_mean": 0.80, "cavity_dice_mean": 0.90, "mcd_endo_mm_mean": 1.5}


def fold_weights(folds_dir: Path, patient: str) -> Path:
    """The weights of ``patient``'s fold in a folder of folds (``DIR/fold-P/mr.pt``)."""
    return folds_dir / f"fold-{patient}" / "mr.pt"


def train_fold(patient: str, out_dir: Path, threads: int, extra: list[str],
               init_from: Path | None = None) -> dict:
    """Train with ``patient`` held out (in this process); returns the fold's record.
    ``init_from``: a folder of earlier folds; this fold starts from the weights of the same
    held-out patient there (never from weights that saw it)."""
    from streamer.io.sunnybrook import read_patient

    parser = argparse.ArgumentParser(prog="cardiostream engines train")
    mr.add_parser(parser.add_subparsers(dest="role"))
    out = fold_weights(out_dir, patient)
    init = []
    if init_from is not None:
        start = fold_weights(init_from, patient)
        if not start.is_file():
            raise SystemExit(f"--init-from {init_from}: no fold weights {start} for {patient}")
        init = ["--init", str(start)]
    argv = ["mr", "--holdout-patient", patient, "--threads", str(threads), "--out", str(out), *init,
            *extra]
    args = parser.parse_args(argv)
    args.read_patient = read_patient
    args.command_line = "cardiostream engines train " + " ".join(argv)
    if args.func(args) != 0:
        raise SystemExit(f"fold {patient}: training failed")
    return json.loads((out.parent / "mr.json").read_text())


#: what the app publishes: the network's labels with only the largest connected LV region
#: kept (MrShortAxisConfig.lv_component, default "largest"); the raw arg-max is reported beside
APP = "largest_component"


def app_dice(holdout: dict) -> dict:
    """The held-out Dice of the labels the app publishes, with the motion's distance."""
    lc = holdout[APP]
    return {"myocardium_dice_mean": lc["myocardium_dice_mean"], "cavity_dice_mean": lc["cavity_dice_mean"],
            "mcd_endo_mm_mean": holdout["mcd_endo_mm_mean"]}


def table(records: dict[str, dict]) -> str:
    head = (f"{'held-out patient':17s} {'myo Dice ED':>11s} {'cav Dice ED+ES':>14s} {'(net raw)':>13s} "
            f"{'MCD endo mm':>11s} "
            f"{'(no motion)':>11s} {'phantom cav/myo/RV Dice':>23s} {'phantom EPE px':>14s}")
    lines = [head, "-" * len(head)]
    sums = {k: [] for k in ACCEPT}
    raw = {"myocardium_dice_mean": [], "cavity_dice_mean": []}
    for p, rec in records.items():
        h, ph = rec["test"]["holdout"], rec["test"]["phantoms"]
        a = app_dice(h)
        for k in ACCEPT:
            sums[k].append(a[k])
        for k in raw:
            raw[k].append(h[k])
        lines.append(f"{p:17s} {a['myocardium_dice_mean']:11.3f} {a['cavity_dice_mean']:14.3f} "
                     f"{h['myocardium_dice_mean']:7.3f}/{h['cavity_dice_mean']:.3f} "
                     f"{h['mcd_endo_mm_mean']:11.2f} {h['mcd_endo_identity_mm_mean']:11.2f} "
                     f"{ph['lv_cavity_dice_mean']:9.3f}/{ph['lv_myocardium_dice_mean']:.3f}/"
                     f"{ph['rv_cavity_dice_mean']:.3f} {ph['epe_myocardium_px']:14.3f}")
    if records:
        m = {k: sum(v) / len(v) for k, v in sums.items()}
        r = {k: sum(v) / len(v) for k, v in raw.items()}
        lines.append(f"{'mean':17s} {m['myocardium_dice_mean']:11.3f} {m['cavity_dice_mean']:14.3f} "
                     f"{r['myocardium_dice_mean']:7.3f}/{r['cavity_dice_mean']:.3f} "
                     f"{m['mcd_endo_mm_mean']:11.2f}")
        lines.append(f"acceptance: myocardium >= {ACCEPT['myocardium_dice_mean']}, cavity >= "
                     f"{ACCEPT['cavity_dice_mean']} (the labels the app publishes: largest connected "
                     f"LV region), MCD <= {ACCEPT['mcd_endo_mm_mean']} mm")
    return "\n".join(lines)


def summary(records: dict[str, dict]) -> dict:
    folds = {p: {"holdout": r["test"]["holdout"], "phantoms": r["test"]["phantoms"],
                 "command": r["command"], "weights_sha256": r["weights_sha256"], "wall_s": r["wall_s"]}
             for p, r in records.items()}
    out = {"folds": folds}
    if records:
        mean = {k: sum(app_dice(f["holdout"])[k] for f in folds.values()) / len(folds) for k in ACCEPT}
        out["mean"] = mean
        out["mean_network_raw"] = {k: sum(f["holdout"][k] for f in folds.values()) / len(folds)
                                   for k in ("myocardium_dice_mean", "cavity_dice_mean")}
        out["meets_acceptance"] = bool(
            len(folds) == len(mr.SUNNYBROOK_PATIENTS)
            and mean["myocardium_dice_mean"] >= ACCEPT["myocardium_dice_mean"]
            and mean["cavity_dice_mean"] >= ACCEPT["cavity_dice_mean"]
            and mean["mcd_endo_mm_mean"] <= ACCEPT["mcd_endo_mm_mean"])
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog="Options after -- go to the trainer (cardiostream engines train mr --help).")
    parser.add_argument("--out", type=Path, required=True, help="folder for the folds and mr_lopo.json")
    parser.add_argument("--folds", default=",".join(mr.SUNNYBROOK_PATIENTS), metavar="ID[,ID]",
                        help="patients to hold out, one fold each (default %(default)s)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default %(default)s)")
    parser.add_argument("--reuse", action="store_true",
                        help="tabulate a fold whose record OUT/fold-P/mr.json exists instead of training it")
    parser.add_argument("--init-from", type=Path, default=None, metavar="DIR",
                        help="each fold starts from DIR/fold-P/mr.pt, the weights of an earlier run's "
                             "same fold (e.g. step 4 alone: -- --motion-steps 0 --seg-steps 0 "
                             "--joint-steps 0 --refine-motion-steps 1500 ...)")
    argv = list(sys.argv[1:] if argv is None else argv)
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    args = parser.parse_args(argv[:argv.index("--")] if "--" in argv else argv)
    records = {}
    for p in [f.strip() for f in args.folds.split(",") if f.strip()]:
        js = args.out / f"fold-{p}" / "mr.json"
        if args.reuse and js.is_file():
            records[p] = json.loads(js.read_text())
        else:
            records[p] = train_fold(p, args.out, args.threads, extra, args.init_from)
    print(table(records))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "mr_lopo.json").write_text(json.dumps(summary(records), indent=1) + "\n")
    print(f"wrote {args.out / 'mr_lopo.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
