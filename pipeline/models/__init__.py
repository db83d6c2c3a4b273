"""GAN models that the one training engine (``pipeline.train``) runs, found by name.

A model declares what the engine needs and nothing about the loop: its networks, its
optimisers and how often each is stepped, the losses it reports and the images it shows.
Epochs, data sampling, LR schedules, checkpoints, history, sample grids and MLflow logging
live in the engine, so adding a model (DCGAN, StyleGAN, ...) never touches the loop.
Model modules are imported by name on first use (``MODELS``), which also lets them import
this base module without a cycle.
"""
from __future__ import annotations

import contextlib
import importlib
from pathlib import Path
from typing import Any, ClassVar, Iterator, Mapping, Protocol

import numpy as np
import torch
from torch import nn

from pipeline.errors import ConfigError, InputDataError

#: name -> "module:Class" of every model the engine can train.
MODELS = {"cyclegan": "pipeline.models.cyclegan:CycleGAN"}
#: Version of the model.pt layout; bump when it changes.
EXPORT_FORMAT = 1


def merge_knobs(defaults: Mapping[str, Any], overrides: Mapping[str, Any] | None, section: str) -> dict[str, Any]:
    """Defaults updated by overrides; an unknown key or a value of the wrong type is a ConfigError.

    Types follow the default (an int is accepted for a float, a list for a tuple); a key whose
    default is None takes any value.
    """
    merged = dict(defaults)
    for key, value in (overrides or {}).items():
        if key not in defaults:
            raise ConfigError(f"{section}.{key} is not a known knob; known: {sorted(defaults)}")
        default = defaults[key]
        if default is not None and value is not None:
            expected = (int, float) if isinstance(default, float) else (list, tuple) if isinstance(
                default, (list, tuple)) else type(default)
            if not isinstance(value, expected) or (isinstance(value, bool) and not isinstance(default, bool)):
                raise ConfigError(f"{section}.{key} must be {type(default).__name__}, got {value!r}")
        merged[key] = list(value) if isinstance(value, tuple) else value
    return merged


class Translator(Protocol):
    """What ``load_trained`` returns for an image-to-image model."""

    def translate(self, direction: str, images: np.ndarray) -> np.ndarray: ...


class DataParallelGroup(Protocol):
    """What a model sees of data-parallel training (``pipeline.distributed.DataParallel``)."""

    world_size: int

    def average_gradients(self, parameters: list[torch.nn.Parameter]) -> None: ...

    def gather(self, local: torch.Tensor) -> torch.Tensor: ...

    def share(self, global_batch: torch.Tensor) -> torch.Tensor: ...


class GANModel(nn.Module):
    """Base of every model the engine trains.

    Subclasses set, in ``__init__``:
      - ``config``: the resolved knobs (recorded in run.json, model.pt and MLflow);
      - ``pretrained``: network or loss name -> initialisation status;
      - ``network_names``: attributes holding the trained networks (checkpointed);
      - ``optimizers``: name -> optimiser, and ``phases``: optimiser name -> update every n
        steps, in the order the engine runs them within a step;
      - ``loss_names``: the per-step values ``train_phase`` may return (history columns);
      - ``visual_names``: rows of the sample grid, each a tuple of ``compute_visuals`` keys.
    """

    name: ClassVar[str]
    #: Keys of the batch dictionaries (one image tensor per data domain).
    domains: ClassVar[tuple[str, ...]]

    def __init__(self) -> None:
        super().__init__()
        self.config: dict[str, Any] = {}
        self.pretrained: dict[str, str] = {}
        self.network_names: tuple[str, ...] = ()
        self.optimizers: dict[str, torch.optim.Optimizer] = {}
        self.phases: dict[str, int] = {}
        self.loss_names: tuple[str, ...] = ()
        self.visual_names: tuple[tuple[str, ...], ...] = ()
        self.mixed_precision: torch.dtype | None = None
        #: Set by the engine under data-parallel training (``pipeline.distributed.DataParallel``):
        #: gradients are averaged over the processes before every optimiser step.
        self.parallel: DataParallelGroup | None = None

    @classmethod
    def resolve_config(cls, overrides: Mapping[str, Any] | None) -> dict[str, Any]:
        """The model's full knob set: its defaults updated by ``overrides``."""
        raise NotImplementedError

    @property
    def size_multiple(self) -> int:
        """Image height and width must be multiples of this."""
        return 1

    def train_phase(self, phase: str, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """One update of optimiser ``phase`` on ``batch``; returns detached scalar values."""
        raise NotImplementedError

    def compute_visuals(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Images named in ``visual_names``, (N, 1, H, W) in [-1, 1], for the sample grid."""
        raise NotImplementedError

    def export(self) -> dict[str, Any]:
        """Everything model.pt needs to rebuild the inference networks (tensors and plain data)."""
        raise NotImplementedError

    @classmethod
    def load_export(cls, payload: dict[str, Any], device: str | torch.device) -> Translator:
        raise NotImplementedError

    def extra_state(self) -> dict[str, Any]:
        """State beyond networks and optimisers that a resumed run needs (pools, RNGs)."""
        return {}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        if state:
            raise ConfigError(f"{self.name} has no extra state to restore, got keys {sorted(state)}")

    def optimizer_step(self, name: str, loss: torch.Tensor) -> None:
        """Backpropagate ``loss`` and step optimiser ``name`` (gradients averaged over the
        processes first under data-parallel training, so every process makes the same update)."""
        optimizer = self.optimizers[name]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.parallel is not None:
            self.parallel.average_gradients([p for group in optimizer.param_groups for p in group["params"]])
        optimizer.step()

    def networks(self) -> dict[str, nn.Module]:
        return {name: getattr(self, name) for name in self.network_names}

    def loss_networks(self) -> dict[str, nn.Module]:
        """Fixed networks inside losses (e.g. a VGG feature extractor): not trained or
        checkpointed, but compiled with the trained ones when the engine compiles."""
        return {}

    def autocast(self) -> contextlib.AbstractContextManager:
        """Autocast for forward passes when the engine enabled mixed precision."""
        device_type = next(self.parameters()).device.type
        return torch.autocast(device_type, dtype=self.mixed_precision or torch.bfloat16,
                              enabled=self.mixed_precision is not None)


def model_class(name: str) -> type[GANModel]:
    """The model class registered under ``name``."""
    if name not in MODELS:
        raise ConfigError(f"model.name must be one of {sorted(MODELS)}, got {name!r}")
    module_name, class_name = MODELS[name].split(":")
    return getattr(importlib.import_module(module_name), class_name)


def load_trained(path: str | Path, device: str | torch.device = "cpu") -> Translator:
    """Rebuild a trained model from ``model.pt`` for inference (eval mode, no gradients)."""
    path = Path(path)
    if not path.is_file():
        raise InputDataError(path, "trained model file not found")
    try:
        payload = torch.load(path, map_location=device, weights_only=True)
    except Exception as err:
        raise InputDataError(path, f"cannot be read as a model file ({err})") from err
    if not isinstance(payload, dict) or payload.get("format") != EXPORT_FORMAT or "model" not in payload:
        raise InputDataError(path, f"is not a model.pt of format {EXPORT_FORMAT}")
    return model_class(payload["model"]).load_export(payload, device)


@contextlib.contextmanager
def frozen(*nets: nn.Module) -> Iterator[None]:
    """Stop gradients into ``nets`` (e.g. the discriminators during a generator step)."""
    for net in nets:
        net.requires_grad_(False)
    try:
        yield
    finally:
        for net in nets:
            net.requires_grad_(True)
