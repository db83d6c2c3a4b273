"""The headline chain run on patient-like inputs, shared by the PHI and the kill-and-restart tests.

The built-in phantoms are generated, then every header and name that could identify a patient is
overwritten with a unique marker string (DICOM fields and a private tag, NIfTI text fields and a
header extension, subject folder and file names), and the result is fed to the workflow through
the ``local`` source, exactly as a user's own data would be. A small chest X-ray set in Kermany's
layout carries markers in JPEG EXIF / comments and PNG text chunks. One uninterrupted build per
test session is shared by both test files.
"""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import yaml
from PIL import Image, PngImagePlugin

from pipeline.config import deep_merge
from pipeline.sources.download import download_dataset
from workflow_support import TARGET, run, tiny_copy

#: DICOM keyword -> marker; every marker is a string no output could hold by chance.
DICOM_MARKERS = {
    "PatientName": "QXNAMEQX^PATIENT",
    "PatientID": "QXPIDQX",
    "PatientBirthDate": "18610429",
    "AccessionNumber": "QXACCQX",
    "InstitutionName": "QXHOSPQX",
    "InstitutionAddress": "QXADDRESSQX Road 1",
    "ReferringPhysicianName": "QXDOCQX",
    "PerformingPhysicianName": "QXPERFQX",
    "StudyDate": "18620531",
    "SeriesDate": "18620601",
    "StudyDescription": "QXSTUDYQX",
    "SeriesDescription": "QXSERIESQX PLAIN",
    "OperatorsName": "QXOPERQX",
    "StationName": "QXSTATIONQX",
}
PRIVATE_TAG_MARKER = "QXPRIVATEQX"
NIFTI_MARKERS = {
    "descrip": "QXDESCRIPQX",
    "aux_file": "QXAUXQX",
    "intent_name": "QXINTENTQX",
    "db_name": "QXDBQX",
}
NIFTI_EXTENSION_MARKER = "QXNIFTIEXTQX"
FOLDER_MARKER = "QXFOLDERQX"
FILE_MARKER = "QXFILEQX"
#: Markers of the chest X-ray images: JPEG EXIF, a JPEG comment, PNG tEXt / zTXt / iTXt chunks.
IMAGE_MARKERS = {
    "jpeg_exif": "QXEXIFQX", "jpeg_comment": "QXJPEGCOMQX", "png_text": "QXPNGTEXTQX",
    "png_ztxt": "QXPNGZTXTQX", "png_itxt": "QXPNGITXTQX",
}  # fmt: skip


def searchable(markers) -> list[str]:
    """What a scan looks for: each marker's part before a name separator (``^``) or a space."""
    return sorted({value.split("^")[0].split(" ")[0] for value in markers})


MARKERS = searchable(
    [*DICOM_MARKERS.values(), *NIFTI_MARKERS.values(), *IMAGE_MARKERS.values(),
     FOLDER_MARKER, FILE_MARKER, PRIVATE_TAG_MARKER, NIFTI_EXTENSION_MARKER]
)  # fmt: skip
#: Everything the workflow writes, minus the raw inputs.
SCANNED = ("data", "models", "results", "logs", "benchmarks", "mlflow.db", "mlartifacts")
SALT = "phi-test-salt-0123456789abcdef"

_BUILDS: dict[str, Path] = {}


def _mark_nifti(path: Path, target: Path) -> None:
    image = nib.load(path)
    for field, marker in NIFTI_MARKERS.items():
        image.header[field] = marker.encode()
    image.header.extensions.append(nib.nifti1.Nifti1Extension("comment", NIFTI_EXTENSION_MARKER.encode()))
    target.parent.mkdir(parents=True, exist_ok=True)
    nib.save(image, target)
    if target != path:
        path.unlink()


