"""Tests of the built-in thorax CT phantom (report 003's data): HU per tissue and the six-class
label maps agree, read back from the written files with pydicom and Pillow directly (HU through
the file's own RescaleSlope / Intercept, never through the project's reader); the TCIA layout;
de-identification of what lands in data/raw."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from scipy import ndimage

from pipeline.errors import ConfigError
from pipeline.privacy import find_markers
from pipeline.sources import phantom_tcia_thorax as tp
from thorax_support import FINE_KNOBS, SEED, build_thorax_raw

# Expected HU of each label class, from anatomy (not from the phantom's params): air outside;
# fat to muscle; lung parenchyma with vessels and airways; blood; bone; CSF and cord. Pixels at
# least EDGE_PX from the class border, so partial volume (PSF) does not count.
LABEL_HU = {0: (-1024, -900), 50: (-250, 150), 100: (-1024, 150), 150: (-30, 120), 200: (100, 2000), 230: (-60, 100)}
# Lung parenchyma: about -850 +- 50 HU, depending on how deep the patient breathed in.
TISSUE_MEDIAN_HU = {"lung": (-920, -760), "fat": (-130, -70), "muscle": (30, 65), "blood": (30, 60),
                    "trabecular_bone": (150, 350), "cortical_bone": (700, 1500), "csf": (-5, 25), "air": (-1024, -980)}  # fmt: skip
EDGE_PX = 2
INSIDE_SHARE = 0.995  # noise tails: at most 0.5 % of a class's interior pixels may leave its range


def _hu(path: Path) -> np.ndarray:
    ds = pydicom.dcmread(path)
    return ds.pixel_array.astype(np.float64) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)


@pytest.fixture(scope="module")
def raw(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("thorax")
    return build_thorax_raw(root, root / "staging", **FINE_KNOBS)


def _slices(raw: Path) -> list[Path]:
    return sorted(p for p in raw.glob("THX-*/*/*/*.dcm"))


def test_tcia_layout_one_series_a_patient_with_a_label_image_per_slice(raw):
    with open(raw / "subjects.tsv", newline="") as handle:
        rows = list(csv.DictReader(handle, delimiter="\t"))
    assert len(rows) == FINE_KNOBS["n_patients"]
    for row in rows:
        files = sorted((raw / row["path"]).glob("*.dcm"))
        assert [f.name for f in files] == [f"{k + 1:04d}.dcm" for k in range(FINE_KNOBS["slices_per_patient"])]
        assert row["path"].split("/")[0] == row["subject_id"] and row["subject_id"].startswith("THX-")
        for f in files:
            label = np.asarray(Image.open(raw / "labels" / f.relative_to(raw).with_suffix(".png")))
            assert label.shape == pydicom.dcmread(f).pixel_array.shape
            assert set(np.unique(label)) <= {0, 50, 100, 150, 200, 230}
        # head to feet: z falls along the file names
        z = [float(pydicom.dcmread(f).ImagePositionPatient[2]) for f in files]
        assert z == sorted(z, reverse=True)


def test_each_label_class_lies_in_its_tissue_hu_range(raw):
    seen = set()
    for path in _slices(raw):
        hu = _hu(path)
        label = np.asarray(Image.open(raw / "labels" / path.relative_to(raw).with_suffix(".png")))
        for grey, (low, high) in LABEL_HU.items():
            interior = ndimage.binary_erosion(label == grey, iterations=EDGE_PX)
            if not interior.any():
                continue
            seen.add(grey)
            inside = np.mean((hu[interior] >= low) & (hu[interior] <= high))
            assert inside >= INSIDE_SHARE, f"{path.name} class {grey}: {inside:.3%} in [{low}, {high}] HU"
        assert np.median(hu[ndimage.binary_erosion(label == 100, iterations=EDGE_PX)]) < -700  # mostly parenchyma
        assert np.median(hu[ndimage.binary_erosion(label == 200, iterations=1)]) > 150
    assert seen == set(LABEL_HU), "every class should appear at this level"


def test_each_tissue_has_its_hu_and_the_two_pixel_encodings_agree(raw):
    signed = set()
    for path in _slices(raw):
        ds = pydicom.dcmread(path)
        signed.add(int(ds.PixelRepresentation))
        hu = _hu(path)
        tissue = np.asarray(Image.open(raw / "truth" / path.relative_to(raw).parent / f"{path.stem}_tissue.png"))
        for name, (low, high) in TISSUE_MEDIAN_HU.items():
            interior = ndimage.binary_erosion(tissue == tp.TISSUES.index(name), iterations=1)
            if interior.sum() < 5:
                continue
            assert low <= np.median(hu[interior]) <= high, f"{path.name} {name}: median {np.median(hu[interior]):.0f}"
        lung = ndimage.binary_erosion(tissue == tp.TISSUES.index("lung"), iterations=EDGE_PX)
        assert 10 < hu[lung].std() < 80  # textured parenchyma plus noise, not a flat value
    assert signed == {0, 1}, "both the unsigned (intercept -1024) and the signed encoding should be exercised"


def test_label_maps_follow_the_structure_mapping_param(tmp_path):
    mapping = {"spinal_cord": "bone", "heart": "body"}
    out = tp.write_phantom_thorax_dataset(tmp_path / "p", SEED, n_patients=1, slices_per_patient=1,
                                          structure_labels=mapping)  # fmt: skip
    label = np.asarray(Image.open(next((out / "labels").rglob("*.png"))))
    assert 230 in np.unique(label)  # the canal's CSF stays spinal_canal
    default = tp.write_phantom_thorax_dataset(tmp_path / "d", SEED, n_patients=1, slices_per_patient=1)
    before = np.asarray(Image.open(next((default / "labels").rglob("*.png"))))
    assert ((before == 150) & (label == 50)).sum() > 100  # the heart moved from heart_vessels to body
    assert ((before == 230) & (label == 200)).sum() > 0  # the cord moved to bone


def test_same_seed_same_files_and_bad_knobs_are_named(tmp_path):
    a = tp.write_phantom_thorax_dataset(tmp_path / "a", SEED, n_patients=1, slices_per_patient=1, matrix=64, pixel_mm=6.0)
    b = tp.write_phantom_thorax_dataset(tmp_path / "b", SEED, n_patients=1, slices_per_patient=1, matrix=64, pixel_mm=6.0)
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    assert files and all((a / f).read_bytes() == (b / f).read_bytes() for f in files)
    with pytest.raises(ConfigError, match="structure_labels"):
        tp.write_phantom_thorax_dataset(tmp_path / "c", SEED, structure_labels={"heart": "liver"})
    with pytest.raises(ConfigError, match="heart_radius_mm"):
        tp.write_phantom_thorax_dataset(tmp_path / "d", SEED, heart_radius_mm=[60, 40])


def test_no_identity_marker_reaches_the_raw_folder(raw, tmp_path):
    """The phantom writes PatientName, dates and an institution; de-identification at the door
    must remove them (and the markers must be in the phantom's own output, or this proves nothing)."""
    markers = list(tp.IDENTITY_MARKERS.values())
    direct = tp.write_phantom_thorax_dataset(tmp_path / "direct", SEED, n_patients=1, slices_per_patient=1)
    assert {m for _, m, _ in find_markers([direct], markers)} == set(markers)
    assert find_markers([raw], markers) == []
    ds = pydicom.dcmread(_slices(raw)[0])
    assert str(ds.get("PatientIdentityRemoved", "")) == "YES"
    assert not str(ds.get("PatientName", "")) or str(ds.PatientName) != tp.IDENTITY_MARKERS["PatientName"]


def test_patients_differ_in_anatomy(raw):
    """Per-patient variation: body and lung areas of the two patients' first slices differ."""
    firsts = [sorted(p.rglob("*.png"))[0] for p in sorted((raw / "labels").glob("THX-*"))]
    areas = [(np.asarray(Image.open(f)) > 0).sum() for f in firsts]
    lungs = [(np.asarray(Image.open(f)) == 100).sum() for f in firsts]
    assert abs(areas[0] - areas[1]) > 0.02 * max(areas) and lungs[0] != lungs[1]
