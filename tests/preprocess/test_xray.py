"""X-ray slices stage: squares of the right size, splits by patient, masks carried, bad files named."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline.errors import ConfigError, InputDataError
from pipeline.preprocess.xray import main, patient_of, prepare_xray, square
from pipeline.sources.phantom_cxr import write_phantom_cxr_dataset


def _raw_set(folder: Path, names: dict[str, list[str]], size=(90, 60), masks: bool = False) -> Path:
    """A raw image set as the download stage writes it: <label>/<id>.jpeg and images.tsv."""
    rows = []
    rng = np.random.default_rng(0)
    for label, ids in names.items():
        (folder / label).mkdir(parents=True, exist_ok=True)
        for image_id in ids:
            pixels = rng.integers(0, 256, size=(size[1], size[0]), dtype=np.uint8)
            Image.fromarray(pixels, mode="L").save(folder / label / f"{image_id}.jpeg")
            rows.append((image_id, label, f"{label}/{image_id}.jpeg", "train"))
            if masks:
                (folder / "truth").mkdir(exist_ok=True)
                lungs = np.zeros((size[1], size[0]), np.uint8)
                lungs[:, : size[0] // 2] = 255
                Image.fromarray(lungs, mode="L").save(folder / "truth" / f"{image_id}_lungs.png")
    with open(folder / "images.tsv", "w", newline="") as handle:
        writer = csv.writer(handle, delimiter="\t", lineterminator="\n")
        writer.writerow(("image_id", "label", "path", "split"))
        writer.writerows(rows)
    return folder


PNEUMONIA = [f"train_person{p}_bacteria_{10 * p + k}" for p in range(1, 11) for k in range(p % 3 + 1)]


@pytest.mark.parametrize(
    "image_id, patient",
    [
        ("train_person12_bacteria_45", "person12"),
        ("test_person12_virus_3", "person12"),
        ("IM-0115-0001", "IM-0115"),
        ("val_NORMAL2-IM-0372-0001", "NORMAL2-IM-0372"),
        ("train_patient00042_study1_view1_frontal", "patient00042"),
        ("scan_7", "scan_7"),
    ],
)
def test_patient_of_kermany_names(image_id, patient):
    assert patient_of(image_id) == patient


def test_square_scales_the_short_side_and_centre_crops_the_long_one():
    pixels = np.full((40, 100), 128, np.uint8)
    pixels[:, :10] = 0  # a dark margin on the left, cropped away
    pixels[:, 45:55] = 255  # a bright centre stripe, kept
    out = square(Image.fromarray(pixels, mode="L"), 20, Image.Resampling.BICUBIC)
    assert out.shape == (20, 20)
    assert out[:, 0].min() > 100 and out[:, 9:11].min() > 240


def test_splits_are_patient_disjoint_with_film_numbers(tmp_path):
    raw = _raw_set(tmp_path / "raw", {"PNEUMONIA": PNEUMONIA, "NORMAL": ["IM-0001-0001"]})
    counts = prepare_xray(
        raw, "pneumonia", tmp_path / "out", resize=32, val_fraction=0.2, test_fraction=0.2, seed=3
    )
    assert sum(counts.values()) == len(PNEUMONIA) and min(counts.values()) > 0
    patients = {}
    for split in ("train", "val", "test"):
        with np.load(tmp_path / "out" / f"{split}.npz") as npz:
            assert npz["images"].shape[1:] == (32, 32) and npz["images"].dtype == np.float32
            assert 0 <= npz["images"].min() and npz["images"].max() <= 1
            assert "region_mask" not in npz.files
            patients[split] = set(npz["subject_ids"])
            for sid, index, image_id in zip(npz["subject_ids"], npz["slice_index"], npz["image_ids"]):
                films = sorted(i for i in PNEUMONIA if patient_of(i) == sid)
                assert films.index(image_id) == index
    assert not (
        patients["train"] & patients["val"]
        or patients["train"] & patients["test"]
        or patients["val"] & patients["test"]
    )
    with open(tmp_path / "out" / "manifest.csv", newline="") as handle:
        manifest = list(csv.DictReader(handle))
    assert sorted(row["image_id"] for row in manifest) == sorted(PNEUMONIA)
    assert (tmp_path / "out" / "contact_sheet.png").stat().st_size > 1000


def test_truth_masks_become_the_test_region_mask(tmp_path):
    raw = _raw_set(tmp_path / "raw", {"NORMAL": [f"IM-{p:04d}-0001" for p in range(1, 7)]}, masks=True)
    prepare_xray(raw, "NORMAL", tmp_path / "out", resize=30, test_fraction=0.3, seed=1)
    with np.load(tmp_path / "out" / "test.npz") as npz:
        mask = npz["region_mask"]
        assert mask.dtype == bool and mask.shape == npz["images"].shape
        # the left half of the 90x60 image, scaled to 45x30 (columns 0-22) and centre-cropped to
        # columns 7-36: the first 15 columns of the square
        assert mask[:, :, :14].all() and not mask[:, :, 17:].any()


def test_phantom_masks_stay_on_the_lungs(tmp_path):
    raw = write_phantom_cxr_dataset(
        tmp_path / "raw", seed=2, n_normal=6, pneumonia_per_normal=1.0, short_side=96
    )
    prepare_xray(raw, "NORMAL", tmp_path / "out", resize=48, test_fraction=0.5, seed=0)
    with np.load(tmp_path / "out" / "test.npz") as npz:
        images, mask = npz["images"], npz["region_mask"]
    assert 0.05 < mask.mean() < 0.5
    assert images[mask].mean() < images[~mask & (images > 0.2)].mean()


def test_corrupt_jpeg_is_named(tmp_path):
    raw = _raw_set(tmp_path / "raw", {"NORMAL": ["IM-0001-0001", "IM-0002-0001"]})
    broken = raw / "NORMAL" / "IM-0002-0001.jpeg"
    broken.write_bytes(broken.read_bytes()[:200])
    with pytest.raises(InputDataError, match="IM-0002-0001.jpeg"):
        prepare_xray(raw, "NORMAL", tmp_path / "out", resize=16)
    assert not (tmp_path / "out" / "train.npz").exists()


def test_unknown_label_and_bad_pattern(tmp_path):
    raw = _raw_set(tmp_path / "raw", {"NORMAL": ["IM-0001-0001"]})
    with pytest.raises(InputDataError, match="no image labelled 'COVID'"):
        prepare_xray(raw, "COVID", tmp_path / "out")
    with pytest.raises(ConfigError, match="patient"):
        prepare_xray(raw, "NORMAL", tmp_path / "out", patient_pattern=r"(IM-\d+)")


def test_cli_reports_errors_without_a_traceback(tmp_path, capsys):
    raw = _raw_set(tmp_path / "raw", {"NORMAL": ["IM-0001-0001"]})
    with pytest.raises(SystemExit) as exit_info:
        main(["--raw", str(raw), "--label", "OTHER", "--out-dir", str(tmp_path / "out")])
    assert exit_info.value.code == 1 and "no image labelled" in capsys.readouterr().err
