"""Regions of change: where a translation altered the input (report 000's difference maps).

G(x) - x (signed: lighter or darker) and |G(x) - x| show a clinician what the translator changed. Maps for figures are made on images
upscaled with bicubic interpolation (both x and G(x), then the difference), so small slices are
readable beside a full-resolution radiograph. Where the source carries a region mask (e.g. lung
fields of the built-in chest radiographs), the share of the total change inside it is a number.
"""

from __future__ import annotations

import numpy as np


def upscale_bicubic(images: np.ndarray, size: int) -> np.ndarray:
    """(N, H, W) -> (N, size, size) by bicubic interpolation (torch, align_corners=False), clipped to [0, 1]."""
    import torch

    tensor = torch.from_numpy(np.asarray(images, np.float32))[:, None]
    resized = torch.nn.functional.interpolate(tensor, size=(size, size), mode="bicubic", align_corners=False)
    return resized[:, 0].clamp(0.0, 1.0).numpy()


def difference_maps(source: np.ndarray, translated: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Upscaled sources and the signed change G(x) - x on the upscaled grid, both (N, size, size).

    Signed, as report 000 shows it (where the translation made the image lighter or darker);
    its absolute value is the amount of change.
    """
    source_up = upscale_bicubic(source, size)
    return source_up, upscale_bicubic(translated, size) - source_up


def change_inside_mask(
    source: np.ndarray, translated: np.ndarray, mask: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per image: absolute change inside the mask, total absolute change, and the mask's area fraction.

    Computed on the native grid (the mask's); share inside = sum(inside) / sum(total) over images.
    """
    change = np.abs(np.asarray(translated, np.float64) - np.asarray(source, np.float64))
    mask = np.asarray(mask, bool)
    return (change * mask).sum(axis=(1, 2)), change.sum(axis=(1, 2)), mask.mean(axis=(1, 2))
