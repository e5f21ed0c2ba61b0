"""The app framework (streamer.app): pipeline wiring (checked at build time), stage timing,
shedding, declared fields, the per-stream beat buffer, App.new_stream's wiring checks and
the per-beat stages of a StreamApp."""

from __future__ import annotations

import numpy as np
import pytest

from streamer.app import (
    BEAT_CLOSED,
    SEND,
    SOURCE_VALUES,
    App,
    BeatBoundary,
    BeatBuffer,
    BeatFrames,
    BeatStage,
    Field,
    FrameOutcome,
    Pipeline,
    PipelineWiringError,
    Stage,
    StreamApp,
)
from streamer.apps.common import DebugDelay, Preprocess
from streamer.budget import FrameControls
from streamer.io.protocol import BeatMessage, FrameMessage, WallMotionMessage


def frame(pixels=None, seq=0, stream="s", **kw) -> FrameMessage:
    return FrameMessage(stream=stream, seq=seq, t_acq_ns=seq, modality=kw.pop("modality", "US"),
                        pixels=np.zeros((2, 2), np.uint8) if pixels is None else pixels,
                        spacing_mm=(0.3, 0.3), fps=50.0, **kw)


class Doubler(Stage):
    name = "doubler"
    inputs = ("image",)
    outputs = ("doubled",)

    def process(self, image):
        return {"doubled": image * 2, "flags": ["doubled"]}


class Forgetful(Stage):
    name = "forgetful"
    inputs = ("image",)
    outputs = ("something",)

    def process(self, image):
        return {}


# -- the pipeline ---------------------------------------------------------------------


def test_source_values_are_the_frame_its_controls_and_the_stream_meta():
    assert SOURCE_VALUES == ("frame", "controls", "stream_meta")


def test_wiring_is_checked_when_the_pipeline_is_built():
    with pytest.raises(PipelineWiringError, match="reads \\['image'\\]"):
        Pipeline([Doubler(), Preprocess()])
    with pytest.raises(PipelineWiringError, match="already writes"):
        Pipeline([Preprocess(), Preprocess()])
    pipeline = Pipeline([Preprocess(), Doubler()])
    assert {"frame", "controls", "stream_meta", "image", "doubled"} == pipeline.values_written


def test_stage_names_must_be_unique():
    class Other(Doubler):
        outputs = ("tripled",)

        def process(self, image):
            return {"tripled": image * 3}

    with pytest.raises(PipelineWiringError, match="unique"):
        Pipeline([Preprocess(), Doubler(), Other()])


def test_each_stage_is_timed_and_flags_are_collected():
    outcome = Pipeline([Preprocess(), DebugDelay(5), Doubler()])(
        frame(np.full((4, 4), 255, np.uint8)))
    assert isinstance(outcome, FrameOutcome)
    assert list(outcome.latency_ms) == ["preprocess", "debug_delay", "doubler"]
    assert outcome.latency_ms["debug_delay"] >= 4.5
    assert outcome.flags == ["doubled"]
    np.testing.assert_allclose(outcome.values["doubled"], 2.0)


def test_a_stage_that_forgets_an_output_is_a_bug_not_silence():
    with pytest.raises(RuntimeError, match="did not return"):
        Pipeline([Preprocess(), Forgetful()])(frame(np.zeros((2, 2), np.uint8)))


class Gate(Stage):
    name = "gate"
    inputs = ("frame",)
    outputs = ("analyse",)

    def __init__(self, analyse: bool):
        self.analyse = analyse

    def process(self, frame):
        return {"analyse": self.analyse}


class Heavy(Stage):
    name = "heavy"
    inputs = ("image", "analyse")
    outputs = ("heavy",)
    sheddable = True

    def __init__(self):
        self.calls = 0

    def process(self, image, analyse):
        self.calls += 1
        return {"heavy": "done" if analyse else "reset"}


