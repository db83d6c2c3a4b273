"""The six classes of report 003's thorax segmentation maps, and their on-disk grey values.

Report 003 draws its maps with the grey values {0, 50, 100, 150, 200, 230} (its Fig. 2) and does
not say which organ each one is. This project fixes the classes below (docs/experiment-seg2ct.md,
"Data"). Inside npz files and models a map holds the CLASS INDEX 0..5 (uint8); the grey values
are only the encoding of label images on disk and in figures. Which phantom structure falls in
which class is a param (``phantom_tcia_thorax.structure_labels``).

* 0 ``background``: air outside the body (and the table, if any);
* 1 ``body``: soft tissue of the body wall and mediastinum: skin, subcutaneous fat, muscle,
  mediastinal fat, oesophagus, the trachea's wall;
* 2 ``lungs``: lung fields including the airways (trachea and bronchi lumen) and the vessels
  inside the lungs, as lung masks are usually drawn;
* 3 ``heart_vessels``: heart and mediastinal blood vessels (aorta, pulmonary trunk, vena cava);
* 4 ``bone``: vertebrae, ribs, sternum, scapulae (cortical and trabecular);
* 5 ``spinal_canal``: spinal canal with the cord.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline.errors import InputDataError

CLASS_NAMES = ("background", "body", "lungs", "heart_vessels", "bone", "spinal_canal")
#: Report 003's grey values, in class order (class index i is written as GREY_VALUES[i]).
GREY_VALUES = (0, 50, 100, 150, 200, 230)
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
