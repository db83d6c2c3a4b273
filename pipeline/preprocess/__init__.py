"""Preprocessing stages: window, register, mask, slices."""

from __future__ import annotations

import argparse
import logging
from typing import Any, Callable, Sequence


def run_stage_cli(parser: argparse.ArgumentParser, stage: Callable[..., Any], argv: Sequence[str] | None) -> None:
    """A stage's command line: parse ``argv`` into keyword arguments of ``stage`` and run it; a
    PipelineError (bad input, bad config) exits with status 1 and its message, no traceback."""
    from pipeline.errors import PipelineError

    args = vars(parser.parse_args(argv))
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        stage(**args)
    except PipelineError as exc:
        parser.exit(1, f"error: {exc}\n")
