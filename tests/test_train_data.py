"""The training data cache (engines.train.data): made once, reused, never stale."""

import numpy as np

from engines.train import data


def test_a_set_is_made_once_and_reused(tmp_path, monkeypatch):
    monkeypatch.setenv("CARDIOSTREAM_DATA", str(tmp_path))
    a = data.dataset("view_samples", "val", 2, rows=48, cols=48)
    files = sorted(tmp_path.glob("*.npz"))
    assert len(files) == 1
    b = data.dataset("view_samples", "val", 2, rows=48, cols=48)
    assert sorted(tmp_path.glob("*.npz")) == files
    assert np.array_equal(a["images"], b["images"]) and a["images"].shape == (2, 48, 48)


def test_a_changed_generator_makes_a_new_set(tmp_path, monkeypatch):
    monkeypatch.setenv("CARDIOSTREAM_DATA", str(tmp_path))
    data.dataset("view_samples", "val", 1, rows=48, cols=48)
    monkeypatch.setattr(data, "generator_digest", lambda: "0" * 16)
    data.dataset("view_samples", "val", 1, rows=48, cols=48)
    assert len(list(tmp_path.glob("*.npz"))) == 2


def test_generator_digest_follows_the_calib_source():
    d = data.generator_digest()
    assert len(d) == 16 and d == data.generator_digest()
