"""Fréchet Radiomic Distance (FRD, Konz, Osuala et al. 2026) through the ``frd-score`` package.

FRD compares two image sets by the Fréchet distance of their radiomic features (PyRadiomics:
first-order, GLCM, GLRLM, GLSZM, NGTDM on the original image and its LoG / wavelet filtrations),
so it needs no downloaded network and is available offline. Features are extracted once per
image with frd-score's own extractor and per-image routine; the distance is then recomputed
from them with frd-score's v1 recipe (z-score with the real set's statistics, drop feature
columns that are not finite, Fréchet distance, natural log), which lets a jackknife leave out
subjects without extracting features again.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import multiprocessing
import os
import tempfile
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

import numpy as np

from pipeline.errors import PipelineError
from pipeline.evaluate.measures.fid import frechet_distance
from pipeline.progress import progress

FRD_VERSION = "v1"
INTENSITY_SCALE = 255.0
"""Slices in [0, 1] are multiplied by this before extraction, as if read from 8-bit PNGs (frd-score's usual input)."""

FRD_SETTINGS = {
    "implementation": "frd-score (frd_score.frd.get_feature_extractor / process_image_mask_pair), FRD v1",
    "features": "PyRadiomics extraction_2d.yaml of frd-score: Original + LoG (sigma 2,3,4,5) + Wavelet; "
    "firstorder, glcm, glrlm, glszm, ngtdm, plus numeric diagnostics (as the paper's code)",
    "input": f"grayscale [0,1] x {INTENSITY_SCALE:g} as float32, pixel spacing 1, whole-image mask "
    "(one corner pixel off, frd-score's workaround); PyRadiomics normalises each image (normalizeScale 100) "
    "and resamples to 2 px spacing",
    "normalisation": "z-score of both sets with the real (reference) set's mean and std; feature columns "
    "with NaN or infinity in either set dropped; images with NaN features dropped",
    "value": "FRD = ln(d_F^2), d_F^2 the Frechet distance of Gaussians fitted to the normalised features "
    "(frd-score's default convention; negative when d_F^2 < 1)",
}


def _quiet_radiomics() -> None:
    from frd_score import frd

    frd._ensure_radiomics()
    frd.setVerbosity(logging.ERROR + 10)
    logging.getLogger("radiomics").setLevel(logging.ERROR)
    logging.getLogger("pykwalify").setLevel(logging.WARNING)  # PyRadiomics validates its config at INFO


def default_workers() -> int:
    """Processes for radiomic extraction: the job's threads where Snakemake set them
    (OMP_NUM_THREADS, which it exports as each job's ``threads``), never more than the CPUs this
    process may run on (``os.sched_getaffinity``; ``os.cpu_count`` where that does not exist)."""
    available = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    job_threads = os.environ.get("OMP_NUM_THREADS", "").strip()
    if job_threads.isdigit() and int(job_threads) > 0:
        return min(available, int(job_threads))
    return available


class RadiomicsWorkerError(PipelineError):
    """A radiomics worker process died (killed for memory, crashed): the job fails rather than
    writing a metrics.json whose FRD is null for a reason that has nothing to do with the images."""


def radiomic_features(images: np.ndarray, desc: str = "radiomic features",
                      masks: np.ndarray | None = None, workers: int | None = None) -> tuple[np.ndarray, list[str]]:
    """(N, F) float64 radiomic features of (N, H, W) slices in [0, 1], and the feature names.

    ``masks`` ((N, H, W) bool, optional): extract inside each image's mask only (FRD per organ,
    frd-score's image + mask pairs); a mask of at most one pixel gives a row of NaN.

    Each slice goes through a temporary float32 NIfTI file because frd-score's per-image routine
    (which builds the mask and the 2-D handling the published numbers depend on) reads files.
    A slice whose extraction fails or yields nothing (a constant image) gives a row of NaN, dropped
    later as frd-score drops images with NaN features.

    PyRadiomics is single-threaded pure-Python glue around small C kernels (~0.15 CPU-s a 64 px
    slice), so the images are split into contiguous chunks over ``workers`` forked processes
    (default :func:`default_workers`); each image's features do not depend on which process
    extracted them, so the result is identical to one process's (tests/evaluate/measures/test_frd.py).
    ITK runs single-threaded during extraction (:data:`ITK_THREADS`), so the features are bit-identical
    from run to run and on machines with any number of CPUs.
    A worker that dies is a :class:`RadiomicsWorkerError` (the job fails), not a null FRD.
    Fork, not spawn: a spawned worker re-imports the evaluator's ``__main__`` (torch included),
    seconds per worker; the workers only run PyRadiomics / SimpleITK, never torch.
    """
    workers = default_workers() if workers is None else workers
    if workers < 1:
        raise ValueError(f"radiomic_features: workers must be >= 1, got {workers}")
    chunks = _chunks(len(images), workers)
    can_fork = "fork" in multiprocessing.get_all_start_methods() and not multiprocessing.current_process().daemon
    if workers == 1 or len(chunks) == 1 or not can_fork:  # a daemon process may not have children
        parts = [_extract_chunk(images[rows], _rows(masks, rows))
                 for rows in progress(chunks, desc=desc, total=len(chunks), unit="chunk")]
    else:
        _warm_up()  # once here, not once in every forked worker
        try:
            with ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("fork")) as pool:
                futures = [pool.submit(_extract_chunk, images[rows], _rows(masks, rows)) for rows in chunks]
                parts = [future.result()
                         for future in progress(futures, desc=desc, total=len(futures), unit="chunk")]
        except BrokenProcessPool as exc:
            raise RadiomicsWorkerError(
                f"{desc}: a radiomics worker process died ({exc}); too little memory for {workers} workers? "
                "Set OMP_NUM_THREADS (the evaluate job's threads) lower"
            ) from exc
    rows = [row for part_rows, _ in parts for row in part_rows]
    names = next((part_names for _, part_names in parts if part_names), [])
    if not names:
        raise ValueError("no radiomic features could be extracted from any image")
    return np.array([row if row is not None else [np.nan] * len(names) for row in rows], np.float64), names


