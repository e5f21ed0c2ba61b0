"""Clips and truth on disk; any clip is remade exactly from what was written."""

import numpy as np
import pytest

from calib.echo import EchoPhantomConfig, make_echo_clip
from calib.io import read_truth, remake, truth_path_for, write_phantom
from calib.mr import MRPhantomConfig, make_mr_clip


def test_truth_path_for():
    assert truth_path_for("/a/b/clip.nii.gz").name == "clip.truth.npz"
    assert truth_path_for("clip.dcm").name == "clip.truth.npz"


@pytest.mark.parametrize("suffix", [".dcm", ".nii.gz", ".npz"])
def test_echo_roundtrip(tmp_path, suffix):
    from streamer.io.clips import open_clip
    clip = make_echo_clip(EchoPhantomConfig(frames=3, rows=96, cols=128, seed=4))
    path, tpath = write_phantom(clip, tmp_path / f"a4c{suffix}")
    assert tpath.exists()
    with open_clip(path) as r:
        info = r.info
        frames = np.stack([f.pixels for f in r])
    assert np.array_equal(frames, clip.frames)
    assert info.spacing_mm == pytest.approx(clip.spacing_mm)
    assert info.fps == pytest.approx(clip.fps, rel=1e-6)
    assert info.metadata["params"]["seed"] == 4
    t = read_truth(tpath)
    assert np.array_equal(t["displacement"], clip.truth.displacement)
    assert t["params"]["phantom"] == "echo"
    again = remake(path)
    assert np.array_equal(again.frames, clip.frames)


def test_mr_roundtrip_keeps_velocity_channels(tmp_path):
    from streamer.io.clips import open_clip
    clip = make_mr_clip(MRPhantomConfig(frames=3, rows=96, cols=96, pixel_mm=3.0, seed=2))
    path, tpath = write_phantom(clip, tmp_path / "sax.npz")
    with open_clip(path) as r:
        assert r.info.channels == ("magnitude", "v_col_mm_s", "v_row_mm_s", "v_through_mm_s")
        f0 = next(iter(r)).pixels
    assert np.allclose(f0[..., 0], clip.frames[0]) and np.allclose(f0[..., 1:], clip.velocity_mm_s[0])
    p2, _ = write_phantom(clip, tmp_path / "sax.dcm")              # DICOM: magnitude only
    with open_clip(p2) as r:
        assert r.info.modality == "MR" and r.info.dtype == "uint16"
    assert np.array_equal(remake(tpath).frames, clip.frames)
