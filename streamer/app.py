"""Apps: one modality's analysis on the shared runtime.

An :class:`App` is what a modality adds to cardiostream: the stages a frame meets, in the
order of the method; the networks (roles) it loads; the result and beat fields it writes
(declared, with units in their names, so that consumers discover them); the gate that
decides which frames are analysed; and the per-beat stages that run when a beat closes.
``streamer/apps/`` holds one file per app and the registry that routes a stream to one.

Engines (networks) are loaded once per app and shared by every stream. Everything that
remembers a stream's past lives in the :class:`StreamApp` the app makes for that stream
(:meth:`App.new_stream`): its stages with their state (previous image, tracker, strain
monitor) and its :class:`BeatBuffer`. Two scanners, or the slices of one MR stack, sent
to one side-car therefore never touch each other's state.

Per frame, a :class:`Pipeline` runs the stages in order and times each one. A
:class:`Stage` declares the named values it reads (``inputs``) and writes (``outputs``);
the wiring is checked once, when the pipeline is built. The values a frame starts with
are ``frame`` (the decoded :class:`~streamer.io.protocol.FrameMessage`), ``controls``
(the :class:`~streamer.budget.FrameControls` the live side-car's budget controller set for
it) and ``stream_meta`` (the ``meta`` of the stream's ``start`` message, e.g. an MR slice's
``n_phases`` and ``slice_index``; empty when the stream sent no start). Stages marked ``sheddable`` are not run on a frame whose controls say
``analyse=False``; their outputs are ``None`` and the frame is flagged
``analysis_skipped``. A stage may return ``flags`` (collected, not wired); a stage that
finds the frame unusable raises :class:`FrameRejected`.

Per beat: a frame stage that sees a cardiac cycle close writes a :class:`BeatBoundary`
under the value name ``beat_closed``. For each of the app's :class:`BeatStage` s the
stream has a :class:`BeatBuffer` that has kept, for each frame since the previous
end-diastole, the values that stage asked for (``keeps``); the beat stages then run once
on those frames (:class:`BeatFrames`) and write the fields of the ``beat`` message. A beat
stage that measures across streams (an MR stack's slices) may also send messages of its
own kind after the beat (``sends``; e.g. ``wall_motion``), whose fields the app declares
in ``message_fields``.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from streamer import __version__
from streamer.budget import FULL, FrameControls
from streamer.io.protocol import BEAT_KEYS, RESULT_KEYS, BeatMessage, FrameMessage, Message

#: values every pipeline starts with, before the first stage runs.
SOURCE_VALUES = ("frame", "controls", "stream_meta")
#: the value a frame stage writes when a cardiac cycle closes (a BeatBoundary or None)
BEAT_CLOSED = "beat_closed"
#: the key under which a beat stage returns the messages it sends after the beat
SEND = "send"


class FrameRejected(Exception):
    """This frame cannot be processed (the side-car answers with an error and goes on)."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


class PipelineWiringError(ValueError):
    """The stages do not fit together (raised when the pipeline is built, not per frame)."""


# --------------------------------------------------------------------------
# declared fields


#: JSON types a declared field may have; ``array`` travels as an array part of the message
FIELD_TYPES = ("number", "integer", "string", "boolean", "object", "list", "array")


@dataclass(frozen=True)
class Field:
    """One field an app writes into its result (or beat) messages.

    ``name`` is the key in the message header and carries the unit (``gls_pct``,
    ``points_mm``, ``duration_s``); ``type`` is one of :data:`FIELD_TYPES`; ``doc`` says
    what it is in one line. A field of type ``array`` is sent as an array part of the
    message (docs/protocol.md), not in the header."""

    name: str
    type: str
    doc: str

    def __post_init__(self):
        if self.type not in FIELD_TYPES:
            raise ValueError(f"field {self.name!r}: type {self.type!r} is not one of "
                             f"{FIELD_TYPES}")

    def declaration(self) -> dict:
        return {"name": self.name, "type": self.type, "doc": self.doc}


# --------------------------------------------------------------------------
# frame stages and the pipeline


