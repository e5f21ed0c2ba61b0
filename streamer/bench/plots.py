"""One PNG of a latency report: latency over time per transport mode, histograms per key.

Top: one panel per transport mode, latency of each timed frame against its send time:
the end-to-end figure (the bench's own send -> result received over sockets, else the
results' ``end_to_end``, else ``total``) and the three largest stages by mean; a dashed
line at the frame budget when one was set. Below: one histogram per latency key (small
multiples), the transport modes overlaid, log counts where the tail would vanish on a
linear scale. Drawn with matplotlib's Agg canvas (no display, no global pyplot state).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

#: latency keys that sum others (not "stages" in the plot)
AGGREGATES = ("total", "end_to_end")

MODE_COLOURS = {"sockets": "tab:blue", "in-process": "tab:orange"}
STAGE_COLOURS = ("tab:green", "tab:red", "tab:purple")


def _values(series: list) -> np.ndarray:
    return np.array([np.nan if v is None else v for v in series], dtype=np.float64)


def headline(run: dict) -> tuple[str, list]:
    """The end-to-end series of a run and its label."""
    series = run["series"]
    if "send_to_receive" in series.get("measured_ms", {}):
        return "send -> received (bench)", series["measured_ms"]["send_to_receive"]
    for key in ("end_to_end", "total"):
        if key in series["latency_ms"]:
            return key, series["latency_ms"][key]
    return "", []


def largest_stages(run: dict, n: int = 3) -> list[str]:
    stats = run["latency_ms"]
    stages = [k for k in stats if k not in AGGREGATES and stats[k].get("n")]
    return sorted(stages, key=lambda k: stats[k]["mean"], reverse=True)[:n]


def _title(report: dict) -> str:
    backends = {}
    for run in report["runs"].values():
        backends.update(run.get("backends") or {})
    settings = report["settings"]
    engines = (", ".join(f"{k} {v}" for k, v in backends.items()) if backends
               else f"analysis {settings['analysis']}")
    m = report["machine"]
    clip = report["clip"]
    source = (f"phantom {clip.get('phantom_seed')}" if clip["source"] == "phantom"
              else Path(clip["source"]).name)
    return (f"cardiostream bench latency: {engines}\n{m['cpu']} ({m['cpus_usable']} CPUs), "
            f"{source} {'x'.join(map(str, clip['shape']))}, {report['created_utc']}")


def plot_report(report: dict, path: Path) -> Path:
    """Draw ``report`` (a ``cardiostream-bench-latency/1`` dict) to ``path`` (PNG)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    runs = report["runs"]
    keys: list[tuple[str, str]] = []  # (section, key): the results' keys, then the bench's
    for section in ("latency_ms", "measured_ms"):
        for run in runs.values():
            keys += [(section, k) for k, s in run.get(section, {}).items()
                     if s.get("n") and (section, k) not in keys]
    ncols = min(5, max(1, len(keys)))
    nrows_hist = math.ceil(len(keys) / ncols) if keys else 0
    fig = Figure(figsize=(3.0 * ncols + 1.5, 3.2 * len(runs) + 2.4 * nrows_hist + 0.8),
                 layout="constrained")
    FigureCanvasAgg(fig)
    grid = fig.add_gridspec(len(runs) + nrows_hist, ncols,
                            height_ratios=[1.4] * len(runs) + [1.0] * nrows_hist)
    budget_ms = report["settings"].get("budget_ms")
    for row, (mode, run) in enumerate(runs.items()):
        ax = fig.add_subplot(grid[row, :])
        t = np.asarray(run["series"]["t_s"], dtype=np.float64)
        label, series = headline(run)
        if label:
            ax.plot(t, _values(series), color="black", lw=1.4, label=label)
        for colour, stage in zip(STAGE_COLOURS, largest_stages(run)):
            ax.plot(t, _values(run["series"]["latency_ms"][stage]), color=colour, lw=0.9,
                    alpha=0.85, label=stage)
        if budget_ms:
            ax.axhline(budget_ms, color="crimson", ls="--", lw=1.2,
                       label=f"budget {budget_ms:g} ms")
        f = run["frames"]
        kind = f" ({run['mode']})" if run["mode"] != mode else ""
        ax.set_title(f"{mode}{kind}: {f['results_timed']} timed results, "
                     f"{run['throughput_fps']:.1f} results/s, dropped {f['dropped']}",
                     fontsize=10, loc="left")
        ax.set_xlabel("time since the first timed frame was "
                      + ("sent, s" if mode == "sockets" else "started, s"))
        ax.set_ylabel("latency, ms")
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="upper right", ncols=min(5, 2 + len(largest_stages(run))))
    legend_done = len(runs) < 2
    for i, (section, key) in enumerate(keys):
        ax = fig.add_subplot(grid[len(runs) + i // ncols, i % ncols])
        data = {mode: _values(run["series"].get(section, {}).get(key, []))
                for mode, run in runs.items()}
        data = {mode: v[np.isfinite(v)] for mode, v in data.items()}
        data = {mode: v for mode, v in data.items() if v.size}
        everything = np.concatenate(list(data.values()))
        lo, hi = float(everything.min()), float(everything.max())
        bins = np.linspace(lo, hi if hi > lo else lo + 1e-3, 31)
        counts = []
        for mode, values in data.items():
            c, _, _ = ax.hist(values, bins=bins, histtype="stepfilled", alpha=0.45,
                              color=MODE_COLOURS.get(mode), label=mode)
            counts += [x for x in c if x > 0]
        if counts and max(counts) > 20 * min(counts):
            ax.set_yscale("log")
        ax.set_title(key if section == "latency_ms" else f"{key} (bench)", fontsize=9)
        ax.set_xlabel("ms", fontsize=8)
        ax.tick_params(labelsize=7)
        if not legend_done and len(data) == len(runs):  # the first one with every mode
            ax.legend(fontsize=7)
            legend_done = True
    fig.suptitle(_title(report), fontsize=10)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return path
