"""Slices stage for CheXpert-layout chest X-rays (dataset cxr_cardiomegaly, report 004).

Reads ``CheXpert-v1.0-small/{train,valid}.csv`` under the raw folder (the phantom_chexpert source
or a real CheXpert copy, pipeline/sources/chexpert.py) and keeps FRONTAL views only (lateral
views are another projection). Each image is read at its own bit depth and mapped to [0, 1] over
its container's full range (8-bit / 255, 16-bit PNG / 65535: no rescaling per image, so
exposure differences survive), its short side scaled to ``size`` (bicubic, antialiased) and the
long side centre-cropped: one channel, ``size`` x ``size``, stored in [0, 1] (the engine maps to
[-1, 1]). An image that is not a radiograph stops the run naming the file: colour (RGB whose
channels differ), a short side under ``min_side_px`` or a side ratio over ``max_aspect``, or an
unreadable file; so does a CSV row whose image is missing.

Labels come from ``label_column`` (Cardiomegaly): 1.0 -> 1; 0.0 and blank (not mentioned in the
report) -> 0; uncertain -1.0 follows ``uncertain_policy``: ``ignore`` drops the image (default),
``zeros`` makes it 0, ``ones`` 1 (Irvin et al. 2019's U-Ignore / U-Zeros / U-Ones).

Splits are by PATIENT (CheXpert's ``patientNNNNN`` folder; its train / valid folders are merged
and re-split with ``val_fraction`` / ``test_fraction`` and ``seed``). Patients with a truth CTR
ladder (phantom only) always go to test: they are the held-out healthy patients the edits are
measured on.

Outputs in ``out_dir`` (the iface contract): ``{train,val,test}.npz`` with ``images`` (N, S, S)
float32, ``labels`` (N,) int64, ``subject_ids``, ``slice_index`` (the image's number within its
patient), ``image_ids``, ``ctr`` (N,) float32 (the phantom's truth; NaN for real data) and, with
phantom truth, ``label_maps`` (N, S, S) uint8 (0 background, 1 thorax, 2 heart:
pipeline/preprocess/ctr.py), resized by nearest neighbour on the same grid; ``ctr_ladder.npz``
(``images`` (P, K, S, S), ``ctr`` (P, K), ``label_maps`` (P, K, S, S), ``subject_ids`` (P,),
``base_index`` (P,): the patient's own render; P = 0 for real data); ``manifest.csv`` and
``contact_sheet.png``.
"""

from __future__ import annotations

import argparse
import csv
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np
from PIL import Image

from pipeline.atomic import atomic_path
from pipeline.errors import ConfigError, InputDataError
from pipeline.hashing import file_sha256
from pipeline.preprocess import add_knob_options, run_stage_cli, stage_parser
from pipeline.preprocess.extract_slices import assign_splits, check_split_fractions, number_within_patient
from pipeline.preprocess.extract_slices import save_npz, split_subjects
from pipeline.preprocess.xray import decoded_image
from pipeline.progress import progress

_log = logging.getLogger(__name__)

CSV_NAMES = ("train.csv", "valid.csv")
VIEW_COLUMN = "Frontal/Lateral"
UNCERTAIN_POLICIES = ("ignore", "zeros", "ones")
TRUTH_FOLDER = "phantom_truth"
MANIFEST_COLUMNS = ("subject_id", "split", "slice_index", "image_id", "label", "ctr", "sha256")
#: Full-scale value of each integer container PIL reads a grayscale file as.
FULL_SCALE = {"L": 255.0, "I;16": 65535.0, "I;16L": 65535.0, "I;16B": 65535.0, "I;16N": 65535.0}


@dataclass
class _Film:
    image_id: str
    patient: str
    path: Path
    label: int
    image: np.ndarray
    ctr: float
    label_map: np.ndarray | None
    slice_index: int = 0
    split: str = ""


