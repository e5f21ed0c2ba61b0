"""Re-analysing an archive: a *study* of many clips, one results file each, resumable.

``cardiostream analyze PATHS... --out-dir DIR`` runs every clip found under PATHS (files,
folders walked recursively, glob patterns) through :func:`streamer.analyze.analyze`, the
code path of ``cardiostream analyze CLIP --out FILE``, with the same options for every
clip, and writes into DIR:

``clips/NAME.jsonl``
    each clip's results, exactly the lines ``analyze CLIP --out`` writes with the same
    options, ``--threads`` and ``--t0-ns`` (:data:`TIMING_KEYS` aside, the wall-clock);
    ``NAME`` is the input's readable stem and a short hash of its absolute path
    (:func:`output_name`).
``index.jsonl``
    one JSON object per clip outcome, appended as each clip finishes (a run stopped half
    way keeps what it finished) and rewritten with the latest line of each input at the end
    of a run: the input's path, content digest, output, status (``done`` / ``error``), the
    error, frames, seconds, the settings digest and the thread count.
``settings.json``
    the settings (every option that changes a result bit) of each settings digest used.
``study.csv``
    the study table: one row per clip and beat, one row for a clip without a beat, one for
    a clip that failed (:data:`TABLE_COLUMNS`); written from the results files at the end of
    every run, so it covers every input of the index (clips skipped as done included).
``errors.txt``
    ``NAME: message`` for every input whose last outcome was an error (empty when none).

A rerun skips the inputs whose last outcome is ``done`` with the same settings and the same
content (the stored file size and modification time, else a fresh content digest); errors
are retried. A rerun with other settings is refused (:class:`StudyError`) while DIR holds
clips done with other settings: their results would not compare.

Discovery (:func:`discover`): a folder whose DICOM images are single images is one clip
(a DICOM series, read as the clip readers read a folder: a cine, a short-axis stack or a
velocity-mapping series); elsewhere each file a clip reader reads is a clip; other files
are skipped and counted.

Runners: in this process (one worker), a process pool (``--workers N``, the "spawn" start
method: torch, OpenVINO and numba do not survive ``fork``) and Ray (``--ray [ADDRESS]``:
actors, on a local Ray or a cluster). Every runner calls :meth:`StudyWorker.run`, which
holds one built :class:`~streamer.apps.Analysis` per worker process or actor (engines
built once, on its first clip) and gives each clip fresh app state, so a clip's results
do not depend on which clips ran before it in the same worker.

Byte identity across runners needs the same numerical settings in each: eager torch
(``--backend torch``, the velocity, wall-motion and infarct networks) gives other last bits
with another thread count, so every worker runs the networks on ``--threads`` threads
(default :data:`STUDY_THREADS`, whatever ``--workers``), and every clip starts at
acquisition time ``--t0-ns`` (default :data:`STUDY_T0_NS`).
"""

from __future__ import annotations

import csv
import dataclasses
import glob
import hashlib
import logging
import os
import re
import signal
import socket
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from contextlib import ExitStack
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import orjson

from streamer import __version__
from streamer.analyze import analyze
from streamer.apps import Analysis, AnalysisConfig, build_analysis
from streamer.io.clips import ClipError, open_input
from streamer.io.clips import registry as clip_registry
from streamer.io.clips.dicom import is_dicom_file
from streamer.replay import ReplayConfig, ReplayError, default_stream_name
from streamer.vocab import A4C_SEGMENTS

log = logging.getLogger(__name__)

#: the acquisition time of every clip's first frame in a study, ns since the epoch
#: (2023-11-14T22:13:20Z): fixed, so that a rerun and every runner give the same bits
STUDY_T0_NS = 1_700_000_000_000_000_000
#: the networks' CPU threads in every worker of a study unless ``--threads`` says otherwise;
#: one count for every runner, because eager torch's last bits change with it
STUDY_THREADS = 1

CLIPS_DIR = "clips"
INDEX_NAME = "index.jsonl"
SETTINGS_NAME = "settings.json"
TABLE_NAME = "study.csv"
ERRORS_NAME = "errors.txt"

#: the keys of a results line that are wall-clock (receive, result and publish times, and
#: the per-stage latencies): the only keys in which two runs of a clip with the same
#: settings differ
TIMING_KEYS = ("t_recv_ns", "t_result_ns", "t_publish_ns", "latency_ms")

#: DICOM file suffixes (the clip readers' own); other DICOM files are found by their preamble
_DICOM_SUFFIXES = (".dcm", ".dicom")
#: the truth a phantom writes beside its clip (calib.io.truth_path_for): not a clip
_PHANTOM_TRUTH = ".truth.npz"


class StudyError(ValueError):
    """The study cannot run as asked (a usage error: nothing to analyse, other settings in
    the output folder, Ray missing); the message says what to do."""


# ---------------------------------------------------------------------------------------
# discovery


@dataclass(frozen=True)
class ClipJob:
    """One clip of a study: a file, or a folder of one DICOM series (``series``)."""

    #: absolute, not resolved: ``analyze``'s default stream name hashes this path
    path: Path
    #: the output's name (:func:`output_name`)
    name: str
    series: bool = False
    #: the content digest, where the driver computed it already (else the worker does)
    digest: str | None = None

    @property
    def output(self) -> str:
        """The results file, relative to the study folder."""
        return f"{CLIPS_DIR}/{self.name}.jsonl"


