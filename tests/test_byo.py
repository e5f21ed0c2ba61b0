"""Bring-your-own models: state dict, TorchScript and ONNX load, match the source network,
and every broken file gives an error that names it."""

from __future__ import annotations

import re

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from engines.backends import EngineError, ModelLoadError, create_engine, onnx_export
from engines.backends.toy import toy_inputs, toy_model, toy_spec
from engines.byo import load_model

SIZE = (32, 48)
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")  # the tests' own legacy exports


@pytest.fixture(autouse=True)
def engine_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("CARDIOSTREAM_CACHE", str(tmp_path_factory.getbasetemp() / "engine-cache"))
    # exporter-independent here (dynamo is covered by test_backends); legacy is faster to run
    monkeypatch.setattr(onnx_export, "exporter_for", lambda source: "legacy")


@pytest.fixture(scope="module")
def seg():
    model, spec = toy_model("seg", seed=3), toy_spec("seg", SIZE)
    x = toy_inputs(spec, 1, seed=4)
    with torch.inference_mode():
        ref = model(torch.from_numpy(x)).numpy()
    return model, spec, x, ref


def _build():
    return toy_model("seg", seed=99)   # same architecture, other weights: loading must replace them


def _onnx(model, spec, path, **kw):
    torch.onnx.export(model, (torch.zeros(spec.input.shape),), str(path), dynamo=False,
                      input_names=[spec.input.name], output_names=[spec.output.name], **kw)
    return path


def test_state_dict_loads_and_matches(seg, tmp_path):
    model, spec, x, ref = seg
    path = tmp_path / "mine.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}, "epoch": 3}, path)
    loaded = load_model("seg", path, spec=spec, build=_build)
    assert loaded.kind == "state_dict" and loaded.origin == str(path)
    for backend in ("torch", "onnxruntime"):
        engine = create_engine("seg", backend, weights=path, model=_build(), spec=spec)
        np.testing.assert_allclose(engine(x), ref, atol=1e-4)


def test_torchscript_loads_and_matches(seg, tmp_path):
    model, spec, x, ref = seg
    path = tmp_path / "mine.ts"
    torch.jit.save(torch.jit.trace(model, torch.zeros(spec.input.shape)), str(path))
    assert load_model("seg", path, spec=spec).kind == "torchscript"
    for backend in ("torch", "openvino"):
        np.testing.assert_allclose(create_engine("seg", backend, weights=path, spec=spec)(x), ref, atol=1e-4)


def test_onnx_loads_and_matches_on_cpu_backends(seg, tmp_path):
    model, spec, x, ref = seg
    path = _onnx(model, spec, tmp_path / "mine.onnx",
                 dynamic_axes={spec.input.name: {0: "batch"}, spec.output.name: {0: "batch"}})
    loaded = load_model("seg", path, spec=spec)
    assert loaded.kind == "onnx" and loaded.module is None
    for backend in ("onnxruntime", "openvino"):
        engine = create_engine("seg", backend, weights=path, spec=spec)
        np.testing.assert_allclose(engine(x), ref, atol=1e-4)
    with pytest.raises(EngineError, match=r"mine\.onnx is an ONNX model, which can't run on the torch backend"):
        create_engine("seg", "torch", weights=path, spec=spec)


