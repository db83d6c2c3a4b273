from __future__ import annotations

import numpy as np
import pytest

from pipeline.evaluate.measures.regions import change_inside_mask, difference_maps, upscale_bicubic


def test_share_of_change_inside_the_mask():
    source = np.zeros((2, 8, 8), np.float32)
    translated = source.copy()
    translated[0, :4] = 0.5  # top half changed by 0.5 -> 16 px x 0.5 = 16 inside
    translated[1, 6:] = 0.25  # bottom rows changed -> 16 px x 0.25 = 4 outside
    mask = np.zeros((2, 8, 8), bool)
    mask[:, :4] = True
    inside, total, area = change_inside_mask(source, translated, mask)
    assert inside.tolist() == [16.0, 0.0] and total.tolist() == [16.0, 4.0] and area.tolist() == [0.5, 0.5]
    assert inside.sum() / total.sum() == pytest.approx(0.8)


def test_bicubic_upscaling_keeps_flat_images_and_the_range():
    flat = np.full((1, 8, 8), 0.3, np.float32)
    assert np.allclose(upscale_bicubic(flat, 32), 0.3, atol=1e-6)
    edge = np.zeros((1, 8, 8), np.float32)
    edge[:, :, 4:] = 1.0
    up = upscale_bicubic(edge, 64)
    assert up.shape == (1, 64, 64) and up.min() >= 0.0 and up.max() <= 1.0  # bicubic overshoot clipped
    source_up, diff = difference_maps(edge, 1.0 - edge, 64)
    assert diff.shape == (1, 64, 64) and diff.max() == pytest.approx(1.0)
    np.testing.assert_allclose(source_up, up)
