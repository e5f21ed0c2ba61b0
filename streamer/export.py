"""``cardiostream export``: an ``analyze`` / ``record`` results file (JSON lines) as tidy
tables for pandas, CSV or Parquet.

    cardiostream export RESULTS.jsonl (--csv | --parquet) [--out-dir DIR]

**Tables.** One row per message, one column per value:

=============== ======================================= ==================================
table           rows                                    first columns
=============== ======================================= ==================================
``frames``      every ``result`` and ``error``, in file ``stream, kind, seq``
                order (``kind`` says which)
``beats``       every ``beat`` (one per stream and      ``stream, beat``
                cardiac cycle)
``stack_beats`` every ``wall_motion`` (one per MR       ``stream, beat``
                short-axis stack and beat)
=============== ======================================= ==================================

The other columns follow in the order their keys first appear in the file (the leaves of
one object together; keys that are all numbers, as AHA segments, in numeric order).
Messages of other kinds (``start``, ``end``, ``hello``, ``frame``) are not rows; ``start``
(and ``hello``) give the app declarations the docs come from. Files,
in ``out_dir``, named after the results file's stem: ``STEM.frames.csv`` (or ``.parquet``),
``STEM.beats.csv``, ``STEM.stack_beats.csv``; a table without rows is not written. Beside
them, always as CSV, the **column dictionary** ``STEM.columns.csv``, one row per table and
column: ``table, column, path, type, doc``. ``path`` is where the value lies in the message,
a JSON list of keys (``["regional_pct","basal_septal"]``); ``type`` is ``integer``,
``number``, ``boolean``, ``string`` or ``json``; ``doc`` is the app's declaration of the
top-level key (``meta.app`` of ``start``: ``result_fields``, ``beat_fields``,
``message_fields``), else a short description of the protocol's own keys, else empty.

**Flattening and names.** A nested object becomes one column per leaf; a list (centreline
points, flags, curves, segment lists) is one column of compact JSON text (type ``json``), and
so is a key that holds an object in one row and a number, string or list in another, an
object that is always empty, a value whose type varies between rows (an integer and a
float make a ``number``) and a nested leaf that is always null (a top-level one takes the
protocol's or the app's declared type). A column's name is its keys lower-cased, joined by ``_`` (characters
other than ``a-z0-9`` become ``_``), with the unit suffix of a parent key moved to the end
so that every column ends in its unit: ``latency_ms.segment`` -> ``latency_segment_ms``,
``regional_pct.basal_septal`` -> ``regional_basal_septal_pct``,
``segment_circumferential_strain_pct."7"`` -> ``segment_circumferential_strain_7_pct``,
``view.frame.p`` -> ``view_frame_p``. The units are :data:`UNITS` (the longest match wins:
``_pct_s`` before ``_s``); of several keys with a unit, the last one's goes to the end.
When two paths give one name, the first keeps it and the later ones are named by their
dotted path (``latency_ms.segment``).

**Null and absent.** A leaf whose value is ``null`` is a null cell (CSV: an empty cell).
Two hidden columns, each written only where some row needs it, make the read-back exact:

* ``_null``: the objects that are ``null`` in this message (the object ``regional_pct`` is
  ``null`` on a frame that was not measured; its leaves are null cells), as a JSON list of
  paths, outermost only (``[["regional_pct"]]``); empty where none.
* ``_absent``: the keys this message does not have that other rows of the table have (an
  ``error`` has no ``latency_ms``, an echo result no ``areas_mm2``), as a JSON list of
  paths, outermost only; empty where none. An object whose keys are all absent is ``{}``.

Both are of type ``json`` with an empty ``path`` in the dictionary.

:func:`read_table` rebuilds each message from a written table and the dictionary: the
leaves at their paths, the ``_null`` objects set to ``null``, the ``_absent`` keys removed.
It gives back the messages as they were (equal as dicts: the order of keys may differ),
floats to the last bit, with one exception: an integer in a ``number`` column comes back as
the float of equal value. A string column in
which some value is the empty string is of type ``json`` (so that CSV tells ``""`` from
null); so is an integer column with a value outside int64.

**Formats.** CSV: the csv module; null is an empty cell, booleans ``true`` / ``false``,
numbers as ``repr`` writes them (they read back exactly), JSON as text. Parquet (needs
pyarrow, the ``parquet`` extra): ``integer`` int64, ``number`` float64, ``boolean`` bool,
``string`` and ``json`` string, nulls native, row groups of :data:`ROW_GROUP_ROWS`.

**Memory.** Two passes over the file, each a line at a time: the first finds the columns
and their types, the second writes. What is held is the column tree and, for Parquet, one
row group: results files of 10^6 frames export in constant memory.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from streamer.bullseye import iter_rows

__all__ = ["TABLES", "UNITS", "ROW_GROUP_ROWS", "Column", "export_results", "read_table",
           "column_name", "add_parser", "cmd_export"]

#: the tables, in the order they are written
TABLES = ("frames", "beats", "stack_beats")
#: which table a message kind goes to; other kinds are not rows
TABLE_OF_KIND = {"result": "frames", "error": "frames", "beat": "beats",
                 "wall_motion": "stack_beats"}
#: each table's first columns (top-level keys), where some row has them
FIRST_KEYS = {"frames": ("stream", "kind", "seq"), "beats": ("stream", "beat"),
              "stack_beats": ("stream", "beat")}
#: the unit suffixes a column name ends in (protocol.md: every quantity says its unit)
UNITS = ("pct_s", "cm_s", "mm_s", "m_s", "mm2", "mm3", "ns", "ms", "s", "mm", "ml", "g",
         "pct", "deg", "hz", "bpm", "px")
#: rows per Parquet row group
ROW_GROUP_ROWS = 10_000
TYPES = ("integer", "number", "boolean", "string", "json")
ABSENT = "_absent"
NULL = "_null"
_HIDDEN_DOCS = {
    NULL: "the objects that are null in this message: JSON list of their paths (outermost "
          "only); their leaves are null cells",
    ABSENT: "the keys this message does not have: JSON list of their paths (outermost only)",
}
_INT64 = (-(2 ** 63), 2 ** 63 - 1)
_UNIT_SUFFIXES = tuple(sorted((f"_{u}" for u in UNITS), key=len, reverse=True))
_NOT_NAME = re.compile(r"[^a-z0-9]+")
_PARQUET_MISSING = "writing Parquet needs pyarrow: pip install 'cardiostream[parquet]'"

# The protocol's own keys (docs/protocol.md): (doc, type where every value is null).
_COMMON = {
    "v": ("protocol version (1)", "integer"),
    "kind": ("message kind: result, error, beat or wall_motion", "string"),
    "stream": ("stream name: the clip's, NAME/slice-K for a slice of an MR stack", "string"),
}
_BUILTIN: dict[str, dict[str, tuple[str, str]]] = {
    "frames": {
        **_COMMON,
        "kind": ("result (the frame's analysis) or error (the frame was refused)", "string"),
        "seq": ("frame number within the stream", "integer"),
        "t_acq_ns": ("acquisition time of the frame, ns since the Unix epoch", "integer"),
        "t_recv_ns": ("when the side-car read the frame off its socket, ns since the Unix "
                      "epoch", "integer"),
        "t_result_ns": ("when the result was complete, ns since the Unix epoch", "integer"),
        "t_publish_ns": ("when the side-car's publisher sent the result, ns since the Unix "
                         "epoch; null in analyze output", "integer"),
        "latency_ms": ("latency per stage, ms: transport, decode, queue, one per pipeline "
                       "stage that ran, total (receive -> result), publish, end_to_end",
                       "number"),
        "dropped": ("live mode: frames not answered since the previous result (replaced in "
                    "the inbox, or stale)", "integer"),
        "flags": ("the frame's flags, e.g. dropped:N, not_a4c, not_measurable:REASON, "
                  "over_budget", "json"),
        "batch": ("batch size each network ran this frame at (serve --max-batch > 1)",
                  "integer"),
        "budget": ("with serve --budget-ms: the degradation step the frame was made at "
                   "(budget_ms, level, mode); null without a budget", "json"),
        "app": ("the app that analysed the frame", "string"),
        "parts": ("names of the array parts that followed the header (not in the table)",
                  "json"),
        "code": ("error: why the frame was refused (bad_pixels, bad_field, stage_failed, "
                 "seq_not_increasing, ...)", "string"),
        "message": ("error: what was wrong, in words", "string"),
    },
    "beats": {
        **_COMMON,
        "beat": ("the beat's number in the stream, from 0", "integer"),
        "ed_seq": ("seq of the beat's end-diastole frame", "integer"),
        "flags": ("the beat's flags, e.g. beat_incomplete", "json"),
        "parts": ("names of the array parts that followed the header (not in the table)",
                  "json"),
    },
    "stack_beats": {
        **_COMMON,
        "stream": ("the stack's name: NAME of its slice streams NAME/slice-K", "string"),
        "beat": ("the stack's beat number, from 0", "integer"),
    },
}


@dataclass(frozen=True)
class Column:
    """One column of a table, as the column dictionary lists it (``path`` empty for the
    hidden ``_null`` / ``_absent`` columns)."""

    table: str
    name: str
    path: tuple[str, ...]
    type: str
    doc: str


# -- naming ---------------------------------------------------------------------------


def _split_unit(part: str) -> tuple[str, str] | None:
    for suffix in _UNIT_SUFFIXES:
        if part.endswith(suffix) and len(part) > len(suffix):
            return part[:-len(suffix)], suffix[1:]
    return None


def column_name(path: tuple[str, ...] | list[str]) -> str:
    """The column name of the value at ``path``: the keys lower-cased and ``_``-joined,
    the unit suffix of the last key that has one moved to the end
    (``("latency_ms", "segment")`` -> ``latency_segment_ms``); may be empty for keys of
    no letter or digit."""
    parts = [_NOT_NAME.sub("_", str(key).lower()).strip("_") for key in path]
    for i in range(len(parts) - 1, -1, -1):
        split = _split_unit(parts[i])
        if split is not None:
            if i < len(parts) - 1:
                parts[i] = split[0]
                parts.append(split[1])
            break
    return "_".join(p for p in parts if p)


# -- pass 1: the column tree ------------------------------------------------------------


@dataclass
class _Node:
    """A key of a table's messages, over all rows: how often present, null, an object,
    which other kinds of value it held, and its keys when an object."""

    children: dict[str, _Node] = field(default_factory=dict)
    kinds: set[str] = field(default_factory=set)
    present: int = 0
    nulls: int = 0
    objects: int = 0
    column: int = -1        # after pass 1: the leaf's column index, -1 for an object

    def observe(self, value: Any) -> None:
        self.present += 1
        if value is None:
            self.nulls += 1
        elif isinstance(value, dict):
            self.objects += 1
            self.observe_keys(value)
        else:
            self.kinds.add(_kind(value))

    def observe_keys(self, value: dict) -> None:
        for key, item in value.items():
            child = self.children.get(key)
            if child is None:
                child = self.children[key] = _Node()
            child.observe(item)

    @property
    def is_leaf(self) -> bool:
        return bool(self.kinds) or not self.objects or not self.children


def _kind(value: Any) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer" if _INT64[0] <= value <= _INT64[1] else "big_integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string" if value else "empty_string"
    return "list"


def _leaf_type(node: _Node, hint: str | None) -> str:
    kinds = set(node.kinds)
    if node.objects:
        kinds.add("object")
    if not kinds:
        return hint if hint in TYPES else "json"
    if kinds == {"integer"}:
        return "integer"
    if kinds <= {"integer", "number"}:
        return "number"
    if kinds in ({"boolean"}, {"string"}):
        return kinds.pop()
    return "json"


@dataclass
class _Table:
    """A table's column tree (the root holds the messages' top-level keys) and, after
    :meth:`resolve`, its columns."""

    name: str
    root: _Node = field(default_factory=_Node)
    columns: list[Column] = field(default_factory=list)
    needs_null: bool = False
    needs_absent: bool = False

    @property
    def rows(self) -> int:
        return self.root.objects

    def add(self, message: dict) -> None:
        self.root.objects += 1
        self.root.observe_keys(message)

    def resolve(self, docs: dict[str, tuple[str, str]]) -> None:
        """Columns in order (first keys, then first appearance), names, types, docs."""
        first = [k for k in FIRST_KEYS[self.name] if k in self.root.children]
        order = first + [k for k in self.root.children if k not in first]
        self.root.children = {k: self.root.children[k] for k in order}
        taken = {NULL, ABSENT}
        self.needs_null = self.needs_absent = False

        def visit(node: _Node, path: tuple[str, ...]) -> None:
            if path and all(key.isdecimal() for key in node.children):   # AHA segments
                node.children = dict(sorted(node.children.items(), key=lambda kv: int(kv[0])))
            for key, child in node.children.items():
                sub = path + (key,)
                if child.present < node.objects:
                    self.needs_absent = True
                doc, hint = docs.get(sub[0], ("", ""))
                if child.is_leaf:
                    name = column_name(sub)
                    if not name or name in taken:
                        name = ".".join(sub)
                        n = 2
                        while name in taken:
                            name, n = f"{'.'.join(sub)}#{n}", n + 1
                    taken.add(name)
                    child.column = len(self.columns)
                    kind = _leaf_type(child, hint if len(sub) == 1 else None)
                    self.columns.append(Column(self.name, name, sub, kind, doc))
                else:
                    child.column = -1
                    if child.nulls:
                        self.needs_null = True
                    visit(child, sub)

        visit(self.root, ())
        for hidden, needed in ((NULL, self.needs_null), (ABSENT, self.needs_absent)):
            if needed:
                self.columns.append(Column(self.name, hidden, (), "json", _HIDDEN_DOCS[hidden]))

    def flatten(self, message: dict) -> list[Any]:
        """The row's cells (Python values; the hidden columns as lists of paths)."""
        cells: list[Any] = [None] * len(self.columns)
        nulls: list[list[str]] = []
        absent: list[list[str]] = []

        def walk(node: _Node, value: dict, path: list[str]) -> None:
            found = 0
            for key, child in node.children.items():
                if key not in value:
                    absent.append(path + [key])
                    continue
                found += 1
                item = value[key]
                if child.column >= 0:
                    cells[child.column] = item
                elif item is None:
                    nulls.append(path + [key])
                elif isinstance(item, dict):
                    walk(child, item, path + [key])
                else:
                    raise ValueError("the file changed while it was exported")
            if found != len(value):
                raise ValueError("the file changed while it was exported")

        walk(self.root, message, [])
        hidden = len(self.columns) - self.needs_null - self.needs_absent
        if self.needs_null:
            cells[hidden] = nulls or None
            hidden += 1
        if self.needs_absent:
            cells[hidden] = absent or None
        return cells