def read_radiograph(path: str | Path, min_side_px: int, max_aspect: float) -> np.ndarray:
    """A radiograph file as a float32 (H, W) array in [0, 1] over its container's full range.

    8-bit (L) / 255, 16-bit (I;16*) / 65535; a 32-bit integer image ("I") is taken as 16-bit
    when it fits (PIL reads some 16-bit files so). Grey stored as RGB(A) with equal channels is
    accepted; distinct channels, a short side under ``min_side_px`` or a side ratio over
    ``max_aspect`` are not a radiograph: InputDataError naming the file.
    """
    path = Path(path)
    with decoded_image(path) as image:
        mode = image.mode
        pixels = np.asarray(image)
    if mode == "P":
        with Image.open(path) as image:
            pixels, mode = np.asarray(image.convert("RGB")), "RGB"
    if mode in ("RGB", "RGBA", "LA"):
        colour = pixels[..., :3] if mode != "LA" else pixels[..., :1]
        if np.any(colour != colour[..., :1]):
            raise InputDataError(path, f"has distinct colour channels ({mode}): not a grayscale radiograph")
        pixels, mode = colour[..., 0], "L"
    if mode == "I" and pixels.size and 0 <= pixels.min() and pixels.max() <= FULL_SCALE["I;16"]:
        mode = "I;16"
    if mode not in FULL_SCALE or pixels.ndim != 2:
        raise InputDataError(path, f"pixel format {mode} {pixels.shape} is not a grayscale radiograph")
    height, width = pixels.shape
    if min(height, width) < min_side_px or max(height, width) > max_aspect * min(height, width):
        raise InputDataError(
            path,
            f"is {width} x {height} pixels: not a radiograph (short side >= {min_side_px}, "
            f"sides within a ratio of {max_aspect})",
        )
    return (pixels.astype(np.float64) / FULL_SCALE[mode]).astype(np.float32)


def square(pixels: np.ndarray, size: int, resample: Image.Resampling) -> np.ndarray:
    """Short side scaled to ``size``, long side centre-cropped: a (size, size) array."""
    height, width = pixels.shape
    factor = size / min(width, height)
    new_w, new_h = max(size, round(width * factor)), max(size, round(height * factor))
    if pixels.dtype == np.uint8:
        scaled = np.asarray(Image.fromarray(pixels, mode="L").resize((new_w, new_h), resample))
    else:
        scaled = np.asarray(
            Image.fromarray(pixels.astype(np.float32), mode="F").resize((new_w, new_h), resample)
        )
    top, left = (new_h - size) // 2, (new_w - size) // 2
    return scaled[top : top + size, left : left + size]


def label_value(text: str, policy: str) -> int | None:
    """CheXpert's label text as 0 / 1 under the uncertain-label policy (None: the image is dropped).

    1.0 -> 1; 0.0 and blank (not mentioned) -> 0; -1.0 -> ignore: None, zeros: 0, ones: 1.
    """
    if policy not in UNCERTAIN_POLICIES:
        raise ConfigError(
            f"preprocess.chexpert.uncertain_policy: {policy!r} is not one of {UNCERTAIN_POLICIES}"
        )
    value = text.strip()
    if value in ("", "nan"):
        return 0
    number = float(value)
    if number == 1.0:
        return 1
    if number == 0.0:
        return 0
    if number == -1.0:
        return {"ignore": None, "zeros": 0, "ones": 1}[policy]
    raise ValueError(f"label {text!r} is none of 1.0, 0.0, -1.0, blank")


def find_root(raw_dir: Path) -> Path:
    """The folder holding CheXpert's train.csv / valid.csv (CheXpert-v1.0-small or the raw folder)."""
    for candidate in (raw_dir / "CheXpert-v1.0-small", raw_dir):
        if any((candidate / name).is_file() for name in CSV_NAMES):
            return candidate
    found = sorted(p.parent for p in raw_dir.rglob("train.csv"))
    if not found:
        raise InputDataError(raw_dir, "no CheXpert train.csv / valid.csv under it")
    return found[0]


def read_rows(root: Path, label_column: str, policy: str) -> list[tuple[Path, int, dict[str, str]]]:
    """Frontal rows of the CSVs as (table, line, row) with the row's label under ``policy`` in
    ``row['_label']``; dropped (uncertain, ignore) rows left out."""
    kept = []
    for name in CSV_NAMES:
        table = root / name
        if not table.is_file():
            continue
        with open(table, newline="") as handle:
            reader = csv.DictReader(handle)
            missing = {"Path", VIEW_COLUMN, label_column} - set(reader.fieldnames or [])
            if missing:
                raise InputDataError(table, f"missing columns {sorted(missing)} (is it CheXpert's {name}?)")
            for line, row in enumerate(reader, start=2):
                if row[VIEW_COLUMN] != "Frontal":
                    continue
                try:
                    label = label_value(row[label_column], policy)
                except ValueError as exc:
                    raise InputDataError(table, f"line {line}, {label_column}: {exc}") from exc
                if label is not None:
                    kept.append((table, line, {**row, "_label": label}))
    return kept


