"""Engine backends: each CPU backend matches eager torch on the same weights (tolerances in
engines.backends.tolerance), the call contract, and clear errors for what cannot run here.

Stand-in networks (engines.backends.toy) keep this fast; the shipped networks are checked
by `cardiostream engines check`.
"""

from __future__ import annotations

import importlib.util
import os
import sys

import numpy as np
import pytest
import torch

from engines.backends import (
    AUTO_CPU_BACKEND,
    EngineError,
    create_engine,
    get_threads,
    resolve_backend,
    set_threads,
)
from engines.backends.tolerance import (
    BF16_FLOW_EPE_PX,
    BF16_SEG_AGREEMENT,
    BF16_VIEW_TOP1,
    INT8_FLOW_EPE_PX,
    INT8_SEG_AGREEMENT,
    REL_TOL,
    compare,
)
from engines.backends.toy import toy_inputs, toy_model, toy_spec
from engines.spec import ROLES

SIZE = (32, 48)
CPU_BACKENDS = ("onnxruntime", "openvino")
HAS_TRT = importlib.util.find_spec("torch_tensorrt") is not None
HAS_CUDA = torch.cuda.is_available()


@pytest.fixture(scope="module", autouse=True)
def engine_cache(tmp_path_factory):
    """One engine cache for the test session (shared with the other engine tests)."""
    path = tmp_path_factory.getbasetemp() / "engine-cache"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CARDIOSTREAM_CACHE", str(path))
        yield path


@pytest.fixture(scope="module")
def nets():
    return {r: (toy_model(r), toy_spec(r, SIZE)) for r in ROLES}


def _outputs(engine, xs):
    return np.stack([engine(x[None]) for x in xs])


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("role", ROLES)
def test_fp32_matches_eager_torch(nets, role, backend):
    model, spec = nets[role]
    xs = toy_inputs(spec, 3, seed=7)
    ref = _outputs(create_engine(role, "torch", model=model, spec=spec), xs)
    engine = create_engine(role, backend, "fp32", model=model, spec=spec)
    out = _outputs(engine, xs)
    assert (engine.backend, engine.precision, engine.device) == (backend, "fp32", "cpu")
    assert out.dtype == np.float32 and out.shape == (3, *spec.output.shape)
    scale = max(1.0, float(np.abs(ref).max()))
    # stated fp32 tolerance: 1e-4 of the output scale (measured: ~1e-6)
    assert np.abs(out - ref).max() <= REL_TOL["fp32"] * scale
    assert compare(role, "fp32", ref, out)["ok"]


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_int8_within_stated_bounds(nets, backend):
    """Static INT8 (QDQ, per-channel) calibrated on 16 inputs, judged on 4 held-out ones."""
    for role in ("seg", "flow"):
        model, spec = nets[role]
        calib, held_out = toy_inputs(spec, 16, seed=1), toy_inputs(spec, 4, seed=2)
        ref = _outputs(create_engine(role, "torch", model=model, spec=spec), held_out)
        engine = create_engine(role, backend, "int8", model=model, spec=spec, calibration=calib)
        assert engine.precision == "int8"
        out = _outputs(engine, held_out)
        m = compare(role, "int8", ref, out)
        assert m["ok"], m
        if role == "seg":
            assert m["argmax_agreement"] >= INT8_SEG_AGREEMENT
        else:
            assert m["epe_to_ref_px"] <= INT8_FLOW_EPE_PX
        assert m["max_abs_diff"] > 0  # really quantised, not the fp32 graph


def _cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo") as f:
            return {w for line in f if line.startswith("flags") for w in line.split()}
    except OSError:
        return set()


HAS_BF16_CPU = bool({"avx512_bf16", "amx_bf16"} & _cpu_flags())


def test_openvino_says_bf16_where_the_cpu_has_it():
    """OpenVINO's capability list (which --precision bf16 trusts) agrees with the CPU's flags."""
    from engines.backends import openvino_backend

    assert openvino_backend.cpu_has_bf16() == HAS_BF16_CPU


