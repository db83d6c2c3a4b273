"""IXI T2 MRI (Imperial College London): one public tar of NIfTI files, ``<subject>-T2.nii.gz``."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
from nibabel.filebasedimages import ImageFileError

from pipeline.errors import InputDataError
from pipeline.sources.archives import is_junk
from pipeline.sources.real_datasets import (
    MODALITY_MR,
    SOURCE_URLS,
    DownloadOptions,
    choose_subset,
    fetch_and_ingest,
    opened_source,
    place,
    safe_id,
    unique_subjects,
    write_subjects_tsv,
)

IXI_T2_ARCHIVE = "IXI-T2.tar"
IXI_T2_FOLDER = "IXI-T2"
IXI_T2_SUFFIX = "-T2.nii.gz"


def fetch_ixi_t2(out_dir: str | Path, *, base_url: str | None = None, options: DownloadOptions = DownloadOptions()) -> Path:
    """Download IXI-T2.tar (about 4 GB, ~578 T2 volumes) and lay out ``options.n_subjects`` of them.

    base_url: folder holding IXI-T2.tar (default SOURCE_URLS["ixi_t2"]).
    """
    url = f"{(base_url or SOURCE_URLS['ixi_t2']).rstrip('/')}/{IXI_T2_ARCHIVE}"
    return fetch_and_ingest(out_dir, url, IXI_T2_ARCHIVE, ingest_ixi_t2, options)


def ingest_ixi_t2(source: Path, out: Path, *, n_subjects: int | None = None, seed: int = 0) -> None:
    """Lay out IXI T2 volumes from ``source`` (IXI-T2.tar or a folder holding ``*-T2.nii.gz``) in ``out``."""
    with opened_source(source, out) as (folder, movable):
        volumes = find_ixi_t2(folder)
        if not volumes:
            raise InputDataError(source, f"no IXI T2 volumes (*{IXI_T2_SUFFIX}) in it")
        rows = []
        for subject_id in choose_subset(volumes, n_subjects, seed):
            _check_nifti(source, volumes[subject_id])
            relative = f"{IXI_T2_FOLDER}/{subject_id}{IXI_T2_SUFFIX}"
            place(volumes[subject_id], out / relative, movable)
            rows.append((subject_id, MODALITY_MR, relative))
    write_subjects_tsv(out, rows)


def find_ixi_t2(folder: Path) -> dict[str, Path]:
    """Subject id -> volume, for every ``<subject>-T2.nii.gz`` under ``folder``."""
    volumes = (p for p in sorted(folder.rglob(f"*{IXI_T2_SUFFIX}")) if p.is_file() and not is_junk(p.relative_to(folder)))
    return unique_subjects(folder, ((safe_id(p.name[: -len(IXI_T2_SUFFIX)]), p) for p in volumes))


def _check_nifti(source: Path, path: Path) -> None:
    try:
        nib.load(path)  # reads and checks the header only
    except (ImageFileError, OSError, EOFError, ValueError) as exc:
        raise InputDataError(source, f"{path.name} is not a readable NIfTI image ({exc})") from exc
