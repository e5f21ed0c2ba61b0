"""Dynamic batching: frames of different streams that reach a network together run through
it as one batch.

The side-car's worker takes the frames of up to ``max_batch`` streams that wait at the same
time (a *round*) and runs each stream's app on its frame in a thread of its own. Every
network of the apps is a :class:`BatchedEngine`: an engine per batch size 1..max_batch
(each compiled for its fixed shape), behind the one-frame call the stages already make::

    group = BatchGroup(max_wait_ms=2.0)
    seg = BatchedEngine({1: seg1, 2: seg2, 3: seg3}, group)     # batched_engines() builds them
    with group.round([{"seg", "flow"}, {"seg", "flow"}]) as members:   # the worker
        # each frame's thread:  with group.member(members[k]): app(frame)  -> seg(x) ...

A call from a member of a round waits until every other member that may still call this
network (its app runs it, it has not called it yet and has not finished) has called, or
until ``max_wait_ms`` has passed since the call -- the bound that keeps a frame inside its
budget when the members' stages do not line up. The first waiting caller leads: it stacks
the waiting inputs (up to ``max_batch``, oldest first), runs the engine of that batch size
with the group's lock released, and hands each caller its row (or the engine's exception,
which each caller raises). Outside a round (``analyze``, tests, a side-car with
``--max-batch 1``) a call runs at once at batch 1.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from engines.spec import NetSpec, TensorSpec


def with_batch(spec: NetSpec, batch: int) -> NetSpec:
    """``spec`` with batch size ``batch`` in place of 1 on its input and output."""
    def tensor(t: TensorSpec) -> TensorSpec:
        return replace(t, shape=(batch, *t.shape[1:]))

    return replace(spec, input=tensor(spec.input), output=tensor(spec.output))


@dataclass(eq=False)
class Member:
    """One frame of a round: the networks its app may run, those it has called, and the
    batch size each of its calls ran at."""

    roles: frozenset[str] | None = None   # None: any network
    called: set[str] = field(default_factory=set)
    batch: dict[str, int] = field(default_factory=dict)
    done: bool = False

    def may_call(self, role: str) -> bool:
        return not self.done and role not in self.called and (self.roles is None or role in self.roles)


@dataclass(eq=False)
class _Request:
    x: np.ndarray
    member: Member
    out: np.ndarray | None = None
    error: BaseException | None = None
    done: bool = False


class BatchGroup:
    """The rounds of one worker and the lock every batched engine of the group shares."""

    def __init__(self, max_wait_ms: float = 2.0):
        if not max_wait_ms >= 0:
            raise ValueError(f"max_wait_ms must be >= 0, got {max_wait_ms}")
        self.max_wait_s = max_wait_ms / 1e3
        self.cv = threading.Condition()
        self._members: list[Member] = []
        self._local = threading.local()

    @contextmanager
    def round(self, roles: Sequence[frozenset[str] | set[str] | None]):
        """A round of ``len(roles)`` members, registered at once (before any of them runs),
        each with the networks its app may call; yields the members."""
        members = [Member(None if r is None else frozenset(r)) for r in roles]
        with self.cv:
            self._members.extend(members)
        try:
            yield members
        finally:
            with self.cv:
                for m in members:
                    m.done = True
                self._members = [m for m in self._members if not m.done]
                self.cv.notify_all()

    @contextmanager
    def member(self, member: Member):
        """The calling thread runs ``member``'s frame; when it leaves, the member is done
        (a network's leader stops waiting for it)."""
        self._local.member = member
        try:
            yield member
        finally:
            self._local.member = None
            with self.cv:
                member.done = True
                self.cv.notify_all()

    def current(self) -> Member | None:
        return getattr(self._local, "member", None)

    def others_may_call(self, role: str) -> bool:
        return any(m.may_call(role) for m in self._members)


class BatchedEngine:
    """An engine of one role at batch sizes 1..max_batch, called one frame at a time (see
    the module docstring). Looks like the batch-1 engine to the stages (``spec``,
    ``backend``, ``precision``, ... are its)."""

    def __init__(self, engines: Mapping[int, Any], group: BatchGroup):
        sizes = sorted(engines)
        if not sizes or sizes != list(range(1, len(sizes) + 1)):
            raise ValueError(f"engines for batch sizes 1..N are needed, got {sizes}")
        self.engines = dict(engines)
        self.max_batch = sizes[-1]
        self.group = group
        self._pending: list[_Request] = []
        self._leading = False
        self.batches_run = 0

    def __getattr__(self, name: str) -> Any:   # spec, backend, precision, device, origin, ...
        if name.startswith("__") or name == "engines":   # (copy, pickle: before __init__)
            raise AttributeError(name)
        return getattr(self.engines[1], name)

    @property
    def role(self) -> str:
        return self.engines[1].spec.role

    def __call__(self, x: np.ndarray) -> np.ndarray:
        member = self.group.current()
        if member is None:
            with self.group.cv:   # a lone caller; the group's lock keeps engines single-use
                return self.engines[1](x)
        x = self.engines[1].check_input(x)
        cv, role = self.group.cv, self.role
        with cv:
            request = _Request(x, member)
            self._pending.append(request)
            member.called.add(role)
            cv.notify_all()
            deadline = time.monotonic() + self.group.max_wait_s
            while not request.done:
                if self._leading:
                    cv.wait()
                    continue
                self._leading = True
                try:
                    self._lead(deadline)
                finally:
                    self._leading = False
                    cv.notify_all()
        if request.error is not None:
            raise request.error
        return request.out

    def _lead(self, deadline: float) -> None:
        """Wait for the others (lock held), run one batch (lock released), hand out rows."""
        cv, role = self.group.cv, self.role
        while len(self._pending) < self.max_batch and self.group.others_may_call(role):
            left = deadline - time.monotonic()
            if left <= 0:
                break
            cv.wait(left)
        batch, self._pending = self._pending[:self.max_batch], self._pending[self.max_batch:]
        cv.release()
        try:
            try:
                out = self.engines[len(batch)](np.concatenate([r.x for r in batch]))
                error = None
            except Exception as exc:  # every caller of the batch gets it
                out, error = None, exc
        finally:
            cv.acquire()
        self.batches_run += 1
        for i, r in enumerate(batch):
            r.out = None if out is None else out[i:i + 1].copy()
            r.error, r.done = error, True
            r.member.batch[role] = len(batch)


def batched_engines(engines_by_size: Mapping[str, Mapping[int, Any]], group: BatchGroup
                    ) -> dict[str, BatchedEngine]:
    """One :class:`BatchedEngine` per role of ``{role: {batch size: engine}}``."""
    return {role: BatchedEngine(sizes, group) for role, sizes in engines_by_size.items()}
