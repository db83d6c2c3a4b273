"""The one engine training generators (DCGAN, conditional DCGAN) from labelled slices: exact resume,
the history the generation evaluator reads, a cGAN that learns what its label asks for, and bad
input named clearly before anything is written."""
from __future__ import annotations

import csv
import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.errors import ConfigError, InputDataError
from pipeline.models import load_trained
from pipeline.train import main, train

TRAIN = {"batch_size": 8, "steps_per_epoch": 3, "sample_every": 2, "checkpoint_every": 1, "n_samples": 2,
         "lr_constant_epochs": 4, "lr_decay_epochs": 0, "threads": 1, "device": "cpu", "progress_interval_s": 0}
CGAN = {"name": "cgan", "ngf": 8, "ndf": 4, "nz": 8, "class_balanced": True, "instance_noise_std": 0.2,
        "instance_noise_epochs": 3}
WGAN = {"name": "dcgan", "ngf": 8, "ndf": 4, "nz": 8, "adversarial_loss": "wgan_gp", "n_critic": 2}
ACGAN = {"name": "cgan", "ngf": 8, "ndf": 4, "nz": 8, "d_condition": "auxiliary", "d_norm": "spectral"}


def write_labelled_slices(root: Path, size: int = 16, counts=(("train", 40), ("val", 8))) -> dict[str, Path]:
    """ct_haemorrhage/<split>.npz as the slices stage writes it: class 0 dark, class 1 bright
    (a quarter of the images), plus noise; returns {split: path}."""
    rng = np.random.default_rng(0)
    folder = root / "ct_haemorrhage"
    folder.mkdir(parents=True, exist_ok=True)
    files = {}
    for split, n in counts:
        labels = (np.arange(n) % 4 == 0).astype(np.int64)
        images = np.clip(np.where(labels[:, None, None] == 1, 0.85, 0.15)
                         + rng.normal(0, 0.05, (n, size, size)), 0, 1).astype(np.float32)
        files[split] = folder / f"{split}.npz"
        np.savez(files[split], images=images, labels=labels, subject_ids=np.array([f"p{i // 4}" for i in range(n)]))
    return files


@pytest.fixture(scope="module")
def slices(tmp_path_factory):
    return write_labelled_slices(tmp_path_factory.mktemp("slices"))


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"


def fit(slices, out, model, store, epochs, seed=5):
    cfg = {"model": model, "train": {**TRAIN, "epochs": epochs}}
    return train({"images": slices["train"]}, {"images": slices["val"]}, out, cfg, "generator_test", store, None, seed)


def exported(model_pt: Path) -> dict[str, torch.Tensor]:
    payload = torch.load(model_pt, weights_only=True)
    return {**{f"G.{k}": v for k, v in payload["networks"]["G"].items()}, "fixed_noise": payload["fixed_noise"]}


@pytest.mark.parametrize("model", [CGAN, WGAN, ACGAN],
                         ids=["cgan_balanced_noise", "dcgan_wgan_gp_n_critic", "cgan_auxiliary_spectral"])
def test_two_plus_two_epochs_equal_four_bit_for_bit(slices, store, tmp_path, model):
    """Fixed noise, the noise generator, class-balanced draws, the instance-noise schedule, the
    critic ratio and the optimisers all cross the resume: weights and history are identical."""
    resumed, straight = tmp_path / "resumed", tmp_path / "straight"
    fit(slices, resumed, model, store, epochs=2)
    first_grid = (resumed / "samples" / "epoch_0002.png").read_bytes()
    run = fit(slices, resumed, model, store, epochs=4)
    assert run["resumed_from_epoch"] == 2
    fit(slices, straight, model, store, epochs=4)
    ours, theirs = exported(resumed / "model.pt"), exported(straight / "model.pt")
    assert ours.keys() == theirs.keys()
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)
    assert (resumed / "history.csv").read_text() == (straight / "history.csv").read_text()
    if model.get("d_condition") == "auxiliary":  # D's class head: its loss and accuracy on real slices
        header = (resumed / "history.csv").read_text().splitlines()[0].split(",")
        assert {"D_class", "G_class", "D_class_accuracy"} <= set(header)
    assert first_grid == (straight / "samples" / "epoch_0002.png").read_bytes()  # the same fixed noise