def _bf16_check(role: str, n: int):
    """The shipped network of ``role`` on ``n`` held-out phantoms: bf16 on openvino and on
    torch against eager torch fp32."""
    from engines.backends import source_for
    from engines.cli import _inputs

    xs = _inputs(source_for(role).spec, "phantom", n)
    ref = _outputs(create_engine(role, "torch", threads=1), xs)
    out = []
    for backend in ("openvino", "torch"):
        engine = create_engine(role, backend, "bf16", threads=1)
        assert engine.precision == "bf16"
        m = compare(role, "bf16", ref, _outputs(engine, xs))
        assert m["max_abs_diff"] > 0  # really bf16, not the fp32 graph
        out.append(m)
    return out


@pytest.mark.skipif(not HAS_BF16_CPU, reason="this CPU has no AVX512-BF16 or AMX")
@pytest.mark.parametrize("role", ("seg", "flow", "mr"))
def test_bf16_within_stated_bounds_on_the_shipped_networks(role):
    for m in _bf16_check(role, 4):
        assert m["ok"], m
        if role in ("seg", "mr"):
            assert m["argmax_agreement"] >= BF16_SEG_AGREEMENT
        if role in ("flow", "mr"):
            assert m["epe_to_ref_px"] <= BF16_FLOW_EPE_PX


@pytest.mark.slow
@pytest.mark.skipif(not HAS_BF16_CPU, reason="this CPU has no AVX512-BF16 or AMX")
def test_bf16_view_top1_within_the_stated_bound_on_many_phantoms():
    for m in _bf16_check("view", 200):
        assert m["top1_agreement"] >= BF16_VIEW_TOP1, m


def test_auto_precision_is_the_fastest_each_backend_runs_here(nets):
    """auto: bf16 on openvino where the CPU computes it, fp32 on the CPU backends without
    bf16, fp16 on a GPU; never int8. The engine reports the precision it runs at."""
    from engines.backends import resolve_precision

    cpu_best = "bf16" if HAS_BF16_CPU else "fp32"
    assert resolve_precision("auto", "openvino") == cpu_best
    assert resolve_precision("auto", "onnxruntime") == "fp32"
    assert resolve_precision("auto", "torch", "cpu") == "fp32"
    assert resolve_precision("auto", "tensorrt") == resolve_precision("auto", "torch", "cuda:0") == "fp16"
    assert resolve_precision("int8", "openvino") == "int8"      # a precision asked for is kept
    # --backend auto --precision auto on this CPU: one backend for every role
    expected = {"openvino"} if HAS_BF16_CPU else set(AUTO_CPU_BACKEND.values())
    if not (HAS_TRT and HAS_CUDA):
        assert {resolve_backend("auto", "cpu", role, "auto") for role in ROLES} == expected
    model, spec = nets["seg"]
    engine = create_engine("seg", "openvino", "auto", model=model, spec=spec)
    assert engine.precision == cpu_best
    assert create_engine("seg", "onnxruntime", "auto", model=model, spec=spec).precision == "fp32"


def test_bf16_where_a_backend_has_none_says_so(nets):
    model, spec = nets["seg"]
    with pytest.raises(EngineError, match="onnxruntime' has no bf16 kernels"):
        create_engine("seg", "onnxruntime", "bf16", model=model, spec=spec)
    from engines.backends import source_for, tensorrt_backend

    with pytest.raises(EngineError, match="use fp16 on the GPU"):   # before any GPU check
        tensorrt_backend.build(source_for("seg", model=model, spec=spec), "bf16", "cuda", None)


def test_int8_calibration_from_a_clip(tmp_path):
    """The caller reads the clip (the engines read no files) and hands its frames over."""
    from engines.int8 import Frames, calibration_inputs
    from streamer.io.clips import read_frames, write_clip

    frames = (np.random.default_rng(0).random((10, 60, 80)) * 255).astype(np.uint8)
    clip = tmp_path / "rec.npz"
    write_clip(clip, frames, spacing_mm=(0.3, 0.3), fps=30.0, modality="US")
    recording = Frames.of(read_frames(clip), origin=str(clip))
    seg = calibration_inputs(toy_spec("seg", SIZE), recording, n=4)
    flow = calibration_inputs(toy_spec("flow", SIZE), recording, n=4)
    assert seg.shape == (4, 1, *SIZE) and flow.shape == (4, 2, *SIZE)
    assert seg.dtype == np.float32 and 0 <= seg.min() and seg.max() <= 1
    with pytest.raises(EngineError, match="too few frames"):
        calibration_inputs(toy_spec("flow", SIZE), Frames.of(frames[:1], origin="one.npz"), n=4)
    with pytest.raises(EngineError, match="read no clips"):
        calibration_inputs(toy_spec("seg", SIZE), clip, n=4)


