"""The apps, and how each stream finds one.

An app is one modality's analysis (:class:`streamer.app.App`), in a file of its own here.
:data:`APPS` registers them: adding an app is its file and one entry in that tuple.

A stream goes to the app named with ``--app``, or else (``--app auto``) to the first app
whose ``modalities`` hold the stream's modality (the ``start`` message's
``meta.modality``, else its first frame's ``modality``) and that takes its channels
(``App.takes``: the start's ``meta.channels``, else the first frame's ``channels``; an MR
stream with magnitude and three velocity channels goes to mr-velocity, other MR to
mr-sax). ``--app none`` is the runtime alone, for transport and latency checks.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from engines.batching import BatchGroup
from engines.spec import BACKENDS, PRECISION_CHOICES, ROLES
from streamer.app import App, StreamApp
from streamer.apps.common import DebugDelayConfig, with_debug_delay
from streamer.apps.echo import EchoApp
from streamer.apps.mr_sax import MrShortAxisApp
from streamer.apps.mr_velocity import VelocityMappingApp
from streamer.apps.none import NoAnalysisApp
from streamer.io.protocol import StartMessage
from streamer.options import add_options, from_args, option, to_argv

#: every app, by name, in routing order: a stream of modality M goes to the first that takes
#: M and its channels (App.takes: velocity-mapping MR before the short axis)
APPS: dict[str, type[App]] = {app.name: app for app in (EchoApp, VelocityMappingApp,
                                                        MrShortAxisApp, NoAnalysisApp)}
AUTO = "auto"


class NoAppError(ValueError):
    """No app analyses this stream (its modality, or the app named does not exist)."""


def parse_weights(text: str) -> tuple[str, str]:
    """"seg=my_unet.onnx" -> ("seg", "my_unet.onnx")."""
    role, sep, path = text.partition("=")
    if not sep or role not in ROLES or not path:
        raise ValueError(f"expected ROLE=PATH with ROLE one of {', '.join(ROLES)}")
    return role, path


def add_weights_argument(parser) -> None:
    """``--weights ROLE=PATH`` (repeatable) on a benchmark's argparse parser: candidate
    weights judged in place of the shipped ones, the way ``EngineConfig.weights`` takes them."""
    parser.add_argument("--weights", type=parse_weights, action="append", default=[],
                        metavar="ROLE=PATH",
                        help="candidate weights for a role (view, seg or flow): a state dict, "
                             "TorchScript or ONNX file, e.g. from `cardiostream engines train` "
                             "(repeatable; default: the shipped)")


@dataclass(frozen=True)
class EngineConfig:
    """How the networks run (see ``engines.backends.create_engine``)."""

    backend: str = option(
        "auto", "how the networks run: auto is torch-tensorrt on a CUDA machine where "
        "installed, else the fastest CPU backend; asking for one that is not available is "
        "an error", choices=BACKENDS)
    precision: str = option(
        "auto", "network precision: auto (default) is the fastest format the backend runs "
        "here within its bounds: fp16 on a GPU, bf16 where the CPU computes it (AVX512-BF16 "
        "or AMX; with --backend auto that is openvino), else fp32, never int8; or name one: "
        "fp32 (the reference), bf16 (openvino, torch), fp16 (GPU), int8 (CPU backends, "
        "phantom calibration set); the bounds each must meet against fp32 are in "
        "engines/backends/tolerance.py; the format each network runs at is in the app's "
        "declaration (hello, start)",
        choices=PRECISION_CHOICES)
    threads: int | None = option(None, "CPU threads for the networks (default: all cores; "
                                 "analyze --out-dir: 1 per worker)", metavar="N")
    device: str | None = option(
        None, "cpu or cuda[:i] for --backend torch / tensorrt (default: the backend's own: "
        "torch on the CPU, tensorrt on cuda)", metavar="DEV")
    weights: tuple[tuple[str, str], ...] = option(
        (), "your own model for a role (view, seg or flow): a state dict, TorchScript or "
        "ONNX file with the role's I/O contract (engines/spec.py)", metavar="ROLE=PATH",
        parse=parse_weights, format=lambda item: f"{item[0]}={item[1]}")
    max_batch: int = option(
        1, "a side-car runs the frames of up to N streams that wait at the same time through "
        "each network as one batch (an engine per batch size 1..N, built and cached at "
        "start; engines.batching); 1: one frame at a time", metavar="N")
    batch_wait_ms: float = option(
        2.0, "with --max-batch > 1: the longest a frame's network call waits for the other "
        "frames of its round to reach the same network", metavar="MS")

    def __post_init__(self):
        if self.max_batch < 1:
            raise ValueError(f"--max-batch must be >= 1, got {self.max_batch}")
        if not self.batch_wait_ms >= 0:
            raise ValueError(f"--batch-wait-ms must be >= 0, got {self.batch_wait_ms}")


@dataclass(frozen=True)
class AnalysisConfig:
    """Which apps a side-car (or ``analyze``) runs and how.

    ``app="auto"`` loads every app that a modality routes to and sends each stream to the
    app of its modality; an app's name sends every stream to that app. ``apps`` holds each
    app's options by app name (its ``Config``; missing ones take the defaults)."""

    app: str = option(
        AUTO, "which analysis each stream gets: auto routes it by its modality and channels "
        "(US: echo; MR with magnitude and three velocity channels: mr-velocity; other MR: "
        "mr-sax); echo: view -> myocardium -> flow -> tracking -> strain; mr-sax: "
        "cardiac-MR short axis: labels, AHA segments, circumferential and radial strain; "
        "mr-velocity: MR velocity mapping: the myocardium per cycle (3D-EAR), velocity "
        "curves and peaks; none: preprocessing only, for transport and latency checks",
        aliases=("--analysis",), choices=(AUTO, *APPS))
    engines: EngineConfig = EngineConfig()
    apps: Mapping[str, Any] = field(default_factory=dict)
    #: test hook: extra delay per frame, ms, in a stage of its own or in a named stage
    debug_delay: DebugDelayConfig = DebugDelayConfig()

    def __post_init__(self):
        if self.app != AUTO and self.app not in APPS:
            raise ValueError(f"app {self.app!r} is unknown; choose {AUTO} or one of "
                             f"{', '.join(APPS)}")
        unknown = [name for name in self.apps if name not in APPS]
        if unknown:
            raise ValueError(f"options for unknown app(s) {unknown}; apps: {', '.join(APPS)}")


