"""engines.infarct (and engines.beat_networks): the shipped OF-RNN weights load and map a
slice's region; a missing or foreign weights file is refused with the path named."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch

from engines.beat_networks import BeatNetworkWeightsError
from engines.infarct import SHIPPED, load_mapper


def test_the_shipped_weights_map_the_masked_pixels_on_one_thread():
    mapper = load_mapper()
    assert mapper.provenance() == {"backend": "torch", "precision": "fp32", "device": "cpu",
                                   "origin": mapper.origin, "max_batch": 1,
                                   "weights_sha256": hashlib.sha256(SHIPPED.read_bytes()).hexdigest()}
    assert str(SHIPPED) in mapper.origin
    rng = np.random.default_rng(0)
    mask = np.zeros((64, 64), bool)
    mask[20:40, 24:30] = True
    threads = torch.get_num_threads()
    p = mapper(rng.random((25, 64, 64), dtype=np.float32),
               rng.normal(0, 0.3, (25, 2, 64, 64)).astype(np.float32), mask)
    assert torch.get_num_threads() == threads            # one thread inside, restored after
    assert p.shape == (64, 64) and (p[~mask] == 0).all() and ((p >= 0) & (p <= 1)).all()
    with pytest.raises(ValueError):
        mapper(np.zeros((25, 64, 63), np.float32), np.zeros((25, 2, 64, 64), np.float32), mask)


def test_missing_and_foreign_weights_are_refused(tmp_path):
    with pytest.raises(BeatNetworkWeightsError, match="no OF-RNN weights at .*none.pt"):
        load_mapper(tmp_path / "none.pt")
    torch.save({"lstm.weight": torch.zeros(2)}, tmp_path / "other.pt")
    with pytest.raises(BeatNetworkWeightsError, match="other.pt: not a state dict of OF-RNN"):
        load_mapper(tmp_path / "other.pt")
