"""Slice extraction: one reference index for all, display orientation, subject-level splits."""

from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from pipeline.errors import ConfigError, InputDataError
from pipeline.preprocess import extract_slices as slices

SHAPE = (20, 24, 16)  # x (right), y (anterior), z (superior)
HEAD_Z = (4, 13)  # first and last axial slice holding head
SIZE = 32
SUBJECTS = [f"sub{i:02d}" for i in range(10)]
PARTNERED = {"sub03", "sub07"}
FAILED = "sub05"


def _affine() -> np.ndarray:
    return np.diag([2.0, 2.0, 2.0, 1.0])


def _volume(number: int) -> np.ndarray:
    """A box 'head' whose brightness encodes the subject and the slice, plus a marker at the
    patient's left-anterior corner (low x = left in RAS+, high y = anterior)."""
    volume = np.zeros(SHAPE, np.float32)
    for z in range(HEAD_Z[0], HEAD_Z[1] + 1):
        volume[3:17, 3:21, z] = 0.2 + 0.02 * number + 0.005 * z
    volume[3:7, 16:21, HEAD_Z[0] : HEAD_Z[1] + 1] = 1.0
    return volume


def _save(path: Path, volume: np.ndarray) -> Path:
    nib.save(nib.Nifti1Image(volume, _affine()), path)
    return path


@pytest.fixture()
def dataset(tmp_path) -> dict:
    folder = tmp_path / "masked"
    folder.mkdir()
    volumes, partners, qc = {}, {}, {}
    for number, subject in enumerate(SUBJECTS):
        volumes[subject] = _save(folder / f"{subject}.nii.gz", _volume(number))
        if subject in PARTNERED:
            partners[subject] = _save(folder / f"{subject}.partner.nii.gz", 1.0 - _volume(number))
        status = (
            {"status": "failed", "reason": "Jacobian out of range"} if subject == FAILED else {"status": "ok"}
        )
        qc[subject] = folder / f"{subject}.qc.json"
        qc[subject].write_text(json.dumps(status))
    return {
        "volumes": volumes,
        "partners": partners,
        "qc": qc,
        "reference": volumes["sub00"],
        "out": tmp_path / "slices",
    }


def _run(dataset, **knobs) -> dict[str, dict[str, np.ndarray]]:
    slices.extract_slices(
        dataset["volumes"],
        dataset["partners"],
        dataset["qc"],
        dataset["reference"],
        dataset["out"],
        size=SIZE,
        seed=4,
        **knobs,
    )
    return {split: dict(np.load(dataset["out"] / f"{split}.npz")) for split in slices.SPLITS}


def test_splits_by_subject_with_partners_in_test(dataset):
    data = _run(dataset, slab=3, val_fraction=0.2, test_fraction=0.3)
    members = {split: set(arrays["subject_ids"]) for split, arrays in data.items()}
    assert (
        not members["train"] & members["val"]
        and not members["train"] & members["test"]
        and not members["val"] & members["test"]
    )
    assert members["train"] | members["val"] | members["test"] == set(SUBJECTS) - {FAILED}
    assert PARTNERED <= members["test"]
    assert len(members["test"]) == 3 and len(members["val"]) == 2 and len(members["train"]) == 4
    for split, arrays in data.items():
        n = 3 * len(members[split])
        assert arrays["images"].shape == (n, SIZE, SIZE) and arrays["images"].dtype == np.float32
        assert arrays["subject_ids"].shape == (n,) and arrays["slice_index"].tolist() == [8, 9, 10] * len(
            members[split]
        )
        assert 0 <= arrays["images"].min() and arrays["images"].max() <= 1
    test = data["test"]
    assert test["has_partner"].tolist() == [s in PARTNERED for s in test["subject_ids"]]
    assert test["partner"].shape == test["images"].shape and not test["partner"][~test["has_partner"]].any()


