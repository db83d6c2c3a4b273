"""RSNA Intracranial Hemorrhage Detection (Kaggle competition): head CT slices as DICOM files
plus ``stage_2_train.csv`` (one row per image and hemorrhage subtype).

Downloads use the Kaggle REST API directly (requests + HTTP basic auth), so the base URL can
point at a test server. Credentials come from the KAGGLE_USERNAME / KAGGLE_KEY environment
variables or Kaggle's own ``kaggle.json`` (never from params, never printed); the account must
have accepted the competition rules on kaggle.com.

Without ``n_subjects`` the whole competition archive (~180 GB) is fetched; with it, the labels
file and that many slices are fetched one by one.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import json
import os
import urllib.parse
from collections.abc import Iterator, Mapping
from pathlib import Path

from pydicom.misc import is_dicom

from pipeline.atomic import atomic_dir
from pipeline.errors import ConfigError, InputDataError
from pipeline.sources.archives import is_junk
from pipeline.sources.http_fetch import HTTPStatusError
from pipeline.sources.real_datasets import (
    SOURCE_URLS,
    DownloadCache,
    DownloadOptions,
    choose_subset,
    opened_source,
    place,
    write_images_tsv,
)
from pipeline.sources.rsna_labels import open_labels as _open_labels

RSNA_COMPETITION = "rsna-intracranial-hemorrhage-detection"
RSNA_LABELS = "stage_2_train.csv"
RSNA_IMAGE_FOLDER = "stage_2_train"
RSNA_SPLIT = "train"
LABEL_HEMORRHAGE = "ICH"
LABEL_NO_HEMORRHAGE = "NO_ICH"
KAGGLE_TOKEN_PAGE = "https://www.kaggle.com/settings"


@dataclasses.dataclass(frozen=True)
class KaggleCredentials:
    username: str
    key: str = dataclasses.field(repr=False)
    origin: str  # where they were found, for messages; never the values themselves

    @property
    def auth(self) -> tuple[str, str]:
        return self.username, self.key


def kaggle_credentials(
    environ: Mapping[str, str] | None = None, config_dir: str | Path | None = None
) -> KaggleCredentials:
    """Kaggle API credentials, looked up as the kaggle client does: environment, then kaggle.json.

    config_dir: folder holding kaggle.json (default $KAGGLE_CONFIG_DIR, else ~/.kaggle).
    """
    env = os.environ if environ is None else environ
    username, key = env.get("KAGGLE_USERNAME"), env.get("KAGGLE_KEY")
    if username and key:
        return KaggleCredentials(username, key, "the KAGGLE_USERNAME / KAGGLE_KEY environment variables")
    if username or key:
        present, absent = ("KAGGLE_USERNAME", "KAGGLE_KEY") if username else ("KAGGLE_KEY", "KAGGLE_USERNAME")
        raise ConfigError(
            f"Kaggle credentials: {present} is set but {absent} is not; "
            "set both (or neither, to use kaggle.json)"
        )
    token = Path(config_dir or env.get("KAGGLE_CONFIG_DIR") or Path.home() / ".kaggle") / "kaggle.json"
    if not token.is_file():
        raise ConfigError(
            "Kaggle credentials not found: set KAGGLE_USERNAME and KAGGLE_KEY, "
            f"or save your API token as {token} "
            f"(create one at {KAGGLE_TOKEN_PAGE}, then chmod 600 it)"
        )
    try:
        data = json.loads(token.read_text())
        return KaggleCredentials(str(data["username"]), str(data["key"]), str(token))
    except (ValueError, KeyError, TypeError):
        raise ConfigError(
            f"{token} is not a Kaggle API token (expected JSON with 'username' and 'key')"
        ) from None


def fetch_rsna_ich(
    out_dir: str | Path,
    *,
    base_url: str | None = None,
    competition: str = RSNA_COMPETITION,
    kaggle_config_dir: str | Path | None = None,
    options: DownloadOptions = DownloadOptions(),
) -> Path:
    """Download the RSNA ICH training slices and labels from Kaggle and lay them out in ``out_dir``.

    base_url: the Kaggle API root (default SOURCE_URLS["rsna_ich"]).
    competition: the Kaggle competition slug.
    kaggle_config_dir: folder holding kaggle.json when the environment has no credentials.
    options.n_subjects: slices to fetch, drawn from the labels file; None fetches the whole
        competition archive.
    """
    out_dir = Path(out_dir)
    credentials = kaggle_credentials(config_dir=kaggle_config_dir)
    api = (base_url or SOURCE_URLS["rsna_ich"]).rstrip("/")
    with (
        DownloadCache(out_dir, options.cache_dir, options.settings) as cache,
        _kaggle_errors_explained(credentials, competition),
    ):
        if options.n_subjects is None:
            archive = cache.fetch(
                f"{api}/competitions/data/download-all/{competition}", f"{competition}.zip", credentials.auth
            )
            with atomic_dir(out_dir) as tmp:
                ingest_rsna_ich(archive, tmp)
                cache.write_record(tmp)
        else:
            labels_file = cache.fetch(_file_url(api, competition, RSNA_LABELS), RSNA_LABELS, credentials.auth)
            labels = read_rsna_labels(labels_file)
            images = {}
            for image_id in choose_subset(labels, options.n_subjects, options.seed):
                name = f"{RSNA_IMAGE_FOLDER}/{image_id}.dcm"
                images[image_id] = cache.fetch(_file_url(api, competition, name), name, credentials.auth)
            with atomic_dir(out_dir) as tmp:
                build_rsna_ich(tmp, labels_file, labels, images, move=False)
                cache.write_record(tmp)
        if not options.keep_archives:
            cache.discard_downloads()
    return out_dir


def ingest_rsna_ich(source: Path, out: Path, *, n_subjects: int | None = None, seed: int = 0) -> None:
    """Lay out RSNA slices from the competition zip, or a folder with stage_2_train.csv + stage_2_train/."""

    def wanted(name: str) -> bool:
        return name == RSNA_LABELS or name.startswith(f"{RSNA_IMAGE_FOLDER}/")

    with opened_source(source, out, include=wanted) as (folder, movable):
        labels_file = next(
            (p for p in sorted(folder.rglob(RSNA_LABELS)) if not is_junk(p.relative_to(folder))), None
        )
        if labels_file is None:
            raise InputDataError(source, f"no {RSNA_LABELS} in it")
        labels = read_rsna_labels(labels_file)
        present = {
            p.stem: p for p in (labels_file.parent / RSNA_IMAGE_FOLDER).glob("*.dcm") if p.stem in labels
        }
        if not present:
            raise InputDataError(
                source, f"no labelled DICOM slices in {RSNA_IMAGE_FOLDER}/ beside {RSNA_LABELS}"
            )
        chosen = {image_id: present[image_id] for image_id in choose_subset(present, n_subjects, seed)}
        build_rsna_ich(out, labels_file, labels, chosen, move=movable)


def read_rsna_labels(labels_file: Path) -> dict[str, str]:
    """Image id -> ICH / NO_ICH from the ``<image id>_any`` rows (the file may come zipped from Kaggle)."""
    labels: dict[str, str] = {}
    with _open_labels(labels_file) as fh:
        reader = csv.reader(fh)
        if next(reader, None) != ["ID", "Label"]:
            raise InputDataError(labels_file, "header is not 'ID,Label' (is it the RSNA stage_2_train.csv?)")
        for row in filter(None, reader):
            image_id, _, subtype = row[0].rpartition("_")
            if subtype == "any":
                labels[image_id] = LABEL_HEMORRHAGE if row[1].strip() == "1" else LABEL_NO_HEMORRHAGE
    if not labels:
        raise InputDataError(labels_file, "no '<image id>_any' rows")
    return labels


def build_rsna_ich(
    out: Path, labels_file: Path, labels: Mapping[str, str], images: Mapping[str, Path], *, move: bool
) -> None:
    """DICOM slices in ``stage_2_train/``, the labels CSV unzipped beside them, and images.tsv.

    The CSV keeps RSNA's rows (and their order) for the images laid out only: a subset download
    fetches the whole labels file, and a labels CSV that names images not on disk is an input
    error for the slices stage (pipeline.preprocess.ct_slices)."""
    rows = []
    for image_id in sorted(images):
        if not is_dicom(images[image_id]):
            raise InputDataError(images[image_id], "is not a DICOM file")
        relative = f"{RSNA_IMAGE_FOLDER}/{image_id}.dcm"
        place(images[image_id], out / relative, move)
        rows.append((image_id, labels[image_id], relative, RSNA_SPLIT))
    with _open_labels(labels_file) as source, open(out / RSNA_LABELS, "w", newline="") as copy:
        header = source.readline()
        copy.write(header)
        copy.writelines(line for line in source if line.partition(",")[0].rpartition("_")[0] in images)
    write_images_tsv(out, rows)


def _file_url(api: str, competition: str, name: str) -> str:
    return f"{api}/competitions/data/download/{competition}/{urllib.parse.quote(name, safe='')}"


@contextlib.contextmanager
def _kaggle_errors_explained(credentials: KaggleCredentials, competition: str) -> Iterator[None]:
    """Turn Kaggle's 401 / 403 into what to do, naming where the credentials came from (not them)."""
    try:
        yield
    except HTTPStatusError as exc:
        if exc.status == 401:
            raise ConfigError(
                f"Kaggle rejected the credentials from {credentials.origin} (HTTP 401): "
                "check the user name and "
                f"create a new API token at {KAGGLE_TOKEN_PAGE}"
            ) from None
        if exc.status == 403:
            raise ConfigError(
                "Kaggle refused the competition data (HTTP 403): "
                f"sign in as the account in {credentials.origin} "
                f"and accept the rules at https://www.kaggle.com/competitions/{competition}/rules"
            ) from None
        raise