@dataclass(frozen=True)
class Discovery:
    """What :func:`discover` found: the clips, and the files no clip reader reads."""

    jobs: tuple[ClipJob, ...]
    unsupported: tuple[str, ...] = ()


def discover(paths: Iterable[str | os.PathLike[str]]) -> Discovery:
    """The clips under ``paths``: files, folders (walked recursively, hidden entries left
    out) and glob patterns (``**`` crosses folders; a path that exists is never read as a
    pattern). A folder whose DICOM files are single images is one clip (a series), and a
    single image named on its own (or by a pattern) stands for its folder's series; a file
    that no clip reader reads is counted in ``unsupported``, not an error. An input found
    twice (the same file by two paths) is one clip. Raises :class:`StudyError` for a path
    that does not exist or a pattern that matches nothing."""
    found: dict[Path, bool] = {}   # absolute path -> series folder, in the order found
    real: set[Path] = set()
    unsupported: list[str] = []
    folders: dict[Path, bool] = {}  # folder -> a series, for single images named alone

    def add(path: Path, series: bool) -> None:
        key = path.resolve()
        if key not in real:
            real.add(key)
            found[path.absolute()] = series

    for given in paths:
        text = os.fspath(given)
        if Path(text).exists():
            matches = [Path(text)]
        elif glob.has_magic(text):
            matches = [Path(m) for m in sorted(glob.glob(text, recursive=True))]
            if not matches:
                raise StudyError(f"{text}: the pattern matches no file or folder")
        else:
            raise StudyError(f"{text}: no such file or folder")
        for match in matches:
            if match.is_dir():
                for root, dirs, files in os.walk(match):
                    dirs[:] = sorted(d for d in dirs if not d.startswith("."))
                    _sort_folder(Path(root), sorted(Path(root) / f for f in files
                                                    if not f.startswith(".")),
                                 add, unsupported)
            elif _kind(match) == "clip":
                add(match, False)
            elif _kind(match) == "dicom":
                frames = _dicom_frames(match)
                if frames == 1:  # an image of a series, or a still beside cines
                    folder = match.parent
                    if folder not in folders:
                        folders[folder] = _is_series(_folder_dicom(folder))
                    if folders[folder]:
                        add(folder, True)
                    else:
                        unsupported.append(str(match))
                elif frames == 0:
                    unsupported.append(str(match))
                else:
                    add(match, False)
            else:
                unsupported.append(str(match))
    jobs = [ClipJob(path, output_name(path), series) for path, series in found.items()]
    return Discovery(tuple(_unique_names(jobs)), tuple(unsupported))


def _kind(path: Path) -> str:
    """``dicom``, ``clip`` (another format a clip reader reads) or ``other``."""
    name = path.name.lower()
    if name.endswith(_PHANTOM_TRUTH):
        return "other"
    if name.endswith(_DICOM_SUFFIXES):
        return "dicom"
    # the registry's table of suffix -> reader (open_clip's own dispatch)
    if clip_registry.has_reader(path):
        return "clip"
    return "dicom" if is_dicom_file(path) else "other"


def _dicom_frames(path: Path) -> int | None:
    """The frames of a DICOM image file (1 for a single image), 0 for a DICOM file that
    holds no image (DICOMDIR, reports), None where the header cannot be read."""
    import pydicom

    try:
        header = pydicom.dcmread(path, stop_before_pixels=True,
                                 specific_tags=["Rows", "NumberOfFrames"])
    except Exception:  # noqa: BLE001 - any unreadable header is "unreadable" here
        return None
    if header.get("Rows") is None:
        return 0
    try:
        return max(1, int(header.get("NumberOfFrames") or 1))
    except (TypeError, ValueError):
        return None


def _folder_dicom(folder: Path) -> dict[Path, int | None]:
    """The frames of each DICOM file directly in ``folder`` (:func:`_dicom_frames`)."""
    return {f: _dicom_frames(f) for f in _series_files(folder) if _kind(f) == "dicom"}


def _is_series(dicom: dict[Path, int | None]) -> bool:
    """A folder's DICOM files make a series: single images, none multi-frame."""
    counts = set(dicom.values())
    return 1 in counts and not any(n is not None and n > 1 for n in counts)


def _sort_folder(folder: Path, files: list[Path], add: Callable[[Path, bool], None],
                 unsupported: list[str]) -> None:
    """One folder's files (not its sub-folders): a DICOM series where its DICOM images are
    single images (none multi-frame), each as the series reader would read it (unreadable
    files belong to the series: the reader says what is wrong with them); else each
    multi-frame or unreadable DICOM file a clip, single images beside multi-frame clips
    (stills) skipped. Files of other clip formats are clips in either case."""
    dicom: dict[Path, int | None] = {}
    for file in files:
        kind = _kind(file)
        if kind == "dicom":
            dicom[file] = _dicom_frames(file)
        elif kind == "clip":
            add(file, False)
        else:
            unsupported.append(str(file))
    if _is_series(dicom):
        add(folder, True)
        unsupported.extend(str(f) for f, n in dicom.items() if n == 0)
        return
    for file, n in dicom.items():
        if n is None or n > 1:
            add(file, False)
        else:
            unsupported.append(str(file))


def _path_key(path: Path) -> bytes:
    """The bytes that name an input (``analyze``'s stream name hashes the same)."""
    return str(Path(path).absolute()).encode("utf-8", "surrogateescape")


