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


def _ellipse_head(shape: tuple[int, int, int], voxel_mm: float, centre_mm: tuple[float, float],
                  radii_mm: tuple[float, float], value: float = 0.6, seed: int = 0) -> np.ndarray:
    """An elliptic cylinder 'head' (x, y centre and radii in mm) over the mid z range, with noise in
    the background (as an MR's) and one stray bright voxel far from the head."""
    x, y = (np.meshgrid(np.arange(shape[0]), np.arange(shape[1]), indexing="ij") + np.float64(0.0)) * voxel_mm
    inside = ((x - centre_mm[0]) / radii_mm[0]) ** 2 + ((y - centre_mm[1]) / radii_mm[1]) ** 2 <= 1
    volume = np.abs(np.random.default_rng(seed).normal(0, 0.01, shape)).astype(np.float32)
    volume[inside, shape[2] // 4: 3 * shape[2] // 4] = value
    volume[1, 1, :] = 1.0
    return volume


def _head_box(image: np.ndarray) -> tuple[float, float, float, float]:
    """(row centre, column centre, height, width) in pixels of the largest blob above half the head's
    value (not the stray voxel), from its area-weighted edge: sub-pixel."""
    from scipy import ndimage

    labels, count = ndimage.label(image > 0.3)
    sizes = ndimage.sum_labels(image > 0.3, labels, range(1, count + 1))
    blob = labels == 1 + int(np.argmax(sizes))
    rows, columns = np.nonzero(blob)
    weight = np.clip(image / 0.6, 0, 1) * ndimage.binary_dilation(blob, iterations=2)
    return (float((rows.min() + rows.max()) / 2), float((columns.min() + columns.max()) / 2),
            float(weight.sum(axis=0).max()), float(weight.sum(axis=1).max()))


def _framed_head(tmp_path: Path, name: str, shape, voxel_mm: float, centre_mm, frame_mm: float | None,
                 size: int = 64) -> dict[str, np.ndarray]:
    folder = tmp_path / name
    folder.mkdir()
    volume = _ellipse_head(shape, voxel_mm, centre_mm, (75.0, 92.0))
    affine = np.diag([voxel_mm, voxel_mm, voxel_mm, 1.0])
    paths = {}
    for i in range(4):
        paths[f"s{i}"] = folder / f"s{i}.nii.gz"
        nib.save(nib.Nifti1Image(volume, affine), paths[f"s{i}"])
    nib.save(nib.Nifti1Image(volume * 0.5, affine), folder / "s3.partner.nii.gz")
    nib.save(nib.Nifti1Image(volume * 0.25, affine), folder / "s3.partner_hu.nii.gz")
    slices.extract_slices(paths, {"s3": folder / "s3.partner.nii.gz"}, {}, paths["s0"], folder / "out", size=size,
                          slab=1, seed=0, frame_mm=frame_mm, partners_hu={"s3": folder / "s3.partner_hu.nii.gz"},
                          partner_hu_range=[0.0, 1.0])
    return dict(np.load(folder / "out" / "test.npz"))


def test_frame_mm_puts_every_datasets_head_at_the_frame_centre_at_one_scale(tmp_path):
    """The same 150 x 184 mm head on two 'modalities' grids (a CT's 96 x 96 voxels of 2.5 mm, the head
    off-centre; an MR's 70 x 90 voxels of 3 mm, the head elsewhere) comes out centred (within 0.3 px)
    and the same size in pixels (within 0.6 px of each other; 184 / 232 x 64 = 50.8 px front to back), and the
    partner and the full-HU partner are resampled with the very same frame; padding the whole plane
    instead leaves the heads apart in place and scale (the fault this framing removes)."""
    size, frame_mm = 64, 232.0
    ct = _framed_head(tmp_path, "ct", (96, 96, 12), 2.5, (80.0, 140.0), frame_mm)
    mr = _framed_head(tmp_path, "mr", (70, 90, 12), 3.0, (110.0, 130.0), frame_mm)
    boxes = [_head_box(data["images"][0]) for data in (ct, mr)]
    for row, column, height, width in boxes:
        assert row == pytest.approx((size - 1) / 2, abs=0.3) and column == pytest.approx((size - 1) / 2, abs=0.3)
        # the ellipse on whole voxels spans up to one voxel (~0.7 px) less than its 184 / 150 mm
        assert height == pytest.approx(184 / frame_mm * size, abs=1.0)
        assert width == pytest.approx(150 / frame_mm * size, abs=1.0)
    assert boxes[0][2] == pytest.approx(boxes[1][2], abs=0.6) and boxes[0][3] == pytest.approx(boxes[1][3], abs=0.6)
    for data in (ct, mr):
        index = list(data["subject_ids"]).index("s3")
        assert np.allclose(data["partner"][index], 0.5 * data["images"][index], atol=1e-5)
        assert np.allclose(data["partner_hu"][index], 0.25 * data["images"][index], atol=1e-5)
    whole = [_head_box(_framed_head(tmp_path, f"{name}_whole", shape, voxel, centre, None)["images"][0])
             for name, shape, voxel, centre in (("ct", (96, 96, 12), 2.5, (80.0, 140.0)),
                                                ("mr", (70, 90, 12), 3.0, (110.0, 130.0)))]
    assert abs(whole[0][0] - whole[1][0]) + abs(whole[0][1] - whole[1][1]) > 3
    assert abs(whole[0][2] - whole[1][2]) > 3


def test_framing_rejects_bad_sizes_a_head_larger_than_the_frame_and_a_reference_without_a_head(dataset, tmp_path):
    with pytest.raises(ConfigError, match="frame_mm"):
        _run(dataset, frame_mm=0.0)
    with pytest.raises(ConfigError, match="frame_mm.*spans"):
        _run(dataset, frame_mm=20.0)  # the box head spans 36 mm
    empty = _save(tmp_path / "empty.nii.gz", np.zeros(SHAPE, np.float32))
    with pytest.raises(InputDataError, match="empty.nii.gz"):
        slices.extract_slices({"sub00": empty}, {}, {}, empty, tmp_path / "o", frame_mm=200.0)
    oblong = tmp_path / "oblong.nii.gz"
    nib.save(nib.Nifti1Image(_volume(0), np.diag([2.0, 3.0, 2.0, 1.0])), oblong)
    with pytest.raises(InputDataError, match="oblong.nii.gz.*square voxels"):
        slices.extract_slices({"sub00": oblong}, {}, {}, oblong, tmp_path / "o2", frame_mm=200.0)
