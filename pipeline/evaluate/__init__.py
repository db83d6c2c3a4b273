"""Evaluation of trained models, in two layers (docs/evaluation.md):

- ``measures/``: shared measures, one module each, no knowledge of a task (FID / KID, FRD, PRDC,
  memorisation, intervals, image metrics, Dice, organ style, steganography, the real-data
  classifier and segmenter, the slices every evaluation reads);
- ``tasks/``: one evaluator per task (translation, generation, map_to_image, editing), each a
  function with plain inputs, its figures and a thin CLI made with ``cli.py``; a task composes
  measures and never imports another task.

``metrics_json`` validates, writes and flattens metrics.json; this module holds the registry by
task that ``python -m pipeline.evaluate`` dispatches on.
"""

from __future__ import annotations

import importlib
from typing import Callable

from pipeline.errors import ConfigError

#: task -> "module:function", the command-line evaluator (``main(argv) -> exit status``) of the
#: models of that task (``pipeline.models.GANModel.task``); ``python -m pipeline.evaluate``
#: dispatches on it. A new task adds an entry here, not a branch in the CLI.
EVALUATORS = {
    "translation": "pipeline.evaluate.tasks.translation:main",
    "generation": "pipeline.evaluate.tasks.generation:main",
    "map_to_image": "pipeline.evaluate.tasks.map_to_image:main",
    "encoding": "pipeline.latent.invert:main",   # a StyleGAN2 encoder: inversion of synthetic and real images
}


def evaluator_for_task(task: str) -> Callable[[list[str] | None], int]:
    """The CLI entry point that evaluates models of ``task``."""
    if task not in EVALUATORS:
        raise ConfigError(f"no evaluator for task {task!r}; known tasks: {sorted(EVALUATORS)}")
    module_name, function_name = EVALUATORS[task].split(":")
    return getattr(importlib.import_module(module_name), function_name)
