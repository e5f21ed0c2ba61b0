"""Cardiac timing: contraction waveform, ED/ES frames, validation."""

import numpy as np
import pytest

from calib.cycle import CardiacCycleConfig
from calib.errors import PhantomParameterError


def test_waveform_shape():
    c = CardiacCycleConfig(heart_rate_bpm=60, fps=100, frames=100)
    ph = np.linspace(0, 1, 1001)
    w = c.contraction(ph)
    assert w[0] == pytest.approx(0) and w[-1] == pytest.approx(0, abs=1e-9)
    assert c.contraction(c.es_phase_value) == pytest.approx(1.0)
    assert w.max() == pytest.approx(1.0) and w.min() >= 0
    assert np.abs(np.diff(w)).max() < 0.02                  # continuous


def test_ed_es_frames_over_beats():
    c = CardiacCycleConfig(heart_rate_bpm=60, fps=50, frames=130)
    ed, es = c.ed_es_frames()
    assert list(ed) == [0, 50, 100]
    assert len(es) == 3 and all(abs(e - d - c.es_phase_value * 50) <= 0.5 for d, e in zip(ed, es))


def test_default_es_from_heart_rate():
    slow = CardiacCycleConfig(heart_rate_bpm=50).es_phase_value
    fast = CardiacCycleConfig(heart_rate_bpm=120).es_phase_value
    assert slow < fast


@pytest.mark.parametrize("kw, needle", [(dict(fps=-1), "fps=-1"), (dict(heart_rate_bpm=5), "heart_rate_bpm=5"),
                                        (dict(frames=0), "frames=0"), (dict(es_phase=0.9), "es_phase=0.9")])
def test_bad_timing(kw, needle):
    with pytest.raises(PhantomParameterError, match=needle.replace(".", r"\.")):
        CardiacCycleConfig(**kw)
