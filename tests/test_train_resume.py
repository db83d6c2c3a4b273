"""Training survives interruptions: SIGTERM checkpoints mid-epoch, kill -9 during a checkpoint
write, a full disk and CUDA running out of memory; resumed runs end bit-identical (CPU)."""
from __future__ import annotations

import errno
import logging
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import mlflow
import pytest
import torch

import pipeline.engine.checkpoint
import pipeline.train
from pipeline.errors import ConfigError, PipelineError
from pipeline.models.cyclegan import CycleGAN
from pipeline.train import EXIT_INTERRUPTED, main, train
from training_support import write_random_slices

REPO = Path(__file__).resolve().parents[1]
#: Classic variant: image pool, LR decay and a 2:1 update ratio all cross every interruption.
CFG = {"model": {"variant": "resnet9_patchgan", "ngf": 4, "ndf": 4, "n_res_blocks": 1, "pool_size": 3,
                 "g_steps_per_d_step": 2},
       "train": {"epochs": 3, "batch_size": 2, "steps_per_epoch": 3, "lr_constant_epochs": 1, "lr_decay_epochs": 2,
                 "sample_every": 10, "checkpoint_every": 1, "threads": 1, "progress_interval_s": 0}}

# Run in a child process: training with a hook that delivers a real signal at a chosen moment.
CHILD = textwrap.dedent("""
    import builtins, json, os, signal, sys
    import pipeline.engine.checkpoint as checkpoint
    import pipeline.train as engine
    from pipeline.models.cyclegan import CycleGAN

    hook = json.loads(os.environ["TEST_HOOK"])
    if hook["kind"] == "sigterm_at_g_step":
        real_phase, done = CycleGAN.train_phase, []
        def phase(self, name, batch):
            out = real_phase(self, name, batch)
            if name == "G":
                done.append(1)
                if len(done) == hook["at"]:
                    os.kill(os.getpid(), signal.SIGTERM)
            return out
        CycleGAN.train_phase = phase
    elif hook["kind"] == "kill9_in_checkpoint_write":
        writes = []
        class DyingFile:
            def __init__(self, fh):
                self.fh = fh
            def __enter__(self):
                return self
            def __exit__(self, *exc):
                self.fh.close()
            def write(self, data):
                data = memoryview(data)
                self.fh.write(data[: len(data) // 2])
                self.fh.flush()
                os.fsync(self.fh.fileno())
                os.kill(os.getpid(), signal.SIGKILL)
        def dying_open(path, mode="r", *args, **kwargs):
            fh = builtins.open(path, mode, *args, **kwargs)
            if "w" in mode and ".checkpoint." in str(path):
                writes.append(path)
                if len(writes) == hook["at"]:
                    return DyingFile(fh)
            return fh
        checkpoint.open = dying_open
    sys.exit(engine.main(sys.argv[1:]))
""")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_random_slices(tmp_path_factory.mktemp("slices"), 3, {"train": 8, "val": 8})


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"


def cli_args(data, out, store, cfg=CFG, experiment="resume_test"):
    import json
    return ["--input", f"a={data['train_a']}", "--input", f"b={data['train_b']}", "--val-input", f"a={data['val_a']}",
            "--val-input", f"b={data['val_b']}", "--out", str(out), "--experiment", experiment,
            "--config-json", json.dumps(cfg), "--tracking-uri", store, "--pretrained", "none", "--seed", "5"]


def run_child(args, hook):
    env = {**os.environ, "TEST_HOOK": __import__("json").dumps(hook), "MEDGAN_PROGRESS": "lines",
           "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-c", CHILD, *args], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=300)


def networks(checkpoint: Path) -> dict[str, torch.Tensor]:
    state = torch.load(checkpoint, weights_only=True)
    return {f"{net}.{k}": v for net, params in state["networks"].items() for k, v in params.items()}


def assert_same_training(out: Path, reference: Path) -> None:
    ours, theirs = networks(out / "checkpoint.pt"), networks(reference / "checkpoint.pt")
    assert ours.keys() == theirs.keys()
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)
    assert (out / "history.csv").read_text() == (reference / "history.csv").read_text()


@pytest.fixture(scope="module")
def uninterrupted(data, store, tmp_path_factory):
    out = tmp_path_factory.mktemp("straight") / "model"
    train({"a": data["train_a"], "b": data["train_b"]}, {"a": data["val_a"], "b": data["val_b"]}, out, CFG, "resume_reference", store,
          None, 5)
    return out


def test_sigterm_checkpoints_mid_epoch_and_resume_is_exact(data, store, uninterrupted, tmp_path, caplog):
    out = tmp_path / "model"
    cfg = {"model": CFG["model"], "train": {**CFG["train"], "checkpoint_every": 5}}  # only the SIGTERM checkpoint
    child = run_child(cli_args(data, out, store, cfg), {"kind": "sigterm_at_g_step", "at": 5})
    assert child.returncode == EXIT_INTERRUPTED, child.stderr[-2000:]
    assert "stopped by SIGTERM at epoch 2, step 2 of 3" in child.stderr and "rerun" in child.stderr
    assert "train resume_test: 5/9 step" in child.stderr and "ETA" in child.stderr  # progress lines
    state = torch.load(out / "checkpoint.pt", weights_only=True)
    assert state["epoch"] == 1 and state["step"] == 5 and state["partial_epoch"]["step_in_epoch"] == 2
    assert not (out / "model.pt").exists()
    client = mlflow.MlflowClient(store)
    assert client.get_run(state["run_id"]).info.status == "KILLED"

    with caplog.at_level(logging.INFO):
        assert main(cli_args(data, out, store, cfg)) == 0
    assert "resuming from" in caplog.text
    assert_same_training(out, uninterrupted)
    run = client.get_run(state["run_id"])
    assert run.info.status == "FINISHED"
    assert len(client.search_runs([run.info.experiment_id])) == 1  # one MLflow run, continued
    assert sorted(m.step for m in client.get_metric_history(state["run_id"], "G_total")) == [1, 2, 3]