def test_history_carries_d_on_real_and_fake_for_the_evaluator(slices, store, tmp_path):
    fit(slices, tmp_path / "m", CGAN, store, epochs=4)
    with open(tmp_path / "m" / "history.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3, 4]
    for row in rows:
        assert 0 <= float(row["d_real"]) <= 1 and 0 <= float(row["d_fake"]) <= 1  # BCE: probabilities
    # the instance-noise std of each epoch: 0.2 annealed to 0 over 3 epochs
    assert [float(r["instance_noise_std"]) for r in rows] == pytest.approx([0.2, 0.2 * 2 / 3, 0.2 / 3, 0.0])
    run = json.loads((tmp_path / "m" / "run.json").read_text())
    assert run["model"] == "cgan" and run["domains"] == {"images": "ct_haemorrhage"}
    assert run["images_per_s"] > 0 and "image_pairs_per_s" not in run  # one input: images, not pairs
    sampler = load_trained(tmp_path / "m" / "model.pt")
    assert (sampler.task, sampler.n_classes, sampler.image_size) == ("generation", 2, (16, 16))


def test_cgan_generates_the_class_it_is_asked_for(slices, store, tmp_path):
    """Two trivially separable classes (dark healthy, bright 'haemorrhage'): after brief training
    the images asked to be class 1 are brighter than those asked to be class 0, image by image
    for the same noise. A generator that ignored its label would give equal images."""
    model = {"name": "cgan", "ngf": 8, "ndf": 4, "nz": 8, "lr_g": 2e-3, "lr_d": 2e-3, "class_balanced": True}
    cfg = {"model": model, "train": {**TRAIN, "epochs": 10, "steps_per_epoch": 10, "sample_every": 10,
                                     "checkpoint_every": 10}}
    train({"images": slices["train"]}, {"images": slices["val"]}, tmp_path / "m", cfg, "cgan_learns", store, None, 1)
    sampler = load_trained(tmp_path / "m" / "model.pt")
    n = 64
    dark = sampler.sample(n, labels=np.zeros(n, np.int64), seed=11).mean(axis=(1, 2))
    bright = sampler.sample(n, labels=np.ones(n, np.int64), seed=11).mean(axis=(1, 2))
    # classify each generated image by the threshold halfway between the real classes' means
    assert (bright > 0.5).mean() >= 0.9 and (dark < 0.5).mean() >= 0.9, (dark, bright)


def test_cli_trains_a_generator_from_named_inputs(slices, store, tmp_path):
    cfg = {"model": {**WGAN, "adversarial_loss": "wgan_clip"}, "train": {**TRAIN, "epochs": 1}}
    status = main(["--input", f"images={slices['train']}", "--val-input", f"images={slices['val']}",
                   "--out", str(tmp_path / "cli"), "--experiment", "cli_generator", "--config-json", json.dumps(cfg),
                   "--tracking-uri", store, "--seed", "2"])
    assert status == 0
    assert load_trained(tmp_path / "cli" / "model.pt").n_classes == 0


def _cli(inputs, val_inputs, out, store, model=CGAN):
    cfg = {"model": model, "train": {**TRAIN, "epochs": 1}}
    return main([*[a for i in inputs for a in ("--input", i)], *[a for v in val_inputs for a in ("--val-input", v)],
                 "--out", str(out), "--experiment", "bad_input", "--config-json", json.dumps(cfg),
                 "--tracking-uri", store, "--seed", "1"])


def test_bad_input_is_named_and_nothing_is_written(slices, store, tmp_path, caplog):
    no_labels = tmp_path / "ct_nolabels" / "train.npz"
    no_labels.parent.mkdir()
    np.savez(no_labels, images=np.zeros((4, 16, 16), np.float32))
    unknown_class = tmp_path / "ct_threeclasses" / "train.npz"
    unknown_class.parent.mkdir()
    np.savez(unknown_class, images=np.zeros((4, 16, 16), np.float32), labels=np.array([0, 1, 2, 1]))
    float_labels = tmp_path / "ct_floatlabels" / "train.npz"
    float_labels.parent.mkdir()
    np.savez(float_labels, images=np.zeros((4, 16, 16), np.float32), labels=np.array([0.0, 1.0, 0.5, 1.0]))
    odd_size = tmp_path / "ct_odd" / "train.npz"
    odd_size.parent.mkdir()
    np.savez(odd_size, images=np.zeros((4, 24, 24), np.float32), labels=np.array([0, 1, 0, 1]))
    val = f"images={slices['val']}"
    cases = [
        ([f"images={no_labels}"], [val], f"{no_labels}: has no 'labels' array for input 'images'"),
        ([f"images={unknown_class}"], [val], f"{unknown_class}: 'labels' holds class 2, but model.class_names names 2"),
        ([f"images={float_labels}"], [val], f"{float_labels}: 'labels' must be 4 integer classes"),
        ([f"images={odd_size}"], [val], "power-of-two images of at least 16, got 24: set train.image_size"),
        ([f"a={slices['train']}"], [f"a={slices['val']}"], "cgan trains on the inputs ['images'], got ['a']"),
        ([str(slices["train"])], [val], "--input takes NAME=PATH"),
        ([f"images={slices['train']}", f"images={slices['val']}"], [val], "--input names input 'images' twice"),
    ]
    for index, (inputs, val_inputs, message) in enumerate(cases):
        out = tmp_path / f"out{index}"
        caplog.clear()
        with caplog.at_level(logging.ERROR, logger="pipeline.train"):
            assert _cli(inputs, val_inputs, out, store) == 1
        assert message in caplog.text, (message, caplog.text)
        assert not out.exists(), f"case {index} wrote {list(out.rglob('*'))}"


def test_labelled_input_errors_are_typed(slices, store, tmp_path):
    no_labels = tmp_path / "x" / "train.npz"
    no_labels.parent.mkdir()
    np.savez(no_labels, images=np.zeros((4, 16, 16), np.float32))
    with pytest.raises(InputDataError, match="no 'labels'"):
        fit({"train": no_labels, "val": slices["val"]}, tmp_path / "m", CGAN, store, epochs=1)
    with pytest.raises(ConfigError, match="trains on the inputs"):
        train({"a": slices["train"]}, {"a": slices["val"]}, tmp_path / "m", {"model": CGAN}, "e", store, None, 1)


def test_params_bind_generator_inputs_strictly():
    """The schema knows the generation experiments: a cgan-only knob on the DCGAN, an unknown
    loss, or an input bound to a dataset params.yaml does not define is named."""
    from pipeline.config import load_params, validate_params

    params = load_params(Path(__file__).resolve().parents[1] / "params.yaml")
    validate_params(params)
    assert {"dcgan", "cgan"} == {params["experiments"][e]["model"]["name"]
                                 for e in ("dcgan_ct_brain", "cgan_ct_haemorrhage")}
    params["experiments"]["dcgan_ct_brain"]["model"]["class_balanced"] = True
    params["experiments"]["cgan_ct_haemorrhage"]["model"]["adversarial_loss"] = "lsgan"
    params["experiments"]["cgan_ct_haemorrhage"]["inputs"]["images"] = "ct_bleeds"
    params["experiments"]["cyclegan_ct_mri"]["model"]["name"] = "dcgan"
    with pytest.raises(ConfigError) as err:
        validate_params(params)
    message = str(err.value)
    assert "experiments.dcgan_ct_brain.model.class_balanced: not a knob of this model" in message
    assert "experiments.cgan_ct_haemorrhage.model.adversarial_loss: 'lsgan' is not allowed" in message
    assert "experiments.cgan_ct_haemorrhage.inputs.images: unknown dataset 'ct_bleeds'" in message
    assert "experiments.cyclegan_ct_mri.model.name: 'cyclegan' was expected" in message