def mark_raw_dataset(raw: Path) -> None:
    """Give every subject of a phantom raw layout identifying headers and a marked name."""
    with open(raw / "subjects.tsv", newline="") as handle:
        reader = csv.DictReader(handle, delimiter="\t")
        columns, rows = reader.fieldnames, list(reader)
    for row in rows:
        old, new = row["subject_id"], f"{FOLDER_MARKER}{row['subject_id']}"
        if row["modality"] == "CT":
            os.rename(raw / row["path"], raw / new)
            for path in (raw / new).rglob("*.dcm"):
                ds = pydicom.dcmread(path)
                for keyword, marker in DICOM_MARKERS.items():
                    setattr(ds, keyword, marker)
                ds.private_block(0x0029, "QX SITE PRIVATE", create=True).add_new(
                    0x10, "LO", PRIVATE_TAG_MARKER
                )
                ds.save_as(path.with_name(f"{FILE_MARKER}_{path.name}"))
                path.unlink()
            row["path"] = new
        else:
            target = raw / row["path"].replace(old, new)
            _mark_nifti(raw / row["path"], target)
            row["path"] = target.relative_to(raw).as_posix()
        if row["partner_path"]:
            target = raw / row["partner_path"].replace(old, new)
            _mark_nifti(raw / row["partner_path"], target)
            row["partner_path"] = target.relative_to(raw).as_posix()
        for truth in (raw / "truth").glob(f"{old}_*"):
            truth.rename(truth.with_name(new + truth.name[len(old) :]))
        row["subject_id"] = new
    with open(raw / "subjects.tsv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, columns, delimiter="\t", lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)


def _marked_jpeg(seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 255, (96, 112), dtype=np.uint8)
    exif = Image.Exif()
    exif[0x013B] = IMAGE_MARKERS["jpeg_exif"]  # Artist
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(
        buffer, format="JPEG", exif=exif, comment=IMAGE_MARKERS["jpeg_comment"].encode()
    )
    return buffer.getvalue()


def _marked_png(seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 255, (96, 112), dtype=np.uint8)
    info = PngImagePlugin.PngInfo()
    info.add_text("Author", IMAGE_MARKERS["png_text"])
    info.add_text("Comment", IMAGE_MARKERS["png_ztxt"], zip=True)
    info.add_itxt("Description", IMAGE_MARKERS["png_itxt"])
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG", pnginfo=info)
    return buffer.getvalue()


def marked_images(folder: Path) -> Path:
    """A chest X-ray set in Kermany's layout whose image files carry metadata markers."""
    for split, label, name, seed in (
        ("train", "NORMAL", "IM-0001-0001.jpeg", 1), ("train", "PNEUMONIA", "person1_bacteria_1.jpeg", 2),
        ("test", "NORMAL", "IM-0002-0001.png", 3), ("test", "PNEUMONIA", "person2_virus_2.png", 4),
    ):  # fmt: skip
        path = folder / "chest_xray" / split / label / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(_marked_jpeg(seed) if name.endswith(".jpeg") else _marked_png(seed))
    return folder


def marked_inputs(repo_root: Path, folder: Path) -> dict:
    """Marked CT and MR raw datasets and a marked X-ray image set under ``folder``; returns the
    params overrides that read them."""
    tiny = yaml.safe_load((repo_root / "configs" / "tiny.yaml").read_text())
    cfg = deep_merge(yaml.safe_load((repo_root / "params.yaml").read_text()), tiny)
    overrides: dict = {"datasets": {}}
    for dataset, modality in (("ct_head", "CT"), ("mri_t2", "MR")):
        ds_cfg = cfg["datasets"][dataset]
        raw = folder / dataset
        download_dataset(
            "phantom_head",
            raw,
            modality=modality,
            n_subjects=ds_cfg["n_subjects"],
            n_paired=ds_cfg["n_paired"],
            seed=cfg["seed"],
            phantom_options=cfg["phantom_head"],
        )
        mark_raw_dataset(raw)
        overrides["datasets"][dataset] = {
            "source": "local", "layout": "raw", "local_path": str(raw), "n_subjects": None,
        }  # fmt: skip
    overrides["datasets"]["chest_xray"] = {
        "source": "local", "layout": "kermany_cxr", "local_path": str(marked_images(folder / "chest_xray")),
        "n_subjects": None,
    }  # fmt: skip
    return overrides


def marked_copy(repo_root: Path, work: Path, inputs: Path) -> Path:
    """A tiny copy of the repository reading the marked inputs made by ``shared_inputs``."""
    return tiny_copy(repo_root, work, yaml.safe_load((inputs / "overrides.yaml").read_text()))


def uninterrupted_build(tmp_path_factory, repo_root: Path) -> Path:
    """The headline target built once, without interruption, on the marked inputs (cached)."""
    if "build" not in _BUILDS:
        os.environ["MEDGAN_SALT"] = SALT  # inherited by snakemake and every job
        inputs = shared_inputs(tmp_path_factory, repo_root)
        work = marked_copy(repo_root, tmp_path_factory.mktemp("phi") / "repo", inputs)
        run(["snakemake", "--cores", "2", TARGET], work)
        _BUILDS["build"] = work
    return _BUILDS["build"]


def shared_inputs(tmp_path_factory, repo_root: Path) -> Path:
    if "inputs" not in _BUILDS:
        inputs = tmp_path_factory.mktemp("phi_inputs")
        (inputs / "overrides.yaml").write_text(yaml.safe_dump(marked_inputs(repo_root, inputs)))
        _BUILDS["inputs"] = inputs
    return _BUILDS["inputs"]


def scanned_paths(work: Path) -> list[Path]:
    paths = [work / name for name in SCANNED if (work / name).exists()]
    data = work / "data"
    return [p for p in paths if p != data] + [p for p in data.iterdir() if p.name != "raw"]
