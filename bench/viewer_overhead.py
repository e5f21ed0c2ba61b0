"""What the live viewer costs the side-car (issue 18): its p50 latency with and without
``cardiostream view`` and a browser page on it, measured side by side in one run.

Each run is ``cardiostream bench latency --transport sockets`` (a fresh ``cardiostream serve``
child in live mode on loopback, the held-out A4C phantom replayed at its frame rate with the
view hint a4c, ``--warmup`` untimed then ``--frames`` timed frames) under one condition:

* ``plain``: the side-car as it runs without a viewer;
* ``republish``: ``serve --republish-frames`` (what a viewer needs to show frames), nobody
  watching;
* ``viewer_no_page``: ``--republish-frames`` and ``cardiostream view --from`` the side-car's
  publish endpoint as a child process, no page open (the viewer's own cost: reading every
  message; a browser on another machine adds only the WebSocket pushes);
* ``viewer_remote_page``: the same with a page open that draws nothing: a WebSocket client
  in a process of its own that takes the viewer's pushes (state and JPEG) and drops them,
  which is what a browser on another machine costs this one;
* ``viewer``: the same with a headless Chromium tab open on its page for the whole run (all
  on this machine: the browser's and the viewer's CPU compete with the side-car's);
* ``viewer_5fps``: the same with ``view --max-fps 5`` (the page updated 5 times a second,
  not 15);
* ``viewer_niced``: the same as ``viewer`` with the viewer and the browser at ``nice 19``, so
  that the side-car's threads go first when the cores are short.

The conditions run in rounds (plain, republish, viewer_no_page, ..., plain, ...) so that a drift in the
machine's load falls on each alike. Reported per condition: the median over its rounds of
each run's p50 of the side-car's ``total`` (frame received -> result) and ``end_to_end``
(frame sent -> result sent), and the ratio to ``plain``. After each viewer run the tab is
closed and the viewer's ``/stats`` must show its WebSocket clients back at 0.

    python bench/viewer_overhead.py --rounds 3 --frames 300 --out bench/results/viewer_overhead.json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from streamer.bench.latency import clip_source, machine_info, run_sockets  # noqa: E402
from streamer.cli import build_parser  # noqa: E402

#: condition -> (serve --republish-frames, a viewer, its page: None, "browser" (a Chromium
#: tab here) or "remote" (a WebSocket client that takes the page's pushes without drawing
#: them, as a browser on another machine costs this one), their nice value, view --max-fps)
CONDITIONS = {"plain": (False, False, None, 0, 15), "republish": (True, False, None, 0, 15),
              "viewer_no_page": (True, True, None, 0, 15),
              "viewer_remote_page": (True, True, "remote", 0, 15),
              "viewer": (True, True, "browser", 0, 15),
              "viewer_5fps": (True, True, "browser", 0, 5),
              "viewer_niced": (True, True, "browser", 19, 15)}
#: the page's WebSocket, read and dropped (the "remote" page): a child process of its own
REMOTE_PAGE = """
import asyncio, sys
import aiohttp
async def main(url):
    async with aiohttp.ClientSession() as session:
        async with session.ws_connect(url + "ws", origin=url.rstrip("/")) as ws:
            async for _ in ws:
                pass
asyncio.run(main(sys.argv[1]))
"""
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic",
                  "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage")


def stats(url: str) -> dict:
    with urllib.request.urlopen(url.rstrip("/") + "/stats", timeout=5) as response:
        return json.loads(response.read())


def wait_for(predicate, timeout_s: float, what: str) -> float:
    """Seconds until ``predicate()`` held; RuntimeError naming ``what`` after ``timeout_s``."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout_s:
        if predicate():
            return time.monotonic() - t0
        time.sleep(0.1)
    raise RuntimeError(f"{what} within {timeout_s:g} s")


