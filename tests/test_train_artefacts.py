"""What a run leaves behind, on its own: history.csv as the rows say, run names, throughput
named by what it counts, dead writes' temporaries cleared, and one run's files and MLflow record
written by ``RunArtefacts`` without the loop."""
from __future__ import annotations

import csv
import hashlib
import json
import math

import mlflow
import pytest
import torch

from pipeline.engine.artefacts import (RunArtefacts, RunIdentity, remove_stale_temporaries, throughput_unit,
                                       write_history)
from pipeline.engine.checkpoint import Progress
from pipeline.engine.knobs import resolve_config
from pipeline.models import load_trained


def read_csv(path):
    with open(path, newline="") as fh:
        return list(csv.reader(fh))


def test_history_has_a_row_per_epoch_with_ten_significant_digits(tmp_path):
    rows = [{"epoch": 1, "step": 3, "kimg": 0.012, "G": 1 / 3, "D": math.nan},
            {"epoch": 2, "step": 6, "kimg": 0.024, "G": 123456.789012345, "D": -2.5e-12}]
    write_history(tmp_path / "history.csv", rows, ("G", "D"))
    assert read_csv(tmp_path / "history.csv") == [
        ["epoch", "step", "G", "D"], ["1", "3", "0.3333333333", "nan"], ["2", "6", "123456.789", "-2.5e-12"]]
    write_history(tmp_path / "kimg.csv", rows, ("G", "D"), with_kimg=True)
    table = read_csv(tmp_path / "kimg.csv")
    assert table[0] == ["epoch", "step", "kimg", "G", "D"] and [r[2] for r in table[1:]] == ["0.012", "0.024"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["history.csv", "kimg.csv"]  # no temporary left


def test_throughput_is_named_by_what_one_batch_element_is():
    assert throughput_unit(("images",)) == "images"
    assert throughput_unit(("a", "b")) == "image_pairs"


def test_run_name_is_experiment_variant_or_model_and_the_knobs_hash():
    knobs = {"model": {"name": "cyclegan", "variant": "unet_resnet18"}, "train": {"epochs": 2}, "seed": 1}
    digest = hashlib.sha256(json.dumps(knobs, sort_keys=True).encode()).hexdigest()
    identity = RunIdentity("ct_mri", knobs, "data", {"a": "ct_head", "b": "mri_t2"})
    assert identity.params_hash == digest and identity.run_name == f"ct_mri-unet_resnet18-{digest[:8]}"
    dcgan = RunIdentity("brain", {**knobs, "model": {"name": "dcgan"}}, "data", {"images": "ct"})
    assert dcgan.run_name.startswith("brain-dcgan-")


def test_only_the_temporaries_of_killed_writes_are_removed(tmp_path):
    (tmp_path / "samples" / ".epoch_0002.x1.tmp.png").parent.mkdir()
    keep = [tmp_path / "checkpoint.pt", tmp_path / "samples" / "epoch_0001.png", tmp_path / ".notes"]
    stale = [tmp_path / ".checkpoint.a1b2.tmp.pt", tmp_path / "samples" / ".epoch_0002.x1.tmp.png"]
    for path in keep + stale:
        path.write_bytes(b"x")
    (tmp_path / ".model.tmpdir").mkdir()  # a folder is never removed
    remove_stale_temporaries(tmp_path)
    assert all(p.exists() for p in keep) and not any(p.exists() for p in stale)
    assert (tmp_path / ".model.tmpdir").is_dir()


@pytest.fixture()
def dcgan():
    cls, model_cfg, train_cfg = resolve_config({"model": {"name": "dcgan", "ngf": 8, "ndf": 4, "nz": 8},
                                                "train": {"batch_size": 4, "kimg": 0.5}})
    torch.manual_seed(0)
    model = cls(model_cfg, None, 0, image_size=(16, 16))
    return model, {"model": {"name": "dcgan", **model_cfg}, "train": train_cfg, "seed": 0}


def test_run_artefacts_write_the_files_and_the_mlflow_run(dcgan, tmp_path):
    model, knobs = dcgan
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    out = tmp_path / "model"
    (out / "samples").mkdir(parents=True)
    (out / "samples" / "epoch_0007.png").write_bytes(b"an earlier run's grid")
    identity = RunIdentity("brain", knobs, "data-v1", {"images": "ct_brain"})
    samples = {"images": torch.zeros(2, 1, 16, 16)}
    artefacts = RunArtefacts(out, identity, model, samples, torch.device("cpu"), world_size=1)
    artefacts.open(store, resume_run_id=None, fresh=True, is_main=True)
    assert not (out / "samples" / "epoch_0007.png").exists()
    artefacts.log_epoch({"G": 0.5, "D": 1.5}, {"lr_G": 2e-4}, seconds=2.0, per_s=8.0, step=12)
    artefacts.save_samples(1)
    progress = Progress(epoch=1, step=3, history=[{"epoch": 1, "step": 3, "kimg": 0.012,
                                                   **{name: 0.25 for name in model.loss_names}}])
    run = artefacts.finish(progress, seconds=3.0, per_s=6.0, image_size=(16, 16), resumed_from=None,
                           tracking_uri=store, metric_step=12)
    artefacts.tracker.finish("FINISHED")

    assert json.loads((out / "run.json").read_text()) == run
    assert run["images_per_s"] == 6.0 and "image_pairs_per_s" not in run
    assert (run["epochs"], run["steps"], run["kimg"], run["image_size"]) == (1, 3, 0.012, [16, 16])
    assert run["domains"] == {"images": "ct_brain"} and run["run_name"] == identity.run_name
    assert read_csv(out / "history.csv")[0][:3] == ["epoch", "step", "kimg"]  # kimg schedule
    assert (out / "samples" / "epoch_0001.png").read_bytes()[:4] == b"\x89PNG"
    assert load_trained(out / "model.pt").image_size == (16, 16)
    client = mlflow.MlflowClient(store)
    logged = client.get_run(run["run_id"])
    assert logged.info.status == "FINISHED" and logged.data.tags["domain.images"] == "ct_brain"
    assert logged.data.params["model.name"] == "dcgan" and logged.data.tags["data_version"] == "data-v1"
    assert [(m.step, m.value) for m in client.get_metric_history(run["run_id"], "images_per_s")] == [(12, 8.0)]
    assert [m.value for m in client.get_metric_history(run["run_id"], "run_images_per_s")] == [6.0]
    assert [(m.step, m.value) for m in client.get_metric_history(run["run_id"], "G")] == [(12, 0.5)]
    assert {a.path for a in client.list_artifacts(run["run_id"])} >= {"history.csv", "run.json", "samples"}


def test_a_resumed_run_keeps_its_grids_and_other_processes_write_nothing(dcgan, tmp_path):
    model, knobs = dcgan
    out = tmp_path / "model"
    (out / "samples").mkdir(parents=True)
    (out / "samples" / "epoch_0001.png").write_bytes(b"grid")
    identity = RunIdentity("brain", knobs, "data-v1", {"images": "ct_brain"})
    main = RunArtefacts(out, identity, model, {}, torch.device("cpu"), world_size=2)
    main.open(f"sqlite:///{tmp_path / 'mlflow.db'}", resume_run_id=None, fresh=False, is_main=True)
    assert (out / "samples" / "epoch_0001.png").exists()
    main.tracker.finish("FINISHED")
    other = RunArtefacts(tmp_path / "other", identity, model, {}, torch.device("cpu"), world_size=2)
    other.open(f"sqlite:///{tmp_path / 'other.db'}", resume_run_id=None, fresh=True, is_main=False)
    other.log_epoch({"G": 1.0}, {}, seconds=1.0, per_s=1.0, step=1)
    assert other.tracker.run_id is None and not (tmp_path / "other").exists() and not (tmp_path / "other.db").exists()
