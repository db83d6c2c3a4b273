"""The training engine end to end on tiny random data: outputs, MLflow, determinism, resume."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch

from pipeline.errors import ConfigError, InputDataError
from pipeline.models import load_trained
from pipeline.engine.knobs import resolve_config
from pipeline.engine.step import lr_factor
from pipeline.train import main, train
from training_support import write_random_slices

UNET = {"model": {"decoder_channels": [8, 8, 8, 8, 8], "perceptual_layers": ["relu1_2"], "pretrained": "none",
                  "perceptual_layer_weights": [1.0], "g_steps_per_d_step": 2},
        "train": {"epochs": 2, "batch_size": 2, "steps_per_epoch": 2, "sample_every": 1, "checkpoint_every": 5, "n_samples": 2,
                  "threads": 1}}
CLASSIC = {"model": {"variant": "resnet9_patchgan", "ngf": 4, "ndf": 4, "n_res_blocks": 1, "pool_size": 3,
                     "g_steps_per_d_step": 2},
           "train": {"batch_size": 2, "steps_per_epoch": 3, "lr_constant_epochs": 1, "lr_decay_epochs": 3,
                     "sample_every": 10, "checkpoint_every": 1, "threads": 1}}


def with_train(cfg, **train_knobs):
    return {"model": cfg["model"], "train": {**cfg["train"], **train_knobs}}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Tiny unpaired domains (16 images of 32x32) in dataset-named folders, as the slices stage lays them out."""
    return write_random_slices(tmp_path_factory.mktemp("slices"), 7, {"train": 16, "val": 16})


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"


def run(data, out, cfg, store, seed=1, experiment="cyclegan_test"):
    return train({"a": data["train_a"], "b": data["train_b"]}, {"a": data["val_a"], "b": data["val_b"]}, out, cfg, experiment, store,
                 None, seed)


def weights(model_pt: Path) -> dict[str, torch.Tensor]:
    payload = torch.load(model_pt, weights_only=True)
    return {f"{net}.{k}": v for net, state in payload["networks"].items() for k, v in state.items()}


@pytest.fixture(scope="module")
def unet_run(data, store, tmp_path_factory):
    out = tmp_path_factory.mktemp("unet") / "model"
    return out, run(data, out, UNET, store)


