"""Tests of the RSNA-layout haemorrhage phantom: RSNA's files and naming, blood only where the
labels say and at acute-blood HU, the 12-bit quirk, mass effect, seeds.

Files are read back with pydicom directly and decoded here by hand (the Kaggle community's rule
for the quirk), never through the project's reader, except where that reader is under test.
"""

from __future__ import annotations

import csv
import itertools
import re
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from scipy import ndimage

from pipeline.errors import ConfigError
from pipeline.preprocess.window import read_slice_hu
from pipeline.sources import phantom_rsna_ich as rp

pytestmark = pytest.mark.filterwarnings("ignore:Invalid value for VR UI")  # RSNA's ID_<hex> UIDs

SEED = 11
RSNA_ORDER = ["epidural", "intraparenchymal", "intraventricular", "subarachnoid", "subdural", "any"]
ROW = re.compile(r"(ID_[0-9a-f]{9})_(epidural|intraparenchymal|intraventricular|subarachnoid|subdural|any)")
# Small sets on a 256 grid (the field of view of RSNA's 512 x 0.49 mm); other knobs as default.
SMALL = {"n_patients": 4, "slices_per_patient": 3, "mass_effect": 0.0, "quirk_fraction": 0.0, "matrix": 256, "pixel_mm": 0.98}
BLEEDING = {**SMALL, "haemorrhage_fraction": 0.5, "second_subtype_probability": 1.0}
# No noise, and RSNA's own 512 x 0.49 mm grid with the anatomy rendered on it too, where a thin
# subdural crescent and the blood in a sulcus still have pure pixels.
QUIET = {**BLEEDING, "noise_hu": [0.0, 0.0], "n_patients": 3, "matrix": 512, "pixel_mm": 0.49, "anatomy_matrix": 512}


def _generate(root: Path, name: str, **knobs) -> Path:
    return rp.write_phantom_rsna_dataset(root / name, SEED, **knobs)


@pytest.fixture(scope="module")
def sets(tmp_path_factory) -> dict[str, Path]:
    """The same patients rendered with and without haemorrhage, with the quirk, with mass effect."""
    root = tmp_path_factory.mktemp("rsna_phantom")
    return {
        "blood": _generate(root, "blood", **BLEEDING),
        "none": _generate(root, "none", **{**BLEEDING, "haemorrhage_fraction": 0.0}),
        "quiet": _generate(root, "quiet", **QUIET),
        "quiet_none": _generate(root, "quiet_none", **{**QUIET, "haemorrhage_fraction": 0.0}),
        "quirk": _generate(root, "quirk", **{**BLEEDING, "quirk_fraction": 1.0}),
        "mass": _generate(
            root, "mass", **{**BLEEDING, "mass_effect": 1.0, "subtype_weights": [1.0, 1.0, 0.0, 0.0, 1.0]}
        ),
    }


def _hu(path: Path) -> np.ndarray:
    """HU as the Kaggle community decodes RSNA files (J. Howard's rule for the 12-bit quirk)."""
    ds = pydicom.dcmread(path)
    raw = ds.pixel_array.astype(np.int32)
    if ds.BitsStored == 12 and ds.PixelRepresentation == 0 and int(ds.RescaleIntercept) > -100:
        shifted = raw + 1000
        shifted[shifted >= 4096] -= 4096
        return (shifted - 1000).astype(np.float64)
    return raw * float(ds.RescaleSlope) + float(ds.RescaleIntercept)


def _labels(dataset: Path) -> dict[str, dict[str, int]]:
    """stage_2_train.csv parsed by RSNA's naming rule, written out here."""
    labels: dict[str, dict[str, int]] = {}
    with open(dataset / "stage_2_train.csv", newline="") as handle:
        rows = list(csv.reader(handle))
    assert rows[0] == ["ID", "Label"]
    for name, value in rows[1:]:
        match = ROW.fullmatch(name)
        assert match, name
        assert value in ("0", "1")
        labels.setdefault(match[1], {})[match[2]] = int(value)
    return labels


def _truth(dataset: Path, image_id: str) -> np.ndarray:
    return np.asarray(Image.open(dataset / "truth" / f"{image_id}_haemorrhage.png"))


def test_default_slice_is_rsnas_512_matrix(tmp_path):
    dataset = rp.write_phantom_rsna_dataset(tmp_path / "rsna", SEED, n_patients=1, slices_per_patient=1, quirk_fraction=0.0)
    ds = pydicom.dcmread(next((dataset / "stage_2_train").iterdir()))
    assert (ds.Rows, ds.Columns) == (512, 512)
    assert float(ds.PixelSpacing[0]) == pytest.approx(0.49)
    assert float(ds.RescaleIntercept) == -1024


