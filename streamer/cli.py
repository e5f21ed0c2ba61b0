"""The ``cardiostream`` command line: every part of the product, wired in one place."""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
from dataclasses import asdict
from pathlib import Path

from engines.spec import BACKENDS, PRECISIONS, ROLES, VIEW_CLASSES
from streamer import __version__

log = logging.getLogger("cardiostream")

DEFAULT_INGEST = "tcp://127.0.0.1:5555"
DEFAULT_PUBLISH = "tcp://127.0.0.1:5556"


class CLIError(Exception):
    """A user error: printed as one line, exit code 2."""


def _clip_options() -> argparse.ArgumentParser:
    """Options shared by every command that reads a clip."""
    parent = argparse.ArgumentParser(add_help=False)
    group = parent.add_argument_group("clip")
    group.add_argument("clip", type=Path, help="DICOM file or folder of single-frame DICOM, "
                       ".nii/.nii.gz, .avi/.mp4, .npz, or a .csrec recording")
    group.add_argument("--spacing-mm", nargs=2, type=float, metavar=("ROW", "COL"),
                       help="pixel spacing in mm when the file does not carry it (video)")
    group.add_argument("--fps", type=float, help="frame rate to use instead of the file's")
    group.add_argument("--modality", choices=("US", "MR"),
                       help="modality when the file does not say (video)")
    group.add_argument("--slice", type=int, dest="slice_index", metavar="K",
                       help="slice of a 4-D NIfTI or DICOM series (default: the middle one)")
    group.add_argument("--stream", help="stream name in the messages (default: file name)")
    group.add_argument("--max-frames", type=int, metavar="N", help="stop after N frames")
    group.add_argument("--loop", type=int, default=1, metavar="N",
                       help="play the clip N times in one stream (default 1)")
    group.add_argument("--view", choices=VIEW_CLASSES, metavar="VIEW",
                       help="the clip's view when you know it (sent as each frame's view "
                            "hint; it overrides the view classifier's gate): "
                            + ", ".join(VIEW_CLASSES))
    return parent


def _analysis_options() -> argparse.ArgumentParser:
    """Options of every command that runs the pipeline (serve, analyze, demo)."""
    parent = argparse.ArgumentParser(add_help=False)
    group = parent.add_argument_group("analysis")
    group.add_argument("--analysis", choices=("echo", "none"), default="echo",
                       help="echo: view -> myocardium -> flow -> tracking -> strain (default); "
                            "none: preprocessing only, for transport and latency checks")
    group.add_argument("--backend", default="auto", choices=BACKENDS,
                       help="how the networks run (default auto: torch-tensorrt on a CUDA "
                            "machine where installed, else the fastest CPU backend); asking "
                            "for one that is not available is an error")
    group.add_argument("--precision", default="fp32", choices=PRECISIONS,
                       help="network precision (default fp32; fp16 on GPU, int8 on CPU "
                            "backends with a phantom calibration set)")
    group.add_argument("--threads", type=int, metavar="N",
                       help="CPU threads for the networks (default: all cores)")
    group.add_argument("--device", metavar="DEV",
                       help="cpu or cuda[:i] for --backend torch / tensorrt (default: the "
                            "backend's own: torch on the CPU, tensorrt on cuda)")
    group.add_argument("--weights", action="append", default=[], metavar="ROLE=PATH",
                       help="your own model for a role (view, seg or flow): a state dict, "
                            "TorchScript or ONNX file with the role's I/O contract "
                            "(engines/spec.py); repeat for several roles")
    group.add_argument("--view-gate", choices=("classifier", "off"), default="classifier",
                       help="classifier: only frames classified A4C go on (default); "
                            "off: analyse every frame as A4C")
    group.add_argument("--min-view-confidence", type=float, default=0.7, metavar="P",
                       help="classifier probability an A4C frame needs to go on (default 0.7)")
    return parent