class Stage(ABC):
    """One step of the per-frame pipeline.

    Subclasses set ``name``, ``inputs`` and ``outputs`` and implement :meth:`process`,
    which receives the inputs as keyword arguments and returns a dict holding every
    declared output (and optionally ``flags``). A stage instance belongs to one stream:
    it may keep that stream's state in attributes."""

    name: ClassVar[str]
    inputs: ClassVar[tuple[str, ...]] = ()
    outputs: ClassVar[tuple[str, ...]] = ()
    #: may be left out on a frame when the live side-car sheds work (streamer.budget)
    sheddable: ClassVar[bool] = False

    @abstractmethod
    def process(self, **inputs: Any) -> dict[str, Any]:
        """Compute this stage's outputs for one frame."""


@dataclass
class FrameOutcome:
    """What a pipeline run produced for one frame."""

    values: dict[str, Any]
    latency_ms: dict[str, float]
    flags: list[str] = field(default_factory=list)


class Pipeline:
    """Stages in the order the frame meets them, checked once, timed per frame."""

    def __init__(self, stages: Sequence[Stage]):
        self.stages = list(stages)
        available = set(SOURCE_VALUES)
        for stage in self.stages:
            missing = [name for name in stage.inputs if name not in available]
            if missing:
                raise PipelineWiringError(
                    f"stage {stage.name!r} reads {missing}, which no earlier stage writes "
                    f"(available: {sorted(available)})")
            twice = [name for name in stage.outputs if name in available]
            if twice:
                raise PipelineWiringError(f"stage {stage.name!r} writes {twice}, which an "
                                          "earlier stage already writes")
            available.update(stage.outputs)
        names = [stage.name for stage in self.stages]
        if len(set(names)) != len(names):
            raise PipelineWiringError(f"stage names must be unique, got {names}")
        self.values_written = frozenset(available)

    def __call__(self, frame: FrameMessage, controls: FrameControls = FULL,
                 stream_meta: dict | None = None) -> FrameOutcome:
        values: dict[str, Any] = {"frame": frame, "controls": controls,
                                  "stream_meta": {} if stream_meta is None else stream_meta}
        latency_ms: dict[str, float] = {}
        flags: list[str] = []
        for stage in self.stages:
            # shed only work the gate let through: a gated frame still runs the stages,
            # which then reset their per-stream state (a gap in the analysis)
            if stage.sheddable and not controls.analyse and values.get("analyse", True):
                values.update(dict.fromkeys(stage.outputs))
                if "analysis_skipped" not in flags:
                    flags.append("analysis_skipped")
                continue
            t0 = time.perf_counter_ns()
            out = stage.process(**{name: values[name] for name in stage.inputs})
            latency_ms[stage.name] = (time.perf_counter_ns() - t0) / 1e6
            flags.extend(out.pop("flags", ()))
            missing = [name for name in stage.outputs if name not in out]
            if missing:
                raise RuntimeError(f"stage {stage.name!r} did not return {missing}")
            values.update(out)
        return FrameOutcome(values=values, latency_ms=latency_ms, flags=flags)


# --------------------------------------------------------------------------
# per-beat stages


@dataclass(frozen=True)
class BeatBoundary:
    """A cardiac cycle has closed: the frame stage that saw it says which one.

    ``index`` numbers the beats of the stream; ``ed_seq`` is the end-diastole that opened
    the beat and ``end_seq`` the one that closed it (the first frame of the next beat);
    ``fields`` are beat fields known when it closed (e.g. how ED was found)."""

    index: int
    ed_seq: int
    end_seq: int
    fields: dict = field(default_factory=dict)


@dataclass
class BeatFrames:
    """What a beat stage receives: the frames ``ed_seq`` .. ``end_seq`` (both included:
    the closing end-diastole comes last, as the beat's end) that kept values, their
    ``seqs`` and, per kept name, one value per frame."""

    stream: str
    boundary: BeatBoundary
    seqs: list[int]
    values: dict[str, list]
    #: the buffer lost frames of this beat (it ran over its bound)
    incomplete: bool = False


