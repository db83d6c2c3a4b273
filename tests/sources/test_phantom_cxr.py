"""The built-in chest radiographs: Kermany's layout and names, determinism, lung masks, and the
class differences the phantom is designed to have (opacities, devices, age)."""

from __future__ import annotations

import csv
import hashlib
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from pipeline.errors import ConfigError
from pipeline.sources.download import download_dataset
from pipeline.sources.phantom_cxr import (
    CxrPhantomParams,
    draw_patient,
    render_radiograph,
    main,
    write_kermany_layout,
)

SMALL = {"n_normal": 4, "pneumonia_per_normal": 1.5, "short_side": 64}
KERMANY_NAME = re.compile(r"^(IM-\d{4}-\d{4}|person\d+_(bacteria|virus)_\d+)\.jpeg$")


def _digests(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def _films(label: str, n: int, seed: int, **knobs) -> list:
    params = CxrPhantomParams(short_side=64, **knobs)
    films = []
    for index in range(n):
        rng = np.random.default_rng([seed, index])
        patient = draw_patient(rng, label, f"p{index}", params)
        films.append((patient, render_radiograph(patient, rng, params)))
    return films


def test_kermany_layout_names_and_counts(tmp_path):
    rows = write_kermany_layout(tmp_path, seed=3, **SMALL)
    images = sorted((tmp_path / "chest_xray").rglob("*.jpeg"))
    by_label = {label: [p for p in images if p.parent.name == label] for label in ("NORMAL", "PNEUMONIA")}
    assert len(by_label["NORMAL"]) == 4 and len(by_label["PNEUMONIA"]) == 6
    for path in images:
        assert KERMANY_NAME.match(path.name), path.name
        assert path.parent.parent.name in ("train", "test")
        with Image.open(path) as image:
            assert image.format == "JPEG" and image.mode == "L" and min(image.size) == 64
        mask = tmp_path / "truth" / f"{path.stem}_lungs.png"
        with Image.open(mask) as lungs:
            assert lungs.size == Image.open(path).size
    assert len(rows) == 10
    # a patient's films never straddle the train and test folders
    folders: dict[str, set[str]] = {}
    for row in rows:
        folders.setdefault(row["patient"], set()).add(row["split"])
    assert all(len(splits) == 1 for splits in folders.values())


def test_same_seed_same_files_other_seed_other_files(tmp_path):
    write_kermany_layout(tmp_path / "a", seed=7, **SMALL)
    write_kermany_layout(tmp_path / "b", seed=7, **SMALL)
    write_kermany_layout(tmp_path / "c", seed=8, **SMALL)
    first = _digests(tmp_path / "a")
    assert first == _digests(tmp_path / "b")
    assert first != _digests(tmp_path / "c")


def test_lung_masks_cover_two_dark_lungs():
    for patient, film in _films("NORMAL", 6, seed=1):
        lungs = film.lungs
        _, n_components = ndimage.label(lungs)
        assert n_components == 2, patient
        assert 0.05 < lungs.mean() < 0.5
        rows, cols = np.nonzero(lungs)
        height, width = lungs.shape
        assert abs(cols.mean() - width / 2) < 0.15 * width  # one lung each side of the midline
        # aerated lungs are darker than the rest of the body in their rows
        band = film.image[rows.min() : rows.max() + 1]
        body = band[(band > 0.2) & ~lungs[rows.min() : rows.max() + 1]]
        assert film.image[lungs].mean() < body.mean() - 0.05


def test_pneumonia_lungs_are_more_opaque():
    knobs = {
        "device_probability_normal": 0.0,
        "device_probability_pneumonia": 0.0,
        "effusion_probability": 0.0,
    }
    normal = [film.image[film.lungs].mean() for _, film in _films("NORMAL", 12, seed=2, **knobs)]
    sick = [film.image[film.lungs].mean() for _, film in _films("PNEUMONIA", 12, seed=2, **knobs)]
    assert np.mean(sick) > np.mean(normal) + 0.02


def test_devices_follow_their_class_probability():
    knobs = {"device_probability_normal": 0.1, "device_probability_pneumonia": 0.9}
    normal = [bool(film.devices) for _, film in _films("NORMAL", 20, seed=4, **knobs)]
    sick = [bool(film.devices) for _, film in _films("PNEUMONIA", 20, seed=4, **knobs)]
    assert sum(sick) >= 14 and sum(normal) <= 6
    never = _films("PNEUMONIA", 5, seed=4, device_probability_pneumonia=0.0)
    assert not any(film.devices for _, film in never)


def test_pneumonia_children_are_younger_with_a_disease_pattern():
    params = CxrPhantomParams()
    rng = np.random.default_rng(0)
    normal = [draw_patient(rng, "NORMAL", "n", params) for _ in range(300)]
    sick = [draw_patient(rng, "PNEUMONIA", "p", params) for _ in range(300)]
    assert np.median([p.age_years for p in sick]) < 0.7 * np.median([p.age_years for p in normal])
    assert all(p.pattern in ("lobar", "patchy") and p.infection in ("bacteria", "virus") for p in sick)
    assert all(p.pattern == "" for p in normal)
    bacterial = [p for p in sick if p.infection == "bacteria"]
    assert 0.5 < len(bacterial) / len(sick) < 0.8


def test_raw_dataset_is_laid_out_like_a_kermany_download(tmp_path):
    out = download_dataset("phantom_cxr", tmp_path / "chest_xray", seed=5, phantom_options=SMALL)
    with open(out / "images.tsv", newline="") as handle:
        rows = list(csv.DictReader(handle, delimiter="\t"))
    assert len(rows) == 10 and {row["label"] for row in rows} == {"NORMAL", "PNEUMONIA"}
    for row in rows:
        assert row["image_id"].startswith(f"{row['split']}_")
        assert (out / row["path"]).is_file()
        assert (out / "truth" / f"{row['image_id']}_lungs.png").is_file()
    with open(out / "truth" / "findings.tsv", newline="") as handle:
        findings = {row["image"]: row for row in csv.DictReader(handle, delimiter="\t")}
    assert set(findings) == {row["image_id"] for row in rows}
    assert not [p for p in out.iterdir() if p.name.startswith(".")]


@pytest.mark.parametrize(
    "knobs, message",
    [
        ({"colour": 1}, "unknown knobs"),
        ({"device_probability_normal": 1.5}, "device_probability_normal"),
        ({"aspect_range": (1.4, 0.8)}, "aspect_range"),
    ],
)
def test_bad_knobs_are_config_errors(tmp_path, knobs, message):
    with pytest.raises(ConfigError, match=message):
        write_kermany_layout(tmp_path, seed=1, **knobs)


def test_cli_writes_kermany_folders_with_pair_knobs(tmp_path):
    main(
        [
            "--out",
            str(tmp_path),
            "--seed",
            "1",
            "--layout",
            "kermany",
            "--n-normal",
            "2",
            "--pneumonia-per-normal",
            "1",
            "--short-side",
            "48",
            "--aspect-range",
            "1.0",
            "1.0",
        ]
    )
    images = sorted((tmp_path / "chest_xray").rglob("*.jpeg"))
    assert len(images) == 4
    assert all(Image.open(path).size == (48, 48) for path in images)
