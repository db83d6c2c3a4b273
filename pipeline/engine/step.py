"""One training step, and a model made ready for steps: the speed knobs (SyncBatchNorm when
data-parallel, channels-last, bf16 autocast, ``torch.compile``) and the LR schedule.

A step never waits on the GPU: its losses are summed on the device and read once per epoch.
"""
from __future__ import annotations

import functools
from typing import Any, Mapping

import torch

from pipeline.distributed import DataParallel, use_sync_batchnorm
from pipeline.engine.cpu_conv import use_unfold_weight_grads
from pipeline.models import GANModel


def train_step(model: GANModel, batch: dict[str, torch.Tensor], global_step: int,
               sums: dict[str, torch.Tensor], counts: dict[str, int]) -> None:
    """One step: each optimiser phase whose period divides ``global_step`` (G every step, D every
    k-th), its losses added to ``sums`` on the device (no host synchronisation)."""
    for phase, every in model.phases.items():
        if global_step % every:
            continue
        for name, value in model.train_phase(phase, batch).items():
            sums[name] = sums[name] + value.float() if name in sums else value.float()
            counts[name] = counts.get(name, 0) + 1


def prepare_model(model: GANModel, cfg: Mapping[str, Any], device: torch.device,
                  parallel: DataParallel | None = None) -> GANModel:
    """Apply the speed knobs to a model on ``device``: SyncBatchNorm when data-parallel on CUDA,
    the CPU's unfold weight gradient of small convolutions (engine/cpu_conv.py), channels-last,
    bf16 autocast, torch.compile of the networks and of the fixed networks inside losses
    (networks keep their state-dict keys)."""
    if parallel is not None and parallel.world_size > 1:
        if device.type == "cuda":
            use_sync_batchnorm(model, model.network_names)
        model.parallel = parallel
    if device.type == "cpu":
        use_unfold_weight_grads(model.networks().values(), cfg["cpu_unfold_weight_grad_positions"])
    if cfg["channels_last"]:
        model.to(memory_format=torch.channels_last)
    model.mixed_precision = torch.bfloat16 if cfg["bf16"] else None
    if cfg["compile"]:
        # Static shapes: a network sees a few fixed batch sizes (e.g. b and 2b when calls are
        # fused), each best served by its own specialised graph (and CUDA graph).
        for net in (*model.networks().values(), *model.loss_networks().values()):
            net.compile(mode=cfg["compile_mode"], dynamic=False)
    return model


def uses_cuda_graphs(cfg: Mapping[str, Any], device: torch.device) -> bool:
    """Whether compiled networks replay CUDA graphs, so that every step must be marked as a new one."""
    return cfg["compile"] and device.type == "cuda" and cfg["compile_mode"] in ("reduce-overhead", "max-autotune")


def lr_factor(epoch: int, constant: int, decay: int) -> float:
    """LR multiplier after ``epoch`` finished epochs: 1 for ``constant`` epochs, then linear to 0 over ``decay``."""
    if decay == 0 or epoch < constant:
        return 1.0
    return max(0.0, 1.0 - (epoch - constant + 1) / (decay + 1))


def lr_schedulers(optimizers: Mapping[str, torch.optim.Optimizer], constant_epochs: int,
                  decay_epochs: int) -> dict[str, torch.optim.lr_scheduler.LambdaLR]:
    """One scheduler per optimiser, stepped once per epoch: ``lr_factor`` of the initial rates."""
    factor = functools.partial(lr_factor, constant=constant_epochs, decay=decay_epochs)
    return {name: torch.optim.lr_scheduler.LambdaLR(opt, factor) for name, opt in optimizers.items()}
