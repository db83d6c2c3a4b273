"""ctr_from_masks on hand-drawn maps whose widths are known by construction."""

from __future__ import annotations

import math

import numpy as np
import pytest

from pipeline.preprocess.ctr import HEART, THORAX, ctr_from_masks


def _map(height: int = 60, width: int = 80) -> np.ndarray:
    return np.zeros((height, width), np.uint8)


def test_rectangles_give_width_over_width():
    label_map = _map()
    label_map[10:50, 10:70] = THORAX  # 60 columns wide
    label_map[30:45, 25:40] = HEART  # 15 columns wide
    assert ctr_from_masks(label_map) == pytest.approx(15 / 60)


def test_heart_width_spans_both_sides_of_the_midline_at_different_levels():
    """Clinically MRD + MLD: the greatest extents to either side may lie on different rows."""
    label_map = _map()
    label_map[5:55, 0:80] = THORAX  # 80 wide
    label_map[20:25, 30:41] = HEART  # right part: columns 30..40
    label_map[35:40, 38:60] = HEART  # left part, lower: columns 38..59
    assert ctr_from_masks(label_map) == pytest.approx((59 - 30 + 1) / 80)


def test_thorax_width_is_the_widest_single_row_and_includes_the_heart():
    label_map = _map()
    label_map[10:20, 30:50] = THORAX  # 20 wide
    label_map[20:40, 15:65] = THORAX  # 50 wide: the widest row
    label_map[38:50, 20:60] = THORAX  # 40 wide
    label_map[40:58, 30:74] = HEART  # below the widest thorax row, itself 44 wide: widest row is now 44
    # rows 40..49 hold thorax 20..59 and heart 30..73: span 20..73 = 54 columns (> 50)
    assert ctr_from_masks(label_map) == pytest.approx(44 / 54)


def test_tilted_ellipse_heart_matches_its_analytic_width():
    """The horizontal extent of a rotated ellipse is 2 sqrt(a^2 cos^2 t + b^2 sin^2 t)."""
    size, a, b, tilt = 801, 150.0, 100.0, 0.4
    rows, cols = np.mgrid[0:size, 0:size].astype(float) - size // 2
    c, s = math.cos(tilt), math.sin(tilt)
    inside = ((c * cols + s * rows) / a) ** 2 + ((-s * cols + c * rows) / b) ** 2 < 1
    label_map = np.full((size, size), THORAX, np.uint8)
    label_map[inside] = HEART
    expected = 2 * math.sqrt((a * c) ** 2 + (b * s) ** 2) / size
    assert ctr_from_masks(label_map) == pytest.approx(expected, abs=2 / size)


def test_missing_heart_or_thorax_gives_nan_and_bad_shapes_fail():
    assert math.isnan(ctr_from_masks(_map()))
    only_thorax = _map()
    only_thorax[10:20, 10:20] = THORAX
    assert math.isnan(ctr_from_masks(only_thorax))
    with pytest.raises(ValueError, match="one"):
        ctr_from_masks(np.zeros((2, 4, 4), np.uint8))