class BeatStage(ABC):
    """Runs once per closed beat on the frames of that beat.

    ``keeps`` names the per-frame values (outputs of the app's frame stages) the stream's
    :class:`BeatBuffer` of this stage keeps for it: a frame is kept when all of them are not
    ``None`` (each beat stage has its own buffer, so one stage's missing values do not
    cost another its frames).
    ``outputs`` are the beat fields it writes (declared in the app's ``beat_fields``);
    ``sends`` the kinds of the messages it may return, as a list under :data:`SEND`, to
    follow the beat message (declared in the app's ``message_fields``); ``max_frames``, when
    set, bounds its buffer below the app's ``max_beat_frames`` (a stage that keeps images)."""

    name: ClassVar[str]
    keeps: ClassVar[tuple[str, ...]] = ()
    outputs: ClassVar[tuple[str, ...]] = ()
    sends: ClassVar[tuple[str, ...]] = ()
    max_frames: ClassVar[int | None] = None

    @abstractmethod
    def process(self, beat: BeatFrames) -> dict[str, Any]:
        """The beat fields for one closed beat (every declared output)."""


class BeatBuffer:
    """The frames of the current beat that the beat stages asked to keep, bounded.

    Frames are kept from the last closed beat's end on (a beat's end-diastole is often
    confirmed a few frames after it, so the open beat's first frames must still be here
    when it closes). At most ``max_frames`` are kept: past that the oldest go, and the beat
    they belonged to is marked incomplete."""

    def __init__(self, keeps: Sequence[str], max_frames: int):
        if max_frames < 2:
            raise ValueError(f"max_frames must be >= 2, got {max_frames}")
        self.keeps = tuple(dict.fromkeys(keeps))
        self.max_frames = max_frames
        self._frames: deque[tuple[int, tuple]] = deque()
        self._lost_after: int | None = None  # seq of the newest frame pushed out

    def __len__(self) -> int:
        return len(self._frames)

    def keep(self, seq: int, values: dict[str, Any]) -> None:
        if not self.keeps:
            return
        kept = tuple(values.get(name) for name in self.keeps)
        if any(value is None for value in kept):
            return
        if len(self._frames) == self.max_frames:
            self._lost_after = self._frames.popleft()[0]
        self._frames.append((seq, kept))

    def close(self, stream: str, boundary: BeatBoundary) -> BeatFrames:
        """The frames of a closed beat; frames before its end are forgotten."""
        frames = [(seq, kept) for seq, kept in self._frames
                  if boundary.ed_seq <= seq <= boundary.end_seq]
        incomplete = self._lost_after is not None and self._lost_after >= boundary.ed_seq
        while self._frames and self._frames[0][0] < boundary.end_seq:
            self._frames.popleft()
        if self._lost_after is not None and self._lost_after < boundary.end_seq:
            self._lost_after = None
        return BeatFrames(stream=stream, boundary=boundary, seqs=[seq for seq, _ in frames],
                          values={name: [kept[i] for _, kept in frames]
                                  for i, name in enumerate(self.keeps)},
                          incomplete=incomplete)


# --------------------------------------------------------------------------
# apps


