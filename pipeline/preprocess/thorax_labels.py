"""Report 003's thorax segmentation maps: grey-value label images <-> class indices.

The six classes and their grey values are defined in pipeline/labels.py (the phantom source writes
them, this stage reads them); here the conversion and its checks.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline.errors import InputDataError
from pipeline.labels import THORAX_CLASS_NAMES as CLASS_NAMES
from pipeline.labels import THORAX_GREY_VALUES as GREY_VALUES

N_CLASSES = len(CLASS_NAMES)


def grey_to_classes(grey: np.ndarray, path: str | Path) -> np.ndarray:
    """A label image of grey values -> class indices (uint8); any other value is an InputDataError
    naming ``path``, the value and how many pixels hold it."""
    grey = np.asarray(grey)
    if grey.ndim != 2:
        raise InputDataError(path, f"label image must be one grey channel (2-D), got shape {grey.shape}")
    lookup = np.full(256, 255, np.uint8)
    lookup[list(GREY_VALUES)] = np.arange(N_CLASSES, dtype=np.uint8)
    if grey.dtype.kind not in "ui" or grey.min() < 0 or grey.max() > 255:
        raise InputDataError(path, f"label image must hold 8-bit grey values {GREY_VALUES}, got dtype {grey.dtype}")
    classes = lookup[grey.astype(np.int64)]
    bad = classes == 255
    if bad.any():
        values = sorted(int(v) for v in np.unique(grey[bad]))
        raise InputDataError(
            path,
            f"label image holds grey value(s) {values[:10]} ({int(bad.sum())} pixels) outside report 003's "
            f"six {GREY_VALUES}",
        )
    return classes


def classes_to_grey(classes: np.ndarray) -> np.ndarray:
    """Class indices 0..5 -> report 003's grey values (uint8), for files and figures."""
    classes = np.asarray(classes)
    if classes.size and (classes.min() < 0 or classes.max() >= N_CLASSES):
        raise ValueError(f"class indices must lie in 0..{N_CLASSES - 1}, got {classes.min()}..{classes.max()}")
    return np.asarray(GREY_VALUES, np.uint8)[classes.astype(np.int64)]


def read_label_image(path: str | Path) -> np.ndarray:
    """A label PNG (grey values) as class indices; an unreadable file or a stray value names the file."""
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    try:
        with Image.open(path) as image:
            if image.mode not in ("L", "P", "I", "I;16"):
                raise InputDataError(path, f"label image must be single-channel grey (mode L), got mode {image.mode}")
            grey = np.asarray(image.convert("L") if image.mode == "P" else image)
    except (OSError, UnidentifiedImageError) as exc:
        raise InputDataError(path, f"cannot be read as an image ({exc.__class__.__name__})") from exc
    return grey_to_classes(grey, path)
