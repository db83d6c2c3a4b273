"""CheXpert (Stanford AIMI) chest X-rays: registration-gated, so only a local copy is ingested.

The user downloads CheXpert-v1.0-small.zip (or the full-resolution set) after registering and
points ``local_path`` at the zip or its extracted folder. Images are sorted into two classes for
the 2-D experiments: ``label_column`` positive (1.0) -> that finding, "No Finding" positive ->
NORMAL; uncertain (-1.0) and blank labels are left out.
"""

from __future__ import annotations

import csv
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
