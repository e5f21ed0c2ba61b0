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

from streamer import __version__
from streamer.options import add_options, from_args
from streamer.vocab import VIEW_CLASSES

log = logging.getLogger("cardiostream")

class CLIError(Exception):
    """A user error: printed as one line, exit code 2."""


def _clip_options() -> argparse.ArgumentParser:
    """Options shared by every command that reads a clip."""
    parent = argparse.ArgumentParser(add_help=False)
    group = parent.add_argument_group("clip")
    group.add_argument("clip", type=Path, help="DICOM file or folder of single-frame DICOM, "
                       ".nii/.nii.gz, .avi/.mp4, .npz, or a .csrec recording. A short-axis "
                       "stack (a DICOM folder, 4-D NIfTI or enhanced MR DICOM file with "
                       "several slices) is sent slice after slice, each slice its own stream "
                       "NAME/slice-K whose start says the stack id, slice position and "
                       "thickness and orientation; frames carry phase index and trigger time")
    group.add_argument("--spacing-mm", nargs=2, type=float, metavar=("ROW", "COL"),
                       help="pixel spacing in mm in place of the file's: for a video (which "
                       "carries none) or a file whose calibration is wrong (e.g. an image "
                       "resized after its ultrasound region was calibrated: the reader "
                       "warns, and strain is refused as not_measurable:centreline_length)")
    group.add_argument("--fps", type=float, help="frame rate to use instead of the file's")
    group.add_argument("--modality", choices=("US", "MR"),
                       help="modality when the file does not say (video)")
    group.add_argument("--slice", type=int, dest="slice_index", metavar="K",
                       help="send only slice K of a DICOM folder (0 = the lowest slice "
                            "position) or 4-D NIfTI (voxel z), as one clip in one stream whose "
                            "start still says its place in the stack (default: every slice, "
                            "each its own stream)")
    group.add_argument("--stack", action="store_true",
                       help="read the input as a short-axis stack even when it holds one "
                            "slice (its stream is then NAME/slice-0), and a 3-D NIfTI as one "
                            "phase of its z slices rather than as a cine of one slice")
    group.add_argument("--stream", help="stream name in the messages (default: clip- and "
                                        "a short hash of the path; the file name with "
                                        "--keep-identifiers); a stack's slices are "
                                        "NAME/slice-K")
    group.add_argument("--max-frames", type=int, metavar="N",
                       help="stop after N frames (of each slice of a stack)")
    group.add_argument("--loop", type=int, default=1, metavar="N",
                       help="play the clip N times in one stream (default 1)")
    group.add_argument("--view", choices=VIEW_CLASSES, metavar="VIEW",
                       help="the clip's view when you know it (sent as each frame's view "
                            "hint; it overrides the view classifier's gate): "
                            + ", ".join(VIEW_CLASSES))
    group.add_argument("--keep-identifiers", action="store_true",
                       help="send the clip's path in the start message and name the stream "
                            "after the file (default: neither, as file and folder names often "
                            "carry patient names)")
    return parent


def _analysis_options(test_hooks: bool = False) -> argparse.ArgumentParser:
    """Options of every command that runs the apps (serve, analyze, demo): declared once,
    on the config dataclasses (streamer.apps.AnalysisConfig and each app's Config)."""
    from streamer.apps import add_analysis_options

    parent = argparse.ArgumentParser(add_help=False)
    add_analysis_options(parent, test_hooks=test_hooks)
    return parent


