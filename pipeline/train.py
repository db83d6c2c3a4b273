"""The one training engine: epochs, steps, update ratios, LR schedule, checkpoints, history,
sample grids and MLflow logging, for any model in ``pipeline.models``.

Data: the model names its inputs (``pipeline.models.DataInput``: CycleGAN ``a`` and ``b``, the
DCGAN ``images``) and the experiment binds each to a slices npz. Each input's ``images``
(N, H, W) in [0, 1] become one [-1, 1] tensor on the device, with the arrays the model asks to
draw alongside (``labels``; ``label_maps``, resized by nearest neighbour). Each epoch's batches
(shuffled passes or class-balanced draws, random crops, left-right flips) are drawn up front
from a seeded generator, one index per input: an image, its label and its map always travel
together, cropped and flipped alike; different inputs are drawn independently (unpaired).
Every step gathers its batch on the device in one indexing operation, so the hot loop does no
per-image Python work and never waits on the GPU: losses are summed on the device and read
once per epoch.

Schedules in images (StyleGAN's kimg): with ``train.kimg`` set, the run is counted in
thousands of images shown instead of epochs: an "epoch" becomes a tick of ``steps_per_epoch``
steps (history row, sample grid and checkpoint cadence as before, in ticks) and the run stops at
the first tick end at or past ``kimg`` * 1000 images. history.csv gains a ``kimg`` column,
run.json says ``kimg``, MLflow's step is the number of images shown, and the model reads the
images shown before each step (``GANModel.images_shown``) for its own schedules (EMA ramp-up,
augmentation strength). The counter is the step count times the batch, so it resumes exactly.

Speed knobs: bf16 autocast, channels-last, ``torch.compile`` (mode ``reduce-overhead`` adds
CUDA graphs), and data parallelism over the processes torchrun starts (``pipeline.distributed``).

All randomness comes from generators seeded from ``seed``: on CPU (deterministic algorithms,
fixed thread count) the same seed, config and data give bit-identical weights, and a run
resumed from its checkpoint equals an uninterrupted one. CUDA kernels are not all
deterministic, so GPU runs are only close.

Interruptions: SIGTERM (Snakemake, SLURM pre-emption) makes the loop write a checkpoint at the
next step boundary and exit with status 143 (128 + SIGTERM, "killed"); rerunning the same
command resumes mid-epoch into the same MLflow run. Checkpoints are renamed into place only
when complete, so ``kill -9`` at any moment leaves the previous one usable.

Outputs in ``out_dir`` (each written atomically, by process 0 only): model.pt, checkpoint.pt,
history.csv, run.json, samples/epoch_XXXX.png.
"""
from __future__ import annotations

import argparse
import contextlib
import csv
import errno
import functools
import io
import json
import logging
import math
import os
import platform
import resource
import signal
import threading
import time
import zipfile
from pathlib import Path
from typing import Any, Iterator, Mapping

import numpy as np
import torch
import torch.nn.functional as F

from pipeline.atomic import atomic_path, write_json, write_text
from pipeline.distributed import DataParallel, use_sync_batchnorm
from pipeline.errors import ConfigError, InputDataError, PipelineError
from pipeline.models import DataInput, GANModel, merge_knobs, model_class
from pipeline.models.networks import PRETRAINED_CHOICES
from pipeline.progress import progress_counter
from pipeline.tracking import Tracker, data_version, git_state, params_hash

log = logging.getLogger(__name__)

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
    "progress_interval_s": 30.0,  # seconds between progress lines (with ETA) when not on a terminal
}
#: Knobs that change neither the numbers nor the schedule: a checkpoint written under other
#: values of these still resumes.
_RESUME_NEUTRAL = ("epochs", "kimg", "checkpoint_every", "sample_every", "n_samples", "device", "compile",
                   "compile_mode", "distributed", "gpus", "progress_interval_s")
DEVICES = ("auto", "cpu", "cuda")
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
#: Exit status after a SIGTERM-triggered checkpoint: what a shell reports for a process killed by
#: SIGTERM, so Snakemake and batch schedulers see an unfinished job and rerun (resume) it.
EXIT_INTERRUPTED = 128 + signal.SIGTERM


class TrainingInterrupted(PipelineError):
    """Training stopped on a signal after writing a checkpoint; rerunning resumes it."""


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


def load_input(path: Path, spec: DataInput) -> dict[str, np.ndarray]:
    """The arrays of one named input from a slices npz, checked: ``images`` (N, H, W) float32 in
    [0, 1], and when ``spec`` asks, ``labels`` (N,) int64 >= 0 and ``label_maps`` (N, H, W)
    integer classes >= 0. Keys are the npz names."""
    path = Path(path)
    if not path.is_file():
        raise InputDataError(path, "file not found")
    wanted = (["images"] + (["labels"] if spec.labels else []) + (["label_maps"] if spec.label_maps else [])
              + (["subject_ids"] if spec.subjects else []))
    try:
        with np.load(path, allow_pickle=False) as npz:
            missing = [key for key in wanted if key not in npz.files]
            if missing:
                raise InputDataError(path, f"has no {' or '.join(map(repr, missing))} array for input {spec.name!r} "
                                           f"(arrays: {npz.files})")
            arrays = {key: npz[key] for key in wanted}
    except (OSError, ValueError, zipfile.BadZipFile) as err:
        raise InputDataError(path, f"cannot be read as npz ({err})") from err
    images = arrays["images"]
    if images.ndim != 3 or len(images) == 0 or not np.issubdtype(images.dtype, np.floating):
        raise InputDataError(path, f"'images' must be a non-empty float (N, H, W) array, got {images.dtype} {images.shape}")
    if not np.isfinite(images).all() or images.min() < 0 or images.max() > 1:
        raise InputDataError(path, "'images' must be finite and within [0, 1]")
    arrays["images"] = images.astype(np.float32, copy=False)
    if spec.labels:
        labels = arrays["labels"]
        if labels.shape != (len(images),) or not np.issubdtype(labels.dtype, np.integer) or labels.min() < 0:
            raise InputDataError(path, f"'labels' must be {len(images)} integer classes >= 0 (one per image), "
                                       f"got {labels.dtype} {labels.shape}")
        arrays["labels"] = labels.astype(np.int64, copy=False)
    if spec.label_maps:
        maps = arrays["label_maps"]
        if maps.shape != images.shape or not np.issubdtype(maps.dtype, np.integer) or maps.min() < 0:
            raise InputDataError(path, f"'label_maps' must be integer classes >= 0 shaped like 'images' "
                                       f"{images.shape}, got {maps.dtype} {maps.shape}")
        arrays["label_maps"] = maps.astype(np.int64, copy=False)
    if spec.subjects:
        subject_ids = arrays["subject_ids"]
        if subject_ids.shape != (len(images),) or subject_ids.dtype.kind not in "UO":
            raise InputDataError(path, f"'subject_ids' must be {len(images)} strings (one per image), "
                                       f"got {subject_ids.dtype} {subject_ids.shape}")
        arrays["subject_ids"] = subject_ids.astype(str)
    return arrays