def test_same_reference_index_and_partner_alignment(dataset):
    data = _run(dataset)
    test = data["test"]
    assert set(np.concatenate([a["slice_index"] for a in data.values()])) == {
        9
    }  # 4 + 0.5 * (13 - 4), rounded half up
    for image, partner, subject, flag in zip(
        test["images"], test["partner"], test["subject_ids"], test["has_partner"]
    ):
        number = SUBJECTS.index(subject)
        centre = image[SIZE // 2, SIZE // 2]
        assert centre == pytest.approx(0.2 + 0.02 * number + 0.005 * 9, abs=1e-5)
        if flag:
            head = image > 0
            assert np.allclose(partner[head], 1 - image[head], atol=1e-5)


def test_full_hu_partners_are_stored_in_hu_beside_the_windowed_partner(dataset, tmp_path):
    """partner_hu files in [0, 1] over [-1024, 3000] HU come out in HU as partner_hu, with the range
    stated; the windowed partner is the --partners file, as without them."""
    folder = tmp_path / "hu"
    folder.mkdir()
    partners_hu = {s: _save(folder / f"{s}.partner_hu.nii.gz", 0.5 * _volume(SUBJECTS.index(s))) for s in PARTNERED}
    data = _run(dataset, partners_hu=partners_hu, partner_hu_range=(-1024.0, 3000.0))["test"]
    plain = _run(dataset)["test"]
    flag = data["has_partner"]
    np.testing.assert_array_equal(data["partner"], plain["partner"])
    for hu, image, subject in zip(data["partner_hu"][flag], data["images"][flag], data["subject_ids"][flag]):
        head = image > 0
        np.testing.assert_allclose(hu[head], -1024.0 + 4024.0 * 0.5 * image[head], atol=1e-2)  # the files' values in HU
        np.testing.assert_allclose(hu[~head], -1024.0, atol=1e-2)  # air outside the head
    assert data["partner_hu_range"].tolist() == [-1024.0, 3000.0] and data["partner_hu"].dtype == np.float32
    with pytest.raises(ConfigError, match="one file for each partner"):
        _run(dataset, partners_hu={"sub03": partners_hu["sub03"]}, partner_hu_range=(-1024.0, 3000.0))
    with pytest.raises(ConfigError, match="partner_hu_range"):
        _run(dataset, partners_hu=partners_hu)


def test_display_orientation_puts_left_anterior_marker_top_right(dataset):
    image = _run(dataset)["train"]["images"][0]
    half = SIZE // 2
    quadrants = {
        "top-left": image[:half, :half],
        "top-right": image[:half, half:],
        "bottom-left": image[half:, :half],
        "bottom-right": image[half:, half:],
    }
    assert max(quadrants, key=lambda name: (quadrants[name] > 0.9).sum()) == "top-right"
    assert (quadrants["top-right"] > 0.9).sum() > 10 and (image > 0.9).sum() == (
        quadrants["top-right"] > 0.9
    ).sum()
    # x spans 20 voxels, y 24: zero padding to a square keeps the aspect, so the outer columns stay empty.
    assert not image[:, 0].any() and not image[:, -1].any() and image[SIZE // 2].any()


def test_manifest_lists_every_subject_and_the_exclusion(dataset):
    _run(dataset, slab=3)
    with open(dataset["out"] / "manifest.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert tuple(rows[0]) == slices.MANIFEST_COLUMNS
    excluded = [row for row in rows if row["status"] == "excluded"]
    assert [(r["subject_id"], r["split"], r["slice_index"]) for r in excluded] == [(FAILED, "", "")]
    assert "Jacobian out of range" in excluded[0]["reason"]
    kept = [row for row in rows if row["status"] == "ok"]
    assert len(kept) == 3 * (len(SUBJECTS) - 1)
    train = np.load(dataset["out"] / "train.npz")
    assert sorted((r["subject_id"], int(r["slice_index"])) for r in kept if r["split"] == "train") == sorted(
        zip(train["subject_ids"].tolist(), train["slice_index"].tolist())
    )
    first = kept[0]
    assert first["sha256"] == hashlib.sha256(dataset["volumes"][first["subject_id"]].read_bytes()).hexdigest()
    assert (dataset["out"] / "contact_sheet.png").read_bytes()[:4] == b"\x89PNG"


def test_reproducible_to_the_byte_and_seed_changes_split(dataset, tmp_path):
    _run(dataset)
    first = {split: (dataset["out"] / f"{split}.npz").read_bytes() for split in slices.SPLITS}
    _run(dataset)
    assert first == {split: (dataset["out"] / f"{split}.npz").read_bytes() for split in slices.SPLITS}
    free = sorted(set(SUBJECTS) - PARTNERED)
    splits = {seed: slices.split_subjects(free, [], 0.2, 0.2, seed) for seed in range(5)}
    assert len({tuple(sorted(s.items())) for s in splits.values()}) > 1


def test_split_keeps_one_subject_per_split_when_possible():
    assert sorted(slices.split_subjects(["a", "b", "c"], [], 0.1, 0.1, seed=0).values()) == [
        "test",
        "train",
        "val",
    ]
    assert sorted(slices.split_subjects(["a", "b"], [], 0.1, 0.1, seed=0).values()) == ["test", "train"]
    assert slices.split_subjects(["a"], [], 0.1, 0.1, seed=0) == {"a": "train"}
    assert slices.split_subjects(["a", "b"], ["b"], 0.0, 0.1, seed=0) == {"a": "train", "b": "test"}


def test_cli_finds_subjects_partners_and_qc_by_file_name(dataset, tmp_path):
    """The reference JSON names the windowed reference; the CLI uses that subject's own stage file."""
    out = dataset["out"]
    reference_json = tmp_path / "reference.json"
    reference_json.write_text(json.dumps({"reference": "sub01", "path": str(tmp_path / "windowed.nii.gz")}))
    slices.main([
        "--volumes", *map(str, dataset["volumes"].values()),
        "--partners", *map(str, dataset["partners"].values()),
        "--qc", *map(str, dataset["qc"].values()),
        "--reference-json", str(reference_json), "--out-dir", str(out),
        "--size", str(SIZE), "--seed", "4", "--slab", "1",
    ])  # fmt: skip
    test = np.load(out / "test.npz")
    assert PARTNERED <= set(test["subject_ids"]) and test["has_partner"].sum() == 2
    kept = np.concatenate([np.load(out / f"{s}.npz")["subject_ids"] for s in slices.SPLITS])
    assert FAILED not in set(kept) and len(kept) == len(SUBJECTS) - 1


def test_rejects_foreign_grids_and_bad_knobs(dataset, tmp_path):
    nib.save(nib.Nifti1Image(_volume(1)[::-1], np.diag([-2.0, 2.0, 2.0, 1.0])), tmp_path / "flipped.nii.gz")
    volumes = {**dataset["volumes"], "flipped": tmp_path / "flipped.nii.gz"}
    with pytest.raises(InputDataError, match="flipped.nii.gz.*RAS"):
        slices.extract_slices(volumes, {}, {}, dataset["reference"], tmp_path / "out")
    with pytest.raises(ConfigError, match="slab"):
        slices.extract_slices(dataset["volumes"], {}, {}, dataset["reference"], tmp_path / "out", slab=40)
    with pytest.raises(InputDataError, match="no volume"):
        slices.extract_slices(
            {"sub00": dataset["volumes"]["sub00"]},
            dataset["partners"],
            {},
            dataset["reference"],
            tmp_path / "o",
        )


def test_an_empty_split_keeps_the_array_schema(dataset):
    data = _run(dataset, val_fraction=0.0)
    assert data["val"]["images"].shape == (0, SIZE, SIZE) and data["val"]["images"].dtype == np.float32
    assert data["val"]["subject_ids"].shape == (0,) and data["val"]["slice_index"].dtype == np.int64
    assert data["test"]["has_partner"].dtype == bool


def _ellipse_head(shape: tuple[int, int, int], centre: tuple[float, float], radii: tuple[float, float],
                  value: float = 0.6, seed: int = 0) -> np.ndarray:
    """An elliptic cylinder 'head' (x, y radii in voxels) over the mid z range, with noise in the
    background (as an MR's) and one stray bright voxel far from the head."""
    x, y = np.meshgrid(np.arange(shape[0]), np.arange(shape[1]), indexing="ij")
    inside = ((x - centre[0]) / radii[0]) ** 2 + ((y - centre[1]) / radii[1]) ** 2 <= 1
    volume = np.abs(np.random.default_rng(seed).normal(0, 0.01, shape)).astype(np.float32)
    volume[inside, shape[2] // 4: 3 * shape[2] // 4] = value
    volume[1, 1, :] = 1.0
    return volume


def _head_box(image: np.ndarray) -> tuple[float, float, float]:
    """(row centre, column centre, longer side) of the largest blob above half the head's value (not
    the stray voxel)."""
    from scipy import ndimage

    labels, count = ndimage.label(image > 0.3)
    sizes = ndimage.sum_labels(image > 0.3, labels, range(1, count + 1))
    rows, columns = np.nonzero(labels == 1 + int(np.argmax(sizes)))
    return ((rows.min() + rows.max()) / 2, (columns.min() + columns.max()) / 2,
            max(rows.max() - rows.min() + 1, columns.max() - columns.min() + 1))


@pytest.mark.parametrize("grid, centre, radii, off_centre", [
    ((96, 96, 12), (30.0, 60.0), (18.0, 22.0), True),    # off-centre head, large grid (a CT's field of view)
    ((64, 80, 12), (33.0, 38.0), (24.0, 30.0), False),   # near-centre head filling a rectangular grid (an MR's)
])
def test_head_framing_centres_every_datasets_reference_head_at_the_same_size(tmp_path, grid, centre, radii,
                                                                              off_centre):
    """Two 'modalities' whose heads sit at different places and sizes in their grids come out alike:
    the reference head centred (within half a pixel) and its longer side head_fraction of the frame
    (within a pixel); the partner is cut from the same square; without head_fraction the heads of
    these grids sit apart (the behaviour that made the translator move the anatomy)."""
    folder = tmp_path / "vols"
    folder.mkdir()
    volume = _ellipse_head(grid, centre, radii)
    paths = {f"s{i}": _save(folder / f"s{i}.nii.gz", volume) for i in range(4)}
    partners = {"s3": _save(folder / "s3.partner.nii.gz", volume * 0.5)}
    size, fraction = 64, 0.8
    slices.extract_slices(paths, partners, {}, paths["s0"], tmp_path / "framed", size=size, slab=1,
                          head_fraction=fraction, seed=0)
    framed = np.load(tmp_path / "framed" / "test.npz")
    row, column, side = _head_box(framed["images"][0])
    assert row == pytest.approx((size - 1) / 2, abs=0.6) and column == pytest.approx((size - 1) / 2, abs=0.6)
    assert side == pytest.approx(fraction * size, abs=1.5)
    index = list(framed["subject_ids"]).index("s3")
    assert np.allclose(framed["partner"][index], 0.5 * framed["images"][index], atol=1e-5)
    slices.extract_slices(paths, {}, {}, paths["s0"], tmp_path / "whole", size=size, slab=1, seed=0)
    whole = np.load(tmp_path / "whole" / "train.npz")["images"][0]
    whole_row, whole_column, _ = _head_box(whole)
    assert (max(abs(whole_row - (size - 1) / 2), abs(whole_column - (size - 1) / 2)) > 2) == off_centre


def test_head_framing_rejects_bad_fractions_and_a_reference_without_a_head(dataset, tmp_path):
    with pytest.raises(ConfigError, match="head_fraction"):
        _run(dataset, head_fraction=1.5)
    empty = _save(tmp_path / "empty.nii.gz", np.zeros(SHAPE, np.float32))
    with pytest.raises(InputDataError, match="empty.nii.gz"):
        slices.extract_slices({"sub00": empty}, {}, {}, empty, tmp_path / "o", head_fraction=0.8)
