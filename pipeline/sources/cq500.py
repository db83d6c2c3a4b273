"""CQ500 head CT (qure.ai): one zip of DICOM series per study, listed in ``reads.csv``.

Its licence (CC BY-NC-SA 4.0, non-commercial) must be accepted explicitly before anything is
downloaded. Each study lands as ``<out>/CQ500-CT-<n>/`` holding the zip's folders unchanged
(``<patient>/Unknown Study/<series>/*.dcm``), which is the CT layout the later stages read.
"""

from __future__ import annotations

import csv
import functools
import re
import shutil
from pathlib import Path

from pydicom.misc import is_dicom

from pipeline.errors import ConfigError, InputDataError
from pipeline.sources.archives import is_archive, is_junk, safe_extract
from pipeline.sources.real_datasets import (
    MODALITY_CT,
    SOURCE_URLS,
    DownloadCache,
    DownloadOptions,
    choose_subset,
    opened_source,
    place,
    safe_id,
    unique_subjects,
    write_subjects_tsv,
)

CQ500_READS = "reads.csv"
CQ500_STUDY_NAME = re.compile(r"CQ500-CT-\d+")
CQ500_LICENCE = (
    "CQ500 is licensed CC BY-NC-SA 4.0 (non-commercial use, share alike; "
    "see http://headctstudy.qure.ai/dataset)"
)


def require_cq500_licence(accept_licence: bool) -> None:
    if not accept_licence:
        raise ConfigError(
            f"{CQ500_LICENCE}: read the terms, then set accept_licence: true for this dataset in "
            "params.yaml (CLI: --accept-licence); nothing was downloaded"
        )


def fetch_cq500(
    out_dir: str | Path,
    *,
    accept_licence: bool = False,
    base_url: str | None = None,
    options: DownloadOptions = DownloadOptions(),
) -> Path:
    """Download ``reads.csv`` and ``options.n_subjects`` of the 491 study zips (tens of GB in all),
    drawn from reads.csv.

    accept_licence: must be True (the CQ500 terms are the user's to accept).
    base_url: folder holding reads.csv and CQ500-CT-<n>.zip (default SOURCE_URLS["cq500"]).
    """
    require_cq500_licence(accept_licence)
    out_dir = Path(out_dir)
    base = (base_url or SOURCE_URLS["cq500"]).rstrip("/")
    with DownloadCache(out_dir, options.cache_dir, options.settings) as cache:
        reads = cache.fetch(f"{base}/{CQ500_READS}", CQ500_READS)
        chosen = choose_subset(read_study_names(reads), options.n_subjects, options.seed)
        studies = {name: cache.fetch(f"{base}/{name}.zip", f"{name}.zip") for name in chosen}
        build = functools.partial(build_ct_studies, studies=studies, move=False, reads_csv=reads)
        cache.lay_out(out_dir, build, options.keep_archives)
    return out_dir


def ingest_cq500(source: Path, out: Path, *, n_subjects: int | None = None, seed: int = 0) -> None:
    """Lay out CT studies from a local copy: a folder (or archive) of study zips or study folders."""
    with opened_source(source, out) as (folder, movable):
        studies = find_ct_studies(folder)
        if not studies:
            raise InputDataError(
                source, "no CT studies in it (expected study zips or one folder per patient)"
            )
        reads = next(
            (p for p in sorted(folder.rglob(CQ500_READS)) if not is_junk(p.relative_to(folder))), None
        )
        chosen = {name: studies[name] for name in choose_subset(studies, n_subjects, seed)}
        build_ct_studies(out, chosen, move=movable, reads_csv=reads)


def read_study_names(reads_csv: Path) -> list[str]:
    """Study names (``CQ500-CT-<n>``) from the ``name`` column of reads.csv."""
    with open(reads_csv, newline="") as fh:
        reader = csv.DictReader(fh)
        if "name" not in (reader.fieldnames or []):
            raise InputDataError(reads_csv, "has no 'name' column (is it CQ500's reads.csv?)")
        names = [row["name"].strip() for row in reader]
    bad = [name for name in names if not CQ500_STUDY_NAME.fullmatch(name)]
    if bad or not names:
        raise InputDataError(reads_csv, f"study names must look like CQ500-CT-<n>; found {bad[:3] or 'none'}")
    return names


def find_ct_studies(folder: Path) -> dict[str, Path]:
    """Subject id -> study: every zip under ``folder``, or else each patient folder directly in it.

    A folder that only wraps another (``qure.headct.study/``) is looked through.
    """
    zips = [p for p in sorted(folder.rglob("*.zip")) if not is_junk(p.relative_to(folder))]
    if zips:
        candidates = [(safe_id(p.name[: -len(".zip")]), p) for p in zips]
    else:
        children = [c for c in sorted(folder.iterdir()) if not is_junk(c.name) and not c.name.startswith(".")]
        if len(children) == 1 and children[0].is_dir():
            return find_ct_studies(children[0])
        candidates = [(safe_id(c.name), c) for c in children if c.is_dir()]
    return unique_subjects(folder, candidates)


def build_ct_studies(out: Path, studies: dict[str, Path], *, move: bool, reads_csv: Path | None) -> None:
    """One folder per patient in ``out`` (zips safely extracted), ``subjects.tsv``, and reads.csv."""
    for subject_id, study in sorted(studies.items()):
        destination = out / subject_id
        if study.is_dir():
            place(study, destination, move)
        elif is_archive(study):
            destination.mkdir(parents=True)
            safe_extract(study, destination)
        else:
            raise InputDataError(study, "a CT study must be a folder or a zip of DICOM files")
        if not _holds_dicom(destination):
            raise InputDataError(study, "holds no DICOM file")
    write_subjects_tsv(out, [(subject_id, MODALITY_CT, subject_id) for subject_id in sorted(studies)])
    if reads_csv is not None:
        shutil.copyfile(reads_csv, out / CQ500_READS)


def _holds_dicom(folder: Path) -> bool:
    return any(p.is_file() and is_dicom(p) for p in folder.rglob("*"))
