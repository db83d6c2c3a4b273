"""Per-image similarity metrics on slice stacks in [0, 1].

Every function takes two (N, H, W) arrays and returns one value per image, so that a later
bootstrap over subjects can resample them; summaries (mean over images) are taken by the caller.
The data range is always stated, because SSIM and PSNR change with it.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

DATA_RANGE = 1.0
"""Slices are stored in [0, 1] (contracts: windowed CT, percentile-normalised MR)."""

SSIM_SETTINGS = {
    "implementation": "skimage.metrics.structural_similarity",
    "gaussian_weights": True,
    "sigma": 1.5,
    "use_sample_covariance": False,
    "K1": 0.01,
    "K2": 0.03,
    "window": "11x11 Gaussian (sigma 1.5, truncated at 3.5 sigma)",
    "reduction": "SSIM map averaged per image, then mean over images",
    "reference": "Wang et al. 2004, IEEE TIP 13(4)",
}


def _check_pair(reference: np.ndarray, test: np.ndarray) -> None:
    if reference.shape != test.shape or reference.ndim != 3:
        raise ValueError(
            f"expected two (N, H, W) arrays of one shape, got {reference.shape} and {test.shape}"
        )


def ssim_per_image(reference: np.ndarray, test: np.ndarray, data_range: float = DATA_RANGE) -> np.ndarray:
    """SSIM of each image pair with Wang et al.'s Gaussian window (the settings in SSIM_SETTINGS)."""
    _check_pair(reference, test)
    return np.array(
        [
            structural_similarity(
                ref.astype(np.float64),
                tst.astype(np.float64),
                data_range=data_range,
                gaussian_weights=SSIM_SETTINGS["gaussian_weights"],
                sigma=SSIM_SETTINGS["sigma"],
                use_sample_covariance=SSIM_SETTINGS["use_sample_covariance"],
                K1=SSIM_SETTINGS["K1"],
                K2=SSIM_SETTINGS["K2"],
            )
            for ref, tst in zip(reference, test)
        ],
        dtype=np.float64,
    )


FOREGROUND_THRESHOLD = 0.05
"""Anatomy for the centroid shift and scale: above this in [0, 1], isolated pixels opened away,
holes filled (background is ~0 in both contracts)."""


