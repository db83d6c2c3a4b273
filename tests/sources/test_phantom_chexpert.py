"""The built-in adult CheXpert-layout phantom: layout and CSVs, truth CTR against the masks,
ladders that change only the heart, labels that follow the CTR, determinism, de-identification."""

from __future__ import annotations

import csv
import hashlib
import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from pipeline.errors import ConfigError
from pipeline.preprocess.ctr import ctr_from_masks
from pipeline.sources.download import download_dataset
from pipeline.sources.phantom_chexpert import (
    CSV_COLUMNS,
    ChexpertPhantomParams,
    draw_adult,
    label_map_of,
    write_chexpert_layout,
)
from pipeline.sources.phantom_cxr import render_radiograph

SMALL = {
    "n_patients_train": 10,
    "n_patients_valid": 3,
    "short_side": 64,
    "ladder_patients": 2,
    "lateral_probability": 0.5,
}
PATH = re.compile(
    r"^CheXpert-v1\.0-small/(train|valid)/patient\d{5}/study\d+/view(1_frontal|2_lateral)\.jpg$"
)
#: |CTR from the truth masks - the CTR the heart was drawn at|, at 128 px: widths are whole
#: pixels (about +-1 px of ~55 and ~100 px) and the pose rotates the chest by up to 4 degrees.
CTR_TOLERANCE = 0.03


