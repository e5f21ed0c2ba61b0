"""The README's first command: `cardiostream demo` on pydicom-data's real echo cine."""

import re
import subprocess
import sys


def test_demo_replays_the_real_echo_through_a_live_sidecar_and_stops_it():
    # lossless, so that a loaded machine cannot turn the count check into a timing test
    done = subprocess.run([sys.executable, "-m", "streamer", "demo", "--lossless"],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "color3d_jpeg_baseline.dcm  120 frames  480x640x3" in out
    assert "(sent with view hint a4c)" in out
    # how the networks run, from the stream's start echo (the app's declaration)
    assert re.search(r"^app echo: networks view \w+/\w+, seg \w+/\w+, flow \w+/\w+$", out, re.M)
    rows = [line.split() for line in out.splitlines()
            if re.match(r"^\s+\d+\s+\d+\.\d{3}\s", line)]
    assert len(rows) == 120  # one line per frame
    # every frame analysed: a view label from the classifier, and a strain value only where
    # quality control passed it; where it did not, "-" and the reasons in the flags (the
    # phantom-trained networks follow the wall of this real clip on most frames, not all)
    assert all(row[2] in ("a4c", "a2c", "alax", "plax", "psax", "sc4c", "ivc", "unknown")
               for row in rows)
    strain = [row for row in rows if re.match(r"^-?\d+\.\d\d$", row[3])]
    assert all(-40 <= float(row[3]) <= 15 for row in strain), rows
    assert all(row[3] == "-" and re.search(r"not_measurable:", row[-1])
               for row in rows if row not in strain), rows
    assert re.search(rf"strain measurable on {len(strain)} of 120 analysed frames", out)
    assert len(strain) > 0
    assert "120 frames sent, 120 results, 0 dropped, 0 errors" in out
    assert "side-car stopped cleanly" in out and "'results': 120" in out
