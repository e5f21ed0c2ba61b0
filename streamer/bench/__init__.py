"""``cardiostream bench``: latency of the side-car and of the pipeline, and comparisons.

    cardiostream bench latency [--transport sockets|in-process|both] [--frames N] ...
    cardiostream bench compare A.json B.json [--json OUT]

``add_parser(commands)`` registers the ``bench`` command on the ``cardiostream`` CLI's
sub-parsers; ``main(argv)`` (``python -m streamer.bench latency ...``) runs it alone.
The modules: :mod:`streamer.bench.latency` (the run and its JSON report, schema in its
docstring), :mod:`streamer.bench.compare`, :mod:`streamer.bench.plots`.
"""

from __future__ import annotations

import argparse
import logging
import sys

__all__ = ["add_parser", "build_parser", "main"]


def add_parser(commands) -> argparse.ArgumentParser:
    """Register ``bench latency`` and ``bench compare`` on the CLI's sub-parsers object."""
    from streamer.apps import add_analysis_options
    from streamer.bench import compare, latency
    from streamer.budget import add_budget_options

    bench = commands.add_parser(
        "bench", help="latency benchmarks: side-car over sockets, pipeline in process; "
                      "compare two reports",
        description="Measure the side-car's latency on a replayed clip (`bench latency`) "
                    "and compare two such reports (`bench compare`). Each prints a table "
                    "and writes JSON.")
    sub = bench.add_subparsers(dest="bench_command", required=True, metavar="BENCH")
    options = argparse.ArgumentParser(add_help=False)
    add_analysis_options(options)
    add_budget_options(options)
    latency.add_parser(sub, parents=[options])
    compare.add_parser(sub)
    return bench


def build_parser() -> argparse.ArgumentParser:
    """A ``cardiostream`` parser with only the ``bench`` command (for ``main``)."""
    parser = argparse.ArgumentParser(prog="cardiostream")
    add_parser(parser.add_subparsers(dest="command", required=True, metavar="COMMAND"))
    return parser


def main(argv: list[str] | None = None) -> int:
    """``cardiostream bench ARGV``; returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(["bench", *argv])
    args.bench_argv = argv  # the report quotes the command line
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return args.func(args)
    except KeyboardInterrupt:
        return 130
