"""De-identification at the door: real DICOM, NIfTI, JPEG and PNG files carrying marker strings in
every identifying place, through pipeline.sources.deidentify; the markers must be gone, the
pixels and geometry must not have moved."""

from __future__ import annotations

import csv
import gzip
import hashlib
import hmac
import io
import json
import re
import shutil
import tarfile
import zipfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from PIL import Image, PngImagePlugin
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.pixels import apply_modality_lut
from pydicom.sequence import Sequence
from pydicom.uid import SecondaryCaptureImageStorage

from dicom_support import ct_slice, write_ct_series
from pipeline.errors import InputDataError
from pipeline.privacy import find_markers
from pipeline.sources.deidentify import (
    RECORD_FILE,
    PixelRiskError,
    check_deidentified,
    deidentify_dataset,
    deidentify_dicom_file,
    deidentify_nifti_file,
    strip_jpeg_metadata,
    strip_png_metadata,
)

SALT = "deid-test-salt-0123456789abcdef"
#: DICOM keyword -> marker: the fields the issue names, each with a string found nowhere else.
DICOM_MARKERS = {
    "PatientName": "QXNAMEQX^PATIENT",
    "PatientID": "QXPIDQX",
    "PatientBirthDate": "18610429",
    "AccessionNumber": "QXACCQX",
    "InstitutionName": "QXHOSPQX",
    "InstitutionAddress": "QXADDRESSQX Road 1",
    "ReferringPhysicianName": "QXREFDOCQX",
    "PerformingPhysicianName": "QXPERFDOCQX",
    "OperatorsName": "QXOPERQX",
    "StationName": "QXSTATIONQX",
    "StudyDate": "18620531",
    "SeriesDate": "18620601",
    "StudyDescription": "QXSTUDYQX",
    "SeriesDescription": "QXSERIESQX BONE",
    "OtherPatientIDs": "QXOTHERIDQX",
    "ImageComments": "QXCOMMENTQX",
}
PRIVATE_MARKER = "QXPRIVATEQX"
NESTED_MARKER = "QXNESTEDQX"
GEOMETRY_AND_INTENSITY = (
    "ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing", "SliceThickness", "RescaleSlope",
    "RescaleIntercept", "WindowCenter", "WindowWidth", "PhotometricInterpretation", "BitsAllocated",
    "BitsStored", "HighBit", "PixelRepresentation", "Rows", "Columns", "Modality", "ImageType",
)  # fmt: skip


def _searchable(markers) -> list[str]:
    return sorted({value.split("^")[0].split(" ")[0] for value in markers})


def _marked_slice(path: Path, z_mm: float = 0.0, series_uid: str = "1.2.3.4.5") -> Path:
    """A CT slice carrying a marker in every field of DICOM_MARKERS, a private block and a sequence."""
    stored = np.arange(64, dtype=np.int16).reshape(8, 8) + 1000
    ds = ct_slice(stored, z_mm, series_uid)
    for keyword, marker in DICOM_MARKERS.items():
        setattr(ds, keyword, marker)
    ds.WindowCenter, ds.WindowWidth = "40", "80"
    block = ds.private_block(0x0011, "QX HOSPITAL PRIVATE", create=True)
    block.add_new(0x01, "LO", PRIVATE_MARKER)
    request = Dataset()
    request.RequestingPhysician = NESTED_MARKER
    request.StudyInstanceUID = ds.StudyInstanceUID
    ds.RequestAttributesSequence = Sequence([request])
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


MARKERS = _searchable([*DICOM_MARKERS.values(), PRIVATE_MARKER, NESTED_MARKER])


def test_basic_profile_leaves_no_marker_and_records_what_was_done(tmp_path):
    source = _marked_slice(tmp_path / "in" / "slice.dcm")
    assert {m for _, m, _ in find_markers([source], MARKERS)} == set(MARKERS), "every marker was there"

    target = tmp_path / "out" / "slice.dcm"
    deidentify_dicom_file(source, target, SALT)

    assert find_markers([target], MARKERS) == []
    ds = pydicom.dcmread(target)
    assert ds.PatientIdentityRemoved == "YES"
    assert {item.CodeValue for item in ds.DeidentificationMethodCodeSequence} == {"113100", "113105"}
    assert ds.DeidentificationMethod and ds.LongitudinalTemporalInformationModified == "REMOVED"
    assert not [e for e in ds.iterall() if e.tag.is_private]
    assert ds.SeriesDescription == "BONE", "only the reconstruction word windowing reads is kept"


