"""The engine cache: keyed by weights, shape, precision, backend version and device; a second
create_engine with the same key builds nothing (counted, not timed)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from engines import cache, int8
from engines.backends import create_engine, onnx_export, openvino_backend
from engines.backends.toy import ToySeg, toy_inputs, toy_model, toy_spec

SIZE = (32, 48)


@pytest.fixture
def root(tmp_path, monkeypatch):
    monkeypatch.setenv("CARDIOSTREAM_CACHE", str(tmp_path / "cache"))
    # the cache logic does not depend on the exporter: the legacy one is ~5x faster to run
    # (the default dynamo exporter is covered by test_backends)
    monkeypatch.setattr(onnx_export, "exporter_for", lambda source: "legacy")
    return tmp_path / "cache"


@pytest.fixture
def counted(monkeypatch):
    """Counts calls of the build steps: ONNX export, OpenVINO conversion, INT8 quantisation."""
    calls = {"export": 0, "convert": 0, "quantize": 0}

    def wrap(owner, name, label):
        real = getattr(owner, name)

        def counting(*a, **k):
            calls[label] += 1
            return real(*a, **k)
        monkeypatch.setattr(owner, name, counting)

    wrap(onnx_export, "export_onnx", "export")
    wrap(openvino_backend, "convert", "convert")
    wrap(int8, "quantize", "quantize")
    return calls


def test_cache_root_follows_the_environment(root):
    assert cache.cache_root() == root


def test_second_engine_with_the_same_key_is_loaded_not_built(root, counted):
    model, spec = toy_model("view"), toy_spec("view", SIZE)
    x = toy_inputs(spec, 1)
    a = create_engine("view", "openvino", model=model, spec=spec)
    assert counted == {"export": 1, "convert": 1, "quantize": 0}
    b = create_engine("view", "openvino", model=toy_model("view"), spec=spec)  # same weights, new object
    c = create_engine("view", "onnxruntime", model=model, spec=spec)          # reuses the ONNX export
    assert counted == {"export": 1, "convert": 1, "quantize": 0}
    assert a.artefact == b.artefact and a.artefact.is_file()
    np.testing.assert_array_equal(a(x), b(x))
    np.testing.assert_allclose(a(x), c(x), atol=1e-5)
    meta = json.loads((a.artefact.parent / "key.json").read_text())
    assert meta["key"]["backend"] == "openvino" and meta["key"]["input_shape"] == [1, 1, *SIZE]
    assert meta["key"]["weights_sha256"] == cache.state_dict_digest(model)


def test_changed_weights_shape_or_rebuild_make_a_new_entry(root, counted):
    model, spec = toy_model("view"), toy_spec("view", SIZE)
    first = create_engine("view", "onnxruntime", model=model, spec=spec).artefact
    other = create_engine("view", "onnxruntime", model=toy_model("view", seed=1), spec=spec).artefact
    resized = create_engine("view", "onnxruntime", model=model, spec=toy_spec("view", (32, 32))).artefact
    assert counted["export"] == 3 and len({first, other, resized}) == 3
    create_engine("view", "onnxruntime", model=model, spec=spec, use_cache=False)
    assert counted["export"] == 4
    assert [e["key"]["weights_sha256"] for e in cache.entries(root)].count(cache.state_dict_digest(model)) == 2


def test_int8_is_cached_per_calibration_set(root, counted):
    model, spec = toy_model("seg"), toy_spec("seg", SIZE)
    calib = toy_inputs(spec, 8, seed=1)
    create_engine("seg", "onnxruntime", "int8", model=model, spec=spec, calibration=calib)
    create_engine("seg", "onnxruntime", "int8", model=model, spec=spec, calibration=calib.copy())
    assert counted["quantize"] == 1 and counted["export"] == 1
    create_engine("seg", "onnxruntime", "int8", model=model, spec=spec, calibration=calib[:4])
    assert counted["quantize"] == 2 and counted["export"] == 1


def test_key_names_everything_that_changes_the_artefact():
    base = dict(role="seg", arch="U-Net 12-24/48", weights_sha256="ab" * 32, input_shape=(1, 1, 128, 128),
                precision="fp32", backend="openvino", backend_version="2026.4.1", device="cpu")
    key = cache.CacheKey(**base)
    name = key.dirname
    for part in ("seg", "openvino", "2026.4.1", "fp32", "cpu", "1x1x128x128"):
        assert part in name
    assert "/" not in name and " " not in name
    for field, value in (("weights_sha256", "cd" * 32), ("input_shape", (1, 1, 64, 64)), ("precision", "int8"),
                         ("backend_version", "2026.5.0"), ("device", "NVIDIA_H100-sm90-trt11.0"),
                         ("extra", (("calibration_sha256", "x"),))):
        assert cache.CacheKey(**{**base, field: value}).dirname != name, field


def test_failed_build_leaves_no_entry(root):
    key = cache.CacheKey("view", "toy", "00", (1, 1, 8, 8), "fp32", "onnx", "t", "cpu")

    def broken(folder):
        (folder / "half.onnx").write_bytes(b"x")
        raise RuntimeError("export exploded")

    with pytest.raises(RuntimeError, match="exploded"):
        cache.get_or_build(key, broken)
    assert cache.lookup(key) is None and list(root.iterdir()) == []
    folder, hit = cache.get_or_build(key, lambda d: (d / "ok").write_text("1"))
    assert not hit and (folder / "ok").is_file()
    assert cache.get_or_build(key, lambda d: pytest.fail("rebuilt"))[1] is True


def test_state_dict_digest_is_stable_and_sensitive():
    a, b = toy_model("flow"), toy_model("flow")
    assert cache.state_dict_digest(a) == cache.state_dict_digest(b)
    with torch.no_grad():
        next(b.parameters()).view(-1)[0] += 1e-6
    assert cache.state_dict_digest(a) != cache.state_dict_digest(b)


class _SegNearestUp(ToySeg):
    """Same parameters as ToySeg, other forward (nearest upsampling): same weights hash."""

    def forward(self, x):
        import torch.nn.functional as F

        e = self.enc(x)
        m = F.interpolate(self.mid(F.max_pool2d(e, 2)), scale_factor=2.0, mode="nearest")
        return self.out(self.dec(torch.cat([e, m], 1)))


def test_changed_forward_code_with_the_same_weights_is_a_new_entry(root, counted):
    spec = toy_spec("seg", SIZE)
    a = toy_model("seg")
    b = _SegNearestUp()
    b.load_state_dict(a.state_dict())
    b.eval()
    assert cache.state_dict_digest(a) == cache.state_dict_digest(b)
    x = toy_inputs(spec, 1)
    ea = create_engine("seg", "openvino", model=a, spec=spec)
    eb = create_engine("seg", "openvino", model=b, spec=spec)
    assert counted["export"] == 2 and counted["convert"] == 2 and ea.artefact != eb.artefact
    with torch.inference_mode():
        np.testing.assert_allclose(eb(x), b(torch.from_numpy(x)).numpy(), atol=1e-4)
