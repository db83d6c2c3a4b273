"""A model's named inputs, loaded, checked and held on the device, and the batches drawn from them.

The model names its inputs (``pipeline.models.DataInput``: CycleGAN ``a`` and ``b``, the DCGAN
``images``) and the experiment binds each to a slices npz. Each input's ``images`` (N, H, W) in
[0, 1] become one [-1, 1] tensor on the device, with the arrays the model asks to draw alongside
(``labels``; ``label_maps``, resized by nearest neighbour; ``subject_ids`` as integer codes).
Each epoch's batches (shuffled passes or class-balanced draws, random crops, left-right flips)
are drawn up front from a seeded generator, one index per input: an image, its label and its
map always travel together, cropped and flipped alike; different inputs are drawn
independently (unpaired). Every step gathers its batch on the device in one indexing
operation, so the hot loop does no per-image Python work.
"""
from __future__ import annotations

import math
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import numpy as np
import torch
import torch.nn.functional as F

from pipeline.errors import ConfigError, InputDataError
from pipeline.models import DataInput, GANModel


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


def images_as_tensor(images: np.ndarray, image_size: int | None, device: torch.device) -> torch.Tensor:
    """(N, H, W) [0, 1] -> (N, 1, S, S) [-1, 1] on ``device`` (resized once, antialiased, if asked)."""
    x = torch.from_numpy(images).unsqueeze(1)
    if image_size is not None and tuple(x.shape[-2:]) != (image_size, image_size):
        x = F.interpolate(x, size=(image_size, image_size), mode="bilinear", antialias=True, align_corners=False)
    return (x * 2 - 1).to(device)


def label_maps_as_tensor(maps: np.ndarray, image_size: int | None, device: torch.device) -> torch.Tensor:
    """(N, H, W) integer label maps -> (N, 1, S, S) int64 on ``device``, resized by nearest
    neighbour: a class is never blended into a value between classes."""
    x = torch.from_numpy(maps).unsqueeze(1)
    if image_size is not None and tuple(x.shape[-2:]) != (image_size, image_size):
        x = F.interpolate(x.double(), size=(image_size, image_size), mode="nearest-exact").round().long()
    return x.to(device)


def input_tensors(arrays: Mapping[str, np.ndarray], spec: DataInput, image_size: int | None,
                  device: torch.device) -> dict[str, torch.Tensor]:
    """One input's arrays as the batch keys of ``spec``: images [-1, 1], labels, maps, subject codes."""
    tensors = {spec.name: images_as_tensor(arrays["images"], image_size, device)}
    if spec.labels:
        tensors[spec.labels_key] = torch.from_numpy(arrays["labels"]).to(device)
    if spec.label_maps:
        tensors[spec.maps_key] = label_maps_as_tensor(arrays["label_maps"], image_size, device)
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


def check_sizes(images: Mapping[str, torch.Tensor], samples: Mapping[str, torch.Tensor],
                train_files: Mapping[str, Path], val_files: Mapping[str, Path], crop_size: int | None,
                multiple: int, required: tuple[int, int] | None = None) -> None:
    """All inputs share one image size; the networks accept the size they train on (the crop,
    if any, which must fit inside the images; the one size they take, if they take only one)."""
    sizes = {**{Path(train_files[d]): tuple(x.shape[-2:]) for d, x in images.items()},
             **{Path(val_files[d]): tuple(x.shape[-2:]) for d, x in samples.items()}}
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


def shuffled_draws(n_items: int, n_draws: int, generator: torch.Generator) -> torch.Tensor:
    """``n_draws`` indices from back-to-back random permutations of range(n_items)."""
    passes = math.ceil(n_draws / n_items)
    return torch.cat([torch.randperm(n_items, generator=generator) for _ in range(passes)])[:n_draws]


def balanced_draws(labels: torch.Tensor, n_draws: int, generator: torch.Generator) -> torch.Tensor:
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
                indices = balanced_draws(self.balance[domain], steps * self.batch_size, rng).view(shape)
            elif domain in self.subsets:
                subset = self.subsets[domain]
                indices = subset[shuffled_draws(len(subset), steps * self.batch_size, rng)].view(shape)
            else:
                indices = shuffled_draws(len(x), steps * self.batch_size, rng).view(shape)
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