def test_files_and_headers_follow_rsna(sets):
    dataset = sets["blood"]
    files = sorted((dataset / "stage_2_train").iterdir())
    assert len(files) == SMALL["n_patients"] * SMALL["slices_per_patient"]
    assert all(re.fullmatch(r"ID_[0-9a-f]{9}\.dcm", f.name) for f in files)
    by_patient: dict[str, list[pydicom.Dataset]] = {}
    for path in files:
        ds = pydicom.dcmread(path)
        assert (ds.Rows, ds.Columns) == (SMALL["matrix"],) * 2
        assert float(ds.RescaleIntercept) == -1024 and float(ds.RescaleSlope) == 1
        assert ds.Modality == "CT" and ds.SOPInstanceUID == path.stem
        assert re.fullmatch(r"ID_[0-9a-f]{8}", ds.PatientID)
        assert re.fullmatch(r"ID_[0-9a-f]{10}", ds.StudyInstanceUID)
        assert "PatientName" not in ds and "PatientBirthDate" not in ds
        by_patient.setdefault(ds.PatientID, []).append(ds)
    assert len(by_patient) == SMALL["n_patients"]
    for slices in by_patient.values():
        assert len({ds.StudyInstanceUID for ds in slices}) == 1 and len({ds.SeriesInstanceUID for ds in slices}) == 1
        z = np.sort([float(ds.ImagePositionPatient[2]) for ds in slices])
        np.testing.assert_allclose(np.diff(z), 5.0, atol=1e-3)
    with open(dataset / "images.tsv", newline="") as handle:
        index = list(csv.DictReader(handle, delimiter="\t"))
    assert sorted(r["path"] for r in index) == [f"stage_2_train/{f.name}" for f in files]


def test_labels_csv_follows_rsnas_naming_rule(sets):
    dataset = sets["blood"]
    labels = _labels(dataset)
    assert set(labels) == {p.stem for p in (dataset / "stage_2_train").iterdir()}
    with open(dataset / "stage_2_train.csv", newline="") as handle:
        names = [row[0] for row in list(csv.reader(handle))[1:]]
    for image_id, values in labels.items():
        assert [n.rpartition("_")[2] for n in names if n.startswith(image_id + "_")] == RSNA_ORDER
        assert values["any"] == max(values[s] for s in RSNA_ORDER[:-1])
    n_slices = len(labels)
    positive = sum(v["any"] for v in labels.values())
    assert positive == round(BLEEDING["haemorrhage_fraction"] * n_slices)


def test_blood_is_drawn_only_where_the_labels_say(sets):
    labels = _labels(sets["blood"])
    assert 0 < sum(v["any"] for v in labels.values()) < len(labels)
    for image_id, values in labels.items():
        with_blood = _hu(sets["blood"] / "stage_2_train" / f"{image_id}.dcm")
        without = _hu(sets["none"] / "stage_2_train" / f"{image_id}.dcm")
        truth = _truth(sets["blood"], image_id)
        changed = with_blood != without
        if not values["any"]:
            assert not changed.any(), f"{image_id} is labelled healthy but differs from its blood-free twin"
            assert not truth.any()
            continue
        assert changed.any()
        assert not (changed & (truth == 0)).any(), f"{image_id}: pixels changed outside the recorded blood"
        for code, subtype in enumerate(RSNA_ORDER[:-1], start=1):
            assert (truth == code).any() == bool(values[subtype]), f"{image_id}: {subtype}"


def test_blood_has_acute_blood_hu(sets):
    """Without noise, every drawn subtype's pure blood pixels hold the acute-blood HU its bleed
    recorded in truth/bleeds.tsv, and that value is acute blood's (50-90 HU); edge pixels (and most
    of a sulcus's thin blood) mix it with the tissue around."""
    labels = _labels(sets["quiet"])
    with open(sets["quiet"] / "truth" / "bleeds.tsv", newline="") as handle:
        recorded = list(csv.DictReader(handle, delimiter="\t"))
    assert recorded and all(50 <= float(row["blood_hu"]) <= 90 for row in recorded)
    seen = 0
    for image_id, values in labels.items():
        if not values["any"]:
            continue
        path = sets["quiet"] / "stage_2_train" / f"{image_id}.dcm"
        hu, patient = _hu(path), pydicom.dcmread(path, stop_before_pixels=True).PatientID
        before = _hu(sets["quiet_none"] / "stage_2_train" / f"{image_id}.dcm")
        truth = _truth(sets["quiet"], image_id)
        for code, subtype in enumerate(RSNA_ORDER[:-1], start=1):
            if not values[subtype]:
                continue
            blood = {round(float(r["blood_hu"])) for r in recorded if r["patient_id"] == patient and r["subtype"] == subtype}
            changed = hu[(truth == code) & (np.abs(hu - before) > 10)]
            pure = np.isin(changed, [v + d for v in blood for d in (-1, 0, 1)]).sum()
            assert pure >= 10, f"{image_id} {subtype}: {pure} pixels at its recorded {sorted(blood)} HU"
            seen += 1
        assert np.median(before[(truth > 0) & (np.abs(hu - before) > 10)]) < 50  # what blood replaced was not blood
    assert seen >= 2


