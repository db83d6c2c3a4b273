from __future__ import annotations

import numpy as np
import pytest
from scipy.ndimage import gaussian_filter
from skimage.metrics import structural_similarity

from pipeline.evaluate.measures.image_metrics import (
    body_mask,
    centroid_shift_per_image,
    foreground_scale_error_per_image,
    mae_hu_per_image,
    mae_in_mask,
    mae_per_image,
    psnr_in_mask,
    psnr_per_image,
    ssim_per_image,
    to_hu,
    window_range_hu,
)
from pipeline.preprocess.window import window_hu


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


def test_to_hu_inverts_the_window_stage():
    """to_hu is the exact inverse of the window stage's DICOM VOI function inside the window."""
    for center, width in ((40.0, 80.0), (600.0, 2800.0), (-600.0, 1500.0)):
        low, high = window_range_hu((center, width))
        hu = np.linspace(low, high, 17)
        np.testing.assert_allclose(to_hu(window_hu(hu, center, width), (center, width)), hu, atol=1e-3 * width)
    assert window_range_hu((40.0, 80.0)) == (0.0, 79.0)  # DICOM linear: center - 0.5 -+ (width - 1) / 2


def test_mae_in_hu_on_a_known_offset():
    window = (40.0, 80.0)
    np.testing.assert_allclose(to_hu(np.array([0.0, 0.5, 1.0]), window), [0.0, 39.5, 79.0])
    reference = np.full((1, 4, 4), 0.25, np.float32)
    shifted = reference + np.float32(0.1)
    np.testing.assert_allclose(mae_hu_per_image(reference, shifted, window), [0.1 * 79.0], rtol=1e-5)
    np.testing.assert_allclose(mae_hu_per_image(reference, shifted, (600.0, 2800.0)), [0.1 * 2799.0], rtol=1e-5)


def head_phantom() -> np.ndarray:
    """One 16x16 CT slice in HU: air, a 10x10 head (rows / columns 3..12) with a one-pixel bone ring
    (36 px, 1400 HU), brain inside (40 HU) holding a 2x2 air sinus (-1000 HU), and, apart from the
    head, a 2-pixel head holder (800 HU)."""
    ct = np.full((16, 16), -1000.0)
    ct[3:13, 3:13] = 1400.0
    ct[4:12, 4:12] = 40.0
    ct[7:9, 7:9] = -1000.0
    ct[0, 0:2] = 800.0
    return ct[None]


def test_body_mask_is_the_largest_component_with_holes_filled():
    mask = body_mask(head_phantom(), threshold_hu=-500.0)
    expected = np.zeros((1, 16, 16), bool)
    expected[0, 3:13, 3:13] = True  # the head, its sinus filled in, without the holder
    np.testing.assert_array_equal(mask, expected)
    assert not body_mask(np.full((2, 8, 8), -1000.0)).any()  # nothing above the threshold: empty
    with pytest.raises(ValueError, match="N, H, W"):
        body_mask(np.zeros((8, 8)))


def test_mae_and_psnr_in_a_mask_by_hand():
    reference = np.zeros((2, 4, 4))
    test = reference.copy()
    test[0, 0, 0], test[0, 3, 3] = 10.0, -20.0  # inside the mask: |10| and |-20|
    test[0, 1, 1] = 1000.0  # outside the mask: must not count
    masks = np.zeros((2, 4, 4), bool)
    masks[0, 0, :] = masks[0, 3, :] = True  # 8 pixels
    np.testing.assert_allclose(mae_in_mask(reference, test, masks), [30.0 / 8, np.nan])
    psnr = psnr_in_mask(reference, test, masks, data_range=4024.0)
    np.testing.assert_allclose(psnr[0], 10 * np.log10(4024.0**2 / ((10.0**2 + 20.0**2) / 8)))
    assert np.isnan(psnr[1])
    masks[1, 0, 0] = True
    assert np.isposinf(psnr_in_mask(reference, test, masks, 1.0)[1])
    with pytest.raises(ValueError, match="bool"):
        mae_in_mask(reference, test, masks.astype(np.uint8))


def test_mismatched_shapes_are_refused():
    with pytest.raises(ValueError, match="shape"):
        ssim_per_image(np.zeros((2, 8, 8)), np.zeros((2, 8, 9)))
    with pytest.raises(ValueError, match="shape"):
        mae_per_image(np.zeros((8, 8)), np.zeros((8, 8)))


def test_centroid_shift_finds_a_moved_anatomy_whatever_its_intensities():
    """A ring 'skull' around a disc 'brain' moved by (3, 4) px is 5 px off, even with the inside's
    contrast inverted and background noise (another modality); the same place is ~0 px off; an
    empty image gives NaN."""
    rows, columns = np.indices((64, 64))

    def head(row: float, column: float, skull: float, brain: float) -> np.ndarray:
        radius = np.hypot(rows - row, columns - column)
        return np.where(radius < 18, brain, np.where(radius < 22, skull, 0.0))

    rng = np.random.default_rng(0)
    noise = np.abs(rng.normal(0, 0.01, (64, 64)))
    reference = np.stack([head(30, 32, 1.0, 0.4), head(30, 32, 1.0, 0.4), np.zeros((64, 64))])
    test = np.stack([head(33, 36, 0.2, 0.8) + noise, head(30, 32, 0.2, 0.8) + noise, head(30, 32, 0.2, 0.8)])
    shifts = centroid_shift_per_image(reference, test)
    assert shifts[0] == pytest.approx(5.0, abs=0.05)
    assert shifts[1] == pytest.approx(0.0, abs=0.05)
    assert np.isnan(shifts[2])
    # a lopsided anatomy (bright on one side, dark on the other) moved by (0, 3): intensities do not
    # pull the centroid, the outline does; a blank translation is as far off as can be, not left out
    lopsided = np.where(columns < 32, 0.9, 0.25) * (np.hypot(rows - 32, columns - 30) < 20)
    moved = np.where(columns < 35, 0.2, 0.95) * (np.hypot(rows - 32, columns - 33) < 20)
    pair = centroid_shift_per_image(np.stack([lopsided, lopsided]), np.stack([moved, np.zeros((64, 64))]))
    assert pair[0] == pytest.approx(3.0, abs=0.05) and pair[1] == pytest.approx(np.hypot(64, 64))


def test_scale_error_sees_a_shrunken_anatomy_that_the_centroid_misses():
    """A disc of radius 20 against one of 18 about the same centre: centroid shift 0, scale error
    |18.x / 20.x - 1| ~ 0.1 (areas counted in whole pixels, so within 0.01); the same disc 0;
    a blank image 1."""
    rows, columns = np.indices((64, 64))
    disc = lambda radius: (np.hypot(rows - 32, columns - 32) < radius).astype(float) * 0.7
    reference = np.stack([disc(20), disc(20), disc(20)])
    test = np.stack([disc(18), disc(20), np.zeros((64, 64))])
    assert centroid_shift_per_image(reference, test)[0] == pytest.approx(0.0, abs=0.05)
    errors = foreground_scale_error_per_image(reference, test)
    assert errors[0] == pytest.approx(0.1, abs=0.01) and errors[1] == pytest.approx(0.0, abs=1e-9) and errors[2] == 1.0