# -- reading the results file -------------------------------------------------------------


def _table_of(message: dict) -> str | None:
    kind = message.get("kind")
    return TABLE_OF_KIND.get(kind) if isinstance(kind, str) else None


def _declared_docs(message: dict, docs: dict[str, dict[str, tuple[str, str]]]) -> None:
    """Field docs and types of the apps a ``start`` (``meta.app``) or ``hello`` (``apps``)
    declares; the first declaration of a key wins."""
    meta, hello_apps = message.get("meta"), message.get("apps")
    if message.get("kind") == "start" and isinstance(meta, dict):
        apps = [meta.get("app")]
    elif message.get("kind") == "hello" and isinstance(hello_apps, dict):
        apps = list(hello_apps.values())
    else:
        return
    for app in apps:
        if not isinstance(app, dict):
            continue
        message_fields = app.get("message_fields")
        groups = [("frames", app.get("result_fields")), ("beats", app.get("beat_fields"))]
        if isinstance(message_fields, dict):
            groups.append(("stack_beats", message_fields.get("wall_motion")))
        for table, fields in groups:
            for f in fields if isinstance(fields, list) else []:
                if isinstance(f, dict) and isinstance(f.get("name"), str):
                    docs[table].setdefault(f["name"], (str(f.get("doc") or ""),
                                                       str(f.get("type") or "")))


