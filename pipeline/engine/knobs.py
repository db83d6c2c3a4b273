"""The engine's knobs (an experiment's ``train`` section), checked, and what they select for
the process: the device, deterministic algorithms, the thread count and the run's seeds."""
from __future__ import annotations

import contextlib
import os
from typing import Any, Iterator, Mapping

import numpy as np
import torch

from pipeline.errors import ConfigError
from pipeline.models import GANModel, merge_knobs, model_class

#: Engine knobs (the ``train`` section of the config) with their defaults: the full GPU
#: profile of report 001 / the classic CycleGAN. The CPU profile overrides them in params.yaml.
TRAIN_DEFAULTS: dict[str, Any] = {
    "epochs": 200,              # epochs to train in total (a resumed run continues up to this)
    "kimg": None,               # thousands of images to show in total (StyleGAN's schedule); None: epochs decide.
                                # When set, an "epoch" is a tick of steps_per_epoch steps and the run stops at
                                # the first tick end with at least kimg * 1000 images shown
    "steps_per_epoch": None,    # None: ceil(largest domain size / batch_size)
    "batch_size": 1,            # images per domain per step (the global batch when distributed)
    "image_size": None,         # resize every image to image_size x image_size once at load; None keeps the data's size
    "crop_size": None,          # random square crop per image and step (centre crop for samples); None: no crop
    "flip_probability": 0.5,    # chance of a left-right flip per image per step
    "lr_constant_epochs": 100,  # epochs at the initial learning rates ...
    "lr_decay_epochs": 100,     # ... then linear decay to 0 over this many (0: constant forever)
    "checkpoint_every": 5,      # epochs between checkpoints (and always after the last, and on SIGTERM)
    "sample_every": 5,          # epochs between sample grids (and always after the last)
    "n_samples": 4,             # validation images per domain in each sample grid
    "device": "auto",           # auto (CUDA when available), cpu or cuda
    "bf16": False,              # bfloat16 autocast for forward passes
    "channels_last": False,     # channels-last memory format (faster convolutions on GPU)
    "compile": False,           # torch.compile the networks (the first steps pay the compilation)
    "compile_mode": "default",  # torch.compile mode; reduce-overhead adds CUDA graphs
    "distributed": False,       # data-parallel over the processes torchrun starts (nccl on CUDA, gloo on CPU)
    "gpus": 1,                  # processes (one GPU each) the Snakemake rule asks torchrun for when distributed
    "deterministic": True,      # deterministic algorithms (bit-identical on CPU; CUDA: best effort)
    "threads": 0,               # CPU threads for torch (0: torch's default); part of the numerics
    "cpu_unfold_weight_grad_positions": 64,  # CPU: conv weight gradients over <= this many output
                                # positions by unfold + matmul (engine/cpu_conv.py); 0: oneDNN's
    "progress_interval_s": 30.0,  # seconds between progress lines (with ETA) when not on a terminal
}
DEVICES = ("auto", "cpu", "cuda")
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


def resolve_config(cfg: Mapping[str, Any] | None) -> tuple[type[GANModel], dict[str, Any], dict[str, Any]]:
    """Split ``{"model": {"name": ..., ...}, "train": {...}}`` into (model class, model knobs, train
    knobs), defaults filled; the model name (default cyclegan) picks the class."""
    cfg = dict(cfg or {})
    unknown = set(cfg) - {"model", "train"}
    if unknown:
        raise ConfigError(f"config sections are 'model' and 'train', got {sorted(unknown)}")
    model_cfg = dict(cfg.get("model") or {})
    name = model_cfg.pop("name", "cyclegan")
    cls = model_class(name)
    model_knobs = cls.resolve_config(model_cfg)
    train_knobs = merge_knobs(TRAIN_DEFAULTS, cfg.get("train"), "train")
    if train_knobs["device"] not in DEVICES:
        raise ConfigError(f"train.device must be one of {DEVICES}, got {train_knobs['device']!r}")
    if train_knobs["compile_mode"] not in COMPILE_MODES:
        raise ConfigError(f"train.compile_mode must be one of {COMPILE_MODES}, got {train_knobs['compile_mode']!r}")
    for key in ("epochs", "batch_size", "checkpoint_every", "sample_every", "gpus"):
        if train_knobs[key] < 1:
            raise ConfigError(f"train.{key} must be >= 1, got {train_knobs[key]}")
    if train_knobs["kimg"] is not None and (isinstance(train_knobs["kimg"], bool) or train_knobs["kimg"] <= 0):
        raise ConfigError(f"train.kimg must be > 0 or null, got {train_knobs['kimg']!r}")
    if train_knobs["steps_per_epoch"] is not None and train_knobs["steps_per_epoch"] < 1:
        raise ConfigError(f"train.steps_per_epoch must be >= 1 or null, got {train_knobs['steps_per_epoch']}")
    for key in ("image_size", "crop_size"):
        value = train_knobs[key]
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 8):
            raise ConfigError(f"train.{key} must be an integer >= 8 or null, got {value!r}")
    if not 0.0 <= train_knobs["flip_probability"] <= 1.0:
        raise ConfigError(f"train.flip_probability must be in [0, 1], got {train_knobs['flip_probability']}")
    return cls, model_knobs, train_knobs


def select_device(name: str, local_rank: int = 0) -> torch.device:
    """The device ``train.device`` names (``auto``: CUDA when available); this process's GPU when data-parallel."""
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("train.device is cuda but no CUDA device is available")
    if name == "cuda" or (name == "auto" and torch.cuda.is_available()):
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


@contextlib.contextmanager
def numerics(deterministic: bool, threads: int, device: torch.device) -> Iterator[None]:
    """Process-wide determinism and thread settings for the run, restored afterwards."""
    saved = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
             torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark, torch.get_num_threads())
    if deterministic and device.type == "cuda":
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    # Some CUDA kernels (e.g. reflection-pad backward) have no deterministic version: warn, don't fail.
    torch.use_deterministic_algorithms(deterministic, warn_only=device.type == "cuda")
    torch.backends.cudnn.deterministic = deterministic
    torch.backends.cudnn.benchmark = not deterministic
    if threads > 0:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(saved[0], warn_only=saved[1])
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = saved[2], saved[3]
        torch.set_num_threads(saved[4])


def split_seed(seed: int) -> tuple[int, int, int]:
    """Independent seeds for network init, data sampling and the model's own randomness."""
    init, data, model = np.random.SeedSequence(seed).generate_state(3)
    return int(init), int(data), int(model)