class App(ABC):
    """One modality's analysis: stages, roles, declared fields, gate, per-beat stages.

    Subclasses set the class attributes and implement :meth:`stages` (a fresh list of
    frame stages for one stream; stateful stages must be new instances, engines are
    shared). ``Config`` is the app's options dataclass; an instance is built with
    ``App(config, engines)`` where ``engines`` maps each of ``roles`` to a loaded engine."""

    name: ClassVar[str]
    #: the frame modalities routed to this app when no app is named (``"US"``, ``"MR"``)
    modalities: ClassVar[tuple[str, ...]] = ()
    #: the networks it runs (engines.roles): loaded once, shared by every stream
    roles: ClassVar[tuple[str, ...]] = ()
    #: the fields of its result messages
    result_fields: ClassVar[tuple[Field, ...]] = ()
    #: the fields of its beat messages (besides ``beat`` and ``ed_seq``, which every beat has)
    beat_fields: ClassVar[tuple[Field, ...]] = ()
    #: the fields of the other messages its beat stages send, by kind (``wall_motion``)
    message_fields: ClassVar[dict[str, tuple[Field, ...]]] = {}
    #: which frames are analysed, in words (the stage that decides writes ``analyse``)
    gate: ClassVar[str] = "every frame"
    #: the app's options (a frozen dataclass with defaults)
    Config: ClassVar[type] = type(None)
    #: frames a stream's beat buffer may hold (one beat and the confirmation lag)
    max_beat_frames: ClassVar[int] = 1024

    def __init__(self, config: Any = None, engines: dict[str, Any] | None = None):
        self.config = self.Config() if config is None else config
        self.engines = dict(engines or {})
        missing = [role for role in self.roles if role not in self.engines]
        if missing:
            raise ValueError(f"app {self.name!r} needs engines for {missing}")
        self._check_wiring()

    def _check_wiring(self) -> None:
        """The declarations and the stages fit together: checked once, at start-up, on a
        probe stream's stages (every stream gets stages of the same kinds)."""
        for kind, declared_fields in (("result", self.result_fields),
                                      ("beat", self.beat_fields)):
            names = [f.name for f in declared_fields]
            twice = sorted({name for name in names if names.count(name) > 1})
            if twice:
                raise PipelineWiringError(f"app {self.name!r} declares {kind} fields {twice} "
                                          "more than once")
        reserved = [f.name for f in self.result_fields if f.name in RESULT_KEYS] + [
            f.name for f in self.beat_fields if f.name in (*BEAT_KEYS, "ed_seq")]
        if reserved:
            raise PipelineWiringError(f"app {self.name!r} declares fields {reserved}, which "
                                      "every message of their kind has (docs/protocol.md)")
        written = Pipeline(self.stages()).values_written
        declared = {f.name for f in self.beat_fields}
        for stage in self.beat_stages():
            missing = [name for name in stage.keeps if name not in written]
            if missing:
                raise PipelineWiringError(f"beat stage {stage.name!r} keeps {missing}, which "
                                          "no frame stage writes")
            undeclared = [name for name in stage.outputs if name not in declared]
            if undeclared:
                raise PipelineWiringError(f"beat stage {stage.name!r} writes {undeclared}, "
                                          f"which app {self.name!r} does not declare")
            unsent = [kind for kind in stage.sends if kind not in self.message_fields]
            if unsent:
                raise PipelineWiringError(f"beat stage {stage.name!r} sends {unsent} "
                                          f"messages, whose fields app {self.name!r} does "
                                          "not declare")
        unwritten = [f.name for f in self.result_fields if f.name not in written]
        if unwritten:
            raise PipelineWiringError(f"app {self.name!r} declares result fields {unwritten} "
                                      "that no stage writes")

    @abstractmethod
    def stages(self) -> list[Stage]:
        """The frame stages for one new stream, in the order a frame meets them."""

    def beat_stages(self) -> list[BeatStage]:
        """The per-beat stages for one new stream (none by default)."""
        return []

    @classmethod
    def takes(cls, channels) -> bool:
        """Whether a stream of one of ``modalities`` whose frames carry these ``channels``
        (None: greyscale or RGB, or not said) is this app's; the routing asks each app in
        turn (streamer.apps)."""
        return True

    def warmup(self) -> None:  # noqa: B027 (optional hook)
        """Compile or load what the first frame would otherwise wait for."""

    def declaration(self) -> dict:
        """What a consumer needs to read this app's messages (sent in hello and start):
        its fields, and in ``engines`` how each of its networks runs (backend, precision,
        device, where the weights came from: the results' provenance)."""
        engines = {role: {key: getattr(self.engines[role], key, None)
                          for key in ("backend", "precision", "device", "origin",
                                      "weights_sha256")}
                   | {"max_batch": getattr(self.engines[role], "max_batch", 1)}
                   for role in self.roles}
        return {"name": self.name, "cardiostream_version": __version__,
                "modalities": list(self.modalities),
                "roles": list(self.roles), "gate": self.gate, "engines": engines,
                "result_fields": [f.declaration() for f in self.result_fields],
                "beat_fields": [f.declaration() for f in self.beat_fields],
                "message_fields": {kind: [f.declaration() for f in fields]
                                   for kind, fields in self.message_fields.items()}}

    def new_stream(self, stream: str, wrap=None, meta: dict | None = None) -> StreamApp:
        """Per-stream state: fresh stages (``wrap`` may replace some, e.g. a test hook);
        ``meta``: the stream's start metadata, which its stages read as ``stream_meta``."""
        stages = self.stages()
        pipeline = Pipeline(wrap(stages) if wrap is not None else stages)
        beat_stages = self.beat_stages()
        buffers = [BeatBuffer(stage.keeps, min(self.max_beat_frames,
                                               stage.max_frames or self.max_beat_frames))
                   for stage in beat_stages]
        return StreamApp(self, stream, pipeline, beat_stages, buffers, meta)


