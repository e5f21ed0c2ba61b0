"""`cardiostream export` (streamer.export): results JSON lines as tidy CSV / Parquet tables
and a column dictionary; read back, the tables give the messages exactly."""

from __future__ import annotations

import argparse
import builtins
import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest

from streamer import export
from streamer.export import TABLES, add_parser, column_name, export_results, read_table

ROW_KINDS = {"result": "frames", "error": "frames", "beat": "beats",
             "wall_motion": "stack_beats"}


def needs_pyarrow() -> None:
    pytest.importorskip("pyarrow", reason="Parquet needs pyarrow (the parquet extra)")


def messages_by_table(path: Path) -> dict[str, list[dict]]:
    tables: dict[str, list[dict]] = {}
    for line in path.read_text().splitlines():
        message = json.loads(line)
        if message.get("kind") in ROW_KINDS:
            tables.setdefault(ROW_KINDS[message["kind"]], []).append(message)
    return tables


def exact(value) -> str:
    """Type-exact, order-free text of a JSON value (1 and 1.0 differ; NaN equals NaN)."""
    return json.dumps(value, sort_keys=True)


def assert_round_trip(results: Path, out_dir: Path, fmt: str) -> list[Path]:
    expected = messages_by_table(results)
    paths = export_results(results, out_dir, fmt)
    stem = results.stem
    assert paths == [out_dir / f"{stem}.{t}.{fmt}" for t in TABLES if t in expected] \
        + [out_dir / f"{stem}.columns.csv"]
    for path in paths[:-1]:
        table = path.name.split(".")[-2]
        back = read_table(path, paths[-1])
        assert len(back) == len(expected[table])
        for got, want in zip(back, expected[table]):
            assert got == want
            assert exact(got) == exact(want)
    return paths


# -- one real analyze run: echo, an MR short-axis stack, a refused frame ------------------


@pytest.fixture(scope="module")
def analyzed(tmp_path_factory) -> Path:
    """`analyze` of three clips as three streams in one results file: an A4C echo phantom
    (echo app), a phantom heart's short-axis stack (mr-sax: slice beats and the stack's
    wall_motion) and a small MR clip whose third frame is NaN (an error line)."""
    import nibabel as nib

    from calib.datasets import random_echo_config, split_seeds, wall_motion_stack_configs
    from calib.echo import make_echo_clip
    from calib.mr import make_mr_clip
    from streamer.analyze import analyze
    from streamer.apps import AnalysisConfig, build_analysis
    from streamer.io.clips import open_clip, open_input
    from streamer.replay import ReplayConfig

    root = tmp_path_factory.mktemp("export")
    echo = make_echo_clip(random_echo_config(2_000_003, view="a4c", rows=128, cols=128,
                                             frames=60, fps=30.0))
    np.savez(root / "echo.npz", frames=echo.frames, spacing_mm=np.array(echo.spacing_mm),
             fps=np.array(echo.fps), modality=np.array("US"))
    # the stack as tests/conftest.py's phantom_heart_nifti writes it (apex first)
    seed = int(split_seeds("test", 1, offset=310)[0])
    clips = [make_mr_clip(c) for c in wall_motion_stack_configs(seed, frames=20)]
    data = np.stack([c.frames for c in clips[::-1]], axis=-1).transpose(2, 1, 3, 0)
    sy, sx = clips[0].spacing_mm
    image = nib.Nifti1Image(data.astype(np.int16), np.diag([-sx, -sy, 10.0, 1.0]))
    image.header.set_xyzt_units("mm", "msec")
    image.header.set_zooms((sx, sy, 10.0, 1000.0 / clips[0].fps))
    nib.save(image, root / "heart.nii")
    bad = np.ones((4, 8, 8), np.float32)
    bad[2, 1, 1] = np.nan
    np.savez(root / "bad.npz", frames=bad, spacing_mm=np.array([1.0, 1.0]),
             fps=np.array(20.0), modality=np.array("MR"))

    out = root / "run.jsonl"
    with open_clip(root / "echo.npz") as e, open_input(root / "heart.nii") as h, \
            open_clip(root / "bad.npz") as b:
        analyze([e, h, b], out, build_analysis(AnalysisConfig()),
                [ReplayConfig(stream="echo"), ReplayConfig(stream="heart", modality="MR"),
                 ReplayConfig(stream="bad")], t0_ns=0)
    return out


