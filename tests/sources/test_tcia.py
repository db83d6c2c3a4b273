"""Tests of the tcia source (TCIA's NBIA REST API, served by a real HTTP server on 127.0.0.1 with
real DICOM zips of phantom thorax series) and of the local layout tcia with user label images:
the series choice, ordering head to feet, pseudonymous folders, de-identification, and that the
thorax slices stage reads the result."""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image

from pipeline.errors import InputDataError
from pipeline.preprocess.thorax_slices import prepare_thorax_slices
from pipeline.privacy import find_markers
from pipeline.sources import phantom_tcia_thorax as tp
from pipeline.sources.download import download_dataset

API = "/nbia-api/services/v1"
SALT = "test-salt-0123456789abcdef"
ORIGINAL_IDS = ("LUNG-0001", "LUNG-0002", "LUNG-0003")


@pytest.fixture(autouse=True)
def salt(monkeypatch):
    monkeypatch.setenv("MEDGAN_SALT", SALT)


@pytest.fixture(scope="module")
def phantom(tmp_path_factory) -> Path:
    """Three patients' series (4 slices, 64 px) standing in for a TCIA collection."""
    return tp.write_phantom_thorax_dataset(tmp_path_factory.mktemp("tcia") / "p", 9, n_patients=3,
                                           slices_per_patient=4, matrix=64, pixel_mm=6.0)  # fmt: skip


def _series(phantom: Path) -> list[list[Path]]:
    return [sorted(p.rglob("*.dcm")) for p in sorted(phantom.glob("THX-*"))]


def _as_tcia(files: list[Path], patient_id: str) -> tuple[bytes, dict]:
    """A getImage zip (TCIA's names, in reverse order, plus a licence text) and its getSeries entry."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for k, path in enumerate(reversed(files)):
            ds = pydicom.dcmread(path)
            ds.PatientID = patient_id
            one = io.BytesIO()
            ds.save_as(one, enforce_file_format=True)
            archive.writestr(f"1-{k + 1:03d}.dcm", one.getvalue())
        archive.writestr("LICENSE", "CC BY 3.0")
    ds = pydicom.dcmread(files[0], stop_before_pixels=True)
    entry = {"PatientID": patient_id, "StudyInstanceUID": str(ds.StudyInstanceUID), "Modality": "CT",
             "SeriesInstanceUID": str(ds.SeriesInstanceUID), "ImageCount": len(files), "Collection": "PHANTOM"}  # fmt: skip
    return buffer.getvalue(), entry


def _serve(server, phantom: Path) -> list[dict]:
    listing = []
    for files, patient in zip(_series(phantom), ORIGINAL_IDS, strict=True):
        body, entry = _as_tcia(files, patient)
        server.add(f"{API}/getImage?SeriesInstanceUID={entry['SeriesInstanceUID']}", body)
        listing.append(entry)
    # a scout of the first patient: fewer images, never chosen
    listing.append({**listing[0], "SeriesInstanceUID": "1.2.3.4", "ImageCount": 1})
    listing.append({**listing[1], "Modality": "SEG", "SeriesInstanceUID": "1.2.3.5", "ImageCount": 99})
    server.add(f"{API}/getSeries", json.dumps(listing).encode())
    return listing


def test_download_lays_out_one_series_a_patient_head_to_feet_under_pseudonyms(server, fast, phantom, tmp_path):
    listing = _serve(server, phantom)
    raw = download_dataset("tcia", tmp_path / "ct_thorax", base_url=server.url(API), n_subjects=2, seed=0,
                           settings=fast, phantom_options={"collection": "PHANTOM"}, staging_dir=tmp_path / "stage")  # fmt: skip
    asked = [s.path for s in server.seen]
    assert asked.count(f"{API}/getSeries") == 1 and asked.count(f"{API}/getImage") == 2  # two of three patients
    folders = sorted(p for p in raw.glob("sub-*/*/*") if p.is_dir())
    assert len(folders) == 2
    for folder in folders:
        files = sorted(folder.glob("*.dcm"))
        assert [f.name for f in files] == ["0001.dcm", "0002.dcm", "0003.dcm", "0004.dcm"]
        z = [float(pydicom.dcmread(f).ImagePositionPatient[2]) for f in files]
        assert z == sorted(z, reverse=True)
        ds = pydicom.dcmread(files[0])
        assert ds.StudyInstanceUID == folder.parent.name and ds.SeriesInstanceUID == folder.name
    assert find_markers([raw], [*ORIGINAL_IDS, *(e["SeriesInstanceUID"] for e in listing[:3])]) == []
    assert not (raw / "labels").exists() and (raw / ".sha256").is_file()
    out = tmp_path / "slices"
    prepare_thorax_slices(raw, out, size=32, train_patients=1, val_patients=0, train_images=1,
                          eval_slices_per_patient=1, label_maps="auto")  # fmt: skip
    assert np.load(out / "train.npz")["label_maps"].max() >= 2  # the approximate rule found lungs


def test_a_non_json_series_list_names_the_url(server, fast, tmp_path):
    server.add(f"{API}/getSeries", b"<html>maintenance</html>")
    with pytest.raises(InputDataError, match="getSeries.*not JSON"):
        download_dataset("tcia", tmp_path / "ct_thorax", base_url=server.url(API), settings=fast,
                         staging_dir=tmp_path / "stage")  # fmt: skip


def test_local_tcia_layout_keeps_each_label_with_its_slice(phantom, tmp_path):
    """A user's folder: TCIA's layout with their own file names and label images beside it."""
    user = tmp_path / "user"
    for files, patient in zip(_series(phantom), ORIGINAL_IDS, strict=True):
        for k, path in enumerate(files):
            relative = Path(patient, "study", "series", f"IMG{len(files) - k:03d}.dcm")  # names not in z order
            (user / relative).parent.mkdir(parents=True, exist_ok=True)
            ds = pydicom.dcmread(path)
            ds.PatientID = patient
            ds.save_as(user / relative, enforce_file_format=True)
            label = phantom / "labels" / path.relative_to(phantom).with_suffix(".png")
            (user / "labels" / relative).parent.mkdir(parents=True, exist_ok=True)
            (user / "labels" / relative.with_suffix(".png")).write_bytes(label.read_bytes())
    raw = download_dataset("local", tmp_path / "ct_thorax", local_path=user, layout="tcia",
                           staging_dir=tmp_path / "stage")  # fmt: skip
    for files in _series(phantom):
        original = pydicom.dcmread(files[0])
        for k, path in enumerate(files):  # the phantom's own order is head to feet too
            matches = [p for p in raw.glob(f"sub-*/*/*/{k + 1:04d}.dcm")
                       if np.array_equal(pydicom.dcmread(p).pixel_array, pydicom.dcmread(path).pixel_array)]  # fmt: skip
            assert len(matches) == 1, f"slice {k} of {original.SeriesInstanceUID}"
            moved = raw / "labels" / matches[0].relative_to(raw).with_suffix(".png")
            before = np.asarray(Image.open(phantom / "labels" / path.relative_to(phantom).with_suffix(".png")))
            assert np.array_equal(np.asarray(Image.open(moved)), before)
    assert find_markers([raw], list(ORIGINAL_IDS)) == []