def test_truncated_files_are_named(seg, tmp_path):
    model, spec, _, _ = seg
    full = tmp_path / "full.pt"
    torch.save(model.state_dict(), full)
    cut = tmp_path / "cut.pt"
    cut.write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    with pytest.raises(ModelLoadError, match=r"cut\.pt: truncated or corrupt"):
        load_model("seg", cut, spec=spec, build=_build)
    onnx_full = _onnx(model, spec, tmp_path / "full.onnx")
    onnx_cut = tmp_path / "cut.onnx"
    onnx_cut.write_bytes(onnx_full.read_bytes()[: onnx_full.stat().st_size // 2])
    with pytest.raises(ModelLoadError, match=r"cut\.onnx: not a valid ONNX model"):
        load_model("seg", onnx_cut, spec=spec)


@pytest.mark.parametrize("name", ["noise.pt", "noise.onnx", "noise.bin"])
def test_random_bytes_are_named(seg, tmp_path, name):
    _, spec, _, _ = seg
    path = tmp_path / name
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    with pytest.raises(ModelLoadError, match=re.escape(name) + ": (not a PyTorch file|not a valid ONNX)"):
        load_model("seg", path, spec=spec, build=_build)


def test_missing_and_empty_files(seg, tmp_path):
    _, spec, _, _ = seg
    with pytest.raises(ModelLoadError, match=r"nope\.pt: no such file"):
        load_model("seg", tmp_path / "nope.pt", spec=spec)
    (tmp_path / "empty.pt").write_bytes(b"")
    with pytest.raises(ModelLoadError, match=r"empty\.pt: the file is empty"):
        load_model("seg", tmp_path / "empty.pt", spec=spec)


def test_wrong_output_shape_says_expected_and_got(tmp_path):
    spec = toy_spec("seg", SIZE)
    wrong = toy_model("view")                 # (1, 8) logits where seg wants (1, 3, H, W)
    path = tmp_path / "view_as_seg.ts"
    torch.jit.save(torch.jit.trace(wrong, torch.zeros(spec.input.shape)), str(path))
    with pytest.raises(ModelLoadError, match=r"view_as_seg\.ts: output shape \(1, 8\) does not fit the seg "
                                             r"role: expected 'logits' \(1, 3, 32, 48\)"):
        load_model("seg", path, spec=spec)
    onnx_path = _onnx(wrong, spec, tmp_path / "view_as_seg.onnx")
    with pytest.raises(ModelLoadError, match=r"view_as_seg\.onnx: declares output 'logits' of shape \(1, 8\)"):
        load_model("seg", onnx_path, spec=spec)


def test_state_dict_that_does_not_fit_lists_mismatches(tmp_path):
    spec = toy_spec("seg", SIZE)
    path = tmp_path / "wide.pt"
    state = toy_model("seg", width=16).state_dict()
    state["extra.weight"] = torch.zeros(3)
    torch.save(state, path)
    with pytest.raises(ModelLoadError, match=r"wide\.pt: the state dict does not fit the seg network") as err:
        load_model("seg", path, spec=spec, build=_build)
    msg = str(err.value)
    assert "1 unexpected: extra.weight" in msg and "shape mismatch" in msg
    assert "enc.0.weight: file (16, 1, 3, 3) vs network (8, 1, 3, 3)" in msg and "more)" in msg


def test_pickled_model_object_is_refused_with_advice(tmp_path):
    spec = toy_spec("seg", SIZE)
    path = tmp_path / "whole.pt"
    torch.save(toy_model("seg"), path)
    with pytest.raises(ModelLoadError, match=r"whole\.pt: holds pickled Python objects.*state_dict\(\)"):
        load_model("seg", path, spec=spec, build=_build)


class _TwoInputs(nn.Module):
    def forward(self, a, b):
        return torch.cat([a, b], 1)


def test_wrong_number_of_inputs(tmp_path):
    spec = toy_spec("flow", SIZE)
    path = tmp_path / "two.ts"
    torch.jit.save(torch.jit.script(_TwoInputs()), str(path))
    with pytest.raises(ModelLoadError, match=r"two\.ts: the model takes 2 inputs; the flow contract is one input"):
        load_model("flow", path, spec=spec)
    one = torch.zeros((1, 1, *SIZE))
    onnx_path = tmp_path / "two.onnx"
    torch.onnx.export(_TwoInputs(), (one, one), str(onnx_path), dynamo=False, input_names=["prev", "cur"])
    with pytest.raises(ModelLoadError, match=r"two\.onnx: the model has 2 inputs \('prev', 'cur'\)"):
        load_model("flow", onnx_path, spec=spec)


def test_onnx_declared_input_shape_is_checked(tmp_path):
    spec = toy_spec("seg", SIZE)
    path = _onnx(toy_model("seg"), toy_spec("seg", (64, 64)), tmp_path / "big.onnx")
    assert onnx.load(str(path)).graph.input[0].type.tensor_type.shape.dim[2].dim_value == 64
    with pytest.raises(ModelLoadError, match=r"big\.onnx: declares input 'image' of shape \(1, 1, 64, 64\)"):
        load_model("seg", path, spec=spec)