def test_default_calibration_is_the_phantom_calib_split_cached(tmp_path, monkeypatch):
    import calib.datasets
    from engines import int8

    monkeypatch.setenv("CARDIOSTREAM_CACHE", str(tmp_path))
    calls = []

    def fake(n, kind, rows, cols):  # the real builder renders phantoms (seconds)
        calls.append((n, kind, rows, cols))
        shape = (n, 2, rows, cols) if kind == "flow" else (n, rows, cols)
        return np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)

    monkeypatch.setattr(calib.datasets, "calibration_images", fake)
    spec = toy_spec("flow", SIZE)
    a = int8.calibration_inputs(spec, None, n=4)
    b = int8.calibration_inputs(spec, None, n=4)
    assert calls == [(4, "flow", *SIZE)]           # second call read the cached .npy
    np.testing.assert_array_equal(a, b)
    assert a.shape == (4, 2, *SIZE) and a.dtype == np.float32 and a.max() <= 1.0


@pytest.mark.parametrize("backend", ("torch", *CPU_BACKENDS))
def test_wrong_input_is_a_value_error_naming_role_and_shape(nets, backend):
    model, spec = nets["seg"]
    engine = create_engine("seg", backend, model=model, spec=spec)
    with pytest.raises(ValueError, match=r"seg engine .*\(1, 1, 32, 48\).*\(1, 1, 48, 32\)"):
        engine(np.zeros((1, 1, 48, 32), np.float32))
    with pytest.raises(ValueError, match=r"seg engine .*float32.*float64"):
        engine(np.zeros(spec.input.shape, np.float64))
    with pytest.raises(ValueError, match="seg engine"):
        engine([[0.0]])


def test_unknown_names_are_engine_errors(nets):
    model, spec = nets["view"]
    with pytest.raises(EngineError, match="backend 'tflite' is unknown"):
        create_engine("view", "tflite", model=model, spec=spec)
    with pytest.raises(EngineError, match="precision 'int4' is unknown"):
        create_engine("view", "onnxruntime", "int4", model=model, spec=spec)
    with pytest.raises(EngineError, match="role 'lv' is unknown"):
        create_engine("lv", "torch", model=model, spec=spec)


def test_precision_a_backend_does_not_run_says_why(nets):
    model, spec = nets["view"]
    with pytest.raises(EngineError, match="fp16 only on a CUDA device"):
        create_engine("view", "torch", "fp16", model=model, spec=spec, device="cpu")
    with pytest.raises(EngineError, match="int8 runs on onnxruntime or openvino"):
        create_engine("view", "torch", "int8", model=model, spec=spec)
    for backend in CPU_BACKENDS:
        with pytest.raises(EngineError, match="fp16 needs"):
            create_engine("view", backend, "fp16", model=model, spec=spec)
        with pytest.raises(EngineError, match="runs on the CPU"):
            create_engine("view", backend, model=model, spec=spec, device="cuda")


def test_missing_package_is_an_engine_error_not_a_fallback(nets, monkeypatch):
    model, spec = nets["view"]
    monkeypatch.setitem(sys.modules, "openvino", None)  # import openvino -> ImportError
    with pytest.raises(EngineError, match="needs the openvino package, which is not installed"):
        create_engine("view", "openvino", model=model, spec=spec)


@pytest.mark.skipif(HAS_TRT and HAS_CUDA, reason="TensorRT and a CUDA GPU are present")
def test_tensorrt_unavailable_says_why(nets):
    model, spec = nets["view"]
    reason = "torch_tensorrt, which is not installed" if not HAS_TRT else "needs a CUDA GPU"
    with pytest.raises(EngineError, match=reason):
        create_engine("view", "tensorrt", model=model, spec=spec)