def _as_tensor(images: np.ndarray, image_size: int | None, device: torch.device) -> torch.Tensor:
    """(N, H, W) [0, 1] -> (N, 1, S, S) [-1, 1] on ``device`` (resized once, antialiased, if asked)."""
    x = torch.from_numpy(images).unsqueeze(1)
    if image_size is not None and tuple(x.shape[-2:]) != (image_size, image_size):
        x = F.interpolate(x, size=(image_size, image_size), mode="bilinear", antialias=True, align_corners=False)
    return (x * 2 - 1).to(device)


def _maps_as_tensor(maps: np.ndarray, image_size: int | None, device: torch.device) -> torch.Tensor:
    """(N, H, W) integer label maps -> (N, 1, S, S) int64 on ``device``, resized by nearest
    neighbour: a class is never blended into a value between classes."""
    x = torch.from_numpy(maps).unsqueeze(1)
    if image_size is not None and tuple(x.shape[-2:]) != (image_size, image_size):
        x = F.interpolate(x.double(), size=(image_size, image_size), mode="nearest-exact").round().long()
    return x.to(device)


def _input_tensors(arrays: Mapping[str, np.ndarray], spec: DataInput, image_size: int | None,
                   device: torch.device) -> dict[str, torch.Tensor]:
    """One input's arrays as the batch keys of ``spec``: images [-1, 1], labels, maps."""
    tensors = {spec.name: _as_tensor(arrays["images"], image_size, device)}
    if spec.labels:
        tensors[spec.labels_key] = torch.from_numpy(arrays["labels"]).to(device)
    if spec.label_maps:
        tensors[spec.maps_key] = _maps_as_tensor(arrays["label_maps"], image_size, device)
    if spec.subjects:
        codes = np.unique(arrays["subject_ids"], return_inverse=True)[1].reshape(-1)
        tensors[spec.subjects_key] = torch.from_numpy(codes.astype(np.int64)).to(device)
    return tensors


def centre_crop(images: torch.Tensor, crop_size: int | None) -> torch.Tensor:
    """The central ``crop_size`` x ``crop_size`` window of (N, C, H, W) images (all of them for None)."""
    if crop_size is None:
        return images
    top, left = (images.shape[-2] - crop_size) // 2, (images.shape[-1] - crop_size) // 2
    return images[..., top:top + crop_size, left:left + crop_size]


def _select_device(name: str, local_rank: int = 0) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("train.device is cuda but no CUDA device is available")
    if name == "cuda" or (name == "auto" and torch.cuda.is_available()):
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


@contextlib.contextmanager
def _numerics(deterministic: bool, threads: int, device: torch.device) -> Iterator[None]:
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


def _lr_factor(epoch: int, constant: int, decay: int) -> float:
    """LR multiplier after ``epoch`` finished epochs: 1 for ``constant`` epochs, then linear to 0 over ``decay``."""
    if decay == 0 or epoch < constant:
        return 1.0
    return max(0.0, 1.0 - (epoch - constant + 1) / (decay + 1))


def _shuffled_draws(n_items: int, n_draws: int, generator: torch.Generator) -> torch.Tensor:
    """``n_draws`` indices from back-to-back random permutations of range(n_items)."""
    passes = math.ceil(n_draws / n_items)
    return torch.cat([torch.randperm(n_items, generator=generator) for _ in range(passes)])[:n_draws]


def _seeds(seed: int) -> tuple[int, int, int]:
    """Independent seeds for network init, data sampling and the model's own randomness."""
    init, data, model = np.random.SeedSequence(seed).generate_state(3)
    return int(init), int(data), int(model)


def _balanced_draws(labels: torch.Tensor, n_draws: int, generator: torch.Generator) -> torch.Tensor:
    """``n_draws`` indices drawn with replacement so that every class present is equally likely
    (each image weighted by 1 / its class's count)."""
    labels = labels.cpu()
    weights = 1.0 / torch.bincount(labels).double()[labels]
    return torch.multinomial(weights, n_draws, replacement=True, generator=generator)