def test_the_real_run_holds_every_kind_of_row(analyzed):
    tables = messages_by_table(analyzed)
    frames = tables["frames"]
    assert {m.get("app") for m in frames if m["kind"] == "result"} == {"echo", "mr-sax"}
    assert [m["code"] for m in frames if m["kind"] == "error"] == ["bad_pixels"]
    assert any(m.get("gls_pct") is not None for m in frames)
    assert {m["stream"] for m in tables["beats"]} >= {f"heart/slice-{k}" for k in range(3)}
    assert [m["stream"] for m in tables["stack_beats"]] == ["heart"]


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_a_real_analyze_output_round_trips(analyzed, tmp_path, fmt):
    if fmt == "parquet":
        needs_pyarrow()
    paths = assert_round_trip(analyzed, tmp_path / "tables", fmt)
    assert [p.name for p in paths] == ["run.frames." + fmt, "run.beats." + fmt,
                                       "run.stack_beats." + fmt, "run.columns.csv"]


def test_the_csv_has_one_column_per_value_with_units_in_the_names(analyzed, tmp_path):
    paths = export_results(analyzed, tmp_path, "csv")
    expected = messages_by_table(analyzed)
    with open(paths[0], newline="") as f:
        rows = list(csv.DictReader(f))
    header = list(rows[0])
    assert header[:3] == ["stream", "kind", "seq"]
    for name in ("gls_pct", "latency_total_ms", "regional_basal_septal_pct", "view_frame_p",
                 "areas_lv_cavity_mm2", "segment_circumferential_strain_7_pct",
                 "points_mm", "flags", "code"):
        assert name in header
    assert not [n for n in header if "." in n]               # no name collision here
    for row, message in zip(rows, expected["frames"]):
        assert row["kind"] == message["kind"] and row["stream"] == message["stream"]
        if message["kind"] == "result":
            assert float(row["latency_total_ms"]) == message["latency_ms"]["total"]
            gls = message.get("gls_pct")
            assert row["gls_pct"] == ("" if gls is None else repr(gls))
            if message.get("points_mm") is not None:
                assert json.loads(row["points_mm"]) == message["points_mm"]
    segments = [n for n in header if n.startswith("segment_circumferential_strain_")]
    assert segments == sorted(segments, key=lambda n: int(n.split("_")[-2]))
    with open(paths[1], newline="") as f:
        assert next(csv.reader(f))[:2] == ["stream", "beat"]

    with open(paths[-1], newline="") as f:
        dictionary = {(r["table"], r["column"]): r for r in csv.DictReader(f)}
    [echo_app] = [m["meta"]["app"] for m in map(json.loads, analyzed.read_text().splitlines())
                  if m["kind"] == "start" and m["stream"] == "echo"]
    declared = {d["name"]: d["doc"] for d in echo_app["result_fields"]}
    gls = dictionary[("frames", "gls_pct")]
    assert (json.loads(gls["path"]), gls["type"], gls["doc"]) == \
        (["gls_pct"], "number", declared["gls_pct"])
    regional = dictionary[("frames", "regional_basal_septal_pct")]
    assert json.loads(regional["path"]) == ["regional_pct", "basal_septal"]
    assert regional["doc"] == declared["regional_pct"]
    assert dictionary[("frames", "seq")]["type"] == "integer"
    assert "frame number" in dictionary[("frames", "seq")]["doc"]
    assert dictionary[("frames", "points_mm")]["type"] == "json"
    assert dictionary[("frames", "measurable")]["type"] == "boolean"
    assert dictionary[("stack_beats", "segments")]["doc"].startswith("the 16 AHA segments")
    assert {t for t, _ in dictionary} == set(TABLES)
    assert all(r["type"] in ("integer", "number", "boolean", "string", "json")
               for r in dictionary.values())


# -- naming ---------------------------------------------------------------------------


