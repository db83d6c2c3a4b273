"""FID and KID from the standard FID Inception network, or null with the reason.

FID is only comparable between papers when it comes from the same network and preprocessing:
the TensorFlow 2015-12-05 Inception converted to PyTorch (pytorch-fid's
``pt_inception-2015-12-05-6726825d.pth``; torch-fidelity's ``weights-inception-2015-12-05-6726825d.pth``
carries the same suffix, which by torch hub's convention is the start of the file's SHA-256).
This machine cannot download it, so when the file is absent or is another file, FID and KID are
reported as null with the reason, never as a number from another network.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import scipy.linalg

from pipeline.hashing import file_sha256

INCEPTION_SHA256_PREFIX = "6726825d"
"""Identity of the standard file (torch hub convention: the name carries its hash prefix)."""

FEATURE_DIM = 2048

FEATURE_SETTINGS = {
    "network": "Inception-v3, TensorFlow 2015-12-05 weights (pytorch-fid / torch-fidelity file)",
    "extractor": "torch_fidelity.feature_extractor_inceptionv3.FeatureExtractorInceptionV3",
    "layer": "2048 (pool3)",
    "input": "grayscale [0,1] -> uint8 round(255*v), repeated to 3 channels",
    "resize": "torch-fidelity rule: bilinear as in TensorFlow 1.x to 299x299, align_corners=False, "
    "inside the extractor (pytorch-fid resizes with torch bilinear instead; clean-fid with PIL bicubic)",
    "fid": "Frechet distance of Gaussians fitted to the features (scipy.linalg.sqrtm of the covariance product)",
    "kid": "unbiased MMD^2 (U-statistic over all rows of both sets; within-set pairs from the same subject left "
    "out), polynomial kernel (x.y/d + 1)^3 as in torch-fidelity and Binkowski et al.; no random subsets",
}


def inception_weights_problem(weights_path: Path) -> str | None:
    """Why FID cannot be computed from ``weights_path``, or None when the file is the standard one."""
    weights_path = Path(weights_path)
    if not weights_path.is_file():
        return (
            f"Inception weights not found at {weights_path}; run the download stage (it fetches pytorch-fid's "
            "pt_inception-2015-12-05-6726825d.pth) or copy that file there"
        )
    digest = file_sha256(weights_path)
    if not digest.startswith(INCEPTION_SHA256_PREFIX):
        return (
            f"Inception weights at {weights_path} have SHA-256 {digest[:16]}..., not the standard file's "
            f"{INCEPTION_SHA256_PREFIX}...; FID from another network is not FID"
        )
    return None


def unavailable_distances(reason: str) -> dict:
    """The "fid" and "kid" blocks of a direction whose distances could not be computed."""
    return {
        "fid": {"value": None, "reason": reason, "rank_deficient": None, "warnings": []},
        "kid": {"value": None, "n_real": 0, "n_generated": 0, "reason": reason},
    }


def frechet_distance_from_statistics(
    mu_a: np.ndarray, sigma_a: np.ndarray, mu_b: np.ndarray, sigma_b: np.ndarray, eps: float = 1e-6
) -> float:
    """||mu_a - mu_b||^2 + Tr(S_a + S_b - 2 (S_a S_b)^(1/2)) for two Gaussians.

    The square root of the (possibly singular) product is retried with ``eps`` added to both
    diagonals when it is not finite or not essentially real; tiny imaginary parts from round-off
    are discarded. Raises FloatingPointError when even that fails.
    """
    diff = mu_a - mu_b

    def trace_sqrt_product(offset: float) -> float | None:
        eye = np.eye(sigma_a.shape[0]) * offset
        root = scipy.linalg.sqrtm((sigma_a + eye) @ (sigma_b + eye))
        if not np.all(np.isfinite(root)):
            return None
        trace = np.trace(root)
        if np.iscomplexobj(root):
            scale = max(abs(trace.real), 1.0)
            if np.max(np.abs(np.diagonal(root).imag)) > 1e-3 * scale:
                return None
            trace = trace.real
        return float(trace)

    trace = trace_sqrt_product(0.0)
    if trace is None:
        trace = trace_sqrt_product(eps)
    if trace is None:
        raise FloatingPointError("square root of the covariance product is not finite or not real")
    distance = float(diff @ diff + np.trace(sigma_a) + np.trace(sigma_b) - 2.0 * trace)
    return max(distance, 0.0)  # a distance; round-off can push identical sets a hair below zero


def frechet_distance_low_rank(features_a: np.ndarray, features_b: np.ndarray) -> float:
    """The same Fréchet distance through the samples instead of the D x D covariances.

    With S_a = A^T A and S_b = B^T B (A, B the centred features over sqrt(n - 1)), the nonzero
    eigenvalues of S_a S_b are the squared singular values of A B^T, so Tr((S_a S_b)^1/2) is the
    nuclear norm of that small n_a x n_b matrix: exact, and cheap when samples are fewer than
    dimensions (FRD's ~400 radiomic features or Inception's 2048 on a few dozen test slices),
    which is what makes jackknife intervals of these distances affordable.
    """
    features_a = np.asarray(features_a, dtype=np.float64)
    features_b = np.asarray(features_b, dtype=np.float64)
    centred_a = (features_a - features_a.mean(axis=0)) / np.sqrt(len(features_a) - 1)
    centred_b = (features_b - features_b.mean(axis=0)) / np.sqrt(len(features_b) - 1)
    diff = features_a.mean(axis=0) - features_b.mean(axis=0)
    trace_root = np.linalg.svd(centred_a @ centred_b.T, compute_uv=False).sum()
    distance = diff @ diff + np.sum(centred_a**2) + np.sum(centred_b**2) - 2.0 * trace_root
    return max(float(distance), 0.0)


def frechet_distance(features_a: np.ndarray, features_b: np.ndarray, eps: float = 1e-6) -> float:
    """Fréchet distance between Gaussians fitted to two (N, D) feature sets.

    Takes the sample route (``frechet_distance_low_rank``) when both sets have fewer samples than
    dimensions, where the covariance product is singular anyway; otherwise scipy's sqrtm.
    """
    features_a = np.asarray(features_a, dtype=np.float64)
    features_b = np.asarray(features_b, dtype=np.float64)
    if max(len(features_a), len(features_b)) <= features_a.shape[1]:
        return frechet_distance_low_rank(features_a, features_b)
    return frechet_distance_from_statistics(
        features_a.mean(axis=0),
        np.atleast_2d(np.cov(features_a, rowvar=False)),
        features_b.mean(axis=0),
        np.atleast_2d(np.cov(features_b, rowvar=False)),
        eps=eps,
    )


class KernelInceptionDistance:
    """KID of two feature sets: the unbiased MMD^2 with the polynomial kernel (x.y/d + 1)^3.

    The U-statistic over all rows (unequal set sizes allowed) rather than torch-fidelity's mean over
    random equal-size subsets: at this project's set sizes (tens to a few thousand images) all rows
    fit in memory, the value is deterministic, and it equals torch-fidelity's on equal-size sets
    (tested). With ``groups`` (the subject of each row), pairs of rows from the same subject are left
    out of the within-set sums: slices of one patient resemble each other more than two patients'
    do, and counting them would bias KID upward even between two sets of one distribution. The
    kernel matrices are computed once; calling the object with row indices gives the statistic on a
    subset of rows, which is what the jackknife interval needs.
    """

    def __init__(self, features_a: np.ndarray, features_b: np.ndarray,
                 groups_a: np.ndarray | None = None, groups_b: np.ndarray | None = None) -> None:
        a = np.asarray(features_a, dtype=np.float64)
        b = np.asarray(features_b, dtype=np.float64)
        dim = a.shape[1]
        self.k_aa = (a @ a.T / dim + 1.0) ** 3
        self.k_bb = (b @ b.T / dim + 1.0) ** 3
        self.k_ab = (a @ b.T / dim + 1.0) ** 3
        self.groups_a = np.arange(len(a)) if groups_a is None else np.asarray(groups_a).astype(str)
        self.groups_b = np.arange(len(b)) if groups_b is None else np.asarray(groups_b).astype(str)

    @staticmethod
    def _within(kernel: np.ndarray, groups: np.ndarray, rows: np.ndarray) -> float | None:
        pairs = groups[rows][:, None] != groups[rows][None, :]
        if not pairs.any():
            return None
        return float(kernel[np.ix_(rows, rows)][pairs].mean())

    def __call__(self, rows_a: np.ndarray | None = None, rows_b: np.ndarray | None = None) -> float | None:
        rows_a = np.arange(len(self.k_aa)) if rows_a is None else rows_a
        rows_b = np.arange(len(self.k_bb)) if rows_b is None else rows_b
        within_a = self._within(self.k_aa, self.groups_a, rows_a)
        within_b = self._within(self.k_bb, self.groups_b, rows_b)
        if within_a is None or within_b is None:
            return None
        return within_a + within_b - 2.0 * float(self.k_ab[np.ix_(rows_a, rows_b)].mean())


def distribution_distances(real_features: np.ndarray, fake_features: np.ndarray, eps: float = 1e-6,
                           real_groups: np.ndarray | None = None, fake_groups: np.ndarray | None = None) -> dict:
    """The "fid" and "kid" blocks of real vs generated features, with the rank warning when samples are few.

    ``real_groups`` / ``fake_groups``: the subject of each row (KID leaves same-subject pairs out)."""
    n_min = min(len(real_features), len(fake_features))
    if n_min < 2:
        return unavailable_distances(f"FID and KID need at least 2 images per set, got {n_min}")
    dim = real_features.shape[1]
    rank_deficient = n_min <= dim
    notes: list[str] = []
    if rank_deficient:
        notes.append(
            f"only {n_min} samples for {dim} feature dimensions: the covariances are rank-deficient "
            f"(rank <= n-1), so FID is biased upward and not comparable with FID from more than {dim} samples; prefer KID"
        )
        warnings.warn(notes[-1], stacklevel=2)
    try:
        fid, reason = frechet_distance(real_features, fake_features, eps=eps), None
    except FloatingPointError as err:
        fid, reason = None, f"Frechet distance not computable: {err}"
    kid = KernelInceptionDistance(real_features, fake_features, real_groups, fake_groups)()
    return {
        "fid": {"value": fid, "reason": reason, "rank_deficient": rank_deficient, "warnings": notes},
        "kid": {"value": kid, "n_real": len(real_features), "n_generated": len(fake_features),
                "reason": None if kid is not None else "KID needs images of at least 2 subjects per set "
                "(pairs of one subject's images are left out)"},
    }


def load_inception(weights_path: Path, device: str = "cpu"):
    """torch-fidelity's Inception feature extractor (2048-d pool3) with weights read from ``weights_path``.

    Raises RuntimeError when the file's state dict does not fit the network (strict loading).
    """
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    extractor = FeatureExtractorInceptionV3(
        "inception-v3-compat", [str(FEATURE_DIM)], feature_extractor_weights_path=str(weights_path)
    )
    return extractor.to(device)


def to_inception_input(images: np.ndarray):
    """(N, H, W) floats in [0, 1] -> (N, 3, H, W) uint8 tensor, the extractor's expected input."""
    import torch

    pixels = np.round(np.clip(images, 0.0, 1.0) * 255.0).astype(np.uint8)
    return torch.from_numpy(pixels)[:, None].repeat(1, 3, 1, 1)


def inception_features(
    extractor, images: np.ndarray, batch_size: int = 32, device: str = "cpu"
) -> np.ndarray:
    """Pool3 features (N, 2048) float64 of grayscale slices, in batches."""
    import torch

    chunks = []
    with torch.inference_mode():
        for start in range(0, len(images), batch_size):
            batch = to_inception_input(images[start : start + batch_size]).to(device)
            (features,) = extractor(batch)
            chunks.append(features.cpu().numpy().astype(np.float64))
    return np.concatenate(chunks, axis=0)
