"""engines.batching: the frames of a round that reach a network together run as one batch,
each caller gets its own row, nobody waits for a member that will not come, and an
engine's failure reaches every caller of its batch."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import torch

from engines.backends import EngineError, create_engine
from engines.backends.toy import toy_model, toy_spec
from engines.batching import BatchedEngine, BatchGroup, with_batch

SIZE = (16, 24)
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")  # the legacy ONNX export


class Recording:
    """A stand-in engine of one batch size: doubles its input, records each batch."""

    def __init__(self, batch: int, calls: list, fail: bool = False, role: str = "seg"):
        self.spec = with_batch(toy_spec(role, SIZE), batch)
        self.batch, self.calls, self.fail = batch, calls, fail
        self.backend = "recording"

    def check_input(self, x):
        assert x.shape == (1, *self.spec.input.shape[1:])
        return x

    def __call__(self, x):
        assert x.shape == self.spec.input.shape
        self.calls.append(x.shape[0])
        if self.fail:
            raise RuntimeError("engine broke")
        return 2 * x


def batched(max_batch: int, group: BatchGroup, calls: list, **kw) -> BatchedEngine:
    return BatchedEngine({b: Recording(b, calls, **kw) for b in range(1, max_batch + 1)}, group)


def run_round(group: BatchGroup, work: list, roles=None):
    """Each of ``work`` (a function of the member) in its own thread, as one round."""
    out: list = [None] * len(work)
    with group.round(roles or [None] * len(work)) as members:
        def run(k):
            with group.member(members[k]):
                try:
                    out[k] = work[k](members[k])
                except Exception as exc:  # noqa: BLE001 - handed to the test
                    out[k] = exc
        threads = [threading.Thread(target=run, args=(k,)) for k in range(len(work))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(10)
    return out, members


def frame(k: int) -> np.ndarray:
    return np.full((1, 1, *SIZE), float(k), np.float32)


def test_a_round_runs_as_one_batch_and_each_caller_gets_its_row():
    group, calls = BatchGroup(max_wait_ms=5_000), []
    engine = batched(4, group, calls)
    out, members = run_round(group, [lambda m, k=k: engine(frame(k)) for k in range(3)])
    assert calls == [3]   # everyone came: one batch of 3, no waiting for the deadline
    for k in range(3):
        np.testing.assert_array_equal(out[k], 2 * frame(k))
    assert [m.batch for m in members] == [{"seg": 3}] * 3


def test_more_callers_than_max_batch_run_in_several_batches():
    group, calls = BatchGroup(max_wait_ms=5_000), []
    engine = batched(2, group, calls)
    out, _ = run_round(group, [lambda m, k=k: engine(frame(k)) for k in range(5)])
    assert sorted(calls, reverse=True) == [2, 2, 1] and sum(calls) == 5
    for k in range(5):
        np.testing.assert_array_equal(out[k], 2 * frame(k))


def test_nobody_waits_for_a_member_that_will_not_call():
    """A member that finishes without calling, or whose app does not run the network,
    releases the others at once (the deadline here is far longer than the test)."""
    group, calls = BatchGroup(max_wait_ms=30_000), []
    engine = batched(4, group, calls)
    t0 = time.monotonic()
    out, _ = run_round(group, [lambda m: engine(frame(1)), lambda m: "no network",
                               lambda m: engine(frame(2))],
                       roles=[{"seg"}, {"seg"}, {"seg"}])
    assert out[1] == "no network" and sorted(calls) == [2]
    out, _ = run_round(group, [lambda m: engine(frame(1)), lambda m: time.sleep(0.2) or "mr"],
                       roles=[{"seg"}, {"mr"}])   # the second's app has no seg network
    assert calls[-1] == 1
    assert time.monotonic() - t0 < 10


def test_the_wait_is_bounded_when_the_others_never_come():
    """A member busy elsewhere: the caller runs alone after max_wait_ms."""
    group, calls = BatchGroup(max_wait_ms=20), []
    engine = batched(4, group, calls)
    release = threading.Event()
    out, members = run_round(group, [lambda m: engine(frame(1)),
                                     lambda m: release.wait(5) or engine(frame(2))])
    assert calls[0] == 1   # it did not wait 5 s for the second
    release.set()


def test_an_engine_failure_reaches_every_caller_of_its_batch():
    group, calls = BatchGroup(max_wait_ms=5_000), []
    engine = batched(3, group, calls, fail=True)
    out, _ = run_round(group, [lambda m, k=k: engine(frame(k)) for k in range(3)])
    assert calls == [3]
    assert all(isinstance(o, RuntimeError) and "engine broke" in str(o) for o in out)


def test_outside_a_round_a_call_runs_alone_at_batch_1():
    group, calls = BatchGroup(), []
    engine = batched(3, group, calls)
    np.testing.assert_array_equal(engine(frame(4)), 2 * frame(4))
    assert calls == [1]
    assert engine.spec.input.shape == (1, 1, *SIZE) and engine.backend == "recording"
    assert engine.max_batch == 3 and engine.role == "seg"


def test_engines_for_batch_sizes_1_to_n_are_needed():
    with pytest.raises(ValueError, match="1..N"):
        BatchedEngine({1: Recording(1, []), 3: Recording(3, [])}, BatchGroup())
    with pytest.raises(ValueError, match="max_wait_ms"):
        BatchGroup(max_wait_ms=-1)


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_a_batch_engine_answers_each_frame_as_the_batch_1_engine(backend, tmp_path, monkeypatch):
    monkeypatch.setenv("CARDIOSTREAM_CACHE", str(tmp_path))
    model, spec = toy_model("seg", seed=3), toy_spec("seg", SIZE)
    one = create_engine("seg", backend, model=model, spec=spec)
    three = create_engine("seg", backend, model=model, spec=spec, batch=3)
    assert three.spec.input.shape == (3, 1, *SIZE) and three.spec.output.shape[0] == 3
    x = np.random.default_rng(0).random((3, 1, *SIZE), dtype=np.float32)
    y = three(x)
    for k in range(3):
        np.testing.assert_allclose(y[k:k + 1], one(x[k:k + 1]), atol=1e-5)
    with torch.inference_mode():
        np.testing.assert_allclose(y, model(torch.from_numpy(x)).numpy(), atol=1e-4)


def test_batching_refuses_what_it_cannot_batch(tmp_path, monkeypatch):
    monkeypatch.setenv("CARDIOSTREAM_CACHE", str(tmp_path))
    model, spec = toy_model("seg", seed=3), toy_spec("seg", SIZE)
    path = tmp_path / "seg.onnx"
    torch.onnx.export(model, (torch.zeros(spec.input.shape),), str(path), dynamo=False,
                      input_names=[spec.input.name], output_names=[spec.output.name])
    with pytest.raises(EngineError, match="ONNX file runs at the batch size"):
        create_engine("seg", "onnxruntime", weights=path, spec=spec, batch=2)
    with pytest.raises(EngineError, match="int8 engines are calibrated at batch 1"):
        create_engine("seg", "onnxruntime", "int8", model=model, spec=spec, batch=2)
    with pytest.raises(EngineError, match="batch must be >= 1"):
        create_engine("seg", "onnxruntime", model=model, spec=spec, batch=0)