def _budget_options() -> argparse.ArgumentParser:
    """Latency budget of a live side-car (serve, demo, bench latency): streamer/budget.py."""
    from streamer.budget import add_budget_options

    parent = argparse.ArgumentParser(add_help=False)
    add_budget_options(parent)
    return parent


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
    from streamer.io.security import CurveConfig
    from streamer.sidecar import SideCarConfig

    clip = _clip_options()
    analysis, hooked = _analysis_options(), _analysis_options(test_hooks=True)
    budget = _budget_options()

    serve = commands.add_parser(
        "serve", parents=[hooked, budget], help="run the side-car",
        description="Run the side-car: take frames on --ingest (PULL), publish results on "
                    "--publish (XPUB). Live mode (default) always processes the newest frame "
                    "and reports dropped ones in the next result; --lossless applies "
                    "back-pressure to the sender and drops nothing. Prints one JSON line "
                    "{\"event\":\"ready\",...} on stdout when listening and "
                    "{\"event\":\"stopped\",...} after SIGINT/SIGTERM, having flushed every "
                    "result already computed.")
    add_options(serve.add_argument_group("side-car"), SideCarConfig, skip=("curve",))
    add_options(serve.add_argument_group(
        "security", "Loopback endpoints need nothing. Any other endpoint needs CURVE (both "
        "endpoints are then encrypted, and only clients whose public key is in --allow-keys "
        "are served), or --insecure. See `cardiostream keys generate --help`."),
        CurveConfig, skip=("curve_server_key",))
    serve.set_defaults(func=cmd_serve)

    replay = commands.add_parser(
        "replay", parents=[clip], help="send a clip to a side-car",
        description="Send a clip as frame messages (with start and end messages around it) "
                    "at its native frame rate, or --fps, or --max-rate. A short-axis stack "
                    "goes out as a scanner sends one: slice after slice, each slice a stream "
                    "NAME/slice-K of its own (see docs/protocol.md).")
    replay.add_argument("--to", required=True, metavar="ENDPOINT",
                        help="the side-car's ingest endpoint, e.g. tcp://127.0.0.1:5555")
    replay.add_argument("--max-rate", action="store_true",
                        help="send as fast as the side-car accepts (ignores timing)")
    replay.add_argument("--connect-timeout-s", type=float, default=10.0,
                        help="give up when no side-car answers within this time")
    replay.add_argument("--send-timeout-s", type=float, default=30.0,
                        help="give up when the side-car takes no frame for this long (it "
                             "stopped or stalled; 0: wait for ever)")
    replay.add_argument("--quiet", action="store_true", help="no progress bar")
    add_options(replay.add_argument_group(
        "security", "To a side-car that runs with CURVE: this client's key pair and the "
        "side-car's public key (see `cardiostream keys generate --help`)."),
        CurveConfig, skip=("allow_keys", "insecure"))
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
    source.add_argument("--check", type=Path, metavar="FILE",
                        help="record nothing: read a .csrec file and report its records "
                             "and any damage (a cut or a failed checksum); exit 1 if damaged")
    record.add_argument("--out", type=Path, help="output file (.csrec; needed with --from "
                        "or --listen)")
    record.add_argument("--kinds", help="comma-separated kinds to keep (default: all), e.g. "
                        "frame,start,end")
    record.add_argument("--duration-s", type=float, help="stop after this many seconds")
    record.add_argument("--max-messages", type=int, help="stop after this many messages")
    record.add_argument("--until-end", action="store_true",
                        help="stop after the first end message")
    add_options(record.add_argument_group(
        "security", "--from a side-car with CURVE: --curve-secret-key (this client's key "
        "pair) and --curve-server-key. --listen: as serve, a non-loopback endpoint needs "
        "--curve-secret-key and --allow-keys, or --insecure."), CurveConfig)
    record.set_defaults(func=cmd_record)

    keys = commands.add_parser(
        "keys", help="make CURVE key pairs for endpoints beyond loopback",
        description="CURVE key pairs (ZeroMQ's encryption and authentication) for a side-car "
                    "reached over a network: see `cardiostream keys generate --help` and "
                    "docs/protocol.md, Security.")
    key_actions = keys.add_subparsers(dest="keys_action", required=True, metavar="ACTION")
    generate = key_actions.add_parser(
        "generate", help="write a new key pair NAME.key and NAME.key_secret",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Write a new CURVE key pair into DIR: NAME.key (the public key: hand it "
                    "out) and NAME.key_secret (public and secret key, file mode 0600: keep "
                    "it where only its owner reads it). Existing files are not "
                    "overwritten.\n\n"
                    "Which file goes where:\n"
                    "  side-car (one pair, e.g. --name sidecar):\n"
                    "    serve --curve-secret-key sidecar.key_secret --allow-keys CLIENTS_DIR\n"
                    "    sidecar.key          -> every client's --curve-server-key\n"
                    "  each client (one pair each, e.g. --name scanner-1):\n"
                    "    scanner-1.key        -> copy into the side-car's CLIENTS_DIR\n"
                    "    replay / record --from ... --curve-secret-key scanner-1.key_secret "
                    "--curve-server-key sidecar.key\n"
                    "  record --listen takes the side-car's part (its own pair and "
                    "--allow-keys).\n\n"
                    "A client whose key is not in --allow-keys (or that has no key) gets "
                    "nothing; the side-car logs the refusal once per key.")
    generate.add_argument("--out", required=True, type=Path, metavar="DIR",
                          help="directory to write into (made if missing)")
    generate.add_argument("--name", required=True,
                          help="base name of the two files, e.g. sidecar or scanner-1")
    generate.set_defaults(func=cmd_keys_generate)

    analyze = commands.add_parser(
        "analyze", parents=[clip, analysis],
        help="run clips through the side-car's apps in one process, or an archive into a "
             "folder (--out-dir)",
        description="The side-car's analysis without sockets: writes start, one result (or "
                    "error) per frame, beat messages (and a short-axis stack's wall_motion "
                    "per beat) and end as JSON lines, the same headers a subscriber receives. Several clips go in as several streams, their "
                    "frames interleaved by acquisition time, each with its own state; a "
                    "short-axis stack goes in slice after slice, each slice its own stream "
                    "NAME/slice-K, as replay sends it. With --out-dir DIR the paths are an "
                    "archive (files, folders walked recursively, glob patterns; a DICOM "
                    "series folder is one clip): each clip is analysed alone into "
                    "DIR/clips/NAME.jsonl, in parallel with --workers N or --ray, clips "
                    "already done are skipped (DIR/index.jsonl), and DIR/study.csv gets a "
                    "row per clip and beat; exit status 1 when some clip failed "
                    "(DIR/errors.txt says why).")
    analyze.add_argument("more_clips", nargs="*", type=Path, metavar="CLIP",
                         help="more clips: each is a stream of its own (named after its "
                              "file; a stack's slices NAME/slice-K), their frames interleaved "
                              "by acquisition time as a side-car would receive them")
    output = analyze.add_mutually_exclusive_group(required=True)
    output.add_argument("--out", type=Path, help="output file (.jsonl)")
    output.add_argument("--out-dir", type=Path, metavar="DIR",
                        help="analyse an archive: every clip under the paths alone, into "
                             "DIR/clips/NAME.jsonl (NAME: the file's stem and a hash of its "
                             "path), resumable (DIR/index.jsonl: clips done with the same "
                             "settings and content are skipped, failed ones retried; other "
                             "settings are refused), the study table DIR/study.csv and the "
                             "failed clips' errors DIR/errors.txt; see docs/architecture.md, "
                             "Archives")
    analyze.add_argument("--masks-out", type=Path, metavar="FILE.npz",
                         help="also write the MR label maps of every slice and phase (one "
                              "clip or stack): labels uint8 (slices, phases, rows, cols) in "
                              "the frames' rows and columns, 0 background, 1 LV cavity, 2 LV "
                              "myocardium, 3 RV cavity, 255 where the frame got an error; "
                              "infarct_p float32 (slices, rows, cols), each slice's first "
                              "mapped beat's infarct probability (OF-RNN), NaN where none; "
                              "instance_number (DICOM InstanceNumber or -1), "
                              "slice_position_mm, trigger_time_ms; a velocity-mapping slice's "
                              "myocardium (2) from its cycle's 3D-EAR masks; turns on "
                              "--mr-labels and --vm-labels")
    analyze.add_argument("--t0-ns", type=int, metavar="NS",
                         help="acquisition time of every clip's first frame, ns since the "
                              "epoch (default: now; with --out-dir a fixed "
                              "1700000000000000000): a fixed value makes two runs give the "
                              "same results to the last bit")
    analyze.add_argument("--workers", type=int, metavar="N",
                         help="with --out-dir: N worker processes, each analysing one clip at "
                              "a time (default 1: in this process; with --ray: the cluster's "
                              "CPUs / --threads); each runs the networks on --threads threads, "
                              "with --out-dir 1 unless given, whatever N, so that the results "
                              "do not depend on N")
    analyze.add_argument("--ray", nargs="?", const="local", metavar="ADDRESS",
                         help="with --out-dir: run the clips as Ray actors (pip install "
                              "'cardiostream[ray]'); without ADDRESS on a Ray started on this "
                              "machine, else on the cluster at ADDRESS (auto, HOST:6379 or "
                              "ray://HOST:10001; every node must see the inputs and DIR at "
                              "the same paths). Write it as --ray=ADDRESS, or after the paths")
    analyze.add_argument("--no-progress", action="store_true", help="no progress bar")
    analyze.set_defaults(func=cmd_analyze)

    bullseye = commands.add_parser(
        "bullseye", help="bull's-eye PNGs of a short-axis stack's wall motion, strain and "
                         "infarct share",
        description="Reads the JSON lines of `cardiostream analyze` of a short-axis stack and "
                    "writes one PNG per wall_motion message (a stack and beat): the 16 "
                    "segments' wall-motion scores with the motion score index, and each "
                    "segment's peak circumferential strain and infarcted share (the median "
                    "over the stack's slices), in the AHA 17-segment layout.")
    bullseye.add_argument("analysis", type=Path, help="output of cardiostream analyze (.jsonl)")
    bullseye.add_argument("--out", required=True, type=Path, help="folder for the PNGs")
    bullseye.set_defaults(func=cmd_bullseye)

    velocity_plot = commands.add_parser(
        "velocity-plot", help="PNGs of velocity-mapping cycles' velocity curves",
        description="Reads the JSON lines of `cardiostream analyze` of a velocity-mapping clip "
                    "and writes one PNG per measured cycle: the global radial (inwards +), "
                    "circumferential (counter-clockwise from the apex +) and longitudinal "
                    "(towards the apex +) velocities in cm/s with end-systole and the peaks, "
                    "and each AHA segment's curves where the slice's level was known.")
    velocity_plot.add_argument("analysis", type=Path, help="output of cardiostream analyze (.jsonl)")
    velocity_plot.add_argument("--out", required=True, type=Path, help="folder for the PNGs")
    velocity_plot.set_defaults(func=cmd_velocity_plot)

    report = commands.add_parser(
        "report", help="one self-contained HTML report of recorded results",
        description="Reads the JSON lines of `cardiostream analyze` and writes one HTML file "
                    "that needs no network to view: the provenance (cardiostream version, "
                    "networks, backends, weights sha256, the clips' metadata without "
                    "identifiers); per echo stream the clip as a video with the tracked "
                    "centreline (with --clip), GLS and regional strain over time with ED/ES, "
                    "the per-beat table and the flags and drops over time; per MR short-axis "
                    "stack the slices as one video with the tracked walls (and label maps with "
                    "--masks), strain per slice, the beat table, volumes and EF, wall-motion "
                    "scores, MSI and bull's-eyes; per velocity-mapping cycle its curves and "
                    "peaks.")
    report.add_argument("results", type=Path, help="output of cardiostream analyze (.jsonl)")
    report.add_argument("--out", required=True, type=Path, help="the HTML file to write")
    report.add_argument("--clip", type=Path,
                        help="the clip or stack the results are of, for the video (as given to "
                             "analyze); without it the report has no video")
    report.add_argument("--masks", type=Path, metavar="MASKS.npz",
                        help="analyze --masks-out of that clip or stack: label maps drawn on "
                             "the MR video")
    report.add_argument("--max-video-frames", type=int, default=300, metavar="N",
                        help="the video holds the first N frames (phases of a stack; default "
                             "300)")
    report.add_argument("--video-width-px", type=int, default=480, metavar="PX",
                        help="the video's width in pixels (default 480)")
    report.set_defaults(func=cmd_report)

    demo = commands.add_parser(
        "demo", parents=[hooked, budget],
        help="start a side-car, replay a real echo clip into it, print results",
        description="Starts `cardiostream serve` on free loopback ports, replays a clip "
                    "(default: pydicom-data's real apical 4-chamber cine) at its native rate, "
                    "prints one line per result with strain and latency, and stops the "
                    "side-car.")
    demo.add_argument("--clip", type=Path, help="clip to replay (default: pydicom-data's real A4C "
                      "cine color3d_jpeg_baseline.dcm, 120 frames, sent with view hint a4c)")
    demo.add_argument("--lossless", action="store_true", help="run the side-car lossless")
    demo.add_argument("--loop", type=int, default=1, help="play the clip N times")
    demo.add_argument("--max-frames", type=int, help="stop after N frames")
    demo.add_argument("--view", choices=VIEW_CLASSES, metavar="VIEW",
                      help="send the clip with this view hint (overrides the view gate)")
    demo.set_defaults(func=cmd_demo)

    from calib.cli import add_phantom_parser
    from engines.cli import add_engines_parser
    from streamer.bench import add_parser as add_bench_parser
    from streamer.export import add_parser as add_export_parser
    from streamer.io.clips import read_frames
    from streamer.io.sunnybrook import read_patient
    from streamer.viewer import add_parser as add_view_parser

    add_phantom_parser(commands)
    # engines read no clips themselves
    add_engines_parser(commands, read_frames=read_frames, read_mr_patient=read_patient)
    add_bench_parser(commands)
    add_export_parser(commands)
    add_view_parser(commands)
    return parser


# --------------------------------------------------------------------------
# commands


def _open(args, clip: Path | None = None):
    """The clip, or the stack where the input holds several slices (or --stack); what its
    reader warns of (a fallback it took, a header it doubts) is logged, once per input."""
    from streamer.io.clips import open_input

    path = args.clip if clip is None else clip
    source = open_input(path, spacing_mm=tuple(args.spacing_mm) if args.spacing_mm else None,
                        fps=args.fps, slice_index=args.slice_index, stack=args.stack)
    for warning in source.info.metadata.get("warnings", []):
        log.warning("%s: %s", Path(path).name, warning)
    return source


def _frames_to_send(source, args) -> int:
    """How many frames replay/analyze send of a clip or a stack (--loop, --max-frames)."""
    from streamer.io.clips import StackReader

    if isinstance(source, StackReader):
        streams, frames = source.info.n_slices, source.info.n_phases * args.loop
    else:
        streams, frames = 1, source.info.n_frames * args.loop
    return streams * (min(frames, args.max_frames) if args.max_frames else frames)


def _replay_config(args, **extra):
    from streamer.replay import ReplayConfig

    extra.setdefault("stream", args.stream)
    return ReplayConfig(fps=args.fps, loop=args.loop,
                        modality=args.modality, max_frames=args.max_frames, view=args.view,
                        keep_identifiers=args.keep_identifiers, **extra)


def _progress(total: int | None, desc: str, disable: bool):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="frame", disable=disable, file=sys.stderr)


