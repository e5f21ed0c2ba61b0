"""The `phantom` subcommand: parser, handler, clear errors."""

import argparse

import numpy as np
import pytest

from calib.cli import add_phantom_parser, parse_size
from calib.errors import PhantomParameterError
from calib.io import read_truth


def _parser():
    p = argparse.ArgumentParser(prog="cardiostream")
    add_phantom_parser(p.add_subparsers(dest="command"))
    return p


def test_echo_command_writes_clip_and_truth(tmp_path, capsys):
    out = tmp_path / "a4c.dcm"
    args = _parser().parse_args(["phantom", "echo", "--view", "a4c", "--frames", "4", "--fps", "50",
                                 "--heart-rate-bpm", "72", "--gls-pct", "-17", "--size", "96x128",
                                 "--dysfunction", "apical_septal=akinetic,mid_septal=0.5",
                                 "--seed", "9", "--out", str(out)])
    assert args.func(args) == 0
    assert out.exists() and (tmp_path / "a4c.truth.npz").exists()
    t = read_truth(out)
    p = t["params"]["params"]
    assert p["seed"] == 9 and p["gls_pct"] == -17 and p["rows"] == 96 and p["cols"] == 128
    assert p["dysfunction"] == {"apical_septal": 0.0, "mid_septal": 0.5}
    assert "wrote" in capsys.readouterr().out


def test_mr_command(tmp_path):
    out = tmp_path / "sax.nii.gz"
    args = _parser().parse_args(["phantom", "mr", "--slice", "mid", "--frames", "3", "--size", "96",
                                 "--pixel-mm", "3", "--wall-motion", "7=hypokinetic", "--infarct", "8",
                                 "--seed", "2", "--out", str(out)])
    assert args.func(args) == 0
    t = read_truth(out)
    assert list(t["segment_scores"]) == [1, 2, 0, 0, 0, 0]


def test_mr_velocity_mapping_command(tmp_path):
    from calib.datasets import velocity_mapping_config
    from streamer.io.clips import open_clip

    out = tmp_path / "vm.npz"
    args = _parser().parse_args(["phantom", "mr", "--velocity-mapping", "--slice", "basal",
                                 "--frames", "4", "--size", "96", "--pixel-mm", "3",
                                 "--phase-offset-mm-s", "12", "--seed", "5", "--out", str(out)])
    assert args.func(args) == 0
    p = read_truth(out)["params"]["params"]
    drawn = velocity_mapping_config(5)
    assert p["blood_signal"] == drawn.blood_signal and p["venc_mm_s"] == drawn.venc_mm_s
    assert p["phase_offset_mm_s"] == 12.0 and p["frames"] == 4 and p["slice_level"] == "basal"
    with open_clip(out) as reader:
        assert reader.info.channels[0] == "magnitude" and len(reader.info.channels) == 4
        assert reader.info.metadata["venc_mm_s"] == drawn.venc_mm_s


def test_vary_anatomy_is_reproducible(tmp_path):
    a = _parser().parse_args(["phantom", "echo", "--vary-anatomy", "--frames", "2", "--size", "64",
                              "--seed", "5", "--out", str(tmp_path / "x.npz")])
    b = _parser().parse_args(["phantom", "echo", "--vary-anatomy", "--frames", "2", "--size", "64",
                              "--seed", "5", "--out", str(tmp_path / "y.npz")])
    a.func(a), b.func(b)
    assert np.array_equal(np.load(tmp_path / "x.npz")["frames"], np.load(tmp_path / "y.npz")["frames"])


@pytest.mark.parametrize("argv, needle", [
    (["--fps", "-5"], "fps=-5"),
    (["--gls-pct", "-55"], "gls_pct=-55 is outside -40..+20 %"),
    (["--view", "a5c"], "view='a5c' is unknown"),
    (["--size", "big"], "size='big'"),
    (["--dysfunction", "apical_septal"], "SEGMENT=VALUE"),
])
def test_bad_parameters_raise_clear_errors(tmp_path, argv, needle):
    args = _parser().parse_args(["phantom", "echo", "--frames", "2", "--out", str(tmp_path / "c.npz")] + argv)
    with pytest.raises(PhantomParameterError) as e:
        args.func(args)
    assert needle in str(e.value)
    assert not (tmp_path / "c.npz").exists()


def test_parse_size():
    assert parse_size("256") == (256, 256) and parse_size("240x320") == (240, 320)


def test_standalone_main_reports_errors(tmp_path, capsys):
    from calib.cli import main
    assert main(["echo", "--gls-pct", "-55", "--out", str(tmp_path / "c.npz")]) == 2
    assert "gls_pct=-55" in capsys.readouterr().err