def radiomic_features_of_sets(sets: dict[str, np.ndarray], workers: int | None = None) -> dict[str, np.ndarray]:
    """:func:`radiomic_features` of several named image sets through one pool of workers (the sets'
    images in one list, split back by set): no pool start and no idle tail per set. A set whose
    images give no features gets rows of NaN (FRD against it is then null with the reason)."""
    names = list(sets)
    if len({np.asarray(sets[name]).shape[1:] for name in names}) > 1:  # sizes differ: one call per set
        return {name: radiomic_features(sets[name], f"radiomics {name}", workers=workers)[0] for name in names}
    features, _ = radiomic_features(np.concatenate([np.asarray(sets[name]) for name in names]),
                                    f"radiomics {', '.join(names)}", workers=workers)
    bounds = np.cumsum([0] + [len(sets[name]) for name in names])
    return {name: features[start:stop] for name, start, stop in zip(names, bounds[:-1], bounds[1:])}


#: Images per chunk handed to a worker at most: small enough that progress lines and the two
#: cores' loads stay even, large enough that pickling and scheduling cost nothing beside extraction.
CHUNK_IMAGES = 8


def _chunks(n_images: int, workers: int) -> list[slice]:
    """Contiguous row ranges covering ``n_images``: a multiple of ``workers`` ranges of near-equal
    size (at most CHUNK_IMAGES each), so no worker waits alone on the last one."""
    rounds = max(1, math.ceil(n_images / (workers * CHUNK_IMAGES)))
    bounds = np.linspace(0, n_images, min(n_images, workers * rounds) + 1).round().astype(int)
    return [slice(int(start), int(stop)) for start, stop in zip(bounds[:-1], bounds[1:])] or [slice(0, 0)]