def add_analysis_options(parser, *, test_hooks: bool = False) -> None:
    """The options of :class:`AnalysisConfig` (which app, how the networks run) and of
    every app's ``Config``, each in a group of its own; ``test_hooks`` adds the debug
    delay."""
    add_options(parser.add_argument_group("analysis"), AnalysisConfig, skip=("debug_delay",))
    for app in APPS.values():
        summary = " ".join((app.__doc__ or "").split("\n\n")[0].split())
        group = parser.add_argument_group(f"app {app.name}", summary)
        add_options(group, app.Config)
    if test_hooks:
        add_options(parser.add_argument_group("test hooks"), DebugDelayConfig)


def analysis_config(args, **values: Any) -> AnalysisConfig:
    """The :class:`AnalysisConfig` that parsed options (:func:`add_analysis_options`) set."""
    apps = {name: from_args(app.Config, args) for name, app in APPS.items()
            if dataclasses.is_dataclass(app.Config)}
    return from_args(AnalysisConfig, args, apps=apps, **values)


def analysis_argv(config: AnalysisConfig) -> list[str]:
    """The options that set ``config`` again (for a ``serve`` child process)."""
    return to_argv(config) + [arg for app in config.apps.values() for arg in to_argv(app)]


def load_engines(roles: tuple[str, ...], config: EngineConfig,
                 group: BatchGroup | None = None) -> dict[str, Any]:
    """The engines of these roles, built (or loaded from the engine cache) and run once;
    with ``group`` (``--max-batch`` > 1) each role's engines at batch sizes 1..max_batch
    behind one :class:`engines.batching.BatchedEngine`."""
    from engines.backends import create_engine
    from engines.batching import batched_engines

    weights = dict(config.weights)
    sizes = range(1, config.max_batch + 1) if group is not None else (1,)
    by_size = {role: {b: create_engine(role, backend=config.backend, precision=config.precision,
                                       weights=weights.get(role), threads=config.threads,
                                       device=config.device, batch=b) for b in sizes}
               for role in roles}
    for engines in by_size.values():  # first inference pays one-off allocations
        for engine in engines.values():
            engine(np.zeros(engine.spec.input.shape, np.float32))
    if group is None:
        return {role: engines[1] for role, engines in by_size.items()}
    return batched_engines(by_size, group)