def _budget_options() -> argparse.ArgumentParser:
    """Latency budget of a live side-car (serve, demo, bench latency): streamer/budget.py."""
    parent = argparse.ArgumentParser(add_help=False)
    group = parent.add_argument_group(
        "latency budget",
        "A frame's time runs from its send time (t_send_ns; else its receive time) to its "
        "result. Results over it are flagged over_budget. Live mode also skips frames that "
        "are already older than the budget when the worker takes them (counted as stale) "
        "and, when frames keep running over, sheds work in this order: view classifier on "
        "every 4th frame while the view is stable, then segmentation/flow/tracking/strain "
        "on every 2nd frame; it steps back when there is room (docs/architecture.md).")
    group.add_argument("--budget-ms", type=float, metavar="MS",
                       help="latency budget per frame in ms (default: none)")
    group.add_argument("--stage-budget", action="append", default=[], metavar="STAGE=MS",
                       help="flag results whose STAGE (e.g. flow) took longer than MS "
                            "(over_budget:STAGE); repeatable")
    group.add_argument("--no-degrade", action="store_true",
                       help="live mode: flag and skip stale frames, but never shed work")
    return parent


def _budget_config(args):
    from streamer.budget import BudgetConfig

    stages = []
    for item in args.stage_budget:
        stage, sep, ms = item.partition("=")
        try:
            stages.append((stage, float(ms)))
        except ValueError:
            sep = ""
        if not sep or not stage:
            raise CLIError(f"--stage-budget {item!r}: expected STAGE=MS, e.g. flow=10")
    return BudgetConfig(frame_ms=args.budget_ms, stage_ms=tuple(stages),
                        degrade=not args.no_degrade)


def _budget_argv(args) -> list[str]:
    """The budget options again, as arguments for a `serve` child process."""
    argv = [] if args.budget_ms is None else ["--budget-ms", str(args.budget_ms)]
    for item in args.stage_budget:
        argv += ["--stage-budget", item]
    return argv + (["--no-degrade"] if args.no_degrade else [])


def _debug_delay_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("test hooks")
    group.add_argument("--debug-delay-ms", type=float, default=0.0, metavar="MS",
                       help="TEST HOOK: make frames slower by MS (default 0 = off)")
    group.add_argument("--debug-delay-stage", metavar="STAGE",
                       help="TEST HOOK: put the delay into this stage (e.g. flow) instead of "
                            "a stage of its own")
    group.add_argument("--debug-delay-seqs", metavar="FIRST:LAST",
                       help="TEST HOOK: delay only frames FIRST..LAST (default: every frame)")


def _debug_delay_config(args):
    from streamer.pipeline import DebugDelayConfig

    seqs = None
    if args.debug_delay_seqs:
        first, sep, last = args.debug_delay_seqs.partition(":")
        try:
            seqs = (int(first), int(last))
        except ValueError:
            sep = ""
        if not sep:
            raise CLIError(f"--debug-delay-seqs {args.debug_delay_seqs!r}: expected FIRST:LAST")
    return DebugDelayConfig(args.debug_delay_ms, args.debug_delay_stage, seqs)


def _debug_delay_argv(args) -> list[str]:
    argv = ["--debug-delay-ms", str(args.debug_delay_ms)] if args.debug_delay_ms else []
    if args.debug_delay_stage:
        argv += ["--debug-delay-stage", args.debug_delay_stage]
    if args.debug_delay_seqs:
        argv += ["--debug-delay-seqs", args.debug_delay_seqs]
    return argv


def _pipeline_config(args, **extra):
    from streamer.pipeline import EngineConfig, PipelineConfig, ViewConfig

    weights = []
    for item in args.weights:
        role, sep, path = item.partition("=")
        if not sep or role not in ROLES or not path:
            raise CLIError(f"--weights {item!r}: expected ROLE=PATH with ROLE one of "
                           f"{', '.join(ROLES)}")
        weights.append((role, path))
    return PipelineConfig(
        analysis=args.analysis,
        engines=EngineConfig(backend=args.backend, precision=args.precision,
                             threads=args.threads, device=args.device, weights=tuple(weights)),
        view=ViewConfig(gate=args.view_gate, min_confidence=args.min_view_confidence),
        **extra)


