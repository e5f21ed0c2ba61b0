"""The docs figures are made by a command in the repo."""

import json

import pytest


@pytest.mark.slow
def test_make_figures(tmp_path):
    from calib.make_figures import main
    assert main(["--out", str(tmp_path)]) == 0
    for name in ("echo_views.png", "a4c_cycle.png", "mr_sax.png", "numbers.json"):
        assert (tmp_path / name).stat().st_size > 0
    n = json.loads((tmp_path / "numbers.json").read_text())
    assert n["dis_epe_myocardium_px_mean"] < 0.5
