"""What one training step of each full-profile network costs: FLOPs and peak memory, counted on
fake tensors (no data, no time), with real autograd.

The step is the engine's (``steps.step_model``) over one full update period, on fake CPU tensors
(autograd cannot run on fake CUDA ones: ``simulate``), with the profile's bf16 autocast on the
CPU. FLOPs come from ``torch.utils.flop_counter.FlopCounterMode`` (matrix multiplies and
convolutions, forward and backward, double backward included: the elementwise rest is a few
percent); memory from ``PeakMemory``, the peak of live tensor storage during the step, split into
its persistent part (weights, gradients, optimiser state) and the rest (saved activations and
temporaries). (torch.distributed._tools.mem_tracker.MemTracker refuses a module called twice in
one step, as every GAN step does.) Neither counts the CUDA allocator's fragmentation, cuDNN
workspaces or the CUDA context (~0.5-1 GB), nor what torch.compile saves.

StyleGAN2's lazy regularisers are amortised: the step is costed without them, with R1 due and
with the path-length penalty due, and each extra is divided by its interval. Inversion is
costed per optimisation step of its batch (G's synthesis forward and backward to w, and the
loss network).
"""
from __future__ import annotations

import contextlib
import warnings
import weakref
from typing import Any, Iterator, Mapping

import torch
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from torch.utils.flop_counter import FlopCounterMode, conv_flop_count

from pipeline.device_check.profiles import TrainedNetworks
from pipeline.device_check.simulate import fake_tensors
from pipeline.device_check.steps import build_model, step_model

CPU = torch.device("cpu")


class PeakMemory(TorchDispatchMode):
    """Bytes of live tensor storage while inside (tensors made by ops, plus ``track``ed ones), and
    its peak: what a caching allocator would have to hold at least (fragmentation not counted).
    A storage counts once however many views share it, until Python frees it."""

    def __init__(self) -> None:
        super().__init__()
        self.live: dict[int, int] = {}
        self.current = self.peak = 0

    def track(self, *tensors: torch.Tensor) -> None:
        for tensor in tensors:
            storage = tensor.untyped_storage()
            key = storage._cdata
            if key in self.live:
                continue
            self.live[key] = storage.nbytes()
            self.current += self.live[key]
            self.peak = max(self.peak, self.current)
            weakref.finalize(storage, self._free, key)

    def _free(self, key: int) -> None:
        self.current -= self.live.pop(key, 0)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        self.track(*(t for t in tree_flatten(out)[0] if isinstance(t, torch.Tensor)))
        return out


class _Totals:
    """Stands in for FlopCounterMode's per-module tracker: totals only. (Its hooks fail on a
    parameter fed to a submodule under no_grad, as StyleGAN2's constant input is.)"""

    parents = {"Global"}

    def __enter__(self) -> "_Totals":
        return self

    def __exit__(self, *exc: Any) -> None:
        return None


def conv_backward_flops(grad_out_shape, x_shape, w_shape, _bias, _stride, _padding, _dilation, transposed,
                        _output_padding, _groups, output_mask, out_shape=None, **kwargs) -> int:
    """A convolution's backward: the forward's multiplies once for the input's gradient and once
    for the weight's. torch's formula counts the weight's gradient of a grouped convolution
    ``groups`` times over (it ignores the groups), which inflates StyleGAN2's modulated
    convolutions (one group per image) by the batch size."""
    forward = conv_flop_count(list(x_shape), list(w_shape), list(grad_out_shape), transposed)
    return forward * (int(bool(output_mask[0])) + int(bool(output_mask[1])))


def flop_counter() -> FlopCounterMode:
    """FlopCounterMode counting totals (matrix multiplies and convolutions, forward and backward)."""
    counter = FlopCounterMode(display=False, custom_mapping={torch.ops.aten.convolution_backward: conv_backward_flops})
    counter.mod_tracker = _Totals()
    return counter


def _bytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def _memory(model: torch.nn.Module, tracker: PeakMemory, frozen: list[torch.nn.Module]) -> dict[str, int]:
    """Peak and the persistent part of it: weights, gradients, optimiser state."""
    optimisers = getattr(model, "optimizers", {})
    states = [v for opt in optimisers.values() for state in opt.state.values() for v in state.values()
              if isinstance(v, torch.Tensor)]
    weights = [*model.parameters(), *model.buffers(), *(p for m in frozen for p in (*m.parameters(), *m.buffers()))]
    trainable = [p for opt in optimisers.values() for group in opt.param_groups for p in group["params"]]
    persistent = {"weights": _bytes(weights), "gradients": _bytes(trainable), "optimiser_state": _bytes(states)}
    return {"peak": tracker.peak, **persistent,
            "activations_and_temporaries": max(0, tracker.peak - sum(persistent.values()))}


