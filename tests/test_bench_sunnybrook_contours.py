"""bench/sunnybrook_contours.py: the edge fit that checks the contour files' pixel grid, on
a drawn disk with known shifts and on a real patient."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest

from streamer.io.sunnybrook import CONTOUR_PIXEL_CENTRE, read_patient


@pytest.fixture(scope="module")
def bench(bench_module):
    return bench_module("sunnybrook_contours")


def _disk(centre_xy, radius: float, shape=(96, 96), supersample: int = 8) -> np.ndarray:
    """A bright disk (blood) on a darker ring's level (myocardium), area-averaged edges."""
    n = shape[0] * supersample
    c = (np.arange(n) + 0.5) / supersample - 0.5                 # pixel centres at whole numbers
    yy, xx = np.meshgrid(c, c, indexing="ij")
    fine = np.where(np.hypot(xx - centre_xy[0], yy - centre_xy[1]) < radius, 200.0, 60.0)
    return fine.reshape(shape[0], supersample, shape[1], supersample).mean((1, 3))


def _circle(centre_xy, radius: float, k: int = 120) -> np.ndarray:
    a = 2 * np.pi * np.arange(k) / k
    return np.stack([centre_xy[0] + radius * np.cos(a), centre_xy[1] + radius * np.sin(a)], 1)


@pytest.mark.parametrize("shift", [(0.0, 0.0), (0.5, 0.0), (0.0, -0.5), (0.4, 0.3)])
def test_the_fit_finds_a_known_translation_and_no_radial_term(bench, shift):
    image = _disk((47.3, 45.8), 18.0)
    contour = _circle((47.3 + shift[0], 45.8 + shift[1]), 18.0)
    n, off = bench.edge_offsets_px(image, contour)
    fit = bench.fit_translation(n, off)
    # the contour moved by +shift, so the edges lie at -shift from it
    assert fit["translation_x_px"] == pytest.approx(-shift[0], abs=0.1)
    assert fit["translation_y_px"] == pytest.approx(-shift[1], abs=0.1)
    assert fit["radial_px"] == pytest.approx(0.0, abs=0.1)


def test_a_contour_drawn_outside_the_edge_shows_as_a_radial_term(bench):
    image = _disk((48.0, 48.0), 16.0)
    fit = bench.fit_translation(*bench.edge_offsets_px(image, _circle((48.0, 48.0), 17.0)))
    assert fit["radial_px"] == pytest.approx(-1.0, abs=0.1)
    assert abs(fit["translation_x_px"]) < 0.1 and abs(fit["translation_y_px"]) < 0.1


def test_read_patient_points_lie_on_the_images_edges_and_the_files_do_not(bench, sunnybrook_root):
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Invalid value for VR UI")
        fits = bench.measure(read_patient(sunnybrook_root, "SCD0000201"))
    ours, file = fits["read_patient"], fits["file"]
    assert abs(ours["translation_x_px"]) < 0.25 and abs(ours["translation_y_px"]) < 0.25
    assert file["translation_x_px"] < -0.5 and file["translation_y_px"] < -0.5


def test_the_command_writes_its_table(bench, sunnybrook_root, tmp_path, capsys):
    out = tmp_path / "c.json"
    assert bench.main(["--patients", "SCD0000301", "--out", str(out)]) == 0
    rec = json.loads(out.read_text())
    assert rec["contour_pixel_centre"] == CONTOUR_PIXEL_CENTRE
    assert [r["patient"] for r in rec["patients"]] == ["SCD0000301"]
    assert set(rec["patients"][0]) == {"patient", "file", "file - 0.5", "read_patient"}
    assert "read_patient" in capsys.readouterr().out
