"""CheXpert-layout prep: frontal only, the uncertain-label policy, bit depths, radiograph checks,
splits by patient with the ladder patients in test, and the npz contract."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline.errors import ConfigError, InputDataError
from pipeline.preprocess.chexpert_prep import label_value, prepare_chexpert, read_radiograph
from pipeline.preprocess.ctr import ctr_from_masks
from pipeline.sources.phantom_chexpert import write_chexpert_layout

ROOT = "CheXpert-v1.0-small"
HEADER = ("Path", "Sex", "Age", "Frontal/Lateral", "AP/PA", "No Finding", "Cardiomegaly")
#: (patient, study, view, Cardiomegaly as written); hand-made to cover each label text.
ROWS = [
    ("patient00001", 1, "Frontal", "1.0"),
    ("patient00001", 1, "Lateral", "1.0"),
    ("patient00002", 1, "Frontal", "0.0"),
    ("patient00003", 1, "Frontal", ""),
    ("patient00004", 1, "Frontal", "-1.0"),
    ("patient00004", 2, "Frontal", "1.0"),
    ("patient00005", 1, "Frontal", "-1.0"),
]
#: What each policy must make of the frontal rows above, by image id (checked by hand).
EXPECTED = {
    "ignore": {"p1s1": 1, "p2s1": 0, "p3s1": 0, "p4s2": 1},
    "zeros": {"p1s1": 1, "p2s1": 0, "p3s1": 0, "p4s1": 0, "p4s2": 1, "p5s1": 0},
    "ones": {"p1s1": 1, "p2s1": 0, "p3s1": 0, "p4s1": 1, "p4s2": 1, "p5s1": 1},
}


def _film(seed: int, shape: tuple[int, int] = (48, 40)) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def _hand_made(folder: Path, rows=ROWS, image=None) -> Path:
    """train.csv + images as a CheXpert copy would have them; ``image(path) -> bytes`` overrides."""
    root = folder / ROOT
    lines = []
    for number, (patient, study, view, label) in enumerate(rows):
        name = "view1_frontal.jpg" if view == "Frontal" else "view2_lateral.jpg"
        path = f"{ROOT}/train/{patient}/study{study}/{name}"
        lines.append([path, "Female", "50", view, "AP" if view == "Frontal" else "", "", label])
        target = folder / path
        target.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(_film(number)).save(target, format="JPEG")
    with open(root / "train.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(HEADER)
        writer.writerows(lines)
    return folder


def _short_id(image_id: str) -> str:
    # train_patient00004_study2_view1_frontal -> p4s2
    parts = image_id.split("_")
    return f"p{int(parts[1][len('patient') :])}s{parts[2][len('study') :]}"


def _all_splits(out: Path) -> dict[str, np.lib.npyio.NpzFile]:
    return {split: np.load(out / f"{split}.npz") for split in ("train", "val", "test")}


@pytest.mark.parametrize("policy", ["ignore", "zeros", "ones"])
def test_uncertain_labels_follow_the_policy_and_laterals_are_dropped(tmp_path, policy):
    raw = _hand_made(tmp_path / "raw")
    out = tmp_path / "slices"
    prepare_chexpert(raw, out, size=16, uncertain_policy=policy, val_fraction=0.2, test_fraction=0.2)
    labels = {}
    for arrays in _all_splits(out).values():
        assert arrays["images"].shape[1:] == (16, 16) and arrays["images"].dtype == np.float32
        for image_id, label in zip(arrays["image_ids"], arrays["labels"]):
            assert "lateral" not in image_id
            labels[_short_id(str(image_id))] = int(label)
        assert np.isnan(arrays["ctr"]).all() and "label_maps" not in arrays  # no truth: real data
    assert labels == EXPECTED[policy]
    ladder = np.load(out / "ctr_ladder.npz")
    assert ladder["images"].shape == (0, 0, 16, 16)


def test_label_text_reading_and_bad_values():
    assert [label_value(t, "ignore") for t in ("1.0", "0.0", "", "-1.0")] == [1, 0, 0, None]
    with pytest.raises(ValueError, match="none of"):
        label_value("2.0", "ignore")
    with pytest.raises(ConfigError, match="uncertain_policy"):
        label_value("1.0", "maybe")


def test_a_row_whose_image_is_missing_names_it(tmp_path):
    raw = _hand_made(tmp_path / "raw")
    missing = raw / ROOT / "train" / "patient00002" / "study1" / "view1_frontal.jpg"
    missing.unlink()
    with pytest.raises(InputDataError, match="patient00002/study1/view1_frontal.jpg") as error:
        prepare_chexpert(raw, tmp_path / "slices", size=16)
    assert "train.csv (line 4)" in str(error.value)
    assert not (tmp_path / "slices" / "train.npz").exists()  # nothing half-written


def test_colour_image_is_not_a_radiograph(tmp_path):
    raw = _hand_made(tmp_path / "raw")
    colour = raw / ROOT / "train" / "patient00003" / "study1" / "view1_frontal.jpg"
    rgb = np.stack([_film(1), _film(2), _film(3)], axis=-1)
    Image.fromarray(rgb, mode="RGB").save(colour.with_suffix(".png"))
    colour.with_suffix(".png").rename(colour)  # a PNG behind a .jpg name: read by content
    with pytest.raises(InputDataError, match="distinct colour channels") as error:
        prepare_chexpert(raw, tmp_path / "slices", size=16)
    assert str(colour) in str(error.value)


def test_grey_stored_as_rgb_is_read_as_one_channel(tmp_path):
    grey = _film(5)
    path = tmp_path / "grey_rgb.png"
    Image.fromarray(np.stack([grey] * 3, axis=-1), mode="RGB").save(path)
    np.testing.assert_array_equal(read_radiograph(path, 8, 3.0), grey.astype(np.float32) / 255)


@pytest.mark.parametrize("shape", [(12, 40), (200, 40)])
def test_absurd_sizes_are_not_radiographs(tmp_path, shape):
    path = tmp_path / "odd.png"
    Image.fromarray(_film(0, shape)).save(path)
    with pytest.raises(InputDataError, match="not a radiograph") as error:
        read_radiograph(path, 32, 3.0)
    assert str(path) in str(error.value)


def test_unreadable_image_names_the_file(tmp_path):
    path = tmp_path / "broken.jpg"
    path.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    with pytest.raises(InputDataError, match="not a readable image") as error:
        read_radiograph(path, 8, 3.0)
    assert str(path) in str(error.value)


def test_16_bit_png_keeps_its_full_range(tmp_path):
    values = (np.arange(64 * 48, dtype=np.uint32) * 21 % 65536).astype(np.uint16).reshape(64, 48)
    path = tmp_path / "sixteen.png"
    Image.fromarray(values).save(path)
    with Image.open(path) as check:
        assert check.mode.startswith("I;16")  # really written as 16-bit
    pixels = read_radiograph(path, 32, 3.0)
    np.testing.assert_allclose(pixels, values / 65535.0, atol=1e-7)
    # 8-bit reading would have thrown away the low byte: distinct 16-bit levels survive
    assert len(np.unique(pixels)) > 256


def test_16_bit_png_in_the_csv_is_prepared(tmp_path):
    raw = _hand_made(tmp_path / "raw")
    target = raw / ROOT / "train" / "patient00002" / "study1" / "view1_frontal.jpg"
    ramp = np.tile(np.linspace(0, 65535, 40).astype(np.uint16), (48, 1))
    Image.fromarray(ramp).save(target.with_suffix(".png"))
    target.with_suffix(".png").rename(target)
    out = tmp_path / "slices"
    prepare_chexpert(raw, out, size=16, val_fraction=0.0, test_fraction=0.0)
    arrays = np.load(out / "train.npz")
    image = arrays["images"][list(arrays["image_ids"]).index("train_patient00002_study1_view1_frontal")]
    # 40 x 48 -> short side 16 (16 x 19), centre crop: a left-to-right ramp from ~0 to ~1 in every row
    assert image[:, 0].max() < 0.1 and image[:, -1].min() > 0.9
    assert np.all(np.diff(image.mean(axis=0)) > 0)


def test_phantom_npz_contract_splits_by_patient_and_ladder_in_test(tmp_path):
    raw = tmp_path / "raw"
    write_chexpert_layout(
        raw, seed=3, n_patients_train=14, n_patients_valid=4, short_side=64, ladder_patients=3
    )
    out = tmp_path / "slices"
    counts = prepare_chexpert(raw, out, size=32, val_fraction=0.2, test_fraction=0.25, seed=1)
    splits = _all_splits(out)
    patients = {split: set(map(str, arrays["subject_ids"])) for split, arrays in splits.items()}
    assert not (
        patients["train"] & patients["val"]
        or patients["train"] & patients["test"]
        or patients["val"] & patients["test"]
    )
    for split, arrays in splits.items():
        n = counts[split]
        assert arrays["images"].shape == (n, 32, 32) and arrays["labels"].dtype == np.int64
        assert arrays["label_maps"].shape == (n, 32, 32) and arrays["label_maps"].dtype == np.uint8
        assert set(np.unique(arrays["label_maps"])) <= {0, 1, 2}
        assert arrays["ctr"].dtype == np.float32 and not np.isnan(arrays["ctr"]).any()
        assert 0 <= arrays["images"].min() and arrays["images"].max() <= 1
        measured = np.array([ctr_from_masks(m) for m in arrays["label_maps"]])
        assert np.abs(measured - arrays["ctr"]).max() < 0.08  # 32 px: +-1 px of ~12 and ~28
        # labels: 1 only above the threshold (uncertain near it were dropped by the default ignore)
        assert np.all(arrays["ctr"][arrays["labels"] == 1] > 0.5)
        assert np.all(arrays["ctr"][arrays["labels"] == 0] < 0.5)
    ladder = np.load(out / "ctr_ladder.npz")
    p, k = ladder["ctr"].shape
    assert (p, k) == (3, 7)
    assert ladder["images"].shape == (3, 7, 32, 32) and ladder["label_maps"].shape == (3, 7, 32, 32)
    assert set(map(str, ladder["subject_ids"])) <= patients["test"]
    assert np.all(np.diff(ladder["ctr"], axis=1) > 0)
    for patient in range(p):
        base = ladder["base_index"][patient]
        assert ladder["ctr"][patient, base] < 0.5
    with open(out / "manifest.csv", newline="") as handle:
        manifest = list(csv.DictReader(handle))
    assert len(manifest) == sum(counts.values())
    assert (out / "contact_sheet.png").stat().st_size > 0
    assert not any(math.isnan(float(row["ctr"])) for row in manifest)
