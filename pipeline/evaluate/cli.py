"""What every evaluator's command line does alike, written once.

A task's CLI parses its own flags and names its evaluation and figures; this module adds the
flags they share (``--model``, ``--out``, ``--device``, ``--run-json``, the interval knobs), picks
the device (``auto``: CUDA when present), loads the model of the task, stamps it into the
metrics, validates them, draws the figures asked for, writes metrics.json last (so asking for it
builds the rest) and logs the finite numbers and the files to the training's MLflow run.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Callable, Iterable, Mapping, Sequence

from pipeline.devices import resolve_device
from pipeline.errors import PipelineError
from pipeline.evaluate.measures.intervals import IntervalPolicy
from pipeline.evaluate.measures.memorisation import CopySearch
from pipeline.evaluate.metrics_json import flatten_metrics, validate_metrics, write_metrics
from pipeline.hashing import file_sha256


def load_for_evaluation(path: Path, device: str, task: str, what: str):
    """The trained model in ``path`` on ``device`` (``auto`` resolved), which must be of ``task``
    (an InputDataError naming the file otherwise: e.g. "... is a translation model, not {what}")."""
    from pipeline.errors import InputDataError
    from pipeline.models import load_trained

    model = load_trained(path, device=resolve_device(device))
    if getattr(model, "task", None) != task:
        raise InputDataError(path, f"is a {getattr(model, 'task', 'unknown')} model, not {what}")
    return model


def add_common_arguments(parser: argparse.ArgumentParser, model_help: str) -> None:
    """The flags every evaluator takes: the model, metrics.json, device, MLflow run and intervals."""
    parser.add_argument("--model", type=Path, required=True, help=model_help)
    parser.add_argument("--out", type=Path, required=True, help="metrics.json to write")
    parser.add_argument("--device", default="auto", help="auto (CUDA when present), cpu or cuda")
    parser.add_argument("--run-json", type=Path, help="run.json of the training run: log metrics to its MLflow run")
    parser.add_argument("--n-boot", type=int, default=1000, help="bootstrap replicates of per-image intervals")
    parser.add_argument("--min-subjects", type=int, default=8,
                        help="an interval over fewer subjects per set is null with the reason")
    parser.add_argument("--seed", type=int, default=0)


def interval_policy(args: argparse.Namespace) -> IntervalPolicy:
    """The interval knobs of add_common_arguments, seeded with ``--seed``."""
    return IntervalPolicy(min_subjects=args.min_subjects, n_boot=args.n_boot, seed=args.seed)


def add_memorisation_arguments(parser: argparse.ArgumentParser) -> None:
    """The memorisation check's flags (pipeline.evaluate.measures.memorisation.CopySearch; defaults there)."""
    defaults = CopySearch()
    parser.add_argument("--memorisation-copy-ratio", type=float, default=defaults.copy_ratio,
                        help="near copy: distance below this share of new patients' median distance to training")
    parser.add_argument("--memorisation-max-shift", type=float, default=defaults.max_shift,
                        help="translations searched, share of the image side")
    parser.add_argument("--memorisation-zooms", type=float, nargs="+", default=list(defaults.zooms),
                        help="enlargements of the training slices searched (a crop resized back)")
    parser.add_argument("--memorisation-candidates", type=int, default=defaults.candidates,
                        help="training slices per image given the full alignment")
    parser.add_argument("--memorisation-quantile", type=float, default=defaults.quantile,
                        help="share_closer: quantile of the held-out distances")


def copy_search(args: argparse.Namespace) -> CopySearch:
    """The memorisation knobs of add_memorisation_arguments."""
    return CopySearch(max_shift=args.memorisation_max_shift, zooms=tuple(args.memorisation_zooms),
                      candidates=args.memorisation_candidates, copy_ratio=args.memorisation_copy_ratio,
                      quantile=args.memorisation_quantile)


def require_with(parser: argparse.ArgumentParser, args: argparse.Namespace, flags: Iterable[str], needed: str) -> None:
    """A parser error when one of ``flags`` (dest names) is given without ``needed`` (a dest name)."""
    if getattr(args, needed) is not None:
        return
    for flag in flags:
        if getattr(args, flag) is not None:
            parser.error(f"--{flag.replace('_', '-')} needs --{needed.replace('_', '-')}")


def draw(figures: Sequence[tuple[Path | None, Callable[[Path], object]]]) -> list[Path]:
    """Draw each figure whose target was asked for (not None), in order; the targets drawn."""
    drawn = []
    for target, make in figures:
        if target is not None:
            make(target)
            drawn.append(target)
    return drawn


def log_to_run(run_json: Path | None, metrics: Mapping[str, float | None], artifacts: Iterable[Path | None],
               tracking_uri: str | None = None) -> str | None:
    """Log ``metrics`` and the given files into the training's MLflow run named in ``run_json``
    (nothing when it is None); the run id."""
    if run_json is None:
        return None
    from pipeline.tracking import log_evaluation

    return log_evaluation(run_json, metrics, [path for path in artifacts if path is not None], tracking_uri)


def run_evaluation(
    args: argparse.Namespace,
    task: str,
    what: str,
    evaluate: Callable[[object, str], dict],
    draw_figures: Callable[[dict], Sequence[Path]] = lambda metrics: [],
    outputs: Sequence[Path | None] = (),
    report: Callable[[dict], None] = lambda metrics: None,
    log: logging.Logger = logging.getLogger("pipeline.evaluate"),
) -> int:
    """One evaluator's command line after parsing; its exit status (1 after logging a PipelineError).

    ``evaluate(model, device)`` returns the metrics of the model loaded from ``--model`` (which
    must be of ``task``, ``what`` naming it in the error); ``draw_figures(metrics)`` draws the
    figures asked for and returns their paths; metrics.json is written after them. ``report(metrics)``
    logs the headline; ``outputs`` (beside metrics.json and the figures drawn) go to MLflow
    with the finite numbers when ``--run-json`` is given.
    """
    device = resolve_device(args.device)
    try:
        model = load_for_evaluation(args.model, device, task, what)
        metrics = evaluate(model, device)
        metrics["model"] = {"path": str(args.model), "sha256": file_sha256(args.model)}
        validate_metrics(metrics)
        drawn = draw_figures(metrics)
        write_metrics(args.out, metrics)
    except PipelineError as err:
        log.error("%s", err)
        return 1
    report(metrics)
    log_to_run(args.run_json, flatten_metrics(metrics), [args.out, *outputs, *drawn])
    return 0
