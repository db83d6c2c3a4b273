from __future__ import annotations

import numpy as np
import pytest
from scipy.ndimage import gaussian_filter

from pipeline.evaluate.measures.image_metrics import ssim_per_image
from pipeline.evaluate.measures.steganography import add_noise, blur, steganography_check

AMPLITUDE = 0.01


@pytest.fixture
def sources() -> np.ndarray:
    images = gaussian_filter(np.random.default_rng(0).random((4, 32, 32)), sigma=(0, 2, 2))
    return ((images - images.min()) / (images.max() - images.min())).astype(np.float32)


def run_check(source, forward, backward, **knobs):
    translated = forward(source)
    cycle = ssim_per_image(source, backward(translated))
    return steganography_check(source, translated, cycle, backward, **knobs)


def test_a_generator_hiding_the_source_in_faint_signal_is_flagged(sources):
    # G(x) looks like a flat grey image; x survives only as a 1% ripple that F amplifies back.
    hide = lambda x: (0.5 + AMPLITUDE * x).astype(np.float32)
    reveal = lambda y: np.clip((y - 0.5) / AMPLITUDE, 0, 1).astype(np.float32)
    block, values = run_check(sources, hide, reveal, blur_sigma=1.0, noise_sigma=0.02, max_drop=0.1)
    assert block["cycle_ssim"] == pytest.approx(1.0, abs=1e-3)
    assert block["noise"]["drop"] > 0.5 and block["flagged"] is True
    assert values["stego_noise_drop"].shape == (4,)


def test_an_honest_translator_barely_notices(sources):
    invert = lambda x: (1.0 - x).astype(np.float32)
    block, _ = run_check(sources, invert, invert, blur_sigma=1.0, noise_sigma=0.02, max_drop=0.1)
    assert block["blur"]["drop"] < 0.1 and block["noise"]["drop"] < 0.1 and block["flagged"] is False
    assert block["blur"]["drop"] > 0.0  # blurring does cost a little


def test_perturbations_stay_in_range_and_repeat_with_the_seed(sources):
    noisy = add_noise(sources, 0.5, np.random.default_rng(1))
    assert noisy.min() >= 0.0 and noisy.max() <= 1.0
    np.testing.assert_array_equal(noisy, add_noise(sources, 0.5, np.random.default_rng(1)))
    assert blur(sources, 1.0).std() < sources.std()