class ViewerWithPage:
    """``cardiostream view`` on the side-car's publish endpoint and a Chromium tab on it;
    ``record`` gets the page's connection, the viewer's CPU seconds and how long the viewer
    took to drop the page's WebSocket once the browser had closed."""

    def __init__(self, record: dict, page: str | None, nice: int, max_fps: float):
        self.record, self.page, self.nice, self.max_fps = record, page, nice, max_fps

    @contextlib.contextmanager
    def __call__(self, sidecar):
        niced = ["nice", "-n", str(self.nice)] if self.nice else []
        viewer = subprocess.Popen(
            [*niced, sys.executable, "-m", "streamer", "view", "--from",
             sidecar.ready["publish"], "--port", "0", "--max-fps", str(self.max_fps)],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        browser = None
        profile = tempfile.TemporaryDirectory()
        try:
            url = json.loads(viewer.stdout.readline())["url"]
            if self.page is not None:
                page = ([sys.executable, "-c", REMOTE_PAGE, url] if self.page == "remote" else
                        [CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={profile.name}", url])
                browser = subprocess.Popen([*niced, *page], stdout=subprocess.DEVNULL,
                                           stderr=subprocess.DEVNULL)
                self.record["page_connected_s"] = round(wait_for(
                    lambda: stats(url)["clients"] == 1, 60, "the page did not connect"), 2)
            cpu0 = cpu_seconds(viewer.pid), cpu_seconds(browser.pid, tree=True) if browser else 0
            yield
            self.record["messages_seen"] = stats(url)["messages"]
            self.record["viewer_cpu_s"] = round(cpu_seconds(viewer.pid) - cpu0[0], 2)
            if browser is not None:
                self.record["browser_cpu_s"] = round(
                    cpu_seconds(browser.pid, tree=True) - cpu0[1], 2)
                browser.send_signal(signal.SIGTERM)
                browser.wait(30)
                self.record["clients_zero_after_close_s"] = round(wait_for(
                    lambda: stats(url)["clients"] == 0, 30,
                    "the viewer still holds the closed page's WebSocket"), 2)
        finally:
            if browser is not None and browser.poll() is None:
                browser.kill()
                browser.wait()
            viewer.send_signal(signal.SIGINT)
            try:
                viewer.wait(30)
            except subprocess.TimeoutExpired:
                viewer.kill()
            profile.cleanup()


def cpu_seconds(pid: int, tree: bool = False) -> float:
    """User + system CPU seconds of a process (Linux /proc/PID/stat); ``tree``: with its
    living descendants (Chromium's renderer and GPU processes)."""
    pids, k = [pid], 0
    while tree and k < len(pids):
        children = Path(f"/proc/{pids[k]}/task/{pids[k]}/children")
        with contextlib.suppress(OSError):
            pids += [int(c) for c in children.read_text().split()]
        k += 1
    ticks = 0
    for p in pids:
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:      # ended meanwhile
            continue
        ticks += int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


def one_run(condition: str, args) -> dict:
    bench_args = build_parser().parse_args(
        ["bench", "latency", "--transport", "sockets", "--frames", str(args.frames),
         "--warmup", str(args.warmup), "--quiet", "--no-plot",
         *(["--rate-fps", str(args.rate_fps)] if args.rate_fps else [])])
    record: dict = {"condition": condition, "load_avg_1m": machine_info()["load_avg_1m"]}
    republish, viewer, page, nice, max_fps = CONDITIONS[condition]
    extra = ("--republish-frames",) if republish else ()
    attach = ViewerWithPage(record, page, nice, max_fps) if viewer else None
    run = run_sockets(bench_args, clip_source(bench_args), serve_extra=extra, attach=attach)
    latency = run["latency_ms"]
    record.update(p50_total_ms=latency["total"]["p50"],
                  p50_end_to_end_ms=latency["end_to_end"]["p50"],
                  p95_end_to_end_ms=latency["end_to_end"]["p95"],
                  dropped=run["frames"]["dropped"], results_timed=run["frames"]["results_timed"])
    return record


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3, help="rounds of the three conditions")
    parser.add_argument("--frames", type=int, default=300, help="timed frames per run")
    parser.add_argument("--warmup", type=int, default=30, help="untimed frames per run")
    parser.add_argument("--conditions", nargs="+", choices=CONDITIONS, default=list(CONDITIONS),
                        help="which conditions to run (default all; plain is always run)")
    parser.add_argument("--rate-fps", type=float,
                        help="send at this rate (default: the phantom's 50 fps)")
    parser.add_argument("--out", type=Path, default=Path("bench/results/viewer_overhead.json"))
    args = parser.parse_args(argv)
    if not Path(CHROMIUM).is_file() or shutil.which("chromium") is None:
        print(f"needs Debian's chromium at {CHROMIUM} (apt-get install chromium)",
              file=sys.stderr)
        return 2
    conditions = ["plain", *(c for c in args.conditions if c != "plain")]
    runs = []
    for k in range(args.rounds):
        for condition in conditions:
            print(f"round {k + 1}/{args.rounds}: {condition}", file=sys.stderr, flush=True)
            runs.append(one_run(condition, args))
            print(json.dumps(runs[-1]), file=sys.stderr, flush=True)
    summary = {}
    for condition in conditions:
        mine = [r for r in runs if r["condition"] == condition]
        summary[condition] = {key: statistics.median(r[key] for r in mine)
                              for key in ("p50_total_ms", "p50_end_to_end_ms",
                                          "p95_end_to_end_ms", "dropped")}
    for condition in conditions:
        for key in ("p50_total_ms", "p50_end_to_end_ms"):
            summary[condition][key.replace("_ms", "_ratio")] = round(
                summary[condition][key] / summary["plain"][key], 4)
    print(f"{'condition':<15} {'p50 total ms':>13} {'ratio':>6} {'p50 e2e ms':>11} {'ratio':>6} "
          f"{'p95 e2e ms':>11} {'dropped':>8}")
    for condition, s in summary.items():
        print(f"{condition:<15} {s['p50_total_ms']:13.2f} {s['p50_total_ratio']:6.3f} "
              f"{s['p50_end_to_end_ms']:11.2f} {s['p50_end_to_end_ratio']:6.3f} "
              f"{s['p95_end_to_end_ms']:11.2f} {s['dropped']:8.0f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"command": "python bench/viewer_overhead.py "
                                    + " ".join(sys.argv[1:] if argv is None else argv),
                                    "machine": machine_info(), "summary": summary,
                                    "runs": runs}, indent=1))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
