"""The Cancer Imaging Archive (TCIA): CT series of a public collection through the NBIA REST API,
laid out as the thorax slices stage reads them (the layout phantom_tcia_thorax writes too).

API (public collections need no account): ``GET <api>/getSeries?Collection=<c>&Modality=CT``
answers a JSON list of series (PatientID, StudyInstanceUID, SeriesInstanceUID, ImageCount, ...);
``GET <api>/getImage?SeriesInstanceUID=<uid>`` answers a zip of the series' DICOM files. The
default root is TCIA's v1 API (``TCIA_API``); ``base_url`` overrides it (tests: 127.0.0.1).

Choice: per patient the CT series with the most images (a whole-chest scan rather than a scout
or a dose report; ties: the smaller SeriesInstanceUID), then ``n_subjects`` patients drawn with
``seed`` (pipeline.sources.real_datasets.choose_subset). The series zips are cached outside the
repository (pipeline.sources.real_datasets.DownloadCache, SHA-256 recorded at the first download).

Layout (in the private staging folder; pipeline.sources.deidentify then writes data/raw):

    <sub-pseudonym>/<study>/<series>/<NNNN>.dcm   NNNN = 0001.. from head to feet (ImagePositionPatient z)
    labels/<same path>.png                         only where the user supplied maps (local layout tcia)
    subjects.tsv                                   subject_id, modality, path (the series folder)

Folder names carry no original identifier: the patient folder is the salted pseudonym of the
PatientID (pipeline.privacy.pseudonym) and study / series folders are the salted UIDs that
de-identification also writes into the headers (pipeline.sources.deidentify.salted_uid), so a
folder still names the same study as its files' headers. The download stage's generic renaming
(pipeline.privacy.pseudonymise_raw_dataset) is not used here because it would give series
neutral names and leave the user's label images behind.

``local`` with layout ``tcia`` reads a folder (or archive) in TCIA's download layout,
``<PatientID>/<study>/<series>/<any name>.dcm``, with optional label images at
``labels/<same relative path>.png`` (grey values 0, 50, 100, 150, 200, 230); they travel with
their slices. Label maps for downloads come from ``datasets.<name>.label_maps`` (a folder
mirroring data/raw, or ``auto``; pipeline.preprocess.thorax_slices).
"""

from __future__ import annotations

import json
import logging
import shutil
import urllib.parse
from collections import defaultdict
from pathlib import Path
from typing import Any

import pydicom
import requests
from pydicom.errors import InvalidDicomError
from pydicom.misc import is_dicom

from pipeline.errors import ConfigError, InputDataError
from pipeline.privacy import pseudonym
from pipeline.sources.archives import is_junk, safe_extract
from pipeline.sources.deidentify import salted_uid
from pipeline.sources.http_fetch import DEFAULT_SETTINGS, FetchSettings, redact_url
from pipeline.sources.real_datasets import (
    DownloadCache,
    DownloadOptions,
    choose_subset,
    opened_source,
    scratch_folder,
    write_table,
)

log = logging.getLogger(__name__)

TCIA_API = "https://services.cancerimagingarchive.net/nbia-api/services/v1"
DEFAULT_COLLECTION = "LIDC-IDRI"
MODALITY = "CT"
LABELS_FOLDER = "labels"
LABEL_SUFFIX = ".png"
SUBJECTS_COLUMNS = ("subject_id", "modality", "path")


def list_series(api: str, collection: str, settings: FetchSettings = DEFAULT_SETTINGS) -> list[dict[str, Any]]:
    """The collection's CT series as the API describes them (getSeries)."""
    url = f"{api}/getSeries?" + urllib.parse.urlencode({"Collection": collection, "Modality": MODALITY})
    try:
        response = requests.get(url, timeout=settings.timeout_s)
    except requests.RequestException as exc:
        raise InputDataError(redact_url(url), f"TCIA's series list could not be fetched ({exc.__class__.__name__})") from exc
    if response.status_code != 200:
        raise InputDataError(redact_url(url), f"TCIA answered HTTP {response.status_code} for the series list")
    try:
        series = json.loads(response.content or b"[]")
    except ValueError as exc:
        raise InputDataError(redact_url(url), "TCIA's series list is not JSON") from exc
    if not isinstance(series, list) or any(not isinstance(s, dict) or "SeriesInstanceUID" not in s for s in series):
        raise InputDataError(redact_url(url), "TCIA's series list is not a list of series with SeriesInstanceUID")
    return [s for s in series if str(s.get("Modality", MODALITY)) == MODALITY]


def choose_series(series: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """PatientID -> its series with the most images (ties: the smaller SeriesInstanceUID)."""
    by_patient: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for s in series:
        by_patient[str(s.get("PatientID", ""))].append(s)
    by_patient.pop("", None)
    return {p: min(group, key=lambda s: (-int(s.get("ImageCount") or 0), str(s["SeriesInstanceUID"])))
            for p, group in by_patient.items()}  # fmt: skip


def _z(path: Path) -> float:
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
    except (InvalidDicomError, OSError) as exc:
        raise InputDataError(path, f"is not a readable DICOM file ({exc.__class__.__name__})") from exc
    position = ds.get("ImagePositionPatient")
    if position is None or len(position) != 3:
        raise InputDataError(path, "has no ImagePositionPatient: slices cannot be ordered along z")
    return float(position[2])


def place_series(files: list[Path], out: Path, folder: str, labels: dict[Path, Path]) -> None:
    """Copy a series as ``<folder>/<NNNN>.dcm`` from head to feet, each slice's label beside it."""
    ordered = sorted(files, key=lambda p: (-_z(p), p.name))
    for k, path in enumerate(ordered):
        name = f"{k + 1:04d}"
        target = out / folder / f"{name}.dcm"
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target)
        if path in labels:
            label = out / LABELS_FOLDER / folder / f"{name}{LABEL_SUFFIX}"
            label.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(labels[path], label)


