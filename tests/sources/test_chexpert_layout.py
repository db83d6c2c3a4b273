"""The real chexpert source in CheXpert's own layout (dataset cxr_cardiomegaly), from a small fake
CheXpert-v1.0-small.zip: folders and CSVs kept, images de-identified, missing files named."""

from __future__ import annotations

import csv
import io
import struct

import numpy as np
import pytest
from PIL import Image

from pipeline.errors import InputDataError
from pipeline.preprocess.chexpert_prep import prepare_chexpert
from pipeline.sources.download import download_dataset

ROOT = "CheXpert-v1.0-small"
HEADER = "Path,Sex,Age,Frontal/Lateral,AP/PA,No Finding,Cardiomegaly\n"
#: A name a scanner might leave in a JPEG comment: it must not reach data/raw.
LEAKED_NAME = b"DOE^JANE 1961-04-02"


def _jpeg_with_comment(seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 255, (48, 40), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG")
    data = buffer.getvalue()
    comment = b"\xff\xfe" + struct.pack(">H", len(LEAKED_NAME) + 2) + LEAKED_NAME
    return data[:2] + comment + data[2:]  # COM segment right after SOI


def _zip(build, drop: str | None = None) -> bytes:
    rows = [
        ("train/patient00001/study1/view1_frontal.jpg", "Frontal", "AP", "1.0"),
        ("train/patient00001/study1/view2_lateral.jpg", "Lateral", "", "1.0"),
        ("train/patient00002/study1/view1_frontal.jpg", "Frontal", "PA", ""),
        ("train/patient00003/study1/view1_frontal.jpg", "Frontal", "AP", "-1.0"),
    ]
    train = HEADER + "".join(f"{ROOT}/{p},Female,60,{v},{ap},,{c}\n" for p, v, ap, c in rows)
    valid = HEADER + f"{ROOT}/valid/patient64541/study1/view1_frontal.jpg,Male,73,Frontal,AP,,0.0\n"
    members = {f"{ROOT}/train.csv": train.encode(), f"{ROOT}/valid.csv": valid.encode()}
    paths = [p for p, *_ in rows] + ["valid/patient64541/study1/view1_frontal.jpg"]
    for seed, path in enumerate(paths):
        if path != drop:
            members[f"{ROOT}/{path}"] = _jpeg_with_comment(seed)
    return build.zip(members)


def test_chexpert_zip_keeps_its_layout_de_identified(build, write, tmp_path):
    archive = write("CheXpert-v1.0-small.zip", _zip(build))
    out = tmp_path / "cxr_cardiomegaly"
    download_dataset("chexpert", out, local_path=archive, chexpert_keep_layout=True)

    root = out / ROOT
    with open(root / "train.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [r["Path"] for r in rows] == [
        f"{ROOT}/train/patient00001/study1/view1_frontal.jpg",
        f"{ROOT}/train/patient00001/study1/view2_lateral.jpg",
        f"{ROOT}/train/patient00002/study1/view1_frontal.jpg",
        f"{ROOT}/train/patient00003/study1/view1_frontal.jpg",
    ]
    assert rows[0]["Cardiomegaly"] == "1.0" and rows[3]["Cardiomegaly"] == "-1.0"  # labels as written
    images = sorted(root.rglob("*.jpg"))
    assert len(images) == 5
    for image in images:
        data = image.read_bytes()
        assert LEAKED_NAME not in data  # the comment segment is gone
        with Image.open(image) as film:
            assert film.size == (40, 48)  # pixels kept
    # and the prep reads it: frontal only, uncertain dropped by default
    counts = prepare_chexpert(out, tmp_path / "slices", size=16, val_fraction=0.0, test_fraction=0.0)
    assert sum(counts.values()) == 3


def test_subset_of_patients(build, write, tmp_path):
    archive = write("CheXpert-v1.0-small.zip", _zip(build))
    out = tmp_path / "cxr_cardiomegaly"
    download_dataset(
        "local", out, local_path=archive, layout="chexpert", chexpert_keep_layout=True, n_subjects=2
    )
    listed = []
    for table in ("train.csv", "valid.csv"):
        with open(out / ROOT / table, newline="") as handle:
            listed += [r["Path"].split("/")[2] for r in csv.DictReader(handle)]
    assert len(set(listed)) == 2
    assert len(list((out / ROOT).rglob("*.jpg"))) == len(listed)


def test_a_listed_image_missing_from_the_zip_is_named(build, write, tmp_path):
    archive = write(
        "CheXpert-v1.0-small.zip", _zip(build, drop="train/patient00002/study1/view1_frontal.jpg")
    )
    with pytest.raises(
        InputDataError, match="line 4: image .*patient00002/study1/view1_frontal.jpg is missing"
    ):
        download_dataset("chexpert", tmp_path / "out", local_path=archive, chexpert_keep_layout=True)
    assert not (tmp_path / "out").exists()
