"""Per-image similarity metrics on slice stacks in [0, 1].

Every function takes two (N, H, W) arrays and returns one value per image, so that a later
bootstrap over subjects can resample them; summaries (mean over images) are taken by the caller.
The data range is always stated, because SSIM and PSNR change with it.
"""

from __future__ import annotations

import numpy as np
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
    """Map [0, 1] windowed CT back to HU: HU = center - width / 2 + v * width."""
    center, width = window
    return center - width / 2.0 + np.asarray(values, dtype=np.float64) * width


def mae_hu_per_image(reference: np.ndarray, test: np.ndarray, window: tuple[float, float]) -> np.ndarray:
    """MAE in HU of CT slices windowed to [0, 1] with ``window`` = (center, width).

    Only the HU range inside the window survives windowing (values beyond it were clipped), so
    this is the MAE within [center - width/2, center + width/2], not a full-range HU MAE.
    """
    return mae_per_image(to_hu(reference, window), to_hu(test, window))
