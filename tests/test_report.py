"""`cardiostream report` (streamer.report): one self-contained HTML file from `analyze` output
of a real echo phantom DICOM clip and of a phantom heart's short-axis NIfTI stack, checked
against the results file it came from: the video decodes, the curves' data and the beat
tables hold the messages' values."""

from __future__ import annotations

import base64
import hashlib
import json
import re
from html.parser import HTMLParser
from pathlib import Path

import cv2
import pytest

import engines
from streamer import __version__
from streamer.cli import main
from streamer.report import ReportConfig, ReportError, field_value, format_value, write_report

FRAMES = 90


class Page(HTMLParser):
    """What a test reads off the report: videos, the data block, table cells."""

    def __init__(self, text: str):
        super().__init__()
        self.videos: list[dict] = []
        self.cells: list[dict] = []       # {"table", "stream", "beat", "field", "value", "text"}
        self.data: dict = {}
        self._table: dict = {}
        self._row: dict = {}
        self._cell: dict | None = None
        self._script = False
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "video":
            self.videos.append(a)
        elif tag == "table":
            self._table = a
        elif tag == "tr":
            self._row = a
        elif tag == "td" and "data-field" in a:
            self._cell = {"table": self._table.get("class"), "stream": self._row.get("data-stream"),
                          "beat": self._row.get("data-beat"), "field": a["data-field"],
                          "value": json.loads(a["data-value"]), "text": ""}
        elif tag == "script" and a.get("id") == "cardiostream-data":
            self._script = True

    def handle_endtag(self, tag):
        if tag == "td" and self._cell is not None:
            self.cells.append(self._cell)
            self._cell = None
        elif tag == "script":
            self._script = False

    def handle_data(self, data):
        if self._cell is not None:
            self._cell["text"] += data
        if self._script:
            self.data = json.loads(data)


def decode_video(video: dict, tmp_path: Path) -> tuple[int, tuple[int, int]]:
    """Frames and (rows, cols) of a video element's data URL, as OpenCV decodes it."""
    prefix = "data:video/webm;base64,"
    assert video["src"].startswith(prefix)
    path = tmp_path / "video.webm"
    path.write_bytes(base64.b64decode(video["src"][len(prefix):]))
    capture = cv2.VideoCapture(str(path))
    n, shape = 0, (0, 0)
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        n, shape = n + 1, frame.shape[:2]
    capture.release()
    return n, shape


