"""Cardiothoracic ratio (CTR) from a heart / thorax label map: the clinical definition on masks.

The CTR of a frontal chest radiograph is the heart's widest horizontal diameter over the widest
internal diameter of the thorax (between the inner margins of the ribs). Clinically the heart's
diameter is the sum of its greatest extents to the right and to the left of the midline, which
may lie at different levels: that sum is the heart's whole horizontal extent, so the heart is
measured as the span from its leftmost to its rightmost column over all rows. The thorax is
measured at one level: the longest row of the thorax (its columns from the first to the last
thorax pixel). Widths are in pixels (a pixel's whole width counted: last - first + 1), so the
ratio needs no pixel spacing. An image with no heart or no thorax has no CTR.

Label maps use the encoding of ``data/slices/cxr_cardiomegaly`` (``LABELS``, defined in
pipeline/labels.py): 0 background, 1 lung fields / thorax, 2 heart; the heart counts as part of
the thorax.
"""

from __future__ import annotations

import numpy as np

from pipeline.labels import CTR_BACKGROUND as BACKGROUND  # noqa: F401 (part of this module's API)
from pipeline.labels import CTR_HEART as HEART
from pipeline.labels import CTR_LABELS as LABELS  # noqa: F401
from pipeline.labels import CTR_THORAX as THORAX


def heart_width_px(label_map: np.ndarray) -> int:
    """Columns from the heart's leftmost to its rightmost pixel (0 without a heart)."""
    columns = np.flatnonzero(np.any(np.asarray(label_map) == HEART, axis=0))
    return int(columns[-1] - columns[0] + 1) if columns.size else 0


def thoracic_width_px(label_map: np.ndarray) -> int:
    """The longest row span of the thorax (heart included); 0 without a thorax."""
    inside = np.asarray(label_map) >= THORAX
    rows = np.flatnonzero(inside.any(axis=1))
    if not rows.size:
        return 0
    widths = [np.flatnonzero(inside[row]) for row in rows]
    return int(max(cols[-1] - cols[0] + 1 for cols in widths))


def ctr_from_masks(label_map: np.ndarray) -> float:
    """Max horizontal heart width / max internal thoracic width of a (H, W) label map; NaN if either is absent."""
    label_map = np.asarray(label_map)
    if label_map.ndim != 2:
        raise ValueError(f"ctr_from_masks: needs one (H, W) label map, got shape {label_map.shape}")
    heart, thorax = heart_width_px(label_map), thoracic_width_px(label_map)
    if heart == 0 or thorax == 0:
        return float("nan")
    return heart / thorax
