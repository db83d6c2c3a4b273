"""Random unpaired slices for the training tests, laid out as the slices stage lays them out."""
from __future__ import annotations

from pathlib import Path

import numpy as np


def write_random_slices(root: Path, seed: int, counts: dict[str, int], size: int = 32) -> dict[str, Path]:
    """``root/<dataset>/<split>.npz`` of ``counts[split]`` uniform [0, 1] images per domain (a: ct_head,
    b: mri_t2); returns {"<split>_<domain>": path}."""
    rng = np.random.default_rng(seed)
    files = {}
    for domain, dataset in (("a", "ct_head"), ("b", "mri_t2")):
        (root / dataset).mkdir(parents=True, exist_ok=True)
        for split, count in counts.items():
            path = root / dataset / f"{split}.npz"
            np.savez(path, images=rng.random((count, size, size), dtype=np.float32))
            files[f"{split}_{domain}"] = path
    return files