def test_sheddable_stages_are_left_out_when_the_controls_say_so():
    heavy = Heavy()
    pipeline = Pipeline([Preprocess(), Gate(True), heavy])
    shed = pipeline(frame(), FrameControls(analyse=False))
    assert shed.values["heavy"] is None and shed.flags == ["analysis_skipped"]
    assert "heavy" not in shed.latency_ms and heavy.calls == 0
    full = pipeline(frame(), FrameControls(analyse=True))
    assert full.values["heavy"] == "done" and "analysis_skipped" not in full.flags
    assert heavy.calls == 1
    # a frame the gate already stopped still runs the stage (it resets its state)
    gated = Pipeline([Preprocess(), Gate(False), heavy])(frame(), FrameControls(analyse=False))
    assert gated.values["heavy"] == "reset" and gated.flags == [] and heavy.calls == 2


# -- declared fields ------------------------------------------------------------------


def test_a_field_has_one_of_the_json_types():
    field = Field("gls_pct", "number", "GLS, %")
    assert field.declaration() == {"name": "gls_pct", "type": "number", "doc": "GLS, %"}
    for kind in ("number", "integer", "string", "boolean", "object", "list", "array"):
        Field("x", kind, "")
    with pytest.raises(ValueError, match="'float' is not one of"):
        Field("gls_pct", "float", "GLS, %")


# -- the beat buffer ------------------------------------------------------------------


def test_beat_buffer_keeps_only_frames_with_every_kept_value():
    buffer = BeatBuffer(["a", "b", "a"], max_frames=10)
    assert buffer.keeps == ("a", "b")  # each name once, in order
    buffer.keep(0, {"a": 1, "b": 2, "c": None})
    buffer.keep(1, {"a": 1, "b": None})
    buffer.keep(2, {"a": None, "b": 2})
    buffer.keep(3, {"b": 2})  # a value not written at all counts as None
    buffer.keep(4, {"a": 0, "b": False})  # falsy is not None: kept
    assert len(buffer) == 2
    beat = buffer.close("s", BeatBoundary(index=0, ed_seq=0, end_seq=4))
    assert beat.seqs == [0, 4]
    assert beat.values == {"a": [1, 0], "b": [2, False]}
    assert not beat.incomplete


def test_a_beat_buffer_without_keeps_keeps_nothing():
    buffer = BeatBuffer([], max_frames=4)
    buffer.keep(0, {"a": 1})
    assert len(buffer) == 0
    beat = buffer.close("s", BeatBoundary(0, 0, 0))
    assert beat.seqs == [] and beat.values == {}
    with pytest.raises(ValueError, match="max_frames"):
        BeatBuffer(["a"], max_frames=1)


def test_close_returns_the_beats_frames_and_forgets_those_before_its_end():
    buffer = BeatBuffer(["v"], max_frames=100)
    for seq in range(2, 15):
        buffer.keep(seq, {"v": seq * 10})
    boundary = BeatBoundary(index=0, ed_seq=4, end_seq=10, fields={"ed_source": "ecg"})
    beat = buffer.close("s", boundary)
    assert isinstance(beat, BeatFrames)
    assert (beat.stream, beat.boundary) == ("s", boundary)
    assert beat.seqs == list(range(4, 11))  # ed_seq .. end_seq, both included
    assert beat.values == {"v": [seq * 10 for seq in range(4, 11)]}
    assert not beat.incomplete
    # before end_seq: forgotten; the closing ED and what came after stay for the next beat
    assert len(buffer) == 5
    following = buffer.close("s", BeatBoundary(index=1, ed_seq=10, end_seq=14))
    assert following.seqs == [10, 11, 12, 13, 14]
    assert len(buffer) == 1


def test_a_full_beat_buffer_drops_its_oldest_frames_and_marks_the_beat_incomplete():
    buffer = BeatBuffer(["v"], max_frames=4)
    for seq in range(10):
        buffer.keep(seq, {"v": seq})
    assert len(buffer) == 4  # bounded: 6..9
    beat = buffer.close("s", BeatBoundary(index=0, ed_seq=2, end_seq=8))
    assert beat.seqs == [6, 7, 8] and beat.values == {"v": [6, 7, 8]}
    assert beat.incomplete
    assert len(buffer) == 2  # 8 (the closing ED opens the next beat) and 9
    # the next beat lost nothing: it is complete again
    for seq in (10, 11):
        buffer.keep(seq, {"v": seq})
    assert len(buffer) == 4  # 8..11, at the bound
    nxt = buffer.close("s", BeatBoundary(index=1, ed_seq=8, end_seq=11))
    assert nxt.seqs == [8, 9, 10, 11] and not nxt.incomplete
    # and one that loses its own opening ED is incomplete
    for seq in range(12, 16):
        buffer.keep(seq, {"v": seq})  # 11..15: 11 goes
    last = buffer.close("s", BeatBoundary(index=2, ed_seq=11, end_seq=15))
    assert last.seqs == [12, 13, 14, 15] and last.incomplete


