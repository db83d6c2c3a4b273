"""GAN models that the one training engine (``pipeline.engine``, CLI ``pipeline.train``) runs, found by name.

A model declares what the engine needs and nothing about the loop: its networks, its
optimisers and how often each is stepped, the losses it reports and the images it shows.
Epochs, data sampling, LR schedules, checkpoints, history, sample grids and MLflow logging
live in the engine, so adding a model (DCGAN, StyleGAN, ...) never touches the loop.
Model modules are imported by name on first use (``MODELS``), which also lets them import
this base module without a cycle.

Data reaches a model as named inputs (``DataInput``): each name is bound by the experiment to
one slices npz, whose images (and, when the model asks, their labels or label maps) the
engine draws with one index, so an image and its label or map always travel together.
A trained model exports what its task needs: a translator (``translate``) or a sampler
(``sample``); ``load_trained`` rebuilds either, and evaluation is chosen by ``task``.
"""
from __future__ import annotations

import contextlib
import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Iterator, Mapping, Protocol

import numpy as np
import torch
from torch import nn

from pipeline.errors import ConfigError, InputDataError

#: name -> "module:Class" of every model the engine can train.
MODELS = {
    "cyclegan": "pipeline.models.cyclegan:CycleGAN",
    "dcgan": "pipeline.models.dcgan:DCGAN",
    "cgan": "pipeline.models.dcgan:ConditionalDCGAN",
    "seg2ct": "pipeline.models.seg2ct:Seg2CT",
    "stylegan2": "pipeline.models.stylegan2:StyleGAN2",
    "stylegan2_encoder": "pipeline.models.stylegan2_encoder:StyleGAN2Encoder",
}
#: What a trained model is for; each task has its evaluator (``pipeline.evaluate.EVALUATORS``).
TASKS = ("translation", "generation", "encoding", "map_to_image")
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


@dataclass(frozen=True)
class DataInput:
    """One named input of a model: a set of images (one slices npz) and what is drawn with them.

    The batch holds the images under ``name``; with ``labels`` also the npz ``labels`` array
    (class per image, int64) under ``name + "_labels"``; with ``label_maps`` the npz
    ``label_maps`` array ((N, H, W) integer classes) under ``name + "_maps"``, cropped and
    flipped exactly as its image and resized by nearest neighbour, never interpolated; with
    ``subjects`` the npz ``subject_ids`` as integer codes (N,) int64 under ``name + "_subjects"``
    (equal codes = the same patient; codes are per file), e.g. to pair an image with another
    patient's.
    """

    name: str
    labels: bool = False
    label_maps: bool = False
    subjects: bool = False

    @property
    def labels_key(self) -> str:
        return f"{self.name}_labels"

    @property
    def maps_key(self) -> str:
        return f"{self.name}_maps"

    @property
    def subjects_key(self) -> str:
        return f"{self.name}_subjects"


class Translator(Protocol):
    """What ``load_trained`` returns for an image-to-image model (task "translation")."""

    task: str

    def translate(self, direction: str, images: np.ndarray) -> np.ndarray: ...


class Sampler(Protocol):
    """What ``load_trained`` returns for a generator (task "generation").

    ``n_classes`` 0 means unconditional; ``image_size`` is (height, width); ``sample`` returns
    (n, H, W) float32 in [0, 1], of the asked classes when conditional, the same images for the
    same seed.
    """

    task: str
    n_classes: int
    image_size: tuple[int, int]

    def sample(self, n: int, labels: np.ndarray | None = None, seed: int = 0) -> np.ndarray: ...


class DataParallelGroup(Protocol):
    """What a model sees of data-parallel training (``pipeline.distributed.DataParallel``)."""

    world_size: int

    def average_gradients(self, parameters: list[torch.nn.Parameter]) -> None: ...

    def gather(self, local: torch.Tensor) -> torch.Tensor: ...

    def share(self, global_batch: torch.Tensor) -> torch.Tensor: ...


