"""Projected cost of each full profile on one H100: FLOPs per step (``cost``, counted on fake
tensors) times the steps the profile runs, over a throughput measured on an H100, plus the
preprocessing measured per subject.

Throughput. REFERENCE.md's reference CycleGAN step (ResNet-9 G, PatchGAN D, 256 px; ~1.86
TFLOP per image pair, which ``cost`` also counts for this engine's classic variant) ran on one
H100 at 14.8 image pairs/s at batch 1 in fp32 (27.5 TFLOP/s), 48.7 at batch 8 in bf16
channels-last (90.6 TFLOP/s) and 101 at batch 32 bf16 channels-last compiled (188 TFLOP/s, ~24%
of the ~790 TFLOP/s dense bf16 peak it quotes). A network is assumed to run as fast as that
step at the nearest of these batch sizes (batch <= 4: the batch-1 figure; 5-16: batch 8; more:
batch 32), halved when the profile trains in fp32 at batch 8 or more (the H100's TF32 tensor
cores peak at half its bf16 rate; the batch-1 figure was fp32 already). These are convolution
networks like the reference, so the shares should carry over; StyleGAN2's modulated
(grouped) convolutions are checked against stylegan2-ada's own published speed instead.
"""
from __future__ import annotations

import math
from typing import Any, Mapping

from pipeline.device_check.profiles import Experiment, TrainedNetworks, dataset_kind

#: Reference CycleGAN step on one H100 (REFERENCE.md): batch -> (image pairs / s, precision).
H100_REFERENCE = {1: (14.8, "fp32"), 8: (48.7, "bf16"), 32: (101.0, "bf16")}
REFERENCE_TFLOP_PER_PAIR = 1.86
H100_PEAK_BF16_TFLOPS = 790.0  # the dense bf16 peak REFERENCE.md quotes beside its 189 TFLOP/s
H100_MEMORY_GB = 80.0
#: stylegan2-ada-pytorch's published training speed at 128 x 128 (auto config, batch 32).
STYLEGAN2_ADA_S_PER_KIMG = {"V100": 13.0, "A100": 6.79}
#: The reports' own training times (docs/reports.md).
REPORTED = {"cyclegan_ct_mri": "report 001: ~10 h (200 epochs, Colab GPU)",
            "cyclegan_cxr_pneumonia": "report 000: ~240 h (200 x 4,000 iterations, a compute-capability 5.2 GPU)",
            "stylegan_cxr_cardiomegaly": "stylegan2-ada at 128 px: 13 s/kimg (V100), 6.8 s/kimg (A100)"}


def assumed_tflops(batch: int, bf16: bool) -> tuple[float, str]:
    """The achieved TFLOP/s assumed for a network trained at ``batch`` (see the module docstring)."""
    nearest = 1 if batch <= 4 else 8 if batch <= 16 else 32
    pairs_per_s, precision = H100_REFERENCE[nearest]
    tflops = pairs_per_s * REFERENCE_TFLOP_PER_PAIR
    why = f"reference step at batch {nearest} {precision}"
    if precision == "bf16" and not bf16:
        tflops /= 2
        why += ", halved for fp32 (TF32)"
    return tflops, why


def training_images(cfg: Mapping[str, Any], dataset: str) -> int | None:
    """About how many training slices a profile's data gives ``dataset`` (None: not needed, the
    profile fixes its steps)."""
    kind = dataset_kind(cfg["datasets"], dataset)
    pre = cfg["preprocess"]
    if kind == "volume":
        slices = pre["slices"]
        n = int(cfg["datasets"][dataset]["n_subjects"])
        return round(n * (1 - slices["val_fraction"] - slices["test_fraction"])) * int(slices["slab"])
    if kind == "ct_slices":
        phantom = cfg.get("phantom_rsna_ich", {})
        share = 1 - pre["ct_slices"]["val_fraction"] - pre["ct_slices"]["test_fraction"]
        return round(int(phantom["n_patients"]) * share) * int(phantom["slices_per_patient"])
    if kind == "thorax":
        return int(pre["thorax_slices"]["train_images"])
    return None


