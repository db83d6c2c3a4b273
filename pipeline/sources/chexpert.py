"""CheXpert (Stanford AIMI) chest X-rays: registration-gated, so only a local copy is ingested.

The user downloads CheXpert-v1.0-small.zip (or the full-resolution set) after registering and
points ``local_path`` at the zip or its extracted folder. Two ways in:

* :func:`ingest_chexpert` sorts images into two classes for the 2-D translation experiments:
  ``label_column`` positive (1.0) -> that finding, "No Finding" positive -> NORMAL; uncertain
  (-1.0) and blank labels are left out.
* :func:`ingest_chexpert_layout` keeps CheXpert's own layout (``CheXpert-v1.0-small/`` with
  ``train.csv``, ``valid.csv`` and ``{train,valid}/patientNNNNN/studyN/viewN_<view>.jpg``) for
  experiments that read CheXpert's labels themselves (dataset ``cxr_cardiomegaly``; the
  built-in phantom_chexpert writes the same layout). Every listed image must exist; the CSVs are
  copied as they are (CheXpert's patient ids are already pseudonyms; Sex and Age are not
  identifying), and the images go through de-identification like every source.
"""

from __future__ import annotations

import csv
import shutil
from pathlib import Path, PurePosixPath

from pipeline.errors import ConfigError, InputDataError
from pipeline.sources.archives import is_junk
from pipeline.sources.real_datasets import (
    ImageEntry,
    build_image_folders,
    choose_subset,
    opened_source,
    safe_id,
    unique_entries,
)

CHEXPERT_CSVS = {"train.csv": "train", "valid.csv": "val"}
#: The folder name CheXpert's CSV paths start with (the small, 8-bit JPEG release).
CHEXPERT_ROOT = "CheXpert-v1.0-small"
NO_FINDING = "No Finding"
NORMAL_LABEL = "NORMAL"
VIEW_COLUMN = "Frontal/Lateral"


def ingest_chexpert(
    source: Path,
    out: Path,
    *,
    label_column: str = "Pneumonia",
    frontal_only: bool = True,
    n_subjects: int | None = None,
    seed: int = 0,
) -> None:
    """Lay out CheXpert images from ``source`` (the zip or its folder) in ``out``.

    label_column: the finding that makes the positive class (a CheXpert CSV column).
    frontal_only: keep frontal views only (lateral views look nothing alike).
    n_subjects: images to keep, drawn with ``seed``; None keeps all.
    """
    with opened_source(source, out) as (folder, movable):
        entries = find_chexpert(folder, label_column=label_column, frontal_only=frontal_only)
        images = unique_entries(source, entries)
        if not images:
            raise InputDataError(
                source, f"no frontal={frontal_only} image is positive for {label_column!r} or {NO_FINDING!r}"
            )
        build_image_folders(out, [images[i] for i in choose_subset(images, n_subjects, seed)], move=movable)


def find_chexpert(folder: Path, *, label_column: str, frontal_only: bool) -> list[ImageEntry]:
    """Labelled images listed in CheXpert's train.csv / valid.csv under ``folder``."""
    tables = [
        p
        for p in sorted(folder.rglob("*.csv"))
        if p.name in CHEXPERT_CSVS and not is_junk(p.relative_to(folder))
    ]
    if not tables:
        raise InputDataError(folder, "no CheXpert train.csv / valid.csv in it")
    entries = []
    for table in tables:
        split = CHEXPERT_CSVS[table.name]
        with open(table, newline="") as fh:
            reader = csv.DictReader(fh)
            columns = set(reader.fieldnames or [])
            missing = {"Path", VIEW_COLUMN, NO_FINDING} - columns
            if missing:
                raise InputDataError(
                    table, f"missing columns {sorted(missing)} (is it CheXpert's {table.name}?)"
                )
            if label_column not in columns:
                raise ConfigError(
                    f"chexpert label_column {label_column!r} is not a column of {table.name}: "
                    f"{reader.fieldnames}"
                )
            for number, row in enumerate(reader, start=2):
                if frontal_only and row[VIEW_COLUMN] != "Frontal":
                    continue
                label = _label(row, label_column)
                if label is None:
                    continue
                # Path starts with the dataset's own folder name (CheXpert-v1.0-small/...): drop it.
                parts = PurePosixPath(row["Path"]).parts[1:]
                image = table.parent.joinpath(*parts)
                if not image.is_file():
                    raise InputDataError(table, f"line {number}: image {row['Path']} is missing")
                image_id = safe_id("_".join([split, *parts[1:-1], PurePosixPath(parts[-1]).stem]))
                entries.append(ImageEntry(image_id=image_id, label=label, split=split, source=image))
    return entries


def _label(row: dict[str, str], label_column: str) -> str | None:
    if _positive(row[label_column]):
        return safe_id(label_column).upper()
    if _positive(row[NO_FINDING]):
        return NORMAL_LABEL
    return None


def _positive(value: str) -> bool:
    return value.strip() not in ("", "nan") and float(value) == 1.0


def ingest_chexpert_layout(source: Path, out: Path, *, n_subjects: int | None = None, seed: int = 0) -> None:
    """Copy CheXpert from ``source`` (zip or folder) into ``out/CheXpert-v1.0-small`` as it is.

    n_subjects: PATIENTS to keep (all their studies), drawn with ``seed``; None keeps all. The
    CSVs are rewritten with only the kept rows. A row whose image is missing is an error naming
    the CSV, its line and the path.
    """
    with opened_source(source, out) as (folder, movable):
        tables = [
            p
            for p in sorted(folder.rglob("*.csv"))
            if p.name in CHEXPERT_CSVS and not is_junk(p.relative_to(folder))
        ]
        if not tables:
            raise InputDataError(folder, "no CheXpert train.csv / valid.csv in it")
        listed: dict[Path, tuple[list[str], list[dict[str, str]]]] = {}
        for table in tables:
            with open(table, newline="") as fh:
                reader = csv.DictReader(fh)
                columns = list(reader.fieldnames or [])
                missing = {"Path", VIEW_COLUMN} - set(columns)
                if missing:
                    raise InputDataError(table, f"missing columns {sorted(missing)} (is it CheXpert's {table.name}?)")
                rows = list(reader)
            for number, row in enumerate(rows, start=2):
                image = table.parent.joinpath(*PurePosixPath(row["Path"]).parts[1:])
                if not image.is_file():
                    raise InputDataError(table, f"line {number}: image {row['Path']} is missing")
            listed[table] = (columns, rows)
        patients = sorted({_patient(row["Path"]) for _, rows in listed.values() for row in rows})
        keep = set(choose_subset(patients, n_subjects, seed))
        target = out / CHEXPERT_ROOT
        for table, (columns, rows) in listed.items():
            kept = [row for row in rows if _patient(row["Path"]) in keep]
            target.mkdir(parents=True, exist_ok=True)
            with open(target / table.name, "w", newline="") as fh:
                writer = csv.DictWriter(fh, columns, lineterminator="\n")
                writer.writeheader()
                writer.writerows(kept)
            for row in kept:
                parts = PurePosixPath(row["Path"]).parts[1:]
                destination = target.joinpath(*parts)
                destination.parent.mkdir(parents=True, exist_ok=True)
                (shutil.move if movable else shutil.copyfile)(table.parent.joinpath(*parts), destination)


def _patient(path: str) -> str:
    """The patient folder of a CSV Path (``CheXpert-v1.0-small/train/patient00001/...``)."""
    parts = PurePosixPath(path).parts
    return "/".join(parts[1:3])
