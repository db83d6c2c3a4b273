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
        assert float(on_gpu.sum()) == 1.0 and host_reads()["float()"] == 1  # outside a step: a stand-in, counted
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


def test_grouped_convolution_backward_counts_each_multiply_once():
    """StyleGAN2's modulated convolutions are grouped (one group per image): the FLOPs of a grouped
    convolution's forward and backward equal those of its groups run as separate convolutions
    (torch's own formula counts the weight gradient once per group too many)."""
    from torch.utils.flop_counter import FlopCounterMode

    from pipeline.device_check.cost import fake_cpu, flop_counter

    groups, c_in, c_out = 4, 8, 16
    with fake_cpu():
        x = torch.randn(1, groups * c_in, 32, 32, requires_grad=True)
        weight = torch.randn(groups * c_out, c_in, 3, 3, requires_grad=True)
        with flop_counter() as grouped:
            torch.nn.functional.conv2d(x, weight, padding=1, groups=groups).sum().backward()
        with FlopCounterMode(display=False) as separate:  # groups of 1: torch's formula is right
            for g in range(groups):
                part = x[:, g * c_in:(g + 1) * c_in].detach().requires_grad_(True)
                kernel = weight[g * c_out:(g + 1) * c_out].detach().requires_grad_(True)
                torch.nn.functional.conv2d(part, kernel, padding=1).sum().backward()
    assert grouped.get_total_flops() == separate.get_total_flops() == 3 * groups * c_out * c_in * 9 * 32 * 32 * 2


def test_peak_memory_counts_live_storage_once():
    from pipeline.device_check.cost import PeakMemory, fake_cpu

    mib = 2 ** 20
    with fake_cpu():
        tracker = PeakMemory()
        with tracker:
            a = torch.zeros(256, 1024)          # 1 MiB
            view = a[:128]                      # a view: no new storage
            b = torch.zeros(512, 1024)          # 2 MiB
            del a, view
            c = torch.zeros(256, 1024)          # 1 MiB, after a was freed
    assert tracker.peak == 3 * mib and tracker.current == 3 * mib
    del b, c


def test_full_profile_step_counts():
    """Steps each full profile runs, from the reports' schedules: 3000 kimg at batch 32, 200 epochs
    x 4,000 iterations, 100 epochs of report 003's 20 images at batch 1."""
    from pipeline.device_check.profiles import experiments
    from pipeline.device_check.projection import training_steps

    runs = {(e.name, r.role): r for e in experiments(FULL) for r in e.networks}
    assert training_steps(FULL, runs["stylegan_cxr_cardiomegaly", "model"])[0] == 3000 * 1000 // 32
    assert training_steps(FULL, runs["stylegan_cxr_cardiomegaly", "encoder"])[0] == 50 * 500
    assert training_steps(FULL, runs["cyclegan_cxr_pneumonia", "model"])[0] == 200 * 4000
    assert training_steps(FULL, runs["seg2ct_style", "model"])[0] == 100 * 20


def test_device_overlay_puts_every_device_knob_on_the_cpu():
    from pipeline.config import deep_merge, validate_params
    from pipeline.device_check.report import device_overlay

    merged = deep_merge(FULL, device_overlay(FULL, "cpu"))
    validate_params(merged)
    found = []

    def walk(node, path):
        for key, value in node.items():
            if key == "device":
                found.append((path, value))
            elif isinstance(value, dict):
                walk(value, f"{path}.{key}")

    walk(merged["experiments"], "experiments")
    assert len(found) >= 2 * len(EXPECTED_STEP) + 3  # train + evaluate each; the encoder, inversion, edits
    assert {value for _, value in found} == {"cpu"}
    assert not merged["experiments"]["cyclegan_ct_mri"]["train"]["compile"]
    # one-thread jobs of the default profile get every core on the CPU (map -> CT sets 1 in params.yaml)
    assert FULL["experiments"]["seg2ct_style"]["train"]["threads"] == 1
    assert merged["experiments"]["seg2ct_style"]["train"]["threads"] == 0


