"""``cardiostream serve`` as a child process, for the demo, benchmarks and tests."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import tempfile
import threading


class SideCarProcess:
    """``cardiostream serve ARGS`` on free loopback ports; endpoints from its ready line.

    The child's stdout carries its JSON events (``ready``, ``stopped``); its log
    (stderr) goes to a temporary file whose tail is quoted if it fails to start.
    """

    def __init__(self, args: list[str], startup_timeout_s: float = 60.0):
        self.log = tempfile.TemporaryFile(mode="w+")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "streamer", "serve", "--ingest", "tcp://127.0.0.1:*",
             "--publish", "tcp://127.0.0.1:*", *args],
            stdout=subprocess.PIPE, stderr=self.log, text=True)
        self.ready = self._read_event("ready", startup_timeout_s)

    def _read_event(self, event: str, timeout_s: float) -> dict:
        found: dict = {}

        def read() -> None:
            for line in self.process.stdout:
                try:
                    payload = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if payload.get("event") == event:
                    found.update(payload)
                    return

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        reader.join(timeout_s)
        if not found:
            if self.process.poll() is None:
                self.process.kill()
            self.process.wait()
            raise RuntimeError(f"the side-car did not report '{event}' within {timeout_s:g} s "
                               f"(exit code {self.process.returncode}); its log ends:\n"
                               f"{self.log_tail()}")
        return found

    def rss_mb(self) -> float:
        """The child's resident memory, MiB (Linux: /proc/PID/status)."""
        with open(f"/proc/{self.process.pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
        raise RuntimeError(f"no VmRSS for pid {self.process.pid}")

    def log_tail(self, lines: int = 20) -> str:
        self.log.seek(0)
        return "".join(self.log.readlines()[-lines:])

    def stop(self, timeout_s: float = 30.0) -> dict:
        """SIGINT, then wait for the side-car's 'stopped' line and its exit."""
        self.process.send_signal(signal.SIGINT)
        stopped = self._read_event("stopped", timeout_s)
        self.process.wait(timeout_s)
        return stopped
