"""Tests of the thorax slices stage (report 003's data): the npz contract, nearest-neighbour map
resizing that keeps only the six classes, the level rule, split by patient, the HU window, and
bad label images named in the error. Expected values are computed here from the files
(pydicom, Pillow) and by hand, never by the stage's own helpers."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image

from pipeline.errors import ConfigError, InputDataError
from pipeline.preprocess.thorax_slices import auto_label_map, nearest_resize, prepare_thorax_slices
from thorax_support import SPLIT_KNOBS, build_thorax_raw

SPLIT = {"train_patients": 2, "val_patients": 1, "train_images": 3, "eval_slices_per_patient": 2}
GREY = (0, 50, 100, 150, 200, 230)


@pytest.fixture(scope="module")
def raw(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("thorax_raw")
    return build_thorax_raw(root, root / "staging", **SPLIT_KNOBS)


@pytest.fixture(scope="module")
def sliced(raw, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("thorax_slices") / "ct_thorax"
    prepare_thorax_slices(raw, out, size=32, seed=3, **SPLIT)
    return out


def _hu(path: Path) -> np.ndarray:
    ds = pydicom.dcmread(path)
    return ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)


def _grey_label(raw: Path, dcm: Path) -> np.ndarray:
    return np.asarray(Image.open(raw / "labels" / dcm.relative_to(raw).with_suffix(".png")))


def test_npz_contract_split_by_patient_and_counts(sliced):
    data = {split: np.load(sliced / f"{split}.npz") for split in ("train", "val", "test")}
    patients = {split: set(d["subject_ids"]) for split, d in data.items()}
    assert [len(patients[s]) for s in ("train", "val", "test")] == [2, 1, 2]
    assert not (patients["train"] & patients["val"] or patients["train"] & patients["test"]
                or patients["val"] & patients["test"])  # fmt: skip
    assert [len(data[s]["images"]) for s in ("train", "val", "test")] == [3, 2, 4]
    for d in data.values():
        assert d["images"].dtype == np.float32 and d["images"].shape[1:] == (32, 32)
        assert 0 <= d["images"].min() and d["images"].max() <= 1
        assert d["label_maps"].dtype == np.uint8 and d["label_maps"].shape == d["images"].shape
        assert set(np.unique(d["label_maps"])) <= set(range(6))
        assert d["hu_window"].tolist() == [-1000.0, 1000.0]
        assert d["slice_index"].dtype == np.int64
    with open(sliced / "manifest.csv", newline="") as handle:
        assert len(list(csv.DictReader(handle))) == 9
    assert (sliced / "contact_sheet.png").stat().st_size > 1000


def test_slices_are_the_ones_nearest_the_largest_lung_area(raw, sliced):
    data = np.load(sliced / "test.npz")
    for subject in set(data["subject_ids"]):
        files = sorted((raw / subject).rglob("*.dcm"))
        z = np.array([float(pydicom.dcmread(f).ImagePositionPatient[2]) for f in files])
        lung_area = np.array([(_grey_label(raw, f) == 100).sum() for f in files])
        peak = z[np.argmax(lung_area)]
        expected = sorted(np.argsort(np.abs(z - peak), kind="stable")[:2])
        picked = sorted(Path(i).name for i, s in zip(data["image_ids"], data["subject_ids"]) if s == subject)
        assert picked == sorted(files[k].name for k in expected)


def test_full_size_slices_equal_the_windowed_hu_and_the_class_of_each_grey_value(raw, tmp_path):
    out = tmp_path / "full"
    prepare_thorax_slices(raw, out, size=SPLIT_KNOBS["matrix"], seed=3, hu_window=(-600, 400), **SPLIT)
    data = np.load(out / "train.npz")
    for image, classes, image_id in zip(data["images"], data["label_maps"], data["image_ids"]):
        dcm = raw / image_id
        expected = np.clip((_hu(dcm) + 600) / 1000, 0, 1)
        np.testing.assert_allclose(image, expected, atol=1e-5)
        grey = _grey_label(raw, dcm)
        assert np.array_equal(np.array(GREY)[classes], grey)


def test_nearest_resize_keeps_only_the_six_classes_and_takes_the_centre_pixel():
    rng = np.random.default_rng(0)
    classes = rng.integers(0, 6, size=(40, 40)).astype(np.uint8)
    for size in (7, 13, 20, 32, 64, 97):
        out = nearest_resize(classes, size)
        assert out.shape == (size, size) and set(np.unique(out)) <= set(range(6))
    # halving samples the pixel under each output pixel's centre: index 2 i + 1
    assert np.array_equal(nearest_resize(classes, 20), classes[1::2, 1::2])
    # a non-square map is padded with background, centred
    wide = np.full((10, 20), 4, np.uint8)
    padded = nearest_resize(wide, 20)
    assert (padded[:5] == 0).all() and (padded[5:15] == 4).all() and (padded[15:] == 0).all()


def _copy(raw: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "raw"
    shutil.copytree(raw, copy)
    return copy


def test_a_grey_value_outside_the_six_names_the_file(raw, tmp_path):
    copy = _copy(raw, tmp_path)
    label = sorted((copy / "labels").rglob("*.png"))[1]
    grey = np.asarray(Image.open(label)).copy()
    grey[10, 10:13] = 77
    Image.fromarray(grey).save(label)
    with pytest.raises(InputDataError) as caught:
        prepare_thorax_slices(copy, tmp_path / "out", size=32, seed=3, **SPLIT)
    assert str(label) in str(caught.value) and "77" in str(caught.value) and "3 pixels" in str(caught.value)
    assert not (tmp_path / "out").exists()


def test_a_label_image_of_another_size_or_missing_names_the_file(raw, tmp_path):
    copy = _copy(raw, tmp_path)
    labels = sorted((copy / "labels").rglob("*.png"))
    Image.fromarray(np.asarray(Image.open(labels[0]))[:-4]).save(labels[0])
    with pytest.raises(InputDataError, match=str(labels[0]).replace("+", r"\+") + ".*label image is"):
        prepare_thorax_slices(copy, tmp_path / "out", size=32, seed=3, **SPLIT)
    labels[0].unlink()
    with pytest.raises(InputDataError, match="is missing"):
        prepare_thorax_slices(copy, tmp_path / "out", size=32, seed=3, **SPLIT)


def test_user_label_folder_and_bad_counts(raw, tmp_path):
    out = tmp_path / "user"
    prepare_thorax_slices(raw, out, size=32, seed=3, label_maps=str(raw / "labels"), **SPLIT)
    assert set(np.unique(np.load(out / "train.npz")["label_maps"])) >= {0, 1, 2}
    with pytest.raises(ConfigError, match="train_images"):
        prepare_thorax_slices(raw, out, size=32, **{**SPLIT, "train_images": 5})
    with pytest.raises(ConfigError, match="none for test"):
        prepare_thorax_slices(raw, out, size=32, **{**SPLIT, "train_patients": 4, "train_images": 4})


def test_the_approximate_automatic_rule_roughly_matches_drawn_maps(raw):
    """label_maps: auto is documented as approximate; on the phantom it should still find body,
    lungs and bone well and the heart and canal roughly (Dice computed here by hand)."""
    dice = {c: [] for c in range(1, 6)}
    for dcm in sorted(raw.rglob("*.dcm")):
        auto = auto_label_map(_hu(dcm))
        truth = np.searchsorted(GREY, _grey_label(raw, dcm))
        for c in dice:
            a, t = auto == c, truth == c
            if t.any():
                dice[c].append(2 * (a & t).sum() / (a.sum() + t.sum()))
    mean = {c: float(np.mean(v)) for c, v in dice.items()}
    assert mean[2] > 0.9 and mean[1] > 0.8 and mean[4] > 0.6, mean
    assert mean[3] > 0.6 and mean[5] > 0.6, mean
