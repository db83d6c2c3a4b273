"""CLI of the reader study.

  python -m pipeline.reader_study make EXPERIMENT [--out DIR] [knobs...]
  python -m pipeline.reader_study make EXPERIMENT --from-key KEY [--out DIR]
  python -m pipeline.reader_study score KEY ANSWERS... [--out scores.json] [--figure grid.png] [--run-json run.json]

``make`` takes what it is not given from params.yaml (``--params``): the experiment's test
sets, models/<experiment>/model.pt (and checkpoint.pt), and the ``reader_study`` knobs; the
Snakemake rule passes everything explicitly. Every ``make`` draws a fresh secret (a new study);
``--from-key`` rebuilds the study of that key.json byte for byte (its secret and knobs; the
model and test sets must be the ones it was drawn from). ``score`` writes scores.json and the answer figure
beside the key unless told otherwise, and with ``--run-json`` logs the scores into the
experiment's MLflow run. Exit status 0, or 1 with one line naming the file and the problem.
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from pipeline.errors import ConfigError, PipelineError

log = logging.getLogger("pipeline.reader_study")


def _experiment_paths(cfg: dict, experiment: str) -> dict[str, Path]:
    """Default inputs and output of ``experiment`` as the workflow lays them out."""
    experiments = cfg.get("experiments") or {}
    if experiment not in experiments:
        raise ConfigError(f"unknown experiment {experiment!r}; params.yaml experiments: {sorted(experiments)}")
    exp = experiments[experiment]
    paths = {"model": Path(f"models/{experiment}/model.pt"), "checkpoint": Path(f"models/{experiment}/checkpoint.pt"),
             "out": Path(f"results/{experiment}/reader_study")}
    if "domain_a" in exp and "domain_b" in exp:
        paths["test_a"] = Path(f"data/slices/{exp['domain_a']}/test.npz")
        paths["test_b"] = Path(f"data/slices/{exp['domain_b']}/test.npz")
    else:
        dataset = (exp.get("inputs") or {}).get("images") or exp.get("dataset")
        if dataset:
            paths["real"] = Path(f"data/slices/{dataset}/test.npz")
    return paths


def _window_presets(values: list[str] | None) -> dict[str, tuple[float, float]] | None:
    """``--window-preset name:low:high`` flags as params.yaml's ``window_presets`` mapping."""
    if values is None:
        return None
    presets = {}
    for value in values:
        try:
            name, low, high = value.split(":")
            presets[name] = (float(low), float(high))
        except ValueError:
            raise ConfigError(f"--window-preset {value!r}: expected NAME:LOW:HIGH, e.g. narrow:0.25:0.75") from None
    return presets


def _make(args: argparse.Namespace) -> int:
    from pipeline.reader_study.make import StudySettings, make_study, rebuild_study

    knobs = {"n_images": args.n_images, "pick": args.pick, "candidates_per_image": args.candidates_per_image,
             "display_window": args.display_window, "window_presets": _window_presets(args.window_preset),
             "confidence": args.confidence, "direction": args.direction}
    paths = {"model": args.model, "checkpoint": args.checkpoint, "out": args.out, "test_a": args.test_a,
             "test_b": args.test_b, "real": args.real}
    explicit_inputs = args.real is not None or (args.test_a is not None and args.test_b is not None)
    needs_params = args.model is None or args.out is None or not explicit_inputs
    if args.from_key is None and any(v is None for v in knobs.values()):
        needs_params = True
    if needs_params:
        from pipeline.config import load_params

        cfg = load_params(args.params)
        section = cfg.get("reader_study")
        if section is None:
            raise ConfigError(f"{args.params}: no reader_study section")
        knobs = {k: section[k] if v is None else v for k, v in knobs.items()}
        found = _experiment_paths(cfg, args.experiment)
        if explicit_inputs:
            found = {k: v for k, v in found.items() if k not in ("test_a", "test_b", "real")}
        paths = {k: found.get(k) if v is None else v for k, v in paths.items()}
    inputs = {"test_a": paths["test_a"], "test_b": paths["test_b"], "real": paths["real"], "device": args.device}
    if args.from_key is not None:
        study = rebuild_study(args.from_key, paths["model"], paths["out"], checkpoint=paths["checkpoint"], **inputs)
        log.info("rebuilt study %s from %s in %s", study["study_id"], args.from_key, paths["out"])
        return 0
    settings = StudySettings(**{**knobs, "display_window": tuple(knobs["display_window"]),
                                "window_presets": {k: tuple(v) for k, v in knobs["window_presets"].items()}})
    study = make_study(args.experiment, paths["model"], paths["out"], settings,
                       checkpoint=paths["checkpoint"] if settings.pick == "best_by_discriminator" else None, **inputs)
    log.info("study %s: %d images (pick %s) in %s; give readers only %s; key.json holds the secret",
             study["study_id"], study["page"]["n_images"], settings.pick, paths["out"],
             Path(paths["out"]) / "study.html")
    return 0


