"""Writes tests/golden/echo_results.json: what `cardiostream analyze` answers, frame by frame,
for fixed echo clips (held-out phantom A4C clips and pydicom's real A4C cines).

tests/test_golden.py replays the same clips and compares with this file, so a change that
moves any per-frame or per-beat echo result (beyond 1e-6) fails. Remake the file only when a
change of results is intended, and say why in the commit:

    .venv/bin/python tests/golden/make_echo_golden.py
"""

from __future__ import annotations

import json
import math
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
OUT = HERE / "echo_results.json"

#: header keys that are timing or bookkeeping, not results (they differ run to run)
VOLATILE = ("t_recv_ns", "t_result_ns", "t_publish_ns", "t_acq_ns", "latency_ms", "budget",
            "meta", "message")
#: held-out phantom clips: (test-split offset, count); 50 fps, a little over two beats
PHANTOM_SEEDS = (0, 3)
FPS = 50.0
#: how the networks run (tests/test_backends.py checks every backend against torch)
BACKEND = {"backend": "auto", "precision": "fp32"}


def phantom_clips(folder: Path) -> list[tuple[str, Path, dict]]:
    """Held-out A4C phantom clips written as DICOM (the test split: training never saw them)."""
    from calib.datasets import random_echo_config, split_seeds
    from calib.echo import make_echo_clip
    from streamer.io.clips import write_clip

    clips = []
    for seed in split_seeds("test", PHANTOM_SEEDS[1], offset=PHANTOM_SEEDS[0]):
        probe = random_echo_config(int(seed), view="a4c")
        frames = int(math.ceil(2.2 * 60.0 / probe.heart_rate_bpm * FPS))
        clip = make_echo_clip(random_echo_config(int(seed), view="a4c", frames=frames,
                                                 fps=FPS, start_phase=0.0))
        path = write_clip(folder / f"phantom-{seed}.dcm", clip.frames,
                          spacing_mm=tuple(clip.spacing_mm), fps=FPS, modality="US")
        clips.append((f"phantom-{seed}", path, {}))
    return clips


def real_clips() -> list[tuple[str, Path, dict]]:
    """pydicom's real apical 4-chamber cines, sent with the view hint (the phantom-trained
    classifier does not recognise them)."""
    from pydicom.data import get_testdata_file

    clips = [("pydicom-a4c", Path(get_testdata_file("examples_ybr_color.dcm")), {"view": "a4c"})]
    # pydicom-data (the test extra) adds the 120-frame JPEG cine; 45 frames is 1.5 beats
    path = get_testdata_file("color3d_jpeg_baseline.dcm", download=False)
    if path is None:
        raise SystemExit("color3d_jpeg_baseline.dcm not found: install the test extra "
                         "(pydicom-data)")
    clips.append(("pydicom-a4c-jpeg", Path(path), {"view": "a4c", "max_frames": 60}))
    return clips


def analyse(name: str, path: Path, options: dict, folder: Path) -> list[dict]:
    """The clip through ``streamer.analyze.analyze`` (what `cardiostream analyze` runs) with
    the first frame acquired at t = 0: the headers it writes, less what varies run to run."""
    from streamer.analyze import analyze
    from streamer.apps import AnalysisConfig, EngineConfig, build_analysis
    from streamer.io.clips import open_clip
    from streamer.replay import ReplayConfig

    out = folder / f"{name}.jsonl"
    analysis = build_analysis(AnalysisConfig(engines=EngineConfig(**BACKEND)))
    with open_clip(path) as reader:
        analyze(reader, out, analysis, ReplayConfig(stream=name, **options), t0_ns=0)
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    return [{k: v for k, v in row.items() if k not in VOLATILE} for row in rows]


def golden(folder: Path) -> dict[str, list[dict]]:
    return {name: analyse(name, path, options, folder)
            for name, path, options in [*phantom_clips(folder), *real_clips()]}


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        results = golden(Path(tmp))
    OUT.write_text(json.dumps(results, indent=None, separators=(",", ":")) + "\n")
    counts = {name: sum(r["kind"] == "result" for r in rows) for name, rows in results.items()}
    print(f"wrote {OUT}: {counts}")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(HERE.parents[1]))
    sys.exit(main())