def _read_truth(raw_dir: Path) -> dict[str, dict[str, str]]:
    table = raw_dir / TRUTH_FOLDER / "truth.csv"
    if not table.is_file():
        return {}
    with open(table, newline="") as handle:
        return {row["Path"]: row for row in csv.DictReader(handle)}


def _read_map(path: Path, shape: tuple[int, int], size: int) -> np.ndarray:
    if not path.is_file():
        raise InputDataError(path, "truth label map not found")
    with Image.open(path) as image:
        pixels = np.asarray(image)
    if pixels.shape != shape:
        raise InputDataError(path, f"label map is {pixels.shape}, its image {shape}")
    return square(pixels.astype(np.uint8), size, Image.Resampling.NEAREST).astype(np.uint8)


def _read_film(
    root: Path, raw_dir: Path, table: Path, line: int, row: dict[str, str], truth: dict, settings: dict
) -> _Film:
    parts = PurePosixPath(row["Path"]).parts
    path = root.joinpath(*parts[1:])
    if not path.is_file():
        raise InputDataError(path, f"is listed in {table} (line {line}) but missing")
    pixels = read_radiograph(path, settings["min_side_px"], settings["max_aspect"])
    image = np.clip(square(pixels, settings["size"], Image.Resampling.BICUBIC), 0, 1).astype(np.float32)
    ctr, label_map = math.nan, None
    if truth:
        if row["Path"] not in truth:
            raise InputDataError(raw_dir / TRUTH_FOLDER / "truth.csv", f"has no row for {row['Path']}")
        record = truth[row["Path"]]
        ctr = float(record["ctr"])
        label_map = _read_map(raw_dir / TRUTH_FOLDER / record["label_map"], pixels.shape, settings["size"])
    image_id = "_".join([*parts[1:-1], PurePosixPath(parts[-1]).stem])
    return _Film(image_id, parts[2], path, int(row["_label"]), image, ctr, label_map)


def _ladder(raw_dir: Path, size: int, settings: dict) -> dict[str, np.ndarray]:
    """ctr_ladder.npz's arrays from phantom_truth/ladder.csv (P = 0 without one)."""
    table = raw_dir / TRUTH_FOLDER / "ladder.csv"
    rows = []
    if table.is_file():
        with open(table, newline="") as handle:
            rows = list(csv.DictReader(handle))
    by_patient: dict[str, list[dict[str, str]]] = {}
    for row in rows:
        by_patient.setdefault(row["patient"], []).append(row)
    lengths = {len(rungs) for rungs in by_patient.values()}
    if len(lengths) > 1:
        raise InputDataError(table, f"patients have different numbers of renders {sorted(lengths)}")
    images, ctrs, maps, bases = [], [], [], []
    for patient, rungs in by_patient.items():
        rungs.sort(key=lambda r: int(r["index"]))
        pixels = [
            read_radiograph(
                raw_dir / TRUTH_FOLDER / r["image"], settings["min_side_px"], settings["max_aspect"]
            )
            for r in rungs
        ]
        images.append([np.clip(square(p, size, Image.Resampling.BICUBIC), 0, 1) for p in pixels])
        maps.append(
            [_read_map(raw_dir / TRUTH_FOLDER / r["label_map"], p.shape, size) for r, p in zip(rungs, pixels)]
        )
        ctrs.append([float(r["ctr"]) for r in rungs])
        base = [i for i, r in enumerate(rungs) if r["base"] == "1"]
        if len(base) != 1:
            raise InputDataError(table, f"patient {patient}: needs exactly one base render, has {len(base)}")
        bases.append(base[0])
    k = lengths.pop() if lengths else 0
    return {
        "images": np.asarray(images, np.float32).reshape(len(images), k, size, size),
        "ctr": np.asarray(ctrs, np.float32).reshape(len(images), k),
        "label_maps": np.asarray(maps, np.uint8).reshape(len(images), k, size, size),
        "subject_ids": np.array(list(by_patient), dtype=str),
        "base_index": np.asarray(bases, np.int64),
    }