def test_two_epochs_write_every_output(unet_run):
    out, info = unet_run
    assert {p.name for p in out.iterdir()} == {"model.pt", "checkpoint.pt", "history.csv", "run.json", "samples"}
    assert sorted(p.name for p in (out / "samples").iterdir()) == ["epoch_0001.png", "epoch_0002.png"]
    assert not list(out.glob(".*tmp*"))  # no temporary left behind
    with open(out / "history.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["epoch"] for r in rows] == ["1", "2"] and [r["step"] for r in rows] == ["2", "4"]
    assert list(rows[0])[:4] == ["epoch", "step", "G_ab_adv", "G_ba_adv"]
    assert {"cycle_ssim_a", "cycle_perceptual_b", "D_a", "D_b_accuracy"} <= set(rows[0])
    assert all(np.isfinite(float(v)) for row in rows for v in row.values())
    saved = json.loads((out / "run.json").read_text())
    assert saved == info
    assert saved["device"] == "cpu" and saved["bit_identical"] is True and saved["epochs"] == 2
    assert saved["pretrained"]["G_ab"] == "random (pretrained: none)"
    assert saved["domains"] == {"a": "ct_head", "b": "mri_t2"} and saved["image_size"] == [32, 32]
    assert saved["run_name"] == f"cyclegan_test-unet_resnet18-{saved['params_hash'][:8]}"
    assert saved["image_pairs_per_s"] > 0 and saved["peak_rss_mb"] > 0


def test_run_is_logged_to_mlflow(unet_run, store):
    _, info = unet_run
    client = mlflow.MlflowClient(store)
    logged = client.get_run(info["run_id"])
    assert logged.info.status == "FINISHED"
    assert client.get_experiment(logged.info.experiment_id).name == "cyclegan_test"
    params = logged.data.params
    assert params["model.variant"] == "unet_resnet18" and params["train.batch_size"] == "2"
    assert params["model.decoder_channels"] == "[8, 8, 8, 8, 8]" and params["seed"] == "1"
    tags = logged.data.tags
    assert tags["data_version"] == info["data_version"] and tags["params_hash"] == info["params_hash"]
    assert tags["device"] == "cpu" and tags["pretrained.G_ab"] == info["pretrained"]["G_ab"]
    assert "git_commit" in tags and tags["domain.a"] == "ct_head"
    history = client.get_metric_history(info["run_id"], "G_total")
    assert sorted(m.step for m in history) == [1, 2]
    assert [m.value for m in client.get_metric_history(info["run_id"], "lr_D")] == [1e-3, 1e-3]
    artifacts = {a.path for a in client.list_artifacts(info["run_id"])}
    assert {"history.csv", "run.json", "samples"} <= artifacts
    assert {a.path for a in client.list_artifacts(info["run_id"], "samples")} == {
        "samples/epoch_0001.png", "samples/epoch_0002.png"}


def test_same_seed_gives_identical_weights_and_another_seed_does_not(data, store, tmp_path):
    """(The U-Net variant's steps are checked for bit-identity in tests/models/test_cyclegan.py.)"""
    for name, seed in (("first", 1), ("again", 1), ("other", 2)):
        run(data, tmp_path / name, with_train(CLASSIC, epochs=2), store, seed=seed)
    first, again, other = (weights(tmp_path / name / "model.pt") for name in ("first", "again", "other"))
    assert first.keys() == again.keys()
    assert all(torch.equal(first[k], again[k]) for k in first)
    assert not all(torch.equal(first[k], other[k]) for k in first)


def test_resume_equals_uninterrupted_training(data, store, tmp_path):
    """Classic variant: image pool, LR decay and a 2:1 update ratio all cross the resume point."""
    interrupted, straight = tmp_path / "interrupted", tmp_path / "straight"
    first = run(data, interrupted, with_train(CLASSIC, epochs=2), store)
    resumed = run(data, interrupted, with_train(CLASSIC, epochs=4), store)
    reference = run(data, straight, with_train(CLASSIC, epochs=4), store)
    assert resumed["resumed_from_epoch"] == 2 and reference["resumed_from_epoch"] is None
    assert resumed["run_id"] == first["run_id"] != reference["run_id"]  # one MLflow run continued
    a = torch.load(interrupted / "checkpoint.pt", weights_only=True)
    b = torch.load(straight / "checkpoint.pt", weights_only=True)
    for net in a["networks"]:
        assert all(torch.equal(a["networks"][net][k], b["networks"][net][k]) for k in a["networks"][net])
    assert a["history"] == b["history"] and a["epoch"] == b["epoch"] == 4
    assert (interrupted / "history.csv").read_text() == (straight / "history.csv").read_text()
    client = mlflow.MlflowClient(store)
    assert sorted(m.step for m in client.get_metric_history(first["run_id"], "G_total")) == [1, 2, 3, 4]
    assert client.get_run(first["run_id"]).data.tags["param_update.train.epochs"] == "4"
    lrs = [m.value for m in sorted(client.get_metric_history(first["run_id"], "lr_G"), key=lambda m: m.step)]
    assert lrs == pytest.approx([2e-4, 2e-4 * 3 / 4, 2e-4 * 2 / 4, 2e-4 * 1 / 4])


def test_checkpoint_of_another_config_is_not_resumed(data, store, tmp_path):
    run(data, tmp_path / "out", with_train(CLASSIC, epochs=1), store)
    changed = {"model": {**CLASSIC["model"], "lr_g": 1e-4}, "train": {**CLASSIC["train"], "epochs": 2}}
    assert run(data, tmp_path / "out", changed, store)["resumed_from_epoch"] is None


def test_trained_model_translates(unet_run, data):
    out, _ = unet_run
    translator = load_trained(out / "model.pt")
    images = np.load(data["val_a"])["images"][:3]
    for direction in ("a_to_b", "b_to_a"):
        result = translator.translate(direction, images)
        assert result.shape == (3, 32, 32) and result.dtype == np.float32
        assert 0.0 <= result.min() and result.max() <= 1.0


def test_cli_trains_and_resizes(data, store, tmp_path):
    cfg = with_train(CLASSIC, epochs=1, image_size=24, steps_per_epoch=2)
    main(["--input", f"a={data['train_a']}", "--input", f"b={data['train_b']}", "--val-input", f"a={data['val_a']}",
          "--val-input", f"b={data['val_b']}", "--out", str(tmp_path / "cli"), "--experiment", "cli_test",
          "--config-json", json.dumps(cfg), "--tracking-uri", store, "--weights-dir", str(tmp_path),
          "--pretrained", "none", "--seed", "3"])
    info = json.loads((tmp_path / "cli" / "run.json").read_text())
    assert info["image_size"] == [24, 24] and info["seed"] == 3 and info["experiment"] == "cli_test"
    assert load_trained(tmp_path / "cli" / "model.pt").translate("a_to_b", np.zeros((1, 32, 32), np.float32)).shape \
        == (1, 32, 32)


def test_bad_inputs_name_the_file(data, store, tmp_path):
    no_images = tmp_path / "labels.npz"
    np.savez(no_images, labels=np.zeros(3))
    with pytest.raises(InputDataError, match="labels.npz.*no 'images'"):
        train({"a": no_images, "b": data["train_b"]}, {"a": data["val_a"], "b": data["val_b"]}, tmp_path / "x", CLASSIC, "e", store, None, 1)
    out_of_range = tmp_path / "hu.npz"
    np.savez(out_of_range, images=np.full((2, 32, 32), 40.0, np.float32))
    with pytest.raises(InputDataError, match="hu.npz.*within"):
        train({"a": data["train_a"], "b": out_of_range}, {"a": data["val_a"], "b": data["val_b"]}, tmp_path / "x", CLASSIC, "e", store, None, 1)
    odd = tmp_path / "odd" / "train.npz"
    odd.parent.mkdir()
    np.savez(odd, images=np.zeros((2, 40, 40), np.float32))
    with pytest.raises(InputDataError, match="multiples of 32"):
        train({"a": odd, "b": data["train_b"]}, {"a": data["val_a"], "b": data["val_b"]}, tmp_path / "x", UNET, "e", store, None, 1)
    assert not (tmp_path / "x").exists()


def test_config_errors_name_the_knob():
    with pytest.raises(ConfigError, match="train.epoch is not a known knob"):
        resolve_config({"train": {"epoch": 3}})
    with pytest.raises(ConfigError, match="sections"):
        resolve_config({"optim": {}})
    with pytest.raises(ConfigError, match="model.name"):
        resolve_config({"model": {"name": "stylegan9"}})
    cls, model_cfg, train_cfg = resolve_config({})
    assert cls.name == "cyclegan" and model_cfg["variant"] == "unet_resnet18" and train_cfg["epochs"] == 200


def test_lr_schedule_constant_then_linear():
    assert [lr_factor(e, constant=2, decay=3) for e in range(6)] == pytest.approx([1, 1, 0.75, 0.5, 0.25, 0])
    assert lr_factor(500, constant=2, decay=0) == 1.0