def test_pixels_geometry_and_intensity_are_kept(tmp_path):
    source = _marked_slice(tmp_path / "in.dcm")
    deidentify_dicom_file(source, tmp_path / "out.dcm", SALT)
    before, after = pydicom.dcmread(source), pydicom.dcmread(tmp_path / "out.dcm")
    assert after.PixelData == before.PixelData
    for keyword in GEOMETRY_AND_INTENSITY:
        assert after.get(keyword) == before.get(keyword), keyword


def test_uids_are_replaced_the_same_way_in_every_file_and_by_the_salt(tmp_path):
    originals = [_marked_slice(tmp_path / "in" / f"{k}.dcm", z_mm=5.0 * k) for k in range(3)]
    out = []
    for salt, folder in ((SALT, "a"), (SALT, "b"), (SALT + "x", "c")):
        for path in originals:
            deidentify_dicom_file(path, tmp_path / folder / path.name, salt)
        out.append([pydicom.dcmread(tmp_path / folder / p.name) for p in originals])
    first, _, other_salt = out  # the rerun is compared byte for byte below
    original = pydicom.dcmread(originals[0])
    assert len({ds.SeriesInstanceUID for ds in first}) == 1, "the series still groups"
    assert len({ds.SOPInstanceUID for ds in first}) == 3
    assert first[0].SeriesInstanceUID != original.SeriesInstanceUID
    assert first[0].StudyInstanceUID != original.StudyInstanceUID
    assert len({ds.StudyInstanceUID for ds in first}) == 1, "the study still links its files"
    assert all(ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID for ds in first)
    assert all(
        re.fullmatch(r"2\.25\.[1-9][0-9]*", ds.SOPInstanceUID) and len(ds.SOPInstanceUID) <= 64
        for ds in first
    )
    assert [(tmp_path / "a" / p.name).read_bytes() for p in originals] == [
        (tmp_path / "b" / p.name).read_bytes() for p in originals
    ], "a rerun writes the same bytes (DVC sees no change)"
    assert other_salt[0].SeriesInstanceUID != first[0].SeriesInstanceUID
    expected_id = (
        "sub-" + hmac.new(SALT.encode(), DICOM_MARKERS["PatientID"].encode(), hashlib.sha256).hexdigest()[:12]
    )
    assert {ds.PatientID for ds in first} == {expected_id}, "one patient's files still group"
    assert {str(ds.PatientName) for ds in first} == {""}


@pytest.mark.parametrize(
    "name",
    ["693_UNCR.dcm", "CT_small.dcm", "MR_small.dcm", "J2K_pixelrep_mismatch.dcm", "eCT_Supplemental.dcm"],
)
def test_real_files_decode_to_the_same_values(tmp_path, name):
    """pydicom's own test files (a real head CT, JPEG 2000, an enhanced multi-frame CT, MR)."""
    source = Path(get_testdata_file(name))
    target = tmp_path / name
    deidentify_dicom_file(source, target, SALT)
    before, after = pydicom.dcmread(source), pydicom.dcmread(target)
    np.testing.assert_array_equal(
        apply_modality_lut(after.pixel_array, after), apply_modality_lut(before.pixel_array, before)
    )
    assert after.file_meta.TransferSyntaxUID == before.file_meta.TransferSyntaxUID, "pixels not recompressed"
    assert not [e for e in after.iterall() if e.tag.is_private]
    assert after.PatientIdentityRemoved == "YES"
    name_before = str(before.get("PatientName", ""))
    assert not name_before or str(after.get("PatientName", "")) != name_before


def test_the_check_stops_on_a_file_that_still_identifies(tmp_path):
    source = _marked_slice(tmp_path / "in.dcm")
    original = pydicom.dcmread(source, stop_before_pixels=True)
    shutil.copyfile(source, tmp_path / "not_deidentified.dcm")  # de-identification switched off
    left = r"not_deidentified\.dcm: (de-identification left \w+ unchanged|\w+ still holds the original UID)"
    with pytest.raises(InputDataError, match=left):
        check_deidentified(original, tmp_path / "not_deidentified.dcm")

    deidentify_dicom_file(source, tmp_path / "out.dcm", SALT)
    check_deidentified(original, tmp_path / "out.dcm")  # passes
    ds = pydicom.dcmread(tmp_path / "out.dcm")
    ds.ContrastBolusAgent = "given to QXPIDQX"  # an id copied into a field the profile keeps
    ds.save_as(tmp_path / "copied.dcm")
    with pytest.raises(InputDataError, match=r"copied\.dcm.*PatientID is still in the header"):
        check_deidentified(original, tmp_path / "copied.dcm")