def _print_event(event: str, **fields) -> None:
    print(json.dumps({"event": event, **fields}), flush=True)


def cmd_serve(args) -> int:
    from streamer.apps import analysis_config, build_analysis
    from streamer.budget import BudgetConfig
    from streamer.sidecar import SideCar, SideCarConfig

    config = from_args(SideCarConfig, args)
    budget = from_args(BudgetConfig, args)
    sidecar = SideCar(config, build_analysis(analysis_config(args)), budget=budget).start()

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
    from streamer.io.security import CurveConfig
    from streamer.replay import replay_to

    with _open(args) as reader:
        config = _replay_config(args, max_rate=args.max_rate)
        total = _frames_to_send(reader, args)
        with _progress(total, f"replay {args.clip.name}", args.quiet) as bar:
            stats = replay_to(reader, args.to, config,
                              connect_timeout_s=args.connect_timeout_s,
                              send_timeout_s=args.send_timeout_s or None,
                              on_frame=lambda _: bar.update(1),
                              curve=from_args(CurveConfig, args))
    log.info("sent %d frames in %.2f s (%.1f fps); worst lateness against the clip's "
             "timing %.1f ms", stats.frames, stats.elapsed_s,
             stats.frames / stats.elapsed_s if stats.elapsed_s else float("nan"),
             stats.max_lateness_ms)
    return 0