def test_frames_dropped_before_a_beat_began_do_not_make_it_incomplete():
    buffer = BeatBuffer(["v"], max_frames=3)
    for seq in range(6):
        buffer.keep(seq, {"v": seq})  # 0..2 pushed out; 3..5 kept
    beat = buffer.close("s", BeatBoundary(index=0, ed_seq=3, end_seq=5))
    assert beat.seqs == [3, 4, 5] and not beat.incomplete


# -- apps: new_stream wiring, fresh state per stream ------------------------------------------


class Counter(Stage):
    """Per-stream state: how many frames this stage instance has seen."""

    name = "counter"
    inputs = ("image",)
    outputs = ("count", "sample")

    def __init__(self):
        self.n = 0

    def process(self, image):
        self.n += 1
        return {"count": self.n, "sample": float(self.n)}


class Closer(Stage):
    """Closes a beat every ``period`` frames: frame k*period ends beat k-1."""

    name = "closer"
    inputs = ("frame", "count")
    outputs = (BEAT_CLOSED,)
    period = 3

    def process(self, frame, count):
        seq = frame.seq
        if seq > 0 and seq % self.period == 0:
            index = seq // self.period - 1
            return {BEAT_CLOSED: BeatBoundary(index=index, ed_seq=seq - self.period,
                                              end_seq=seq, fields={"how": "period"})}
        return {BEAT_CLOSED: None}


class SumSamples(BeatStage):
    name = "sum"
    keeps = ("sample",)
    outputs = ("total", "frames")

    def process(self, beat):
        return {"total": sum(beat.values["sample"]), "frames": len(beat.seqs)}


class CountingApp(App):
    name = "counting"
    modalities = ("US",)
    result_fields = (Field("count", "integer", "frames seen in this stream"),)
    beat_fields = (Field("total", "number", "sum of the beat's samples"),
                   Field("frames", "integer", "frames in the beat"),
                   Field("how", "string", "how the beat closed"))

    def stages(self):
        return [Preprocess(), Counter(), Closer()]

    def beat_stages(self):
        return [SumSamples()]


def test_new_stream_gives_each_stream_fresh_stages_and_its_own_beat_buffer():
    app = CountingApp()
    a, b = app.new_stream("a"), app.new_stream("b")
    assert isinstance(a, StreamApp) and (a.app, a.stream) == (app, "a")
    assert not {id(s) for s in a.pipeline.stages} & {id(s) for s in b.pipeline.stages}
    assert a.beat_buffers[0] is not b.beat_buffers[0]
    assert a.beat_stages[0] is not b.beat_stages[0]
    assert [buffer.keeps for buffer in a.beat_buffers] == [("sample",)]
    assert a.beat_buffers[0].max_frames == App.max_beat_frames
    counts = [a.fields(a(frame(seq=0, stream="a")))["count"],
              a.fields(a(frame(seq=1, stream="a")))["count"],
              b.fields(b(frame(seq=0, stream="b")))["count"]]
    assert counts == [1, 2, 1]


def test_new_stream_applies_the_wrap_hook_to_the_fresh_stages():
    seen = []

    def wrap(stages):
        seen.append([s.name for s in stages])
        return [stages[0], DebugDelay(0.0), *stages[1:]]

    instance = CountingApp().new_stream("s", wrap=wrap)
    assert seen == [["preprocess", "counter", "closer"]]
    assert [s.name for s in instance.pipeline.stages] == ["preprocess", "debug_delay",
                                                          "counter", "closer"]