@pytest.mark.parametrize("path, name", [
    (("latency_ms", "segment"), "latency_segment_ms"),
    (("regional_pct", "basal_septal"), "regional_basal_septal_pct"),
    (("areas_mm2", "lv_cavity"), "areas_lv_cavity_mm2"),
    (("segment_circumferential_strain_pct", "7"), "segment_circumferential_strain_7_pct"),
    (("view", "frame", "p"), "view_frame_p"),
    (("gls_pct",), "gls_pct"),
    (("circumferential_strain_rate_pct_s",), "circumferential_strain_rate_pct_s"),
    (("segment_velocity_cm_s", "1", "radial"), "segment_velocity_1_radial_cm_s"),
    (("latency_ms", "beat:wall_motion"), "latency_beat_wall_motion_ms"),
    (("stack", "edv_ml"), "stack_edv_ml"),
    (("budget", "budget_ms"), "budget_budget_ms"),
    (("Odd Key", "X-Y"), "odd_key_x_y"),
])
def test_column_names_end_in_their_unit(path, name):
    assert column_name(path) == name


def write_lines(path: Path, *messages) -> Path:
    path.write_text("".join((m if isinstance(m, str) else json.dumps(m)) + "\n"
                            for m in messages))
    return path


def columns_of(paths: list[Path]) -> dict[tuple[str, str], dict]:
    with open(paths[-1], newline="") as f:
        return {(r["table"], r["column"]): r for r in csv.DictReader(f)}


def test_two_paths_of_one_name_keep_the_first_and_name_the_later_by_their_dotted_path(
        tmp_path):
    results = write_lines(
        tmp_path / "c.jsonl",
        {"kind": "result", "stream": "s", "seq": 0, "latency_total_ms": 1.5,
         "latency_ms": {"total": 2.5}})
    paths = assert_round_trip(results, tmp_path, "csv")
    columns = columns_of(paths)
    assert json.loads(columns[("frames", "latency_total_ms")]["path"]) == ["latency_total_ms"]
    assert json.loads(columns[("frames", "latency_ms.total")]["path"]) == ["latency_ms", "total"]


# -- null, absent, types: hand-written lines ------------------------------------------------

AWKWARD = [
    {"v": 1, "kind": "start", "stream": "s", "meta": {"app": {
        "name": "x", "result_fields": [{"name": "regional_pct", "type": "object",
                                        "doc": "six segments, %"}],
        "beat_fields": [], "message_fields": {}}}},
    {"v": 1, "kind": "result", "stream": "s", "seq": 0, "t_publish_ns": None,
     "regional_pct": {"a": -1.5, "b": None}, "mixed": 1, "reasons": {},
     "label": "", "flags": ["x"], "big": 2 ** 70, "tiny": 1e-300, "sum": 0.1 + 0.2,
     "on": True, "deep": {"x": {"y_mm": 1, "z": None}}, "hint": "a4c"},
    {"v": 1, "kind": "result", "stream": "s", "seq": 1, "t_publish_ns": None,
     "regional_pct": None, "mixed": "text", "reasons": {"basal": "no_lv"},
     "label": "b", "flags": [], "big": 1, "tiny": -0.0, "sum": float("inf"),
     "on": False, "deep": {"x": None}},
    {"v": 1, "kind": "result", "stream": "s", "seq": 2, "t_publish_ns": None,
     "regional_pct": {"a": None, "b": None}, "mixed": [1, {"k": None}], "reasons": {},
     "label": None, "flags": None, "on": None, "deep": {}},
    {"v": 1, "kind": "error", "code": "bad_field", "message": "seq: not an integer"},
    {"v": 1, "kind": "error", "code": "seq_not_increasing", "message": "…", "stream": "s",
     "seq": 1},
    {"v": 1, "kind": "beat", "stream": "s", "beat": 0, "ed_seq": 0, "peak": None,
     "stack": None},
    {"v": 1, "kind": "beat", "stream": "s", "beat": 1, "ed_seq": 3, "peak": -2,
     "stack": {"edv_ml": 120.5, "ef_pct": 55.0}},
    {"v": 1, "kind": "end", "stream": "s", "meta": {}},
    {"v": 1, "kind": "hello", "apps": {}},
]


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_null_objects_absent_keys_and_awkward_values_round_trip(tmp_path, fmt):
    if fmt == "parquet":
        needs_pyarrow()
    results = write_lines(tmp_path / "awk.jsonl", *AWKWARD)
    paths = assert_round_trip(results, tmp_path / "out", fmt)
    assert [p.name for p in paths] == [f"awk.frames.{fmt}", f"awk.beats.{fmt}",
                                       "awk.columns.csv"]
    columns = columns_of(paths)
    types = {name: r["type"] for (table, name), r in columns.items() if table == "frames"}
    assert types["regional_a_pct"] == "number"
    assert types["regional_b_pct"] == "json"   # never a value: no type to go by
    assert types["mixed"] == "json"            # integer, string, list: varies between rows
    assert types["label"] == "json"            # holds "": CSV must tell it from null
    assert types["big"] == "json"              # over int64
    assert types["on"] == "boolean" and types["seq"] == "integer"
    assert types["t_publish_ns"] == "integer"  # always null: the protocol's type
    assert types["deep_x_y_mm"] == "integer" and types["deep_x_z"] == "json"
    assert types["reasons_basal"] == "string"
    assert columns[("frames", "regional_a_pct")]["doc"] == "six segments, %"
    assert list(types)[:3] == ["stream", "kind", "seq"]
    assert {"_null", "_absent"} <= set(types)
    assert columns[("beats", "stack_edv_ml")]["type"] == "number"