def output_name(path: Path) -> str:
    """A stable, readable output name: the file's name without its clip suffix (a folder's
    name), made safe for a file name, and the first 10 hex digits of the sha256 of the
    absolute path (its first 8 are those of the clip's default stream name
    ``clip-XXXXXXXX``)."""
    name = Path(path).name
    if name.lower().endswith(".nii.gz"):
        name = name[:-7]
    elif Path(path).suffix and not Path(path).is_dir():
        name = name[:-len(Path(path).suffix)]
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._")[:40] or "clip"
    return f"{stem}-{hashlib.sha256(_path_key(path)).hexdigest()[:10]}"


def _unique_names(jobs: list[ClipJob]) -> list[ClipJob]:
    """Jobs whose names collide (two paths, one stem and 40 bits of hash) get the whole
    hash instead, so no two outputs share a file."""
    seen: dict[str, int] = {}
    for job in jobs:
        seen[job.name] = seen.get(job.name, 0) + 1
    return [job if seen[job.name] == 1 else
            replace(job, name=job.name.rsplit("-", 1)[0] + "-"
                    + hashlib.sha256(_path_key(job.path)).hexdigest())
            for job in jobs]


# ---------------------------------------------------------------------------------------
# digests


def _series_files(folder: Path) -> list[Path]:
    """The files a series reader reads: those directly in the folder, not hidden."""
    return sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))


def content_digest(path: Path, series: bool = False) -> str:
    """``sha256:HEX`` of a file's bytes; of a series folder, of each of its files' name,
    size and bytes in name order."""
    h = hashlib.sha256()
    for file in (_series_files(path) if series else [path]):
        if series:
            h.update(file.name.encode("utf-8", "surrogateescape") + b"\0"
                     + str(file.stat().st_size).encode() + b"\0")
        with open(file, "rb") as fh:
            for block in iter(lambda fh=fh: fh.read(1 << 20), b""):
                h.update(block)
    return "sha256:" + h.hexdigest()