def training_steps(cfg: Mapping[str, Any], run: TrainedNetworks) -> tuple[int, str]:
    """Engine steps the profile runs for ``run`` and how they follow from its knobs."""
    train = run.train
    if train.get("kimg"):
        per_tick = int(train["steps_per_epoch"]) * run.batch_size
        ticks = max(1, math.ceil(train["kimg"] * 1000 / per_tick))
        return ticks * int(train["steps_per_epoch"]), f"{train['kimg']:g} kimg at batch {run.batch_size}"
    if train.get("steps_per_epoch"):
        per_epoch, why = int(train["steps_per_epoch"]), f"{train['steps_per_epoch']} steps"
    else:
        images = max(training_images(cfg, d) or 0 for d in run.inputs.values())
        per_epoch, why = math.ceil(images / run.batch_size), f"~{images} training slices / batch {run.batch_size}"
    return int(train["epochs"]) * per_epoch, f"{train['epochs']} epochs x {per_epoch} ({why})"


def inversion_steps(cfg: Mapping[str, Any], exp: Experiment) -> tuple[int, str]:
    """Latent-optimisation steps of full batches: (real + synthetic + ladder images) / batch x steps."""
    inversion = exp.section["inversion"]
    ladder = int(cfg.get("phantom_chexpert", {}).get("ladder_patients", 0))
    images = int(inversion["max_real_images"]) + int(inversion["n_synthetic"]) + ladder
    batches = math.ceil(int(inversion["max_real_images"]) / inversion["batch_size"]) + math.ceil(
        int(inversion["n_synthetic"]) / inversion["batch_size"]) + math.ceil(ladder / inversion["batch_size"])
    return batches * int(inversion["steps"]), (f"{inversion['steps']} steps x {batches} batches of <= "
                                               f"{inversion['batch_size']} ({images} images)")


def row(name: str, what: str, cost: Mapping[str, Any], steps: int, steps_why: str, batch: int,
        bf16: bool) -> dict[str, Any]:
    tflops, why = assumed_tflops(batch, bf16)
    flops = cost["flops_per_step"] * steps
    memory = cost["memory"]
    # At small batches a step can be bound by kernel launches, not FLOPs: the reference's own batch-1
    # step time is a second estimate for those rows.
    floor = steps / H100_REFERENCE[1][0] / 3600 if batch <= 4 else None
    return {"experiment": name, "what": what, "tflop_per_step": cost["flops_per_step"] / 1e12, "steps": steps,
            "steps_from": steps_why, "pflop": flops / 1e15, "assumed_tflops": tflops, "assumed_from": why,
            "h100_hours": flops / (tflops * 1e12) / 3600, "h100_hours_at_reference_step_time": floor,
            "peak_memory_gb": memory["peak"] / 1e9,
            "memory_gb": {k: round(v / 1e9, 2) for k, v in memory.items()},
            "fits_80gb": memory["peak"] / 1e9 < H100_MEMORY_GB}


def stylegan2_check(tflop_per_step: float, batch: int) -> dict[str, float]:
    """What stylegan2-ada's published s/kimg means in TFLOP/s for our step's FLOPs."""
    tflop_per_kimg = tflop_per_step * 1000 / batch
    return {gpu: tflop_per_kimg / seconds for gpu, seconds in STYLEGAN2_ADA_S_PER_KIMG.items()}


def preprocessing_hours(cfg: Mapping[str, Any], per_subject_cpu_s: Mapping[str, float]) -> dict[str, float]:
    """CPU hours of the per-subject preprocessing a profile runs: measured CPU seconds per subject
    (rule -> seconds, from a run's benchmarks) times the profile's subjects."""
    subjects = sum(int(cfg["datasets"][d].get("n_subjects") or 0) for d in ("ct_head", "mri_t2")
                   if d in cfg["datasets"])
    return {rule: seconds * subjects / 3600 for rule, seconds in per_subject_cpu_s.items()}
