"""Slices stage for 2-D radiographs: one class of a raw image set -> train / val / test squares.

X-rays need none of the volume chain (windowing, registration, masking): each JPEG is read as
8-bit grayscale, its short side scaled to ``resize`` (bicubic, as torchvision's Resize in the
CycleGAN recipe) and its long side centre-cropped, so every stored image is a ``resize`` square.
Storing the whole short side (report 000: 283) rather than the final crop (256) leaves the
random 256 crop to the training engine at train time (``train.crop_size``), so every epoch sees
other crops; evaluation takes the centre crop. Only the long side loses its margins here, the
same for every epoch (report 000 crops randomly along it too).

Images are split by PATIENT (Kermany's names carry the patient: ``person12_bacteria_45``,
``IM-0115-0001``; ``patient_pattern``), so no patient's films straddle splits. Where the raw
folder has phantom truth (``truth/<image_id>_lungs.png``), test.npz also carries ``region_mask``:
the lung fields on the same squares, for the share of change inside vs outside them.

Outputs in ``out_dir``: ``train.npz``, ``val.npz``, ``test.npz`` (``images`` float32 (N, S, S) in
[0, 1], ``subject_ids`` = patient ids, ``slice_index`` = the film's number within its patient,
``image_ids``; test optionally ``region_mask`` bool (N, S, S)), ``manifest.csv`` and
``contact_sheet.png``.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import logging
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from pipeline.atomic import atomic_path
from pipeline.errors import ConfigError, InputDataError
from pipeline.hashing import file_sha256
from pipeline.preprocess import add_knob_options, run_stage_cli, stage_parser
from pipeline.preprocess.extract_slices import assign_splits, check_split_fractions, number_within_patient
from pipeline.preprocess.extract_slices import save_npz, split_subjects
from pipeline.progress import progress
from pipeline.sources.real_datasets import IMAGES_TSV

_log = logging.getLogger(__name__)

#: Kermany (``person12_bacteria_45``, ``IM-0115-0001``, ``NORMAL2-IM-0372-0001``) and CheXpert
#: (``patient00001_study1_view1_frontal``) patients, after an optional split prefix the raw layout
#: adds. The same person number in Kermany's train and test folders counts as one patient:
#: merging two patients only coarsens the split, splitting one would leak.
KERMANY_PATIENT_PATTERN = r"^(?:(?:train|val|test)_)?(?P<patient>person\d+|(?:NORMAL2-)?IM-\d+|patient\d+)"
MANIFEST_COLUMNS = ("subject_id", "split", "slice_index", "image_id", "sha256")


@dataclass
class _Film:
    image_id: str
    patient: str
    path: Path
    image: np.ndarray
    mask: np.ndarray | None
    slice_index: int = 0
    split: str = ""


def patient_of(image_id: str, pattern: str = KERMANY_PATIENT_PATTERN) -> str:
    """The patient an image belongs to: ``pattern``'s ``patient`` group, else the image itself."""
    match = re.match(pattern, image_id)
    return match.group("patient") if match else image_id


@contextlib.contextmanager
def decoded_image(path: str | Path) -> Iterator[Image.Image]:
    """An image file, fully decoded; a missing, corrupt or truncated file (also found while the
    block reads its pixels) is an InputDataError naming it."""
    path = Path(path)
    if not path.is_file():
        raise InputDataError(path, "image file not found")
    try:
        with Image.open(path) as image:
            image.load()
            yield image
    except (OSError, SyntaxError, ValueError) as exc:  # PIL's errors for unreadable / truncated files
        raise InputDataError(path, f"not a readable image ({exc})") from exc


def read_grayscale(path: str | Path) -> Image.Image:
    """Decode an image file fully as 8-bit grayscale; a corrupt or truncated file is an input error."""
    with decoded_image(path) as image:
        if image.mode in ("I;16", "I;16B", "I"):
            values = np.asarray(image, dtype=np.float64)
            return Image.fromarray(np.round(255 * values / max(values.max(), 1)).astype(np.uint8), mode="L")
        return image.convert("L")


def square(image: Image.Image, resize: int, resample: Image.Resampling) -> np.ndarray:
    """Short side scaled to ``resize``, long side centre-cropped: a (resize, resize) uint8 array."""
    width, height = image.size
    factor = resize / min(width, height)
    new_w, new_h = max(resize, round(width * factor)), max(resize, round(height * factor))
    scaled = np.asarray(image.resize((new_w, new_h), resample))
    top, left = (new_h - resize) // 2, (new_w - resize) // 2
    return scaled[top : top + resize, left : left + resize]


def _read_index(raw_dir: Path) -> list[dict[str, str]]:
    index = raw_dir / IMAGES_TSV
    if not index.is_file():
        raise InputDataError(index, "missing: the raw folder of a 2-D image set needs images.tsv")
    with open(index, newline="") as handle:
        rows = list(csv.DictReader(handle, delimiter="\t"))
    if rows and not {"image_id", "label", "path"} <= set(rows[0]):
        raise InputDataError(index, f"needs columns image_id, label, path; has {sorted(rows[0])}")
    return rows