def cmd_record(args) -> int:
    from streamer.io.security import CurveConfig
    from streamer.record import RecordConfig, RecordStats, record

    if args.check is not None:
        from streamer.io.recording import check_recording

        report = check_recording(args.check)
        _print_event("checked", path=report.path, version=report.version,
                     records=report.records, kinds=report.kinds, ok=report.ok,
                     damage=None if report.damage is None else str(report.damage))
        return 0 if report.ok else 1
    if args.out is None:
        raise CLIError("--out FILE is needed to record (--from or --listen)")

    kinds = tuple(k.strip() for k in args.kinds.split(",")) if args.kinds else None
    config = RecordConfig(endpoint=args.listen or args.from_endpoint,
                          listen=args.listen is not None, kinds=kinds,
                          duration_s=args.duration_s, max_messages=args.max_messages,
                          until_end=args.until_end, curve=from_args(CurveConfig, args))
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


def cmd_keys_generate(args) -> int:
    from streamer.io.security import generate_keys

    public, secret = generate_keys(args.out, args.name)
    _print_event("keys", public=str(public), secret=str(secret))
    log.info("wrote %s (public: give it out) and %s (secret, mode 0600: keep it)",
             public, secret)
    return 0


def cmd_analyze(args) -> int:
    from contextlib import ExitStack

    from streamer.analyze import analyze
    from streamer.apps import analysis_config, build_analysis
    from streamer.replay import default_stream_name

    if args.out_dir is not None:
        return _analyze_study(args)
    if args.workers is not None or args.ray is not None:
        raise CLIError("--workers and --ray analyse an archive into --out-dir DIR; --out "
                       "writes the clips as streams of one file")
    clips = [args.clip, *args.more_clips]
    if len(clips) > 1 and args.stream:
        raise CLIError("--stream names one clip's stream; with several clips each stream "
                       "is named after its file")
    if len(clips) > 1 and args.masks_out:
        raise CLIError("--masks-out writes the label maps of one clip or stack; give one")
    if args.masks_out:
        args.mr_labels = True  # the MR app's --mr-labels: the maps ride on the results
        args.vm_labels = True  # velocity mapping: on the cycle's beat message
    names = [args.stream or default_stream_name(clip, args.keep_identifiers) for clip in clips]
    streams = [name if names.count(name) == 1 else f"{name}-{k + 1}"
               for k, name in enumerate(names)]  # same file names: numbered in order given
    with ExitStack() as stack:
        readers = [stack.enter_context(_open(args, clip)) for clip in clips]
        total = sum(_frames_to_send(r, args) for r in readers)
        desc = f"analyze {clips[0].name}" + (f" +{len(clips) - 1}" if len(clips) > 1 else "")
        with _progress(total, desc, args.no_progress) as bar:
            try:
                summary = analyze(readers, args.out, build_analysis(analysis_config(args)),
                                  [_replay_config(args, stream=name) for name in streams],
                                  on_frame=lambda _: bar.update(1), t0_ns=args.t0_ns,
                                  masks_out=args.masks_out)
            except ValueError as exc:
                if args.masks_out and "label maps" in str(exc):
                    raise CLIError(str(exc)) from None
                raise
    _print_event("analyzed", out=str(args.out), frames=summary.frames,
                 results=summary.results, errors=summary.errors,
                 elapsed_s=round(summary.elapsed_s, 3),
                 **({"masks_out": str(args.masks_out)} if args.masks_out else {}))
    return 0


