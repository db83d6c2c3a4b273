"""Small labelled head-like slices and honest stand-in generators for the generation-evaluator tests.

A "patient" is a vector of anatomy parameters (head shape, two inner structures, where blood
would be); their slices vary a little with the slice index, and a slice with label 1 carries a
bright blob (the blood). ``FreshSampler`` draws new patients from the same process (a perfect,
non-memorising generator); ``CopySampler`` hands back training slices, exactly, mirrored or with
noise (a memorising one). No model training is involved.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

SIZE = 32
N_PARAMS = 8


def render(params: np.ndarray, label: int, size: int = SIZE) -> np.ndarray:
    """One slice in [0, 1] from anatomy parameters (standard normal) and a label (1 = blood)."""
    yy, xx = np.mgrid[-1 : 1 : size * 1j, -1 : 1 : size * 1j]
    p = np.asarray(params, np.float64)
    head = ((xx / (0.65 + 0.06 * p[0])) ** 2 + (yy / (0.8 + 0.06 * p[1])) ** 2) < 1.0
    image = 0.35 * head
    for (px, py), level in (((p[2], p[3]), 0.25), ((p[4], p[5]), -0.2)):
        image = image + level * head * np.exp(-((xx - 0.25 * px) ** 2 + (yy - 0.25 * py) ** 2) / 0.05)
    if label:
        image = image + 0.55 * head * np.exp(-((xx - 0.3 * p[6]) ** 2 + (yy - 0.3 * p[7]) ** 2) / 0.02)
    return np.clip(image, 0.0, 1.0).astype(np.float32)


def make_split(seed: int, n_subjects: int, slices: int, prefix: str, blood_share: float = 0.4) -> dict:
    """Slices of new patients: contract arrays images, subject_ids, slice_index, labels, subtypes."""
    rng = np.random.default_rng(seed)
    images, subjects, index, labels = [], [], [], []
    for s in range(n_subjects):
        params = rng.normal(size=N_PARAMS)
        for k in range(slices):
            label = int(rng.random() < blood_share)
            moved = params + np.r_[0.0, 0.0, 0.4 * k, 0.0, 0.0, 0.4 * k, 0.0, 0.0]
            images.append(render(moved, label))
            subjects.append(f"{prefix}{s:03d}")
            index.append(k)
            labels.append(label)
    labels = np.array(labels, np.int64)
    subtypes = np.zeros((len(labels), 6), np.uint8)
    subtypes[:, 1] = subtypes[:, 5] = labels  # intraparenchymal, any
    return {"images": np.stack(images), "subject_ids": np.array(subjects), "slice_index": np.array(index),
            "labels": labels, "subtypes": subtypes}


def write_npz(path: Path, split: dict) -> Path:
    np.savez(path, **split)
    return path


#: The real-data classifier's settings for these 32-px slices (trained in a few seconds).
CLASSIFIER = dict(epochs=60, batch_size=8, lr=3e-3, width=8, n_blocks=3, image_size=32, patience=20)


def splits_with_classifier(folder: Path, seed: int, n_test_subjects: int) -> dict[str, Path]:
    """train / val / test npz files (10 / 4 / ``n_test_subjects`` patients of 4 slices, streams
    ``seed``, +1, +2), the real-data classifier trained on them (``classifier``) and the arrays
    themselves (``splits``)."""
    from pipeline.evaluate.measures.classifier import train_label_classifier

    sizes = {"train": (seed, 10, "tr"), "val": (seed + 1, 4, "va"), "test": (seed + 2, n_test_subjects, "te")}
    splits = {name: make_split(stream, n, 4, prefix) for name, (stream, n, prefix) in sizes.items()}
    paths = {name: write_npz(folder / f"{name}.npz", split) for name, split in splits.items()}
    train_label_classifier(paths["train"], paths["val"], paths["test"], folder / "classifier.pt",
                           folder / "classifier.json", threads=1, seed=0, **CLASSIFIER)
    return paths | {"classifier": folder / "classifier.pt", "splits": splits}


class FreshSampler:
    """Draws new patients from the data's own process: the ideal generator that copies nothing."""

    task = "generation"

    def __init__(self, n_classes: int = 2):
        self.n_classes = n_classes
        self.image_size = (SIZE, SIZE)
        self.nz = N_PARAMS

    def noise(self, n: int, seed: int = 0) -> torch.Tensor:
        return torch.randn(n, self.nz, generator=torch.Generator().manual_seed(seed))

    def generate(self, z: torch.Tensor, labels: np.ndarray | None = None) -> np.ndarray:
        z = z.double().numpy()
        labels = np.zeros(len(z), np.int64) if labels is None else np.asarray(labels)
        return np.stack([render(params, int(label)) for params, label in zip(z, labels)]) if len(z) else \
            np.zeros((0, SIZE, SIZE), np.float32)

    def sample(self, n: int, labels: np.ndarray | None = None, seed: int = 0) -> np.ndarray:
        rng = np.random.default_rng(seed)
        if self.n_classes == 0:
            assert labels is None
            labels = (rng.random(n) < 0.4).astype(np.int64)
        slice_shift = np.zeros((n, N_PARAMS))
        slice_shift[:, [2, 5]] = 0.4 * rng.integers(0, 4, size=n)[:, None]  # a random slice of the new patient
        return self.generate(self.noise(n, seed) + torch.from_numpy(slice_shift).float(), labels)


class CopySampler:
    """Returns training slices drawn at random: exact, left-right mirrored, or with Gaussian noise."""

    task = "generation"

    def __init__(self, train: dict, mode: str = "exact", noise_sigma: float = 0.02, n_classes: int = 0):
        self.train, self.mode, self.noise_sigma, self.n_classes = train, mode, noise_sigma, n_classes
        self.image_size = (SIZE, SIZE)
        self.last_indices = None

    def sample(self, n: int, labels: np.ndarray | None = None, seed: int = 0) -> np.ndarray:
        rng = np.random.default_rng(seed)
        if labels is None:
            indices = rng.integers(0, len(self.train["images"]), size=n)
        else:  # a copy of a training slice of the asked class
            indices = np.array([rng.choice(np.flatnonzero(self.train["labels"] == c)) for c in labels], np.int64)
        self.last_indices = indices
        images = self.train["images"][indices]
        if self.mode == "flip":
            images = images[..., ::-1]
        elif self.mode == "noise":
            images = np.clip(images + rng.normal(0.0, self.noise_sigma, images.shape), 0.0, 1.0)
        return images.astype(np.float32)
