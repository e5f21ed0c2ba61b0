"""Latency budgets: the controller's rule, stale frames, over-budget flags, the degradation
order and its recovery with a forced slow stage, and the publish-time telemetry."""

from __future__ import annotations

import time

import numpy as np
import pytest

from calib.datasets import random_echo_config
from calib.echo import make_echo_clip
from streamer.app import App
from streamer.apps import Analysis, AnalysisConfig, build_analysis
from streamer.apps.common import DebugDelay, DebugDelayConfig, Preprocess
from streamer.budget import DEGRADATION_ORDER, BudgetConfig, BudgetController
from streamer.io.protocol import EndMessage, FrameMessage, StartMessage
from streamer.io.sockets import FrameSender, ResultSubscriber, SenderConfig, SubscriberConfig
from streamer.processor import FrameProcessor, Received
from streamer.sidecar import SideCar, SideCarConfig

IMAGE = np.zeros((32, 32), np.uint8)


def stages_analysis(make_stages) -> Analysis:
    """An analysis whose one app runs ``make_stages()`` (fresh stages per stream)."""

    class StagesApp(App):
        name = "stages"

        def stages(self):
            return make_stages()

    return Analysis({"stages": StagesApp()}, forced="stages")


def frame(seq: int, stream: str = "s", pixels: np.ndarray = IMAGE, t_send_ns: int | None = None,
          **kw) -> FrameMessage:
    now = time.time_ns()
    return FrameMessage(stream=stream, seq=seq, t_acq_ns=int(seq * 2e7), modality="US",
                        pixels=pixels, spacing_mm=(0.3, 0.3), fps=50.0,
                        t_send_ns=now if t_send_ns is None else t_send_ns, **kw)


# -- the controller ----------------------------------------------------------------


def test_controller_steps_down_on_overruns_and_back_up_with_room():
    c = BudgetController(BudgetConfig(frame_ms=20.0, window_frames=8))
    assert c.step.name == "full" and c.next_controls().analyse
    changes = [c.observe(30.0, 0.0, {"flow": 25.0}) for _ in range(4)]
    assert changes == [None, None, None, "degraded:view_every_4"]
    changes = [c.observe(30.0, 0.0, {"flow": 25.0}) for _ in range(4)]
    assert changes[-1] == "degraded:half_rate" and c.level == 2
    assert [c.next_controls().analyse for _ in range(4)] == [True, False, True, False]
    # the lightest step holds while frames still run over
    assert all(c.observe(30.0, 0.0, {"flow": 25.0}) is None for _ in range(8))
    # room again: a full window with nothing over and a projected full frame < 0.8 x budget
    changes = [c.observe(10.0, 0.5, {"view": 1.0, "flow": 8.0}) for _ in range(8)]
    assert changes[-1] == "recovered:view_every_4" and changes[:-1] == [None] * 7
    changes = [c.observe(10.0, 0.5, {"view": 1.0, "flow": 8.0}) for _ in range(8)]
    assert changes[-1] == "recovered:full" and c.changes == 4


def test_controller_holds_longer_after_flapping():
    c = BudgetController(BudgetConfig(frame_ms=20.0, window_frames=8))
    over, fine = (30.0, 0.0, {"flow": 25.0}), (10.0, 0.5, {"view": 1.0, "flow": 8.0})
    for _ in range(4):
        c.observe(*over)
    assert c.level == 1 and c.hold == 8
    assert [c.observe(*fine) for _ in range(8)][-1] == "recovered:full"
    # over budget again right after stepping up: the next hold doubles
    assert [c.observe(*over) for _ in range(4)][-1] == "degraded:view_every_4"
    assert c.hold == 16
    changes = [c.observe(*fine) for _ in range(16)]
    assert changes[:15] == [None] * 15 and changes[15] == "recovered:full"
    # a long spell at full service forgets the flapping
    for _ in range(8 * 8):
        c.observe(*fine)
    assert c.hold == 8 and c.level == 0