def _csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def _digests(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def phantom(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("chexpert")
    write_chexpert_layout(folder, seed=4, **SMALL)
    return folder


def test_layout_columns_views_and_files(phantom):
    root = phantom / "CheXpert-v1.0-small"
    rows = {split: _csv(root / f"{split}.csv") for split in ("train", "valid")}
    views = set()
    for split, table in rows.items():
        with open(root / f"{split}.csv") as handle:
            assert tuple(handle.readline().strip().split(",")) == CSV_COLUMNS
        for row in table:
            assert PATH.match(row["Path"]), row["Path"]
            assert row["Path"].split("/")[1] == split
            image = phantom / row["Path"]
            with Image.open(image) as film:
                assert film.format == "JPEG" and film.mode == "L" and min(film.size) == 64
            views.add(row["Frontal/Lateral"])
            assert row["Sex"] in ("Male", "Female") and 18 <= int(row["Age"]) <= 90
            if row["Frontal/Lateral"] == "Frontal":
                assert row["AP/PA"] in ("AP", "PA")
            else:
                assert row["AP/PA"] == "" and row["Path"].endswith("view2_lateral.jpg")
            for name in CSV_COLUMNS[5:]:
                assert row[name] in ("1.0", "0.0", "-1.0", "")
    assert views == {"Frontal", "Lateral"}
    patients = {split: {r["Path"].split("/")[2] for r in table} for split, table in rows.items()}
    assert len(patients["train"]) == 10 and len(patients["valid"]) == 3
    assert not patients["train"] & patients["valid"]


def test_cardiomegaly_label_follows_the_truth_ctr(phantom):
    truth = {r["Path"]: float(r["ctr"]) for r in _csv(phantom / "phantom_truth" / "truth.csv")}
    params = ChexpertPhantomParams(**SMALL)
    seen = set()
    for split in ("train", "valid"):
        for row in _csv(phantom / "CheXpert-v1.0-small" / f"{split}.csv"):
            if row["Frontal/Lateral"] != "Frontal":
                continue
            ctr, label = truth[row["Path"]], row["Cardiomegaly"]
            seen.add(label)
            if label == "1.0":
                assert ctr > params.ctr_threshold
            elif label in ("0.0", ""):
                assert ctr < params.ctr_threshold
            if split == "valid":
                assert label in ("0.0", "1.0")  # expert labels
            if abs(ctr - params.ctr_threshold) < params.uncertain_band and split == "train":
                assert label == "-1.0"
    assert {"1.0"} < seen


def test_phantom_ctr_agrees_with_ctr_measured_on_its_truth_masks():
    """Many patients, both classes: the CTR the heart was drawn at (phantom_cxr's geometry)
    against the clinical measurement on the rendered masks (pipeline/preprocess/ctr.py)."""
    params = ChexpertPhantomParams(short_side=128, cardiomegaly_fraction=0.5)
    renderer = params.renderer()
    drawn, measured = [], []
    for index in range(40):
        rng = np.random.default_rng([11, index])
        patient = draw_adult(rng, f"patient{index:05d}", params)
        film = render_radiograph(patient.anatomy, rng, renderer)
        drawn.append(patient.ctr)
        measured.append(ctr_from_masks(label_map_of(film)))
    drawn, measured = np.array(drawn), np.array(measured)
    assert drawn.min() < 0.45 and drawn.max() > 0.55  # both classes present
    assert np.abs(measured - drawn).max() < CTR_TOLERANCE
    assert abs(np.mean(measured - drawn)) < CTR_TOLERANCE / 3


def test_ladder_renders_differ_only_around_the_heart():
    params = ChexpertPhantomParams(short_side=96)
    renderer = params.renderer()
    for index in range(3):
        rng = np.random.default_rng([5, index])
        patient = draw_adult(rng, "p", params)
        state = rng.bit_generator.state
        films = []
        for ctr in (0.4, 0.6):
            rng.bit_generator.state = state
            films.append(render_radiograph(patient.with_ctr(ctr).anatomy, rng, renderer))
        small, large = films
        assert ctr_from_masks(label_map_of(large)) > ctr_from_masks(label_map_of(small)) + 0.15
        hearts = ndimage.binary_dilation(small.heart | large.heart, iterations=10)
        difference = np.abs(large.image - small.image)
        assert difference[~hearts].max() < 0.01  # the air column's blur and the detector blur reach a few px
        assert np.median(difference[~ndimage.binary_dilation(hearts, iterations=4)]) == 0
        assert difference[large.heart & ~small.heart].mean() > 0.05  # the heart did grow


def test_ladder_files_base_render_is_the_dataset_film(phantom):
    ladder = _csv(phantom / "phantom_truth" / "ladder.csv")
    by_patient: dict[str, list[dict[str, str]]] = {}
    for row in ladder:
        by_patient.setdefault(row["patient"], []).append(row)
    assert len(by_patient) == 2
    truth = {r["Path"]: float(r["ctr"]) for r in _csv(phantom / "phantom_truth" / "truth.csv")}
    for rungs in by_patient.values():
        assert len(rungs) == 7  # six ladder CTRs + the patient's own
        base = [r for r in rungs if r["base"] == "1"]
        assert len(base) == 1 and float(base[0]["ctr"]) == pytest.approx(truth[base[0]["Path"]], abs=1e-6)
        assert truth[base[0]["Path"]] < 0.5  # healthy
        png = np.asarray(Image.open(phantom / "phantom_truth" / base[0]["image"]), np.float32)
        jpeg = np.asarray(Image.open(phantom / base[0]["Path"]), np.float32)
        assert png.shape == jpeg.shape and np.abs(png - jpeg).mean() < 3  # the same film, JPEG-coded
        measured = [
            ctr_from_masks(np.asarray(Image.open(phantom / "phantom_truth" / r["label_map"]))) for r in rungs
        ]
        assert np.all(np.diff(measured) >= 0)  # ascending CTR
        assert np.abs(np.array(measured) - [float(r["ctr"]) for r in rungs]).max() < 2 * CTR_TOLERANCE


def test_same_seed_same_files_other_seed_other_files(tmp_path):
    knobs = {**SMALL, "n_patients_train": 3, "n_patients_valid": 1, "ladder_patients": 1}
    write_chexpert_layout(tmp_path / "a", seed=7, **knobs)
    write_chexpert_layout(tmp_path / "b", seed=7, **knobs)
    write_chexpert_layout(tmp_path / "c", seed=8, **knobs)
    assert _digests(tmp_path / "a") == _digests(tmp_path / "b")
    assert _digests(tmp_path / "a") != _digests(tmp_path / "c")


def test_bad_knobs_are_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="unknown knobs"):
        write_chexpert_layout(tmp_path, seed=1, n_patients=3)
    with pytest.raises(ConfigError, match="ctr_threshold"):
        write_chexpert_layout(tmp_path, seed=1, ctr_threshold=0.7)
    with pytest.raises(ConfigError, match="finding_rates"):
        write_chexpert_layout(tmp_path, seed=1, finding_rates={"Edema": [0.8, 0.3, 0.0]})


def test_download_stage_lays_it_out_de_identified(tmp_path):
    out = tmp_path / "cxr_cardiomegaly"
    knobs = {**SMALL, "n_patients_train": 3, "n_patients_valid": 1, "ladder_patients": 1}
    download_dataset("phantom_chexpert", out, seed=2, phantom_options=knobs)
    listed = [
        row["Path"]
        for split in ("train", "valid")
        for row in _csv(out / "CheXpert-v1.0-small" / f"{split}.csv")
    ]
    assert all((out / path).is_file() for path in listed)
    n_png = len(list((out / "phantom_truth").rglob("*.png")))
    record = json.loads((out / "deidentification.json").read_text())
    assert (
        record["files"]["jpeg"] == len(listed) and record["files"]["png"] == n_png
    )  # every file went through it
