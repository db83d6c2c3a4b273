"""The engine's CUDA paths: bf16 autocast, channels-last, torch.compile with CUDA graphs, resume
on the GPU, GPU peak memory in run.json, and a hot loop that never waits on the GPU.

CI has no GPU, so every test here is skipped without CUDA (the reason shows with -ra). On a
GPU machine run them with `pytest -m gpu` (the first part of `make gpu-check`). They are
sized for a few minutes on one GPU, most of it torch.compile.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from pipeline import bench
from pipeline.engine.data import BatchSampler
from pipeline.engine.knobs import resolve_config
from pipeline.engine.step import prepare_model, train_step
from pipeline.train import train
from training_support import disagreement, write_random_slices

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (CI has none)")]

#: Narrow networks: the code paths of the full ones at a fraction of the compile and run time.
SMALL = {
    "resnet9_patchgan": {"ngf": 8, "ndf": 8, "n_res_blocks": 2, "pool_size": 4},
    "unet_resnet18": {"decoder_channels": [32, 16, 16, 8, 8], "perceptual_layers": ["relu1_2", "relu2_2"],
                      "perceptual_layer_weights": [1.0, 1.0], "g_steps_per_d_step": 2},
}
FAST = {"bf16": True, "channels_last": True, "deterministic": False}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_random_slices(tmp_path_factory.mktemp("slices"), 5, {"train": 16, "val": 4}, size=64)


def _train(data, out_dir, variant, train_knobs, store):
    pytest.importorskip("mlflow", reason="the engine logs every run to MLflow")
    cfg = {"model": {"variant": variant, "pretrained": "none", **SMALL[variant]},
           "train": {"batch_size": 4, "steps_per_epoch": 3, "lr_constant_epochs": 1, "lr_decay_epochs": 1,
                     "sample_every": 1, "checkpoint_every": 1, "device": "cuda", "progress_interval_s": 0,
                     **train_knobs}}
    return train({"a": data["train_a"], "b": data["train_b"]}, {"a": data["val_a"], "b": data["val_b"]}, out_dir, cfg, "gpu", store, None, 2)


def _disagreement(ours, theirs, variant):
    """The largest output disagreement of two runs' networks (GPU kernels and bf16 round
    differently from run to run; training_support.disagreement)."""
    images = torch.linspace(-1, 1, 4 * 64 * 64).view(4, 1, 64, 64)
    model_cfg = {"variant": variant, "pretrained": "none", **SMALL[variant]}
    return max(disagreement(ours, theirs, model_cfg, 2, images).values())


@pytest.mark.parametrize("variant", ["resnet9_patchgan", "unet_resnet18"])
def test_training_step_never_waits_on_the_gpu(variant):
    """After warm-up, a full update period (G and D phases, pool, losses summed on the device)
    issues no host synchronisation: torch's sync debug mode turns any into an error."""
    cfg = {"model": {"variant": variant, "pretrained": "none", **SMALL[variant]},
           "train": {"batch_size": 4, **FAST}}
    cls, model_cfg, train_cfg = resolve_config(cfg)
    torch.manual_seed(0)
    model = prepare_model(cls(model_cfg, None, 0).to("cuda"), train_cfg, torch.device("cuda"))
    generator = torch.Generator().manual_seed(0)
    data = {d: (torch.rand(16, 1, 64, 64, generator=generator) * 2 - 1).cuda() for d in cls.domains}
    sampler = BatchSampler(data, 4, None, 0.5, memory_format=torch.channels_last)
    period = max(model.phases.values())
    plan = sampler.plan_epoch(4 * period, generator)
    sums, counts = {}, {}
    model.train()
    for step in range(2 * period):
        train_step(model, sampler.batch(plan, step), step + 1, sums, counts)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for step in range(2 * period, 4 * period):
            train_step(model, sampler.batch(plan, step), step + 1, sums, counts)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert all(torch.isfinite(value).item() for value in sums.values())
    assert counts["D_a"] == 4 and counts["G_total"] == 4 * period


def test_compiled_run_with_cuda_graphs_matches_eager(data, tmp_path):
    """The classic variant through the whole engine with torch.compile mode reduce-overhead
    (CUDA graphs), bf16 and channels-last: finishes with sample grids and a checkpoint, uses CUDA
    graphs for every network (no skips), reports GPU memory, and its losses and weights stay
    close to the same run in eager mode."""
    from torch._dynamo.utils import counters

    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    counters.clear()
    compiled = _train(data, tmp_path / "compiled", "resnet9_patchgan",
                      {**FAST, "epochs": 2, "compile": True, "compile_mode": "reduce-overhead"}, store)
    skips = dict(counters["inductor"]).get("cudagraph_skips", 0)
    eager = _train(data, tmp_path / "eager", "resnet9_patchgan", {**FAST, "epochs": 2}, store)
    assert skips == 0, "some compiled graphs ran without CUDA graphs (see the inductor log)"
    for run in (compiled, eager):
        assert run["device"] == "cuda" and run["peak_gpu_allocated_mb"] > 0 and run["epochs"] == 2
    assert sorted(p.name for p in (tmp_path / "compiled" / "samples").iterdir()) == ["epoch_0001.png",
                                                                                     "epoch_0002.png"]
    ours = torch.load(tmp_path / "compiled" / "checkpoint.pt", weights_only=True)
    theirs = torch.load(tmp_path / "eager" / "checkpoint.pt", weights_only=True)
    for row_ours, row_theirs in zip(ours["history"], theirs["history"], strict=True):
        assert all(np.isfinite(v) for v in row_ours.values())
        assert row_ours == pytest.approx(row_theirs, rel=0.05, abs=0.02)
    assert _disagreement(ours, theirs, "resnet9_patchgan") < 0.25


@pytest.mark.parametrize("variant", ["resnet9_patchgan", "unet_resnet18"])
def test_resumed_gpu_run_continues_where_it_stopped(data, tmp_path, variant, caplog):
    """1 epoch, then the same command asked for 2: resumes (pool generator state on the GPU
    included) and ends close to an uninterrupted 2-epoch run. Not bit-identical on CUDA."""
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    whole = _train(data, tmp_path / "whole", variant, {**FAST, "epochs": 2}, store)
    _train(data, tmp_path / "parts", variant, {**FAST, "epochs": 1}, store)
    with caplog.at_level("WARNING"):
        parts = _train(data, tmp_path / "parts", variant, {**FAST, "epochs": 2}, store)
    assert parts["resumed_from_epoch"] == 1 and whole["resumed_from_epoch"] is None
    assert "restart from the seed" not in caplog.text
    ours = torch.load(tmp_path / "parts" / "checkpoint.pt", weights_only=True)
    theirs = torch.load(tmp_path / "whole" / "checkpoint.pt", weights_only=True)
    assert ours["model_state"]["rng_device"] == "cuda"
    assert [row["step"] for row in ours["history"]] == [row["step"] for row in theirs["history"]] == [3, 6]
    assert _disagreement(ours, theirs, variant) < 0.25


def test_bench_on_the_gpu_prints_finite_figures(tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert bench.main(["--device", "cuda", "--sizes", "64", "--batches", "2", "--steps", "2", "--warmup", "1",
                       "--no-compile", "--model-json", json.dumps({"ngf": 8, "ndf": 8}), "--json", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert {row["name"] for row in rows} == {"resnet9_patchgan", "unet_resnet18"}
    for row in rows:
        assert row["image_pairs_per_s"] > 0 and row["peak_memory_mb"] > 0 and row["achieved_tflops"] > 0
    assert "NVIDIA" in capsys.readouterr().out or torch.version.hip
