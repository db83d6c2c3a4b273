"""Tests of the 2-D CT slices stage (RSNA layout): HU, window, labels, z order, patient splits,
the 12-bit quirk, bad input. Inputs are small RSNA-layout folders built here with pydicom."""

from __future__ import annotations

import csv
import re
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian

from pipeline.errors import InputDataError
from pipeline.preprocess import ct_slices
from pipeline.preprocess.ct_slices import prepare_ct_slices

pytestmark = pytest.mark.filterwarnings("ignore:Invalid value for VR UI")  # RSNA's ID_<hex> UIDs

SUBTYPES = ["epidural", "intraparenchymal", "intraventricular", "subarachnoid", "subdural"]
SIZE = 16
CENTER, WIDTH = 40.0, 80.0


def _window(hu):
    """DICOM PS3.3 C.11.2.1.2.1 linear VOI, scaled to [0, 1], written out independently."""
    return np.clip((np.asarray(hu, float) - (CENTER - 0.5)) / (WIDTH - 1) + 0.5, 0, 1)


def _write_dicom(path: Path, hu: np.ndarray, patient: str, z_mm: float, quirk: bool = False, pixels=True) -> None:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = "1.2.826.0.1." + str(abs(hash((path.name, z_mm))) % 10**12)
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.PatientID = patient
    ds.StudyInstanceUID = "1.2.826.0.2." + str(abs(hash(patient)) % 10**12)
    ds.Modality = "CT"
    ds.ImagePositionPatient = ["-100", "-100", f"{z_mm:g}"]
    ds.ImageOrientationPatient = ["1", "0", "0", "0", "1", "0"]
    ds.PixelSpacing = ["0.5", "0.5"]
    ds.Rows, ds.Columns = hu.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.RescaleSlope = 1
    if quirk:  # RSNA's quirk: intercept 0, values in 12-bit two's complement
        ds.RescaleIntercept = 0
        stored = np.round(hu).astype(np.int32) % 4096
    else:
        ds.RescaleIntercept = -1024
        stored = np.round(hu).astype(np.int32) + 1024
    if pixels:
        ds.PixelData = stored.astype(np.uint16).tobytes()
    ds.save_as(path, enforce_file_format=True)


def _image_id(patient: int, k: int) -> str:
    return f"ID_{patient:04x}{k:05x}"


