"""Latency budgets: which frames may still be processed, and how the live side-car sheds work.

A budget is the time a frame may take from when it was sent (``t_send_ns``; the receive
time when the sender did not stamp it) until its result is ready. With a budget set:

* every result whose frame ran over it is flagged ``over_budget``; a stage over its own
  budget (``--stage-budget flow=10``) is flagged ``over_budget:flow``;
* live mode only: a frame that is already older than the budget when the worker takes it
  is not processed (it could only give a late answer and delay the next frame). It is
  counted as ``stale``: in the next result (``dropped`` and the flag ``stale:N``) and in
  the stream's ``end`` message;
* live mode only: when frames keep running over, the :class:`BudgetController` steps down
  :data:`DEGRADATION_ORDER`, one step at a time, and back up when there is room again.

Degradation order (each step keeps the ones before it):

=================  ============================================================
step               what changes
=================  ============================================================
``full``           every stage on every frame
``view_every_4``   the view classifier runs on every 4th frame while its last
                   answers agree; the frames between reuse its answer
                   (flag ``view_reused``)
``half_rate``      segmentation, flow, tracking and strain run on every 2nd
                   frame; the frames between get a result with the view and
                   the flag ``analysis_skipped`` (no centreline or strain).
                   The flow then spans two frame intervals, which the tracker
                   takes with the exact time step
=================  ============================================================

Every result carries ``budget``: ``{"budget_ms", "level", "mode"}``, the step it was made
at. The result whose time tipped the balance carries the flag ``degraded:<mode>`` (one
step down) or ``recovered:<mode>`` (one step up); the frames after it are made at that
step. Lossless mode (replay, ``analyze``) never skips or degrades: its results are the
analysis of every frame, whatever the machine's load.

The controller's rule, over a sliding window of the last ``window_frames`` results at the
current step: step down when at least ``over_fraction`` of them ran over the budget; step
back up when none did and the projected time of a frame that runs every stage (the sum
of each stage's 90th percentile in the window, plus the median wait before the worker
took the frame) is below ``recover_fraction`` of the budget. The window restarts at each
change, so every step is held for at least half a window. Against flapping, a step reached
by stepping down is held for at least ``hold`` results before stepping back up; ``hold``
starts at one window, doubles (up to ``max_hold_windows`` windows) whenever a step down
comes less than two windows after a step up, and falls back to one window after
``max_hold_windows`` windows at full service.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np

from streamer.options import add_options, option


@dataclass(frozen=True)
class DegradationStep:
    """One step of the degradation order."""

    name: str
    #: classify the view on every k-th frame while the view is stable (1: every frame)
    view_every: int
    #: run segmentation .. strain on every k-th frame (1: every frame)
    analyse_every: int


#: the documented order, lightest last
DEGRADATION_ORDER = (
    DegradationStep("full", view_every=1, analyse_every=1),
    DegradationStep("view_every_4", view_every=4, analyse_every=1),
    DegradationStep("half_rate", view_every=4, analyse_every=2),
)


@dataclass(frozen=True)
class FrameControls:
    """What the pipeline runs on this frame (a source value, like ``frame``)."""

    #: reuse the last view answer for up to this many frames while it is stable
    view_every: int = 1
    #: False: skip the stages marked ``sheddable`` (segmentation .. strain) on this frame
    analyse: bool = True


#: every stage on every frame: the controls of lossless mode and of a side-car with no budget
FULL = FrameControls()


#: what the budget options do, for --help
BUDGET_HELP = (
    "A frame's time runs from its send time (t_send_ns; else its receive time) to its "
    "result. Results over it are flagged over_budget. Live mode also skips frames that are "
    "already older than the budget when the worker takes them (counted as stale) and, when "
    "frames keep running over, sheds work in this order: view classifier on every 4th "
    "frame while the view is stable, then segmentation/flow/tracking/strain on every 2nd "
    "frame; it steps back when there is room (docs/architecture.md).")


def add_budget_options(parser) -> None:
    """The budget options (:class:`BudgetConfig`) in a group of their own."""
    add_options(parser.add_argument_group("latency budget", BUDGET_HELP), BudgetConfig)


def parse_stage_budget(text: str) -> tuple[str, float]:
    """"flow=10" -> ("flow", 10.0)."""
    stage, sep, ms = text.partition("=")
    try:
        value = float(ms)
    except ValueError:
        sep = ""
    if not sep or not stage:
        raise ValueError("expected STAGE=MS, e.g. flow=10")
    return stage, value


@dataclass(frozen=True)
class BudgetConfig:
    """``serve --budget-ms``, ``--stage-budget``, ``--no-degrade``."""

    #: send (or receive) -> result, ms; None: no budget
    frame_ms: float | None = option(
        None, "latency budget per frame in ms (default: none)", flag="--budget-ms",
        metavar="MS")
    #: (stage, ms) pairs: flag a stage that takes longer (``over_budget:<stage>``)
    stage_ms: tuple[tuple[str, float], ...] = option(
        (), "flag results whose STAGE (e.g. flow) took longer than MS (over_budget:STAGE)",
        flag="--stage-budget", metavar="STAGE=MS", parse=parse_stage_budget,
        format=lambda item: f"{item[0]}={item[1]}")
    #: live mode: step down the degradation order when frames keep running over
    degrade: bool = option(True, "live mode: flag and skip stale frames, but never shed work",
                           flag="--no-degrade")
    window_frames: int = 20
    over_fraction: float = 0.1
    recover_fraction: float = 0.8
    #: the longest hold before stepping back up, in windows (see the module's docstring)
    max_hold_windows: int = 8

    def __post_init__(self):
        if self.frame_ms is not None and not self.frame_ms > 0:
            raise ValueError(f"the frame budget must be > 0 ms, got {self.frame_ms}")
        for stage, ms in self.stage_ms:
            if not ms > 0:
                raise ValueError(f"the budget of stage {stage!r} must be > 0 ms, got {ms}")
        if self.window_frames < 4:
            raise ValueError(f"window_frames must be >= 4, got {self.window_frames}")
        if not 0 < self.over_fraction <= 1 or not 0 < self.recover_fraction <= 1:
            raise ValueError("over_fraction and recover_fraction must be in (0, 1]")

    @property
    def enabled(self) -> bool:
        return self.frame_ms is not None or bool(self.stage_ms)


@dataclass
class _Sample:
    over: bool
    wait_ms: float
    stage_ms: dict[str, float]


class BudgetController:
    """Steps the live side-car along :data:`DEGRADATION_ORDER` from the results it sees.

    Per frame: :meth:`next_controls` before the pipeline runs, :meth:`observe` after.
    """

    def __init__(self, config: BudgetConfig, order: tuple[DegradationStep, ...] = DEGRADATION_ORDER):
        if config.frame_ms is None:
            raise ValueError("a BudgetController needs a frame budget (frame_ms)")
        self.config = config
        self.order = order
        self.level = 0
        self.changes = 0
        self._window: deque[_Sample] = deque(maxlen=config.window_frames)
        self._frame = 0
        self._at_step = 0  # results observed since the last change
        self._last_change = ""
        self.hold = config.window_frames  # results to wait at a step before stepping up

    @property
    def step(self) -> DegradationStep:
        return self.order[self.level]

    def reset(self) -> None:
        """A new stream starts at full service."""
        self.level, self._frame, self._at_step, self._last_change = 0, 0, 0, ""
        self.hold = self.config.window_frames
        self._window.clear()

    def next_controls(self, frame_at_step: int | None = None) -> FrameControls:
        """The controls for the next frame. ``frame_at_step`` counts the frame's own
        stream's frames since the step last changed (so that every stream, not every other
        frame of the worker, is analysed at ``half_rate``); without it the controller counts
        all frames itself (one stream)."""
        step = self.step
        if frame_at_step is None:
            frame_at_step, self._frame = self._frame, self._frame + 1
        analyse = frame_at_step % step.analyse_every == 0
        return FrameControls(view_every=step.view_every, analyse=analyse)

    def observe(self, frame_ms: float, wait_ms: float, stage_ms: dict[str, float]) -> str | None:
        """Record one result: its send -> result time, the part of it spent before the
        worker took the frame, and the stages that ran. Returns ``"degraded:<mode>"`` or
        ``"recovered:<mode>"`` when the step changes, else None."""
        budget, cfg = self.config.frame_ms, self.config
        self._window.append(_Sample(frame_ms > budget, wait_ms, dict(stage_ms)))
        self._at_step += 1
        window = self._window
        if self.level == 0 and self._at_step >= cfg.max_hold_windows * window.maxlen:
            self.hold = window.maxlen  # a long spell of full service: forget past flapping
        if len(window) < max(2, window.maxlen // 2):
            return None
        n_over = sum(s.over for s in window)
        if n_over >= cfg.over_fraction * window.maxlen and self.level + 1 < len(self.order):
            if self._last_change == "recovered" and self._at_step < 2 * window.maxlen:
                self.hold = min(2 * self.hold, cfg.max_hold_windows * window.maxlen)
            return self._change(+1, "degraded")
        if (self.level > 0 and len(window) == window.maxlen and n_over == 0
                and self._at_step >= self.hold
                and self.projected_full_ms() < cfg.recover_fraction * budget):
            return self._change(-1, "recovered")
        return None

    def projected_full_ms(self) -> float:
        """A frame that runs every stage, from the window: the sum of each stage's 90th
        percentile (over the frames it ran on) plus the median wait before the worker."""
        per_stage: dict[str, list[float]] = {}
        for sample in self._window:
            for stage, ms in sample.stage_ms.items():
                per_stage.setdefault(stage, []).append(ms)
        work = sum(float(np.percentile(v, 90)) for v in per_stage.values())
        return work + float(np.median([s.wait_ms for s in self._window]))

    def _change(self, delta: int, event: str) -> str:
        self.level += delta
        self.changes += 1
        self._at_step, self._last_change = 0, event
        self._window.clear()
        self._frame = 0  # the first frame at the new step runs every stage it keeps
        return f"{event}:{self.step.name}"

    def state(self) -> dict:
        return {"budget_ms": self.config.frame_ms, "level": self.level, "mode": self.step.name}
