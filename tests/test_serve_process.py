"""SideCarProcess: the child side-car reports ready/stopped and exits cleanly."""

import sys

import pytest

from streamer.serve_process import SideCarProcess


def test_ready_and_stopped_events():
    sidecar = SideCarProcess(["--lossless", "--analysis", "none"], startup_timeout_s=60)
    assert sidecar.ready["mode"] == "lossless"
    assert sidecar.ready["ingest"].startswith("tcp://127.0.0.1:")
    if sys.platform.startswith("linux"):  # its resident memory, from /proc
        assert 20 < sidecar.rss_mb() < 4096
    stopped = sidecar.stop()
    assert stopped["stats"]["received"] == 0 and sidecar.process.returncode == 0


def test_a_sidecar_that_cannot_start_is_reported():
    with pytest.raises(RuntimeError, match="did not report 'ready'"):
        SideCarProcess(["--ingest", "not-an-endpoint"], startup_timeout_s=30)