def _study(root: Path, subject: str, n: int = 3) -> None:
    for k in range(n):
        _marked_slice(
            root / subject / f"{k}.dcm", z_mm=5.0 * k, series_uid=f"1.2.3.{len(subject)}.{ord(subject[-1])}"
        )


def _screen_capture(path: Path) -> None:
    ds = ct_slice(np.zeros((8, 8), np.int16), 0.0, "1.2.3.9")
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    ds.PatientName = "QXNAMEQX^PATIENT"
    ds.save_as(path, enforce_file_format=True)


@pytest.fixture
def risky_dataset(tmp_path) -> Path:
    """Two subjects: sub-a has a burned-in slice and a secondary capture beside its series;
    sub-b holds nothing but a burned-in image."""
    raw = tmp_path / "stage"
    _study(raw, "sub-a")
    burned = pydicom.dcmread(raw / "sub-a" / "0.dcm")
    burned.BurnedInAnnotation = "YES"
    burned.save_as(raw / "sub-a" / "burned.dcm")
    _screen_capture(raw / "sub-a" / "capture.dcm")
    (raw / "sub-b").mkdir()
    burned.save_as(raw / "sub-b" / "only.dcm")
    (raw / "subjects.tsv").write_text(
        "subject_id\tmodality\tpath\tpartner_path\tpartner_modality\nsub-a\tCT\tsub-a\t\t\nsub-b\tCT\tsub-b\t\t\n"
    )
    return raw


def test_burned_in_and_secondary_captures_are_left_out_with_the_reason(risky_dataset, tmp_path):
    out = tmp_path / "raw" / "ct_head"
    deidentify_dataset(risky_dataset, out, SALT, on_pixel_risk="exclude")

    record = json.loads((out / RECORD_FILE).read_text())
    reasons = {item["path"]: item["reason"] for item in record["excluded"]}
    assert set(reasons) == {"sub-a/burned.dcm", "sub-a/capture.dcm", "sub-b/only.dcm"}
    assert "BurnedInAnnotation" in reasons["sub-a/burned.dcm"]
    assert "secondary capture" in reasons["sub-a/capture.dcm"]
    assert sorted(p.name for p in (out / "sub-a").iterdir()) == ["0.dcm", "1.dcm", "2.dcm"]
    with open(out / "subjects.tsv", newline="") as handle:
        assert [r["subject_id"] for r in csv.DictReader(handle, delimiter="\t")] == ["sub-a"]
    assert record["dropped_index_rows"] == ["subjects.tsv: sub-b"]
    assert record["files"]["dicom"] == 3
    assert find_markers([out], MARKERS) == []


def test_stop_names_the_risky_file_and_writes_nothing(risky_dataset, tmp_path):
    out = tmp_path / "raw" / "ct_head"
    with pytest.raises(PixelRiskError, match=r"sub-a/burned\.dcm: BurnedInAnnotation is YES"):
        deidentify_dataset(risky_dataset, out, SALT, on_pixel_risk="stop")
    assert not out.exists() and list(out.parent.iterdir()) == []