@dataclass
class TrainingData:
    """A model's inputs as one run holds them: the training images on the device with what is
    drawn alongside, and the fixed validation images of the sample grids."""

    inputs: dict[str, DataInput]
    train_files: dict[str, Path]
    val_files: dict[str, Path]
    #: input name -> training images (N, 1, S, S) in [-1, 1]
    images: dict[str, torch.Tensor]
    #: input name -> batch key -> labels, maps or subject codes drawn with that input's images
    aligned: dict[str, dict[str, torch.Tensor]]
    #: input name -> its npz arrays as loaded and checked (e.g. the subject id strings)
    arrays: dict[str, dict[str, np.ndarray]]
    #: batch key -> the sample grids' validation images (and their labels and maps)
    samples: dict[str, torch.Tensor]

    @property
    def datasets(self) -> dict[str, str]:
        """Input name -> dataset name (the folder of its training npz), as outputs spell the inputs."""
        return {name: Path(path).parent.name for name, path in self.train_files.items()}

    @property
    def image_size(self) -> tuple[int, int]:
        return tuple(next(iter(self.images.values())).shape[-2:])

    @property
    def largest_input(self) -> int:
        return max(len(x) for x in self.images.values())

    def train_size(self, crop_size: int | None) -> tuple[int, int]:
        """(height, width) the networks see in training: the crop, else the images."""
        return (crop_size, crop_size) if crop_size else self.image_size

    def fit_to(self, model: GANModel, crop_size: int | None) -> None:
        """Hand the model all training data, check that it fits the networks (sizes, labels) and
        centre-crop the sample images as the networks train."""
        model.bind_training_data({**self.images, **{k: v for t in self.aligned.values() for k, v in t.items()}},
                                 self.arrays)
        check_sizes(self.images, {d: self.samples[d] for d in self.images}, self.train_files, self.val_files,
                    crop_size, model.size_multiple, model.required_image_size())
        for name, spec in self.inputs.items():
            if spec.labels:
                model.check_labels(Path(self.train_files[name]), self.arrays[name]["labels"])
                model.check_labels(Path(self.val_files[name]), self.samples[spec.labels_key].cpu().numpy())
        self.samples = {k: centre_crop(x, crop_size) if x.ndim == 4 else x for k, x in self.samples.items()}

    def sampler(self, model: GANModel, batch_size: int, crop_size: int | None, flip_probability: float,
                share: slice | None, memory_format: torch.memory_format) -> BatchSampler:
        """The batch sampler over these images, drawing as the model asks (class-balanced, subsets)."""
        balance = {d: self.aligned[d][self.inputs[d].labels_key] for d in model.class_balanced_inputs}
        return BatchSampler(self.images, batch_size, crop_size, flip_probability, share, memory_format,
                            self.aligned, balance, model.training_subsets)


def load_training_data(inputs: tuple[DataInput, ...], train_files: Mapping[str, Path],
                       val_files: Mapping[str, Path], image_size: int | None, n_samples: int,
                       device: torch.device) -> TrainingData:
    """Every input's training npz on ``device`` (resized to ``image_size``), and ``n_samples``
    validation images per input, evenly spread, for the sample grids."""
    specs = {spec.name: spec for spec in inputs}
    arrays = {name: load_input(train_files[name], spec) for name, spec in specs.items()}
    tensors = {name: input_tensors(arrays[name], spec, image_size, device) for name, spec in specs.items()}
    images = {name: tensors[name].pop(name) for name in specs}
    aligned = {name: t for name, t in tensors.items() if t}
    return TrainingData(specs, dict(train_files), dict(val_files), images, aligned, arrays,
                        sample_images(val_files, specs, n_samples, image_size, device))


def sample_images(val_files: Mapping[str, Path], specs: Mapping[str, DataInput], n_samples: int,
                  image_size: int | None, device: torch.device) -> dict[str, torch.Tensor]:
    """The fixed validation images of the sample grids (with their labels and maps): evenly
    spread, as many per input."""
    arrays = {d: load_input(path, specs[d]) for d, path in val_files.items()}
    picks = {d: np.unique(np.linspace(0, len(a["images"]) - 1, n_samples).round().astype(int))
             for d, a in arrays.items()}
    n_show = min(len(p) for p in picks.values())
    samples = {}
    for d, a in arrays.items():
        chosen = {key: array[picks[d][:n_show]] for key, array in a.items()}
        samples.update(input_tensors(chosen, specs[d], image_size, device))
    return samples
