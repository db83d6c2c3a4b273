"""Slices stage for 2-D labelled head CT (one slice per DICOM file, RSNA 2019 layout) -> train / val / test.

Input: a raw folder in the RSNA layout, as the download stage writes it for ``rsna_ich``,
``local`` with layout ``rsna_ich`` and the built-in ``phantom_rsna_ich``: ``stage_2_train.csv``
and ``stage_2_train/<image id>.dcm``. Every image the CSV names must have its file and six
labels (pipeline.sources.rsna_labels reads RSNA's naming rule strictly), and every file must be
labelled; anything else is an error naming the file, and nothing is written.

Each slice, as report 002 and the volume stages do it where they agree:

* HU through the modality LUT with RSNA's 12-bit wrap undone (pipeline.preprocess.window);
* padded to a square with its own minimum (air) when it is not one, resized to ``size``
  (linear, anti-aliased: HU are resampled before windowing, as in window.py);
* windowed, brain window 40 / 80 HU by default (``window_center`` / ``window_width``), to [0, 1].
  The engine maps [0, 1] to [-1, 1], which is the report's normalisation (mean 0.5, std 0.5).

Deviation from report 002: the report rescaled each file's stored values 0-2550 to 0-255 with
no HU and no window (stored values are HU + 1024 for most files, so that is a window of centre
251 HU, width 2550 HU, which makes brain, blood and CSF nearly one grey, and it is wrong for the
files with RSNA's 12-bit quirk). A brain window shows blood (50-90 HU) against brain (20-45 HU),
which is what a haemorrhage generator must learn. The report's mapping is available as
``window_center: 251, window_width: 2550`` for a comparison.

Slices group by patient through the DICOM PatientID and order along z by ImagePositionPatient
(``slice_index`` counts a patient's slices from the bottom). Where de-identification removed the
PatientID (empty, or dicom-anonymizer's "ANONYMIZED"), slices group by StudyInstanceUID instead,
with a warning: exact for the phantom (one study per patient), but two studies of one real
patient could then straddle splits. Splits are drawn by patient
(pipeline.preprocess.extract_slices.split_subjects: seeded fractions), never by slice, so no
patient's anatomy is seen in training and test; patients with and without any haemorrhage are
split separately with the same fractions, so val and test get bleeding patients whenever the set
has a few (with ~14 % positive slices a plain draw often leaves a split with none).
Pseudonymous PatientIDs (RSNA's ``ID_<hex>``, the download's ``sub-<12 hex>``) are kept; any
other key (a de-identified UID) is written as ``sub-`` and 12 hex digits of its SHA-256
(``_subject_ids``).

Outputs in ``out_dir`` (written beside it and swapped in whole): ``{train,val,test}.npz`` with
``images`` float32 (N, size, size) in [0, 1], ``subject_ids`` str, ``slice_index`` int64,
``labels`` int64 (0 healthy, 1 any haemorrhage = RSNA's ``any``), ``subtypes`` uint8 (N, 6) in
RSNA's order (epidural, intraparenchymal, intraventricular, subarachnoid, subdural, any) and
``image_ids`` str; ``manifest.csv`` (one row per slice, with the file's SHA-256) and
``contact_sheet.png``.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from skimage.transform import resize

from pipeline.atomic import atomic_dir
from pipeline.errors import ConfigError, InputDataError
from pipeline.hashing import file_sha256
from pipeline.preprocess import add_knob_options, run_stage_cli, stage_parser
from pipeline.preprocess.extract_slices import assign_splits, check_split_fractions, number_within_patient
from pipeline.preprocess.extract_slices import SPLITS, save_npz, split_subjects
from pipeline.preprocess.window import read_slice_hu, values_kept_out_of_logs, window_hu
from pipeline.privacy import PSEUDONYM_HEX_DIGITS, PSEUDONYM_PREFIX
from pipeline.progress import progress
from pipeline.sources.rsna_ich import RSNA_IMAGE_FOLDER, RSNA_LABELS
from pipeline.sources.rsna_labels import IMAGE_ID, RSNA_COLUMNS, SUBTYPES, read_subtype_labels

_log = logging.getLogger(__name__)

MANIFEST_COLUMNS = ("subject_id", "split", "slice_index", "image_id", "label", *RSNA_COLUMNS[:-1], "sha256")
SHORT_SUBTYPE = {"epidural": "EDH", "intraparenchymal": "IPH", "intraventricular": "IVH",
                 "subarachnoid": "SAH", "subdural": "SDH"}  # fmt: skip
MIN_SIZE = 8
#: PatientID values that mean "removed": empty, or the dummy dicom-anonymizer writes.
BLANKED_PATIENT_IDS = ("", "ANONYMIZED")
PSEUDONYM = re.compile(rf"{PSEUDONYM_PREFIX}[0-9a-f]{{{PSEUDONYM_HEX_DIGITS}}}")


@dataclass
class _Slice:
    image_id: str
    path: Path
    patient: str
    study: str
    z_mm: float
    image: np.ndarray
    subtypes: np.ndarray
    slice_index: int = 0
    split: str = ""


def square_resize(hu: np.ndarray, size: int) -> np.ndarray:
    """Pad a (rows, columns) HU image to a centred square with its minimum, then resize to ``size``."""
    rows, columns = hu.shape
    side = max(rows, columns)
    padded = np.full((side, side), float(hu.min()), dtype=np.float32)
    top, left = (side - rows) // 2, (side - columns) // 2
    padded[top : top + rows, left : left + columns] = hu
    if side == size:
        return padded
    return resize(padded, (size, size), order=1, anti_aliasing=side > size, preserve_range=True).astype(np.float32)


def _patient_key(ds, path: Path) -> tuple[str, bool]:
    """The slice's patient: its PatientID, or its StudyInstanceUID when de-identification left
    no PatientID (empty or the anonymiser's dummy); the flag says which."""
    patient = str(ds.get("PatientID", "") or "").strip()
    if patient.upper() not in BLANKED_PATIENT_IDS:
        return patient, True
    study = str(ds.get("StudyInstanceUID", "") or "").strip()
    if not study:
        raise InputDataError(path, "no PatientID and no StudyInstanceUID: the slice cannot be grouped by patient")
    return study, False


def _z_of(ds, path: Path) -> float:
    position = ds.get("ImagePositionPatient")
    try:
        return float(position[2])
    except (TypeError, ValueError, IndexError):
        raise InputDataError(path, "no usable ImagePositionPatient: the slice cannot be ordered along z") from None


def _subject_ids(keys: Sequence[str]) -> dict[str, str]:
    """Pseudonyms as they are (RSNA's ``ID_<hex>``, the download's ``sub-<12 hex>``); any other
    key (a de-identified UID) as ``sub-`` + 12 hex digits of its SHA-256: short, and the same on
    every machine. Not a secret: data/raw holds de-identified headers only
    (pipeline.sources.deidentify)."""
    return {
        key: key if IMAGE_ID.fullmatch(key) or PSEUDONYM.fullmatch(key)
        else PSEUDONYM_PREFIX + hashlib.sha256(key.encode()).hexdigest()[:PSEUDONYM_HEX_DIGITS]
        for key in keys
    }


def _find_images(raw_dir: Path, labels: dict[str, np.ndarray]) -> dict[str, Path]:
    labels_file = raw_dir / RSNA_LABELS
    folder = raw_dir / RSNA_IMAGE_FOLDER
    if not folder.is_dir():
        raise InputDataError(folder, f"missing: the RSNA layout keeps its slices in {RSNA_IMAGE_FOLDER}/")
    on_disk = {p.stem: p for p in folder.glob("*.dcm")}
    missing = sorted(set(labels) - set(on_disk))
    if missing:
        raise InputDataError(
            labels_file,
            f"names {len(missing)} image(s) with no file in {RSNA_IMAGE_FOLDER}/, e.g. {missing[0]}.dcm",
        )
    unlabelled = sorted(set(on_disk) - set(labels))
    if unlabelled:
        raise InputDataError(on_disk[unlabelled[0]], f"has no labels in {labels_file} ({len(unlabelled)} such files)")
    return {image_id: on_disk[image_id] for image_id in sorted(labels)}


def _contact_sheet(slices: list[_Slice], out_png: Path, n_tiles: int, title: str) -> None:
    from pipeline.figures import contact_sheet

    positive = [s for s in slices if s.subtypes[-1]]
    healthy = [s for s in slices if not s.subtypes[-1]]
    half = n_tiles // 2
    chosen = positive[:: max(1, len(positive) // max(half, 1))][:half]
    chosen += healthy[:: max(1, len(healthy) // max(n_tiles - len(chosen), 1))][: n_tiles - len(chosen)]

    def caption(s: _Slice) -> str:
        kinds = "+".join(SHORT_SUBTYPE[t] for t, v in zip(SUBTYPES, s.subtypes) if v) or "healthy"
        return f"{s.patient[:11]} z{s.slice_index}\n{s.split} {kinds}"

    contact_sheet([(caption(s), s.image, bool(s.subtypes[-1])) for s in chosen], out_png, title)


def prepare_ct_slices(
    raw_dir: str | Path,
    out_dir: str | Path,
    size: int = 64,
    window_center: float = 40.0,
    window_width: float = 80.0,
    val_fraction: float = 0.15,
    test_fraction: float = 0.2,
    seed: int = 0,
    contact_sheet_tiles: int = 24,
) -> dict[str, int]:
    """Write the split files, the manifest and the contact sheet; return slices per split.

    raw_dir: a raw folder in the RSNA layout (see the module docstring).
    size: side of the stored squares (report 002: 128).
    window_center / window_width: the VOI window in HU (default: brain 40 / 80).
    val_fraction / test_fraction: share of the PATIENTS in val / test; seed drives the split.
    contact_sheet_tiles: slices shown in the contact sheet (half with haemorrhage where there are).
    """
    if size < MIN_SIZE:
        raise ConfigError(f"preprocess.ct_slices.size: must be >= {MIN_SIZE}, got {size}")
    check_split_fractions("preprocess.ct_slices", val_fraction, test_fraction)
    window_hu(np.zeros(1), window_center, window_width)  # checks the window before any file is read
    raw_dir, out_dir = Path(raw_dir), Path(out_dir)
    labels = read_subtype_labels(raw_dir / RSNA_LABELS)
    files = _find_images(raw_dir, labels)
    slices, grouped_by_study = [], 0
    for image_id, path in progress(list(files.items()), "CT slices", unit="slice"):
        ds, hu = read_slice_hu(path)
        with values_kept_out_of_logs():
            patient, by_patient_id = _patient_key(ds, path)
            study, z_mm = str(ds.get("StudyInstanceUID", "")), _z_of(ds, path)
        grouped_by_study += not by_patient_id
        image = window_hu(square_resize(hu, size), window_center, window_width)
        slices.append(_Slice(image_id, path, patient, study, z_mm, image, labels[image_id]))
    if grouped_by_study:
        _log.warning(
            "%d of %d slices have no PatientID (removed by de-identification?): they are grouped by "
            "StudyInstanceUID, so two studies of one patient could fall into different splits; keep "
            "PatientID as a pseudonym to split by patient",
            grouped_by_study, len(slices),
        )  # fmt: skip
    subject_of = _subject_ids(sorted({s.patient for s in slices}))
    for s in slices:
        s.patient = subject_of[s.patient]
    slices.sort(key=lambda s: (s.patient, s.study, s.z_mm, s.image_id))
    by_patient = number_within_patient(slices)
    bleeding = {s.patient for s in slices if s.subtypes[-1]}
    assignment = {
        **split_subjects(sorted(bleeding), [], val_fraction, test_fraction, seed),
        **split_subjects(sorted(set(by_patient) - bleeding), [], val_fraction, test_fraction, seed),
    }
    counts = {}
    with atomic_dir(out_dir) as tmp:
        for split, members in assign_splits(slices, assignment, lambda s: s.patient).items():
            subtypes = np.stack([s.subtypes for s in members]) if members else np.zeros((0, len(RSNA_COLUMNS)), np.uint8)
            save_npz(
                tmp / f"{split}.npz",
                {
                    "images": np.stack([s.image for s in members]) if members else np.zeros((0, size, size), np.float32),
                    "subject_ids": np.array([s.patient for s in members], dtype=str),
                    "slice_index": np.array([s.slice_index for s in members], dtype=np.int64),
                    "labels": subtypes[:, -1].astype(np.int64),
                    "subtypes": subtypes.astype(np.uint8),
                    "image_ids": np.array([s.image_id for s in members], dtype=str),
                },
            )
            counts[split] = len(members)
        with open(tmp / "manifest.csv", "w", newline="") as handle:
            writer = csv.writer(handle, lineterminator="\n")
            writer.writerow(MANIFEST_COLUMNS)
            writer.writerows(
                (s.patient, s.split, s.slice_index, s.image_id, int(s.subtypes[-1]), *map(int, s.subtypes[:-1]),
                 file_sha256(s.path))  # fmt: skip
                for s in slices
            )
        _contact_sheet(slices, tmp / "contact_sheet.png", contact_sheet_tiles,
                       f"{out_dir.name}: window {window_center:g}/{window_width:g} HU, red = haemorrhage")  # fmt: skip
    positive = {split: int(sum(s.subtypes[-1] for s in slices if s.split == split)) for split in SPLITS}
    _log.info("%d patients; slices per split %s, with haemorrhage %s", len(by_patient), counts, positive)
    return counts


def _parser() -> argparse.ArgumentParser:
    parser = stage_parser("pipeline.preprocess.ct_slices", __doc__)
    parser.add_argument("--raw", dest="raw_dir", required=True, type=Path, help="e.g. data/raw/ct_haemorrhage")
    parser.add_argument("--out-dir", dest="out_dir", required=True, type=Path)
    knobs = ["size", "window_center", "window_width", "val_fraction", "test_fraction", "seed",
             "contact_sheet_tiles"]  # fmt: skip
    add_knob_options(parser, prepare_ct_slices, knobs)
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    run_stage_cli(_parser(), prepare_ct_slices, argv)


if __name__ == "__main__":
    main()
