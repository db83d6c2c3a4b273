"""RSNA 2019 intracranial haemorrhage labels: the naming rule of ``stage_2_train.csv``, read strictly.

The competition's labels file has a header ``ID,Label`` and six rows per image, one per
subtype, named ``<image id>_<subtype>`` (``ID_63eb1e259_epidural,0``); the image id is also the
DICOM file's name (``stage_2_train/ID_63eb1e259.dcm``) and its SOPInstanceUID. RSNA's image ids
are ``ID_`` plus 9 lower-case hex digits; any number of hex digits is accepted here, so a local
export in the same layout reads too. ``any`` is 1 exactly when some subtype is 1.

Reading is strict because a label that is silently lost turns a haemorrhage into a "healthy"
training slice: a row that does not follow the rule, an unknown subtype, a label other than
0 / 1, an image with fewer than the six rows, two rows for one name with different labels, or
``any`` disagreeing with the subtypes is an error naming the file and the line. (RSNA's own
file repeats some rows with the same label; those are accepted.)
"""

from __future__ import annotations

import contextlib
import csv
import io
import re
import zipfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TextIO

import numpy as np

from pipeline.errors import InputDataError

#: Subtype columns in RSNA's order; ``any`` last. The arrays written downstream keep this order.
SUBTYPES = ("epidural", "intraparenchymal", "intraventricular", "subarachnoid", "subdural")
RSNA_COLUMNS = (*SUBTYPES, "any")
LABELS_HEADER = ["ID", "Label"]
IMAGE_ID = re.compile(r"ID_[0-9a-f]+")
_ROW_NAME = re.compile(rf"(?P<image>{IMAGE_ID.pattern})_(?P<subtype>[A-Za-z]+)")


def row_name(image_id: str, subtype: str) -> str:
    """``ID_<hex>_<subtype>``: the ID column of one row of the labels CSV."""
    return f"{image_id}_{subtype}"


@contextlib.contextmanager
def open_labels(labels_file: Path) -> Iterator[TextIO]:
    """The labels CSV as text, whether plain or zipped (Kaggle zips large files on download)."""
    if not zipfile.is_zipfile(labels_file):
        with open(labels_file, newline="") as fh:
            yield fh
        return
    try:
        with zipfile.ZipFile(labels_file) as zf:
            members = [n for n in zf.namelist() if n.endswith(".csv")]
            if len(members) != 1:
                raise InputDataError(labels_file, f"zip should hold one CSV, holds {members}")
            with zf.open(members[0]) as raw:
                yield io.TextIOWrapper(raw, newline="")
    except zipfile.BadZipFile as exc:
        raise InputDataError(labels_file, f"corrupt zip ({exc})") from exc


def read_subtype_labels(labels_file: str | Path) -> dict[str, np.ndarray]:
    """Image id -> uint8 array of the six labels in RSNA_COLUMNS order, checked as the docstring says."""
    labels_file = Path(labels_file)
    if not labels_file.is_file():
        raise InputDataError(labels_file, "labels CSV not found")
    seen: dict[str, dict[str, tuple[int, int]]] = {}
    with open_labels(labels_file) as fh:
        reader = csv.reader(fh)
        if next(reader, None) != LABELS_HEADER:
            raise InputDataError(labels_file, "header is not 'ID,Label' (is it RSNA's stage_2_train.csv?)")
        for line, row in enumerate(reader, start=2):
            if not row:
                continue
            if len(row) != 2:
                raise InputDataError(labels_file, f"line {line}: expected 2 fields (ID,Label), got {len(row)}")
            name, value = row[0].strip(), row[1].strip()
            match = _ROW_NAME.fullmatch(name)
            if match is None:
                raise InputDataError(
                    labels_file, f"line {line}: {name!r} is not named ID_<hex>_<subtype> (RSNA's rule)"
                )
            image_id, subtype = match["image"], match["subtype"]
            if subtype not in RSNA_COLUMNS:
                raise InputDataError(
                    labels_file,
                    f"line {line}: unknown subtype {subtype!r}; RSNA's are {', '.join(RSNA_COLUMNS)}",
                )
            if value not in ("0", "1"):
                raise InputDataError(labels_file, f"line {line}: label {value!r} is not 0 or 1")
            rows = seen.setdefault(image_id, {})
            if subtype in rows and rows[subtype][0] != int(value):
                raise InputDataError(
                    labels_file,
                    f"line {line}: {name} is labelled {value} here and {rows[subtype][0]} on line {rows[subtype][1]}",
                )
            rows[subtype] = (int(value), line)
    if not seen:
        raise InputDataError(labels_file, "no label rows")
    labels = {}
    for image_id, rows in seen.items():
        missing = [s for s in RSNA_COLUMNS if s not in rows]
        if missing:
            raise InputDataError(labels_file, f"{image_id} has no row for {', '.join(missing)}")
        values = np.array([rows[s][0] for s in RSNA_COLUMNS], dtype=np.uint8)
        if values[-1] != values[:-1].max():
            raise InputDataError(
                labels_file,
                f"line {rows['any'][1]}: {image_id}_any is {values[-1]} but its subtypes say {values[:-1].max()}",
            )
        labels[image_id] = values
    return labels


def write_subtype_labels(path: Path, labels: Mapping[str, np.ndarray]) -> None:
    """Write ``stage_2_train.csv`` in RSNA's form: header, then six rows per image (sorted ids)."""
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(LABELS_HEADER)
        for image_id in sorted(labels):
            for subtype, value in zip(RSNA_COLUMNS, labels[image_id], strict=True):
                writer.writerow((row_name(image_id, subtype), int(value)))