def _analysis_argv(args) -> list[str]:
    """The analysis options again, as arguments for a `serve` child process."""
    argv = ["--analysis", args.analysis, "--backend", args.backend, "--precision",
            args.precision, "--view-gate", args.view_gate, "--min-view-confidence",
            str(args.min_view_confidence)]
    if args.threads:
        argv += ["--threads", str(args.threads)]
    if args.device:
        argv += ["--device", args.device]
    for item in args.weights:
        argv += ["--weights", item]
    return argv


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cardiostream",
        description="Real-time side-car for cardiac imaging: frames arrive over ZeroMQ, "
                    "results (view, myocardium, strain, per-stage latency) leave over ZeroMQ, "
                    "one per frame. See docs/protocol.md for the wire format.")
    parser.add_argument("--version", action="version", version=f"cardiostream {__version__}")
    parser.add_argument("--log-level", default="INFO",
                        choices=("DEBUG", "INFO", "WARNING", "ERROR"),
                        help="log level of messages on stderr (default INFO)")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    clip = _clip_options()
    analysis = _analysis_options()
    budget = _budget_options()

    serve = commands.add_parser(
        "serve", parents=[analysis, budget], help="run the side-car",
        description="Run the side-car: take frames on --ingest (PULL), publish results on "
                    "--publish (XPUB). Live mode (default) always processes the newest frame "
                    "and reports dropped ones in the next result; --lossless applies "
                    "back-pressure to the sender and drops nothing. Prints one JSON line "
                    "{\"event\":\"ready\",...} on stdout when listening and "
                    "{\"event\":\"stopped\",...} after SIGINT/SIGTERM, having flushed every "
                    "result already computed.")
    serve.add_argument("--ingest", default=DEFAULT_INGEST,
                       help=f"endpoint to bind for frames (default {DEFAULT_INGEST}; "
                            "tcp://127.0.0.1:* picks a free port)")
    serve.add_argument("--publish", default=DEFAULT_PUBLISH,
                       help=f"endpoint to bind for results (default {DEFAULT_PUBLISH})")
    serve.add_argument("--lossless", action="store_true",
                       help="back-pressure instead of dropping (replay and analysis)")
    serve.add_argument("--queue-frames", type=int, default=32, metavar="N",
                       help="lossless mode: frames that may wait for the worker (default 32)")
    serve.add_argument("--max-message-mb", type=float, default=64.0,
                       help="larger messages are answered with a too_large error (default 64)")
    serve.add_argument("--drain-timeout-s", type=float, default=30.0,
                       help="lossless shutdown: time allowed to finish accepted frames")
    serve.add_argument("--republish-frames", action="store_true",
                       help="also publish each incoming frame (before its result), so "
                            "`record --from` keeps frames and results together")
    _debug_delay_options(serve)
    serve.set_defaults(func=cmd_serve)

    replay = commands.add_parser(
        "replay", parents=[clip], help="send a clip to a side-car",
        description="Send a clip as frame messages (with start and end messages around it) "
                    "at its native frame rate, or --fps, or --max-rate.")
    replay.add_argument("--to", required=True, metavar="ENDPOINT",
                        help="the side-car's ingest endpoint, e.g. tcp://127.0.0.1:5555")
    replay.add_argument("--max-rate", action="store_true",
                        help="send as fast as the side-car accepts (ignores timing)")
    replay.add_argument("--connect-timeout-s", type=float, default=10.0,
                        help="give up when no side-car answers within this time")
    replay.add_argument("--quiet", action="store_true", help="no progress bar")
    replay.set_defaults(func=cmd_replay)

    record = commands.add_parser(
        "record", help="write a stream to a .csrec file that replay can send again",
        description="Record messages with their arrival times. --from subscribes to a "
                    "side-car's publish endpoint (results, errors, start/end); --listen binds "
                    "in place of a side-car and records the frames sent to it. Stops on "
                    "SIGINT/SIGTERM, --duration-s, --max-messages or --until-end.")
    source = record.add_mutually_exclusive_group(required=True)
    source.add_argument("--from", dest="from_endpoint", metavar="ENDPOINT",
                        help="subscribe to a side-car's publish endpoint")
    source.add_argument("--listen", metavar="ENDPOINT",
                        help="bind here and record the frames a scanner/replay sends")
    record.add_argument("--out", required=True, type=Path, help="output file (.csrec)")
    record.add_argument("--kinds", help="comma-separated kinds to keep (default: all), e.g. "
                        "frame,start,end")
    record.add_argument("--duration-s", type=float, help="stop after this many seconds")
    record.add_argument("--max-messages", type=int, help="stop after this many messages")
    record.add_argument("--until-end", action="store_true",
                        help="stop after the first end message")
    record.set_defaults(func=cmd_record)

    analyze = commands.add_parser(
        "analyze", parents=[clip, analysis], help="run a clip through the pipeline in one process",
        description="The side-car's pipeline without sockets: writes start, one result (or "
                    "error) per frame and end as JSON lines, the same headers a subscriber "
                    "receives.")
    analyze.add_argument("--out", required=True, type=Path, help="output file (.jsonl)")
    analyze.add_argument("--no-progress", action="store_true", help="no progress bar")
    analyze.set_defaults(func=cmd_analyze)

    demo = commands.add_parser(
        "demo", parents=[analysis, budget],
        help="start a side-car, replay a real echo clip into it, print results",
        description="Starts `cardiostream serve` on free loopback ports, replays a clip "
                    "(default: pydicom's real apical 4-chamber cine) at its native rate, "
                    "prints one line per result with strain and latency, and stops the "
                    "side-car.")
    demo.add_argument("--clip", type=Path, help="clip to replay (default: pydicom's echo)")
    demo.add_argument("--lossless", action="store_true", help="run the side-car lossless")
    demo.add_argument("--loop", type=int, default=1, help="play the clip N times")
    demo.add_argument("--max-frames", type=int, help="stop after N frames")
    demo.add_argument("--view", choices=VIEW_CLASSES, metavar="VIEW",
                      help="send the clip with this view hint (overrides the view gate)")
    _debug_delay_options(demo)
    demo.set_defaults(func=cmd_demo)

    from calib.cli import add_phantom_parser
    from engines.cli import add_engines_parser
    from streamer.bench import add_parser as add_bench_parser

    add_phantom_parser(commands)
    add_engines_parser(commands)
    add_bench_parser(commands)
    return parser