NIFTI_MARKERS = {
    "descrip": "QXDESCRIPQX",
    "aux_file": "QXAUXQX",
    "intent_name": "QXINTENTQX",
    "db_name": "QXDBNAMEQX",
}


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii"])
def test_nifti_text_fields_and_extensions_are_blanked_voxels_untouched(tmp_path, suffix):
    data = np.random.default_rng(3).normal(size=(7, 6, 5)).astype(np.float32)
    affine = np.array([[0.9, 0, 0, -10], [0, 1.1, 0, 5], [0, 0, 1.2, 3], [0, 0, 0, 1]])
    image = nib.Nifti1Image(data, affine)
    for field, marker in NIFTI_MARKERS.items():
        image.header[field] = marker.encode()
    image.header.extensions.append(nib.nifti1.Nifti1Extension("comment", b"QXEXTENSIONQX patient header"))
    source, target = tmp_path / f"in{suffix}", tmp_path / "out" / f"out{suffix}"
    nib.save(image, source)
    markers = [*NIFTI_MARKERS.values(), "QXEXTENSIONQX"]
    assert {m for _, m, _ in find_markers([source], markers)} == set(markers)

    deidentify_nifti_file(source, target)

    assert find_markers([target], markers) == []
    written = nib.load(target)
    assert all(written.header[field].item() == b"" for field in NIFTI_MARKERS)
    assert len(written.header.extensions) == 0
    np.testing.assert_array_equal(np.asarray(written.dataobj), data)
    np.testing.assert_array_equal(written.affine, nib.load(source).affine)


def _jpeg_with_metadata(progressive: bool) -> bytes:
    pixels = np.random.default_rng(1).integers(0, 255, (24, 32), dtype=np.uint8)
    exif = Image.Exif()
    exif[0x013B] = "QXEXIFARTISTQX"  # Artist
    exif[0x010E] = "QXEXIFDESCQX"  # ImageDescription
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(
        buffer, format="JPEG", exif=exif, progressive=progressive, comment=b"QXCOMMENTQX"
    )
    return buffer.getvalue()


@pytest.mark.parametrize("progressive", [False, True])
def test_jpeg_exif_and_comments_go_compressed_pixels_stay(tmp_path, progressive):
    original = _jpeg_with_metadata(progressive)
    markers = ["QXEXIFARTISTQX", "QXEXIFDESCQX", "QXCOMMENTQX"]
    (tmp_path / "in.jpeg").write_bytes(original)
    assert {m for _, m, _ in find_markers([tmp_path / "in.jpeg"], markers)} == set(markers)

    stripped = strip_jpeg_metadata(original, tmp_path / "in.jpeg")

    (tmp_path / "out.jpeg").write_bytes(stripped)
    assert find_markers([tmp_path / "out.jpeg"], markers) == []
    assert not Image.open(io.BytesIO(stripped)).getexif()
    np.testing.assert_array_equal(
        np.asarray(Image.open(io.BytesIO(stripped))), np.asarray(Image.open(io.BytesIO(original)))
    )
    scan_start = original.index(b"\xff\xda")  # first scan header onward: unchanged bytes, no re-encoding
    assert original[scan_start:] in stripped or progressive
    assert len(stripped) < len(original)


def test_png_text_chunks_and_exif_go_pixel_chunks_stay(tmp_path):
    pixels = np.random.default_rng(2).integers(0, 65535, (20, 30), dtype=np.uint16)
    info = PngImagePlugin.PngInfo()
    info.add_text("Author", "QXPNGTEXTQX")
    info.add_text("Comment", "QXPNGZTXTQX", zip=True)
    info.add_itxt("Description", "QXPNGITXTQX")
    exif = Image.Exif()
    exif[0x013B] = "QXPNGEXIFQX"
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG", pnginfo=info, exif=exif)
    original = buffer.getvalue()
    markers = ["QXPNGTEXTQX", "QXPNGZTXTQX", "QXPNGITXTQX", "QXPNGEXIFQX"]
    (tmp_path / "in.png").write_bytes(original)
    assert {m for _, m, _ in find_markers([tmp_path / "in.png"], markers)} == set(markers)

    stripped = strip_png_metadata(original, tmp_path / "in.png")

    (tmp_path / "out.png").write_bytes(stripped)
    assert find_markers([tmp_path / "out.png"], markers) == []
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(stripped))), pixels)
    idat = original[original.index(b"IDAT") - 4 :]
    idat = idat[: 12 + int.from_bytes(idat[:4], "big")]
    assert idat in stripped, "the compressed pixel chunk is copied, not re-encoded"