def _series_folder(salt: str, patient_id: str, study_uid: str, series_uid: str) -> str:
    return f"{pseudonym(patient_id, salt)}/{salted_uid(study_uid, salt)}/{salted_uid(series_uid, salt)}"


def _write_subjects(out: Path, folders: list[str]) -> None:
    write_table(out / "subjects.tsv", SUBJECTS_COLUMNS, ((folder.split("/")[0], MODALITY, folder) for folder in sorted(folders)))


def fetch_tcia(out_dir: str | Path, salt: str, *, base_url: str | None = None, collection: str = DEFAULT_COLLECTION,
               options: DownloadOptions = DownloadOptions()) -> Path:  # fmt: skip
    """Download one CT series of ``options.n_subjects`` patients of ``collection`` and lay them out in
    ``out_dir`` (staging)."""
    out_dir = Path(out_dir)
    api = (base_url or TCIA_API).rstrip("/")
    chosen = choose_series(list_series(api, collection, options.settings))
    if not chosen:
        raise InputDataError(api, f"collection {collection!r} lists no CT series with a PatientID")
    patients = choose_subset(chosen, options.n_subjects, options.seed)
    out_dir.mkdir(parents=True, exist_ok=True)
    folders = []
    with DownloadCache(out_dir, options.cache_dir, options.settings) as cache:
        for patient in patients:
            series = chosen[patient]
            uid = str(series["SeriesInstanceUID"])
            url = f"{api}/getImage?" + urllib.parse.urlencode({"SeriesInstanceUID": uid})
            archive = cache.fetch(url, f"{salted_uid(uid, salt)}.zip")  # the .sha256 record names no original UID
            with scratch_folder(out_dir, ".series.") as scratch:
                safe_extract(archive, scratch)
                files = sorted(p for p in scratch.rglob("*") if p.is_file() and not is_junk(p.relative_to(scratch))
                               and is_dicom(p))  # fmt: skip
                if not files:
                    raise InputDataError(archive, f"series {uid} of {collection} holds no DICOM file")
                folder = _series_folder(salt, patient, str(series.get("StudyInstanceUID", uid)), uid)
                place_series(files, out_dir, folder, {})
                folders.append(folder)
        _write_subjects(out_dir, folders)
        cache.write_record(out_dir)
        if not options.keep_archives:
            cache.discard_downloads()
    log.info("tcia %s: %d patients, one CT series each", collection, len(folders))
    return out_dir


def ingest_tcia_folder(local_path: str | Path, out_dir: str | Path, salt: str, *, n_subjects: int | None = None,
                       seed: int = 0) -> Path:  # fmt: skip
    """Lay out a folder / archive in TCIA's download layout (with optional labels/) in ``out_dir``."""
    if not local_path:
        raise ConfigError("the local source with layout tcia needs local_path (CLI: --local-path)")
    source = Path(local_path).expanduser()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with opened_source(source, out_dir) as (folder, _movable):
        series: dict[tuple[str, str, str], list[Path]] = defaultdict(list)
        labels: dict[Path, Path] = {}
        for path in sorted(folder.rglob("*")):
            relative = path.relative_to(folder)
            if not path.is_file() or is_junk(relative) or relative.parts[0] == LABELS_FOLDER:
                continue
            if not is_dicom(path):
                continue
            ds = pydicom.dcmread(path, stop_before_pixels=True)
            key = (str(ds.get("PatientID", "") or relative.parts[0]), str(ds.get("StudyInstanceUID", "")),
                   str(ds.get("SeriesInstanceUID", "")))  # fmt: skip
            series[key].append(path)
            label = folder / LABELS_FOLDER / relative.with_suffix(LABEL_SUFFIX)
            if label.is_file():
                labels[path] = label
        if not series:
            raise InputDataError(source, "holds no DICOM series (expected <PatientID>/<study>/<series>/*.dcm)")
        by_patient: dict[str, list[tuple[str, str, str]]] = defaultdict(list)
        for key in series:
            by_patient[key[0]].append(key)
        folders = []
        for patient in choose_subset(by_patient, n_subjects, seed):
            key = max(by_patient[patient], key=lambda k: (len(series[k]), k))  # the largest series
            folder_name = _series_folder(salt, *key)
            place_series(series[key], out_dir, folder_name, labels)
            folders.append(folder_name)
    _write_subjects(out_dir, folders)
    log.info("local tcia layout: %d patients, %d with label images", len(folders),
             len({f for f in folders if (out_dir / LABELS_FOLDER / f).is_dir()}))  # fmt: skip
    return out_dir


def lay_out_tcia(source: str, stage: Path, salt: str, *, base_url: str | None, local_path: str | Path | None,
                 source_options: dict[str, Any], download: DownloadOptions) -> None:  # fmt: skip
    """The download stage's entry (pipeline.sources.download): ``tcia`` or ``local`` layout tcia;
    ``source_options`` may name the ``collection``."""
    unknown = sorted(set(source_options) - {"collection"})
    if unknown:
        raise ConfigError(f"tcia: unknown source options {unknown}; known: ['collection']")
    if source == "tcia":
        collection = source_options.get("collection", DEFAULT_COLLECTION)
        fetch_tcia(stage, salt, base_url=base_url, collection=collection, options=download)
    else:
        ingest_tcia_folder(local_path, stage, salt, n_subjects=download.n_subjects, seed=download.seed)