class Analysis:
    """The apps one side-car runs (engines loaded once, shared by all streams) and the
    routing of a stream to one of them."""

    def __init__(self, apps: Mapping[str, App], forced: str | None = None,
                 debug_delay: DebugDelayConfig = DebugDelayConfig(),
                 batch_group: BatchGroup | None = None, max_batch: int = 1):
        #: with ``--max-batch`` > 1: the group the apps' batched engines share (a side-car's
        #: worker runs its rounds in it), and the most frames a round takes
        self.batch_group = batch_group
        self.max_batch = max_batch if batch_group is not None else 1
        if forced is not None and forced not in apps:
            raise ValueError(f"app {forced!r} is not loaded ({', '.join(apps)})")
        self.apps = dict(apps)
        self.forced = forced
        self.debug_delay = debug_delay
        if debug_delay.delay_ms > 0 and debug_delay.stage is not None:
            named = [app for app in self.apps.values()
                     if any(s.name == debug_delay.stage for s in app.stages())]
            if not named:
                raise ValueError(f"--debug-delay-stage {debug_delay.stage!r} is not a stage "
                                 f"of {' or '.join(self.apps)}")

    def declarations(self) -> dict[str, dict]:
        return {name: app.declaration() for name, app in self.apps.items()}

    def route(self, modality: str | None, channels=None) -> App | None:
        """The app for a stream of this modality and these channels (None: not said); None
        while the modality is unknown."""
        if self.forced is not None:
            return self.apps[self.forced]
        if modality is None:
            return None
        for app in self.apps.values():
            if modality in app.modalities and app.takes(channels):
                return app
        raise NoAppError(f"no app analyses modality {modality!r} (apps: "
                         + ", ".join(f"{a.name} for {'/'.join(a.modalities) or 'none'}"
                                     for a in self.apps.values()) + ")")

    def route_start(self, start: StartMessage) -> App | None:
        """The app for a stream by its start: its ``meta.modality`` and ``meta.channels``
        (or the named app); None while that does not say; NoAppError when no app takes the
        modality."""
        modality, channels = start.meta.get("modality"), start.meta.get("channels")
        return self.route(modality if isinstance(modality, str) else None,
                          channels if isinstance(channels, list) else None)

    def declare_start(self, start: StartMessage) -> StartMessage:
        """A stream's start with the declaration of its app in ``meta.app``, where the start
        decides it (:meth:`route_start`); reads nothing that changes."""
        try:
            app = self.route_start(start)
        except NoAppError:
            app = None
        if app is None:
            return start
        return StartMessage(stream=start.stream, meta={**start.meta, "app": app.declaration()})

    def new_stream(self, app: App, stream: str, meta: dict | None = None) -> StreamApp:
        """A stream's instance of its app (with the test hook's delay, when set); ``meta``:
        its start's metadata (the stages' ``stream_meta``)."""
        delay = self.debug_delay

        def wrap(stages):
            if delay.delay_ms <= 0 or (delay.stage is not None
                                       and delay.stage not in [s.name for s in stages]):
                return stages
            return with_debug_delay(stages, delay)

        return app.new_stream(stream, wrap=wrap, meta=meta)


def build_analysis(config: AnalysisConfig = AnalysisConfig()) -> Analysis:
    """Load the apps the config asks for (their engines, once) and warm them up."""
    if config.app == AUTO:
        names = [name for name, app in APPS.items() if app.modalities]
    else:
        names = [config.app]
    roles = tuple(dict.fromkeys(role for name in names for role in APPS[name].roles))
    group = BatchGroup(config.engines.batch_wait_ms) if config.engines.max_batch > 1 and roles \
        else None
    engines = load_engines(roles, config.engines, group) if roles else {}
    apps = {}
    for name in names:
        cls = APPS[name]
        app = cls(config.apps.get(name), {role: engines[role] for role in cls.roles})
        app.warmup()
        apps[name] = app
    return Analysis(apps, forced=None if config.app == AUTO else config.app,
                    debug_delay=config.debug_delay, batch_group=group,
                    max_batch=config.engines.max_batch)
