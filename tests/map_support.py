"""Small hand-made thorax-like label maps and images for the map-to-image evaluation tests.

Each "patient" gets a body ellipse (class 1), two lungs (2), a heart (3), a vertebral ring (4)
around a spinal canal (5), with per-patient size and position jitter; its image gives every
class a mean grey value plus a texture (seeded noise, smoothed or striped per class), so a
segmenter can learn the classes and texture measures can tell two textures apart.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

CLASS_MEANS = (0.0, 0.45, 0.12, 0.55, 0.85, 0.5)


def thorax_map(size: int, rng: np.random.Generator) -> np.ndarray:
    """(size, size) uint8 classes 0..5: one jittered thorax-like map."""
    yy, xx = np.mgrid[:size, :size] / size
    jitter = lambda scale: rng.uniform(-scale, scale)
    cy, cx = 0.5 + jitter(0.03), 0.5 + jitter(0.03)
    label = np.zeros((size, size), np.uint8)
    body = ((yy - cy) / (0.36 + jitter(0.03))) ** 2 + ((xx - cx) / (0.45 + jitter(0.03))) ** 2 < 1
    label[body] = 1
    for side in (-1, 1):
        lung = ((yy - cy + 0.02) / 0.22) ** 2 + ((xx - cx - side * (0.2 + jitter(0.02))) / 0.13) ** 2 < 1
        label[lung & body] = 2
    heart = ((yy - cy + 0.04) / 0.12) ** 2 + ((xx - cx + 0.05) / (0.12 + jitter(0.02))) ** 2 < 1
    label[heart & body] = 3
    spine_r = np.hypot(yy - (cy + 0.24), xx - cx)
    label[(spine_r < 0.09) & body] = 4
    label[(spine_r < 0.04) & body] = 5
    return label


def texture(label_map: np.ndarray, rng: np.random.Generator, means=CLASS_MEANS, grain: float = 0.06,
            smooth: float = 1.0) -> np.ndarray:
    """(H, W) float32 image in [0, 1]: class means plus smoothed seeded noise."""
    noise = ndimage.gaussian_filter(rng.standard_normal(label_map.shape), smooth) * grain / max(smooth, 1) * 3
    image = np.asarray(means, np.float64)[label_map] + noise * (label_map > 0)
    return np.clip(image, 0.0, 1.0).astype(np.float32)


def slices_npz(path, n_patients: int, per_patient: int, size: int, seed: int, prefix: str = "p",
               hu_window=(-1000.0, 400.0)) -> dict[str, np.ndarray]:
    """Write a slices npz of the map-to-image contract and return its arrays."""
    rng = np.random.default_rng(seed)
    maps, images, subjects = [], [], []
    for p in range(n_patients):
        for _ in range(per_patient):
            label = thorax_map(size, rng)
            maps.append(label)
            images.append(texture(label, rng))
            subjects.append(f"{prefix}{p:03d}")
    arrays = {"images": np.stack(images), "label_maps": np.stack(maps), "subject_ids": np.array(subjects),
              "slice_index": np.arange(len(maps), dtype=np.int64),
              "hu_window": np.asarray(hu_window, np.float32)}
    np.savez_compressed(path, **arrays)
    return arrays


class OrganPainter:
    """A transparent map-to-image generator for tests: paints each organ of the map with the fixed
    style image's class mean plus z-seeded grain (the map decides the anatomy, the style the grey values)."""

    task = "map_to_image"
    perceptual_weights = "random"
    n_labels = 6
    nz = 8

    def __init__(self, style_image: np.ndarray, style_map: np.ndarray, style_subject: str = "p000"):
        self.style_image, self.style_map, self.style_subject = style_image, style_map, style_subject
        self.image_size = style_image.shape
        self.means = [float(style_image[style_map == c].mean()) if (style_map == c).any() else 0.0 for c in range(6)]

    def generate(self, maps: np.ndarray, seed: int = 0, z=None) -> np.ndarray:
        rng = np.random.default_rng(seed)
        return np.stack([texture(m, rng, self.means) for m in maps])
