"""Preprocessing stages: window, register, mask, slices."""

from __future__ import annotations

import argparse
import inspect
import logging
from collections.abc import Iterable, Mapping
from typing import Any, Callable, Sequence

#: argparse options of a knob the command line may leave out: the stage's signature gives its default.
OPTIONAL = {"default": argparse.SUPPRESS}


def stage_parser(module: str, doc: str | None) -> argparse.ArgumentParser:
    """A stage's argument parser, named as it is run (``python -m <module>``) and described by the
    first line of its module docstring."""
    return argparse.ArgumentParser(prog=f"python -m {module}", description=(doc or "").split("\n")[0])


def add_knob_options(
    parser: argparse.ArgumentParser,
    stage: Callable[..., Any],
    names: Iterable[str] = (),
    options: Mapping[str, dict[str, Any]] | None = None,
) -> None:
    """One optional flag per knob of ``stage`` (``--val-fraction`` sets ``val_fraction``): each of
    ``names`` parsed as the type of its default, each of ``options`` with the argparse options
    given. Flags default to SUPPRESS so the stage's signature stays the one place for defaults;
    --help quotes them from there."""
    parameters = inspect.signature(stage).parameters
    flags = {**{name: {"type": type(parameters[name].default)} for name in names}, **(options or {})}
    for name, flag_options in flags.items():
        parser.add_argument(
            "--" + name.replace("_", "-"),
            dest=name,
            default=argparse.SUPPRESS,
            help=f"default: {parameters[name].default}",
            **flag_options,
        )


def run_cli(
    parser: argparse.ArgumentParser, run: Callable[[dict[str, Any]], Any], argv: Sequence[str] | None
) -> None:
    """A stage's command line: parse ``argv`` into a dict and hand it to ``run``; a PipelineError
    (bad input, bad config) exits with status 1 and its message, no traceback."""
    from pipeline.errors import PipelineError

    args = vars(parser.parse_args(argv))
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        run(args)
    except PipelineError as exc:
        parser.exit(1, f"error: {exc}\n")


def run_stage_cli(
    parser: argparse.ArgumentParser, stage: Callable[..., Any], argv: Sequence[str] | None
) -> None:
    """run_cli for a stage whose arguments are its function's keyword arguments."""
    run_cli(parser, lambda args: stage(**args), argv)


def run_commands_cli(
    parser: argparse.ArgumentParser, commands: Mapping[str, Callable[..., Any]], argv: Sequence[str] | None
) -> None:
    """run_cli for a stage with subcommands (``dest="command"``): the command's function is called
    with the other arguments as keywords."""
    run_cli(parser, lambda args: commands[args.pop("command")](**args), argv)