def _build(root: Path, n_patients: int = 3, n_slices: int = 3, positive: dict | None = None) -> tuple[Path, dict]:
    """An RSNA-layout folder; slice k of patient p is a constant image of 10 p + 15 k HU (brain
    range), written under names that do not follow z order. ``positive``: image id -> subtypes."""
    positive = positive or {}
    (root / "stage_2_train").mkdir(parents=True)
    expected = {}
    for p in range(n_patients):
        for k in range(n_slices):
            image_id = _image_id(p, (7 * k + 3) % 11)  # file names out of z order
            hu = np.full((SIZE, SIZE), 10.0 * p + 15.0 * k)
            _write_dicom(root / "stage_2_train" / f"{image_id}.dcm", hu, f"ID_{p:08x}", z_mm=-50.0 + 5 * k)
            expected[image_id] = {"patient": f"ID_{p:08x}", "slice_index": k, "hu": hu}
    with open(root / "stage_2_train.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["ID", "Label"])
        for image_id in expected:
            flagged = positive.get(image_id, [])
            for subtype in SUBTYPES:
                writer.writerow([f"{image_id}_{subtype}", int(subtype in flagged)])
            writer.writerow([f"{image_id}_any", int(bool(flagged))])
    return root, expected


def _load(out: Path) -> dict[str, dict[str, np.ndarray]]:
    return {split: dict(np.load(out / f"{split}.npz")) for split in ("train", "val", "test")}


def test_slices_are_windowed_hu_with_labels_and_z_order(tmp_path):
    raw, expected = _build(tmp_path / "raw", positive={_image_id(1, 3): ["subdural", "subarachnoid"]})
    counts = prepare_ct_slices(raw, tmp_path / "out", size=SIZE, seed=0)

    splits = _load(tmp_path / "out")
    assert sum(counts.values()) == len(expected)
    for data in splits.values():
        assert data["images"].dtype == np.float32 and data["labels"].dtype == np.int64
        assert data["subtypes"].dtype == np.uint8 and data["subtypes"].shape[1:] == (6,)
        for n, image_id in enumerate(data["image_ids"]):
            want = expected[str(image_id)]
            np.testing.assert_allclose(data["images"][n], _window(want["hu"]), atol=1e-6)
            assert data["subject_ids"][n] == want["patient"]
            assert data["slice_index"][n] == want["slice_index"]
            flagged = image_id == _image_id(1, 3)
            assert data["labels"][n] == int(flagged)
            assert list(data["subtypes"][n]) == ([0, 0, 0, 1, 1, 1] if flagged else [0] * 6)
    with open(tmp_path / "out" / "manifest.csv", newline="") as handle:
        assert len(list(csv.DictReader(handle))) == len(expected)
    assert (tmp_path / "out" / "contact_sheet.png").stat().st_size > 0


def test_resize_keeps_a_constant_image_and_pads_a_rectangle_with_air(tmp_path):
    hu = np.full((12, 20), 60.0)
    hu[:, :2] = -1000.0
    resized = ct_slices.square_resize(hu.astype(np.float32), 10)
    assert resized.shape == (10, 10)
    assert np.isclose(resized[5, 5], 60.0)  # the centre stays brain
    assert resized[0, 5] < -500  # padded rows above are air (the image's minimum), not 0 HU


def test_quirk_file_is_decoded_to_the_right_hu(tmp_path):
    raw, expected = _build(tmp_path / "raw", n_patients=2)
    hu = np.full((SIZE, SIZE), 70.0)
    hu[:, : SIZE // 2] = -1000.0  # air: stored as 3096 in the quirk
    quirk_id = next(iter(expected))
    z_mm = -50.0 + 5 * expected[quirk_id]["slice_index"]
    _write_dicom(raw / "stage_2_train" / f"{quirk_id}.dcm", hu, expected[quirk_id]["patient"], z_mm, quirk=True)
    assert pydicom.dcmread(raw / "stage_2_train" / f"{quirk_id}.dcm").pixel_array.max() == 3096

    prepare_ct_slices(raw, tmp_path / "out", size=SIZE, window_center=0, window_width=4000, seed=0)

    for data in _load(tmp_path / "out").values():
        for n, image_id in enumerate(data["image_ids"]):
            if image_id == quirk_id:
                want = np.clip((hu - (0 - 0.5)) / (4000 - 1) + 0.5, 0, 1)
                np.testing.assert_allclose(data["images"][n], want, atol=1e-6)
                return
    pytest.fail("quirk slice missing from the outputs")


def test_splits_never_share_a_patient_and_each_gets_haemorrhage(tmp_path):
    bleeding = {_image_id(p, (7 * k + 3) % 11): ["intraparenchymal"] for p in range(0, 20, 3) for k in (0, 1)}
    raw, expected = _build(tmp_path / "raw", n_patients=20, n_slices=3, positive=bleeding)
    prepare_ct_slices(raw, tmp_path / "out", size=SIZE, val_fraction=0.2, test_fraction=0.2, seed=4)

    splits = _load(tmp_path / "out")
    patients = {split: set(map(str, data["subject_ids"])) for split, data in splits.items()}
    assert not patients["train"] & patients["val"] and not patients["train"] & patients["test"]
    assert not patients["val"] & patients["test"]
    assert set().union(*patients.values()) == {v["patient"] for v in expected.values()}
    for split, data in splits.items():
        for patient in patients[split]:
            assert (data["subject_ids"] == patient).sum() == 3  # all of a patient's slices, together
        assert data["labels"].sum() > 0, f"{split} has no haemorrhage"


def test_same_seed_same_bytes(tmp_path):
    raw, _ = _build(tmp_path / "raw", n_patients=6)
    prepare_ct_slices(raw, tmp_path / "a", size=SIZE, seed=3)
    prepare_ct_slices(raw, tmp_path / "b", size=SIZE, seed=3)
    for name in ("train.npz", "val.npz", "test.npz", "manifest.csv"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()


def test_blanked_patient_id_falls_back_to_the_study(tmp_path, caplog):
    raw, expected = _build(tmp_path / "raw", n_patients=4)
    for path in (raw / "stage_2_train").iterdir():
        ds = pydicom.dcmread(path)
        ds.PatientID = "ANONYMIZED"  # what the de-identification library writes
        ds.save_as(path)
    prepare_ct_slices(raw, tmp_path / "out", size=SIZE, seed=0)
    splits = _load(tmp_path / "out")
    assert len(set().union(*(set(map(str, d["subject_ids"])) for d in splits.values()))) == 4
    assert all(re.fullmatch(r"sub-[0-9a-f]{12}", str(s)) for d in splits.values() for s in d["subject_ids"])
    assert "grouped by StudyInstanceUID" in caplog.text


# ---------------------------------------------------------------- bad input: clear error, nothing written


def _rewrite_csv(raw: Path, edit) -> None:
    path = raw / "stage_2_train.csv"
    lines = path.read_text().splitlines()
    path.write_text("\n".join(edit(lines)) + "\n")


def _fails(raw: Path, out: Path, *words: str) -> InputDataError:
    with pytest.raises(InputDataError) as raised:
        prepare_ct_slices(raw, out, size=SIZE)
    for word in words:
        assert word in str(raised.value), str(raised.value)
    return raised.value


def test_labels_naming_a_missing_file(tmp_path):
    raw, expected = _build(tmp_path / "raw")
    gone = sorted(expected)[1]
    (raw / "stage_2_train" / f"{gone}.dcm").unlink()
    _fails(raw, tmp_path / "out", str(raw / "stage_2_train.csv"), f"{gone}.dcm")
    assert not (tmp_path / "out").exists()


def test_labels_with_an_unknown_subtype(tmp_path):
    raw, _ = _build(tmp_path / "raw")
    _rewrite_csv(raw, lambda lines: [*lines[:4], lines[4].replace("_subarachnoid,", "_haemorrhage,"), *lines[5:]])
    error = _fails(raw, tmp_path / "out", str(raw / "stage_2_train.csv"), "line 5", "'haemorrhage'")
    assert "epidural" in str(error)  # says which subtypes exist
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "edit, words",
    [
        (lambda lines: [*lines[:2], "IMG-00012_epidural,0", *lines[2:]], ["line 3", "ID_<hex>_<subtype>"]),
        (lambda lines: [line.replace(",0", ",2", 1) if n == 1 else line for n, line in enumerate(lines)], ["line 2", "'2'"]),
        (lambda lines: [line for line in lines if not line.endswith("_subdural,0")], ["no row for subdural"]),
        (lambda lines: [line.replace("_any,0", "_any,1") for line in lines], ["_any is 1 but its subtypes say 0"]),
        (lambda lines: ["Image,Label", *lines[1:]], ["header"]),
    ],
)
def test_labels_breaking_rsnas_rules(tmp_path, edit, words):
    raw, _ = _build(tmp_path / "raw")
    _rewrite_csv(raw, edit)
    _fails(raw, tmp_path / "out", str(raw / "stage_2_train.csv"), *words)
    assert not (tmp_path / "out").exists()


def test_dicom_without_pixel_data_among_the_slices(tmp_path):
    raw, expected = _build(tmp_path / "raw")
    broken = sorted(expected)[-1]
    _write_dicom(raw / "stage_2_train" / f"{broken}.dcm", np.zeros((SIZE, SIZE)), "ID_00000000", 0.0, pixels=False)
    _fails(raw, tmp_path / "out", f"{broken}.dcm", "no pixel data")
    assert not (tmp_path / "out").exists()


def test_unlabelled_file_and_failed_rerun_leave_the_previous_output_whole(tmp_path):
    raw, expected = _build(tmp_path / "raw")
    out = tmp_path / "out"
    prepare_ct_slices(raw, out, size=SIZE)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    stray = raw / "stage_2_train" / "ID_fffffffff.dcm"
    _write_dicom(stray, np.zeros((SIZE, SIZE)), "ID_00000009", 0.0)
    _fails(raw, out, str(stray), "no labels")
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".out")] == []  # no temporary left


