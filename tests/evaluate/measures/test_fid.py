from __future__ import annotations

from pathlib import Path
from unittest import mock

import numpy as np
import pytest
import scipy.linalg
import torch

from pipeline.evaluate.measures import fid


def symmetric_reference(features_a: np.ndarray, features_b: np.ndarray) -> float:
    """Closed form with the symmetric root Tr((S_a^1/2 S_b S_a^1/2)^1/2), computed independently."""
    mu_a, mu_b = features_a.mean(0), features_b.mean(0)
    s_a, s_b = np.cov(features_a, rowvar=False), np.cov(features_b, rowvar=False)
    root_a = scipy.linalg.sqrtm(s_a).real
    inner = scipy.linalg.sqrtm(root_a @ s_b @ root_a).real
    return float(np.sum((mu_a - mu_b) ** 2) + np.trace(s_a) + np.trace(s_b) - 2 * np.trace(inner))


def test_frechet_distance_of_diagonal_gaussians_is_the_closed_form():
    mu_a, mu_b = np.array([0.0, 1.0, 2.0]), np.array([1.0, 1.0, 0.0])
    var_a, var_b = np.array([1.0, 4.0, 9.0]), np.array([4.0, 1.0, 1.0])
    expected = np.sum((mu_a - mu_b) ** 2) + np.sum((np.sqrt(var_a) - np.sqrt(var_b)) ** 2)  # 5 + 1 + 1 + 4
    got = fid.frechet_distance_from_statistics(mu_a, np.diag(var_a), mu_b, np.diag(var_b))
    assert got == pytest.approx(expected, rel=1e-10)
    assert expected == pytest.approx(11.0)


def test_frechet_distance_matches_references_on_random_features():
    rng = np.random.default_rng(3)
    mixing = rng.normal(size=(6, 6))
    features_a = rng.normal(size=(400, 6)) @ mixing
    features_b = rng.normal(size=(300, 6)) @ (mixing + 0.3 * rng.normal(size=(6, 6))) + 0.5
    got = fid.frechet_distance(features_a, features_b)
    assert got == pytest.approx(symmetric_reference(features_a, features_b), rel=1e-8)
    from torch_fidelity.metric_fid import fid_features_to_statistics, fid_statistics_to_metric

    stats = [fid_features_to_statistics(torch.from_numpy(f)) for f in (features_a, features_b)]
    torch_fidelity_value = fid_statistics_to_metric(*stats, verbose=False)["frechet_inception_distance"]
    assert got == pytest.approx(torch_fidelity_value, rel=1e-8)
    assert got > 1.0


def test_identical_feature_sets_are_at_distance_zero():
    features = np.random.default_rng(0).normal(size=(100, 10))
    assert fid.frechet_distance(features, features) == pytest.approx(0.0, abs=1e-8)


def test_a_failed_square_root_is_retried_with_the_offset_then_reported(monkeypatch):
    features = np.random.default_rng(4).normal(size=(50, 3))
    expected = fid.frechet_distance(features, features + 1.0)
    real_sqrtm, offsets_seen = scipy.linalg.sqrtm, []

    def failing_once(product):
        offsets_seen.append(product)
        return np.full_like(product, np.nan) if len(offsets_seen) == 1 else real_sqrtm(product)

    monkeypatch.setattr(fid.scipy.linalg, "sqrtm", failing_once)
    assert fid.frechet_distance(features, features + 1.0, eps=1e-6) == pytest.approx(expected, rel=1e-5)
    sigma = np.cov(features, rowvar=False)  # both sets share it: (S + eI)^2 - S^2 = 2eS + e^2 I
    np.testing.assert_allclose(
        offsets_seen[1] - offsets_seen[0], 2e-6 * sigma + 1e-12 * np.eye(3), atol=1e-13
    )

    monkeypatch.setattr(fid.scipy.linalg, "sqrtm", lambda product: np.full_like(product, np.nan))
    result = fid.distribution_distances(features, features + 1.0)
    assert result["fid"]["value"] is None and "not finite" in result["fid"]["reason"]
    assert result["kid"]["value"] is not None


def test_rank_deficient_sets_are_flagged_and_still_finite():
    rng = np.random.default_rng(1)
    real, fake = rng.normal(size=(12, 32)), rng.normal(size=(10, 32)) + 1.0
    with pytest.warns(UserWarning, match="rank-deficient"):
        result = fid.distribution_distances(real, fake)
    assert result["fid"]["rank_deficient"] is True
    assert (
        result["fid"]["reason"] is None and np.isfinite(result["fid"]["value"]) and result["fid"]["value"] > 0
    )
    assert (result["kid"]["n_real"], result["kid"]["n_generated"]) == (12, 10)
    assert "rank-deficient" in result["fid"]["warnings"][0]


def test_a_single_image_gives_null_distances_with_the_reason():
    features = np.random.default_rng(2).normal(size=(5, 4))
    result = fid.distribution_distances(features, features[:1])
    assert result["fid"]["value"] is None and result["kid"]["value"] is None
    assert result["fid"]["reason"] == "FID and KID need at least 2 images per set, got 1"


