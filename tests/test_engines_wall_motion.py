"""engines.wall_motion: the shipped Cardiac-MOS weights load, score a stack's segments and
say how they run; a missing or foreign weights file is refused with the path named."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from engines.nets import cardiac_mos
from engines.wall_motion import (
    SHIPPED,
    WallMotionWeightsError,
    blocks_in,
    load_scorer,
)


def test_the_shipped_weights_score_segments_at_any_frame_count():
    scorer = load_scorer()
    assert (scorer.backend, scorer.precision, scorer.device) == ("torch", "fp32", "cpu")
    assert str(SHIPPED) in scorer.origin and "sha256" in scorer.origin
    assert scorer.variant in cardiac_mos.VARIANTS
    rng = np.random.default_rng(0)
    for segments, frames in ((16, 20), (10, 50), (1, 8)):
        p = scorer(rng.random((segments, frames, 80, 60), dtype=np.float32))
        assert p.shape == (segments, 4)
        assert np.allclose(p.sum(1), 1.0) and (p >= 0).all()


def test_bad_segments_are_refused():
    scorer = load_scorer()
    with pytest.raises(ValueError, match="S, T, R, A"):
        scorer(np.zeros((16, 20, 80), np.float32))
    with pytest.raises(ValueError, match="T >= 2"):
        scorer(np.zeros((16, 1, 80, 60), np.float32))
    x = np.zeros((2, 20, 80, 60), np.float32)
    x[0, 3, 4, 5] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        scorer(x)


def test_the_variant_is_read_from_the_weights(tmp_path):
    for variant, (seg, sub) in (("cnn", (0, 0)), ("seg_sub_nl", (1, 1))):
        state = cardiac_mos.build(variant).state_dict()
        assert (blocks_in(state, "seg_nl"), blocks_in(state, "sub_nl")) == (seg, sub)
        path = tmp_path / f"{variant}.pt"
        torch.save(state, path)
        assert load_scorer(path).variant == variant
    two = cardiac_mos.build("sub_nl", subject_nl=2).state_dict()
    torch.save(two, tmp_path / "two.pt")
    assert load_scorer(tmp_path / "two.pt").variant == "seg_nl=0,sub_nl=2"


def test_missing_and_foreign_weights_are_refused_with_the_path(tmp_path):
    with pytest.raises(WallMotionWeightsError, match="no Cardiac-MOS weights at .*nothing.pt"):
        load_scorer(tmp_path / "nothing.pt")
    (tmp_path / "text.pt").write_text("not torch")
    with pytest.raises(WallMotionWeightsError, match="text.pt: not a readable state dict"):
        load_scorer(tmp_path / "text.pt")
    torch.save({"conv.weight": torch.zeros(3)}, tmp_path / "other.pt")
    with pytest.raises(WallMotionWeightsError, match="other.pt: not a state dict of Cardiac-MOS"):
        load_scorer(tmp_path / "other.pt")
    torch.save([1, 2], tmp_path / "list.pt")
    with pytest.raises(WallMotionWeightsError, match="list.pt: holds a list"):
        load_scorer(tmp_path / "list.pt")