class StreamApp:
    """One stream's instance of an app: its stages (with their state) and beat buffer."""

    def __init__(self, app: App, stream: str, pipeline: Pipeline,
                 beat_stages: Sequence[BeatStage], beat_buffers: Sequence[BeatBuffer],
                 meta: dict | None = None):
        self.app, self.stream, self.pipeline = app, stream, pipeline
        self.meta = dict(meta or {})  # the start's metadata: the stages' stream_meta
        self.beat_stages = list(beat_stages)
        #: one per beat stage: a frame is kept for a stage when every value it keeps exists
        self.beat_buffers = list(beat_buffers)
        # the declared result fields, split once: header fields and array parts
        self._header_fields = tuple(f.name for f in app.result_fields if f.type != "array")
        self._array_fields = tuple(f.name for f in app.result_fields if f.type == "array")
        self._beat_fields = frozenset(f.name for f in app.beat_fields)
        self._beat_array_fields = tuple(f.name for f in app.beat_fields if f.type == "array")

    def __call__(self, frame: FrameMessage, controls: FrameControls = FULL) -> FrameOutcome:
        return self.pipeline(frame, controls, self.meta)

    def fields(self, outcome: FrameOutcome) -> dict[str, Any]:
        """The declared result fields of a frame's outcome that go in the header."""
        values = outcome.values
        return {name: values.get(name) for name in self._header_fields}

    def arrays(self, outcome: FrameOutcome) -> dict[str, Any]:
        """The declared ``array`` fields of a frame's outcome (sent as array parts); those
        not computed for this frame are left out."""
        values = outcome.values
        return {name: values[name] for name in self._array_fields
                if values.get(name) is not None}

    def beat_messages(self, frame: FrameMessage, outcome: FrameOutcome) -> list[Message]:
        """Keep what the beat stages need; when this frame closed a beat, run them: the
        beat message, followed by what the stages send (none when no beat closed)."""
        if not self.beat_stages:
            return []
        for buffer in self.beat_buffers:
            buffer.keep(frame.seq, outcome.values)
        boundary = outcome.values.get(BEAT_CLOSED)
        if boundary is None:
            return []
        undeclared = [name for name in boundary.fields if name not in self._beat_fields]
        if undeclared:
            raise RuntimeError(f"the beat boundary writes {undeclared}, which app "
                               f"{self.app.name!r} does not declare as beat fields")
        fields: dict[str, Any] = {"ed_seq": boundary.ed_seq, **boundary.fields}
        incomplete = False
        sent: list[Message] = []
        for stage, buffer in zip(self.beat_stages, self.beat_buffers):
            frames = buffer.close(frame.stream, boundary)
            incomplete |= frames.incomplete
            t0 = time.perf_counter_ns()
            out = dict(stage.process(frames))
            outcome.latency_ms[f"beat:{stage.name}"] = (time.perf_counter_ns() - t0) / 1e6
            missing = [name for name in stage.outputs if name not in out]
            if missing:
                raise RuntimeError(f"beat stage {stage.name!r} did not return {missing}")
            messages = out.pop(SEND, [])
            stray = [m.kind for m in messages if m.kind not in stage.sends]
            if stray:
                raise RuntimeError(f"beat stage {stage.name!r} sent {stray} messages; it "
                                   f"declares {list(stage.sends)}")
            sent += messages
            fields.update(out)
        if incomplete:
            fields["flags"] = [*fields.get("flags", ()), "beat_incomplete"]
        # declared array fields travel as array parts; those not computed are left out
        arrays = {name: value for name in self._beat_array_fields
                  if (value := fields.pop(name, None)) is not None}
        return [BeatMessage(stream=frame.stream, beat=boundary.index, fields=fields,
                            arrays=arrays), *sent]