@contextlib.contextmanager
def fake_cpu() -> Iterator[FakeTensorMode]:
    """Fake CPU tensors (sizes without data) with working autograd."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*data pointer of FakeTensor.*")
        warnings.filterwarnings("ignore", module="torch.distributed._tools")
        with fake_tensors() as mode:
            yield mode


def measure_step(run: TrainedNetworks, overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """FLOPs per engine step and memory (bytes) of one update period of ``run``."""
    with fake_cpu():
        model, train_cfg = build_model(run, CPU, overrides)
        frozen = list(getattr(model, "_generator_module", []))  # the encoder's G (moves with it, not a submodule)
        tracker = PeakMemory()
        tracker.track(*model.parameters(), *model.buffers(), *(t for m in frozen for t in (*m.parameters(),
                                                                                           *m.buffers())))
        with flop_counter() as flops, tracker:
            result = step_model(model, run, train_cfg, CPU)
        memory = _memory(model, tracker, frozen)
        parameters = sum(p.numel() for p in model.parameters())
        frozen_parameters = sum(p.numel() for module in frozen for p in module.parameters())
    return {"flops_per_step": flops.get_total_flops() / result["steps"], "memory": memory,
            "parameters": parameters, "frozen_parameters": frozen_parameters, "period": result["steps"]}


def stylegan2_step(run: TrainedNetworks) -> dict[str, Any]:
    """StyleGAN2's step with R1 every ``r1_interval`` and path length every ``pl_interval`` steps,
    amortised from three costed steps (neither, R1 due, path length due); memory of the largest."""
    model = run.config["model"]
    r1_interval, pl_interval = int(model.get("r1_interval", 16)), int(model.get("pl_interval", 4))
    plain = measure_step(run, {"r1_gamma": 0.0, "pl_weight": 0.0})
    with_r1 = measure_step(run, {"r1_interval": 1, "pl_weight": 0.0}) if model.get("r1_gamma", 1) else plain
    with_pl = measure_step(run, {"pl_interval": 1, "r1_gamma": 0.0}) if model.get("pl_weight", 1) else plain
    flops = (plain["flops_per_step"] + (with_r1["flops_per_step"] - plain["flops_per_step"]) / r1_interval
             + (with_pl["flops_per_step"] - plain["flops_per_step"]) / pl_interval)
    largest = max((plain, with_r1, with_pl), key=lambda m: m["memory"]["peak"])
    return {**largest, "flops_per_step": flops,
            "lazy": {"plain": plain["flops_per_step"], "r1_due": with_r1["flops_per_step"],
                     "pl_due": with_pl["flops_per_step"], "r1_interval": r1_interval, "pl_interval": pl_interval}}


def training_step_cost(run: TrainedNetworks) -> dict[str, Any]:
    if run.config["model"].get("name") == "stylegan2":
        return stylegan2_step(run)
    return measure_step(run)


def inversion_step_cost(generator: TrainedNetworks, settings: Mapping[str, Any], pretrained: str) -> dict[str, Any]:
    """FLOPs and memory of one latent-optimisation step of a full batch (``settings["batch_size"]``
    images) through the trained G (its G_ema, as exported), with the profile's loss: VGG-19
    perceptual with ImageNet weights, else MSE + SSIM (offline). The loss network is built with
    random weights (the same cost)."""
    from pipeline.latent.invert import image_loss, optimise_latent
    from pipeline.models.losses import VGGPerceptualLoss
    from pipeline.models.stylegan2 import StyleGAN2

    batch, size = int(settings["batch_size"]), generator.train_size
    with fake_cpu():
        knobs = {k: v for k, v in generator.config["model"].items() if k != "name"}
        model = StyleGAN2(StyleGAN2.resolve_config(knobs), None, 0, image_size=(size, size))
        sampler = StyleGAN2.load_export({**model.export(), "image_size": [size, size]}, CPU)
        if pretrained == "imagenet":
            layers = list(settings["perceptual_layers"])
            loss = image_loss("perceptual", 0.0, int(settings["ssim_kernel_size"]),
                              VGGPerceptualLoss(layers, [1.0] * len(layers), weights=None))
        else:
            loss = image_loss("mse_ssim", float(settings["ssim_weight"]), int(settings["ssim_kernel_size"]))
        targets = torch.zeros(batch, 1, size, size)
        start = sampler.w_avg.view(1, 1, -1).expand(batch, sampler.num_ws, sampler.w_dim)
        tracker = PeakMemory()
        tracker.track(*sampler.generator.parameters(), *sampler.generator.buffers(), targets)
        with flop_counter() as flops, tracker:
            optimise_latent(sampler, targets, start, {**settings, "steps": 1}, loss, 1.0, 0)
        weights = _bytes([*sampler.generator.parameters(), *sampler.generator.buffers()])
    return {"flops_per_step": flops.get_total_flops(), "batch": batch,
            "memory": {"peak": tracker.peak, "weights": weights,
                       "activations_and_temporaries": max(0, tracker.peak - weights)}}