def _scan(path: Path) -> list[_Table]:
    """Pass 1: every table's columns, types and docs."""
    tables = {name: _Table(name) for name in TABLES}
    declared: dict[str, dict[str, tuple[str, str]]] = {name: {} for name in TABLES}
    lines = 0
    for message in iter_rows(path):
        lines += 1
        table = _table_of(message)
        if table is None:
            _declared_docs(message, declared)
        else:
            tables[table].add(message)
    if not lines:
        raise ValueError(f"{path}: the file is empty: nothing to export")
    written = [t for t in tables.values() if t.rows]
    if not written:
        raise ValueError(f"{path}: no result, error, beat or wall_motion line: nothing to "
                         "export (is it the output of cardiostream analyze or record?)")
    for t in written:
        t.resolve({**_BUILTIN[t.name], **declared[t.name]})
    return written


# -- writing --------------------------------------------------------------------------


def _json_text(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def _csv_cell(value: Any, kind: str) -> str:
    if value is None:
        return ""
    if kind == "json":
        return _json_text(value)
    if kind == "boolean":
        return "true" if value else "false"
    if kind == "string":
        return value
    return repr(value)


def _parquet_cell(value: Any, kind: str) -> Any:
    if value is None:
        return None
    if kind == "json":
        return _json_text(value)
    if kind == "number":
        return float(value)
    return value


def _arrow_type(kind: str):
    import pyarrow as pa

    return {"integer": pa.int64(), "number": pa.float64(), "boolean": pa.bool_(),
            "string": pa.string(), "json": pa.string()}[kind]


class _CsvTable:
    def __init__(self, path: Path, table: _Table):
        self.kinds = [c.type for c in table.columns]
        self.file = open(path, "w", newline="", encoding="utf-8")
        self.writer = csv.writer(self.file)
        self.writer.writerow([c.name for c in table.columns])

    def write(self, cells: list[Any]) -> None:
        self.writer.writerow([_csv_cell(v, k) for v, k in zip(cells, self.kinds)])

    def close(self) -> None:
        self.file.close()


class _ParquetTable:
    def __init__(self, path: Path, table: _Table):
        import pyarrow as pa
        import pyarrow.parquet as pq

        self.kinds = [c.type for c in table.columns]
        self.schema = pa.schema([pa.field(c.name, _arrow_type(c.type)) for c in table.columns])
        self.writer = pq.ParquetWriter(path, self.schema)
        self.buffer: list[list[Any]] = [[] for _ in table.columns]
        self.rows = 0

    def write(self, cells: list[Any]) -> None:
        for values, value, kind in zip(self.buffer, cells, self.kinds):
            values.append(_parquet_cell(value, kind))
        self.rows += 1
        if self.rows == ROW_GROUP_ROWS:
            self.flush()

    def flush(self) -> None:
        import pyarrow as pa

        if self.rows:
            arrays = [pa.array(values, type=f.type) for values, f in zip(self.buffer,
                                                                         self.schema)]
            self.writer.write_table(pa.Table.from_arrays(arrays, schema=self.schema),
                                    row_group_size=ROW_GROUP_ROWS)
            self.buffer = [[] for _ in self.buffer]
            self.rows = 0

    def close(self) -> None:
        self.flush()
        self.writer.close()


def _write_columns(path: Path, tables: list[_Table]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["table", "column", "path", "type", "doc"])
        for table in tables:
            for c in table.columns:
                writer.writerow([c.table, c.name, _json_text(list(c.path)) if c.path else "",
                                 c.type, c.doc])


def _parquet_available() -> bool:
    try:
        import pyarrow  # noqa: F401
        import pyarrow.parquet  # noqa: F401
    except ImportError:
        return False
    return True


def export_results(results_jsonl: Path, out_dir: Path, fmt: str) -> list[Path]:
    """Write the tables of ``results_jsonl`` (``fmt`` ``"csv"`` or ``"parquet"``) and its
    column dictionary into ``out_dir`` (made if missing); returns the paths written,
    the tables in :data:`TABLES` order, then the dictionary. A line that is not JSON, an
    empty file and a file without rows are ``ValueError``; Parquet without pyarrow is
    ``RuntimeError``."""
    results_jsonl, out_dir = Path(results_jsonl), Path(out_dir)
    if fmt not in ("csv", "parquet"):
        raise ValueError(f"unknown export format {fmt!r} (csv or parquet)")
    if fmt == "parquet" and not _parquet_available():
        raise RuntimeError(_PARQUET_MISSING)
    tables = _scan(results_jsonl)
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = results_jsonl.stem
    opener: Callable[[Path, _Table], _CsvTable | _ParquetTable] = \
        _CsvTable if fmt == "csv" else _ParquetTable
    paths = {t.name: out_dir / f"{stem}.{t.name}.{fmt}" for t in tables}
    partial = {name: p.with_name(p.name + ".part") for name, p in paths.items()}
    writers: dict[str, tuple[_Table, _CsvTable | _ParquetTable]] = {}
    try:
        for t in tables:
            writers[t.name] = (t, opener(partial[t.name], t))
        for message in iter_rows(results_jsonl):
            name = _table_of(message)
            if name is not None:
                table, writer = writers[name]
                writer.write(table.flatten(message))
    except BaseException:
        for _, writer in writers.values():
            writer.close()
        for part in partial.values():
            part.unlink(missing_ok=True)
        raise
    for _, writer in writers.values():
        writer.close()
    for name, path in paths.items():      # whole tables only, never a half-written one
        os.replace(partial[name], path)
    columns = out_dir / f"{stem}.columns.csv"
    _write_columns(columns, tables)
    return [*paths.values(), columns]


# -- reading a table back ---------------------------------------------------------------


def _read_columns(columns_path: Path, table: str) -> dict[str, Column]:
    with open(columns_path, newline="", encoding="utf-8") as f:
        return {row["column"]: Column(table, row["column"],
                                      tuple(json.loads(row["path"])) if row["path"] else (),
                                      row["type"], row["doc"])
                for row in csv.DictReader(f) if row["table"] == table}


def _from_csv(text: str, kind: str) -> Any:
    if text == "":
        return None
    if kind == "integer":
        return int(text)
    if kind == "number":
        return float(text)
    if kind == "boolean":
        if text not in ("true", "false"):
            raise ValueError(f"not a boolean: {text!r}")
        return text == "true"
    if kind == "string":
        return text
    return json.loads(text)


def _csv_rows(path: Path, columns: dict[str, Column]) -> Iterator[dict[str, Any]]:
    # JSON text (a long list) may pass the csv module's default limit of 128 KiB a field
    csv.field_size_limit(max(csv.field_size_limit(), 1 << 28))
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.reader(f)
        names = next(reader, [])
        _check_names(path, names, columns)
        kinds = [columns[name].type for name in names]
        for n, row in enumerate(reader, 2):
            if len(row) != len(names):
                raise ValueError(f"{path}:{n}: {len(row)} cells, the header has {len(names)}")
            yield {name: _from_csv(text, kind) for name, text, kind in zip(names, row, kinds)}


def _check_names(path: Path, names: list[str], columns: dict[str, Column]) -> None:
    unknown = [name for name in names if name not in columns]
    if unknown:
        raise ValueError(f"{path}: columns {unknown} are not in the column dictionary")


def _parquet_rows(path: Path, columns: dict[str, Column]) -> Iterator[dict[str, Any]]:
    if not _parquet_available():
        raise RuntimeError("reading Parquet needs pyarrow: pip install 'cardiostream[parquet]'")
    import pyarrow.parquet as pq

    parquet = pq.ParquetFile(path)
    _check_names(path, parquet.schema_arrow.names, columns)
    json_columns = [name for name in parquet.schema_arrow.names if columns[name].type == "json"]
    for batch in parquet.iter_batches():
        for row in batch.to_pylist():
            for name in json_columns:
                if row.get(name) is not None:
                    row[name] = json.loads(row[name])
            yield row


def _put(target: dict, path: tuple[str, ...] | list[str], value: Any) -> None:
    for key in path[:-1]:
        nested = target.get(key)
        if not isinstance(nested, dict):
            nested = target[key] = {}
        target = nested
    target[path[-1]] = value


def _remove(target: dict, path: list[str]) -> None:
    for key in path[:-1]:
        target = target[key]
    del target[path[-1]]


def read_table(table_path: Path, columns_path: Path) -> list[dict]:
    """The messages of a table written by :func:`export_results` (``.csv`` or
    ``.parquet``, by suffix), each rebuilt as its JSON object from the column dictionary
    ``columns_path``: leaves at their paths, ``_null`` objects null, ``_absent`` keys
    removed."""
    table_path = Path(table_path)
    table = Path(table_path.stem).suffix.lstrip(".")
    if table not in TABLES:
        raise ValueError(f"{table_path}: not a table file (STEM.TABLE.csv|parquet, TABLE one "
                         f"of {', '.join(TABLES)})")
    columns = _read_columns(Path(columns_path), table)
    if not columns:
        raise ValueError(f"{columns_path}: no column of the {table} table")
    if table_path.suffix == ".csv":
        rows = _csv_rows(table_path, columns)
    elif table_path.suffix == ".parquet":
        rows = _parquet_rows(table_path, columns)
    else:
        raise ValueError(f"{table_path}: neither .csv nor .parquet")
    messages = []
    for n, cells in enumerate(rows, 1):
        message: dict = {}
        for name, value in cells.items():
            if columns[name].path:
                _put(message, columns[name].path, value)
        try:
            for path in cells.get(ABSENT) or ():
                _remove(message, path)
            for path in cells.get(NULL) or ():
                _put(message, path, None)
        except (KeyError, TypeError):
            raise ValueError(f"{table_path}: row {n}: {NULL} / {ABSENT} name a path that is "
                             "not in the table") from None
        messages.append(message)
    return messages


# -- command line ---------------------------------------------------------------------


def add_parser(commands) -> argparse.ArgumentParser:
    """Register ``export`` on the CLI's sub-parsers object."""
    parser = commands.add_parser(
        "export", help="a results file as tidy CSV or Parquet tables (frames, beats, "
                       "stack_beats) for pandas",
        description="Write the JSON lines of `cardiostream analyze` or `record` as tables: "
                    "STEM.frames (one row per frame: each result and error, column kind "
                    "says which), STEM.beats (one row per beat message) and "
                    "STEM.stack_beats (one row per wall_motion: MR stack and beat); a "
                    "table without rows is not written. One column per value: nested "
                    "objects give one column per leaf, lists one column of JSON text. "
                    "Names are the keys lower-cased and _-joined, with the unit of a parent "
                    "key moved to the end so that every column ends in its unit "
                    "(latency_ms.total -> latency_total_ms, regional_pct.basal_septal -> "
                    "regional_basal_septal_pct). STEM.columns.csv, the column dictionary, "
                    "lists each table's columns: JSON path in the message, type (integer, "
                    "number, boolean, string, json) and doc (the app's declaration of the "
                    "field). Hidden columns _null and _absent record the null objects and "
                    "missing keys, so streamer.export.read_table gives the messages back "
                    "exactly. Prints each path written.")
    parser.add_argument("results", type=Path, metavar="RESULTS.jsonl",
                        help="output of cardiostream analyze or record (JSON lines)")
    fmt = parser.add_mutually_exclusive_group(required=True)
    fmt.add_argument("--csv", dest="fmt", action="store_const", const="csv",
                     help="write CSV tables")
    fmt.add_argument("--parquet", dest="fmt", action="store_const", const="parquet",
                     help="write Parquet tables (needs pyarrow); the dictionary stays CSV")
    parser.add_argument("--out-dir", type=Path, metavar="DIR",
                        help="folder for the tables (default: beside the results file)")
    parser.set_defaults(func=cmd_export)
    return parser


def cmd_export(args: argparse.Namespace) -> int:
    """``cardiostream export``: print each path written; 2 on a bad file or a missing
    pyarrow."""
    out_dir = args.out_dir if args.out_dir is not None else Path(args.results).parent
    try:
        paths = export_results(Path(args.results), out_dir, args.fmt)
    except (ValueError, OSError, RuntimeError) as exc:
        print(f"cardiostream export: error: {exc}", file=sys.stderr)
        return 2
    for path in paths:
        print(path)
    return 0