def test_a_dataset_of_every_kind_and_its_record(tmp_path):
    stage = tmp_path / "stage"
    write_ct_series(stage / "sub-x" / "d000", n_slices=2)
    (stage / "images").mkdir()
    (stage / "images" / "a.jpeg").write_bytes(_jpeg_with_metadata(False))
    (stage / "notes.csv").write_text("image_id,label\na,NORMAL\n")
    out = tmp_path / "raw" / "x"

    summary = deidentify_dataset(stage, out, SALT)

    assert summary.counts == {"dicom": 2, "jpeg": 1, "other": 1}
    assert (out / "notes.csv").read_text() == "image_id,label\na,NORMAL\n", "tables are copied as they are"
    record = json.loads((out / RECORD_FILE).read_text())
    assert (
        record["library"].startswith("dicom-anonymizer ") and record["profile_table"] == "dicomfields_2026c"
    )
    assert record["excluded"] == [] and record["files"] == summary.counts
    assert (
        find_markers([out], ["MARKERNAME", "MARKERID4711", "MARKERACC99", "19010203", "QXEXIFARTISTQX"]) == []
    )


def test_a_dicom_name_without_a_preamble_is_refused(tmp_path):
    stage = tmp_path / "stage"
    stage.mkdir()
    (stage / "slice.dcm").write_bytes(b"\x08\x00\x05\x00CS\x0a\x00ISO_IR 100")  # raw data set, no 'DICM'
    with pytest.raises(InputDataError, match=r"slice\.dcm.*no DICOM preamble"):
        deidentify_dataset(stage, tmp_path / "raw" / "x", SALT)


def test_local_source_lands_only_deidentified_files_and_cleans_its_staging(tmp_path, own_download_cache):
    """A user's CQ500-layout folder through the download stage: markers in headers, the patient
    folder and file names; nothing of them in data/raw, and nothing left in the staging area."""
    from pipeline.sources.download import download_dataset

    for patient in ("QXNAMEQX_Ann", "QXNAMEQX_Bob"):
        for k in range(2):
            _marked_slice(
                tmp_path / "mine" / patient / "QXSTUDYQX CT HEAD" / f"QXNAMEQX_{k}.dcm", z_mm=5.0 * k
            )
    out = tmp_path / "repo" / "data" / "raw" / "ct_head"

    download_dataset("local", out, local_path=tmp_path / "mine", layout="cq500")

    assert find_markers([out.parent], MARKERS) == []
    assert sorted(p.name for p in out.parent.iterdir()) == ["ct_head"]
    assert list((own_download_cache / "staging").iterdir()) == [], "the staged originals are gone"
    assert {m for _, m, _ in find_markers([tmp_path / "mine"], MARKERS)} == set(MARKERS), (
        "the user's copy is untouched"
    )


def test_header_values_never_reach_the_logs_through_pydicom_warnings(tmp_path, caplog, recwarn):
    """pydicom warns about a malformed value by quoting it (an RSNA-style 'ID_...' UID, a name in
    the wrong VR); reading for de-identification must not print such a value anywhere."""
    marker = "QXUIDQX"
    source = _marked_slice(tmp_path / "in" / "study" / "slice.dcm")
    ds = pydicom.dcmread(source)
    ds.StudyInstanceUID = f"ID_{marker}"  # not a valid UID: pydicom warns on reading it
    ds.save_as(source, enforce_file_format=True)
    recwarn.clear()  # pydicom warned while the test wrote the value; only what reading says counts
    caplog.clear()
    assert pydicom.config.settings.reading_validation_mode == pydicom.config.WARN  # pydicom's default
    deidentify_dataset(tmp_path / "in", tmp_path / "out", SALT)
    said = " ".join(str(w.message) for w in recwarn.list) + " " + caplog.text
    assert marker not in said
    assert find_markers(sorted((tmp_path / "out").rglob("*.dcm")), [marker]) == []



# ---------------------------------------------------------------------- nested values, content


def _with_nested_identity(path: Path) -> Path:
    """A marked slice that also holds identity inside a kept sequence (ContributingEquipment),
    a reference to another instance, a name and a date the table does not list, a source AE
    title in its file meta and a TIFF header with text in its preamble."""
    _marked_slice(path)
    ds = pydicom.dcmread(path)
    equipment = Dataset()
    equipment.InstitutionName = "QXNESTEDHOSPQX"
    equipment.PatientID = "QXNESTEDPIDQX"
    equipment.Manufacturer = "Acme"
    equipment.EvaluatorName = "QXEVALUATORQX"  # a PN the table does not list
    equipment.ExpiryDate = "18700101"  # a DA the table does not list
    reference = Dataset()
    reference.ReferencedSOPClassUID = ds.SOPClassUID
    reference.ReferencedSOPInstanceUID = "1.2.826.0.1.3680043.8.498.2700"
    equipment.ReferencedImageSequence = Sequence([reference])
    ds.ContributingEquipmentSequence = Sequence([equipment])
    ds.file_meta.SourceApplicationEntityTitle = "QXSOURCEAEQX"
    ds.preamble = (b"II*\x00" + b"QXTIFFQX").ljust(128, b"\x00")
    ds.save_as(path)
    return path