def test_quirk_files_are_wrapped_and_decode_to_the_same_hu(sets):
    labels = _labels(sets["quirk"])
    for image_id in labels:
        quirky = sets["quirk"] / "stage_2_train" / f"{image_id}.dcm"
        plain = sets["blood"] / "stage_2_train" / f"{image_id}.dcm"
        ds = pydicom.dcmread(quirky)
        assert (ds.BitsStored, ds.PixelRepresentation, float(ds.RescaleIntercept)) == (12, 0, 0.0)
        naive = ds.pixel_array.astype(np.float64) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
        expected = np.maximum(_hu(plain), -1000.0)  # those scanners stored nothing below -1000 HU
        air = expected < -900
        assert naive[air].min() > 3000, "air must be stored wrapped (it would show as bright bone)"
        np.testing.assert_array_equal(_hu(quirky), expected)
        np.testing.assert_array_equal(read_slice_hu(quirky)[1], expected)  # the workflow's reader


def test_plain_12_bit_files_are_not_unwrapped(sets):
    """Ordinary RSNA files are also unsigned 12-bit, with intercept -1024: bone must stay bone."""
    path = next((sets["blood"] / "stage_2_train").iterdir())
    ds = pydicom.dcmread(path)
    assert (ds.BitsStored, ds.PixelRepresentation) == (12, 0)
    hu = read_slice_hu(path)[1]
    np.testing.assert_array_equal(hu, ds.pixel_array.astype(np.float64) - 1024)
    assert hu.max() > 1000  # the skull


def test_mass_effect_pushes_brain_only_in_bleeding_slices(sets):
    labels = _labels(sets["mass"])
    pushed = 0
    for image_id, values in labels.items():
        moved = _hu(sets["mass"] / "stage_2_train" / f"{image_id}.dcm") != _hu(
            sets["none"] / "stage_2_train" / f"{image_id}.dcm"
        )
        if not values["any"]:
            assert not moved.any()
            continue
        outside_blood = moved & ~ndimage.binary_dilation(_truth(sets["mass"], image_id) > 0, iterations=3)
        pushed += bool(outside_blood.any())
    assert pushed > 0


def test_same_seed_same_files_other_seed_other_patients(tmp_path):
    knobs = {"n_patients": 1, "slices_per_patient": 2, "matrix": 64, "pixel_mm": 3.9}
    first = rp.write_phantom_rsna_dataset(tmp_path / "a", SEED, **knobs)
    again = rp.write_phantom_rsna_dataset(tmp_path / "b", SEED, **knobs)
    other = rp.write_phantom_rsna_dataset(tmp_path / "c", SEED + 1, **knobs)
    for path in sorted((first / "stage_2_train").iterdir()):
        assert path.read_bytes() == (again / "stage_2_train" / path.name).read_bytes()
    assert not {p.name for p in (first / "stage_2_train").iterdir()} & {p.name for p in (other / "stage_2_train").iterdir()}


@pytest.mark.parametrize(
    "knobs, word",
    [
        ({"colour": 1}, "unknown knobs"),
        ({"haemorrhage_fraction": 1.5}, "haemorrhage_fraction"),
        ({"blood_hu": (90.0, 50.0)}, "blood_hu"),
        ({"subtype_weights": (1.0, 1.0)}, "subtype_weights"),
        ({"ventricle_fill": (0.5, 1.5)}, "ventricle_fill"),
    ],
)
def test_bad_knobs_are_refused_before_anything_is_written(tmp_path, knobs, word):
    with pytest.raises(ConfigError, match=word):
        rp.write_phantom_rsna_dataset(tmp_path / "out", SEED, **knobs)
    assert not (tmp_path / "out").exists()


def _at_64_px(hu: np.ndarray) -> np.ndarray:
    """A slice as the default model sees its field of view: 64 x 64 block means of HU."""
    block = hu.shape[0] // 64
    return hu.reshape(64, block, 64, block).mean(axis=(1, 3))