def test_fields_are_the_declared_result_fields_only():
    instance = CountingApp().new_stream("s")
    outcome = instance(frame())
    assert instance.fields(outcome) == {"count": 1}
    assert "sample" in outcome.values  # written, but not a declared field


def test_a_closed_beat_runs_the_beat_stages_on_its_frames():
    instance = CountingApp().new_stream("s")
    beats = []
    for seq in range(7):
        outcome = instance(frame(seq=seq))
        for beat in instance.beat_messages(frame(seq=seq), outcome):
            beats.append((seq, beat, dict(outcome.latency_ms)))
    assert [seq for seq, _, _ in beats] == [3, 6]
    (_, first, latency), (_, second, _) = beats
    assert isinstance(first, BeatMessage) and (first.stream, first.beat) == ("s", 0)
    # frames 0..3 (samples 1..4), the boundary's fields, ed_seq
    assert first.fields == {"ed_seq": 0, "how": "period", "total": 10.0, "frames": 4}
    assert "beat:sum" in latency
    # frames 3..6 (samples 4..7): the closing ED of one beat opens the next
    assert second.beat == 1 and second.fields["total"] == 22.0 and second.fields["frames"] == 4


def test_a_beat_buffer_that_ran_over_flags_the_beat_incomplete():
    class SmallBuffer(CountingApp):
        max_beat_frames = 2

    instance = SmallBuffer().new_stream("s")
    for seq in range(4):
        outcome = instance(frame(seq=seq))
        messages = instance.beat_messages(frame(seq=seq), outcome)
    (beat,) = messages
    assert beat.fields["flags"] == ["beat_incomplete"]
    assert beat.fields["frames"] == 2


def test_an_app_without_beat_stages_never_sends_a_beat():
    class NoBeats(CountingApp):
        beat_fields = ()

        def beat_stages(self):
            return []

    instance = NoBeats().new_stream("s")
    for seq in range(7):
        assert instance.beat_messages(frame(seq=seq), instance(frame(seq=seq))) == []


def test_a_beat_stage_that_forgets_an_output_is_a_bug():
    class Forgets(SumSamples):
        def process(self, beat):
            return {"total": 0.0}

    class App2(CountingApp):
        def beat_stages(self):
            return [Forgets()]

    instance = App2().new_stream("s")
    for seq in range(3):
        instance.beat_messages(frame(seq=seq), instance(frame(seq=seq)))
    with pytest.raises(RuntimeError, match="did not return \\['frames'\\]"):
        instance.beat_messages(frame(seq=3), instance(frame(seq=3)))


class SendsStackSum(SumSamples):
    """A beat stage that also sends a message of its own kind after the beat."""

    sends = ("wall_motion",)

    def process(self, beat):
        out = super().process(beat)
        return {**out, SEND: [WallMotionMessage("stack", 0, fields={"total": out["total"]})]}


def test_a_beat_stage_sends_its_messages_after_the_beat_message():
    class App2(CountingApp):
        message_fields = {"wall_motion": (Field("total", "number", "sum"),)}

        def beat_stages(self):
            return [SendsStackSum()]

    app = App2()
    assert app.declaration()["message_fields"]["wall_motion"][0]["name"] == "total"
    instance = app.new_stream("s")
    sent = [instance.beat_messages(frame(seq=seq), instance(frame(seq=seq))) for seq in range(4)]
    assert [[m.kind for m in messages] for messages in sent] == [[], [], [], ["beat", "wall_motion"]]
    beat, stack = sent[-1]
    assert SEND not in beat.fields and stack.fields["total"] == beat.fields["total"]


def test_a_beat_stage_sending_undeclared_kinds_is_refused():
    class Undeclared(CountingApp):  # sends wall_motion, declares no fields for it
        def beat_stages(self):
            return [SendsStackSum()]

    with pytest.raises(PipelineWiringError, match="sends \\['wall_motion'\\] messages"):
        Undeclared()

    class Stray(SendsStackSum):
        sends = ()

    class App3(CountingApp):
        def beat_stages(self):
            return [Stray()]

    instance = App3().new_stream("s")
    for seq in range(3):
        instance.beat_messages(frame(seq=seq), instance(frame(seq=seq)))
    with pytest.raises(RuntimeError, match="sent \\['wall_motion'\\] messages"):
        instance.beat_messages(frame(seq=3), instance(frame(seq=3)))


