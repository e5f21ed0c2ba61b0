"""Latency of two checkouts side by side: is a change slower?

Runs ``cardiostream bench latency`` alternately from a base checkout (e.g. a ``git worktree``
of the commit before the change) and from this one, ``--rounds`` times each, in one process
tree on one machine, so the two are measured under the same load. Prints, per transport mode
and latency key, the median over rounds of each run's p50 and p99, and their ratio
(this / base); writes everything as JSON.

    git worktree add /tmp/base HEAD~3
    python bench/versions.py --base /tmp/base --rounds 3 --out bench/results/versions.json \\
        -- --frames 300

Both checkouts run with this interpreter (the same installed dependencies); each imports
its own package code (PYTHONPATH set to the checkout). Arguments after ``--`` go to
``bench latency`` unchanged.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
KEYS = ("total", "end_to_end", "view", "segment", "flow", "track", "strain")


def run_latency(checkout: Path, extra: list[str], out: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": str(checkout)}
    command = [sys.executable, "-m", "streamer", "--log-level", "WARNING", "bench", "latency",
               "--no-plot", "--quiet", "--out", str(out), *extra]
    done = subprocess.run(command, cwd=checkout, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{checkout}: bench latency exited {done.returncode}:\n"
                         f"{done.stderr[-3000:]}")
    return json.loads(out.read_text())


def summarise(reports: list[dict]) -> dict:
    """{mode: {key: {"p50": median of p50s, "p99": median of p99s, "p50_runs": [...]}}}."""
    out: dict = {}
    for mode in reports[0]["runs"]:
        for key in KEYS:
            stats = [r["runs"][mode]["latency_ms"].get(key) for r in reports]
            if any(s is None for s in stats):
                continue
            out.setdefault(mode, {})[key] = {
                "p50": statistics.median(s["p50"] for s in stats),
                "p99": statistics.median(s["p99"] for s in stats),
                "p50_runs": [s["p50"] for s in stats], "p99_runs": [s["p99"] for s in stats]}
    return out


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    extra: list[str] = []
    if "--" in argv:
        k = argv.index("--")
        argv, extra = argv[:k], argv[k + 1:]
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", type=Path, required=True, help="the base checkout (folder)")
    parser.add_argument("--rounds", type=int, default=3, help="runs of each (default 3)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench/results/versions.json")
    args = parser.parse_args(argv)
    checkouts = {"base": args.base.resolve(), "this": ROOT}
    reports: dict[str, list[dict]] = {name: [] for name in checkouts}
    with tempfile.TemporaryDirectory() as tmp:
        for k in range(args.rounds):
            for name, checkout in checkouts.items():  # alternate: base, this, base, this …
                t0 = time.perf_counter()
                reports[name].append(run_latency(checkout, extra, Path(tmp) / f"{name}{k}.json"))
                print(f"round {k + 1}/{args.rounds} {name}: {time.perf_counter() - t0:.0f} s",
                      file=sys.stderr, flush=True)
    summary = {name: summarise(runs) for name, runs in reports.items()}
    print(f"\nbench latency {' '.join(extra)}: median over {args.rounds} rounds, ms")
    print(f"{'mode':<11} {'key':<11} {'base p50':>9} {'this p50':>9} {'ratio':>6}   "
          f"{'base p99':>9} {'this p99':>9} {'ratio':>6}")
    ratios = {}
    for mode, keys in summary["base"].items():
        for key, base in keys.items():
            this = summary["this"].get(mode, {}).get(key)
            if this is None:
                continue
            r50, r99 = this["p50"] / base["p50"], this["p99"] / base["p99"]
            ratios[f"{mode}/{key}"] = {"p50": r50, "p99": r99}
            print(f"{mode:<11} {key:<11} {base['p50']:9.2f} {this['p50']:9.2f} {r50:6.3f}   "
                  f"{base['p99']:9.2f} {this['p99']:9.2f} {r99:6.3f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({
        "schema": "cardiostream-bench-versions/1", "command": " ".join(sys.argv),
        "base": str(checkouts["base"]), "rounds": args.rounds, "bench_args": extra,
        "machine": reports["this"][0].get("machine"), "summary": summary, "ratios": ratios,
        "git_commit": {name: runs[0].get("git_commit") for name, runs in reports.items()}},
        indent=1))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
