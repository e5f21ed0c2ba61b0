"""Shared fixtures: small real clips written with the project's own writer, a side-car child."""

from __future__ import annotations

import numpy as np
import pytest

from streamer.serve_process import SideCarProcess


@pytest.fixture
def npz_clip(tmp_path):
    """A 12-frame 48x64 uint8 echo-like clip at 50 fps, 0.3 mm pixels."""
    path = tmp_path / "clip.npz"
    frames = np.random.default_rng(1).integers(0, 255, (12, 48, 64)).astype(np.uint8)
    np.savez(path, frames=frames, spacing_mm=np.array([0.3, 0.3]), fps=np.array(50.0),
             modality=np.array("US"))
    return path


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
