"""The synthetic-CT block (MAE / PSNR in HU inside the body mask, SynthRAD's way) against a hand
computation on a phantom pair whose HU are known region by region."""
from __future__ import annotations

import math

import numpy as np
import pytest

from pipeline.evaluate.measures.intervals import IntervalPolicy
from pipeline.evaluate.measures.synthetic_ct import SYNTHRAD_HU_CLIP, score_synthetic_ct

# The head phantom's tissue values (pipeline/sources/phantom_head.py TISSUE_HU).
AIR, BRAIN, BONE = -1000.0, 40.0, 1400.0
METAL = 3500.0  # beyond SynthRAD's clip: counts as 3000
WINDOW_RANGE = (0.0, 79.0)  # what a brain-window (40/80) translator can output


def phantom_pair() -> tuple[np.ndarray, np.ndarray]:
    """Real CT and a windowed translator's synthetic CT, one 16x16 slice each.

    Real: air, a 10x10 head (rows / columns 3..12) = a one-pixel bone ring (36 px) around brain
    (64 px) that holds a 2x2 air sinus (4 px) and one metal pixel; apart from the head a 2-pixel
    head holder (800 HU, not body). Synthetic: brain 50 HU everywhere in the head's inside (the
    sinus and metal too, clipped to the window's 0..79), bone at the window's top, 79 HU; air 0 HU.
    """
    real = np.full((16, 16), AIR)
    real[3:13, 3:13] = BONE
    real[4:12, 4:12] = BRAIN
    real[7:9, 7:9] = AIR
    real[5, 5] = METAL
    real[0, 0:2] = 800.0
    synthetic = np.zeros((16, 16))
    synthetic[3:13, 3:13] = 79.0
    synthetic[4:12, 4:12] = 50.0
    synthetic[7:9, 7:9] = 0.0
    return real[None], synthetic[None]


def test_mae_psnr_and_floor_by_hand():
    real, synthetic = phantom_pair()
    block, per_image = score_synthetic_ct(real, synthetic, np.array(["s1"]), IntervalPolicy(), SYNTHRAD_HU_CLIP,
                                          -500.0, "test", window_range_hu=WINDOW_RANGE)
    # body = the 10x10 head (sinus filled, holder left out): 100 pixels
    brain_error = 59 * abs(BRAIN - 50.0)            # 59 brain pixels
    metal_error = abs(3000.0 - 50.0)                # metal clipped to 3000
    bone_error = 36 * abs(BONE - 79.0)              # the ring
    sinus_error = 4 * abs(AIR - 0.0)
    expected_mae = (brain_error + metal_error + bone_error + sinus_error) / 100  # = 550.96
    assert expected_mae == pytest.approx(550.96)
    assert block["mae_hu_body"]["mean"] == pytest.approx(expected_mae)
    squared = 59 * 10.0**2 + 2950.0**2 + 36 * 1321.0**2 + 4 * 1000.0**2
    assert block["psnr_hu_body"]["mean"] == pytest.approx(10 * math.log10(4024.0**2 / (squared / 100)))
    assert block["psnr_hu_body"]["data_range"] == 4024.0
    # a perfect translator in the window: brain exact, metal 3000 -> 79, bone 1400 -> 79, sinus -1000 -> 0
    expected_floor = ((3000.0 - 79.0) + 36 * (BONE - 79.0) + 4 * 1000.0) / 100  # = 544.77
    assert block["mae_hu_body_floor"]["mean"] == pytest.approx(expected_floor)
    assert block["body_fraction"] == pytest.approx(100 / 256)
    assert block["n_without_body"] == 0 and block["hu_clip"] == [-1024.0, 3000.0]
    np.testing.assert_allclose(per_image["mae_hu_body"], [expected_mae])


def test_a_translator_not_confined_to_a_window_has_no_floor_and_slices_without_body_are_left_out():
    real, synthetic = phantom_pair()
    real = np.concatenate([real, np.full_like(real, AIR)])  # a second slice: air only
    synthetic = np.concatenate([real[:1], np.zeros_like(real[:1])])  # the first slice exact
    block, per_image = score_synthetic_ct(real, synthetic, np.array(["s1", "s2"]), IntervalPolicy(),
                                          (-1000.0, 1000.0), -500.0, "test")
    assert block["mae_hu_body"]["mean"] == 0.0 and block["mae_hu_body"]["n"] == 1
    assert block["psnr_hu_body"]["n_infinite"] == 1  # identical inside the body
    assert block["n_without_body"] == 1 and np.isnan(per_image["mae_hu_body"][1])
    assert block["mae_hu_body_floor"] is None and block["mae_hu_body_floor_reason"]
    with pytest.raises(ValueError, match="low < high"):
        score_synthetic_ct(real, synthetic, np.array(["s1", "s2"]), IntervalPolicy(), (10.0, 10.0), -500.0, "test")