def stat_key(path: Path, series: bool = False) -> str:
    """A digest of the input's file names, sizes and modification times: where it equals
    the index's, the content is taken as unchanged without reading it (as make and rsync
    do); else the content digest decides."""
    files = _series_files(path) if series else [path]
    stats = [(f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in files]
    return hashlib.sha256(orjson.dumps(stats)).hexdigest()[:16]


def _file_sha256(path: Path) -> str:
    return content_digest(path).removeprefix("sha256:")


def _shipped_weights() -> dict[str, str]:
    """sha256 of each shipped weights file (engines/weights): a retrained network changes
    results without changing the version."""
    import engines

    folder = Path(engines.__file__).resolve().parent / "weights"
    return {p.name: _file_sha256(p) for p in sorted(folder.glob("*.pt"))}


def _weights_files(value: Any, key: str = "") -> dict[str, str]:
    """sha256 of every existing file named by a ``weights`` option in a settings tree."""
    out: dict[str, str] = {}
    if isinstance(value, dict):
        for k, v in value.items():
            out.update(_weights_files(v, f"{key}.{k}" if key else str(k)))
    elif isinstance(value, (list, tuple)):
        for v in value:
            out.update(_weights_files(v, key))
    elif isinstance(value, str) and "weights" in key and Path(value).is_file():
        out[value] = _file_sha256(Path(value))
    return out


# ---------------------------------------------------------------------------------------
# configuration


@dataclass(frozen=True)
class StudyConfig:
    """A study: which inputs, where to, which analysis, how parallel."""

    #: files, folders and glob patterns
    paths: tuple[str, ...]
    out_dir: Path
    #: the apps and their options; ``engines.threads`` None: :data:`STUDY_THREADS`
    analysis: AnalysisConfig = AnalysisConfig()
    #: how each clip is sent (``stream`` must be None: each clip gets its default name)
    replay: ReplayConfig = ReplayConfig()
    spacing_mm: tuple[float, float] | None = None
    stack: bool = False
    #: worker processes (Ray: actors); None: one in this process, Ray: the CPUs / threads
    workers: int | None = None
    #: None: no Ray; "local": a Ray started on this machine; else a cluster's address
    ray: str | None = None
    t0_ns: int = STUDY_T0_NS
    progress: bool = True

    def __post_init__(self):
        if not self.paths:
            raise StudyError("give the clips to analyse: files, folders or glob patterns")
        if self.workers is not None and self.workers < 1:
            raise StudyError(f"--workers must be >= 1, got {self.workers}")
        if self.replay.stream is not None:
            raise StudyError("a study names each clip's stream itself; --stream names one "
                             "clip's")

    @property
    def threads(self) -> int:
        return self.analysis.engines.threads or STUDY_THREADS


@dataclass(frozen=True)
class WorkerSettings:
    """What a worker needs to analyse a clip as ``analyze CLIP --out`` does with the same
    options (picklable: sent to worker processes and Ray actors)."""

    analysis: AnalysisConfig
    replay: ReplayConfig
    spacing_mm: tuple[float, float] | None
    stack: bool
    t0_ns: int
    threads: int
    settings_digest: str
    out_dir: Path


def study_settings(config: StudyConfig) -> dict[str, Any]:
    """Every setting that changes a result bit: the analysis options (threads included),
    how clips are read and sent, the start time, the version and the networks' weights."""
    analysis = _with_threads(config.analysis, config.threads)
    tree = orjson.loads(orjson.dumps(dataclasses.asdict(analysis), default=str))
    replay = {k: v for k, v in dataclasses.asdict(config.replay).items()
              if k not in ("stream", "max_rate")}
    return {"cardiostream_version": __version__, "analysis": tree, "replay": replay,
            "open": {"spacing_mm": config.spacing_mm, "stack": config.stack},
            "t0_ns": config.t0_ns, "weights_files": _weights_files(tree),
            "shipped_weights": _shipped_weights()}


def settings_digest(settings: dict[str, Any]) -> str:
    return hashlib.sha256(orjson.dumps(settings, option=orjson.OPT_SORT_KEYS)).hexdigest()[:16]


def _with_threads(analysis: AnalysisConfig, threads: int) -> AnalysisConfig:
    return replace(analysis, engines=replace(analysis.engines, threads=threads))


def _flatten(tree: Any, key: str = "") -> dict[str, Any]:
    if isinstance(tree, dict):
        out: dict[str, Any] = {}
        for k, v in tree.items():
            out.update(_flatten(v, f"{key}.{k}" if key else str(k)))
        return out
    return {key: tree}


# ---------------------------------------------------------------------------------------
# the worker


@dataclass
class ClipOutcome:
    """What became of one clip: its index entry (:meth:`entry`)."""

    path: str
    name: str
    series: bool
    status: str                      # "done" or "error"
    settings: str
    threads: int
    output: str | None = None        # relative to the study folder; None after an error
    error: str | None = None
    digest: str | None = None
    stat: str | None = None
    frames: int = 0
    results: int = 0
    frame_errors: int = 0            # frames answered with an error line (bad pixels, ...)
    seconds: float = 0.0             # the clip's analysis
    setup_s: float = 0.0             # building the worker's engines (its first clip only)
    engines: dict[str, str] = field(default_factory=dict)   # role -> "backend/precision"
    warnings: list[str] = field(default_factory=list)       # the clip reader's
    worker: str = ""
    finished: str = ""
    version: str = __version__

    def entry(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _failed(job: ClipJob, settings: WorkerSettings, message: str) -> ClipOutcome:
    return ClipOutcome(path=str(job.path), name=job.name, series=job.series, status="error",
                       settings=settings.settings_digest, threads=settings.threads,
                       error=message, digest=job.digest, worker=_worker_id(),
                       finished=_now())


def _worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _error_text(exc: BaseException) -> str:
    """One line: a reader's or the replay's own message (it names the file), else the
    exception's type and message."""
    text = str(exc) if isinstance(exc, (ClipError, ReplayError)) \
        else f"{type(exc).__name__}: {exc}"
    text = " ".join(text.split())
    return text if len(text) <= 1000 else text[:997] + "..."


def fresh_analysis(base: Analysis) -> Analysis:
    """``base``'s apps made anew on its loaded engines: an app's state shared between
    streams (the MR app's stacks waiting for slices and their wall-motion rounds) starts
    empty for each clip, as in a process that analyses that clip alone. Costs the apps'
    constructors (~50 ms: the per-beat networks' weights are read again)."""
    apps = {name: type(app)(app.config, app.engines) for name, app in base.apps.items()}
    return Analysis(apps, forced=base.forced, debug_delay=base.debug_delay,
                    batch_group=base.batch_group, max_batch=base.max_batch)


class StudyWorker:
    """Analyses clips of a study, one at a time: holds one built Analysis (its engines
    built on the first clip, then reused), writes each clip's results with
    :func:`streamer.analyze.analyze` and never raises for a clip (an exception becomes an
    error outcome)."""

    def __init__(self, settings: WorkerSettings):
        self.settings = settings
        self._base: Analysis | None = None

    def _analysis(self) -> tuple[Analysis, float]:
        """A fresh analysis for the next clip, and the seconds spent building engines (on
        the worker's first clip)."""
        if self._base is not None:
            return fresh_analysis(self._base), 0.0
        start = time.perf_counter()
        _limit_opencv_threads(self.settings.threads)
        self._base = build_analysis(self.settings.analysis)
        return self._base, time.perf_counter() - start  # fresh: no clip has used it

    def run(self, job: ClipJob) -> ClipOutcome:
        s = self.settings
        out = s.out_dir / job.output
        part = out.with_name(out.name + ".part")
        setup_s = 0.0
        try:
            digest = job.digest or content_digest(job.path, job.series)
            stat = stat_key(job.path, job.series)
            with open_input(job.path, spacing_mm=s.spacing_mm, fps=s.replay.fps,
                            stack=s.stack) as source:  # a clip that cannot open builds nothing
                analysis, setup_s = self._analysis()
                start = time.perf_counter()
                warnings = [str(w) for w in source.info.metadata.get("warnings", [])]
                stream = default_stream_name(job.path, s.replay.keep_identifiers)
                summary = analyze(source, part, analysis, replace(s.replay, stream=stream),
                                  t0_ns=s.t0_ns)
            os.replace(part, out)
        except Exception as exc:  # noqa: BLE001 - a clip's failure never stops the study
            part.unlink(missing_ok=True)
            out.unlink(missing_ok=True)  # an older result of this input is not its result
            return replace(_failed(job, s, _error_text(exc)), setup_s=round(setup_s, 3))
        engines = {role: f"{info.get('backend')}/{info.get('precision')}"
                   for app in analysis.declarations().values()
                   for role, info in app.get("engines", {}).items()}
        return ClipOutcome(path=str(job.path), name=job.name, series=job.series,
                           status="done", settings=s.settings_digest, threads=s.threads,
                           output=job.output, digest=digest, stat=stat,
                           frames=summary.frames, results=summary.results,
                           frame_errors=summary.errors,
                           seconds=round(time.perf_counter() - start, 3),
                           setup_s=round(setup_s, 3), engines=engines, warnings=warnings,
                           worker=_worker_id(), finished=_now())


def _limit_opencv_threads(threads: int) -> None:
    """OpenCV's own thread pool (resizing, optical flow) to the worker's thread count, so
    N workers do not run N pools of every core."""
    import cv2

    cv2.setNumThreads(threads)


# ---------------------------------------------------------------------------------------
# runners: each yields one ClipOutcome per job, in the order they finish


def run_in_process(jobs: Sequence[ClipJob], settings: WorkerSettings) -> Iterator[ClipOutcome]:
    """One worker, in this process."""
    worker = StudyWorker(settings)
    for job in jobs:
        yield worker.run(job)


#: the one StudyWorker of a process-pool worker process (made by _init_process_worker):
#: the module's only state, in the spawned processes of one study
_PROCESS_WORKER: StudyWorker | None = None


def _init_process_worker(settings: WorkerSettings) -> None:
    global _PROCESS_WORKER
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the driver's to handle
    _PROCESS_WORKER = StudyWorker(settings)


def _run_process_job(job: ClipJob) -> ClipOutcome:
    assert _PROCESS_WORKER is not None, "a study's worker process runs its initializer first"
    return _PROCESS_WORKER.run(job)


def run_processes(jobs: Sequence[ClipJob], settings: WorkerSettings,
                  workers: int) -> Iterator[ClipOutcome]:
    """``workers`` spawned processes, one clip each at a time. A process that dies (a
    crash, the out-of-memory killer) fails the clips in flight, which a rerun retries; the
    rest go on in a new pool."""
    pending = deque(jobs)
    context = get_context("spawn")
    while pending:
        pool = ProcessPoolExecutor(workers, mp_context=context,
                                   initializer=_init_process_worker, initargs=(settings,))
        running: dict[Future, ClipJob] = {}
        broken = False
        try:
            while (pending or running) and not broken:
                while pending and len(running) < workers:
                    try:
                        running[pool.submit(_run_process_job, pending[0])] = pending[0]
                    except BrokenProcessPool:  # broke since the last wait: a new pool
                        broken = True
                        break
                    pending.popleft()
                if not running:
                    break
                done, _ = wait(running, return_when=FIRST_COMPLETED)
                for future in done:
                    job = running.pop(future)
                    try:
                        outcome = future.result()
                    except BrokenProcessPool:
                        broken = True
                        outcome = _failed(job, settings, _DIED.format(n=workers))
                    except Exception as exc:  # noqa: BLE001 - e.g. an outcome that won't pickle
                        outcome = _failed(job, settings, f"the worker process failed: "
                                                         f"{_error_text(exc)}")
                    yield outcome
            if broken:
                for job in running.values():
                    yield _failed(job, settings, _DIED.format(n=workers))
                running.clear()
        finally:
            pool.shutdown(wait=True, cancel_futures=True)


_DIED = ("a worker process ended (crashed, or killed: out of memory?) while this clip was one "
         "of the {n} in flight; rerun to retry it")


class RayStudyActor:
    """A Ray actor holding one :class:`StudyWorker` (made remote by :class:`RayActors`, so
    this module imports without Ray)."""

    def __init__(self, settings: WorkerSettings):
        self.worker = StudyWorker(settings)

    def run(self, job: ClipJob) -> ClipOutcome:
        return self.worker.run(job)


def import_ray():
    """Ray, or a :class:`StudyError` that says how to install it."""
    try:
        import ray
    except ImportError:
        raise StudyError("--ray needs Ray, an optional extra: "
                         "pip install 'cardiostream[ray]'") from None
    return ray


class RayActors:
    """Ray actors, each holding a :class:`StudyWorker` and reserving ``threads`` CPUs: on a
    Ray started here (``address`` "local", with this machine's cores, or more where
    ``workers`` x threads asks for more) or on the cluster at ``address`` (as ``ray.init``
    takes it: "auto", "HOST:6379", "ray://HOST:10001"). ``workers`` actors (default: the
    cluster's CPUs / threads), at most ``max_actors``. A context manager: on leaving, the
    actors are killed and a Ray started here is shut down."""

    def __init__(self, settings: WorkerSettings, address: str, workers: int | None,
                 max_actors: int):
        self.settings, self.address = settings, address
        self.requested, self.max_actors = workers, max_actors
        self.actors: list[Any] = []
        self._ray = import_ray()
        self._started = False

    @property
    def workers(self) -> int:
        return len(self.actors)

    def __enter__(self) -> RayActors:
        ray, threads = self._ray, self.settings.threads
        if not ray.is_initialized():
            options = dict(include_dashboard=False, log_to_driver=False,
                           configure_logging=False)
            try:
                if self.address == "local":
                    ray.init(address="local", num_cpus=max(
                        _cores(), (self.requested or 1) * threads), **options)
                else:
                    ray.init(address=self.address, **options)
            except ConnectionError as exc:
                raise StudyError(f"cannot reach the Ray cluster at {self.address}: "
                                 f"{exc}") from None
            self._started = True
        try:
            capacity = max(1, int(ray.cluster_resources().get("CPU", 1) // threads))
            n = self.requested or capacity
            if n > capacity:  # an actor that never gets its CPUs would hold its clip forever
                log.warning("the Ray cluster has CPUs for %d actors of %d thread(s): "
                            "%d, not %d", capacity, threads, capacity, n)
                n = capacity
            remote = ray.remote(num_cpus=threads, max_restarts=-1)(RayStudyActor)
            self.actors = [remote.remote(self.settings)
                           for _ in range(max(1, min(n, self.max_actors)))]
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc_info) -> None:
        for actor in self.actors:
            self._ray.kill(actor)
        self.actors = []
        if self._started:
            self._ray.shutdown()
            self._started = False

    def run(self, jobs: Sequence[ClipJob]) -> Iterator[ClipOutcome]:
        """One clip per actor at a time; an actor that dies fails its clip (Ray restarts
        it, and it builds its engines again)."""
        ray = self._ray
        idle, pending = deque(self.actors), deque(jobs)
        running: dict[Any, tuple[Any, ClipJob]] = {}
        while pending or running:
            while idle and pending:
                actor, job = idle.popleft(), pending.popleft()
                running[actor.run.remote(job)] = (actor, job)
            (ref,), _ = ray.wait(list(running), num_returns=1)
            actor, job = running.pop(ref)
            idle.append(actor)
            try:
                outcome = ray.get(ref)
            except Exception as exc:  # noqa: BLE001 - the actor died (restarted by Ray)
                outcome = _failed(job, self.settings, "the Ray worker running this clip "
                                                      "failed: " + _error_text(exc))
            yield outcome


def _cores() -> int:
    from engines.backends.threads import cpu_count

    return cpu_count()


# ---------------------------------------------------------------------------------------
# the index


class StudyIndex:
    """``DIR/index.jsonl``: clip outcomes, one JSON object a line, appended as clips finish;
    the latest line of an input (its absolute path) wins. A line cut short by a crash is
    skipped with a warning."""

    def __init__(self, out_dir: Path):
        self.path = out_dir / INDEX_NAME
        self.entries: dict[str, dict[str, Any]] = {}
        if self.path.is_file():
            for number, line in enumerate(self.path.read_bytes().splitlines(), 1):
                if not line.strip():
                    continue
                try:
                    entry = orjson.loads(line)
                    self.entries[entry["path"]] = entry
                except (orjson.JSONDecodeError, KeyError, TypeError):
                    log.warning("%s: line %d is not an index entry (a run cut short?): "
                                "skipped", self.path, number)

    def append(self, entry: dict[str, Any]) -> None:
        with open(self.path, "ab") as fh:
            fh.write(orjson.dumps(entry) + b"\n")
        self.entries[entry["path"]] = entry

    def compact(self) -> None:
        """Rewrite with the latest entry of each input only (atomically)."""
        part = self.path.with_name(self.path.name + ".part")
        part.write_bytes(b"".join(orjson.dumps(e) + b"\n" for e in self.entries.values()))
        os.replace(part, self.path)


def _check_settings(index: StudyIndex, out_dir: Path, digest: str,
                    settings: dict[str, Any]) -> None:
    """Refuse a run whose settings differ from those of clips already done in ``out_dir``,
    naming the settings that differ; record the settings of ``digest``."""
    path = out_dir / SETTINGS_NAME
    known: dict[str, Any] = orjson.loads(path.read_bytes()) if path.is_file() else {}
    others = {e["settings"] for e in index.entries.values()
              if e.get("status") == "done" and e.get("settings") != digest}
    if others:
        now, differ = _flatten(settings), set[str]()
        for other in others:
            before = _flatten(known[other]) if other in known else {}
            differ |= {key for key in before.keys() | now.keys()
                       if before.get(key) != now.get(key)} if before else {"(not recorded)"}
        names = sorted(differ)
        done = sum(e.get("settings") in others and e.get("status") == "done"
                   for e in index.entries.values())
        raise StudyError(
            f"{out_dir} holds {done} clip(s) analysed with other settings (differing: "
            f"{', '.join(names[:8]) or 'unknown'}{' ...' if len(names) > 8 else ''}); a "
            "study keeps one setting so that its clips compare: give the same options again, "
            "or use another --out-dir (settings.json lists each setting used)")
    if digest not in known:
        known[digest] = settings
        path.write_bytes(orjson.dumps(known, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS))


def _plan(jobs: Sequence[ClipJob], index: StudyIndex, out_dir: Path,
          digest: str) -> tuple[list[ClipJob], int]:
    """The jobs to run, and how many are skipped: done with these settings, the output
    there and the content unchanged (the same stat key, else the same content digest)."""
    run, skipped = [], 0
    for job in jobs:
        entry = index.entries.get(str(job.path))
        if not (entry and entry.get("status") == "done" and entry.get("settings") == digest
                and entry.get("output") == job.output and (out_dir / job.output).is_file()):
            run.append(job)
            continue
        try:
            stat = stat_key(job.path, job.series)
            if stat == entry.get("stat"):
                skipped += 1
                continue
            now = content_digest(job.path, job.series)
        except OSError:
            run.append(job)  # the worker says what is wrong with it
            continue
        if now == entry.get("digest"):
            index.append({**entry, "stat": stat})  # touched, not changed
            skipped += 1
        else:
            run.append(replace(job, digest=now))
    return run, skipped


# ---------------------------------------------------------------------------------------
# the study table

_ECHO_COLUMNS = ("peak_gls_pct", *(f"regional_peak_{s}_pct" for s in A4C_SEGMENTS))
_SAX_COLUMNS = ("peak_circumferential_strain_pct", "peak_radial_strain_pct")
_STACK_COLUMNS = ("edv_ml", "esv_ml", "ef_pct", "mass_g")
_VELOCITY_COLUMNS = tuple(f"peak_{phase}_{direction}_velocity_cm_s"
                          for direction in ("radial", "circumferential", "longitudinal")
                          for phase in ("systolic", "early_diastolic", "late_diastolic"))
#: the study table's columns: the clip and its input, its last outcome, the stream (a
#: stack's slice streams each), the app and beat, then each app's beat fields
TABLE_COLUMNS = ("clip", "input", "status", "error", "stream", "app", "beat", "ed_seq",
                 "es_seq", "quality", "measurable_fraction", *_ECHO_COLUMNS, "aha_level",
                 *_SAX_COLUMNS, *_STACK_COLUMNS, "msi", *_VELOCITY_COLUMNS)


def clip_rows(results: Path) -> list[dict[str, Any]]:
    """The table rows of one results file (without the clip's own columns): one per
    beat message, a stack's volumes on the beat that completed it, its wall_motion's MSI
    beside them; one row with the first stream and its app when no beat closed."""
    apps: dict[str, str] = {}
    rows: list[dict[str, Any]] = []
    first_stream: str | None = None
    with open(results, "rb") as fh:
        for line in fh:
            message = orjson.loads(line)
            kind, stream = message.get("kind"), message.get("stream")
            if kind == "result":  # routed at its first frame: the start did not say the app
                apps.setdefault(stream, message.get("app"))
            elif kind == "start":
                first_stream = first_stream or stream
                app = (message.get("meta") or {}).get("app")
                if isinstance(app, dict) and app.get("name"):
                    apps[stream] = app["name"]
            elif kind == "beat":
                rows.append(_beat_row(message, apps.get(stream)))
            elif kind == "wall_motion":
                _add_msi(rows, message)
    if not rows:
        rows.append({"stream": first_stream, "app": apps.get(first_stream)})
    return rows


def _beat_row(beat: dict[str, Any], app: str | None) -> dict[str, Any]:
    row = {"stream": beat.get("stream"), "app": app, "beat": beat.get("beat")}
    for key in ("ed_seq", "es_seq", "quality", "measurable_fraction", "aha_level",
                "peak_gls_pct", *_SAX_COLUMNS, *_VELOCITY_COLUMNS):
        if key in beat:
            row[key] = beat[key]
    for segment, value in (beat.get("regional_peak_pct") or {}).items():
        row[f"regional_peak_{segment}_pct"] = value
    stack = beat.get("stack")
    if isinstance(stack, dict):
        row["_stack_id"] = stack.get("stack_id")
        row.update({k: stack[k] for k in _STACK_COLUMNS if k in stack})
    return row


def _add_msi(rows: list[dict[str, Any]], message: dict[str, Any]) -> None:
    """A wall_motion message's MSI on the row of the beat that completed its stack (it is
    published right after that beat), else on a row of its own."""
    for row in reversed(rows):
        if row.get("_stack_id") == message.get("stack_id") and "msi" not in row:
            row["msi"] = message.get("msi")
            return
    rows.append({"stream": message.get("stream"), "app": "mr-sax",
                 "beat": message.get("beat"), "msi": message.get("msi")})


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def write_table(out_dir: Path, entries: Iterable[dict[str, Any]]) -> Path:
    """``DIR/study.csv`` from the index entries (in name order) and their results files."""
    path = out_dir / TABLE_NAME
    part = path.with_name(path.name + ".part")
    with open(part, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(TABLE_COLUMNS)
        for entry in sorted(entries, key=lambda e: e["name"]):
            clip = {"clip": entry["name"], "input": entry["path"], "status": entry["status"],
                    "error": entry.get("error")}
            results = out_dir / entry["output"] if entry.get("output") else None
            if entry["status"] == "done" and results is not None and results.is_file():
                rows = clip_rows(results)
            elif entry["status"] == "done":
                rows, clip["status"] = [{}], "missing"
                clip["error"] = f"the results file {entry.get('output')} is missing"
            else:
                rows = [{}]
            for row in rows:
                merged = {**row, **clip}
                writer.writerow([_cell(merged.get(c)) for c in TABLE_COLUMNS])
    os.replace(part, path)
    return path


def write_errors(out_dir: Path, entries: Iterable[dict[str, Any]]) -> Path:
    """``DIR/errors.txt``: ``NAME: message`` for every input whose last outcome failed."""
    path = out_dir / ERRORS_NAME
    lines = [f"{e['name']}: {e.get('error')}\n"
             for e in sorted(entries, key=lambda e: e["name"]) if e["status"] == "error"]
    path.write_text("".join(lines), encoding="utf-8")
    return path


# ---------------------------------------------------------------------------------------
# the study


@dataclass
class StudySummary:
    """What a run did (printed as the command's last JSON line)."""

    out_dir: Path
    mode: str                        # "in-process", "processes" or "ray"
    workers: int
    threads: int
    clips: int                       # found
    skipped: int                     # done before, with these settings
    ran: int = 0
    done: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)   # (name, message)
    unsupported: int = 0
    frame_error_clips: int = 0       # clips that ran with some frames answered by errors
    warning_clips: int = 0           # clips whose reader warned (index.jsonl: warnings)
    elapsed_s: float = 0.0

    @property
    def clips_per_min(self) -> float | None:
        return round(self.ran / self.elapsed_s * 60, 2) if self.elapsed_s > 0 else None

    def event(self) -> dict[str, Any]:
        return {"out_dir": str(self.out_dir), "mode": self.mode, "workers": self.workers,
                "threads": self.threads, "clips": self.clips, "ran": self.ran,
                "done": self.done, "failed": len(self.failed), "skipped": self.skipped,
                "unsupported": self.unsupported, "frame_error_clips": self.frame_error_clips,
                "warning_clips": self.warning_clips, "elapsed_s": round(self.elapsed_s, 3),
                "clips_per_min": self.clips_per_min,
                "index": str(self.out_dir / INDEX_NAME),
                "table": str(self.out_dir / TABLE_NAME),
                "errors": str(self.out_dir / ERRORS_NAME)}


def run_study(config: StudyConfig) -> StudySummary:
    """Find the clips, skip those done, run the rest on the runner the config asks for,
    record each outcome in the index as it comes, then write the study table and the
    error list. Raises :class:`StudyError` for a usage error; a clip's failure is an
    outcome (``summary.failed``), never an exception."""
    start = time.perf_counter()
    found = discover(config.paths)
    if not found.jobs:
        raise StudyError(f"no clips found in {', '.join(config.paths)} "
                         f"({len(found.unsupported)} file(s) no clip reader reads)")
    if found.unsupported:
        log.info("%d file(s) that no clip reader reads were skipped, e.g. %s",
                 len(found.unsupported), found.unsupported[0])
    out_dir = config.out_dir.absolute()
    (out_dir / CLIPS_DIR).mkdir(parents=True, exist_ok=True)
    settings = study_settings(config)
    digest = settings_digest(settings)
    index = StudyIndex(out_dir)
    _check_settings(index, out_dir, digest, settings)
    jobs, skipped = _plan(found.jobs, index, out_dir, digest)
    if skipped:
        log.info("%d of %d clip(s) already done with these settings: skipped", skipped,
                 len(found.jobs))
    worker_settings = WorkerSettings(
        analysis=_with_threads(config.analysis, config.threads), replay=config.replay,
        spacing_mm=config.spacing_mm, stack=config.stack, t0_ns=config.t0_ns,
        threads=config.threads, settings_digest=digest, out_dir=out_dir)
    summary = StudySummary(out_dir=out_dir, mode="", workers=0, threads=config.threads,
                           clips=len(found.jobs), skipped=skipped,
                           unsupported=len(found.unsupported))
    try:
        with ExitStack() as stack:
            summary.mode, summary.workers, outcomes = _runner(config, jobs, worker_settings,
                                                              stack)
            stack.callback(getattr(outcomes, "close", lambda: None))  # a pool's shutdown
            bar = stack.enter_context(_progress(
                len(jobs), f"study ({summary.mode}, {summary.workers} worker(s))",
                config.progress))
            for outcome in outcomes:
                index.append(outcome.entry())
                summary.ran += 1
                if outcome.status == "done":
                    summary.done += 1
                    summary.frame_error_clips += outcome.frame_errors > 0
                    summary.warning_clips += bool(outcome.warnings)
                else:
                    summary.failed.append((outcome.name, outcome.error or "failed"))
                bar.update(1)
                bar.set_postfix(failed=len(summary.failed), refresh=False)
    finally:
        index.compact()
    write_table(out_dir, index.entries.values())
    write_errors(out_dir, index.entries.values())
    summary.elapsed_s = time.perf_counter() - start
    return summary


def _runner(config: StudyConfig, jobs: Sequence[ClipJob], settings: WorkerSettings,
            stack: ExitStack) -> tuple[str, int, Iterator[ClipOutcome]]:
    """The runner the config asks for: its name, its workers and its outcomes (what it
    holds open is closed with ``stack``). Nothing to run starts nothing."""
    threads, cores = config.threads, _cores()
    if config.ray is not None:
        if config.ray == "local" and (config.workers or 1) * threads > cores:
            log.warning(_OVERSUBSCRIBED, config.workers, threads, cores)
        if not jobs:
            return "ray", 0, iter(())
        actors = stack.enter_context(RayActors(settings, config.ray, config.workers,
                                               max_actors=len(jobs)))
        return "ray", actors.workers, actors.run(jobs)
    workers = config.workers or 1
    if workers * threads > cores:
        log.warning(_OVERSUBSCRIBED, workers, threads, cores)
    if workers == 1 or len(jobs) <= 1:
        return "in-process", 1, run_in_process(jobs, settings)
    workers = min(workers, len(jobs))
    return "processes", workers, run_processes(jobs, settings, workers)


_OVERSUBSCRIBED = ("%d workers x %d threads is more than this machine's %d cores: they will "
                   "slow each other down")


def _progress(total: int, desc: str, enabled: bool):
    """A tqdm bar over clips on stderr, with an ETA (off with --no-progress or
    CARDIOSTREAM_NO_PROGRESS)."""
    import sys

    from tqdm import tqdm

    disable = not enabled or bool(os.environ.get("CARDIOSTREAM_NO_PROGRESS"))
    return tqdm(total=total, desc=desc, unit="clip", disable=disable, file=sys.stderr)


def strip_timing(line: dict[str, Any]) -> dict[str, Any]:
    """A results line without :data:`TIMING_KEYS`: what must be identical between two runs
    of a clip with the same settings."""
    return {k: v for k, v in line.items() if k not in TIMING_KEYS}