# --------------------------------------------------------------------------
# commands


def _open(args):
    from streamer.io.clips import open_clip

    return open_clip(args.clip, spacing_mm=tuple(args.spacing_mm) if args.spacing_mm else None,
                     fps=args.fps, slice_index=args.slice_index)


def _replay_config(args, **extra):
    from streamer.replay import ReplayConfig

    return ReplayConfig(stream=args.stream, fps=args.fps, loop=args.loop,
                        modality=args.modality, max_frames=args.max_frames, view=args.view,
                        **extra)


def _progress(total: int | None, desc: str, disable: bool):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="frame", disable=disable, file=sys.stderr)


def _print_event(event: str, **fields) -> None:
    print(json.dumps({"event": event, **fields}), flush=True)


def cmd_serve(args) -> int:
    from streamer.pipeline import build_pipeline
    from streamer.sidecar import SideCar, SideCarConfig

    config = SideCarConfig(ingest=args.ingest, publish=args.publish, lossless=args.lossless,
                           queue_frames=args.queue_frames,
                           max_message_bytes=int(args.max_message_mb * 1024 * 1024),
                           drain_timeout_s=args.drain_timeout_s,
                           republish_frames=args.republish_frames)
    budget = _budget_config(args)
    pipeline = build_pipeline(_pipeline_config(args, debug_delay=_debug_delay_config(args)))
    sidecar = SideCar(config, pipeline, budget=budget).start()

    def on_signal(signum, _frame) -> None:
        log.info("%s: stopping (flushing results already computed)",
                 signal.Signals(signum).name)
        sidecar.request_stop()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    _print_event("ready", ingest=sidecar.ingest_endpoint, publish=sidecar.publish_endpoint,
                 mode=config.mode, version=__version__)
    while not sidecar.wait(0.2):
        pass
    _print_event("stopped", stats=asdict(sidecar.stats))
    return 0


