"""The DCGAN learns a varied distribution, not one image: a short training run on discs drawn at
random places (16 px, black background like the windowed CT's air) must give samples that differ
from one another about as much as the real images do, with the data's brightness. The D
normalisation is the CPU profile's (spectral), read from params.yaml."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import yaml

from pipeline.models.dcgan import DCGAN

SIZE, N_REAL, STEPS, BATCH = 16, 512, 500, 32


def discs(n: int, rng: np.random.Generator) -> np.ndarray:
    """(n, SIZE, SIZE) in [-1, 1]: a bright disc of radius 3 centred anywhere in the middle 8 x 8."""
    yy, xx = np.mgrid[:SIZE, :SIZE]
    centres = rng.uniform(4, SIZE - 4, size=(n, 2))
    inside = (yy[None] - centres[:, 0, None, None]) ** 2 + (xx[None] - centres[:, 1, None, None]) ** 2 <= 9
    return np.where(inside, 1.0, -1.0).astype(np.float32)


def mean_pairwise_rms(images: np.ndarray) -> float:
    flat = images.reshape(len(images), -1).astype(np.float64)
    squared = (flat ** 2).sum(1)[:, None] + (flat ** 2).sum(1)[None] - 2 * flat @ flat.T
    distances = np.sqrt(np.maximum(squared, 0) / flat.shape[1])
    return float(distances[np.triu_indices(len(images), 1)].mean())


def train_on_discs(overrides: dict, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    real = torch.from_numpy(discs(N_REAL, rng))[:, None]
    model = DCGAN({"nz": 16, "ngf": 16, "ndf": 16, **overrides}, None, seed, image_size=(SIZE, SIZE))
    order = torch.Generator().manual_seed(seed)
    for step in range(1, STEPS + 1):
        rows = torch.randint(0, N_REAL, (BATCH,), generator=order)
        for phase, period in model.phases.items():
            if step % period == 0:
                model.train_phase(phase, {"images": real[rows]})
    model.eval()
    with torch.no_grad():
        samples = model.G(torch.randn(128, 16, generator=torch.Generator().manual_seed(seed + 1)))[:, 0].numpy()
    return samples, discs(128, np.random.default_rng(seed + 1))


@pytest.fixture(scope="module")
def profile_d_norm():
    with open("params.yaml") as f:
        params = yaml.safe_load(f)
    return params["experiments"]["dcgan_ct_brain"]["model"]["d_norm"]


def test_dcgan_samples_become_varied_and_as_bright_as_the_data(profile_d_norm):
    torch.set_num_threads(1)
    samples, real = train_on_discs({"d_norm": profile_d_norm, "lr_g": 1e-3, "lr_d": 1e-3})
    ratio = mean_pairwise_rms(samples) / mean_pairwise_rms(real)
    assert ratio >= 0.6, f"samples {ratio:.2f}x as varied as the real discs: collapsed"
    assert abs(samples.mean() - real.mean()) < 0.1
    # not noise: most pixels are near the two values the data holds
    assert np.mean(np.abs(np.abs(samples) - 1) < 0.5) > 0.8