def test_cli_says_error_and_names_the_file(tmp_path, capsys):
    raw, expected = _build(tmp_path / "raw")
    gone = sorted(expected)[0]
    (raw / "stage_2_train" / f"{gone}.dcm").unlink()
    with pytest.raises(SystemExit) as raised:
        ct_slices.main(["--raw", str(raw), "--out-dir", str(tmp_path / "out"), "--size", str(SIZE)])
    assert raised.value.code == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "stage_2_train.csv" in err and gone in err


# ---------------------------------------------------------------- the built-in phantom, through the download stage


def test_phantom_through_download_and_slices(tmp_path, monkeypatch):
    """phantom_rsna_ich -> download stage (de-identification included) -> this stage: the agreed
    npz interface, labels as the raw CSV says, z order and patient splits checked from the raw files."""
    from pipeline.sources.download import download_dataset

    monkeypatch.setenv("MEDGAN_CACHE_DIR", str(tmp_path / "cache"))
    knobs = {"n_patients": 8, "slices_per_patient": 3, "matrix": 128, "pixel_mm": 1.96, "quirk_fraction": 0.5,
             "haemorrhage_fraction": 0.3}  # fmt: skip
    raw = download_dataset("phantom_rsna_ich", tmp_path / "raw", seed=5, modality="CT", phantom_options=knobs)
    prepare_ct_slices(raw, tmp_path / "out", size=32, seed=5)

    csv_labels: dict[str, list[int]] = {}
    with open(raw / "stage_2_train.csv", newline="") as handle:
        for name, value in list(csv.reader(handle))[1:]:
            csv_labels.setdefault(name.rsplit("_", 1)[0], []).append(int(value))
    headers = {p.stem: pydicom.dcmread(p, stop_before_pixels=True) for p in (raw / "stage_2_train").iterdir()}
    assert any(h.BitsStored == 12 and h.PixelRepresentation == 0 and float(h.RescaleIntercept) == 0 for h in headers.values())
    splits = _load(tmp_path / "out")
    seen_patients: list[set[str]] = []
    for data in splits.values():
        n = len(data["images"])
        assert data["images"].shape == (n, 32, 32) and data["images"].dtype == np.float32
        assert 0 <= data["images"].min() and data["images"].max() <= 1
        assert data["subtypes"].shape == (n, 6) and data["labels"].dtype == np.int64
        assert data["slice_index"].dtype == np.int64
        np.testing.assert_array_equal(data["labels"], data["subtypes"][:, -1])
        for i, image_id in enumerate(map(str, data["image_ids"])):
            assert list(data["subtypes"][i]) == csv_labels[image_id]
            assert data["images"][i][0, 0] == 0.0  # air stays black, the quirk files' too
        seen_patients.append(set(map(str, data["subject_ids"])))
        for patient in seen_patients[-1]:
            ids = [str(x) for x, s in zip(data["image_ids"], data["subject_ids"]) if s == patient]
            order = [int(x) for x, s in zip(data["slice_index"], data["subject_ids"]) if s == patient]
            z = [float(headers[i].ImagePositionPatient[2]) for i in ids]
            assert [order[j] for j in np.argsort(z)] == list(range(len(ids)))
            assert len({headers[i].StudyInstanceUID for i in ids}) == 1
    assert sum(map(len, seen_patients)) == len(set().union(*seen_patients)) == knobs["n_patients"]