def test_smoke_summary_reads_time_reports_and_benchmarks(tmp_path):
    """A run timed by /usr/bin/time -v as the script times it: wall (a 1.5 s sleep), CPU and the peak
    RSS of a process that holds ~200 MB; a job's benchmark file is summed under its rule."""
    import json
    import shutil
    import subprocess
    import sys

    from pipeline.device_check.report import smoke_summary

    if shutil.which("/usr/bin/time") is None:
        pytest.skip("GNU time is not installed")
    (tmp_path / "runs").mkdir()
    repo = tmp_path / "repo"
    shutil.copy(ROOT / "params.yaml", repo.mkdir() or repo / "params.yaml")
    subprocess.run(["/usr/bin/time", "-v", "-o", str(tmp_path / "runs" / "dcgan_ct_brain.time"), sys.executable,
                    "-c", "import time; x = bytearray(200 * 2**20); x[::4096] = b'1' * len(x[::4096]); time.sleep(1.5)"],
                   check=True)
    (tmp_path / "runs" / "dcgan_ct_brain.json").write_text(json.dumps(
        {"experiment": "dcgan_ct_brain", "configs": [], "load_before": "1.0 1.0 1.0", "exit": 0}))
    (repo / "benchmarks" / "train").mkdir(parents=True)
    (repo / "benchmarks" / "train" / "dcgan_ct_brain.tsv").write_text(
        "s\th:m:s\tmax_rss\tmax_vms\tmax_uss\tmax_pss\tio_in\tio_out\tmean_load\tcpu_time\n"
        "12.5\t0:00:12\t900.0\t1000\t800\t850\t0\t1\t1.0\t11.0\n")
    entry = smoke_summary(tmp_path)["dcgan_ct_brain"]
    assert 200 <= entry["peak_rss_mb"] < 400 and entry["exit_status"] == 0
    assert 1.5 <= entry["wall_s"] < 60  # the process sleeps 1.5 s: the wall line's own colons must not hide it
    assert entry["rules"]["train"] == {"jobs": 1, "cpu_s": 11.0, "wall_s": 12.5, "max_rss_mb": 900.0}
    assert "ct_haemorrhage" in entry["datasets"]


def test_classic_cyclegan_step_costs_what_the_reference_step_costs():
    """REFERENCE.md: the reference-style CycleGAN step (ResNet-9 G, 70x70 PatchGAN, 256 px, one
    image pair) costs ~1.86 TFLOP; the engine's classic step, as report 000's full profile runs it,
    must count the same (the projection's FLOPs rest on this count)."""
    from pipeline.device_check.cost import training_step_cost
    from pipeline.device_check.profiles import experiments

    run = experiments(FULL, ["cyclegan_cxr_pneumonia"])[0].networks[0]
    cost = training_step_cost(run)
    assert cost["flops_per_step"] / 1e12 == pytest.approx(1.86, rel=0.02)
    assert 0 < cost["memory"]["weights"] < cost["memory"]["peak"] < 80e9


def test_cli_checks_a_profile_and_prints_its_projection(tmp_path, capsys):
    import json

    from pipeline.device_check.__main__ import main

    tiny = [str(ROOT / "configs" / "tiny.yaml")]
    params = str(ROOT / "params.yaml")
    assert main(["check", "--params", params, "--configfile", *tiny, "--experiments", "dcgan_ct_brain",
                 "--json", str(tmp_path / "check.json")]) == 0
    assert "dcgan_ct_brain" in json.loads((tmp_path / "check.json").read_text())
    assert main(["project", "--params", params, "--configfile", *tiny, "--experiments", "dcgan_ct_brain"]) == 0
    assert "| dcgan_ct_brain | train dcgan |" in capsys.readouterr().out


def test_the_evaluation_check_trains_its_classifier_without_restarts(monkeypatch):
    """Its one epoch on random images always "stalls": with a profile's restarts it would train 3x."""
    from pipeline.device_check.checks import check_evaluation
    from pipeline.device_check.profiles import experiments
    from pipeline.evaluate.measures import classifier

    class Recorded(BaseException):
        """Stops the check once the classifier's settings are seen (not an Exception: nothing catches it)."""

    seen = []

    def record(x, labels, x_val, y_val, settings, seed, device):
        seen.append(settings)
        raise Recorded

    cfg = load_params(ROOT / "params.yaml", config_files=[ROOT / "configs" / "proof.yaml"])
    assert cfg["experiments"]["cgan_ct_haemorrhage"]["classifier"]["restarts"] == 2
    monkeypatch.setattr(classifier, "fit_classifier", record)
    with pytest.raises(Recorded):
        check_evaluation(experiments(cfg, ["cgan_ct_haemorrhage"])[0], torch.device("cpu"))
    assert seen[0]["restarts"] == 0 and seen[0]["epochs"] == 1
