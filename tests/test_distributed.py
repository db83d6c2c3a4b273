"""Data-parallel training: two CPU processes (gloo, torchrun) match one process on the global batch."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch

from pipeline.distributed import DataParallel
from pipeline.errors import ConfigError
from pipeline.train import train
from training_support import disagreement, write_random_slices

REPO = Path(__file__).resolve().parents[1]
# Instance norm only (the classic variant): each image's output is independent of its batch
# mates, so shares of the global batch give the global gradients. The image pool crosses
# processes (gathered, queried identically everywhere, shared out). BatchNorm networks need
# SyncBatchNorm for this, which has no CPU kernel: see pipeline/distributed.py.
CFG = {"model": {"variant": "resnet9_patchgan", "ngf": 4, "ndf": 4, "n_res_blocks": 1, "pool_size": 3,
                 "g_steps_per_d_step": 2},
       "train": {"epochs": 2, "batch_size": 4, "steps_per_epoch": 3, "lr_constant_epochs": 1, "lr_decay_epochs": 1,
                 "sample_every": 10, "checkpoint_every": 1, "threads": 1}}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_random_slices(tmp_path_factory.mktemp("slices"), 11, {"train": 10, "val": 10})


def test_two_gloo_processes_match_one_process_on_the_global_batch(data, tmp_path):
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    single = tmp_path / "single"
    train({"a": data["train_a"], "b": data["train_b"]}, {"a": data["val_a"], "b": data["val_b"]}, single, CFG, "ddp_single", store, None, 4)

    parallel = tmp_path / "parallel"
    cfg = {"model": CFG["model"], "train": {**CFG["train"], "distributed": True, "gpus": 2}}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "-m", "pipeline.train", "--input", f"a={data['train_a']}", "--input", f"b={data['train_b']}",
               "--val-input", f"a={data['val_a']}", "--val-input", f"b={data['val_b']}", "--out", str(parallel),
               "--experiment", "ddp_two", "--config-json", json.dumps(cfg), "--tracking-uri", store,
               "--pretrained", "none", "--seed", "4"]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "MEDGAN_PROGRESS": "off"}
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]

    ours = torch.load(parallel / "checkpoint.pt", weights_only=True)
    theirs = torch.load(single / "checkpoint.pt", weights_only=True)
    # Same arithmetic, but per-process partial sums: float rounding only, which Adam and the GAN
    # amplify (see training_support.disagreement). Measured on an Intel Xeon (2 epochs): 0.001-0.03
    # of the movement here; skipping the gradient all-reduce gives 0.13-0.47, the pools 0.12
    # and the losses 0.19 instead of 0.005 and 0.0003.
    images = torch.from_numpy(np.load(data["val_a"])["images"][:4, None]) * 2 - 1
    for name, ratio in disagreement(ours, theirs, CFG["model"], 4, images).items():
        assert ratio < 0.08, (name, ratio)
    for domain in ("a", "b"):  # the history pools hold the same fakes in the same slots
        pool_ours = ours["model_state"]["pools"][domain]["images"]
        pool_theirs = theirs["model_state"]["pools"][domain]["images"]
        assert ((pool_ours - pool_theirs).norm() / pool_theirs.norm()).item() < 0.04, domain
    for row_ours, row_theirs in zip(ours["history"], theirs["history"], strict=True):
        assert row_ours == pytest.approx(row_theirs, rel=0.02, abs=1e-3)

    run = json.loads((parallel / "run.json").read_text())
    assert run["world_size"] == 2 and run["bit_identical"] is False
    client = mlflow.MlflowClient(store)
    runs = client.search_runs([client.get_experiment_by_name("ddp_two").experiment_id])
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"  # only process 0 logs
    assert runs[0].data.tags["world_size"] == "2"


def test_global_batch_must_split_evenly():
    group = DataParallel(rank=1, world_size=2, local_rank=1, backend="gloo")
    assert group.share_of(6) == slice(3, 6)
    with pytest.raises(ConfigError, match="batch_size 5 must be a multiple of the 2"):
        group.share_of(5)


def test_distributed_without_torchrun_says_how_to_start(data, tmp_path, monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    cfg = {"model": CFG["model"], "train": {**CFG["train"], "distributed": True}}
    with pytest.raises(ConfigError, match="torchrun --nproc_per_node"):
        train({"a": data["train_a"], "b": data["train_b"]}, {"a": data["val_a"], "b": data["val_b"]}, tmp_path / "m", cfg, "e",
              f"sqlite:///{tmp_path / 'db'}", None, 1)
