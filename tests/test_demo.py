"""The README's first command: `cardiostream demo` on pydicom's real echo clip."""

import re
import subprocess
import sys


def test_demo_replays_the_real_echo_through_a_live_sidecar_and_stops_it():
    done = subprocess.run([sys.executable, "-m", "streamer", "demo"], capture_output=True,
                          text=True, timeout=180)
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "examples_ybr_color.dcm  30 frames  240x320x3" in out
    rows = [line for line in out.splitlines() if re.match(r"^\s+\d+\s+\d+\.\d{3}\s", line)]
    assert len(rows) == 30  # one line per frame, live mode, nothing dropped at 30 fps
    assert all("placeholder_analysis" in row for row in rows)
    assert "30 frames sent, 30 results, 0 dropped, 0 errors" in out
    assert "side-car stopped cleanly" in out and "'results': 30" in out