NESTED_MARKERS = ["QXNESTEDHOSPQX", "QXNESTEDPIDQX", "QXEVALUATORQX", "18700101", "QXSOURCEAEQX", "QXTIFFQX"]


def test_identity_inside_kept_sequences_the_file_meta_and_the_preamble_goes(tmp_path):
    source = _with_nested_identity(tmp_path / "in.dcm")
    assert {m for _, m, _ in find_markers([source], NESTED_MARKERS)} == set(NESTED_MARKERS)

    deidentify_dicom_file(source, tmp_path / "out.dcm", SALT)

    assert find_markers([tmp_path / "out.dcm"], NESTED_MARKERS + MARKERS) == []
    ds = pydicom.dcmread(tmp_path / "out.dcm")
    equipment = ds.ContributingEquipmentSequence[0]
    assert equipment.Manufacturer == "Acme", "K: the sequence is kept, only what identifies is cleaned"
    assert equipment.ReferencedImageSequence[0].ReferencedSOPInstanceUID == (
        "2.25." + str(int.from_bytes(hmac.new(SALT.encode(), b"1.2.826.0.1.3680043.8.498.2700", hashlib.sha256)
                                     .digest()[:16], "big"))
    ), "a nested reference gets the salted UID the instance it points to gets"  # fmt: skip
    assert ds.preamble == b"\x00" * 128 and "SourceApplicationEntityTitle" not in ds.file_meta


def test_the_check_names_the_path_of_a_nested_survivor(tmp_path):
    source = _with_nested_identity(tmp_path / "in.dcm")
    original = pydicom.dcmread(source, stop_before_pixels=True)
    deidentify_dicom_file(source, tmp_path / "out.dcm", SALT)
    check_deidentified(original, tmp_path / "out.dcm")  # passes
    spoilers = {
        "kept.dcm": (
            lambda item: setattr(item, "InstitutionName", "QXNESTEDHOSPQX"),
            r"de-identification left ContributingEquipmentSequence\[0\]\.InstitutionName unchanged",
        ),
        "uid.dcm": (
            lambda item: setattr(item.ReferencedImageSequence[0], "ReferencedSOPInstanceUID",
                                 "1.2.826.0.1.3680043.8.498.2700"),
            r"ContributingEquipmentSequence\[0\]\.ReferencedImageSequence\[0\]\.ReferencedSOPInstanceUID "
            r"still holds the original UID",
        ),
        "copied.dcm": (
            lambda item: setattr(item, "Manufacturer", "Acme for QXNESTEDPIDQX"),
            r"the value of ContributingEquipmentSequence\[0\]\.PatientID is still in the header "
            r"\(at ContributingEquipmentSequence\[0\]\.Manufacturer\)",
        ),
    }  # fmt: skip
    for name, (spoil, message) in spoilers.items():
        ds = pydicom.dcmread(tmp_path / "out.dcm")
        spoil(ds.ContributingEquipmentSequence[0])
        ds.save_as(tmp_path / name)
        with pytest.raises(InputDataError, match=rf"{re.escape(name)}: {message}"):
            check_deidentified(original, tmp_path / name)


def test_a_file_that_fails_the_check_is_not_left_behind(tmp_path, monkeypatch):
    source = _with_nested_identity(tmp_path / "in" / "slice.dcm")
    monkeypatch.setattr("pipeline.sources.deidentify.apply_profile", lambda ds, salt: None)  # switched off
    with pytest.raises(InputDataError, match=r"out/slice\.dcm: "):
        deidentify_dicom_file(source, tmp_path / "out" / "slice.dcm", SALT)
    assert list((tmp_path / "out").iterdir()) == [], "neither the file nor its temporary"


def _bare_data_set(path: Path) -> bytes:
    """A marked slice as a PACS export writes it: no preamble, no file meta, implicit VR."""
    ds = pydicom.dcmread(path)
    buffer = io.BytesIO()
    ds.file_meta, ds.preamble = pydicom.dataset.FileMetaDataset(), None
    pydicom.dcmwrite(buffer, ds, implicit_vr=True, little_endian=True, enforce_file_format=False)
    return buffer.getvalue()