def _shown(entry: dict) -> str:
    if entry.get("value") is None:
        return "n/a"
    ci = entry.get("ci95")
    return f"{entry['value']:.2f}" + (f" [{ci[0]:.2f}, {ci[1]:.2f}]" if ci else "")


def _score(args: argparse.Namespace) -> int:
    from pipeline.atomic import write_json
    from pipeline.errors import InputDataError
    from pipeline.evaluate.cli import log_to_run
    from pipeline.reader_study.score import answer_figure, mlflow_metrics, read_answers, read_key, score_study

    key = read_key(args.key)
    readers = []
    seen: dict[str, Path] = {}
    for path in args.answers:
        reader = read_answers(path, key)
        if reader.reader in seen:
            raise InputDataError(path, f"reader {reader.reader!r} already answered in {seen[reader.reader]}")
        seen[reader.reader] = Path(path)
        readers.append(reader)
    scores = score_study(key, readers)
    out = args.out or Path(args.key).with_name("scores.json")
    figure = args.figure or Path(args.key).with_name("answers_grid.png")
    answer_figure(key, readers, Path(args.key).parent / "images", figure)
    write_json(out, scores)
    for name, block in scores["readers"].items():
        acc = block["accuracy"]
        log.info("%s: accuracy %d/%d = %.2f [%.2f, %.2f] (p vs chance %.3g), fakes taken for real %s, AUC %s", name,
                 acc["k"], acc["n"], acc["value"], *acc["ci95"], block["p_value_vs_chance"],
                 _shown(block["fakes_taken_for_real"]), _shown(block["auc"]))
    run_id = log_to_run(args.run_json, mlflow_metrics(scores), [out, figure], args.tracking_uri)
    if run_id is not None:
        log.info("scores logged to MLflow run %s", run_id)
    log.info("wrote %s and %s", out, figure)
    return 0


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m pipeline.reader_study", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    make = commands.add_parser("make", help="build study.html, key.json, study.json and images/")
    make.add_argument("experiment")
    make.add_argument("--params", type=Path, default=Path("params.yaml"), help="where missing values come from")
    make.add_argument("--out", type=Path, help="study folder (results/<experiment>/reader_study)")
    make.add_argument("--model", type=Path, help="models/<experiment>/model.pt")
    make.add_argument("--checkpoint", type=Path, help="training checkpoint.pt (pick best_by_discriminator)")
    make.add_argument("--test-a", type=Path, help="translators: domain a's test.npz")
    make.add_argument("--test-b", type=Path, help="translators: domain b's test.npz")
    make.add_argument("--real", type=Path, help="generators: the real test.npz")
    make.add_argument("--from-key", type=Path, metavar="KEY",
                      help="rebuild the study of this key.json byte for byte (its secret and knobs)")
    make.add_argument("--n-images", type=int, help="images shown, each real or generated by its own fair coin")
    make.add_argument("--pick", choices=("random", "best_by_discriminator"))
    make.add_argument("--candidates-per-image", type=int)
    make.add_argument("--display-window", type=float, nargs=2, metavar=("LOW", "HIGH"), help="initial window")
    make.add_argument("--window-preset", action="append", metavar="NAME:LOW:HIGH",
                      help="a window preset of the page (repeat; replaces params.yaml's window_presets)")
    make.add_argument("--confidence", action=argparse.BooleanOptionalAction, default=None)
    make.add_argument("--direction", choices=("a_to_b", "b_to_a"))
    make.add_argument("--device", default="cpu", help="where the model runs (cpu, cuda)")
    score = commands.add_parser("score", help="score answers CSVs against key.json")
    score.add_argument("key", type=Path)
    score.add_argument("answers", type=Path, nargs="+")
    score.add_argument("--out", type=Path, help="scores.json (default: beside the key)")
    score.add_argument("--figure", type=Path, help="answer grid PNG (default: answers_grid.png beside the key)")
    score.add_argument("--run-json", type=Path, help="training run.json: log the scores into that MLflow run")
    score.add_argument("--tracking-uri", help="override run.json's tracking URI")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        return _make(args) if args.command == "make" else _score(args)
    except PipelineError as err:
        log.error("%s", err)
        return 1


if __name__ == "__main__":
    sys.exit(main())
