"""Speckle renderer: level calibration, sector geometry, trackable translation."""

import cv2
import numpy as np
import pytest

from calib.errors import PhantomParameterError
from calib.speckle import SectorGeometry, SpeckleConfig, SpeckleRenderer, to_uint8


def _uniform(geom, cfg, rng):
    n = int(cfg.scatterers_per_mm2 * 0.5 * (geom.depth_mm + 5) ** 2 * 2 * (geom.half_angle_rad + 0.05))
    r = (geom.depth_mm + 5) * np.sqrt(rng.random(n))
    a = rng.uniform(-geom.half_angle_rad - 0.05, geom.half_angle_rad + 0.05, n)
    return geom.from_polar(r, a), rng.standard_normal(n)


def test_sector_fits_image():
    g = SectorGeometry.fit(256, 256, 170.0, 80.0)
    m = g.sector_mask()
    assert m[0].sum() == 0 and m.any()
    assert g.apex_mm[1] == pytest.approx(127.5 * g.spacing_mm)
    rows = np.nonzero(m.any(axis=1))[0]
    assert rows[-1] < 256 and rows[0] < 20


def test_unit_echogenicity_has_unit_power():
    g = SectorGeometry.fit(128, 128, 120.0, 80.0)
    cfg = SpeckleConfig(noise_db=-140, attenuation_db_per_cm_mhz=0.0)
    r = SpeckleRenderer(g, cfg)
    p, a = _uniform(g, cfg, np.random.default_rng(0))
    iq = r.iq(p, a, None)
    i = int(60 / r.dr)
    power = float((iq[i - 5:i + 5, r.na // 4: 3 * r.na // 4] ** 2).sum(-1).mean())
    assert 0.6 < power < 1.5


def test_translation_is_tracked_by_dis():
    g = SectorGeometry.fit(160, 160, 120.0, 80.0)
    cfg = SpeckleConfig()
    r = SpeckleRenderer(g, cfg)
    p, a = _uniform(g, cfg, np.random.default_rng(1))
    f0 = to_uint8(r.render(p, a, None))
    shift = np.array([0.6, -0.4])                       # px [row, col]
    f1 = to_uint8(r.render(p + shift * g.spacing_mm, a, None))
    flow = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM).calc(f0, f1, None)
    m = cv2.erode(g.sector_mask().astype(np.uint8), np.ones((15, 15))) > 0
    err = np.linalg.norm(flow - shift[::-1], axis=-1)[m].mean()
    assert err < 0.25


def test_config_validation():
    with pytest.raises(PhantomParameterError, match="axial_fwhm_mm"):
        SpeckleConfig(axial_fwhm_mm=-1)
    with pytest.raises(PhantomParameterError, match="sector_angle_deg"):
        SectorGeometry.fit(64, 64, 100.0, 200.0)