def rows_of(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def check_cells(page: Page, beats: list[dict], table: str) -> int:
    """Every cell of the table's rows holds its beat message's value (exactly, in data-value)
    and shows it formatted; returns how many cells were checked."""
    by_key = {(b["stream"], str(b["beat"])): b for b in beats}
    checked = 0
    for cell in (c for c in page.cells if c["table"] == table):
        beat = by_key[cell["stream"], cell["beat"]]
        assert field_value(beat, cell["field"]) == cell["value"], cell
        assert cell["text"] == format_value(cell["value"])
        checked += 1
    return checked


@pytest.fixture(scope="module")
def echo_analysis(tmp_path_factory):
    """A 90-frame echo phantom (one beat closes) as multi-frame DICOM, analysed with the
    clip's path kept in the start (--keep-identifiers), which the report must leave out (the
    stream's name is the user's: here not the file's)."""
    folder = tmp_path_factory.mktemp("echo")
    clip = folder / "patient-doe-echo.dcm"
    assert main(["phantom", "echo", "--out", str(clip), "--frames", str(FRAMES), "--seed", "3"]) == 0
    out = folder / "echo.jsonl"
    assert main(["analyze", str(clip), "--out", str(out), "--no-progress", "--view", "a4c",
                 "--keep-identifiers", "--stream", "echo-1"]) == 0
    return clip, out


def test_an_echo_report_holds_the_video_curves_and_beats_of_its_results(echo_analysis, tmp_path):
    clip, results = echo_analysis
    html = tmp_path / "report.html"
    assert main(["report", str(results), "--clip", str(clip), "--out", str(html)]) == 0
    text = html.read_text()
    page = Page(text)
    rows = rows_of(results)
    frames = [r for r in rows if r["kind"] == "result"]
    beats = [r for r in rows if r["kind"] == "beat"]
    assert len(frames) == FRAMES and beats

    [video] = page.videos
    n, (height, width) = decode_video(video, tmp_path)
    assert n == int(video["data-frames"]) == FRAMES and width == 480 and height > 300

    [(name, data)] = page.data.items()
    assert name == frames[0]["stream"] and data["app"] == "echo"
    assert data["seq"] == [r["seq"] for r in frames]
    assert data["gls_pct"] == [r.get("gls_pct") for r in frames]
    assert sum(v is not None for v in data["gls_pct"]) > FRAMES // 2
    for segment, values in data["regional_pct"].items():
        assert values == [(r.get("regional_pct") or {}).get(segment) for r in frames]
    t0 = frames[0]["t_acq_ns"]
    assert data["t_s"] == [round((r["t_acq_ns"] - t0) / 1e9, 6) for r in frames]

    assert check_cells(page, beats, "beats") == len(beats) * 12

    # provenance: the version, and each network's weights by the sha256 of the shipped file
    assert f"cardiostream {__version__}" in text
    weights = Path(engines.__file__).parent / "weights"
    for role in ("view", "seg", "flow"):
        assert hashlib.sha256((weights / f"{role}.pt").read_bytes()).hexdigest() in text
    # the clip's path and file name (kept in the start by --keep-identifiers) stay out
    assert rows[0]["meta"]["source"] and "patient-doe" in json.dumps(rows[0])
    assert "patient-doe" not in text and str(clip.parent) not in text
    # self-contained: nothing is fetched when the page is viewed
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", text)


def test_a_report_without_the_clip_has_no_video_and_a_bad_file_is_refused(echo_analysis,
                                                                          tmp_path, capsys):
    _, results = echo_analysis
    page = Page(write_report(ReportConfig(results, tmp_path / "r.html")).read_text())
    assert not page.videos and page.data
    empty = tmp_path / "empty.jsonl"
    empty.write_text(json.dumps({"v": 1, "kind": "start", "stream": "s", "meta": {}}) + "\n")
    with pytest.raises(ReportError, match="no result or beat message"):
        write_report(ReportConfig(empty, tmp_path / "e.html"))
    broken = tmp_path / "broken.jsonl"
    broken.write_text(results.read_text()[:5000].rsplit("\n", 1)[0] + "\n{not json\n")
    assert main(["report", str(broken), "--out", str(tmp_path / "b.html")]) == 2
    assert "broken.jsonl:" in capsys.readouterr().err
    # one clip cannot be the video of two streams
    two = tmp_path / "two.jsonl"
    lines = results.read_text().splitlines()
    two.write_text("\n".join(lines + [line.replace(json.loads(lines[0])["stream"], "other")
                                      for line in lines]) + "\n")
    with pytest.raises(ReportError, match="2 single-clip streams"):
        write_report(ReportConfig(two, tmp_path / "t.html", clip=echo_analysis[0]))
    assert not (tmp_path / "t.html").exists()


def test_an_mr_stack_report_holds_its_slices_volumes_and_wall_motion(phantom_heart_nifti,
                                                                     tmp_path):
    path, _ = phantom_heart_nifti(frames=20)
    results, masks = tmp_path / "heart.jsonl", tmp_path / "masks.npz"
    assert main(["analyze", str(path), "--modality", "MR", "--app", "mr-sax", "--out",
                 str(results), "--no-progress", "--stream", "heart", "--masks-out",
                 str(masks)]) == 0
    html = write_report(ReportConfig(results, tmp_path / "heart.html", clip=path, masks=masks))
    page = Page(html.read_text())
    rows = rows_of(results)

    [video] = page.videos
    n, (height, width) = decode_video(video, tmp_path)
    assert n == int(video["data-frames"]) == 20       # the phases
    assert width == 3 * 240 and height > 100           # the three slices side by side

    assert sorted(page.data) == [f"heart/slice-{k}" for k in range(3)]
    for name, data in page.data.items():
        frames = [r for r in rows if r["kind"] == "result" and r["stream"] == name]
        assert data["seq"] == [r["seq"] for r in frames] == list(range(20))
        for key in ("circumferential_strain_pct", "radial_strain_pct"):
            assert data[key] == [r.get(key) for r in frames]

    beats = [r for r in rows if r["kind"] == "beat"]
    assert len(beats) == 3 and check_cells(page, beats, "beats") == 3 * 10
    [completing] = [b for b in beats if b.get("stack")]
    stack_cells = [c for c in page.cells if c["table"] == "stack"]
    assert {c["field"]: c["value"] for c in stack_cells}["covers_lv"] == completing["stack"]["covers_lv"]
    [wall] = [r for r in rows if r["kind"] == "wall_motion"]
    assert len([c for c in page.cells if c["table"] == "wall-motion"]) == 2 * 16
    assert [c["value"] for c in page.cells if c["table"] == "wall-motion"
            and c["field"] == "score"] == [s["score"] for s in wall["segments"]]
    assert f"MSI {format_value(wall['msi'])}" in html.read_text()


@pytest.mark.slow
def test_a_velocity_mapping_report_holds_its_video_curves_and_peaks(tmp_path):
    clip, results, masks = tmp_path / "vm.npz", tmp_path / "vm.jsonl", tmp_path / "vm_masks.npz"
    assert main(["phantom", "mr", "--velocity-mapping", "--slice", "basal", "--frames", "50",
                 "--seed", "5", "--out", str(clip)]) == 0
    assert main(["analyze", str(clip), "--out", str(results), "--no-progress", "--masks-out",
                 str(masks)]) == 0
    page = Page(write_report(ReportConfig(results, tmp_path / "vm.html", clip=clip,
                                          masks=masks)).read_text())
    rows = rows_of(results)
    [beat] = [r for r in rows if r["kind"] == "beat"]
    assert beat["velocity_status"] == "measured"
    [video] = page.videos
    assert decode_video(video, tmp_path)[0] == int(video["data-frames"]) == 50
    [(name, data)] = page.data.items()
    assert data["app"] == "mr-velocity" and name == beat["stream"]
    [cycle] = data["cycles"]
    for key in ("radial", "circumferential", "longitudinal"):
        assert cycle[key] == beat[f"{key}_velocity_cm_s"]
    assert check_cells(page, [beat], "beats") == 14
