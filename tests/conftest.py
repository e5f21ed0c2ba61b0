"""Shared fixtures: small real clips written with the project's own writer, NIfTI stacks
written by nibabel, the shared Sunnybrook MR series, a side-car child, the bench scripts as
modules."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

from streamer.serve_process import SideCarProcess


@pytest.fixture(scope="session")
def bench_module():
    """``bench_module("accuracy")``: a script of ``bench/`` as a module (the benches are
    scripts, not a package), imported once per session."""
    loaded = {}

    def load(name: str):
        if name not in loaded:
            path = Path(__file__).resolve().parents[1] / "bench" / f"{name}.py"
            spec = importlib.util.spec_from_file_location(f"bench_{name}", path)
            module = importlib.util.module_from_spec(spec)
            sys.modules[spec.name] = module
            spec.loader.exec_module(module)
            loaded[name] = module
        return loaded[name]
    return load


@pytest.fixture
def npz_clip(tmp_path):
    """A 12-frame 48x64 uint8 echo-like clip at 50 fps, 0.3 mm pixels."""
    path = tmp_path / "clip.npz"
    frames = np.random.default_rng(1).integers(0, 255, (12, 48, 64)).astype(np.uint8)
    np.savez(path, frames=frames, spacing_mm=np.array([0.3, 0.3]), fps=np.array(50.0),
             modality=np.array("US"))
    return path


@pytest.fixture
def write_nifti_stack():
    """``write_nifti_stack(path, data, zooms, units=("mm", "msec"), origin=...)``: a NIfTI-1
    file as nibabel writes it, voxels ``data`` (x, y, z[, t]) with an axis-aligned affine of
    voxel size ``zooms[:3]`` (pixdim[4], the frame time, is ``zooms[3]``)."""
    import nibabel as nib

    def write(path: Path, data: np.ndarray, zooms: tuple[float, ...], *,
              units: tuple[str, str] = ("mm", "msec"), origin=(-12.0, 7.0, 30.0)) -> Path:
        affine = np.diag([*zooms[:3], 1.0])
        affine[:3, 3] = origin
        img = nib.Nifti1Image(data, affine)
        img.header.set_xyzt_units(*units)
        img.header.set_zooms(zooms)
        nib.save(img, path)
        return path
    return write


@pytest.fixture
def phantom_heart_nifti(tmp_path):
    """``phantom_heart_nifti(seed_offset=310, frames=20)``: a held-out phantom heart (the
    ``test`` split, past the wall-motion trainer's hearts) as a NIfTI stack, slice 0
    apical to slice 2 basal, 10 mm apart, whose patient axes put the anterior up on screen
    (as the phantom draws it); returns the path and the three clips, basal first."""
    import nibabel as nib

    from calib.datasets import split_seeds, wall_motion_stack_configs
    from calib.mr import make_mr_clip

    def write(seed_offset: int = 310, frames: int = 20) -> tuple[Path, list]:
        seed = int(split_seeds("test", 1, offset=seed_offset)[0])
        clips = [make_mr_clip(c) for c in wall_motion_stack_configs(seed, frames=frames)]
        stack = np.stack([c.frames for c in clips[::-1]], axis=-1)     # (t, rows, cols, z)
        data = stack.transpose(2, 1, 3, 0).astype(np.int16)           # (x = cols, y = rows, z, t)
        sy, sx = clips[0].spacing_mm
        img = nib.Nifti1Image(data, np.diag([-sx, -sy, 10.0, 1.0]))  # rows posterior: anterior up
        img.header.set_xyzt_units("mm", "msec")
        img.header.set_zooms((sx, sy, 10.0, 1000.0 / clips[0].fps))
        path = tmp_path / f"heart-{seed}.nii"
        nib.save(img, path)
        return path, clips
    return write


@pytest.fixture(scope="session")
def sunnybrook_root() -> Path:
    """The shared Sunnybrook folder (dicoms/, contours/, link.csv), where the MR trainer
    looks for it; tests that need it are skipped where it is absent."""
    from engines.train.mr import default_sunnybrook

    root = default_sunnybrook()
    if not (root / "link.csv").is_file():
        pytest.skip(f"the Sunnybrook data is not at {root} (nor ../shared or /work/shared)")
    return root


@pytest.fixture(scope="session")
def sunnybrook_series(sunnybrook_root) -> Path:
    """The shared Sunnybrook short-axis cine series SCD0000101 (real MR: 12 slices x 20
    phases, one DICOM image per file)."""
    return sunnybrook_root / "dicoms" / "SCD0000101"


@pytest.fixture
def serve():
    """Start `cardiostream serve ARGS...` as a child process; killed at teardown if alive."""
    started: list[SideCarProcess] = []

    def start(*args: str) -> SideCarProcess:
        # generous: a first start on a fresh machine exports and compiles the engines and
        # numba kernels (about a minute); later starts load them from the caches
        process = SideCarProcess(list(args), startup_timeout_s=300)
        started.append(process)
        return process

    yield start
    for process in started:
        if process.process.poll() is None:
            process.process.kill()
            process.process.wait()


@pytest.fixture
def engine_cache(tmp_path_factory, monkeypatch):
    """Engines built by a test go to one cache under the session's temporary folder, not the
    user's (``pytestmark = pytest.mark.usefixtures("engine_cache")``)."""
    monkeypatch.setenv("CARDIOSTREAM_CACHE", str(tmp_path_factory.getbasetemp() / "engine-cache"))