def test_dicom_is_known_by_content_bare_and_gzipped_and_written_the_same_each_run(tmp_path):
    stage = tmp_path / "stage"
    source = _marked_slice(tmp_path / "slice.dcm")
    (stage / "sub-a").mkdir(parents=True)
    (stage / "sub-a" / "IM000001").write_bytes(_bare_data_set(source))
    (stage / "sub-a" / "IM000002.gz").write_bytes(gzip.compress(source.read_bytes()))
    runs = [tmp_path / "raw" / "a", tmp_path / "raw" / "b"]
    for out in runs:
        summary = deidentify_dataset(stage, out, SALT)

    assert summary.counts == {"dicom": 1, "dicom (gzip)": 1}
    assert find_markers(runs, MARKERS) == []  # gunzipped too
    bare = (runs[0] / "sub-a" / "IM000001").read_bytes()
    assert bare[128:132] == b"DICM", "written as a DICOM file, so every later stage knows it"
    assert pydicom.dcmread(io.BytesIO(bare)).PixelData == pydicom.dcmread(source).PixelData
    zipped = (runs[0] / "sub-a" / "IM000002.gz").read_bytes()
    assert pydicom.dcmread(io.BytesIO(gzip.decompress(zipped))).PatientIdentityRemoved == "YES"
    assert [p.read_bytes() for p in sorted(runs[0].rglob("IM*"))] == [
        p.read_bytes() for p in sorted(runs[1].rglob("IM*"))
    ], "same bytes on a rerun (DVC sees no change)"


def _zip(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def _tar_gz(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("name", "build", "problem"),
    [
        ("series.zip", lambda d: _zip({"QXNAMEQX/readme.txt": b"x", "QXNAMEQX/IM1": d}),
         r"a zip archive holding dicom \(member 2 of 2\)"),
        ("series.tar.gz", lambda d: _tar_gz({"QXNAMEQX/IM1": d}), r"a tar archive inside a gzip stream"),
        ("IM000009", lambda d: b"\x08\x00\x05\x00CS\x0a\x00ISO_IR 100" + b"\x00" * 200,
         r"has no DICOM preamble and does not read as a DICOM instance"),
        ("notes.dcm", lambda d: b"QXNAMEQX was here\n", r"named like a DICOM file but is not DICOM"),
    ],
)  # fmt: skip
def test_what_could_hide_dicom_is_refused_naming_only_the_file(tmp_path, name, build, problem):
    stage = tmp_path / "stage"
    stage.mkdir()
    (stage / name).write_bytes(build(_marked_slice(tmp_path / "slice.dcm").read_bytes()))
    out = tmp_path / "raw" / "x"
    with pytest.raises(InputDataError, match=rf"{re.escape(name)}: {problem}") as caught:
        deidentify_dataset(stage, out, SALT)
    assert "QXNAMEQX" not in str(caught.value), "a member's name is not repeated"
    assert not out.exists() and list(out.parent.iterdir()) == []


def test_an_archive_of_tables_is_copied(tmp_path):
    stage = tmp_path / "stage"
    stage.mkdir()
    tables = _zip({"reads.csv": b"name,label\nCQ500-CT-1,1\n"})
    (stage / "reads.zip").write_bytes(tables)
    assert deidentify_dataset(stage, tmp_path / "raw" / "x", SALT).counts == {"other": 1}
    assert (tmp_path / "raw" / "x" / "reads.zip").read_bytes() == tables


def test_a_damaged_dicom_under_a_bare_name_is_refused_not_copied(tmp_path):
    """pydicom's no_meta.dcm: a data set behind one stray byte, which no reader opens; under a
    PACS-style name it would otherwise be copied as it is, PatientName and all."""
    stage = tmp_path / "stage"
    stage.mkdir()
    shutil.copyfile(get_testdata_file("no_meta.dcm"), stage / "IM000003")
    with pytest.raises(InputDataError, match=r"IM000003: holds DICOM elements .* does not start as a DICOM"):
        deidentify_dataset(stage, tmp_path / "raw" / "x", SALT)
    assert not (tmp_path / "raw" / "x").exists()