class BatchSampler:
    """Training batches drawn on the device, one index per input.

    ``data`` maps each input name to its images (N, 1, H, W); ``aligned`` maps an input name to
    more arrays drawn with the same index: (N,) per-image values (labels) are gathered, (N, 1,
    H, W) maps are cropped and flipped exactly as the images. Inputs are drawn independently
    of each other (CycleGAN's unpaired domains). ``balance`` maps an input name to its labels
    for class-balanced draws instead of shuffled passes; ``subsets`` maps an input name to the
    indices its shuffled passes run over (default: all images).

    ``plan_epoch`` draws an epoch's image indices, flips and crop offsets for the global batch
    from a CPU generator (reproducible and checkpointable), keeps this process's ``share`` and
    turns them into row / column index grids on the device; ``batch`` then gathers one step's
    cropped, flipped images per input in a single indexing operation.
    """

    def __init__(self, data: Mapping[str, torch.Tensor], batch_size: int, crop_size: int | None,
                 flip_probability: float, share: slice | None = None,
                 memory_format: torch.memory_format = torch.contiguous_format,
                 aligned: Mapping[str, Mapping[str, torch.Tensor]] | None = None,
                 balance: Mapping[str, torch.Tensor] | None = None,
                 subsets: Mapping[str, torch.Tensor] | None = None):
        self.data, self.batch_size, self.crop_size = dict(data), batch_size, crop_size
        self.flip_probability, self.memory_format = flip_probability, memory_format
        self.share = share or slice(0, batch_size)
        self.aligned = {name: dict(arrays) for name, arrays in (aligned or {}).items()}
        self.balance = dict(balance or {})
        self.subsets = {name: torch.as_tensor(indices, dtype=torch.long).cpu() for name, indices in (subsets or {}).items()}
        for name, indices in self.subsets.items():
            if name in self.balance or len(indices) == 0 or indices.min() < 0 or indices.max() >= len(self.data[name]):
                raise ValueError(f"the draw subset of input {name!r} must be non-empty valid indices, "
                                 "and not combined with class-balanced draws")
        for name, arrays in self.aligned.items():
            for key, array in arrays.items():
                if len(array) != len(self.data[name]) or (array.ndim > 1 and array.shape[-2:] != self.data[name].shape[-2:]):
                    raise ValueError(f"{key} ({tuple(array.shape)}) is not aligned with input {name!r} "
                                     f"({tuple(self.data[name].shape)})")

    def plan_epoch(self, steps: int, rng: torch.Generator) -> dict[str, tuple[torch.Tensor, ...]]:
        """Per input: (indices, rows, cols) of shapes (steps, b), (steps, b, h), (steps, b, w) on the device."""
        plan = {}
        for domain, x in self.data.items():
            height, width = x.shape[-2:]
            crop_h, crop_w = (self.crop_size, self.crop_size) if self.crop_size else (height, width)
            shape = (steps, self.batch_size)
            if domain in self.balance:
                indices = _balanced_draws(self.balance[domain], steps * self.batch_size, rng).view(shape)
            elif domain in self.subsets:
                subset = self.subsets[domain]
                indices = subset[_shuffled_draws(len(subset), steps * self.batch_size, rng)].view(shape)
            else:
                indices = _shuffled_draws(len(x), steps * self.batch_size, rng).view(shape)
            flips = torch.rand(shape, generator=rng) < self.flip_probability
            top = left = torch.zeros(shape, dtype=torch.long)
            if self.crop_size:
                top = torch.randint(height - crop_h + 1, shape, generator=rng)
                left = torch.randint(width - crop_w + 1, shape, generator=rng)
            indices, flips, top, left = (t[:, self.share].to(x.device) for t in (indices, flips, top, left))
            rows = top[..., None] + torch.arange(crop_h, device=x.device)
            forward = torch.arange(crop_w, device=x.device)
            cols = left[..., None] + torch.where(flips[..., None], forward.flip(0), forward)
            plan[domain] = (indices, rows, cols)
        return plan

    def batch(self, plan: Mapping[str, tuple[torch.Tensor, ...]], step: int) -> dict[str, torch.Tensor]:
        """Step ``step``'s (b, 1, h, w) images per input, with their aligned labels (b,) and maps (b, 1, h, w)."""
        batch = {}
        for domain, x in self.data.items():
            indices, rows, cols = (t[step] for t in plan[domain])
            images = x[indices[:, None, None], 0, rows[:, :, None], cols[:, None, :]]
            batch[domain] = images.unsqueeze(1).contiguous(memory_format=self.memory_format)
            for key, array in self.aligned.get(domain, {}).items():
                if array.ndim == 1:
                    batch[key] = array[indices]
                else:
                    batch[key] = array[indices[:, None, None], 0, rows[:, :, None], cols[:, None, :]].unsqueeze(1)
        return batch


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
    channels-last, bf16 autocast, torch.compile of the networks and of the fixed networks inside
    losses (networks keep their state-dict keys)."""
    if parallel is not None and parallel.world_size > 1:
        if device.type == "cuda":
            use_sync_batchnorm(model, model.network_names)
        model.parallel = parallel
    if cfg["channels_last"]:
        model.to(memory_format=torch.channels_last)
    model.mixed_precision = torch.bfloat16 if cfg["bf16"] else None
    if cfg["compile"]:
        # Static shapes: a network sees a few fixed batch sizes (e.g. b and 2b when calls are
        # fused), each best served by its own specialised graph (and CUDA graph).
        for net in (*model.networks().values(), *model.loss_networks().values()):
            net.compile(mode=cfg["compile_mode"], dynamic=False)
    return model


def _uses_cuda_graphs(cfg: Mapping[str, Any], device: torch.device) -> bool:
    return cfg["compile"] and device.type == "cuda" and cfg["compile_mode"] in ("reduce-overhead", "max-autotune")


def _save_sample_grid(target: Path, visuals: dict[str, torch.Tensor], rows: tuple[tuple[str, ...], ...],
                      labels: Mapping[str, str], title: str) -> None:
    """One row per sample and visual group (e.g. original / translated / cycle-reconstructed).

    Column titles spell the model's visual names with dataset names: "a->b" reads "ct_head->mri_t2".
    """
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(next(iter(visuals.values())))
    n_cols = max(len(group) for group in rows)
    fig, axes = plt.subplots(len(rows) * n, n_cols, figsize=(2.2 * n_cols, 2.2 * len(rows) * n + 0.4),
                             squeeze=False, layout="constrained")
    for g, group in enumerate(rows):
        for i in range(n):
            for c in range(n_cols):
                ax = axes[g * n + i, c]
                ax.axis("off")
                if c < len(group):
                    ax.imshow(visuals[group[c]][i, 0].float().cpu().numpy(), cmap="gray", vmin=-1, vmax=1)
                    if i == 0:
                        ax.set_title("->".join(labels.get(part, part) for part in group[c].split("->")), fontsize=8)
    fig.suptitle(title, fontsize=10)
    with atomic_path(target) as tmp:
        fig.savefig(tmp, format="png", dpi=80)
    plt.close(fig)


def _write_history(target: Path, rows: list[dict[str, float]], loss_names: tuple[str, ...],
                   with_kimg: bool = False, lr_names: tuple[str, ...] = ()) -> None:
    """history.csv: epoch, step, (kimg: thousands of images shown, on a kimg schedule), the losses,
    then ``lr_<optimiser>``: the learning rate each optimiser ran the epoch with (the figures' panel)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["epoch", "step", *(["kimg"] if with_kimg else []), *loss_names, *lr_names])
    for row in rows:
        kimg = [format(row["kimg"], ".10g")] if with_kimg else []
        values = (format(row.get(name, math.nan), ".10g") for name in (*loss_names, *lr_names))
        writer.writerow([row["epoch"], row["step"], *kimg, *values])
    write_text(target, buffer.getvalue())


def _peak_memory_mb(device: torch.device) -> dict[str, float]:
    peak = {"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    if device.type == "cuda":
        peak["peak_gpu_allocated_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
    return peak


def write_checkpoint(path: Path, state: Mapping[str, Any]) -> None:
    """Serialise ``state`` in memory, then write it under a temporary name and rename it onto
    ``path``: a full disk or a kill at any moment leaves the previous checkpoint as it was.

    (torch.save straight to a file reports a full disk as an opaque RuntimeError; a plain file
    write reports it as OSError ENOSPC.)
    """
    buffer = io.BytesIO()
    torch.save(dict(state), buffer)
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        fh.write(buffer.getbuffer())


class _NoTracking:
    """Stands in for the MLflow tracker on data-parallel processes other than 0."""

    run_id = None

    def __getattr__(self, name: str):
        return lambda *args, **kwargs: None


class TrainingRun:
    """One training run: setup and resume in ``__init__``, the epoch loop in ``run``.

    Holds everything a checkpoint must capture (model, optimisers via the model, LR
    schedulers, the data generator, history, epoch and step, and the position and partial
    loss sums inside an epoch) so that resuming, even mid-epoch, is exact.
    """

    def __init__(self, train_files: Mapping[str, Path], val_files: Mapping[str, Path], out_dir: Path,
                 cfg: Mapping[str, Any] | None, experiment: str, weights_dir: Path | None, seed: int,
                 parallel: DataParallel | None = None):
        cls, model_cfg, self.cfg = resolve_config(cfg)
        names = cls.input_names()
        if set(train_files) != set(names) or set(val_files) != set(names):
            raise ConfigError(f"{cls.name} trains on the inputs {list(names)}, "
                              f"got {sorted(train_files)} (training) / {sorted(val_files)} (validation)")
        self.out_dir, self.experiment, self.seed, self.parallel = Path(out_dir), experiment, seed, parallel
        self.is_main = parallel is None or parallel.is_main
        self.world_size = 1 if parallel is None else parallel.world_size
        self.device = _select_device(self.cfg["device"], 0 if parallel is None else parallel.local_rank)
        self.labels = {d: Path(train_files[d]).parent.name for d in names}
        self.data_version = data_version([Path(train_files[d]) for d in names]
                                         + [Path(val_files[d]) for d in names])
        self.knobs = {"model": {"name": cls.name, **model_cfg}, "train": self.cfg, "seed": seed}
        self.params_hash = params_hash(self.knobs)
        self.run_name = f"{experiment}-{model_cfg.get('variant', cls.name)}-{self.params_hash[:8]}"
        self.fingerprint = params_hash({"model": self.knobs["model"], "seed": seed, "data": self.data_version,
                                        "train": {k: v for k, v in self.cfg.items() if k not in _RESUME_NEUTRAL}})

        specs = {spec.name: spec for spec in cls.inputs}
        train_arrays = {d: load_input(train_files[d], specs[d]) for d in names}
        tensors = {d: _input_tensors(train_arrays[d], specs[d], self.cfg["image_size"], self.device) for d in names}
        self.data = {d: tensors[d].pop(d) for d in names}
        aligned = {d: t for d, t in tensors.items() if t}
        self.val = self._sample_images(val_files, specs)
        init_seed, data_seed, model_seed = _seeds(seed)
        torch.manual_seed(init_seed)
        first = self.data[names[0]]
        train_size = (self.cfg["crop_size"],) * 2 if self.cfg["crop_size"] else tuple(first.shape[-2:])
        self.model = cls(model_cfg, weights_dir, model_seed, image_size=train_size).to(self.device)
        self.model.bind_training_data({**self.data, **{k: v for t in aligned.values() for k, v in t.items()}},
                                      train_arrays)
        _check_sizes(self.data, {d: self.val[d] for d in names}, train_files, val_files, self.cfg["crop_size"],
                     self.model.size_multiple, self.model.required_image_size())
        for d in names:
            if specs[d].labels:
                self.model.check_labels(Path(train_files[d]), train_arrays[d]["labels"])
                self.model.check_labels(Path(val_files[d]), self.val[specs[d].labels_key].cpu().numpy())
        self.val = {k: centre_crop(x, self.cfg["crop_size"]) if x.ndim == 4 else x for k, x in self.val.items()}
        share = None if parallel is None else parallel.share_of(self.cfg["batch_size"])
        memory_format = torch.channels_last if self.cfg["channels_last"] else torch.contiguous_format
        balance = {d: aligned[d][specs[d].labels_key] for d in self.model.class_balanced_inputs}
        self.sampler = BatchSampler(self.data, self.cfg["batch_size"], self.cfg["crop_size"],
                                    self.cfg["flip_probability"], share, memory_format, aligned, balance,
                                    self.model.training_subsets)
        lr_factor = functools.partial(_lr_factor, constant=self.cfg["lr_constant_epochs"],
                                      decay=self.cfg["lr_decay_epochs"])
        self.schedulers = {name: torch.optim.lr_scheduler.LambdaLR(opt, lr_factor)
                           for name, opt in self.model.optimizers.items()}
        self.data_rng = torch.Generator().manual_seed(data_seed)
        self.steps = self.cfg["steps_per_epoch"] or math.ceil(
            max(len(x) for x in self.data.values()) / self.cfg["batch_size"])
        self.total_epochs = self._total_epochs()
        self.epoch, self.step, self.history, self.run_id, self.seconds_before = 0, 0, [], None, 0.0
        # Position inside an unfinished epoch (non-zero only in a checkpoint written on SIGTERM).
        self.step_in_epoch, self.epoch_rng_state, self.epoch_seconds = 0, None, 0.0
        self.sums: dict[str, torch.Tensor] = {}
        self.counts: dict[str, int] = {}
        self.resumed_from: int | None = None
        self.stop_signal: int | None = None
        self._resume()
        if parallel is not None and parallel.world_size > 1:
            parallel.broadcast_modules(self.model.networks().values())
        prepare_model(self.model, self.cfg, self.device, parallel)

    def _total_epochs(self) -> int:
        """Epochs (ticks) to run: train.epochs, or with train.kimg enough ticks to show that many
        thousand images (rounded up to whole ticks, as StyleGAN's loop ends at a tick)."""
        if self.cfg["kimg"] is None:
            return self.cfg["epochs"]
        return max(1, math.ceil(self.cfg["kimg"] * 1000 / (self.steps * self.cfg["batch_size"])))

    @property
    def images_shown(self) -> int:
        """Images (global batch) shown to the model so far."""
        return self.step * self.cfg["batch_size"]

    def _metric_step(self) -> int:
        """MLflow's step: images shown on a kimg schedule, else the epoch."""
        return self.images_shown if self.cfg["kimg"] is not None else self.epoch

    def _sample_images(self, val_files: Mapping[str, Path], specs: Mapping[str, DataInput]) -> dict[str, torch.Tensor]:
        """The fixed validation images of the sample grids (with their labels and maps): evenly
        spread, as many per input."""
        arrays = {d: load_input(path, specs[d]) for d, path in val_files.items()}
        picks = {d: np.unique(np.linspace(0, len(a["images"]) - 1, self.cfg["n_samples"]).round().astype(int))
                 for d, a in arrays.items()}
        n_show = min(len(p) for p in picks.values())
        val = {}
        for d, a in arrays.items():
            chosen = {key: array[picks[d][:n_show]] for key, array in a.items()}
            val.update(_input_tensors(chosen, specs[d], self.cfg["image_size"], self.device))
        return val

    @property
    def checkpoint_path(self) -> Path:
        return self.out_dir / "checkpoint.pt"

    def _resume(self) -> None:
        """Restore everything from the checkpoint if it belongs to this run; else start afresh."""
        path = self.checkpoint_path
        if not path.is_file():
            return
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:
            raise InputDataError(path, f"cannot be read as a checkpoint ({err}); delete it to start afresh") from err
        if state.get("fingerprint") != self.fingerprint:
            log.warning("%s was written under another config, seed or data: starting afresh", path)
            return
        if state["epoch"] > self.total_epochs:
            log.warning("%s is at epoch %d, past the %d asked for: starting afresh", path, state["epoch"],
                        self.total_epochs)
            return
        for name, net in self.model.networks().items():
            net.load_state_dict(state["networks"][name])
        for name, opt in self.model.optimizers.items():
            opt.load_state_dict(state["optimizers"][name])
        for name, scheduler in self.schedulers.items():
            scheduler.load_state_dict(state["schedulers"][name])
        self.model.load_extra_state(state["model_state"])
        torch.set_rng_state(state["rng"]["torch"])
        self.data_rng.set_state(state["rng"]["data"])
        if self.device.type == "cuda" and state["rng"]["cuda"]:
            torch.cuda.set_rng_state(state["rng"]["cuda"][0], self.device)
        self.epoch, self.step, self.history = state["epoch"], state["step"], state["history"]
        self.run_id, self.seconds_before, self.resumed_from = state["run_id"], state["seconds"], state["epoch"]
        partial = state.get("partial_epoch")
        if partial is not None:
            self.step_in_epoch, self.epoch_rng_state = partial["step_in_epoch"], partial["rng_at_start"]
            self.epoch_seconds, self.counts = partial["seconds"], partial["counts"]
            self.sums = {name: value.to(self.device) for name, value in partial["sums"].items()}
        log.info("resuming from %s at epoch %d, step %d of the next", path, self.epoch, self.step_in_epoch)

    def _save_checkpoint(self, seconds: float) -> None:
        partial = None
        if self.step_in_epoch:
            partial = {"step_in_epoch": self.step_in_epoch, "rng_at_start": self.epoch_rng_state,
                       "seconds": self.epoch_seconds, "counts": dict(self.counts),
                       "sums": {name: value.detach().cpu() for name, value in self.sums.items()}}
        state = {
            "fingerprint": self.fingerprint, "epoch": self.epoch, "step": self.step, "history": self.history,
            "run_id": self.run_id, "seconds": seconds, "partial_epoch": partial,
            "networks": {name: net.state_dict() for name, net in self.model.networks().items()},
            "optimizers": {name: opt.state_dict() for name, opt in self.model.optimizers.items()},
            "schedulers": {name: scheduler.state_dict() for name, scheduler in self.schedulers.items()},
            "model_state": self.model.extra_state(),
            "rng": {"torch": torch.get_rng_state(), "data": self.data_rng.get_state(),
                    "cuda": [torch.cuda.get_rng_state(self.device)] if self.device.type == "cuda" else []},
        }
        try:
            write_checkpoint(self.checkpoint_path, state)
        except OSError as err:
            reason = ("the disk is full" if err.errno in (errno.ENOSPC, errno.EDQUOT)
                      else f"{err.strerror or err}")
            kept = "the previous checkpoint is untouched" if self.checkpoint_path.is_file() else "no checkpoint yet"
            raise PipelineError(f"{self.checkpoint_path}: cannot write the checkpoint of epoch {self.epoch} "
                                f"({reason}); {kept}: free space and rerun to resume") from err

    def _remove_stale_temporaries(self) -> None:
        """Temporaries of writes that a kill -9 interrupted (atomic_path names them ``.<name>.*.tmp*``)."""
        for folder in (self.out_dir, self.out_dir / "samples"):
            for stale in folder.glob(".*.tmp*"):
                if stale.is_file():
                    stale.unlink()

    @contextlib.contextmanager
    def _stop_on_sigterm(self) -> Iterator[None]:
        """SIGTERM only sets a flag; the loop checkpoints at the next step boundary and stops."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return

        def request_stop(signum: int, frame: Any) -> None:
            self.stop_signal = signum

        previous = signal.signal(signal.SIGTERM, request_stop)
        try:
            yield
        finally:
            signal.signal(signal.SIGTERM, previous)

    def run(self, tracking_uri: str) -> dict[str, Any] | None:
        """Train up to ``epochs``, logging to MLflow; returns run.json's content (None on
        data-parallel processes other than 0)."""
        if self.is_main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            self._remove_stale_temporaries()
            if self.resumed_from is None:
                for stale in (self.out_dir / "samples").glob("epoch_*.png"):
                    stale.unlink()
            tracker: Tracker | _NoTracking = Tracker.start(tracking_uri, self.experiment, self.run_name,
                                                           resume_run_id=self.run_id)
            self.run_id = tracker.run_id
        else:
            tracker = _NoTracking()
        commit, dirty = git_state()
        tracker.log_params(self.knobs)
        tracker.set_tags({"git_commit": commit, "git_dirty": dirty, "mlflow.source.git.commit": commit,
                          "data_version": self.data_version, "params_hash": self.params_hash,
                          "device": self.device.type, "world_size": self.world_size, "model": self.model.name,
                          **{f"pretrained.{k}": v for k, v in self.model.pretrained.items()},
                          **{f"domain.{d}": label for d, label in self.labels.items()}})
        started = time.perf_counter()
        counter = progress_counter(f"train {self.experiment}", (self.total_epochs - self.epoch) * self.steps
                                   - self.step_in_epoch, unit="step",
                                   interval_s=self.cfg["progress_interval_s"]) if self.is_main else None
        try:
            with self._stop_on_sigterm():
                try:
                    run = self._train(tracker, counter, started, tracking_uri, commit, dirty)
                except torch.cuda.OutOfMemoryError as err:
                    raise ConfigError(self._out_of_memory_advice()) from err
        except TrainingInterrupted:
            tracker.finish("KILLED")
            raise
        except KeyboardInterrupt:
            tracker.finish("KILLED")
            raise
        except BaseException:
            tracker.finish("FAILED")
            raise
        finally:
            if counter is not None:
                counter.close()
        tracker.finish("FINISHED")
        return run

    def _train(self, tracker: Tracker | _NoTracking, counter: Any, started: float, tracking_uri: str, commit: str,
               dirty: bool | None) -> dict[str, Any] | None:
        train_seconds, pairs = 0.0, 0
        while self.epoch < self.total_epochs:
            first_step = self.step
            finished, seconds = self._run_epoch(tracker, counter)
            train_seconds += seconds
            pairs += (self.step - first_step) * self.cfg["batch_size"]
            if finished:
                last = self.epoch == self.total_epochs
                if self.is_main:
                    if self.epoch % self.cfg["sample_every"] == 0 or last:
                        tracker.log_artifact(self._save_samples(), "samples")
                    self._write_history()
                    if self.epoch % self.cfg["checkpoint_every"] == 0 or last:
                        self._save_checkpoint(self.seconds_before + time.perf_counter() - started)
            if self.stop_signal is not None and self.epoch < self.total_epochs:
                self._stop(started)
        if not self.is_main:
            return None
        if not (self.out_dir / "samples" / f"epoch_{self.epoch:04d}.png").is_file():
            # resumed at the last epoch after the outputs were removed (DVC does so before a stage)
            tracker.log_artifact(self._save_samples(), "samples")
        run = self._write_outputs(tracking_uri, self.seconds_before + time.perf_counter() - started,
                                  pairs / train_seconds if train_seconds else None, commit, dirty)
        tracker.log_metrics({"run_seconds": run["seconds"], "run_image_pairs_per_s": run["image_pairs_per_s"],
                             "peak_rss_mb": run["peak_rss_mb"]}, step=self._metric_step())
        tracker.log_artifact(self.out_dir / "history.csv")
        tracker.log_artifact(self.out_dir / "run.json")
        return run

    def _stop(self, started: float) -> None:
        """Checkpoint where the loop stands (process 0), then end the run as interrupted."""
        if self.is_main:
            self._save_checkpoint(self.seconds_before + time.perf_counter() - started)
        if self.parallel is not None:
            self.parallel.barrier()  # no process exits (and makes torchrun stop the rest) before the write
        name = signal.Signals(self.stop_signal).name
        raise TrainingInterrupted(f"stopped by {name} at epoch {self.epoch + 1}, step {self.step_in_epoch} of "
                                  f"{self.steps}; checkpoint {self.checkpoint_path} written: rerun the same command "
                                  "to resume")

    def _stop_requested(self) -> bool:
        """Whether a stop signal arrived (on any process: all must stop at the same step)."""
        if self.parallel is not None and self.parallel.world_size > 1:
            if self.parallel.any(self.stop_signal is not None):
                self.stop_signal = self.stop_signal or signal.SIGTERM
                return True
            return False
        return self.stop_signal is not None

    def _run_epoch(self, tracker: Tracker | _NoTracking, counter: Any) -> tuple[bool, float]:
        """Run the rest of the current epoch; returns (finished, seconds spent now). An epoch stopped
        by a signal is left unfinished (position and partial sums kept for the checkpoint)."""
        if self.step_in_epoch == 0:
            self.epoch_rng_state = self.data_rng.get_state()
        else:  # resumed mid-epoch: draw the same plan again
            self.data_rng.set_state(self.epoch_rng_state)
        plan = self.sampler.plan_epoch(self.steps, self.data_rng)
        self.model.start_epoch(self.epoch)
        cuda_graphs = _uses_cuda_graphs(self.cfg, self.device)
        self.model.train()
        t0 = time.perf_counter()
        for index in range(self.step_in_epoch, self.steps):
            if cuda_graphs:
                torch.compiler.cudagraph_mark_step_begin()
            self.step += 1
            self.model.images_shown = self.images_shown - self.cfg["batch_size"]
            train_step(self.model, self.sampler.batch(plan, index), self.step, self.sums, self.counts)
            self.step_in_epoch = index + 1
            if counter is not None:
                counter.update(1)
            if self.step_in_epoch < self.steps and self._stop_requested():
                if self.device.type == "cuda":
                    torch.cuda.synchronize(self.device)
                seconds = time.perf_counter() - t0
                self.epoch_seconds += seconds
                return False, seconds
        self._stop_requested()
        names = list(self.sums)
        totals = torch.stack([self.sums[name] for name in names])
        if self.parallel is not None and self.parallel.world_size > 1:
            totals = self.parallel.average(totals)
        counts = torch.tensor([self.counts[name] for name in names], device=totals.device)
        means = dict(zip(names, (totals / counts).tolist()))  # the epoch's one host synchronisation
        seconds = time.perf_counter() - t0
        epoch_seconds = self.epoch_seconds + seconds
        lrs = {f"lr_{name}": opt.param_groups[0]["lr"] for name, opt in self.model.optimizers.items()}
        for scheduler in self.schedulers.values():
            scheduler.step()
        self.epoch += 1
        self.step_in_epoch, self.epoch_rng_state, self.epoch_seconds, self.sums, self.counts = 0, None, 0.0, {}, {}
        losses = {name: means.get(name, math.nan) for name in self.model.loss_names}
        self.history.append({"epoch": self.epoch, "step": self.step, "kimg": self.images_shown / 1000, **losses,
                             **lrs})
        if self.is_main:
            log.info("epoch %d/%d (%.1f s, %.3f kimg): %s", self.epoch, self.total_epochs, epoch_seconds,
                     self.images_shown / 1000,
                     ", ".join(f"{k} {v:.4g}" for k, v in losses.items()))
        tracker.log_metrics({**losses, **lrs, "epoch_seconds": epoch_seconds,
                             "image_pairs_per_s": self.steps * self.cfg["batch_size"] / epoch_seconds},
                            step=self._metric_step())
        return True, seconds

    def _out_of_memory_advice(self) -> str:
        """One line: what ran out of memory and which batch size to try instead."""
        batch, share = self.cfg["batch_size"], self.cfg["batch_size"] // self.world_size
        size = self.cfg["crop_size"] or "x".join(str(n) for n in next(iter(self.data.values())).shape[-2:])
        where = f"train.batch_size {batch} ({share} per GPU, {size} images, bf16 {self.cfg['bf16']})"
        if share > 1:
            smaller = max(self.world_size, (share // 2) * self.world_size)
            return f"CUDA out of memory at {where}: try train.batch_size: {smaller}"
        return (f"CUDA out of memory at {where}: the batch cannot shrink further; try bf16: true, "
                "a smaller train.crop_size or image_size, narrower networks, or a GPU with more memory")

    def _save_samples(self) -> Path:
        target = self.out_dir / "samples" / f"epoch_{self.epoch:04d}.png"
        self.model.eval()
        visuals = self.model.compute_visuals(self.val)
        self.model.train()
        _save_sample_grid(target, visuals, self.model.visual_names, self.labels,
                          f"{self.experiment}, epoch {self.epoch}")
        return target

    def _write_history(self) -> None:
        _write_history(self.out_dir / "history.csv", self.history, self.model.loss_names,
                       with_kimg=self.cfg["kimg"] is not None,
                       lr_names=tuple(f"lr_{name}" for name in self.model.optimizers))

    def _write_outputs(self, tracking_uri: str, seconds: float, pairs_per_s: float | None, commit: str,
                       dirty: bool | None) -> dict[str, Any]:
        """model.pt, the final history.csv and run.json."""
        self._write_history()
        image_size = list(next(iter(self.data.values())).shape[-2:])
        payload = {**self.model.export(), "image_size": image_size, "crop_size": self.cfg["crop_size"],
                   "domains": self.labels, "task": self.model.task, "pretrained": self.model.pretrained,
                   "seed": self.seed}
        with atomic_path(self.out_dir / "model.pt") as tmp:
            torch.save(payload, tmp)
        cpu, deterministic = self.device.type == "cpu", self.cfg["deterministic"]
        run = {
            "run_id": self.run_id, "run_name": self.run_name, "experiment": self.experiment,
            "tracking_uri": tracking_uri, "model": self.model.name, "variant": self.knobs["model"].get("variant"),
            "device": self.device.type,
            "device_name": (torch.cuda.get_device_name(self.device) if self.device.type == "cuda"
                            else f"{platform.machine()} CPU, {os.cpu_count()} logical cores"),
            "world_size": self.world_size,
            "threads": torch.get_num_threads(), "pretrained": self.model.pretrained, "seconds": round(seconds, 3),
            "epochs": self.epoch, "steps": self.step, "kimg": self.images_shown / 1000, "seed": self.seed,
            "params_hash": self.params_hash,
            "data_version": self.data_version, "domains": self.labels, "image_size": image_size,
            "crop_size": self.cfg["crop_size"], "resumed_from_epoch": self.resumed_from,
            "image_pairs_per_s": None if pairs_per_s is None else round(pairs_per_s, 3),
            **{k: round(v, 1) for k, v in _peak_memory_mb(self.device).items()},
            "bit_identical": cpu and deterministic and self.world_size == 1,
            "determinism": ("same seed, config, data and thread count give bit-identical weights on CPU"
                            if cpu and deterministic and self.world_size == 1 else
                            "not bit-identical: CUDA kernels, data-parallel reductions, or deterministic mode off"),
            "git_commit": commit, "git_dirty": dirty, "torch": torch.__version__,
        }
        write_json(self.out_dir / "run.json", run)
        return run


def train(train_files: Mapping[str, Path], val_files: Mapping[str, Path], out_dir: Path,
          cfg: Mapping[str, Any] | None, experiment: str, tracking_uri: str, weights_dir: Path | None,
          seed: int) -> dict[str, Any] | None:
    """Train the configured model on one slices npz per named input; returns run.json's content
    (None on data-parallel processes other than 0).

    ``cfg`` = {"model": {"name": ..., ...}, "train": {...}} (see ``TRAIN_DEFAULTS`` and the
    model's knobs). ``train_files`` / ``val_files`` map each of the model's inputs (CycleGAN:
    "a", "b"; DCGAN / cGAN: "images") to a slices npz; the validation files feed the sample
    grids. The MLflow run goes to ``experiment`` in ``tracking_uri``; ImageNet weight files
    are looked up in ``weights_dir``. A ``checkpoint.pt`` in
    ``out_dir`` written under the same config, seed and data is resumed. Bad input fails
    before an MLflow run is created. With ``train.distributed`` the process joins the group
    torchrun started. Raises TrainingInterrupted after a SIGTERM-triggered checkpoint.
    """
    _, _, train_cfg = resolve_config(cfg)
    device = _select_device(train_cfg["device"])
    parallel = DataParallel.from_environment(device.type) if train_cfg["distributed"] else None
    try:
        with _numerics(train_cfg["deterministic"], train_cfg["threads"], device):
            return TrainingRun(train_files, val_files, out_dir, cfg, experiment, weights_dir, seed,
                               parallel).run(tracking_uri)
    finally:
        if parallel is not None:
            parallel.close()


#: The name pipeline.bench calls the engine by.
run_experiment = train


def _named_paths(values: list[str], flag: str) -> dict[str, Path]:
    """["a=x.npz", "b=y.npz"] -> {"a": Path("x.npz"), "b": Path("y.npz")}; a malformed or repeated name is a ConfigError."""
    named: dict[str, Path] = {}
    for value in values:
        name, sep, path = value.partition("=")
        if not sep or not name or not path:
            raise ConfigError(f"{flag} takes NAME=PATH (e.g. {flag} images=data/slices/x/train.npz), got {value!r}")
        if name in named:
            raise ConfigError(f"{flag} names input {name!r} twice")
        named[name] = Path(path)
    return named


def _check_sizes(data: dict[str, torch.Tensor], val: dict[str, torch.Tensor], train_files: Mapping[str, Path],
                 val_files: Mapping[str, Path], crop_size: int | None, multiple: int,
                 required: tuple[int, int] | None = None) -> None:
    """All inputs share one image size; the networks accept the size they train on (the crop,
    if any, which must fit inside the images; the one size they take, if they take only one)."""
    sizes = {**{Path(train_files[d]): tuple(x.shape[-2:]) for d, x in data.items()},
             **{Path(val_files[d]): tuple(x.shape[-2:]) for d, x in val.items()}}
    reference = next(iter(sizes.values()))
    for path, size in sizes.items():
        if size != reference:
            raise InputDataError(path, f"images are {size[0]}x{size[1]}, others {reference[0]}x{reference[1]}; "
                                       "set train.image_size to train on one size")
        if crop_size is None and (size[0] % multiple or size[1] % multiple):
            raise InputDataError(path, f"images are {size[0]}x{size[1]}; these networks need multiples of {multiple} "
                                       "(set train.image_size or train.crop_size)")
    if crop_size is not None:
        if crop_size > min(reference):
            raise ConfigError(f"train.crop_size {crop_size} is larger than the {reference[0]}x{reference[1]} images")
        if crop_size % multiple:
            raise ConfigError(f"train.crop_size {crop_size}: these networks need multiples of {multiple}")
    trained = (crop_size, crop_size) if crop_size is not None else reference
    if required is not None and tuple(trained) != tuple(required):
        raise ConfigError(f"the networks take {required[0]}x{required[1]} images, the data gives "
                          f"{trained[0]}x{trained[1]}: set train.image_size")


def main(argv: list[str] | None = None) -> int:
    """CLI; returns the exit status: 0 done, 1 a pipeline error (one line in the log),
    EXIT_INTERRUPTED (143) after a SIGTERM checkpoint (rerun to resume)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--input", action="append", default=[], required=True, metavar="NAME=PATH",
                        help="training slices npz of one of the model's inputs (CycleGAN: a and b; dcgan / cgan: "
                             "images); repeat per input")
    parser.add_argument("--val-input", action="append", default=[], required=True, metavar="NAME=PATH",
                        help="validation slices npz of an input (sample grids); repeat per input")
    parser.add_argument("--out", type=Path, required=True, help="output folder (models/<experiment>)")
    parser.add_argument("--experiment", required=True, help="MLflow experiment name")
    parser.add_argument("--config-json", default="{}", help='{"model": {...}, "train": {...}} knobs as JSON')
    parser.add_argument("--tracking-uri", default="sqlite:///mlflow.db", help="MLflow tracking URI")
    parser.add_argument("--pretrained", choices=PRETRAINED_CHOICES, default=None,
                        help="overrides model.pretrained (imagenet: use the weight files when present)")
    parser.add_argument("--weights-dir", type=Path, default=Path("data/weights"),
                        help="folder of torchvision ImageNet weight files (optional)")
    parser.add_argument("--seed", type=int, required=True)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        try:
            cfg = json.loads(args.config_json)
        except json.JSONDecodeError as err:
            raise ConfigError(f"--config-json is not valid JSON ({err})") from err
        if args.pretrained is not None:
            cfg["model"] = {**cfg.get("model", {}), "pretrained": args.pretrained}
        run = train(_named_paths(args.input, "--input"), _named_paths(args.val_input, "--val-input"), args.out,
                    cfg, args.experiment, args.tracking_uri, args.weights_dir, args.seed)
    except TrainingInterrupted as err:
        log.error("%s", err)
        return EXIT_INTERRUPTED
    except PipelineError as err:
        log.error("%s", err)
        return 1
    if run is not None:
        log.info("done: run %s, %.1f s, %s image pairs/s", run["run_id"], run["seconds"], run["image_pairs_per_s"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
