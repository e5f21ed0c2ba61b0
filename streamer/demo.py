"""``cardiostream demo``: a side-car process, a clip replayed into it, results printed live.

The demo is the whole product in miniature, over real sockets: it starts
``cardiostream serve`` as a child process on free loopback ports, subscribes to
its results, replays a clip into it at the clip's own frame rate, prints one
line per result (strain and latency), then stops the side-car with SIGINT and
prints its final counts.
"""

from __future__ import annotations

import statistics
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from streamer.io.clips import open_clip
from streamer.io.sockets import ResultSubscriber, SubscriberConfig
from streamer.replay import ReplayConfig, ReplayStats, replay_to
from streamer.serve_process import SideCarProcess

#: pydicom-data's real apical 4-chamber cine: 120 frames (about four beats), 480x640 JPEG
#: colour, 30 fps, with a valid ultrasound calibration (pydicom's own 30-frame
#: examples_ybr_color.dcm is its first second at half size, and states the full-size
#: frame's calibration region and spacing, so no centreline length on it is right)
DEFAULT_CLIP = "color3d_jpeg_baseline.dcm"


def default_clip() -> Path:
    """pydicom-data's real apical 4-chamber echo cine (:data:`DEFAULT_CLIP`)."""
    from pydicom.data import get_testdata_file

    path = get_testdata_file(DEFAULT_CLIP, download=False)
    if path is None:
        raise SystemExit(f"the demo's clip {DEFAULT_CLIP} comes with pydicom-data, which is not "
                         "installed: `make demo` installs it, or `pip install pydicom-data`; "
                         "or name a clip of your own (cardiostream demo --clip CLIP)")
    return Path(path)


@dataclass(frozen=True)
class DemoConfig:
    clip: Path | None = None
    lossless: bool = False
    loop: int = 1
    max_frames: int | None = None
    #: the clip's view, sent as each frame's hint (None: the classifier decides)
    view: str | None = None
    #: further `cardiostream serve` arguments (backend, weights, view gate ...)
    serve_args: tuple[str, ...] = ()
    #: the first start on a machine builds the engines and compiles numba (a minute or two)
    startup_timeout_s: float = 300.0


def _fmt(value, spec: str) -> str:
    """``value`` formatted, or "-" for a missing one, padded to the same width."""
    if value is not None:
        return format(value, spec)
    width = "".join(ch for ch in spec.split(".")[0] if ch.isdigit())
    return format("-", f">{width}" if width else "")


def run_demo(config: DemoConfig, out: TextIO = sys.stdout) -> int:
    clip = config.clip or default_clip()
    view = config.view
    if view is None and config.clip is None:
        # the clip is an apical 4-chamber view; the view classifier, trained on phantoms
        # only, passes few of its frames, so the demo sends the view it knows (the classifier's
        # answer is still printed, flagged view_hint_differs)
        view = "a4c"
    with open_clip(clip) as reader:
        info = reader.info
        print(f"clip: {clip.name}  {info.n_frames} frames  {'x'.join(map(str, info.shape))} "
              f"{info.dtype}  {_fmt(info.fps, '.1f')} fps  spacing_mm {info.spacing_mm}  "
              f"{info.modality}" + (f"  (sent with view hint {view})" if view else ""), file=out)
    args = [*config.serve_args, *(["--lossless"] if config.lossless else [])]
    print("starting the side-car (the first start on a machine builds the engines and "
          "compiles the tracking code: a minute or two; later starts take seconds)", file=out,
          flush=True)
    sidecar = SideCarProcess(args, config.startup_timeout_s)
    print(f"side-car ({sidecar.ready['mode']}, pid {sidecar.process.pid}): ingest "
          f"{sidecar.ready['ingest']}  publish {sidecar.ready['publish']}", file=out)
    try:
        subscriber = ResultSubscriber(SubscriberConfig(sidecar.ready["publish"]))
        replay_stats: dict[str, ReplayStats] = {}
        replay_error: list[BaseException] = []

        def send() -> None:
            try:
                with open_clip(clip) as reader:
                    replay_stats["stats"] = replay_to(
                        reader, sidecar.ready["ingest"],
                        ReplayConfig(loop=config.loop, max_frames=config.max_frames,
                                     view=view))
            except BaseException as exc:  # reported below, in the main thread
                replay_error.append(exc)

        sender = threading.Thread(target=send, name="replay", daemon=True)
        sender.start()
        beats, measurable, not_measurable = 0, 0, 0
        totals, e2e, dropped, errors, t_first = [], [], 0, 0, None
        for message in subscriber.iter_until_end(timeout_s=30.0):
            now_ns = time.time_ns()
            if message.kind == "start":
                app = message.meta.get("app") or {}
                print(f"app {app.get('name')}: networks "
                      + ", ".join(f"{role} {e.get('backend')}/{e.get('precision')}"
                                  for role, e in (app.get("engines") or {}).items()), file=out)
            elif message.kind == "result":
                if t_first is None:
                    print(f"{'seq':>5} {'t_s':>7} {'view':>6} {'gls_pct':>8} {'dropped':>7} "
                          f"{'pipeline_ms':>11} {'e2e_ms':>7}  flags", file=out)
                t_first = message.t_acq_ns if t_first is None else t_first
                # the stages' own time: receive -> result without the wait in the inbox
                total = message.latency_ms["total"] - message.latency_ms.get("queue", 0.0)
                totals.append(total)
                sent = message.latency_ms.get("transport")
                e2e_ms = (now_ns - message.t_recv_ns) / 1e6 + (sent or 0.0)
                e2e.append(e2e_ms)
                dropped += message.dropped
                fields = message.fields
                measurable += fields.get("measurable") is True
                not_measurable += fields.get("measurable") is False
                view = fields["view"]["label"] if fields.get("view") else None
                print(f"{message.seq:>5} {(message.t_acq_ns - t_first) / 1e9:>7.3f} "
                      f"{_fmt(view, '>6')} {_fmt(fields.get('gls_pct'), '>8.2f')} "
                      f"{message.dropped:>7} {total:>11.2f} {e2e_ms:>7.2f}  "
                      f"{','.join(message.flags)}", file=out)
            elif message.kind == "beat":
                beats += 1
                fields = message.fields
                print(f"beat {message.beat}: ED seq {fields.get('ed_seq')}, ES seq "
                      f"{fields.get('es_seq')}, peak GLS "
                      f"{_fmt(fields.get('peak_gls_pct'), '.1f')} %", file=out)
            elif message.kind == "error":
                errors += 1
                print(f"error {message.code}: {message.message}", file=out)
        sender.join(30.0)
        subscriber.close()
        if replay_error:
            raise replay_error[0]
    finally:
        stopped = sidecar.stop()
    n = len(totals)
    print(f"\n{replay_stats['stats'].frames} frames sent, {n} results, {dropped} dropped, "
          f"{errors} errors, {beats} completed beats", file=out)
    if measurable or not_measurable:
        print(f"strain measurable on {measurable} of {measurable + not_measurable} analysed "
              "frames (the others say why: not_measurable:REASON)", file=out)
    if n:
        q = statistics.quantiles(e2e, n=100) if n > 1 else e2e * 99
        print(f"pipeline latency (decode + stages) median {statistics.median(totals):.2f} ms; "
              f"end-to-end "
              f"(send -> result received) median {statistics.median(e2e):.2f} ms, "
              f"p95 {q[94]:.2f} ms", file=out)
    print(f"side-car stopped cleanly: {stopped['stats']}", file=out)
    return 0
