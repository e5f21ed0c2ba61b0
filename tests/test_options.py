"""Options declared once (streamer/options.py): a config field is its CLI option and the
argv that hands it to a child process."""

import argparse
from dataclasses import dataclass

import pytest

from streamer.apps import (
    AnalysisConfig,
    EngineConfig,
    add_analysis_options,
    analysis_argv,
    analysis_config,
)
from streamer.apps.echo import EchoConfig, ViewConfig
from streamer.budget import BudgetConfig, add_budget_options
from streamer.options import add_options, from_args, option, to_argv
from streamer.sidecar import SideCarConfig


def _pair(text: str) -> tuple[str, int]:
    name, sep, value = text.partition("=")
    if not sep:
        raise ValueError("expected NAME=N")
    return name, int(value)


@dataclass(frozen=True)
class Inner:
    depth_mm: float = option(2.5, "how deep, mm", metavar="MM")


@dataclass(frozen=True)
class Outer:
    name: str = option("a", "a name", aliases=("--label",), choices=("a", "b"))
    fast: bool = option(False, "go fast")
    careful: bool = option(True, "do not be careful", flag="--no-care")
    pairs: tuple[tuple[str, int], ...] = option((), "NAME=N pairs", parse=_pair,
                                                format=lambda p: f"{p[0]}={p[1]}")
    limit: int | None = option(None, "a limit", metavar="N")
    inner: Inner = Inner()
    hidden: int = 7  # not an option


def parse(cls, argv):
    parser = argparse.ArgumentParser()
    add_options(parser, cls)
    return parser, parser.parse_args(argv)


def test_defaults_flags_and_help_come_from_the_fields():
    parser, args = parse(Outer, [])
    assert from_args(Outer, args) == Outer()
    text = parser.format_help()
    assert "--depth-mm MM" in text and "(default 2.5)" in text and "--no-care" in text
    assert "--hidden" not in text and "(repeatable)" in text


def test_a_config_round_trips_through_its_argv():
    config = Outer(name="b", fast=True, careful=False, pairs=(("x", 1), ("y", 2)), limit=3,
                   inner=Inner(4.0))
    argv = to_argv(config)
    assert argv == ["--depth-mm", "4.0", "--name", "b", "--fast", "--no-care", "--pairs",
                    "x=1", "--pairs", "y=2", "--limit", "3"]
    assert from_args(Outer, parse(Outer, argv)[1]) == config
    assert to_argv(Outer()) == []  # defaults are not repeated
    assert from_args(Outer, parse(Outer, ["--label", "b"])[1]).name == "b"  # the alias


def test_a_bad_value_is_one_error_that_names_the_option():
    _, args = parse(Outer, ["--pairs", "x"])
    with pytest.raises(ValueError, match="--pairs 'x': expected NAME=N"):
        from_args(Outer, args)


def test_the_analysis_options_rebuild_the_same_config_in_a_child():
    """What demo and bench latency hand to `serve`: the same AnalysisConfig."""
    parser = argparse.ArgumentParser()
    add_analysis_options(parser, test_hooks=True)
    argv = ["--app", "echo", "--backend", "onnxruntime", "--weights", "seg=u.onnx",
            "--view-gate", "off", "--min-view-confidence", "0.5", "--septum-side", "right",
            "--debug-delay-ms", "3", "--debug-delay-seqs", "2:4"]
    config = analysis_config(parser.parse_args(argv))
    assert config.app == "echo"
    assert config.engines == EngineConfig(backend="onnxruntime", weights=(("seg", "u.onnx"),))
    echo = config.apps["echo"]
    assert echo.view == ViewConfig(gate="off", min_confidence=0.5)
    assert echo.centreline.septum_side == "right"
    assert config.debug_delay.seqs == (2, 4)
    again = analysis_config(parser.parse_args(analysis_argv(config)))
    assert again == config
    assert analysis_config(parser.parse_args(["--analysis", "none"])).app == "none"
    assert analysis_argv(analysis_config(parser.parse_args([]))) == []
    assert analysis_config(parser.parse_args([])).apps["echo"] == EchoConfig()
    assert AnalysisConfig().app == "auto"


def test_budget_and_side_car_options():
    parser = argparse.ArgumentParser()
    add_budget_options(parser)
    add_options(parser, SideCarConfig)
    args = parser.parse_args(["--budget-ms", "25", "--stage-budget", "flow=10", "--no-degrade",
                              "--max-message-mb", "1", "--lossless", "--max-streams", "3"])
    budget = from_args(BudgetConfig, args)
    assert budget == BudgetConfig(frame_ms=25.0, stage_ms=(("flow", 10.0),), degrade=False)
    assert to_argv(budget) == ["--budget-ms", "25.0", "--stage-budget", "flow=10.0",
                               "--no-degrade"]
    sidecar = from_args(SideCarConfig, args)
    assert sidecar.max_message_bytes == 1024 * 1024 and sidecar.lossless
    assert sidecar.max_streams == 3
    with pytest.raises(ValueError, match="--weights 'x': expected ROLE=PATH"):
        parser = argparse.ArgumentParser()
        add_analysis_options(parser)
        analysis_config(parser.parse_args(["--weights", "x"]))


def test_parse_pair_reads_two_values_or_names_the_form():
    from streamer.options import parse_pair

    assert parse_pair("-40:15", float) == (-40.0, 15.0)
    assert parse_pair("3:5", int, "FIRST:LAST") == (3, 5)
    for bad in ("3", "a:5", "3:"):
        with pytest.raises(ValueError, match="expected FIRST:LAST"):
            parse_pair(bad, int, "FIRST:LAST")
