"""results/<experiment>/metrics.json of report 004 from the section JSONs of its stages.

Each stage (evaluation of G, encoder training, inversion, separation, edits, the heart / thorax
segmenter, the classifier) writes its own file; this light step only reads them, adds a
``headline`` of the numbers the report and the issue ask for, validates the whole against
metrics.schema.json ($defs/stylegan_editing_metrics) and logs the headline and the figures into
G's MLflow training run. Changing an edit knob therefore reruns the edit stage and this step only.

This is the evaluator of the StyleGAN editing task (metrics.json task ``stylegan_editing``); the
stages that measure (inversion, LDA separation, edits) stay in pipeline/latent, beside the latent
space they work in, and write their sections for it. Not in ``EVALUATORS``: that registry is keyed
by the task of a trained model, and no one model.pt stands for this chain (rule assemble_stylegan).

CLI: python -m pipeline.evaluate.tasks.editing --experiment E --generation sections/generation.json ... --out metrics.json
"""
from __future__ import annotations

import argparse
import csv
import json
import logging
import math
import sys
from pathlib import Path
from typing import Any

from pipeline.errors import InputDataError, PipelineError
from pipeline.evaluate.cli import log_to_run
from pipeline.evaluate.metrics_json import write_metrics

log = logging.getLogger("pipeline.evaluate.tasks.editing")

TASK = "stylegan_editing"
#: run.json keys of G's training copied into metrics.json when present (speed and budget).
TRAINING_KEYS = ("seconds", "epochs", "steps", "kimg", "images_per_s", "seconds_per_kimg",
                 "device", "device_name", "peak_rss_mb", "peak_gpu_allocated_mb", "params_hash", "run_id")


def _read_json(path: Path) -> dict:
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise InputDataError(path, f"cannot be read as a stage's JSON ({err})") from err


def _last_losses(history_csv: Path) -> dict[str, float]:
    """The last row of a history.csv, numbers only."""
    with open(history_csv, newline="") as fh:
        rows = list(csv.DictReader(fh))
    if not rows:
        return {}
    out = {}
    for key, value in rows[-1].items():
        try:
            number = float(value)
        except (TypeError, ValueError):
            continue
        if math.isfinite(number):
            out[key] = number
    return out


def training_speed(run: dict) -> dict:
    """G's run.json keys worth keeping, plus seconds per kimg (wall time of the whole run, sample
    grids and checkpoints included, over the thousands of images shown) when the run counted kimg."""
    out = {key: run[key] for key in TRAINING_KEYS if key in run}
    if out.get("kimg") and out.get("seconds") and "seconds_per_kimg" not in out:
        out["seconds_per_kimg"] = round(float(out["seconds"]) / float(out["kimg"]), 3)
    return out


def _get(node: Any, *keys: str) -> float | None:
    for key in keys:
        if not isinstance(node, dict) or node.get(key) is None:
            return None
        node = node[key]
    return float(node) if isinstance(node, (int, float)) and math.isfinite(node) else None


def headline(metrics: dict) -> dict[str, float | None]:
    """The numbers report 004 and issue 19 quote, each picked from its section."""
    edit = metrics["edit"]
    head = edit["directions"][edit["headline_direction"]]
    inversion, separation = metrics["inversion"], metrics["separation"]
    return {
        "lda_separation_fit": _get(separation, "separation_fit", "value"),
        "lda_separation_heldout": _get(separation, "separation_heldout", "value"),
        "lda_auc_heldout": _get(separation, "auc_heldout", "value"),
        "ctr_change_per_unit_alpha": _get(head, "ctr_slope_per_unit_alpha", "mean"),
        "probability_change_per_unit_alpha": _get(head, "probability_slope_per_unit_alpha", "mean"),
        "identity_ssim_outside_heart": _get(head, "identity_ssim_outside_heart", "mean"),
        "segmenter_ctr_abs_error": _get(edit, "ctr_segmenter", "ctr_abs_error", "mean"),
        "real_ssim_encoder": _get(inversion, "real", "encoder", "ssim", "mean"),
        "real_ssim_optimisation": _get(inversion, "real", "optimisation", "ssim", "mean"),
        "synthetic_w_error_start": _get(inversion, "synthetic", "w_rms_error", "start", "mean"),
        "synthetic_w_error_encoder": _get(inversion, "synthetic", "w_rms_error", "encoder", "mean"),
        "synthetic_w_error_optimisation": _get(inversion, "synthetic", "w_rms_error", "optimisation", "mean"),
        "frd": _get(metrics["generator"], "distribution", "frd", "value"),
    }


def assemble(experiment: str, generation: Path, training_run: Path, encoder_run: Path, encoder_history: Path,
             inversion: Path, separation: Path, edit: Path, segmenter: Path, classifier: Path,
             min_subjects: int, n_boot: int, seed: int) -> dict:
    training = _read_json(training_run)
    encoder = _read_json(encoder_run)
    metrics = {
        "schema_version": 1,
        "task": TASK,
        "experiment": experiment,
        "training": training_speed(training),
        "generator": _read_json(generation),
        "encoder": {"run_id": encoder.get("run_id"), "seconds": encoder.get("seconds"), "epochs": encoder.get("epochs"),
                    "steps": encoder.get("steps"), "final_losses": _last_losses(encoder_history)},
        "inversion": _read_json(inversion),
        "separation": _read_json(separation),
        "edit": _read_json(edit),
        "ctr_segmenter": _read_json(segmenter),
        "classifier": _read_json(classifier),
        "settings": {"intervals": {"min_subjects": min_subjects, "n_boot": n_boot, "seed": seed}},
    }
    metrics["headline"] = headline(metrics)
    return metrics


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m pipeline.evaluate.tasks.editing", description=__doc__.splitlines()[0])
    parser.add_argument("--experiment", required=True)
    for name in ("generation", "training-run", "encoder-run", "encoder-history", "inversion", "separation", "edit",
                 "segmenter", "classifier"):
        parser.add_argument(f"--{name}", type=Path, required=True)
    parser.add_argument("--figures", type=Path, nargs="*", default=[], help="figures logged to MLflow")
    parser.add_argument("--min-subjects", type=int, default=8)
    parser.add_argument("--n-boot", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tracking-uri", default=None, help="overrides run.json's (MLflow logging)")
    parser.add_argument("--no-tracking", action="store_true", help="do not log to MLflow")
    parser.add_argument("--out", type=Path, required=True)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    try:
        metrics = assemble(args.experiment, args.generation, args.training_run, args.encoder_run, args.encoder_history,
                           args.inversion, args.separation, args.edit, args.segmenter, args.classifier,
                           args.min_subjects, args.n_boot, args.seed)
        write_metrics(args.out, metrics)
        numbers = {f"headline/{k}": v for k, v in metrics["headline"].items() if v is not None}
        log_to_run(None if args.no_tracking else args.training_run, numbers, [args.out, *args.figures],
                   args.tracking_uri)
    except PipelineError as err:
        log.error("%s", err)
        return 1
    log.info("metrics: %s", json.dumps(metrics["headline"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