def cmd_replay(args) -> int:
    from streamer.replay import replay_to

    with _open(args) as reader:
        config = _replay_config(args, max_rate=args.max_rate)
        total = reader.info.n_frames * args.loop
        if args.max_frames:
            total = min(total, args.max_frames)
        with _progress(total, f"replay {args.clip.name}", args.quiet) as bar:
            stats = replay_to(reader, args.to, config,
                              connect_timeout_s=args.connect_timeout_s,
                              on_frame=lambda _: bar.update(1))
    log.info("sent %d frames in %.2f s (%.1f fps); worst lateness against the clip's "
             "timing %.1f ms", stats.frames, stats.elapsed_s,
             stats.frames / stats.elapsed_s if stats.elapsed_s else float("nan"),
             stats.max_lateness_ms)
    return 0


def cmd_record(args) -> int:
    from streamer.record import RecordConfig, RecordStats, record

    kinds = tuple(k.strip() for k in args.kinds.split(",")) if args.kinds else None
    config = RecordConfig(endpoint=args.listen or args.from_endpoint,
                          listen=args.listen is not None, kinds=kinds,
                          duration_s=args.duration_s, max_messages=args.max_messages,
                          until_end=args.until_end)
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    ready, stats, failure = threading.Event(), RecordStats(), []

    def work() -> None:
        try:
            record(config, args.out, stop, ready=ready, stats=stats)
        except BaseException as exc:  # reported in the main thread
            failure.append(exc)

    worker = threading.Thread(target=work, name="record", daemon=True)
    worker.start()
    announced = False
    while worker.is_alive():  # the main thread stays free to take signals
        worker.join(0.1)
        if ready.is_set() and not announced:
            announced = True
            _print_event("recording", endpoint=stats.endpoint, out=str(args.out))
            log.info("recording %s to %s (Ctrl-C to stop)", stats.endpoint, args.out)
    if failure:
        raise failure[0]
    _print_event("recorded", out=str(args.out), messages=dict(stats.written),
                 skipped_invalid=stats.skipped_invalid)
    return 0


def cmd_analyze(args) -> int:
    from streamer.analyze import analyze
    from streamer.pipeline import build_pipeline

    with _open(args) as reader:
        total = reader.info.n_frames * args.loop
        if args.max_frames:
            total = min(total, args.max_frames)
        with _progress(total, f"analyze {args.clip.name}", args.no_progress) as bar:
            summary = analyze(reader, args.out, build_pipeline(_pipeline_config(args)),
                              _replay_config(args),
                              on_frame=lambda _: bar.update(1))
    _print_event("analyzed", out=str(args.out), frames=summary.frames,
                 results=summary.results, errors=summary.errors,
                 elapsed_s=round(summary.elapsed_s, 3))
    return 0


def cmd_demo(args) -> int:
    from streamer.demo import DemoConfig, run_demo

    _budget_config(args), _debug_delay_config(args)  # refuse bad values here, not in the child
    return run_demo(DemoConfig(clip=args.clip, lossless=args.lossless, loop=args.loop,
                               max_frames=args.max_frames, view=args.view,
                               serve_args=(*_analysis_argv(args), *_budget_argv(args),
                                           *_debug_delay_argv(args))))


# --------------------------------------------------------------------------


def _user_errors() -> tuple[type[BaseException], ...]:
    from streamer.io.clips import ClipError
    from streamer.io.sockets import EndpointError
    from streamer.replay import ReplayError

    return (CLIError, ClipError, EndpointError, ReplayError, ValueError, OSError)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return args.func(args)
    except _user_errors() as exc:
        log.debug("traceback of the error below", exc_info=True)
        print(f"cardiostream {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
