"""Train a GAN of ``pipeline.models`` on one slices npz per named input: the engine's command
line, as the Snakemake ``train`` rules call it (the engine itself is ``pipeline.engine``).

    python -m pipeline.train --input a=data/slices/ct_head/train.npz --input b=... \\
        --val-input a=... --val-input b=... --out models/<experiment> --experiment <experiment> \\
        --config-json '{"model": {...}, "train": {...}}' --seed 0

Outputs in ``--out`` (each written atomically, by process 0 only): model.pt, checkpoint.pt,
history.csv, run.json, samples/epoch_XXXX.png. Rerunning the same command resumes from
checkpoint.pt into the same MLflow run.

Exit status: 0 done; 1 a pipeline error (one line in the log); 143 (128 + SIGTERM, "killed")
after SIGTERM made the engine write a checkpoint, so Snakemake and batch schedulers see an
unfinished job and rerun (resume) it.
"""
from __future__ import annotations

import argparse
import json
import logging
import signal
from pathlib import Path

from pipeline.engine.loop import TrainingInterrupted, train
from pipeline.errors import ConfigError, PipelineError
from pipeline.models.networks import PRETRAINED_CHOICES

log = logging.getLogger(__name__)

#: Exit status after a SIGTERM-triggered checkpoint: what a shell reports for a process killed by
#: SIGTERM, so Snakemake and batch schedulers see an unfinished job and rerun (resume) it.
EXIT_INTERRUPTED = 128 + signal.SIGTERM


def named_paths(values: list[str], flag: str) -> dict[str, Path]:
    """["a=x.npz", "b=y.npz"] -> {"a": Path("x.npz"), "b": Path("y.npz")}; a malformed or repeated name is a ConfigError."""
    named: dict[str, Path] = {}
    for value in values:
        name, sep, path = value.partition("=")
        if not sep or not name or not path:
            raise ConfigError(f"{flag} takes NAME=PATH (e.g. {flag} images=data/slices/x/train.npz), got {value!r}")
        if name in named:
            raise ConfigError(f"{flag} names input {name!r} twice")
        named[name] = Path(path)
    return named


def main(argv: list[str] | None = None) -> int:
    """CLI; returns the exit status: 0 done, 1 a pipeline error (one line in the log),
    EXIT_INTERRUPTED (143) after a SIGTERM checkpoint (rerun to resume)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--input", action="append", default=[], required=True, metavar="NAME=PATH",
                        help="training slices npz of one of the model's inputs (CycleGAN: a and b; dcgan / cgan: "
                             "images); repeat per input")
    parser.add_argument("--val-input", action="append", default=[], required=True, metavar="NAME=PATH",
                        help="validation slices npz of an input (sample grids); repeat per input")
    parser.add_argument("--out", type=Path, required=True, help="output folder (models/<experiment>)")
    parser.add_argument("--experiment", required=True, help="MLflow experiment name")
    parser.add_argument("--config-json", default="{}", help='{"model": {...}, "train": {...}} knobs as JSON')
    parser.add_argument("--tracking-uri", default="sqlite:///mlflow.db", help="MLflow tracking URI")
    parser.add_argument("--pretrained", choices=PRETRAINED_CHOICES, default=None,
                        help="overrides model.pretrained (imagenet: use the weight files when present)")
    parser.add_argument("--weights-dir", type=Path, default=Path("data/weights"),
                        help="folder of torchvision ImageNet weight files (optional)")
    parser.add_argument("--seed", type=int, required=True)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        try:
            cfg = json.loads(args.config_json)
        except json.JSONDecodeError as err:
            raise ConfigError(f"--config-json is not valid JSON ({err})") from err
        if args.pretrained is not None:
            cfg["model"] = {**cfg.get("model", {}), "pretrained": args.pretrained}
        train(named_paths(args.input, "--input"), named_paths(args.val_input, "--val-input"), args.out,
              cfg, args.experiment, args.tracking_uri, args.weights_dir, args.seed)
    except TrainingInterrupted as err:
        log.error("%s", err)
        return EXIT_INTERRUPTED
    except PipelineError as err:
        log.error("%s", err)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
