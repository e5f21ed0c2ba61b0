"""The PyMUST physics echo generator (calib.physics_sim, optional extra ``sim``).

The simulation tests need PyMUST, which is not in the default install, the ``test`` extra or
CI (LGPL, slow): they skip without it and are marked slow. The validation set's
configurations need no PyMUST and run everywhere.
"""

from __future__ import annotations

import numpy as np
import pytest

from calib.datasets import split_of
from calib.echo import EchoPhantomConfig, make_echo_clip
from calib.physics_sim import VALIDATION_OFFSET, PhysicsConfig, validation_configs
from calib.speckle import SectorGeometry, SpeckleConfig

PYMUST_REASON = "PyMUST is an optional extra (pip install 'cardiostream[sim]'), not installed here"


@pytest.fixture(scope="module")
def physics_sim():
    pytest.importorskip("pymust", reason=PYMUST_REASON)
    from calib import physics_sim
    return physics_sim


@pytest.mark.slow
def test_point_scatterer_renders_at_its_pixel(physics_sim):
    """The sector geometry of the simulation is ours: a point at a known depth and angle
    peaks at its pixel; the frame is float32, finite, in [0, 1] and black outside the sector."""
    geom = SectorGeometry.fit(64, 64, 80.0, 60.0)
    renderer = physics_sim.PhysicsRenderer(
        geom, SpeckleConfig(noise_db=-150.0),
        PhysicsConfig(workers=1, dark_db=None, calibration_scatterers=2000), seed=0)
    outside = ~geom.sector_mask()
    outside[1:-1, 1:-1] &= outside[:-2, 1:-1] & outside[2:, 1:-1] & outside[1:-1, :-2] & outside[1:-1, 2:]
    for depth, angle in ((40.0, 0.25), (60.0, -0.3), (25.0, 0.0)):
        p = geom.from_polar(np.array([depth]), np.array([angle]))
        img = renderer.render(p, np.array([1.0]), None)
        assert img.shape == (64, 64) and img.dtype == np.float32
        assert np.isfinite(img).all() and img.min() >= 0.0 and img.max() <= 1.0
        assert img.max() > 0.05
        peak = np.array(np.unravel_index(np.argmax(img), img.shape))
        expected = p[0] / geom.spacing_mm                  # [row, col] pixel of the point
        assert np.abs(peak - expected).max() <= 1.5, (depth, angle, peak, expected)
        assert img[outside].max() == 0.0


@pytest.mark.slow
def test_physics_clip_has_the_phantom_truth(physics_sim, tmp_path):
    """Two 64x64 frames with few scatterers: PyMUST frames, the kinematics' truth unchanged."""
    from calib.io import read_truth, write_phantom

    cfg = EchoPhantomConfig(rows=64, cols=64, frames=2, depth_mm=120.0, seed=5,
                            speckle=SpeckleConfig(scatterers_per_mm2=0.5))
    physics = PhysicsConfig(workers=1, scatterers_per_cell=0.5, calibration_scatterers=2000)
    clip = physics_sim.make_physics_clip(cfg, physics, densify=False)
    assert clip.frames.shape == (2, 64, 64) and clip.frames.dtype == np.uint8
    assert clip.frames[:, clip.truth.sector_mask > 0].mean() > 5      # an image, not black
    ref = make_echo_clip(cfg)
    assert not np.array_equal(clip.frames, ref.frames)
    for name in ("myocardium", "cavity", "displacement", "centreline_mm", "gls_pct"):
        np.testing.assert_array_equal(getattr(clip.truth, name), getattr(ref.truth, name))
    assert 0 < clip.physics["scatterers_simulated"] <= clip.physics["scatterers_in_scene"]
    md = clip.metadata
    assert md["generator"] == "pymust" and md["phantom"] == "echo"
    assert md["physics"]["config"]["probe"] == "P4-2v"
    _, tpath = write_phantom(clip, tmp_path / "a4c.npz")
    assert read_truth(tpath)["params"]["generator"] == "pymust"


def test_validation_configs_are_held_out_a4c_cycles():
    cfgs = validation_configs(4, rows=96, cols=96)
    assert [split_of(c.seed) for c in cfgs] == ["test"] * 4
    assert min(c.seed for c in cfgs) >= 2_000_000 + VALIDATION_OFFSET
    peaks = [c.gls_pct * c.segment_factors.mean() for c in cfgs]
    assert min(peaks) <= -20 and max(peaks) >= -9
    assert any(c.dysfunction for c in cfgs)
    for c in cfgs:
        assert c.view == "a4c" and c.start_phase == 0.0 and 30 <= c.fps <= 40
        assert c.frames == round(c.fps * 60 / c.heart_rate_bpm) + 1       # ED .. next ED
        assert list(c.cycle.ed_es_frames()[0]) == [0, c.frames - 1]
    assert validation_configs(2, frames=3)[1].frames == 3