def test_controller_does_not_recover_when_a_full_frame_would_not_fit():
    c = BudgetController(BudgetConfig(frame_ms=20.0, window_frames=8))
    for _ in range(4):
        c.observe(30.0, 0.0, {"flow": 25.0})
    assert c.level == 1
    # under budget now, but view 2 + segment 6 + flow 9 = 17 ms > 0.8 x 20 ms: stay
    for _ in range(16):
        assert c.observe(15.0, 0.0, {"view": 2.0, "segment": 6.0, "flow": 9.0}) is None
    assert c.level == 1


def test_budget_config_refuses_nonsense():
    with pytest.raises(ValueError, match="> 0 ms"):
        BudgetConfig(frame_ms=0)
    with pytest.raises(ValueError, match="stage 'flow'"):
        BudgetConfig(stage_ms=(("flow", -1.0),))
    with pytest.raises(ValueError, match="frame budget"):
        BudgetController(BudgetConfig())
    assert [s.name for s in DEGRADATION_ORDER] == ["full", "view_every_4", "half_rate"]


# -- the processor: flags, stale frames -----------------------------------------------------


def test_over_budget_flags_and_budget_field_in_lossless_mode():
    analysis = stages_analysis(lambda: [Preprocess(), DebugDelay(15.0)])
    processor = FrameProcessor(analysis, budget=BudgetConfig(
        frame_ms=10.0, stage_ms=(("debug_delay", 5.0), ("preprocess", 1000.0))))
    now = time.time_ns()
    [result] = processor.handle(Received(frame(0, t_send_ns=now), now), t_take_ns=now)
    assert result.flags == ["over_budget", "over_budget:debug_delay"]
    assert result.budget == {"budget_ms": 10.0, "level": 0, "mode": "full"}
    # lossless (not live): an old frame is still processed, and no step is ever shed
    old = now - 50_000_000
    [late] = processor.handle(Received(frame(1, t_send_ns=old), now), t_take_ns=now)
    assert late.kind == "result" and "over_budget" in late.flags
    assert processor.controller is None


def test_live_processor_skips_frames_older_than_the_budget_and_reports_them():
    processor = FrameProcessor(stages_analysis(lambda: [Preprocess()]),
                               budget=BudgetConfig(frame_ms=20.0), live=True)
    processor.handle(Received(StartMessage("s"), 0))
    now = time.time_ns()
    assert processor.handle(Received(frame(0, t_send_ns=now - 30_000_000), now),
                            dropped=2, t_take_ns=now) == []
    assert processor.handle(Received(frame(1, t_send_ns=now - 25_000_000), now),
                            t_take_ns=now) == []
    [result] = processor.handle(Received(frame(2, t_send_ns=now), now), dropped=1, t_take_ns=now)
    assert result.dropped == 5 and {"dropped:3", "stale:2"} <= set(result.flags)
    [end] = processor.handle(Received(EndMessage("s", 3), now))
    assert (end.meta["processed"], end.meta["dropped"], end.meta["stale"]) == (1, 3, 2)
    # a send time from a clock far from ours is not trusted: the budget counts from receipt
    skewed = frame(3, t_send_ns=now - 3600 * 10**9)
    [kept] = processor.handle(Received(skewed, now), t_take_ns=now)
    assert kept.kind == "result"


def test_a_stream_starting_beside_another_does_not_reset_the_degradation_step():
    """The worker's load is shared by every stream: only a start with no other stream
    followed begins it afresh."""
    processor = FrameProcessor(stages_analysis(lambda: [Preprocess()]),
                               budget=BudgetConfig(frame_ms=20.0, window_frames=8), live=True)
    controller = processor.controller
    processor.handle(Received(StartMessage("a"), 0))
    for _ in range(4):
        controller.observe(30.0, 0.0, {"flow": 25.0})
    assert controller.level == 1
    processor.handle(Received(StartMessage("b"), 0))
    assert controller.level == 1
    processor.handle(Received(StartMessage("a"), 0))  # a restarts while b is followed
    assert controller.level == 1
    for name in ("a", "b"):
        processor.handle(Received(EndMessage(name), 0))
    processor.handle(Received(StartMessage("c"), 0))
    assert controller.level == 0


# -- a forced slow stage: the degradation order and the recovery -----------------------------


