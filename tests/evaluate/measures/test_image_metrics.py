from __future__ import annotations

import numpy as np
import pytest
from scipy.ndimage import gaussian_filter
from skimage.metrics import structural_similarity

from pipeline.evaluate.measures.image_metrics import (
    mae_hu_per_image,
    mae_per_image,
    psnr_per_image,
    ssim_per_image,
    to_hu,
)


@pytest.fixture
def image_pairs() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(7)
    reference = gaussian_filter(rng.random((3, 48, 48)), sigma=(0, 2, 2))
    reference = (reference - reference.min()) / (reference.max() - reference.min())
    test = np.clip(reference + rng.normal(0, 0.05, reference.shape), 0, 1)
    return reference.astype(np.float32), test.astype(np.float32)


def wang_ssim(x: np.ndarray, y: np.ndarray, data_range: float) -> float:
    """SSIM written out from Wang et al. 2004 (Gaussian 11x11, sigma 1.5), averaged off the border."""
    x, y = x.astype(np.float64), y.astype(np.float64)
    blur = lambda img: gaussian_filter(img, sigma=1.5, truncate=3.5)
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    mx, my = blur(x), blur(y)
    vx, vy, cxy = blur(x * x) - mx * mx, blur(y * y) - my * my, blur(x * y) - mx * my
    ssim_map = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx**2 + my**2 + c1) * (vx + vy + c2))
    return float(ssim_map[5:-5, 5:-5].mean())


def test_ssim_matches_skimage_with_gaussian_window(image_pairs):
    reference, test = image_pairs
    ours = ssim_per_image(reference, test)
    expected = [
        structural_similarity(
            r.astype(np.float64),
            t.astype(np.float64),
            data_range=1.0,
            gaussian_weights=True,
            sigma=1.5,
            use_sample_covariance=False,
        )
        for r, t in zip(reference, test)
    ]
    np.testing.assert_allclose(ours, expected, rtol=1e-12)
    assert ours.shape == (3,)


def test_ssim_matches_the_formula_written_out(image_pairs):
    reference, test = image_pairs
    ours = ssim_per_image(reference, test)
    np.testing.assert_allclose(ours, [wang_ssim(r, t, 1.0) for r, t in zip(reference, test)], rtol=1e-6)
    assert np.all(ours < 0.99)  # noise really lowers it


def test_ssim_depends_on_the_stated_data_range(image_pairs):
    reference, test = image_pairs
    assert np.all(ssim_per_image(reference, test, data_range=255.0) > ssim_per_image(reference, test) + 0.05)
    np.testing.assert_allclose(ssim_per_image(reference, reference), 1.0)


def test_psnr_and_mae_on_known_arrays():
    reference = np.zeros((2, 8, 8), np.float32)
    test = np.full((2, 8, 8), 0.1, np.float32)
    test[1] = 0.5
    np.testing.assert_allclose(psnr_per_image(reference, test), [20.0, 10 * np.log10(1 / 0.25)], rtol=1e-6)
    np.testing.assert_allclose(mae_per_image(reference, test), [0.1, 0.5], rtol=1e-6)
    assert np.isposinf(psnr_per_image(reference, reference)).all()


def test_mae_in_hu_on_a_known_offset():
    window = (40.0, 80.0)
    np.testing.assert_allclose(to_hu(np.array([0.0, 0.5, 1.0]), window), [0.0, 40.0, 80.0])
    reference = np.full((1, 4, 4), 0.25, np.float32)
    shifted = reference + np.float32(0.1)
    np.testing.assert_allclose(mae_hu_per_image(reference, shifted, window), [8.0], rtol=1e-5)
    np.testing.assert_allclose(mae_hu_per_image(reference, shifted, (600.0, 2800.0)), [280.0], rtol=1e-5)


def test_mismatched_shapes_are_refused():
    with pytest.raises(ValueError, match="shape"):
        ssim_per_image(np.zeros((2, 8, 8)), np.zeros((2, 8, 9)))
    with pytest.raises(ValueError, match="shape"):
        mae_per_image(np.zeros((8, 8)), np.zeros((8, 8)))
