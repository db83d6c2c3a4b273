"""Data already on disk (a folder or an archive): the way in for offline machines and gated datasets.

``layout`` says what the local copy looks like: ``raw`` when it is already in the raw layout
(subjects.tsv or images.tsv at its top), or the name of the source whose files it holds
(``ixi_t2``, ``cq500``, ``kermany_cxr``, ``chexpert``, ``rsna_ich``), which are then laid out
exactly as after a download.
"""

from __future__ import annotations

import csv
from pathlib import Path

from pipeline.atomic import atomic_dir
from pipeline.errors import ConfigError, InputDataError
from pipeline.sources.archives import is_junk
from pipeline.sources.chexpert import ingest_chexpert, ingest_chexpert_layout
from pipeline.sources.cq500 import ingest_cq500
from pipeline.sources.ixi import ingest_ixi_t2
from pipeline.sources.kermany import ingest_class_folders
from pipeline.sources.real_datasets import (
    IMAGES_COLUMNS,
    IMAGES_TSV,
    SUBJECTS_COLUMNS,
    SUBJECTS_TSV,
    opened_source,
    place,
)
from pipeline.sources.rsna_ich import ingest_rsna_ich

SUBSET_INGESTERS = {
    "ixi_t2": ingest_ixi_t2,
    "cq500": ingest_cq500,
    "kermany_cxr": ingest_class_folders,
    "rsna_ich": ingest_rsna_ich,
}
#: "tcia" (thorax series + label images) is laid out by pipeline.sources.tcia, called from download.
LAYOUTS = ("raw", "chexpert", "tcia", *SUBSET_INGESTERS)


def ingest_local(
    local_path: str | Path | None,
    out_dir: str | Path,
    *,
    layout: str = "raw",
    n_subjects: int | None = None,
    seed: int = 0,
    chexpert_label: str = "Pneumonia",
    chexpert_frontal_only: bool = True,
    chexpert_keep_layout: bool = False,
) -> Path:
    """Lay out the data at ``local_path`` in ``out_dir`` (atomically).

    layout: one of LAYOUTS (see the module docstring).
    n_subjects: subjects / images to keep, drawn with ``seed``; None keeps all (not for ``raw``).
    chexpert_label / chexpert_frontal_only: see pipeline.sources.chexpert.ingest_chexpert.
    chexpert_keep_layout: layout chexpert keeps CheXpert's own folders and CSVs
        (pipeline.sources.chexpert.ingest_chexpert_layout) instead of sorting into classes.
    """
    if layout not in LAYOUTS:
        raise ConfigError(f"local layout {layout!r} is not one of {', '.join(LAYOUTS)}")
    if not local_path:
        raise ConfigError(
            "the local source needs local_path: the folder or archive to read (CLI: --local-path)"
        )
    source = Path(local_path).expanduser()
    if not source.exists():
        raise InputDataError(source, "does not exist (local_path)")
    out_dir = Path(out_dir)
    with atomic_dir(out_dir) as tmp:
        if layout == "raw":
            if n_subjects is not None:
                raise ConfigError(
                    "a local copy in the raw layout is taken whole: set n_subjects to null "
                    "(CLI: --n-subjects all), "
                    "or set layout to the source it came from to draw a subset"
                )
            ingest_raw_layout(source, tmp)
        elif layout == "chexpert" and chexpert_keep_layout:
            ingest_chexpert_layout(source, tmp, n_subjects=n_subjects, seed=seed)
        elif layout == "chexpert":
            ingest_chexpert(
                source,
                tmp,
                label_column=chexpert_label,
                frontal_only=chexpert_frontal_only,
                n_subjects=n_subjects,
                seed=seed,
            )
        else:
            SUBSET_INGESTERS[layout](source, tmp, n_subjects=n_subjects, seed=seed)
    return out_dir


def ingest_raw_layout(source: Path, out: Path) -> None:
    """Copy a dataset that is already in the raw layout, after checking its index and files."""
    with opened_source(source, out) as (folder, movable):
        root = _layout_root(folder)
        if root is None:
            raise InputDataError(source, f"has no {SUBJECTS_TSV} or {IMAGES_TSV} at its top (layout: raw)")
        for index, columns, path_columns in (
            (SUBJECTS_TSV, SUBJECTS_COLUMNS, ("path", "partner_path")),
            (IMAGES_TSV, IMAGES_COLUMNS, ("path",)),
        ):
            if (root / index).exists():
                _check_index(root / index, columns, path_columns)
        for child in sorted(root.iterdir()):
            place(child, out / child.name, movable)


def _layout_root(folder: Path) -> Path | None:
    """``folder`` or the single folder it wraps, whichever holds the index file."""
    wrapped = [c for c in folder.iterdir() if c.is_dir() and not is_junk(c.name)]
    for candidate in (folder, *(wrapped if len(wrapped) == 1 else [])):
        if (candidate / SUBJECTS_TSV).exists() or (candidate / IMAGES_TSV).exists():
            return candidate
    return None


def _check_index(index: Path, columns: tuple[str, ...], path_columns: tuple[str, ...]) -> None:
    with open(index, newline="") as fh:
        reader = csv.DictReader(fh, delimiter="\t")
        if tuple(reader.fieldnames or ()) != columns:
            raise InputDataError(index, f"header must be {' / '.join(columns)}, is {reader.fieldnames}")
        for number, row in enumerate(reader, start=2):
            for column in path_columns:
                relative = row[column]
                if relative and not (index.parent / relative).exists():
                    raise InputDataError(index, f"line {number}: {column} {relative} does not exist")