def _analyze_study(args) -> int:
    """``analyze PATHS... --out-dir DIR``: every clip alone, the same options for each
    (streamer/study.py); exit status 0 when every clip ran, 1 when some failed."""
    from streamer.apps import analysis_config
    from streamer.study import STUDY_T0_NS, StudyConfig, run_study

    one_clip = [flag for flag, value in (("--stream", args.stream),
                                         ("--masks-out", args.masks_out),
                                         ("--slice", args.slice_index)) if value is not None]
    if one_clip:
        raise CLIError(f"{', '.join(one_clip)} choose(s) for one clip; with --out-dir every "
                       "clip is analysed with the same options (run `analyze CLIP --out` "
                       "for that clip)")
    config = StudyConfig(
        paths=tuple(str(path) for path in (args.clip, *args.more_clips)),
        out_dir=args.out_dir, analysis=analysis_config(args), replay=_replay_config(args),
        spacing_mm=tuple(args.spacing_mm) if args.spacing_mm else None, stack=args.stack,
        workers=args.workers, ray=args.ray,
        t0_ns=STUDY_T0_NS if args.t0_ns is None else args.t0_ns,
        progress=not args.no_progress)
    summary = run_study(config)
    if summary.failed:
        print(f"{len(summary.failed)} of {summary.ran} clip(s) failed "
              f"({summary.out_dir / 'errors.txt'}):", file=sys.stderr)
        for name, message in summary.failed:
            print(f"  {name}: {message}", file=sys.stderr)
    _print_event("study", **summary.event())
    return 1 if summary.failed else 0