def test_the_hidden_columns_name_null_objects_and_absent_keys(tmp_path):
    results = write_lines(tmp_path / "awk.jsonl", *AWKWARD)
    paths = export_results(results, tmp_path, "csv")
    with open(paths[0], newline="") as f:
        rows = list(csv.DictReader(f))
    assert rows[1]["_null"] == '[["regional_pct"],["deep","x"]]'
    assert rows[1]["regional_a_pct"] == rows[1]["regional_b_pct"] == ""
    assert rows[2]["_null"] == ""                       # an object of null leaves stays one
    assert json.loads(rows[2]["_absent"]) == [["reasons", "basal"], ["big"], ["tiny"],
                                              ["sum"], ["deep", "x"], ["hint"], ["code"],
                                              ["message"]]
    assert json.loads(rows[3]["_absent"])[:2] == [["stream"], ["seq"]]
    assert rows[0]["tiny"] == "1e-300" and rows[1]["sum"] == "inf"
    assert (rows[0]["on"], rows[1]["on"], rows[2]["on"]) == ("true", "false", "")
    assert (rows[0]["label"], rows[1]["label"], rows[2]["label"]) == ('""', '"b"', "")
    # a file where nothing is ever null or absent needs neither column
    plain = write_lines(tmp_path / "plain.jsonl",
                        {"kind": "beat", "stream": "s", "beat": 0, "x_mm": 1.0})
    [beats, _] = export_results(plain, tmp_path, "csv")
    assert beats.read_text().splitlines()[0] == "stream,beat,kind,x_mm"


def test_numbers_survive_exactly_where_json_would_write_them_differently(tmp_path):
    values = [0.1, 1 / 3, 2.5e-17, 123456789.123456789, -0.0, 1e308, 5e-324]
    results = write_lines(tmp_path / "n.jsonl",
                          *({"kind": "result", "stream": "s", "seq": i, "x": v}
                            for i, v in enumerate(values)))
    paths = assert_round_trip(results, tmp_path, "csv")
    back = [m["x"] for m in read_table(paths[0], paths[-1])]
    assert all(math.copysign(1, a) == math.copysign(1, b) and a == b
               for a, b in zip(back, values))


def test_parquet_has_native_types_nulls_and_row_groups(tmp_path, monkeypatch):
    needs_pyarrow()
    import pyarrow as pa
    import pyarrow.parquet as pq

    monkeypatch.setattr(export, "ROW_GROUP_ROWS", 4)
    results = write_lines(tmp_path / "p.jsonl", *(
        {"kind": "result", "stream": "s", "seq": i, "gls_pct": None if i % 3 else -i / 7,
         "on": i % 2 == 0, "latency_ms": {"total": i + 0.5}, "flags": [f"f{i}"]}
        for i in range(10)))
    paths = assert_round_trip(results, tmp_path, "parquet")
    parquet = pq.ParquetFile(paths[0])
    assert parquet.metadata.num_row_groups == 3
    schema = parquet.schema_arrow
    assert schema.field("seq").type == pa.int64()
    assert schema.field("gls_pct").type == pa.float64()
    assert schema.field("on").type == pa.bool_()
    assert schema.field("latency_total_ms").type == pa.float64()
    assert schema.field("flags").type == pa.string()
    table = parquet.read()
    assert table.column("gls_pct").null_count == 6
    assert table.column("flags").to_pylist()[:2] == ['["f0"]', '["f1"]']


# -- bad input -------------------------------------------------------------------------