def test_every_bleed_shows_at_64_px_in_the_brain_window(sets):
    """Against its blood-free twin, every positive slice has pixels of the 64 px image raised by at
    least a tenth of the brain window (8 HU of 80): the default model can see what it is told."""
    labels = _labels(sets["blood"])
    shown = []
    for image_id, values in labels.items():
        if not values["any"]:
            continue
        rise = _at_64_px(_hu(sets["blood"] / "stage_2_train" / f"{image_id}.dcm")) - _at_64_px(
            _hu(sets["none"] / "stage_2_train" / f"{image_id}.dcm")
        )
        shown.append(int((rise >= 8.0).sum()))
    assert shown and min(shown) >= 4, shown


# The look of the phantom before patients drew their own (one head size, skull, ventricles, grey /
# white HU and noise; +-8 degrees, +-8 mm, stacks within +-15 mm of the head centre).
ONE_LOOK = {"head_scale": [0.92, 0.92], "head_shape_jitter": 0.05, "rotation_deg": 8.0, "translation_mm": 8.0,
            "skull_mm": [7.0, 7.0], "ventricle_scale": [1.0, 1.0], "grey_matter_hu": [40.0, 40.0],
            "white_matter_hu": [25.0, 25.0], "noise_hu": [5.0, 5.0], "stack_offset_mm": 15.0}  # fmt: skip
LOOK_SET = {"n_patients": 10, "slices_per_patient": 2, "haemorrhage_fraction": 0.0, "matrix": 128, "pixel_mm": 1.96}


def _between_patient_distance(dataset: Path) -> float:
    """Mean absolute difference of 64 px brain-window slices of two different patients."""
    windowed = {}
    for path in sorted((dataset / "stage_2_train").iterdir()):
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        windowed.setdefault(ds.PatientID, []).append(np.clip(_at_64_px(_hu(path)) / 80.0, 0, 1))
    pairs = [(a, b) for p, q in itertools.combinations(sorted(windowed), 2) for a in windowed[p] for b in windowed[q]]
    return float(np.mean([np.abs(a - b).mean() for a, b in pairs]))


def test_patients_look_different_and_their_looks_are_recorded(tmp_path):
    """Slices of different patients differ more than with one look for all (the DCGAN needs slices
    that differ like real patients'), and truth/patients.tsv records each patient's draws."""
    varied = rp.write_phantom_rsna_dataset(tmp_path / "varied", SEED, **LOOK_SET)
    alike = rp.write_phantom_rsna_dataset(tmp_path / "alike", SEED, **LOOK_SET, **ONE_LOOK)
    assert _between_patient_distance(varied) >= 1.2 * _between_patient_distance(alike)
    with open(varied / "truth" / "patients.tsv", newline="") as handle:
        rows = list(csv.DictReader(handle, delimiter="\t"))
    params = rp.RsnaPhantomParams()
    assert len(rows) == LOOK_SET["n_patients"] and len({r["patient_id"] for r in rows}) == len(rows)
    for name in ("head_scale", "skull_mm", "ventricle_scale", "grey_matter_hu", "white_matter_hu", "noise_hu"):
        low, high = getattr(params, name)
        drawn = [float(r[name]) for r in rows]
        assert all(low - 1e-3 <= v <= high + 1e-3 for v in drawn) and max(drawn) - min(drawn) >= 0.3 * (high - low), name


def test_ventricle_scale_enlarges_the_ventricles(tmp_path):
    """One patient at the ventricles' level, rendered with small and with large ventricles: deep CSF
    (0-15 HU, in the central third of the head) grows with the area (4x the factor squared; at 2 mm
    pixels, with partial volume at the ventricles' edges, about 2x)."""
    knobs = {**LOOK_SET, "n_patients": 1, "slices_per_patient": 1, "stack_offset_mm": 0.0, "noise_hu": [0.0, 0.0],
             "rotation_deg": 0.0}  # fmt: skip
    csf = []
    for factor in (0.8, 1.6):
        out = rp.write_phantom_rsna_dataset(tmp_path / str(factor), SEED, **knobs, ventricle_scale=[factor, factor])
        hu = _hu(next((out / "stage_2_train").iterdir()))
        head = ndimage.binary_fill_holes(hu > 300)
        rows, cols = np.nonzero(head)
        centre = np.zeros_like(head)
        height, width = rows.max() - rows.min(), cols.max() - cols.min()
        centre[rows.min() + height // 3 : rows.max() - height // 3, cols.min() + width // 3 : cols.max() - width // 3] = True
        csf.append(int(((hu >= 0) & (hu <= 15) & centre).sum()))
    assert csf[1] >= 1.5 * csf[0] > 0, csf
