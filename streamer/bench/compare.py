"""``cardiostream bench compare A.json B.json``: two latency reports side by side.

For each transport mode present in both reports (``sockets``, ``in-process``) and each
latency key present in either (the results' ``latency_ms`` keys, then the bench's own
``measured_ms`` keys, shown as ``KEY (bench)``): p50 / p95 / p99 of A, of B, and the
ratio B/A (below 1: B is faster). Then throughput, drops and each report's machine and
backends. ``--json OUT`` writes the comparison::

    {"schema": "cardiostream-bench-compare/1",
     "a": {"path", "command", "created_utc", "machine", "git_commit"}, "b": {...},
     "only_a": [MODE, ...], "only_b": [...],      # modes in one report only (not compared)
     "modes": {MODE: {"latency_ms": {KEY: {"a": {"n", "p50", "p95", "p99"} | null,
                                           "b": {...} | null,
                                           "ratio": {"p50", "p95", "p99"} | null}},
                      "throughput_fps": {"a", "b", "ratio"},
                      "dropped": {"a", "b"}, "backends": {"a", "b"}}}}
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from streamer.bench.latency import SCHEMA, order_keys, write_json

COMPARE_SCHEMA = "cardiostream-bench-compare/1"
QUANTILES = ("p50", "p95", "p99")


class CompareError(Exception):
    """A report cannot be compared (missing, not JSON, not a latency report)."""


def load_report(path: Path) -> dict:
    """A ``cardiostream-bench-latency/1`` report, or CompareError naming the file."""
    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        raise CompareError(f"{path}: no such file") from None
    except UnicodeDecodeError:
        raise CompareError(f"{path}: not JSON (not UTF-8 text)") from None
    except OSError as exc:
        raise CompareError(f"{path}: cannot read it ({exc.strerror or exc})") from None
    try:
        report = json.loads(text)
    except json.JSONDecodeError as exc:
        raise CompareError(f"{path}: not JSON ({exc.msg} at line {exc.lineno})") from None
    schema = report.get("schema") if isinstance(report, dict) else None
    if schema != SCHEMA:
        found = f"schema {schema!r}" if schema else "no schema key"
        raise CompareError(f"{path}: not a {SCHEMA} report ({found}); make one with "
                           "`cardiostream bench latency`")
    if not isinstance(report.get("runs"), dict) or not all(
            isinstance(r, dict) and isinstance(r.get("latency_ms"), dict)
            for r in report["runs"].values()):
        raise CompareError(f"{path}: malformed {SCHEMA} report (runs without latency_ms)")
    return report


def _ratio(a, b):
    if a is None or b is None or not a:
        return None
    return round(b / a, 3)


def _quantiles(stats: dict | None) -> dict | None:
    if not stats or not stats.get("n"):
        return None
    return {"n": stats["n"], **{q: stats.get(q) for q in QUANTILES}}


def compare(a: dict, b: dict, a_path: str = "A", b_path: str = "B") -> dict:
    """The comparison of two loaded reports (schema in the module docstring)."""
    modes = [m for m in a["runs"] if m in b["runs"]]
    if not modes:
        raise CompareError(f"no transport mode in common: {a_path} has "
                           f"{', '.join(a['runs']) or 'none'}, {b_path} has "
                           f"{', '.join(b['runs']) or 'none'}")
    out = {"schema": COMPARE_SCHEMA,
           "a": _about(a, a_path), "b": _about(b, b_path), "modes": {},
           "only_a": [m for m in a["runs"] if m not in b["runs"]],
           "only_b": [m for m in b["runs"] if m not in a["runs"]]}
    for mode in modes:
        ra, rb = a["runs"][mode], b["runs"][mode]
        rows = {}
        for section, suffix in (("latency_ms", ""), ("measured_ms", " (bench)")):
            sa, sb = ra.get(section) or {}, rb.get(section) or {}
            for key in order_keys([*sa, *sb]):
                qa, qb = _quantiles(sa.get(key)), _quantiles(sb.get(key))
                ratio = ({q: _ratio(qa[q], qb[q]) for q in QUANTILES}
                         if qa is not None and qb is not None else None)
                rows[key + suffix] = {"a": qa, "b": qb, "ratio": ratio}
        ta, tb = ra.get("throughput_fps"), rb.get("throughput_fps")
        out["modes"][mode] = {
            "latency_ms": rows,
            "throughput_fps": {"a": ta, "b": tb, "ratio": _ratio(ta, tb)},
            "dropped": {"a": _drops(ra), "b": _drops(rb)},
            "backends": {"a": ra.get("backends"), "b": rb.get("backends")},
        }
    return out


def _about(report: dict, path: str) -> dict:
    return {"path": path, "command": report.get("command"),
            "created_utc": report.get("created_utc"), "machine": report.get("machine"),
            "git_commit": report.get("git_commit")}


def _drops(run: dict) -> dict:
    frames, end = run.get("frames") or {}, run.get("end_counts") or {}
    return {"sent": frames.get("sent"), "results": frames.get("results"),
            "dropped": end.get("dropped", frames.get("dropped")), "stale": end.get("stale"),
            "errors": end.get("errors", frames.get("errors"))}


def _num(value, spec: str = ".2f") -> str:
    return "-" if value is None else format(value, spec)


def format_table(comparison: dict) -> str:
    a, b = comparison["a"], comparison["b"]
    lines = [f"A: {a['path']}  ({a['created_utc']}; {a['command']})",
             f"B: {b['path']}  ({b['created_utc']}; {b['command']})",
             "ratio = B / A (below 1: B is faster)"]
    for mode, m in comparison["modes"].items():
        lines.append(f"\n== {mode} ==")
        lines.append(f"{'latency_ms':<24}" + "".join(f"{'A ' + q:>9}" for q in QUANTILES)
                     + "".join(f"{'B ' + q:>9}" for q in QUANTILES)
                     + "".join(f"{'B/A ' + q:>9}" for q in QUANTILES))
        for key, row in m["latency_ms"].items():
            qa, qb, r = row["a"] or {}, row["b"] or {}, row["ratio"] or {}
            lines.append(f"{key:<24}" + "".join(f"{_num(qa.get(q)):>9}" for q in QUANTILES)
                         + "".join(f"{_num(qb.get(q)):>9}" for q in QUANTILES)
                         + "".join(f"{_num(r.get(q), '.2f'):>9}" for q in QUANTILES))
        t = m["throughput_fps"]
        lines.append(f"throughput results/s: A {_num(t['a'], '.1f')}  B {_num(t['b'], '.1f')}"
                     f"  B/A {_num(t['ratio'])}")
        for side in ("a", "b"):
            d = m["dropped"][side]
            lines.append(f"frames {side.upper()}: sent {_num(d['sent'], 'd')}, results "
                         f"{_num(d['results'], 'd')}, dropped {_num(d['dropped'], 'd')}, "
                         f"stale {_num(d['stale'], 'd')}, errors {_num(d['errors'], 'd')}")
        for side in ("a", "b"):
            backends = m["backends"][side]
            lines.append(f"backends {side.upper()}: " + (", ".join(
                f"{k} {v}" for k, v in backends.items()) if backends else "none (no networks)"))
    for side in ("a", "b"):
        if comparison.get(f"only_{side}"):
            lines.append(f"\n(only in {side.upper()}, not compared: "
                         f"{', '.join(comparison[f'only_{side}'])})")
    lines.append("")
    for side, about in (("A", a), ("B", b)):
        machine = about.get("machine") or {}
        lines.append(f"machine {side}: {machine.get('cpu')}, {machine.get('cpus_usable')}/"
                     f"{machine.get('cpus')} CPUs, Python {machine.get('python')}, "
                     f"{machine.get('platform')}, host {machine.get('hostname')}, commit "
                     f"{about.get('git_commit')}")
    return "\n".join(lines)


def add_parser(commands) -> argparse.ArgumentParser:
    parser = commands.add_parser(
        "compare", help="compare two `bench latency` reports side by side",
        description="Side-by-side p50/p95/p99 of two `cardiostream bench latency` reports "
                    "(two backends, two machines, before/after), with the ratio B/A per "
                    "latency key and transport mode, then throughput, drops, machines and "
                    "backends.")
    parser.add_argument("a", type=Path, metavar="A.json", help="the reference report")
    parser.add_argument("b", type=Path, metavar="B.json", help="the report compared with it")
    parser.add_argument("--json", type=Path, metavar="OUT",
                        help="also write the comparison as JSON here")
    parser.set_defaults(func=cmd_compare)
    return parser


def cmd_compare(args) -> int:
    try:
        comparison = compare(load_report(args.a), load_report(args.b), str(args.a),
                             str(args.b))
    except CompareError as exc:
        print(f"cardiostream bench compare: error: {exc}", file=sys.stderr)
        return 2
    print(format_table(comparison))
    if args.json:
        write_json(comparison, args.json)
        print(f"\nwrote {args.json}")
    return 0