class Echo:
    """A held-out A4C phantom clip (test split), looped."""

    def __init__(self):
        clip = make_echo_clip(random_echo_config(2_000_003, view="a4c", rows=256, cols=256,
                                                 frames=50, fps=50.0))
        self.frames, self.spacing_mm = clip.frames, clip.spacing_mm

    def message(self, seq: int) -> FrameMessage:
        now = time.time_ns()
        return FrameMessage(stream="echo", seq=seq, t_acq_ns=int(seq * 2e7), modality="US",
                            pixels=self.frames[seq % len(self.frames)], spacing_mm=self.spacing_mm,
                            fps=50.0, t_send_ns=now, view="a4c")


def test_forced_slow_flow_degrades_in_order_and_recovers():
    """Frames 30-59 get 300 ms extra in the flow stage against a 200 ms budget (margins
    wide enough for a busy 2-core machine, where a normal frame takes 20-110 ms): the
    side-car first classifies the view on every 4th frame, then analyses every 2nd frame;
    when the delay ends it steps back to full service. Every step shows in the results."""
    delay = DebugDelayConfig(300.0, stage="flow", seqs=(30, 59))
    processor = FrameProcessor(build_analysis(AnalysisConfig(app="echo", debug_delay=delay)),
                               budget=BudgetConfig(frame_ms=200.0), live=True)
    clip = Echo()
    processor.handle(Received(StartMessage("echo"), time.time_ns()))
    results = []
    for seq in range(200):
        now = time.time_ns()
        out = processor.handle(Received(clip.message(seq), now), t_take_ns=now)
        results += [m for m in out if m.kind == "result"]
    assert [r.seq for r in results] == list(range(200))  # in-process: nothing goes stale
    changes = [(r.seq, f) for r in results for f in r.flags
               if f.startswith(("degraded:", "recovered:"))]
    assert [f for _, f in changes] == ["degraded:view_every_4", "degraded:half_rate",
                                       "recovered:view_every_4", "recovered:full"], changes
    assert 30 <= changes[0][0] < changes[1][0] < 60 <= changes[2][0] < changes[3][0]
    by_seq = {r.seq: r for r in results}
    for r in results:  # every result says the step it was made at
        assert r.budget["budget_ms"] == 200.0
        assert r.budget["mode"] == DEGRADATION_ORDER[r.budget["level"]].name
    half = [r for r in results if r.budget["mode"] == "half_rate"]
    skipped = [r for r in half if "analysis_skipped" in r.flags]
    assert skipped and len(skipped) in (len(half) // 2, (len(half) + 1) // 2)
    for r in skipped:  # shed stages: not timed, no centreline, the view still answered
        assert r.fields["points_mm"] is None and r.fields["gls_pct"] is None
        assert r.fields["view"] is not None
        assert "segment" not in r.latency_ms and "flow" not in r.latency_ms
    reused = [r for r in results if "view_reused" in r.flags]
    assert reused and all(r.budget["level"] >= 1 for r in reused)
    assert "view" not in reused[0].latency_ms or reused[0].latency_ms["view"] < 5
    # full service again at the end: every stage runs and the strain is back
    tail = [by_seq[s] for s in range(190, 200)]
    assert all(r.budget["level"] == 0 and r.fields["points_mm"] is not None for r in tail)
    assert all("analysis_skipped" not in r.flags and "view_reused" not in r.flags for r in tail)


# -- the live side-car over sockets -----------------------------------------------------------


def test_live_sidecar_never_processes_a_frame_older_than_the_budget_and_counts_every_drop():
    """A worker slower than the sender (25 ms per frame against a frame every 5 ms, budget
    20 ms): every frame is either answered, replaced (dropped) or skipped as stale; no
    answered frame was older than the budget when the worker took it; results carry the
    publish-time telemetry."""
    config = SideCarConfig(ingest="tcp://127.0.0.1:*", publish="tcp://127.0.0.1:*")
    analysis = stages_analysis(lambda: [Preprocess(), DebugDelay(25.0)])
    n = 150
    with SideCar(config, analysis, budget=BudgetConfig(frame_ms=20.0, degrade=False)) as sidecar, \
            ResultSubscriber(SubscriberConfig(sidecar.publish_endpoint)) as subscriber, \
            FrameSender(SenderConfig(sidecar.ingest_endpoint)) as sender:
        sender.send(StartMessage("live"))
        for seq in range(n):
            sender.send(frame(seq, "live"))
            time.sleep(0.005)
        sender.send(EndMessage("live", n))
        messages = list(subscriber.iter_until_end("live", timeout_s=30.0))
    results = [m for m in messages if m.kind == "result"]
    [end] = [m for m in messages if m.kind == "end"]
    meta = end.meta
    assert meta["processed"] == len(results) and meta["errors"] == 0
    assert meta["processed"] + meta["dropped"] + meta["stale"] == n
    assert meta["dropped"] > 0 and len(results) < n / 2
    for r in results:
        lat = r.latency_ms
        # the frame's age when the worker took it (queue runs from receipt, so it holds decode)
        assert lat["transport"] + lat["queue"] <= 20.0 + 1e-3
        assert lat["end_to_end"] == pytest.approx(lat["transport"] + lat["total"] + lat["publish"], abs=1e-3)
        assert r.t_publish_ns >= r.t_result_ns and "over_budget" in r.flags
    assert sum(r.dropped for r in results) <= meta["dropped"] + meta["stale"]


def test_live_serve_degrades_and_recovers_over_sockets(serve):
    """The same forced slow flow stage in a real `cardiostream serve` child, frames sent at
    50 fps over loopback: the degradation and the recovery come back in the results, and
    every frame sent is answered, dropped or stale."""
    # a slow frame holds the worker for ~320 ms while newer frames replace each other in the
    # inbox, so the slow stretch must be long enough for a few answers at each step
    sidecar = serve("--budget-ms", "200", "--debug-delay-ms", "300", "--debug-delay-stage",
                    "flow", "--debug-delay-seqs", "30:229")
    clip, n = Echo(), 420
    with ResultSubscriber(SubscriberConfig(sidecar.ready["publish"])) as subscriber, \
            FrameSender(SenderConfig(sidecar.ready["ingest"])) as sender:
        sender.send(StartMessage("echo"))
        for seq in range(n):
            sender.send(clip.message(seq))
            time.sleep(0.02)
        sender.send(EndMessage("echo", n))
        messages = list(subscriber.iter_until_end("echo", timeout_s=60.0))
    results = [m for m in messages if m.kind == "result"]
    [end] = [m for m in messages if m.kind == "end"]
    assert end.meta["processed"] + end.meta["dropped"] + end.meta["stale"] + end.meta["errors"] == n
    changes = [f for r in results for f in r.flags if f.startswith(("degraded:", "recovered:"))]
    assert changes[:2] == ["degraded:view_every_4", "degraded:half_rate"], changes
    assert "recovered:full" in changes and results[-1].budget["mode"] == "full"
    assert any("analysis_skipped" in r.flags for r in results)
    for r in results:  # nothing older than the budget was processed
        lat = r.latency_ms
        assert lat["transport"] + lat["queue"] <= 200.0 + 1e-3


def test_at_half_rate_every_stream_is_analysed_every_other_of_its_own_frames():
    """Two streams alternating in one live worker at half_rate: each stream's frames are
    analysed every other frame, not one stream always and the other never."""
    from streamer.app import Field, Stage

    class Sheddable(Stage):
        name = "work"
        inputs = ("image",)
        outputs = ("worked",)
        sheddable = True

        def process(self, image):
            return {"worked": True}

    class ShedApp(App):
        name = "shed"
        result_fields = (Field("worked", "boolean", "the sheddable stage ran"),)

        def stages(self):
            return [Preprocess(), Sheddable()]

    processor = FrameProcessor(Analysis({"shed": ShedApp()}, forced="shed"),
                               budget=BudgetConfig(frame_ms=1e6), live=True)
    controller = processor.controller
    controller.level = [s.name for s in DEGRADATION_ORDER].index("half_rate")
    worked = {"a": [], "b": []}
    for seq in range(6):
        for stream in ("a", "b"):
            [result] = processor.handle(Received(frame(seq, stream), time.time_ns()))
            worked[stream].append(result.fields["worked"] is True)
    assert worked == {"a": [True, False] * 3, "b": [True, False] * 3}
