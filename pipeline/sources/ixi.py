"""IXI T2 MRI (Imperial College London): one public tar of NIfTI files, ``<subject>-T2.nii.gz``."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
from nibabel.filebasedimages import ImageFileError

from pipeline.errors import InputDataError
from pipeline.sources.archives import is_junk
from pipeline.sources.http_fetch import DEFAULT_SETTINGS, FetchSettings
from pipeline.sources.real_datasets import (
    MODALITY_MR,
    SOURCE_URLS,
    DownloadCache,
    choose_subset,
    opened_source,
    place,
    safe_id,
    write_subjects_tsv,
)

IXI_T2_ARCHIVE = "IXI-T2.tar"
IXI_T2_FOLDER = "IXI-T2"
IXI_T2_SUFFIX = "-T2.nii.gz"


def fetch_ixi_t2(
    out_dir: str | Path,
    *,
    base_url: str | None = None,
    n_subjects: int | None = None,
    seed: int = 0,
    cache_dir: str | Path | None = None,
    keep_archives: bool = True,
    settings: FetchSettings = DEFAULT_SETTINGS,
) -> Path:
    """Download IXI-T2.tar (about 4 GB, ~578 T2 volumes) and lay out ``n_subjects`` of them.

    base_url: folder holding IXI-T2.tar (default SOURCE_URLS["ixi_t2"]).
    n_subjects: how many subjects to keep, drawn with ``seed``; None keeps all.
    cache_dir: where the tar is kept (default ``<user cache>/downloads/<name>``, outside the repository).
    keep_archives: False deletes the tar once the dataset is laid out.
    """
    out_dir = Path(out_dir)
    with DownloadCache(out_dir, cache_dir, settings) as cache:
        archive = cache.fetch(
            f"{(base_url or SOURCE_URLS['ixi_t2']).rstrip('/')}/{IXI_T2_ARCHIVE}", IXI_T2_ARCHIVE
        )
        cache.lay_out(out_dir, lambda tmp: ingest_ixi_t2(archive, tmp, n_subjects=n_subjects, seed=seed), keep_archives)
    return out_dir


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
    volumes: dict[str, Path] = {}
    for path in sorted(folder.rglob(f"*{IXI_T2_SUFFIX}")):
        if is_junk(path.relative_to(folder)) or not path.is_file():
            continue
        subject_id = safe_id(path.name[: -len(IXI_T2_SUFFIX)])
        if subject_id in volumes:
            raise InputDataError(folder, f"{path} and {volumes[subject_id]} are both subject {subject_id!r}")
        volumes[subject_id] = path
    return volumes


def _check_nifti(source: Path, path: Path) -> None:
    try:
        nib.load(path)  # reads and checks the header only
    except (ImageFileError, OSError, EOFError, ValueError) as exc:
        raise InputDataError(source, f"{path.name} is not a readable NIfTI image ({exc})") from exc