def test_a_line_that_is_not_json_is_refused_with_its_place(tmp_path):
    results = write_lines(tmp_path / "bad.jsonl", {"kind": "result", "stream": "s", "seq": 0},
                          "{not json")
    with pytest.raises(ValueError, match=r"bad\.jsonl:2: not a JSON line"):
        export_results(results, tmp_path / "out", "csv")
    assert not (tmp_path / "out").exists()
    write_lines(results, {"kind": "result", "seq": 0}, "[1, 2]")
    with pytest.raises(ValueError, match=r"bad\.jsonl:2: not a JSON object"):
        export_results(results, tmp_path / "out", "csv")


def test_an_empty_file_or_one_without_rows_is_refused(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    with pytest.raises(ValueError, match="empty"):
        export_results(empty, tmp_path, "csv")
    only = write_lines(tmp_path / "only.jsonl", {"v": 1, "kind": "start", "stream": "s"},
                       {"v": 1, "kind": "frame", "stream": "s", "seq": 0},
                       {"v": 1, "kind": "end", "stream": "s"})
    with pytest.raises(ValueError, match="no result, error, beat or wall_motion"):
        export_results(only, tmp_path, "csv")
    with pytest.raises(ValueError, match="format"):
        export_results(only, tmp_path, "xlsx")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty.jsonl", "only.jsonl"]


def test_parquet_without_pyarrow_says_how_to_get_it(tmp_path, monkeypatch):
    results = write_lines(tmp_path / "r.jsonl", {"kind": "result", "stream": "s", "seq": 0})
    real_import = builtins.__import__

    def no_pyarrow(name, *args, **kwargs):
        if name == "pyarrow" or name.startswith("pyarrow."):
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_pyarrow)
    with pytest.raises(RuntimeError) as raised:
        export_results(results, tmp_path / "out", "parquet")
    assert str(raised.value) == \
        "writing Parquet needs pyarrow: pip install 'cardiostream[parquet]'"
    assert not (tmp_path / "out").exists()
    assert export_results(results, tmp_path / "out", "csv")   # CSV needs nothing


def test_read_table_refuses_a_file_that_is_not_a_table(tmp_path):
    results = write_lines(tmp_path / "r.jsonl", {"kind": "result", "stream": "s", "seq": 0})
    [frames, columns] = export_results(results, tmp_path, "csv")
    with pytest.raises(ValueError, match="not a table file"):
        read_table(results, columns)
    other = tmp_path / "r.beats.csv"
    other.write_text("stream,beat\n")
    with pytest.raises(ValueError, match="no column of the beats table"):
        read_table(other, columns)
    frames.write_text(frames.read_text().replace("seq", "sequence"))
    with pytest.raises(ValueError, match="not in the column dictionary"):
        read_table(frames, columns)


# -- the command ---------------------------------------------------------------------


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="cardiostream")
    add_parser(parser.add_subparsers(dest="command"))
    return parser.parse_args(argv)


def test_cli_export_writes_beside_the_results_and_prints_the_paths(tmp_path, capsys):
    results = write_lines(tmp_path / "run.jsonl", *AWKWARD)
    args = parse(["export", str(results), "--csv"])
    assert args.func(args) == 0
    printed = capsys.readouterr().out.split()
    assert printed == [str(tmp_path / n) for n in ("run.frames.csv", "run.beats.csv",
                                                     "run.columns.csv")]
    assert all(Path(p).is_file() for p in printed)
    args = parse(["export", str(results), "--csv", "--out-dir", str(tmp_path / "x" / "y")])
    assert args.func(args) == 0
    assert (tmp_path / "x" / "y" / "run.frames.csv").is_file()


def test_cli_export_needs_one_format_and_reports_a_bad_file(tmp_path, capsys):
    with pytest.raises(SystemExit):
        parse(["export", "r.jsonl"])
    with pytest.raises(SystemExit):
        parse(["export", "r.jsonl", "--csv", "--parquet"])
    capsys.readouterr()
    args = parse(["export", str(tmp_path / "missing.jsonl"), "--csv"])
    assert args.func(args) == 2
    assert capsys.readouterr().err.startswith("cardiostream export: ")
    bad = write_lines(tmp_path / "bad.jsonl", "nope")
    args = parse(["export", str(bad), "--csv"])
    assert args.func(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("cardiostream export: ") and "bad.jsonl:1: not a JSON line" in err
