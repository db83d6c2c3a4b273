from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
from skimage.data import shepp_logan_phantom
from skimage.transform import resize

from pipeline.evaluate.measures import fid, frd


def phantom_set(n: int, shift: float, contrast: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    base = resize(shepp_logan_phantom(), (32, 32), anti_aliasing=True)
    images = [np.roll(base, k, axis=1) * contrast + shift + rng.normal(0, 0.03, base.shape) for k in range(n)]
    return np.clip(images, 0.0, 1.0).astype(np.float32)


@pytest.fixture(scope="module")
def features():
    """Real PyRadiomics features (frd-score's extractor) of two clearly different small sets."""
    real = phantom_set(4, 0.0, 1.0, seed=0)
    other = phantom_set(4, 0.3, 0.4, seed=1)
    return real, other, frd.radiomic_features(real)[0], frd.radiomic_features(other)[0]


def test_frd_is_zero_for_a_set_with_itself_and_positive_for_different_sets(features):
    _, _, real, other = features
    assert real.shape[0] == 4 and real.shape[1] > 300  # frd-score v1: several hundred features
    value, distance, _, reason = frd.frd_from_features(real, real)
    assert value is None and distance == pytest.approx(0.0, abs=1e-6) and "coincide" in reason
    value, distance, n_features, reason = frd.frd_from_features(real, other)
    assert reason is None and distance > 1.0 and value == pytest.approx(np.log(distance))
    assert 0 < n_features <= real.shape[1]


def test_frd_equals_frd_scores_own_pipeline(features, tmp_path):
    """Same features, same v1 recipe: our value is frd-score's compute_frd on the same images as files."""
    from frd_score import compute_frd

    real_images, other_images, real, other = features
    folders = []
    for name, images in (("real", real_images), ("other", other_images)):
        files = []
        for index, image in enumerate(images):
            path = tmp_path / f"{name}{index}.nii.gz"
            sitk.WriteImage(sitk.GetImageFromArray(image * frd.INTENSITY_SCALE), str(path))
            files.append(str(path))
        folders.append(files)
    expected = compute_frd(folders, frd_version="v1", num_workers=1)
    assert frd.frd_from_features(real, other)[0] == pytest.approx(expected, rel=1e-3)


def test_features_that_are_not_finite_are_dropped():
    rng = np.random.default_rng(0)
    real, generated = rng.normal(size=(6, 5)), rng.normal(size=(5, 5)) + 1.0
    real[:, 2] = 7.0  # zero spread in the reference: z-score is infinite, the column goes
    generated[0, 4] = np.nan  # an image without features goes
    value, distance, n_features, _ = frd.frd_from_features(real, generated)
    keep = [0, 1, 3, 4]
    z = lambda x: (x[:, keep] - real[:, keep].mean(0)) / real[:, keep].std(0)
    assert n_features == 4
    assert distance == pytest.approx(fid.frechet_distance(z(real), z(generated[1:])), rel=1e-5)
    assert frd.frd_from_features(real[:1], generated)[3].startswith("FRD needs at least 2 images")


def test_low_rank_frechet_distance_equals_the_sqrtm_route():
    rng = np.random.default_rng(7)
    a, b = rng.normal(size=(9, 40)), rng.normal(size=(12, 40)) * 1.5 + 0.2
    expected = fid.frechet_distance_from_statistics(
        a.mean(0), np.cov(a, rowvar=False), b.mean(0), np.cov(b, rowvar=False)
    )
    assert fid.frechet_distance_low_rank(a, b) == pytest.approx(expected, rel=1e-6)
    assert fid.frechet_distance(a, b) == pytest.approx(expected, rel=1e-6)  # picks the sample route


def test_a_constant_image_gives_a_row_of_nan_not_a_failure():
    images = np.stack([np.zeros((32, 32), np.float32), phantom_set(1, 0.0, 1.0, seed=2)[0]])
    features, names = frd.radiomic_features(images)
    assert np.isnan(features[0]).all() and np.isfinite(features[1]).all() and len(names) == features.shape[1]


def test_forked_workers_give_each_image_its_own_row_as_one_process_does(monkeypatch):
    """Chunks over 2 forked processes, masks too: row for row the single-process features (a chunk
    put back in the wrong place, or a mask paired with another chunk's image, would differ)."""
    images = np.concatenate([phantom_set(5, 0.0, 1.0, seed=3), phantom_set(5, 0.2, 0.5, seed=4)])
    images[7] = 0.0  # a constant image: its NaN row stays in its place
    monkeypatch.setattr(frd, "CHUNK_IMAGES", 3)  # 4 chunks over 2 workers
    masks = np.zeros(images.shape, bool)
    for index in range(len(images)):
        masks[index, 4 + index:20 + index, 6:26] = True  # every image its own mask
    for given_masks in (None, masks):
        alone, names = frd.radiomic_features(images, masks=given_masks, workers=1)
        forked, forked_names = frd.radiomic_features(images, masks=given_masks, workers=2)
        assert len(frd._chunks(len(images), 2)) > 2 and forked_names == names
        np.testing.assert_array_equal(forked, alone)
        assert np.isnan(forked[7]).all() and np.isfinite(forked[np.arange(len(images)) != 7]).all()
    with pytest.raises(ValueError, match="workers must be >= 1"):
        frd.radiomic_features(images, workers=0)


def test_sets_through_one_pool_get_their_own_rows_back():
    """radiomic_features_of_sets: each named set's rows equal that set's features alone (a split at
    the wrong bound would shift rows between sets); a constant set gets NaN rows, not an error."""
    sets = {"real": phantom_set(3, 0.0, 1.0, seed=5), "generated": phantom_set(4, 0.2, 0.6, seed=6),
            "collapsed": np.zeros((2, 32, 32), np.float32)}
    together = frd.radiomic_features_of_sets(sets, workers=2)
    assert list(together) == list(sets)
    for name in ("real", "generated"):
        np.testing.assert_array_equal(together[name], frd.radiomic_features(sets[name], workers=1)[0])
    assert together["collapsed"].shape == (2, together["real"].shape[1]) and np.isnan(together["collapsed"]).all()


def test_features_do_not_depend_on_itks_thread_count():
    """ITK's multi-threaded reductions split an image by the thread count and add the partial sums
    as threads finish: sitk.Normalize (PyRadiomics normalises every image with it) of this phantom
    differs in its last bits between 1 and 8 threads. The features must not: in the evaluator's
    process and in forked workers alike, whatever thread count the caller left ITK at, and that
    setting is the caller's again afterwards."""
    images = phantom_set(4, 0.2, 0.5, seed=0)
    caller_threads = sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()

    def normalised(threads: int) -> np.ndarray:
        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(threads)
        return sitk.GetArrayFromImage(sitk.Normalize(sitk.GetImageFromArray(images[1] * frd.INTENSITY_SCALE)))

    try:
        assert not np.array_equal(normalised(1), normalised(8)), "the phantom no longer shows ITK's thread dependence"
        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(1)
        one_thread = frd.radiomic_features(images, workers=1)[0]
        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(8)
        in_process = frd.radiomic_features(images, workers=1)[0]
        forked = frd.radiomic_features(images, workers=2)[0]
        assert sitk.ProcessObject.GetGlobalDefaultNumberOfThreads() == 8
    finally:
        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(caller_threads)
    np.testing.assert_array_equal(in_process, one_thread)
    np.testing.assert_array_equal(forked, one_thread)


def _die(images, masks):
    import os

    os._exit(9)


def test_a_worker_that_dies_fails_the_extraction_instead_of_giving_null_features(monkeypatch):
    """A killed worker (e.g. out of memory) must stop the evaluation: a RadiomicsWorkerError, which
    the evaluator does not turn into a null FRD (it catches ValueError / RuntimeError only)."""
    monkeypatch.setattr(frd, "_warm_up", lambda: None)
    monkeypatch.setattr(frd, "_extract_chunk", _die)  # runs in the forked worker
    with pytest.raises(frd.RadiomicsWorkerError, match="worker process died") as caught:
        frd.radiomic_features(phantom_set(6, 0.0, 1.0, seed=7), "radiomics real", workers=2)
    assert not isinstance(caught.value, (ValueError, RuntimeError))


def test_workers_follow_the_jobs_threads_never_more_than_the_cpus(monkeypatch):
    import os

    cpus = len(os.sched_getaffinity(0))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # what Snakemake exports for a 1-thread job
    assert frd.default_workers() == 1
    monkeypatch.setenv("OMP_NUM_THREADS", str(cpus + 7))
    assert frd.default_workers() == cpus
    monkeypatch.delenv("OMP_NUM_THREADS")
    assert frd.default_workers() == cpus
