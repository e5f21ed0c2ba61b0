"""View classifier: contract shapes, seeded build, shipped weights on held-out phantom frames."""

import json

import numpy as np
import torch

from engines.nets import WEIGHTS_DIR, view_classifier
from engines.spec import role_contract
from engines.train import common
from engines.train.view import evaluate
from streamer.vocab import VIEW_CLASSES


def test_spec_follows_the_role_contract():
    spec = view_classifier.SPEC
    assert spec.role == "view" and spec.weights_file == "view.pt"
    assert (spec.input, spec.output) == role_contract("view", spec.size)
    assert spec.output.shape == (1, len(VIEW_CLASSES))


def test_output_shape_and_seeded_build():
    torch.manual_seed(3)
    a = view_classifier.build().eval()
    torch.manual_seed(3)
    b = view_classifier.build().eval()
    x = torch.rand(view_classifier.SPEC.input.shape)
    with torch.no_grad():
        out = a(x)
    assert tuple(out.shape) == view_classifier.SPEC.output.shape
    assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))
    with torch.no_grad():
        assert tuple(a(torch.rand(3, *view_classifier.SPEC.input.shape[1:])).shape) == (3, 8)


def test_shipped_weights_classify_held_out_frames():
    path = WEIGHTS_DIR / view_classifier.SPEC.weights_file
    record = json.loads((WEIGHTS_DIR / "view.json").read_text())
    assert record["weights_sha256"] == common.sha256_file(path)
    assert record["data"]["test"]["split"] == "test" and record["data"]["test"]["seed_min"] >= 2_000_000
    model = common.load_state(view_classifier.build(), path)
    from engines.train.data import dataset
    # 16 held-out clips (2 per view), 2 frames each; seeds never used in training
    samples = dataset("view_samples", "test", 32, frames_per_clip=2)
    assert np.bincount(samples["labels"], minlength=8).tolist() == [4] * 8
    metrics = evaluate(common.torch_predict(model), samples)
    assert metrics["accuracy"] >= 0.9, metrics["confusion"]
