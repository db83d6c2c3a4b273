"""The shared evaluator CLI helper (pipeline.evaluate.cli): device, model of the task, figures
before metrics.json, nothing written after an error, MLflow logging of what was written."""
from __future__ import annotations

import argparse
import hashlib
import json
import logging
import sys
import types
from pathlib import Path

import pytest

from pipeline.errors import InputDataError
from pipeline.evaluate import cli


class StandInModel:
    task = "translation"


@pytest.fixture
def calls(monkeypatch, tmp_path):
    """Stand-ins for what the helper hands work to (model loader, schema, writer, MLflow), each
    recording its call in order; the helper's own logic is what is under test."""
    record: list[tuple] = []
    monkeypatch.setitem(sys.modules, "pipeline.models",
                        types.SimpleNamespace(load_trained=lambda path, device="cpu": StandInModel()))
    monkeypatch.setitem(sys.modules, "pipeline.tracking", types.SimpleNamespace(
        log_evaluation=lambda run, metrics, artifacts, tracking_uri=None: record.append(
            ("mlflow", run, dict(metrics), list(artifacts), tracking_uri)) or "run-1"))
    monkeypatch.setattr(cli, "validate_metrics", lambda metrics: record.append(("validate",)))
    monkeypatch.setattr(cli, "write_metrics", lambda out, metrics: (record.append(("write", out)),
                                                                     out.write_text(json.dumps(metrics))))
    monkeypatch.setattr(cli, "flatten_metrics", lambda metrics: {"ssim": metrics["ssim"]})
    model = tmp_path / "model.pt"
    model.write_bytes(b"a stand-in model file")
    return record


def arguments(tmp_path: Path, **extra) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    cli.add_common_arguments(parser, "model.pt")
    return parser.parse_args(["--model", str(tmp_path / "model.pt"), "--out", str(tmp_path / "metrics.json"),
                              "--device", "cpu", *[str(a) for pair in extra.items() for a in pair]])


def test_figures_come_before_metrics_json_and_mlflow_gets_what_was_written(calls, tmp_path):
    args = arguments(tmp_path, **{"--run-json": tmp_path / "run.json", "--n-boot": 7, "--seed": 3})
    seen = {}

    def evaluate(model, device):
        seen.update(model=model, device=device, policy=cli.interval_policy(args))
        return {"ssim": 0.5}

    def draw_figures(metrics):
        return cli.draw([(tmp_path / "a.png", lambda out: calls.append(("figure", out))),
                         (None, lambda out: calls.append(("never drawn", out))),
                         (tmp_path / "b.png", lambda out: calls.append(("figure", out)))])

    reported = []
    code = cli.run_evaluation(args, "translation", "a translator", evaluate, draw_figures,
                              outputs=[tmp_path / "samples.npz", None], report=reported.append)
    assert code == 0
    assert isinstance(seen["model"], StandInModel) and seen["device"] == "cpu"
    assert (seen["policy"].n_boot, seen["policy"].seed, seen["policy"].min_subjects) == (7, 3, 8)
    assert [c[0] for c in calls] == ["validate", "figure", "figure", "write", "mlflow"]
    written = json.loads((tmp_path / "metrics.json").read_text())
    assert written["model"] == {"path": str(tmp_path / "model.pt"),
                                "sha256": hashlib.sha256(b"a stand-in model file").hexdigest()}
    assert reported == [written]
    _, run, numbers, artifacts, uri = calls[-1]
    assert run == tmp_path / "run.json" and numbers == {"ssim": 0.5} and uri is None
    assert artifacts == [tmp_path / "metrics.json", tmp_path / "samples.npz", tmp_path / "a.png", tmp_path / "b.png"]


def test_an_error_is_logged_and_nothing_is_written(calls, tmp_path, caplog):
    args = arguments(tmp_path, **{"--run-json": tmp_path / "run.json"})

    def evaluate(model, device):
        raise InputDataError(tmp_path / "test.npz", "missing array 'images'")

    with caplog.at_level(logging.ERROR):
        code = cli.run_evaluation(args, "translation", "a translator", evaluate,
                                  lambda metrics: calls.append(("figure",)) or [])
    assert code == 1
    assert f"{tmp_path / 'test.npz'}: missing array 'images'" in caplog.text
    assert calls == [] and not (tmp_path / "metrics.json").exists()


def test_a_model_of_another_task_is_refused_before_evaluating(calls, tmp_path, caplog):
    with caplog.at_level(logging.ERROR):
        code = cli.run_evaluation(arguments(tmp_path), "generation", "a generator",
                                  lambda model, device: pytest.fail("evaluated a model of another task"))
    assert code == 1 and "is a translation model, not a generator" in caplog.text


def test_a_figure_flag_without_its_input_is_a_usage_error(capsys):
    parser = argparse.ArgumentParser()
    parser.add_argument("--samples-out")
    parser.add_argument("--triplets")
    args = parser.parse_args(["--triplets", "t.png"])
    with pytest.raises(SystemExit) as exit_info:
        cli.require_with(parser, args, ("triplets",), "samples_out")
    assert exit_info.value.code == 2 and "--triplets needs --samples-out" in capsys.readouterr().err
    cli.require_with(parser, parser.parse_args(["--samples-out", "s.npz", "--triplets", "t.png"]), ("triplets",),
                     "samples_out")


def test_auto_device_is_cuda_only_when_present():
    import torch

    assert cli.resolve_device("auto") == ("cuda" if torch.cuda.is_available() else "cpu")
    assert cli.resolve_device("cpu") == "cpu"


def test_log_to_run_logs_nothing_without_a_run(calls):
    assert cli.log_to_run(None, {"ssim": 1.0}, [Path("x")]) is None and calls == []