ITK_THREADS = 1
"""SimpleITK threads while extracting. ITK's multi-threaded reductions (the mean and standard deviation
of ``sitk.Normalize``, which PyRadiomics' normalizeImage calls on every image) split the image by the
thread count and add the partial sums in the order the threads finish, so with several threads the
normalised image's last bits changed from run to run and from machine to machine. FRD magnifies
them: the wavelet bands' ``firstorder_Mean`` are round-off alone (~1e-16, mathematically 0), and the
z-score scales them to unit size, so FRD and its floor moved in the 4th-5th digit. One thread fixes
the order, as PyRadiomics' own batch scripts do; parallelism comes from the forked workers (ITK's
calls on a 64 px slice are too short to gain from threads)."""


@contextlib.contextmanager
def _itk_threads(threads: int):
    """SimpleITK's global default thread count set to ``threads`` inside, restored after (the
    single-process path runs in the evaluator's own process)."""
    import SimpleITK as sitk

    previous = sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(threads)
    try:
        yield
    finally:
        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(previous)


@functools.cache
def _warm_up() -> None:
    """One extraction of a small synthetic image: PyRadiomics' first image in a process costs
    ~1.5 s more than the next (lazy imports and set-up), which forked workers then inherit."""
    ramp = np.add.outer(np.arange(16.0), np.arange(16.0)) / 30.0
    _extract_chunk(ramp[None], None)


def _rows(array: np.ndarray | None, rows: slice) -> np.ndarray | None:
    return None if array is None else array[rows]


def _extract_chunk(images: np.ndarray, masks: np.ndarray | None) -> tuple[list[list[float] | None], list[str]]:
    """Features of each image (None where extraction fails) and the feature names ([] if none)."""
    import SimpleITK as sitk
    from frd_score import frd

    _quiet_radiomics()
    extractor = frd.get_feature_extractor(frd_version=FRD_VERSION, image_dim=2)
    rows: list[list[float] | None] = []
    names: list[str] = []
    with tempfile.TemporaryDirectory(prefix="frd-") as folder, _itk_threads(ITK_THREADS):
        for index, image in enumerate(images):
            path = Path(folder) / f"{index}.nii.gz"
            sitk.WriteImage(sitk.GetImageFromArray(np.asarray(image, np.float32) * INTENSITY_SCALE), str(path))
            mask_path = None
            if masks is not None:
                mask_path = Path(folder) / f"{index}.mask.nii.gz"
                sitk.WriteImage(sitk.GetImageFromArray(np.asarray(masks[index], np.uint8)), str(mask_path))
            try:
                result = frd.process_image_mask_pair(
                    (path, mask_path), feature_extractor=extractor, frd_version=FRD_VERSION
                )
            except ValueError:  # PyRadiomics cannot bin a constant image (e.g. a collapsed generator's)
                result = None
            if result is None:
                rows.append(None)
                continue
            rows.append(list(result[0]))
            names = names or list(result[1])
    return rows, names


def frd_from_features(real: np.ndarray, generated: np.ndarray) -> tuple[float | None, float | None, int, str | None]:
    """(FRD, d_F^2, features used, reason-when-null) of generated vs real radiomic features.

    Follows frd-score v1: rows with NaN dropped, float32, z-score with the real set's statistics,
    columns not finite in either set dropped, then ln of the Fréchet distance. FRD is null (with
    the reason) when fewer than 2 usable images remain or the sets coincide (ln 0).
    """
    sets = []
    for features in (real, generated):
        features = np.asarray(features, np.float64)
        sets.append(features[~np.isnan(features).any(axis=1)].astype(np.float32).astype(np.float64))
    real, generated = sets
    if min(len(real), len(generated)) < 2:
        return None, None, 0, f"FRD needs at least 2 images with features per set, got {len(real)} and {len(generated)}"
    mean, std = real.mean(axis=0), real.std(axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        normalised = [(features - mean) / std for features in (real, generated)]
    keep = np.all(np.isfinite(normalised[0]), axis=0) & np.all(np.isfinite(normalised[1]), axis=0)
    if not keep.any():
        return None, None, 0, "no radiomic feature is finite after normalisation"
    distance = frechet_distance(normalised[0][:, keep], normalised[1][:, keep])
    if distance <= 0.0:
        return None, distance, int(keep.sum()), "the two feature sets coincide (d_F^2 = 0, ln undefined)"
    return math.log(distance), distance, int(keep.sum()), None
