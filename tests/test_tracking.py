"""MLflow tracking: params, hashes, versions, reopening a run, and concurrent writers on one SQLite file."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import mlflow
import numpy as np
import pytest

from pipeline.errors import InputDataError
from pipeline.tracking import (
    Tracker, _with_busy_timeout, data_version, flatten_params, git_state, log_evaluation, params_hash)

REPO = Path(__file__).resolve().parents[1]


def test_flatten_params_nests_with_dots_and_lists_as_json():
    flat = flatten_params({"model": {"lr_g": 1e-4, "layers": ["relu1_2", "relu2_2"], "opt": {"betas": (0.5, 0.9)}},
                           "seed": 3, "size": None})
    assert flat == {"model.lr_g": "0.0001", "model.layers": '["relu1_2", "relu2_2"]',
                    "model.opt.betas": "[0.5, 0.9]", "seed": "3", "size": "None"}


def test_params_hash_ignores_key_order_but_not_values():
    assert params_hash({"a": 1, "b": [1, 2]}) == params_hash({"b": [1, 2], "a": 1})
    assert params_hash({"a": 1}) != params_hash({"a": 2})


def test_data_version_follows_content_and_order_not_names(tmp_path):
    (tmp_path / "x.npz").write_bytes(b"one")
    (tmp_path / "y.npz").write_bytes(b"two")
    (tmp_path / "copy.npz").write_bytes(b"one")
    base = data_version([tmp_path / "x.npz", tmp_path / "y.npz"])
    assert data_version([tmp_path / "copy.npz", tmp_path / "y.npz"]) == base
    assert data_version([tmp_path / "y.npz", tmp_path / "x.npz"]) != base
    with pytest.raises(InputDataError, match="missing.npz"):
        data_version([tmp_path / "missing.npz"])


def test_git_state_outside_and_inside_a_repository(tmp_path):
    assert git_state(tmp_path) == ("unknown", None)
    if shutil.which("git") is None:
        pytest.skip("git not installed")
    env = ["-c", "user.name=t", "-c", "user.email=t@example.org"]
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    (tmp_path / "f.txt").write_text("1")
    subprocess.run(["git", *env, "add", "f.txt"], cwd=tmp_path, check=True)
    subprocess.run(["git", *env, "commit", "-q", "-m", "c"], cwd=tmp_path, check=True)
    commit, dirty = git_state(tmp_path)
    assert len(commit) == 40 and dirty is False
    (tmp_path / "f.txt").write_text("2")
    assert git_state(tmp_path) == (commit, True)


def test_busy_timeout_is_added_to_sqlite_uris_only():
    assert _with_busy_timeout("sqlite:///mlflow.db") == "sqlite:///mlflow.db?timeout=60"
    assert _with_busy_timeout("sqlite:///m.db?timeout=5") == "sqlite:///m.db?timeout=5"
    assert _with_busy_timeout("http://127.0.0.1:5000") == "http://127.0.0.1:5000"


def test_training_run_then_evaluation_in_the_same_run(store, tmp_path):
    tracker = Tracker.start(store, "tracking_test", "tracking_test-x-1234abcd")
    tracker.log_params({"model": {"lr_g": 1e-4}, "seed": 1})
    tracker.set_tags({"data_version": "abc"})
    tracker.log_metrics({"G_total": 2.5, "fid": None, "nan_loss": float("nan")}, step=1)
    figure = tmp_path / "grid.png"
    figure.write_bytes(b"png")
    tracker.log_artifact(figure, "samples")
    tracker.finish()
    run_json = tmp_path / "run.json"
    run_json.write_text(json.dumps({"run_id": tracker.run_id, "tracking_uri": store, "experiment": "tracking_test"}))
    report = tmp_path / "metrics.json"
    report.write_text("{}")

    assert log_evaluation(run_json, {"ssim_a_to_b": 0.8, "fid_a_to_b": None}, [report]) == tracker.run_id

    client = mlflow.MlflowClient(store)
    run = client.get_run(tracker.run_id)
    assert run.info.run_name == "tracking_test-x-1234abcd" and run.info.status == "FINISHED"
    assert run.data.params == {"model.lr_g": "0.0001", "seed": "1"}
    assert run.data.metrics == {"G_total": 2.5, "ssim_a_to_b": 0.8}  # None / NaN are left out
    assert run.data.tags["data_version"] == "abc"
    assert {a.path for a in client.list_artifacts(tracker.run_id, "samples")} == {"samples/grid.png"}
    assert {a.path for a in client.list_artifacts(tracker.run_id, "evaluation")} == {"evaluation/metrics.json"}
    assert len(client.search_runs([run.info.experiment_id])) == 1  # evaluation made no second run
    artifact_root = Path(store.removeprefix("sqlite:///")).parent / "mlartifacts" / "tracking_test"
    assert (artifact_root / tracker.run_id / "artifacts" / "samples" / "grid.png").read_bytes() == b"png"


def test_resumed_run_records_changed_params_as_tags(store):
    tracker = Tracker.start(store, "tracking_test", "resume")
    tracker.log_params({"train": {"epochs": 2, "batch_size": 4}})
    again = Tracker.start(store, "tracking_test", "resume", resume_run_id=tracker.run_id)
    assert again.run_id == tracker.run_id
    again.log_params({"train": {"epochs": 4, "batch_size": 4}})
    data = mlflow.MlflowClient(store).get_run(tracker.run_id).data
    assert data.params["train.epochs"] == "2" and data.tags["param_update.train.epochs"] == "4"
    assert "param_update.train.batch_size" not in data.tags
    assert Tracker.start(store, "tracking_test", "new", resume_run_id="0" * 32).run_id != tracker.run_id


def test_evaluation_of_an_unknown_run_names_run_json(store, tmp_path):
    run_json = tmp_path / "run.json"
    run_json.write_text(json.dumps({"run_id": "f" * 32, "tracking_uri": store, "experiment": "x"}))
    with pytest.raises(InputDataError, match="run.json.*not in the MLflow store"):
        log_evaluation(run_json, {"ssim": 0.5}, [])
    run_json.write_text("{}")
    with pytest.raises(InputDataError, match="run_id"):
        log_evaluation(run_json, {"ssim": 0.5}, [])


TINY_CLASSIC = {"model": {"variant": "resnet9_patchgan", "ngf": 4, "ndf": 4, "n_res_blocks": 1, "n_patch_layers": 2},
                "train": {"epochs": 1, "steps_per_epoch": 2, "batch_size": 2, "sample_every": 1, "checkpoint_every": 1,
                          "n_samples": 2, "threads": 1, "device": "cpu"}}


@pytest.mark.slow  # ~40 s: four trainings import torch and MLflow at once on two cores
def test_four_concurrent_trainings_share_one_new_sqlite_store(tmp_path):
    """Four `python -m pipeline.train` processes (as four Snakemake jobs would run them) create and
    write one fresh store at once: each run is complete, with no "database is locked" failure."""
    rng = np.random.default_rng(0)
    slices = {}
    for name in ("train_a", "train_b", "val_a", "val_b"):
        slices[name] = tmp_path / f"{name}.npz"
        np.savez(slices[name], images=rng.random((8, 16, 16), dtype=np.float32))
    store = f"sqlite:///{tmp_path / 'shared.db'}"
    lrs = ["0.0001", "0.0002", "0.0003", "0.0004"]
    procs = []
    for i, lr in enumerate(lrs):
        cfg = {"model": {**TINY_CLASSIC["model"], "lr_g": float(lr)}, "train": TINY_CLASSIC["train"]}
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "pipeline.train", "--experiment", "concurrent", "--tracking-uri", store,
             "--out", str(tmp_path / f"model{i}"), "--seed", str(i), "--pretrained", "none",
             "--config-json", json.dumps(cfg),
             *[arg for name, path in slices.items()
               for arg in ("--input" if name.startswith("train") else "--val-input", f"{name[-1]}={path}")]],
            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    outputs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0] * 4, "\n".join(o[-3000:] for o in outputs)
    assert not any("OperationalError" in o for o in outputs)

    client = mlflow.MlflowClient(store)
    runs = client.search_runs([client.get_experiment_by_name("concurrent").experiment_id])
    assert sorted(r.data.params["model.lr_g"] for r in runs) == lrs
    for i, lr in enumerate(lrs):
        run_json = json.loads((tmp_path / f"model{i}" / "run.json").read_text())
        run = client.get_run(run_json["run_id"])
        assert run.info.status == "FINISHED" and run.data.params["model.lr_g"] == lr
        assert run.info.run_name == run_json["run_name"] and run.info.run_name.startswith("concurrent-resnet9_patchgan-")
        assert {"git_commit", "data_version", "params_hash", "device"} <= set(run.data.tags)
        assert [m.step for m in client.get_metric_history(run.info.run_id, "G_total")] == [1]
        assert run.data.metrics["run_seconds"] > 0
