"""Helpers of the reader-study tests: small slices laid out as the slices stage writes them
(images, subject_ids, slice_index, labels) and tiny models trained through the real engine."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline.train import train

SIZE = 32
#: Test patients (two slices each): a study shows one image per patient, so 24 images need 24.
N_SUBJECTS = 30
COUNTS = {"train": 16, "val": 8, "test": 60}
CYCLEGAN = {"model": {"variant": "resnet9_patchgan", "ngf": 4, "ndf": 4, "n_res_blocks": 1, "pool_size": 3},
            "train": {"epochs": 1, "batch_size": 2, "steps_per_epoch": 2, "sample_every": 10, "checkpoint_every": 1,
                      "threads": 1}}
CGAN = {"model": {"name": "cgan", "nz": 8, "ngf": 8, "ndf": 4},
        "train": {"epochs": 1, "batch_size": 4, "steps_per_epoch": 2, "sample_every": 10, "checkpoint_every": 1,
                  "threads": 1}}


def write_slices(root: Path, dataset: str, seed: int) -> dict[str, Path]:
    """``root/<dataset>/<split>.npz``: bright discs on a dark noisy background, ``N_SUBJECTS``
    patients (ids prefixed by the dataset, so two datasets share none), labels alternating 0 / 1."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:SIZE, :SIZE] / SIZE
    files = {}
    (root / dataset).mkdir(parents=True, exist_ok=True)
    for split, count in COUNTS.items():
        images = []
        for _ in range(count):
            cy, cx = rng.uniform(0.3, 0.7, 2)
            radius = rng.uniform(0.15, 0.35)
            disc = np.where((yy - cy) ** 2 + (xx - cx) ** 2 < radius ** 2, rng.uniform(0.5, 1.0), 0.1)
            images.append(np.clip(disc + rng.normal(0, 0.03, (SIZE, SIZE)), 0, 1))
        path = root / dataset / f"{split}.npz"
        np.savez(path, images=np.asarray(images, np.float32),
                 subject_ids=np.array([f"{dataset}-{split}-p{i % N_SUBJECTS}" for i in range(count)]),
                 slice_index=np.arange(count), labels=(np.arange(count) % 2).astype(np.int64))
        files[split] = path
    return files


def train_cyclegan(root: Path, store: str) -> dict[str, Path]:
    """A one-epoch classic CycleGAN between two slice sets; its files and the test sets."""
    a, b = write_slices(root / "slices", "dom_a", 1), write_slices(root / "slices", "dom_b", 2)
    out = root / "models" / "cyclegan"
    train({"a": a["train"], "b": b["train"]}, {"a": a["val"], "b": b["val"]}, out, CYCLEGAN, "rs_cyclegan", store,
          None, 1)
    return {"model": out / "model.pt", "checkpoint": out / "checkpoint.pt", "run": out / "run.json",
            "test_a": a["test"], "test_b": b["test"]}


def train_cgan(root: Path, store: str) -> dict[str, Path]:
    """A one-epoch conditional DCGAN on labelled slices; its files and the real test set."""
    data = write_slices(root / "slices", "labelled", 3)
    out = root / "models" / "cgan"
    train({"images": data["train"]}, {"images": data["val"]}, out, CGAN, "rs_cgan", store, None, 1)
    return {"model": out / "model.pt", "checkpoint": out / "checkpoint.pt", "run": out / "run.json",
            "real": data["test"]}
