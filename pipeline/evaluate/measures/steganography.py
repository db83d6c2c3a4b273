"""Steganography check (Chu et al. 2017, "CycleGAN, a master of steganography").

A CycleGAN can satisfy its cycle loss by hiding the source image in low-amplitude, high-frequency
signal of the translation instead of in visible structure. If so, slightly blurring or noising
G(x) before mapping it back destroys the hidden copy and the cycle reconstruction F(G(x))
collapses; an honest translator barely notices. The drop in cycle SSIM measures that.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
from scipy.ndimage import gaussian_filter

from pipeline.evaluate.measures.image_metrics import ssim_per_image


def blur(images: np.ndarray, sigma: float) -> np.ndarray:
    """In-plane Gaussian blur of each (N, H, W) slice, sigma in pixels."""
    return gaussian_filter(np.asarray(images, np.float32), sigma=(0.0, sigma, sigma), mode="nearest")


def add_noise(images: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """Gaussian noise of ``sigma`` ([0, 1] units), clipped back to [0, 1] (the translator's input range)."""
    noisy = np.asarray(images, np.float32) + rng.normal(0.0, sigma, size=np.shape(images)).astype(np.float32)
    return np.clip(noisy, 0.0, 1.0)


def steganography_check(
    source: np.ndarray,
    translated: np.ndarray,
    cycle_ssim: np.ndarray,
    translate_back: Callable[[np.ndarray], np.ndarray],
    blur_sigma: float = 1.0,
    noise_sigma: float = 0.02,
    max_drop: float = 0.1,
    seed: int = 0,
) -> tuple[dict, dict[str, np.ndarray]]:
    """Cycle SSIM after perturbing G(x), per image and summarised; flags a drop above ``max_drop``.

    source, translated: x and G(x), (N, H, W) in [0, 1]; cycle_ssim: SSIM(x, F(G(x))) per image.
    translate_back: F, applied to the perturbed translations.
    blur_sigma: Gaussian blur of G(x) in pixels (default 1.0); noise_sigma: Gaussian noise std in
    [0, 1] units (default 0.02, about 5 grey levels of 255); max_drop: largest acceptable drop of
    the mean cycle SSIM (default 0.1); seed: noise seed (default 0).
    Returns the block for metrics.json (means; the caller adds intervals) and the per-image values.
    """
    perturbed = {
        "blur": blur(translated, blur_sigma),
        "noise": add_noise(translated, noise_sigma, np.random.default_rng(seed)),
    }
    values: dict[str, np.ndarray] = {}
    block: dict = {
        "compares": "SSIM(x, F(G(x))) minus SSIM(x, F(perturb(G(x)))); a large drop means G(x) hides x in "
        "imperceptible signal",
        "max_drop": max_drop,
        "cycle_ssim": float(np.mean(cycle_ssim)),
    }
    for kind, images in perturbed.items():
        ssim = ssim_per_image(source, np.clip(translate_back(images), 0.0, 1.0))
        values[f"stego_{kind}_ssim"] = ssim
        values[f"stego_{kind}_drop"] = cycle_ssim - ssim
        block[kind] = {
            "sigma": blur_sigma if kind == "blur" else noise_sigma,
            "sigma_unit": "pixels" if kind == "blur" else "[0,1] intensity",
            "cycle_ssim": float(ssim.mean()),
            "drop": float((cycle_ssim - ssim).mean()),
        }
    block["flagged"] = bool(max(block["blur"]["drop"], block["noise"]["drop"]) > max_drop)
    return block, values