def test_a_beat_stage_may_keep_fewer_frames_than_the_app():
    class Short(SumSamples):
        max_frames = 2

    class App4(CountingApp):
        def beat_stages(self):
            return [Short(), SumSamples()]

    instance = App4().new_stream("s")
    assert [b.max_frames for b in instance.beat_buffers] == [2, App4.max_beat_frames]


def test_a_beat_stage_keeping_a_value_no_stage_writes_is_a_wiring_error():
    class KeepsGhost(SumSamples):
        keeps = ("sample", "ghost")

    class App2(CountingApp):
        def beat_stages(self):
            return [KeepsGhost()]

    with pytest.raises(PipelineWiringError, match="keeps \\['ghost'\\]"):
        App2().new_stream("s")


def test_a_beat_stage_writing_an_undeclared_field_is_a_wiring_error():
    class App2(CountingApp):
        beat_fields = (Field("total", "number", "sum"),)  # "frames" not declared

    with pytest.raises(PipelineWiringError, match="writes \\['frames'\\].*does not declare"):
        App2().new_stream("s")


def test_a_declared_result_field_no_stage_writes_is_a_wiring_error():
    class App2(CountingApp):
        result_fields = (Field("count", "integer", ""), Field("gls_pct", "number", ""))

    with pytest.raises(PipelineWiringError, match="declares result fields \\['gls_pct'\\]"):
        App2().new_stream("s")


def test_stage_wiring_is_checked_when_a_stream_starts():
    class Miswired(CountingApp):
        def stages(self):
            return [Counter(), Preprocess(), Closer()]

    with pytest.raises(PipelineWiringError, match="reads \\['image'\\]"):
        Miswired().new_stream("s")


def test_an_app_needs_an_engine_for_each_of_its_roles_and_declares_itself():
    class Networked(CountingApp):
        roles = ("seg",)

    with pytest.raises(ValueError, match="needs engines for \\['seg'\\]"):
        Networked()
    app = Networked(None, {"seg": object()})
    assert app.config is None  # no Config: None
    declaration = app.declaration()
    assert declaration["name"] == "counting" and declaration["modalities"] == ["US"]
    assert declaration["roles"] == ["seg"] and declaration["gate"] == "every frame"
    assert declaration["result_fields"] == [{"name": "count", "type": "integer",
                                             "doc": "frames seen in this stream"}]
    assert [f["name"] for f in declaration["beat_fields"]] == ["total", "frames", "how"]


def test_each_beat_stage_keeps_its_own_frames():
    """A value one beat stage keeps is missing on some frames: the other stage still gets
    every frame of the beat."""

    class OddSample(Stage):
        name = "odd"
        inputs = ("count",)
        outputs = ("odd_sample",)

        def process(self, count):
            return {"odd_sample": float(count) if count % 2 else None}

    class CountOdd(BeatStage):
        name = "count_odd"
        keeps = ("odd_sample",)
        outputs = ("odd_frames",)

        def process(self, beat):
            return {"odd_frames": len(beat.seqs)}

    class TwoBeatStages(CountingApp):
        beat_fields = (*CountingApp.beat_fields,
                       Field("odd_frames", "integer", "frames with an odd count"))

        def stages(self):
            return [Preprocess(), Counter(), OddSample(), Closer()]

        def beat_stages(self):
            return [SumSamples(), CountOdd()]

    instance = TwoBeatStages().new_stream("s")
    assert [b.keeps for b in instance.beat_buffers] == [("sample",), ("odd_sample",)]
    for seq in range(4):
        outcome = instance(frame(seq=seq))
        messages = instance.beat_messages(frame(seq=seq), outcome)
    (beat,) = messages
    # frames 0..3 (counts 1..4): all four for the sum, counts 1 and 3 for the other
    assert beat.fields["frames"] == 4 and beat.fields["odd_frames"] == 2