def test_tensorrt_module_imports_nothing_heavy():
    import subprocess

    code = ("import sys, engines.backends.tensorrt_backend as t; "
            "print(any(m in sys.modules for m in ('torch_tensorrt', 'tensorrt', 'modelopt')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=os.path.dirname(os.path.dirname(__file__)))
    assert out.stdout.strip() == "False"


def test_auto_picks_tensorrt_on_gpu_else_the_measured_cpu_default():
    for role in ROLES:
        expected = "tensorrt" if (HAS_TRT and HAS_CUDA) else AUTO_CPU_BACKEND[role]
        assert resolve_backend("auto", None, role) == expected
        assert resolve_backend("auto", "cpu", role) == AUTO_CPU_BACKEND[role] in CPU_BACKENDS
    if not HAS_CUDA:
        assert resolve_backend("auto", "cuda", "seg") == "torch"  # reaches torch's "no CUDA" error
        # bf16 on the CPU: the backend that runs it for every role (view's own cannot)
        assert {resolve_backend("auto", "cpu", role, "bf16") for role in ROLES} == {"openvino"}


def test_threads_are_set_in_one_place(nets):
    model, spec = nets["view"]
    before = get_threads()
    try:
        engine = create_engine("view", "onnxruntime", model=model, spec=spec, threads=1)
        assert engine.threads == 1 and torch.get_num_threads() == 1 and get_threads() == 1
        assert create_engine("view", "openvino", model=model, spec=spec).threads == 1
        with pytest.raises(ValueError, match="threads must be >= 1"):
            set_threads(0)
    finally:
        set_threads(before)


@pytest.mark.skipif(not HAS_CUDA, reason="no CUDA GPU")
def test_torch_cuda_fp32_and_fp16(nets):
    model, spec = nets["seg"]
    xs = toy_inputs(spec, 2, seed=3)
    ref = _outputs(create_engine("seg", "torch", model=model, spec=spec), xs)
    for precision in ("fp32", "fp16"):
        out = _outputs(create_engine("seg", "torch", precision, model=model, spec=spec, device="cuda"), xs)
        assert compare("seg", precision, ref, out)["ok"]


@pytest.mark.skipif(not HAS_TRT, reason="TensorRT (torch_tensorrt) is not installed")
@pytest.mark.skipif(not HAS_CUDA, reason="no CUDA GPU")
@pytest.mark.parametrize("precision", ("fp32", "fp16", "int8"))
def test_tensorrt_matches_eager_torch(nets, precision):
    if precision == "int8" and importlib.util.find_spec("modelopt") is None:
        pytest.skip("NVIDIA ModelOpt (nvidia-modelopt) is not installed")
    model, spec = nets["seg"]
    xs = toy_inputs(spec, 2, seed=3)
    ref = _outputs(create_engine("seg", "torch", model=model, spec=spec), xs)
    engine = create_engine("seg", "tensorrt", precision, model=model, spec=spec,
                           calibration=toy_inputs(spec, 8, seed=1))
    assert engine.device.startswith("cuda")
    m = compare("seg", precision, ref, _outputs(engine, xs))
    assert m["ok"], m


def test_the_role_registry_is_the_one_per_role_table():
    """Every per-role table in engines derives from engines.spec.REGISTRY."""
    from engines import cli, nets
    from engines.spec import REGISTRY, get_role, role_contract

    assert tuple(REGISTRY) == ROLES == ("view", "seg", "flow", "mr")
    assert AUTO_CPU_BACKEND == {r: REGISTRY[r].cpu_backend for r in ROLES}
    assert set(AUTO_CPU_BACKEND.values()) <= set(CPU_BACKENDS)
    assert nets.MODULES == {r: REGISTRY[r].network for r in ROLES}
    assert cli.TRAIN_MODULES == {r: REGISTRY[r].trainer for r in ROLES}
    for name, role in REGISTRY.items():
        spec = nets.spec(name)  # the network module's SPEC fulfils the registry's contract
        assert spec.role == name and (spec.input, spec.output) == role.contract(spec.size)
        assert spec.normalisation == role.normalisation
        assert importlib.util.find_spec(role.trainer) is not None
        assert role.calibration_kind in ("view", "segmentation", "flow", "mr")
        assert role_contract(name, (8, 8)) == role.contract((8, 8))
    with pytest.raises(ValueError, match="choose one of view, seg, flow"):
        get_role("lv")