class GANModel(nn.Module):
    """Base of every model the engine trains.

    Subclasses declare, as class attributes, ``name`` (the registry key), ``task`` (what the
    export serves: "translation" or "generation") and ``inputs`` (the named data inputs, each
    a ``DataInput``). The constructor is ``Model(config, weights_dir, seed, image_size=None)``;
    ``image_size`` is the (height, width) the engine trains on, for networks built to one size.
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
    #: What the trained model is for: "translation" or "generation" (picks the evaluator).
    task: ClassVar[str]
    #: The named inputs the model trains on; the experiment binds each name to a dataset.
    inputs: ClassVar[tuple[DataInput, ...]]

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
        #: Inputs whose batches are drawn class-balanced (by their labels) instead of in shuffled passes.
        self.class_balanced_inputs: tuple[str, ...] = ()
        #: Input name -> the image indices its batches are drawn from (default: all), e.g. every
        #: patient but the fixed style image's; set in ``bind_training_data``.
        self.training_subsets: dict[str, torch.Tensor] = {}
        #: Set by the engine under data-parallel training (``pipeline.distributed.DataParallel``):
        #: gradients are averaged over the processes before every optimiser step.
        self.parallel: DataParallelGroup | None = None
        #: Images shown to the model before the current step (global batch; set by the engine
        #: before every step), for schedules in images such as StyleGAN2's EMA ramp-up.
        self.images_shown: int = 0

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
    def load_export(cls, payload: dict[str, Any], device: str | torch.device) -> Translator | Sampler:
        raise NotImplementedError

    @classmethod
    def input_names(cls) -> tuple[str, ...]:
        return tuple(spec.name for spec in cls.inputs)

    def start_epoch(self, epoch: int) -> None:
        """Called by the engine before each epoch's steps (``epoch`` finished so far, also when
        resuming mid-epoch), for schedules that follow epochs (e.g. instance noise)."""

    def check_labels(self, path: Path, labels: np.ndarray) -> None:
        """Raise InputDataError naming ``path`` when its labels do not fit the model (e.g. a class
        it does not know)."""

    def bind_training_data(self, tensors: Mapping[str, torch.Tensor],
                           arrays: Mapping[str, Mapping[str, np.ndarray]]) -> None:
        """Called once by the engine before training with all training data: ``tensors`` by batch
        key (images (N, 1, H, W) in [-1, 1] at the training size, before cropping, and their
        aligned labels / maps / subject codes) and ``arrays`` the npz arrays per input (e.g. the
        subject id strings), for models that use training images beyond a step's batch (e.g. a
        style image from another patient)."""

    def required_image_size(self) -> tuple[int, int] | None:
        """The one (height, width) the networks take, or None when any multiple of
        ``size_multiple`` will do."""
        return None

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


def _read_export(path: str | Path, device: str | torch.device) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise InputDataError(path, "trained model file not found")
    try:
        payload = torch.load(path, map_location=device, weights_only=True)
    except Exception as err:
        raise InputDataError(path, f"cannot be read as a model file ({err})") from err
    if not isinstance(payload, dict) or payload.get("format") != EXPORT_FORMAT or "model" not in payload:
        raise InputDataError(path, f"is not a model.pt of format {EXPORT_FORMAT}")
    if payload["model"] not in MODELS:
        raise InputDataError(path, f"names model {payload['model']!r}, not one of {sorted(MODELS)}")
    return payload


def load_trained(path: str | Path, device: str | torch.device = "cpu") -> Translator | Sampler:
    """Rebuild a trained model from ``model.pt`` for inference (eval mode, no gradients): a
    translator or a sampler, as its ``task`` says."""
    payload = _read_export(path, device)
    return model_class(payload["model"]).load_export(payload, device)


def trained_task(path: str | Path) -> str:
    """The task ("translation", "generation") of the model in ``model.pt``, without building it."""
    return model_class(_read_export(path, "cpu")["model"]).task


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
