"""Helpers of the training tests: random unpaired slices laid out as the slices stage lays them
out, and how far two trained CycleGANs ended apart."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

from pipeline.models.cyclegan import CycleGAN
from pipeline.engine.knobs import split_seed


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


def disagreement(ours: Mapping[str, Any], theirs: Mapping[str, Any], model_cfg: Mapping[str, Any], seed: int,
                 images: torch.Tensor) -> dict[str, float]:
    """Per network: ||ours - theirs|| / ||theirs - initial|| of its outputs on ``images``, for two
    checkpoints of runs from the same ``seed``: how far the runs ended apart, against how far
    training moved them from the initialisation.

    Runs that differ only in float rounding (other reduction orders, GPU kernels, bf16) do not end
    bit-identical: Adam makes +-lr steps of gradients that are pure rounding noise (the conv
    biases in front of instance norm, whose true gradient is zero) and GAN training amplifies
    the difference; this ratio stays small for them and grows when the arithmetic differs."""
    torch.manual_seed(split_seed(seed)[0])
    model = CycleGAN(dict(model_cfg), None, 0).eval()
    ratios = {}
    with torch.no_grad():
        for name, net in model.networks().items():
            initial = net(images)
            outputs = []
            for checkpoint in (ours, theirs):
                net.load_state_dict({k: v.cpu() for k, v in checkpoint["networks"][name].items()})
                outputs.append(net(images))
            ratios[name] = ((outputs[0] - outputs[1]).norm() / (outputs[1] - initial).norm()).item()
    return ratios
