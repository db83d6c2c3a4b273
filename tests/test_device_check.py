"""The device check (pipeline.device_check), in CI without a GPU: every experiment's full profile
(configs/full.yaml over params.yaml) at full size on a simulated GPU, where a tensor left on the
CPU raises as it would on CUDA; and the simulation itself raising where a real GPU does."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorDeviceMismatchError

from pipeline.config import load_params
from pipeline.device_check.checks import run_checks
from pipeline.device_check.simulate import (CUDA, GeneratorDeviceMismatchError, HostReadInStepError, host_reads,
                                            simulated_cuda, training_step)
from pipeline.device_check.steps import DeviceCheckError

ROOT = Path(__file__).resolve().parents[1]
FULL = load_params(ROOT / "params.yaml", config_files=[ROOT / "configs" / "full.yaml"])

#: Batch and image side of each full profile's training step, from the reports (docs/reports.md):
#: report 001 256 px at batch 1; report 000 256 px crops at batch 1; report 002 128 px at the DCGAN
#: tutorial's 128; report 003 512 px at batch 1; report 004 128 px at stylegan2-ada's 32.
EXPECTED_STEP = {"cyclegan_ct_mri": (1, 256), "cyclegan_cxr_pneumonia": (1, 256), "dcgan_ct_brain": (128, 128),
                 "cgan_ct_haemorrhage": (128, 128), "seg2ct_style": (1, 512), "stylegan_cxr_cardiomegaly": (32, 128)}
BF16 = {"cyclegan_ct_mri", "cyclegan_cxr_pneumonia"}  # the profiles that switch on bf16 autocast


def test_every_experiment_of_the_full_profile_is_checked():
    assert set(FULL["experiments"]) == set(EXPECTED_STEP)


@pytest.mark.parametrize("experiment", sorted(EXPECTED_STEP))
def test_full_profile_runs_on_a_simulated_gpu(experiment, tmp_path):
    records = run_checks(FULL, [experiment], "simulated", tmp_path)[experiment]
    trained = [r for r in records if r["what"].startswith("train ")]
    assert len(trained) == (2 if experiment.startswith("stylegan") else 1)  # G/D (+ the encoder)
    batch, side = EXPECTED_STEP[experiment]
    for record in trained:
        first_input = next(iter(record["batch"].values()))
        assert first_input == [batch, 1, side, side]
        dtypes = {dtype for outputs in record["outputs"].values() for dtype, _ in outputs}
        assert ("bfloat16" in dtypes) == (experiment in BF16)
    assert any(r["what"].startswith("model.pt on cuda") for r in records)
    if experiment.startswith("stylegan"):
        assert any("inversion" in r["what"] for r in records)
        assert {"r1", "pl", "augment_p"} <= set(trained[0]["losses"])  # lazy regularisers ran at full size


def test_the_check_finds_a_generator_pinned_to_the_cpu(tmp_path, monkeypatch):
    """Issue 26's fault put back: the encoder's frozen G sends its inputs to the device it was
    loaded on (the CPU) after the encoder moved its weights to the GPU."""
    from pipeline.models.stylegan2 import StyleGAN2Sampler

    monkeypatch.setattr(StyleGAN2Sampler, "device", property(lambda self: torch.device("cpu")))
    tiny = load_params(ROOT / "params.yaml", config_files=[ROOT / "configs" / "tiny.yaml"])
    with pytest.raises(DeviceCheckError, match="stylegan_cxr_cardiomegaly: training encoder") as err:
        run_checks(tiny, ["stylegan_cxr_cardiomegaly"], "simulated", tmp_path)
    assert isinstance(err.value.__cause__, FakeTensorDeviceMismatchError)


def test_simulated_gpu_raises_where_a_gpu_would():
    with simulated_cuda():
        on_gpu = torch.ones(3, device=CUDA)
        with pytest.raises(FakeTensorDeviceMismatchError):
            on_gpu + torch.ones(3)
        assert (on_gpu + torch.tensor(2.0)).device == CUDA  # a 0-dim CPU scalar is fine on CUDA too
        with pytest.raises(GeneratorDeviceMismatchError):
            torch.randn(3, generator=torch.Generator(), device=CUDA)
        assert torch.randn(3, generator=torch.Generator("cuda"), device=CUDA).device == CUDA
        with training_step(), pytest.raises(HostReadInStepError, match="inside a training step"):
            float(on_gpu.sum())
        assert float(on_gpu.sum()) == 0.0 and host_reads()["float()"] == 1  # outside a step: a stand-in, counted
        with pytest.raises(TypeError, match="cuda"):
            on_gpu.numpy()


def test_simulated_gpu_moves_modules_as_cuda_does_and_runs_bf16_autocast():
    """.to() keeps parameter identity (an optimiser built before the move steps the moved
    weights), backward gives each weight a gradient on the GPU, autocast runs in bfloat16."""
    with simulated_cuda():
        layer = torch.nn.Linear(4, 2)
        weight = layer.weight
        optimizer = torch.optim.Adam(layer.parameters())
        layer.to(CUDA)
        assert layer.weight is weight and weight.device == CUDA
        with torch.autocast("cuda", dtype=torch.bfloat16):
            out = layer(torch.ones(5, 4, device=CUDA))
        assert out.dtype == torch.bfloat16
        out.float().sum().backward()
        assert weight.grad.device == CUDA and weight.grad.shape == weight.shape
        optimizer.step()
        assert optimizer.state[weight]["exp_avg"].device == CUDA
