"""Each thorax-phantom patient has its own texture (issue 25: report 003 transfers another patient's
texture organ by organ, so textures must differ between patients more than within one).

Measured here from the written files only (pydicom + the truth tissue map), with measures written
here: per tissue (lung parenchyma, fat, muscle: pure tissue, so anatomy does not count) the 1-D
Wasserstein distance between the HU histograms of two slices, and the relative distance between
the Gram matrices of a small filter bank applied to the tissue's fluctuations (its mean removed,
everything else zeroed, so no edge of a neighbour responds). Within a patient: its two adjacent
slices; between patients: the first slices of every pair.
"""

from __future__ import annotations

import csv
import itertools
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from scipy import ndimage
from scipy.stats import wasserstein_distance

from pipeline.sources import phantom_tcia_thorax as tp

SEED = 5
KNOBS = {"n_patients": 8, "slices_per_patient": 2}  # default grid and textures
TISSUE_VALUES = {"lung parenchyma": 1, "fat": 2, "muscle": 4}  # tp.TISSUES order, checked below
EROSION_PX = 3
#: Between-patient distance must be at least this many times the within-patient one.
MARGIN = 2.0


def _hu(path: Path) -> np.ndarray:
    ds = pydicom.dcmread(path)
    return ds.pixel_array.astype(np.float64) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)


def _filter_bank(image: np.ndarray) -> np.ndarray:
    return np.stack([image, ndimage.sobel(image, 0), ndimage.sobel(image, 1),
                     ndimage.gaussian_laplace(image, 1), ndimage.gaussian_laplace(image, 2)])  # fmt: skip


def texture_features(hu: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """HU values inside the eroded tissue, and the Gram matrix of its fluctuations' filter responses."""
    inner = ndimage.binary_erosion(mask, iterations=EROSION_PX)
    fluctuation = np.where(mask, hu - hu[mask].mean(), 0.0)
    responses = _filter_bank(fluctuation)[:, inner]
    return hu[inner], responses @ responses.T / responses.shape[1]


def gram_distance(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a - b) / np.sqrt(np.linalg.norm(a) * np.linalg.norm(b)))


def patient_slices(root: Path) -> dict[str, list[tuple[np.ndarray, np.ndarray]]]:
    """Patient -> its slices as (HU, truth tissue map), in file order."""
    slices: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {}
    for path in sorted(root.glob("THX-*/*/*/*.dcm")):
        relative = path.relative_to(root)
        tissue = np.asarray(Image.open(root / "truth" / relative.parent / f"{path.stem}_tissue.png"))
        slices.setdefault(relative.parts[0], []).append((_hu(path), tissue))
    return slices


def texture_distances(root: Path) -> dict[str, dict[str, tuple[float, float]]]:
    """Tissue -> measure -> (mean within-patient distance, mean between-patient distance)."""
    slices = patient_slices(root)
    result = {}
    for tissue, value in TISSUE_VALUES.items():
        features = {pid: [texture_features(hu, labels == value) for hu, labels in stack] for pid, stack in slices.items()}
        within = [(wasserstein_distance(f[0][0], f[1][0]), gram_distance(f[0][1], f[1][1])) for f in features.values()]
        between = [(wasserstein_distance(features[p][0][0], features[q][0][0]),
                    gram_distance(features[p][0][1], features[q][0][1]))
                   for p, q in itertools.combinations(sorted(features), 2)]  # fmt: skip
        result[tissue] = {
            "histogram": (float(np.mean([w[0] for w in within])), float(np.mean([b[0] for b in between]))),
            "gram": (float(np.mean([w[1] for w in within])), float(np.mean([b[1] for b in between]))),
        }
    return result


@pytest.fixture(scope="module")
def phantom(tmp_path_factory) -> Path:
    return tp.write_phantom_thorax_dataset(tmp_path_factory.mktemp("texture") / "raw", SEED, **KNOBS)


def test_between_patient_texture_distance_exceeds_within_patient(phantom):
    assert [tp.TISSUES[v] for v in TISSUE_VALUES.values()] == ["lung", "fat", "muscle"]
    for tissue, measures in texture_distances(phantom).items():
        for measure, (within, between) in measures.items():
            assert between >= MARGIN * within, f"{tissue} {measure}: between {between:.3g} vs within {within:.3g}"


def test_textures_are_recorded_per_patient_and_the_most_different_pair_is_found(phantom):
    with open(phantom / "truth" / tp.TEXTURES_TSV, newline="") as handle:
        rows = list(csv.DictReader(handle, delimiter="\t"))
    with open(phantom / "subjects.tsv", newline="") as handle:
        subjects = [row["subject_id"] for row in csv.DictReader(handle, delimiter="\t")]
    assert [row["subject_id"] for row in rows] == subjects
    params = tp.ThoraxPhantomParams()
    for row in rows:
        assert params.kernel_sharpness[0] <= float(row["kernel_sharpness"]) <= params.kernel_sharpness[1]
        assert params.lung_pattern_hu[0] <= float(row["lung_pattern_hu"]) <= params.lung_pattern_hu[1]
        assert params.tissue_hu["lung"][0] <= float(row["lung_hu"]) <= params.tissue_hu["lung"][1]
        # the soft kernel blurs most; the sharp one least
        assert float(row["psf_mm"]) == pytest.approx(
            params.psf_mm[1] - float(row["kernel_sharpness"]) * (params.psf_mm[1] - params.psf_mm[0]), abs=1e-3
        )
    columns = list(tp.COARSE_TEXTURE_COLUMNS)
    values = np.array([[float(row[c]) for c in columns] for row in rows])
    scaled = (values - values.mean(0)) / values.std(0)
    distance = {(a, b): np.linalg.norm(scaled[i] - scaled[j]) for (i, a), (j, b) in itertools.combinations(enumerate(subjects), 2)}
    assert set(tp.most_different_textures(phantom / "truth" / tp.TEXTURES_TSV)) == set(max(distance, key=distance.get))
    some = subjects[:3]
    picked = tp.most_different_textures(phantom / "truth" / tp.TEXTURES_TSV, candidates=some)
    assert set(picked) == set(max(((a, b) for a, b in distance if a in some and b in some), key=distance.get))


def test_texture_knobs_leave_the_anatomy_alone(phantom, tmp_path):
    """Texture is drawn from its own stream: other texture knobs, the same label maps; other images."""
    other = tp.write_phantom_thorax_dataset(tmp_path / "other", SEED, **KNOBS, kernel_sharpness=[1.0, 1.0],
                                            lung_pattern_hu=[80.0, 80.0])  # fmt: skip
    labels = sorted(p.relative_to(phantom) for p in (phantom / "labels").rglob("*.png"))
    assert labels and all((phantom / p).read_bytes() == (other / p).read_bytes() for p in labels)
    first = sorted(phantom.glob("THX-*/*/*/*.dcm"))[0]
    assert not np.array_equal(_hu(first), _hu(other / first.relative_to(phantom)))