def prepare_chexpert(
    raw_dir: str | Path,
    out_dir: str | Path,
    size: int = 64,
    label_column: str = "Cardiomegaly",
    uncertain_policy: str = "ignore",
    val_fraction: float = 0.15,
    test_fraction: float = 0.25,
    seed: int = 0,
    min_side_px: int = 32,
    max_aspect: float = 3.0,
    contact_sheet_tiles: int = 25,
) -> dict[str, int]:
    """Write the split files, ctr_ladder.npz, the manifest and the contact sheet; returns images per split.

    raw_dir: a CheXpert-layout raw folder (data/raw/cxr_cardiomegaly). size: side of the stored
    squares. label_column / uncertain_policy: the label and how -1 is read (module docstring).
    val_fraction / test_fraction / seed: the patient split. min_side_px / max_aspect: what
    counts as a radiograph. contact_sheet_tiles: images shown in the contact sheet.
    """
    if size < 8:
        raise ConfigError(f"preprocess.chexpert.size: must be >= 8, got {size}")
    if uncertain_policy not in UNCERTAIN_POLICIES:
        raise ConfigError(
            f"preprocess.chexpert.uncertain_policy: {uncertain_policy!r} is not one of {UNCERTAIN_POLICIES}"
        )
    check_split_fractions("preprocess.chexpert", val_fraction, test_fraction)
    raw_dir, out_dir = Path(raw_dir), Path(out_dir)
    root = find_root(raw_dir)
    rows = read_rows(root, label_column, uncertain_policy)
    if not rows:
        raise InputDataError(
            root, f"no frontal image with a usable {label_column} label (policy {uncertain_policy})"
        )
    truth = _read_truth(raw_dir)
    settings = {"size": size, "min_side_px": min_side_px, "max_aspect": max_aspect}
    films = [
        _read_film(root, raw_dir, *entry, truth, settings)
        for entry in progress(rows, "frontal images", unit="img")
    ]
    films.sort(key=lambda f: (f.patient, f.image_id))
    by_patient = number_within_patient(films)
    ladder = _ladder(raw_dir, size, settings)
    assignment = split_subjects(
        sorted(by_patient), list(ladder["subject_ids"]), val_fraction, test_fraction, seed
    )
    counts = {}
    with_maps = all(f.label_map is not None for f in films)
    for split, members in assign_splits(films, assignment, lambda f: f.patient).items():
        arrays = {
            "images": np.stack([f.image for f in members])
            if members
            else np.zeros((0, size, size), np.float32),
            "labels": np.array([f.label for f in members], dtype=np.int64),
            "subject_ids": np.array([f.patient for f in members], dtype=str),
            "slice_index": np.array([f.slice_index for f in members], dtype=np.int64),
            "image_ids": np.array([f.image_id for f in members], dtype=str),
            "ctr": np.array([f.ctr for f in members], dtype=np.float32),
        }
        if with_maps:
            arrays["label_maps"] = (
                np.stack([f.label_map for f in members]) if members else np.zeros((0, size, size), np.uint8)
            )
        save_npz(out_dir / f"{split}.npz", arrays)
        counts[split] = len(members)
    save_npz(out_dir / "ctr_ladder.npz", ladder)

    with atomic_path(out_dir / "manifest.csv") as tmp, open(tmp, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(MANIFEST_COLUMNS)
        writer.writerows(
            (f.patient, f.split, f.slice_index, f.image_id, f.label, f"{f.ctr:.4f}", file_sha256(f.path))
            for f in films
        )
    _contact_sheet(
        films, out_dir / "contact_sheet.png", contact_sheet_tiles, f"{out_dir.name}: {label_column}"
    )
    _log.info(
        "%d patients, images per split %s, %d ladder patients x %d renders",
        len(by_patient), counts, *ladder["ctr"].shape,
    )  # fmt: skip
    return counts


def _contact_sheet(films: list[_Film], out_png: Path, n_tiles: int, title: str) -> None:
    from pipeline.figures import contact_sheet

    picks = np.unique(np.linspace(0, len(films) - 1, min(n_tiles, len(films))).round().astype(int))
    tiles = [
        (f"{films[i].patient}\n{films[i].split} y={films[i].label}", films[i].image, False) for i in picks
    ]
    contact_sheet(tiles, out_png, title)


def _parser() -> argparse.ArgumentParser:
    parser = stage_parser("pipeline.preprocess.chexpert_prep", __doc__)
    parser.add_argument(
        "--raw", dest="raw_dir", required=True, type=Path, help="e.g. data/raw/cxr_cardiomegaly"
    )
    parser.add_argument("--out-dir", dest="out_dir", required=True, type=Path)
    knobs = ["size", "label_column", "val_fraction", "test_fraction", "seed", "min_side_px", "max_aspect",
             "contact_sheet_tiles"]  # fmt: skip
    add_knob_options(parser, prepare_chexpert, knobs, {"uncertain_policy": {"choices": UNCERTAIN_POLICIES}})
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    run_stage_cli(_parser(), prepare_chexpert, argv)


if __name__ == "__main__":
    main()
