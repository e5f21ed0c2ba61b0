"""``cardiostream serve`` as a child process, for the demo, benchmarks and tests."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading


class SideCarProcess:
    """``cardiostream serve`` as a child process; endpoints read from its ready line."""

    def __init__(self, args: list[str], startup_timeout_s: float):
        self.process = subprocess.Popen(
            [sys.executable, "-m", "streamer", "serve", "--ingest", "tcp://127.0.0.1:*",
             "--publish", "tcp://127.0.0.1:*", *args],
            stdout=subprocess.PIPE, text=True)
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
            self.process.kill()
            raise RuntimeError(f"the side-car did not report '{event}' within {timeout_s:g} s "
                               f"(exit code {self.process.poll()})")
        return found

    def stop(self, timeout_s: float = 30.0) -> dict:
        """SIGINT, then wait for the side-car's 'stopped' line and its exit."""
        self.process.send_signal(signal.SIGINT)
        stopped = self._read_event("stopped", timeout_s)
        self.process.wait(timeout_s)
        return stopped