def test_kill9_during_checkpoint_write_keeps_previous_and_rerun_is_exact(data, store, uninterrupted, tmp_path):
    out = tmp_path / "model"
    child = run_child(cli_args(data, out, store), {"kind": "kill9_in_checkpoint_write", "at": 2})
    assert child.returncode == -signal.SIGKILL
    half_written = list(out.glob(".checkpoint.*.tmp*"))
    assert len(half_written) == 1 and half_written[0].stat().st_size > 0  # killed inside the write
    assert torch.load(out / "checkpoint.pt", weights_only=True)["epoch"] == 1  # the previous one, intact
    assert not (out / "model.pt").exists()

    assert main(cli_args(data, out, store)) == 0
    assert not list(out.glob(".*.tmp*"))  # the dead write's temporary is cleared
    assert_same_training(out, uninterrupted)
    run_id = torch.load(out / "checkpoint.pt", weights_only=True)["run_id"]
    client = mlflow.MlflowClient(store)
    assert client.get_run(run_id).info.status == "FINISHED"
    assert {m.step for m in client.get_metric_history(run_id, "G_total")} == {1, 2, 3}


def test_rerun_after_outputs_removed_restores_them_from_the_final_checkpoint(data, store, uninterrupted, tmp_path):
    """DVC deletes a stage's outputs before rerunning it; the checkpoint (not a DVC output) is
    already at the last epoch, so nothing is retrained but every output comes back."""
    out = tmp_path / "model"
    out.mkdir()
    (out / "checkpoint.pt").write_bytes((uninterrupted / "checkpoint.pt").read_bytes())
    assert main(cli_args(data, out, store, experiment="resume_reference")) == 0
    assert sorted(p.name for p in (out / "samples").iterdir()) == ["epoch_0003.png"]
    assert (out / "history.csv").read_text() == (uninterrupted / "history.csv").read_text()
    assert (out / "model.pt").is_file() and (out / "run.json").is_file()


class FullDiskFile:
    """A file on a disk that fills up after some bytes."""

    def __init__(self, fh):
        self.fh = fh

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.fh.close()

    def write(self, data):
        self.fh.write(memoryview(data)[:100])
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_full_disk_while_checkpointing_fails_clearly_and_keeps_previous(data, store, tmp_path, monkeypatch, caplog):
    import builtins
    out = tmp_path / "model"
    writes = []

    def filling_open(path, mode="r", *args, **kwargs):
        fh = builtins.open(path, mode, *args, **kwargs)
        if "w" in mode and ".checkpoint." in str(path):
            writes.append(path)
            if len(writes) == 2:
                return FullDiskFile(fh)
        return fh

    monkeypatch.setattr(pipeline.engine.checkpoint, "open", filling_open, raising=False)
    with caplog.at_level(logging.ERROR):
        assert main(cli_args(data, out, store, experiment="full_disk")) == 1
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert errors == [f"{out / 'checkpoint.pt'}: cannot write the checkpoint of epoch 2 (the disk is full); "
                      "the previous checkpoint is untouched: free space and rerun to resume"]
    assert torch.load(out / "checkpoint.pt", weights_only=True)["epoch"] == 1
    assert not list(out.glob(".*.tmp*")) and not (out / "model.pt").exists()
    client = mlflow.MlflowClient(store)
    (run,) = client.search_runs([client.get_experiment_by_name("full_disk").experiment_id])
    assert run.info.status == "FAILED"


@pytest.mark.parametrize("batch_size, advice", [(4, "try train.batch_size: 2"), (1, "cannot shrink further")])
def test_cuda_out_of_memory_says_which_batch_size_to_try(data, store, tmp_path, monkeypatch, batch_size, advice):
    def out_of_memory(self, phase, batch):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(CycleGAN, "train_phase", out_of_memory)
    cfg = {"model": CFG["model"], "train": {**CFG["train"], "batch_size": batch_size}}
    with pytest.raises(ConfigError, match=f"CUDA out of memory at train.batch_size {batch_size} .*{advice}"):
        train({"a": data["train_a"], "b": data["train_b"]}, {"a": data["val_a"], "b": data["val_b"]}, tmp_path / "m", cfg, "oom", store,
              None, 5)
    assert not (tmp_path / "m" / "checkpoint.pt").exists()


def test_pipeline_errors_are_one_line_with_status_1(data, store, tmp_path, caplog):
    cfg = {"model": CFG["model"], "train": {**CFG["train"], "crop_size": 40}}
    with caplog.at_level(logging.ERROR):
        assert main(cli_args(data, tmp_path / "m", store, cfg)) == 1
    assert [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR] == [
        "train.crop_size 40 is larger than the 32x32 images"]
    assert issubclass(pipeline.train.TrainingInterrupted, PipelineError)