def _read_film(raw_dir: Path, row: dict[str, str], resize: int, pattern: str) -> _Film:
    path = raw_dir / row["path"]
    image = read_grayscale(path)
    pixels = square(image, resize, Image.Resampling.BICUBIC).astype(np.float32) / 255.0
    mask = None
    truth = raw_dir / "truth" / f"{row['image_id']}_lungs.png"
    if truth.is_file():
        mask_image = read_grayscale(truth)
        if mask_image.size != image.size:
            raise InputDataError(truth, f"mask is {mask_image.size}, its image {path} is {image.size}")
        mask = square(mask_image, resize, Image.Resampling.BILINEAR) > 127
    return _Film(row["image_id"], patient_of(row["image_id"], pattern), path, pixels, mask)


def _contact_sheet(films: list[_Film], out_png: Path, n_tiles: int, title: str) -> None:
    from pipeline.figures import contact_sheet

    picks = np.unique(np.linspace(0, len(films) - 1, min(n_tiles, len(films))).round().astype(int))
    contact_sheet(
        [(f"{films[i].patient}\n{films[i].split}", films[i].image, False) for i in picks], out_png, title
    )


def prepare_xray(
    raw_dir: str | Path,
    label: str,
    out_dir: str | Path,
    resize: int = 283,
    val_fraction: float = 0.15,
    test_fraction: float = 0.2,
    seed: int = 0,
    patient_pattern: str = KERMANY_PATIENT_PATTERN,
    contact_sheet_tiles: int = 25,
) -> dict[str, int]:
    """Write the split files, the manifest and the contact sheet of one class; returns images per split.

    raw_dir: a raw 2-D image set (``images.tsv`` + ``<label>/<image>``, as the download stage writes).
    label: the class to take (e.g. NORMAL or PNEUMONIA; case-insensitive).
    resize: side of the stored squares (short side scaled to it, long side centre-cropped).
    val_fraction / test_fraction: share of the patients in val / test; seed drives the split.
    patient_pattern: regex whose ``patient`` group names an image's patient (no match: the image
        is its own patient). contact_sheet_tiles: images shown in the contact sheet.
    """
    if resize < 8:
        raise ConfigError(f"preprocess.xray.resize: must be >= 8, got {resize}")
    check_split_fractions("preprocess.xray", val_fraction, test_fraction)
    try:
        if "patient" not in re.compile(patient_pattern).groupindex:
            raise ConfigError(
                f"preprocess.xray.patient_pattern: needs a (?P<patient>...) group: {patient_pattern!r}"
            )
    except re.error as exc:
        raise ConfigError(f"preprocess.xray.patient_pattern: not a regular expression ({exc})") from exc
    raw_dir, out_dir = Path(raw_dir), Path(out_dir)
    rows = [row for row in _read_index(raw_dir) if row["label"].lower() == label.lower()]
    if not rows:
        raise InputDataError(raw_dir / IMAGES_TSV, f"has no image labelled {label!r}")
    rows.sort(key=lambda row: (patient_of(row["image_id"], patient_pattern), row["image_id"]))
    films = [
        _read_film(raw_dir, row, resize, patient_pattern)
        for row in progress(rows, f"{label} images", unit="img")
    ]

    by_patient = number_within_patient(films)
    assignment = split_subjects(sorted(by_patient), [], val_fraction, test_fraction, seed)

    counts = {}
    for split, members in assign_splits(films, assignment, lambda f: f.patient).items():
        arrays = {
            "images": np.stack([f.image for f in members])
            if members
            else np.zeros((0, resize, resize), np.float32),
            "subject_ids": np.array([f.patient for f in members], dtype=str),
            "slice_index": np.array([f.slice_index for f in members], dtype=np.int64),
            "image_ids": np.array([f.image_id for f in members], dtype=str),
        }
        if split == "test" and members:
            with_mask = sum(f.mask is not None for f in members)
            if with_mask == len(members):
                arrays["region_mask"] = np.stack([f.mask for f in members])
            elif with_mask:
                _log.warning(
                    "%d of %d test images have lung masks: region_mask left out", with_mask, len(members)
                )
        save_npz(out_dir / f"{split}.npz", arrays)
        counts[split] = len(members)

    with atomic_path(out_dir / "manifest.csv") as tmp, open(tmp, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(MANIFEST_COLUMNS)
        writer.writerows((f.patient, f.split, f.slice_index, f.image_id, file_sha256(f.path)) for f in films)
    _contact_sheet(films, out_dir / "contact_sheet.png", contact_sheet_tiles, f"{out_dir.name}: {label}")
    _log.info("%s: %d patients, images per split %s", label, len(by_patient), counts)
    return counts


def _parser() -> argparse.ArgumentParser:
    parser = stage_parser("pipeline.preprocess.xray", __doc__)
    parser.add_argument(
        "--raw", dest="raw_dir", required=True, type=Path, help="raw image set, e.g. data/raw/chest_xray"
    )
    parser.add_argument("--label", required=True, help="class to take, e.g. NORMAL")
    parser.add_argument("--out-dir", dest="out_dir", required=True, type=Path)
    knobs = ["resize", "val_fraction", "test_fraction", "seed", "patient_pattern", "contact_sheet_tiles"]
    add_knob_options(parser, prepare_xray, knobs)
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    run_stage_cli(_parser(), prepare_xray, argv)


if __name__ == "__main__":
    main()