def _write_pngs(command: str, write, args) -> int:
    """A plotting command: ``write(analysis, out)`` -> the PNGs written, printed one a line;
    a file it cannot read or use is exit status 2 with the reason."""
    try:
        paths = write(args.analysis, args.out)
    except (OSError, ValueError) as exc:
        print(f"cardiostream {command}: {exc}", file=sys.stderr)
        return 2
    for path in paths:
        print(path)
    return 0


def cmd_bullseye(args) -> int:
    from streamer.bullseye import write_bullseyes

    return _write_pngs("bullseye", write_bullseyes, args)


def cmd_velocity_plot(args) -> int:
    from streamer.velocity_plot import write_velocity_plots

    return _write_pngs("velocity-plot", write_velocity_plots, args)


def cmd_report(args) -> int:
    from streamer.report import ReportConfig, write_report

    path = write_report(ReportConfig(results=args.results, out=args.out, clip=args.clip,
                                     masks=args.masks, max_video_frames=args.max_video_frames,
                                     video_width_px=args.video_width_px))
    print(path)
    return 0


def cmd_demo(args) -> int:
    from streamer.apps import analysis_argv, analysis_config
    from streamer.budget import BudgetConfig
    from streamer.demo import DemoConfig, run_demo
    from streamer.options import to_argv

    # built here (bad values are refused here, not in the child) and handed on as options
    serve_args = (*analysis_argv(analysis_config(args)), *to_argv(from_args(BudgetConfig, args)))
    return run_demo(DemoConfig(clip=args.clip, lossless=args.lossless, loop=args.loop,
                               max_frames=args.max_frames, view=args.view,
                               serve_args=serve_args))


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
