"""One encoding for every image of a study, and the page readers open.

Fairness: real and generated images reach the page the same way and nothing but their pixel
values differs. Each image is its stored [0, 1] values rounded to 16-bit integers
(``encode_pixels``: little-endian, row-major, no header, no compression), so every image of a
study is exactly ``height x width x 2`` bytes and the same number of base64 characters: no file
size, filter choice or chunk layout can tell real from generated, as PNG's could. The page
decodes them and draws them on a canvas through the window the reader sets (window / level in
the browser, on the 16-bit values, so a narrow window never bands). The page is built only from
(random id, pixels) pairs in the order shown, the image size and the display settings, so no
truth can reach it; the same inputs give the same bytes.

Real images stored on a coarser grid than the page's 16 bits (the X-ray stage keeps 8-bit films,
k / 255; a CT window of integer HU without resampling gives k / width) would differ from a
generator's continuous output in their bytes (codes all multiples of 257, at most 256 distinct
values) and, at a narrow window, in banding. ``lattice_levels`` finds that grid on the real test set
and ``encode_pixels`` puts every image of the study on it: real images are unchanged, generated
ones are rounded to the precision the real data have.

The organiser's copy of every image (``images/<id>.png``) is a 16-bit grey PNG of the very
pixels in the page, stored uncompressed so that every copy has the same file size (a compressed
PNG's size follows the image's content); it is not in the page.
"""
from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

from pipeline.errors import ConfigError
from pipeline.reader_study import ANSWER_COLUMNS, CONFIDENCE_LEVELS

PAGE_TEMPLATE = Path(__file__).with_name("page.html")
#: Pixels in the page: 16-bit unsigned, little-endian (the page reads them in this order).
PIXEL_DTYPE = np.dtype("<u2")
PIXEL_MAX = int(np.iinfo(PIXEL_DTYPE).max)
#: Grey levels of the screen (canvas) and of the organiser's figures.
SCREEN_MAX = 255
#: How far (in steps of a grid k / L) a stored value may lie from a grid point and still count as
#: on it. float32 holds k / L to within L x 2**-25 steps (< 0.002 for every L the page can carry);
#: a continuous value falls this close by chance with probability 0.02, so a few hundred values
#: never all do.
GRID_TOLERANCE = 0.01
#: Distinct values tried against every candidate grid at once; the survivors are checked on all.
GRID_SCREEN_VALUES = 256
#: Candidate grids tried per block (bounds the memory of the screen).
GRID_BLOCK = 4096


def _on_grid(values: np.ndarray, levels: np.ndarray) -> np.ndarray:
    scaled = values[:, None] * levels[None, :]
    return (np.abs(scaled - np.rint(scaled)) <= GRID_TOLERANCE).all(axis=0)


def lattice_levels(images: np.ndarray) -> int | None:
    """The coarsest grid k / L (L below the page's 16 bits) holding every stored value of ``images``,
    or None when the values are continuous (or as fine as the page's own 16 bits)."""
    values = np.unique(np.asarray(images, dtype=np.float64))
    screen = values[np.unique(np.linspace(0, len(values) - 1, min(GRID_SCREEN_VALUES, len(values))).astype(int))]
    for start in range(1, PIXEL_MAX, GRID_BLOCK):
        candidates = np.arange(start, min(start + GRID_BLOCK, PIXEL_MAX))
        for levels in candidates[_on_grid(screen, candidates)]:
            if _on_grid(values, np.array([levels]))[0]:
                return int(levels)
    return None


def encode_pixels(image: np.ndarray, levels: int | None = None) -> bytes:
    """One (H, W) image of stored values in [0, 1] as the page carries it, first rounded to the
    grid k / ``levels`` when the study's real images sit on one (``lattice_levels``)."""
    image = np.asarray(image, dtype=np.float64)
    if image.ndim != 2:
        raise ValueError(f"an image is (H, W), got shape {image.shape}")
    if not np.all(np.isfinite(image)) or image.min() < 0.0 or image.max() > 1.0:
        raise ValueError("an image of a study must hold finite values in [0, 1]")
    if levels is not None:
        image = np.rint(image * levels) / levels
    return np.rint(image * PIXEL_MAX).astype(PIXEL_DTYPE).tobytes()


def decode_pixels(data: bytes, shape: tuple[int, int]) -> np.ndarray:
    """The (H, W) 16-bit pixels of ``encode_pixels``."""
    return np.frombuffer(data, dtype=PIXEL_DTYPE).reshape(shape)


def pixels_png(data: bytes, shape: tuple[int, int]) -> bytes:
    """The organiser's copy of an image: a 16-bit grey PNG of exactly the page's pixels, stored
    (not compressed), so its file size is the same for every image."""
    buffer = io.BytesIO()
    Image.fromarray(decode_pixels(data, shape).astype(np.uint16)).save(buffer, format="PNG", compress_level=0)
    return buffer.getvalue()


def windowed(pixels: np.ndarray, window: tuple[float, float]) -> np.ndarray:
    """8-bit grey of 16-bit pixels through a window [low, high] on the stored [0, 1] values:
    what the page shows at that window (low black, high white), rounded to the nearest level."""
    low, high = float(window[0]), float(window[1])
    scaled = (np.asarray(pixels, dtype=np.float64) / PIXEL_MAX - low) / (high - low)
    return np.rint(np.clip(scaled, 0.0, 1.0) * SCREEN_MAX).astype(np.uint8)


def check_window(window: Sequence[float], what: str) -> tuple[float, float]:
    if len(window) != 2 or not float(window[1]) > float(window[0]):
        raise ConfigError(f"{what} must be [low, high] with low < high, got {list(window)}")
    return float(window[0]), float(window[1])


def render_page(study_id: str, images: Sequence[tuple[str, bytes]], shape: tuple[int, int],
                window: tuple[float, float], presets: dict[str, tuple[float, float]], confidence: bool) -> str:
    """study.html: ``images`` are (random id, ``encode_pixels`` bytes) in the order shown;
    nothing else about them enters the page."""
    expected = shape[0] * shape[1] * PIXEL_DTYPE.itemsize
    if any(len(pixels) != expected for _, pixels in images):
        raise ValueError(f"every image of a study must be {shape[0]}x{shape[1]} 16-bit pixels ({expected} bytes)")
    data = {
        "study_id": study_id, "confidence": confidence, "columns": list(ANSWER_COLUMNS),
        "confidence_levels": list(CONFIDENCE_LEVELS), "shape": [int(shape[0]), int(shape[1])],
        "pixel_max": PIXEL_MAX, "window": [float(window[0]), float(window[1])],
        "presets": [[name, float(low), float(high)] for name, (low, high) in presets.items()],
        "images": [{"id": token, "pixels": base64.b64encode(pixels).decode("ascii")} for token, pixels in images],
    }
    payload = json.dumps(data, separators=(",", ":")).replace("<", "\\u003c")
    confidence_sentence = ("" if not confidence else
                           " and how sure you are, from 1 (a guess) to 5 (certain), with the keys 1 to 5")
    replacements = {
        "@@STUDY_ID@@": html.escape(study_id), "@@N_IMAGES@@": str(len(images)),
        "@@CONFIDENCE_SENTENCE@@": confidence_sentence, "@@NATIVE_SIZE@@": f"{shape[1]} x {shape[0]}",
        "@@DATA@@": payload,
    }
    page = PAGE_TEMPLATE.read_text(encoding="utf-8")
    for placeholder, value in replacements.items():
        page = page.replace(placeholder, value)
    return page