def unbiased_poly_mmd(x: np.ndarray, y: np.ndarray) -> float:
    """Unbiased MMD^2 with the KID kernel (x.y/d + 1)^3, written out pair by pair (any set sizes)."""
    kernel = lambda p, q: (float(p @ q) / x.shape[1] + 1.0) ** 3
    m, n = len(x), len(y)
    within_x = sum(kernel(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    within_y = sum(kernel(y[i], y[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    between = sum(kernel(x[i], y[j]) for i in range(m) for j in range(n)) / (m * n)
    return within_x + within_y - 2 * between


def test_kid_equals_torch_fidelity_on_whole_equal_sets_and_the_u_statistic_on_unequal_ones():
    import torch
    from torch_fidelity.metric_kid import KEY_METRIC_KID_MEAN, kid_features_to_metric

    rng = np.random.default_rng(5)
    x, y = rng.normal(size=(40, 8)), rng.normal(size=(40, 8)) + 0.5
    reference = kid_features_to_metric(
        torch.from_numpy(x), torch.from_numpy(y), kid_subsets=1, kid_subset_size=40, kid_kernel="poly",
        kid_kernel_poly_degree=3, kid_kernel_poly_gamma=None, kid_kernel_poly_coef0=1, rng_seed=0, verbose=False,
    )[KEY_METRIC_KID_MEAN]  # one subset of the whole sets: no sampling
    kid = fid.KernelInceptionDistance(x, y)
    assert kid() == pytest.approx(float(reference), rel=1e-10)
    assert kid(np.arange(0, 40, 3), np.arange(25)) == pytest.approx(
        unbiased_poly_mmd(x[np.arange(0, 40, 3)], y[:25]), rel=1e-10)


def test_kid_leaves_out_pairs_of_one_subject():
    rng = np.random.default_rng(7)
    x, y = rng.normal(size=(12, 5)), rng.normal(size=(9, 5))
    gx, gy = np.repeat(["a", "b", "c", "d"], 3), np.repeat(["p", "q", "r"], 3)
    kernel = lambda p, q: (float(p @ q) / 5 + 1.0) ** 3
    within = lambda z, g: np.mean([kernel(z[i], z[j]) for i in range(len(z)) for j in range(len(z)) if g[i] != g[j]])
    between = np.mean([kernel(p, q) for p in x for q in y])
    expected = within(x, gx) + within(y, gy) - 2 * between
    assert fid.KernelInceptionDistance(x, y, gx, gy)() == pytest.approx(expected, rel=1e-10)
    assert fid.KernelInceptionDistance(x, y, gx, gy)() != pytest.approx(fid.KernelInceptionDistance(x, y)(), rel=1e-3)


def test_kid_is_near_zero_for_one_distribution_and_not_for_two():
    rng = np.random.default_rng(6)
    x, x_again, shifted = (
        rng.normal(size=(300, 8)),
        rng.normal(size=(300, 8)),
        rng.normal(size=(300, 8)) + 0.7,
    )
    same = fid.KernelInceptionDistance(x, x_again)()
    different = fid.KernelInceptionDistance(x, shifted)()
    assert abs(same) < 0.05 * different
    identical = fid.KernelInceptionDistance(x, x)()
    assert abs(identical) < 0.05 * different  # the unbiased estimate of one set against itself


def test_missing_weights_give_null_fid_with_the_reason(tmp_path):
    path = tmp_path / "weights" / "pt_inception-2015-12-05-6726825d.pth"
    reason = fid.inception_weights_problem(path)
    assert reason.startswith(f"Inception weights not found at {path}; run the download stage")
    block = fid.unavailable_distances(reason)
    assert block["fid"]["value"] is None and block["kid"]["value"] is None and block["fid"]["reason"] == reason


def test_a_file_that_is_not_the_standard_network_gives_no_fid(tmp_path):
    path = tmp_path / "pt_inception-2015-12-05-6726825d.pth"
    torch.save({"fc.weight": torch.zeros(2, 2)}, path)
    assert "not the standard file's 6726825d" in fid.inception_weights_problem(path)


@pytest.fixture(scope="module")
def random_inception_file(tmp_path_factory) -> Path:
    """A state dict with the extractor's exact keys and shapes but random values (no download here)."""
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    folder = tmp_path_factory.mktemp("weights")
    torch.manual_seed(0)
    torch.save({}, folder / "empty.pth")
    with mock.patch.object(FeatureExtractorInceptionV3, "load_state_dict"):
        network = FeatureExtractorInceptionV3(
            "x", ["2048"], feature_extractor_weights_path=str(folder / "empty.pth")
        )
    torch.save(network.state_dict(), folder / "random-inception.pth")
    return folder / "random-inception.pth"


def test_extractor_reads_the_given_file_and_yields_pool3_features(random_inception_file, tmp_path):
    extractor = fid.load_inception(random_inception_file)
    expected = torch.load(random_inception_file, weights_only=True)
    for key in ("Conv2d_1a_3x3.conv.weight", "Mixed_7c.branch_pool.conv.weight"):
        assert torch.equal(extractor.state_dict()[key], expected[key])
    images = np.random.default_rng(0).random((3, 24, 24)).astype(np.float32)
    images[2] = images[0]
    features = fid.inception_features(extractor, images, batch_size=2)
    assert features.shape == (3, fid.FEATURE_DIM) and np.all(np.isfinite(features))
    np.testing.assert_array_equal(features[2], features[0])
    assert not np.array_equal(features[1], features[0])
    with pytest.raises(FileNotFoundError):
        fid.load_inception(tmp_path / "absent.pth")  # never falls back to a download


def test_inception_input_is_uint8_grey_repeated_to_rgb():
    pixels = fid.to_inception_input(np.array([[[0.0, 0.5], [1.0, 1.2]]], np.float32))
    assert pixels.dtype == torch.uint8 and tuple(pixels.shape) == (1, 3, 2, 2)
    assert pixels[0, 0].tolist() == [[0, 128], [255, 255]]
    assert torch.equal(pixels[0, 0], pixels[0, 2])
