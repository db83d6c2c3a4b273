"""The project's own error types.

Every error that comes from bad input names the file and what is wrong with it, in one line,
so that the log of the Snakemake rule that met it says exactly what to fix.
"""
from __future__ import annotations

from pathlib import Path


class PipelineError(Exception):
    """Base class: anything the pipeline raises on purpose."""


class ConfigError(PipelineError):
    """params.yaml (or an override) is invalid: names the key and the allowed values."""


class InputDataError(PipelineError):
    """An input file is unusable. Always carries the file and the problem."""

    def __init__(self, path: str | Path, problem: str):
        self.path = Path(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


class RegistrationError(PipelineError):
    """A registration failed or produced an implausible deformation."""