def _foregrounds(stack: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """Per image: the foreground's pixel count and centroid (row, column; NaN when empty). The
    foreground is the anatomy's outline filled: a dark ring inside it (a T2's skull) is not a hole
    in one image and painted grey in another."""
    # an opening (3 x 3 cross, per image) drops isolated noise pixels without moving the outline by
    # the intensities behind it, as smoothing before the threshold would (a bright edge grows further)
    cross = np.zeros((3, 3, 3), bool)
    cross[1] = ndimage.generate_binary_structure(2, 1)
    masks = ndimage.binary_fill_holes(ndimage.binary_opening(stack > threshold, structure=cross), structure=cross)
    rows, columns = np.indices(stack.shape[1:], dtype=np.float64)
    counts = masks.sum(axis=(1, 2)).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        centroids = np.stack([(masks * rows).sum(axis=(1, 2)) / counts, (masks * columns).sum(axis=(1, 2)) / counts], 1)
    return counts, centroids


def centroid_shift_per_image(reference: np.ndarray, test: np.ndarray,
                             threshold: float = FOREGROUND_THRESHOLD) -> np.ndarray:
    """Distance in pixels between the centroids of each pair's foreground (the anatomy's outline).

    Two images of one anatomy in two modalities share where the anatomy is, not its intensities,
    so a translation that moved the anatomy as a whole shows here whatever it painted inside (a
    change of size or shape about the same centre does not: ``foreground_scale_error_per_image``).
    A test image with no foreground counts as the image's diagonal (as far off as can be: blanking
    an image never helps); a reference with none gives NaN (nothing to compare).
    """
    _check_pair(reference, test)
    reference_counts, reference_centroids = _foregrounds(reference, threshold)
    test_counts, test_centroids = _foregrounds(test, threshold)
    shifts = np.linalg.norm(reference_centroids - test_centroids, axis=1)
    shifts[(test_counts == 0) & (reference_counts > 0)] = float(np.hypot(*reference.shape[1:]))
    return shifts


def foreground_scale_error_per_image(reference: np.ndarray, test: np.ndarray,
                                     threshold: float = FOREGROUND_THRESHOLD) -> np.ndarray:
    """|sqrt(foreground area of test / that of reference) - 1| per pair: how far the anatomy's
    linear size differs (0.1 = 10% larger or smaller); an empty test image gives 1, an empty
    reference NaN. Meaningful between images of one modality (their foregrounds show the same
    tissues), e.g. a translation and the partner in the target modality."""
    _check_pair(reference, test)
    reference_counts, _ = _foregrounds(reference, threshold)
    test_counts, _ = _foregrounds(test, threshold)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.abs(np.sqrt(test_counts / reference_counts) - 1.0)


def psnr_per_image(reference: np.ndarray, test: np.ndarray, data_range: float = DATA_RANGE) -> np.ndarray:
    """PSNR in dB of each image pair; identical images give +inf (the caller reports them apart)."""
    _check_pair(reference, test)
    values = []
    for ref, tst in zip(reference, test):
        ref64, tst64 = ref.astype(np.float64), tst.astype(np.float64)
        if np.array_equal(ref64, tst64):
            values.append(np.inf)  # skimage would divide by zero and warn
        else:
            values.append(peak_signal_noise_ratio(ref64, tst64, data_range=data_range))
    return np.array(values, dtype=np.float64)


def mae_per_image(reference: np.ndarray, test: np.ndarray) -> np.ndarray:
    """Mean absolute error of each image pair, in the arrays' own units."""
    _check_pair(reference, test)
    return np.abs(reference.astype(np.float64) - test.astype(np.float64)).mean(axis=(1, 2))


def to_hu(values: np.ndarray, window: tuple[float, float]) -> np.ndarray:
    """Map [0, 1] windowed CT back to HU: the inverse of the window stage's DICOM LINEAR VOI function
    (pipeline.preprocess.window.window_hu, PS3.3 C.11.2.1.2.1), HU = center - 0.5 + (v - 0.5)(width - 1).

    v = 0 is HU center - width/2 and v = 1 is center + width/2 - 1 (brain 40/80: 0 and 79 HU); values
    beyond the window were clipped to its edges by windowing and cannot be recovered.
    """
    center, width = window
    return center - 0.5 + (np.asarray(values, dtype=np.float64) - 0.5) * (width - 1.0)


def window_range_hu(window: tuple[float, float]) -> tuple[float, float]:
    """The HU range a window keeps (its [0, 1] ends mapped back), e.g. (0, 79) for 40/80."""
    low, high = to_hu(np.array([0.0, 1.0]), window)
    return float(low), float(high)


def mae_hu_per_image(reference: np.ndarray, test: np.ndarray, window: tuple[float, float]) -> np.ndarray:
    """MAE in HU of CT slices windowed to [0, 1] with ``window`` = (center, width), whole image.

    Only the HU range inside the window survives windowing (values beyond it were clipped), so
    this is the MAE within ``window_range_hu(window)``, not a full-range HU MAE (see mae_in_mask).
    """
    return mae_per_image(to_hu(reference, window), to_hu(test, window))


BODY_THRESHOLD_HU = -500.0
"""Default body threshold: between air (-1000) and fat (-100); lungs, below it, lie inside the body
contour and come back when holes are filled."""


def body_mask(hu: np.ndarray, threshold_hu: float = BODY_THRESHOLD_HU) -> np.ndarray:
    """Body mask of each (H, W) CT slice in HU, as synthetic-CT evaluations draw it (SynthRAD
    provides such masks): HU > ``threshold_hu``, the largest 4-connected component, holes filled.

    One slice at a time (the slices of a slab are not a volume here). A slice with nothing above
    the threshold gets an empty mask. Returns bool (N, H, W).
    """
    hu = np.asarray(hu)
    if hu.ndim != 3:
        raise ValueError(f"expected an (N, H, W) stack of CT slices in HU, got shape {hu.shape}")
    masks = np.zeros(hu.shape, dtype=bool)
    for index, image in enumerate(hu):
        labelled, n_components = ndimage.label(image > threshold_hu)
        if n_components:
            sizes = np.bincount(labelled.ravel())[1:]
            masks[index] = ndimage.binary_fill_holes(labelled == int(np.argmax(sizes)) + 1)
    return masks


def _check_masks(reference: np.ndarray, masks: np.ndarray) -> None:
    if masks.shape != reference.shape or masks.dtype != bool:
        raise ValueError(f"masks must be bool of the images' shape {reference.shape}, got {masks.dtype} {masks.shape}")


def mae_in_mask(reference: np.ndarray, test: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """MAE of each image pair over the pixels of its mask (SynthRAD's MAE: sum |ref - test| over the
    mask / mask size), in the arrays' own units; NaN for an empty mask."""
    _check_pair(reference, test)
    _check_masks(reference, masks)
    error = np.abs(reference.astype(np.float64) - test.astype(np.float64)) * masks
    counts = masks.sum(axis=(1, 2))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts > 0, error.sum(axis=(1, 2)) / counts, np.nan)


def psnr_in_mask(reference: np.ndarray, test: np.ndarray, masks: np.ndarray, data_range: float) -> np.ndarray:
    """PSNR in dB of each image pair over the pixels of its mask, 10 log10(data_range^2 / MSE in the
    mask) (SynthRAD's PSNR with its population range); +inf when they agree there, NaN for an empty mask."""
    _check_pair(reference, test)
    _check_masks(reference, masks)
    values = []
    for ref, tst, mask in zip(reference, test, masks):
        ref64, tst64 = ref[mask].astype(np.float64), tst[mask].astype(np.float64)
        if not mask.any():
            values.append(np.nan)
        elif np.array_equal(ref64, tst64):
            values.append(np.inf)
        else:
            values.append(peak_signal_noise_ratio(ref64, tst64, data_range=data_range))
    return np.array(values, dtype=np.float64)
