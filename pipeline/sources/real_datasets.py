"""What the real data sources share: their URLs, the raw layout they write, and the download cache.

Each source has its own module (ixi, cq500, kermany, rsna_ich, chexpert, local, weights); they
all land in the layout the later stages read (see the data contracts):

* volumes: ``subjects.tsv`` (subject_id, modality, path, partner_path, partner_modality) with CT
  studies as one folder of DICOM files per patient and T2 MRI as ``IXI-T2/<id>-T2.nii.gz``;
* 2-D image sets (chest X-ray, RSNA slices): ``<label>/<image_id>.<ext>`` (RSNA keeps its DICOM
  folder) and ``images.tsv`` (image_id, label, path, split).

Downloads land in a cache folder outside the repository first (resumable, reused by the next
run; ``user_cache_root``); their SHA-256
sums are checked against ``checksums.json`` where a provider publishes one, else recorded at the
first download in ``.sha256`` (``sha256sum -c`` format) and checked at every later one.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import functools
import json
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Self

import numpy as np
import requests

from pipeline.atomic import atomic_dir, write_text
from pipeline.errors import InputDataError
from pipeline.sources.archives import is_archive, safe_extract
from pipeline.sources.http_fetch import DEFAULT_SETTINGS, ChecksumError, FetchSettings, fetch

log = logging.getLogger(__name__)

# Every remote location the project knows, in one place. Each can be overridden per call
# (params: datasets.<name>.base_url) so tests can point it at a server on 127.0.0.1.
SOURCE_URLS = {
    "ixi_t2": "https://biomedic.doc.ic.ac.uk/brain-development/downloads/IXI",  # + /IXI-T2.tar
    "cq500": "https://s3.ap-south-1.amazonaws.com/qure.headct.study",  # + /reads.csv, /CQ500-CT-<n>.zip
    # Mendeley Data "Labeled OCT and Chest X-Ray Images" v2 (rscbjbr9sj), file ChestXRay2017.zip
    "kermany_cxr": (
        "https://data.mendeley.com/public-files/datasets/rscbjbr9sj/files/"
        "f12eaf6d-6023-432f-acc9-80c9d7393433"
    ),
    "rsna_ich": "https://www.kaggle.com/api/v1",  # Kaggle REST API (basic auth)
    "torchvision": "https://download.pytorch.org/models",
    "pytorch_fid": "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights",
}

MODALITY_CT = "CT"
MODALITY_MR = "MR"
SUBJECTS_TSV = "subjects.tsv"
SUBJECTS_COLUMNS = ("subject_id", "modality", "path", "partner_path", "partner_modality")
IMAGES_TSV = "images.tsv"
IMAGES_COLUMNS = ("image_id", "label", "path", "split")
SUMS_FILE = ".sha256"
SAFE_ID = re.compile(r"[A-Za-z0-9_-]+")
CHECKSUMS_JSON = Path(__file__).with_name("checksums.json")


@dataclasses.dataclass(frozen=True)
class ImageEntry:
    """One 2-D image to place in the raw layout: ``<label>/<image_id><suffix>``."""

    image_id: str
    label: str
    split: str
    source: Path


def safe_id(name: str) -> str:
    """``name`` reduced to the characters subject and image ids may hold ([A-Za-z0-9_-])."""
    return re.sub(r"[^A-Za-z0-9_-]+", "_", name).strip("_")


def choose_subset(ids: Iterable[str], n: int | None, seed: int) -> list[str]:
    """A reproducible random subset of ``n`` ids (all when n is None or too big), sorted.

    The draw depends only on the sorted id list, n and seed, so a download and a later ingest of
    the same files pick the same subjects.
    """
    ordered = sorted(set(ids))
    if n is None or n >= len(ordered):
        return ordered
    if n < 1:
        raise ValueError(f"n_subjects must be at least 1, got {n}")
    picked = np.random.default_rng(seed).choice(len(ordered), size=n, replace=False)
    return sorted(ordered[i] for i in picked)


def write_subjects_tsv(out_dir: Path, rows: Sequence[tuple[str, str, str]]) -> Path:
    """Write ``subjects.tsv`` for (subject_id, modality, relative path) rows; real data has no partner."""
    for subject_id, _, _ in rows:
        if not SAFE_ID.fullmatch(subject_id):
            raise ValueError(f"subject id {subject_id!r} must match {SAFE_ID.pattern}")
    return write_table(out_dir / SUBJECTS_TSV, SUBJECTS_COLUMNS, [(s, m, p, "", "") for s, m, p in rows])


def build_image_folders(out_dir: Path, entries: Sequence[ImageEntry], move: bool) -> Path:
    """Place 2-D images as ``<label>/<image_id><suffix>`` and write ``images.tsv``."""
    rows = []
    for entry in sorted(entries, key=lambda e: e.image_id):
        relative = f"{entry.label}/{entry.image_id}{entry.source.suffix.lower()}"
        place(entry.source, out_dir / relative, move)
        rows.append((entry.image_id, entry.label, relative, entry.split))
    return write_images_tsv(out_dir, rows)


def write_images_tsv(out_dir: Path, rows: Sequence[tuple[str, str, str, str]]) -> Path:
    """Write ``images.tsv`` for (image_id, label, relative path, split) rows."""
    return write_table(out_dir / IMAGES_TSV, IMAGES_COLUMNS, rows)


def unique_subjects(folder: Path, candidates: Iterable[tuple[str, Path]]) -> dict[str, Path]:
    """Index (subject id, path) pairs by subject; two paths that map to one id are an input error."""
    subjects: dict[str, Path] = {}
    for subject_id, path in candidates:
        if subject_id in subjects:
            raise InputDataError(folder, f"{path} and {subjects[subject_id]} are both subject {subject_id!r}")
        subjects[subject_id] = path
    return subjects


def unique_entries(source: Path, entries: Iterable[ImageEntry]) -> dict[str, ImageEntry]:
    """Index entries by image id; two images that map to one id are an input error."""
    by_id: dict[str, ImageEntry] = {}
    for entry in entries:
        if entry.image_id in by_id:
            raise InputDataError(
                source,
                f"{entry.source} and {by_id[entry.image_id].source} both map to image id {entry.image_id!r}",
            )
        by_id[entry.image_id] = entry
    return by_id


def write_table(
    path: Path, columns: Sequence[str], rows: Iterable[Mapping[str, Any] | Sequence[Any]], delimiter: str = "\t"
) -> Path:
    """A table with a header row (TSV unless ``delimiter`` says otherwise); a row is a mapping by
    column name or a sequence in column order."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh, delimiter=delimiter, lineterminator="\n")
        writer.writerow(columns)
        writer.writerows([row[c] for c in columns] if isinstance(row, Mapping) else row for row in rows)
    return path


@contextlib.contextmanager
def scratch_folder(inside: Path, prefix: str = ".generate.") -> Iterator[Path]:
    """A hidden folder inside ``inside`` (usually the caller's temporary output) to build or extract
    in before laying the result out; removed afterwards."""
    scratch = Path(tempfile.mkdtemp(prefix=prefix, dir=inside))
    try:
        yield scratch
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def place(source: Path, destination: Path, move: bool) -> None:
    """Move (same file system, from our own scratch folder) or copy a file or folder into place."""
    destination.parent.mkdir(parents=True, exist_ok=True)
    if move:
        os.replace(source, destination)
    elif source.is_dir():
        shutil.copytree(source, destination)
    else:
        shutil.copyfile(source, destination)


@contextlib.contextmanager
def opened_source(
    source: Path, scratch_parent: Path, include: Callable[[str], bool] | None = None
) -> Iterator[tuple[Path, bool]]:
    """A folder view of ``source`` and whether its files may be moved out of it.

    A folder is used in place (its files must be copied); an archive is safely extracted into a
    scratch folder under ``scratch_parent`` (the caller's temporary output), whose files may be
    moved, and which is deleted afterwards.
    """
    source = Path(source)
    if source.is_dir():
        yield source, False
        return
    if not source.exists():
        raise InputDataError(source, "does not exist")
    if not is_archive(source):
        raise InputDataError(source, "is neither a folder nor a zip / tar archive")
    with scratch_folder(scratch_parent, ".extract.") as scratch:
        safe_extract(source, scratch, include=include)
        yield scratch, True


@functools.cache
def _published_files() -> dict[str, dict[str, object]]:
    return json.loads(CHECKSUMS_JSON.read_text())["files"]


def published_sha256(name: str) -> str | None:
    """The provider's SHA-256 for a file name, from checksums.json (None when none is published)."""
    entry = _published_files().get(name)
    return str(entry["sha256"]) if entry else None


def read_sums(path: Path) -> dict[str, str]:
    """Parse a ``sha256sum``-style file (``<hex>  <name>`` per line); missing file -> empty."""
    if not path.exists():
        return {}
    sums = {}
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        digest, sep, name = line.partition("  ")
        if not sep or not re.fullmatch(r"[0-9a-f]{64}", digest):
            raise InputDataError(path, f"line {number} is not '<sha256>  <file name>'")
        sums[name] = digest
    return sums


def write_sums(path: Path, sums: dict[str, str]) -> None:
    write_text(path, "".join(f"{sums[name]}  {name}\n" for name in sorted(sums)))


CACHE_ENV = "MEDGAN_CACHE_DIR"


def user_cache_root() -> Path:
    """Where downloads and the staging of originals live, outside every repository:
    ``$MEDGAN_CACHE_DIR``, else ``$XDG_CACHE_HOME/medgan-workflow`` (default ``~/.cache/...``)."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "medgan-workflow"


def default_cache_dir(out_dir: Path) -> Path:
    """``data/raw/ct_head`` -> ``<user cache>/downloads/ct_head``: downloaded originals never
    enter the repository (nor, therefore, DVC)."""
    return user_cache_root() / "downloads" / out_dir.name


@dataclasses.dataclass(frozen=True)
class DownloadOptions:
    """What every download takes besides its location.

    n_subjects: how many subjects (images, slices: as the source counts) to keep, drawn with
        ``seed``; None keeps all.
    cache_dir: where the downloads are kept (default ``<user cache>/downloads/<name>``, outside
        the repository).
    keep_archives: False deletes the downloads once the dataset is laid out.
    settings: retries, timeouts, progress display.
    """

    n_subjects: int | None = None
    seed: int = 0
    cache_dir: str | Path | None = None
    keep_archives: bool = True
    settings: FetchSettings = DEFAULT_SETTINGS


def fetch_and_ingest(
    out_dir: str | Path, url: str, archive_name: str, ingest: Callable[..., object], options: DownloadOptions
) -> Path:
    """Download one archive into the cache as ``archive_name``, then lay ``options.n_subjects`` of it
    out in ``out_dir`` with ``ingest(archive, tmp, n_subjects=..., seed=...)``, a source's ingester."""
    out_dir = Path(out_dir)
    with DownloadCache(out_dir, options.cache_dir, options.settings) as cache:
        archive = cache.fetch(url, archive_name)
        build = functools.partial(ingest, archive, n_subjects=options.n_subjects, seed=options.seed)
        cache.lay_out(out_dir, build, options.keep_archives)
    return out_dir


class DownloadCache:
    """The folder where one dataset's downloads land, and the SHA-256 each must match.

    A file's expected sum is the published one (checksums.json) or else the one recorded at its
    first download, read from ``.sha256`` in the cache and in the raw dataset folder (the raw copy
    travels with the data, e.g. through DVC; the cache copy survives Snakemake deleting the
    output folder before a rerun).
    """

    def __init__(
        self, out_dir: Path, cache_dir: Path | None = None, settings: FetchSettings = DEFAULT_SETTINGS
    ):
        self.out_dir = Path(out_dir)
        self.dir = Path(cache_dir) if cache_dir else default_cache_dir(self.out_dir)
        self.settings = settings
        self._record_paths = (self.dir / SUMS_FILE, self.out_dir / SUMS_FILE)
        self.recorded = {**read_sums(self._record_paths[0]), **read_sums(self._record_paths[1])}
        self.fetched: dict[str, str] = {}
        self.session = requests.Session()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.session.close()

    def fetch(self, url: str, name: str, auth: tuple[str, str] | None = None) -> Path:
        """Download ``url`` as ``<cache>/<name>`` (reusing a verified copy) and remember its sum."""
        path = self.dir / name
        published = published_sha256(name)
        expected = published or self.recorded.get(name)
        try:
            digest = fetch(
                url, path, sha256=expected, auth=auth, settings=self.settings, session=self.session
            )
        except ChecksumError as exc:
            if published:
                raise
            raise ChecksumError(
                f"{exc} [expected sum recorded at the first download in "
                f"{' / '.join(map(str, self._record_paths))}; "
                f"delete the line for {name} there to accept the new file]"
            ) from None
        self.fetched[name] = digest
        return path

    def write_record(self, raw_tmp: Path) -> None:
        """Record every known sum in the cache and in the (temporary) raw dataset folder."""
        sums = {**self.recorded, **self.fetched}
        write_sums(self.dir / SUMS_FILE, sums)
        write_sums(raw_tmp / SUMS_FILE, sums)

    def lay_out(self, out_dir: Path, build: Callable[[Path], object], keep_archives: bool) -> None:
        """Build the dataset with ``build(tmp)`` in a folder beside ``out_dir``, record the sums
        there, swap it into place, then drop the downloads unless ``keep_archives``."""
        with atomic_dir(out_dir) as tmp:
            build(tmp)
            self.write_record(tmp)
        if not keep_archives:
            self.discard_downloads()

    def discard_downloads(self) -> None:
        """Delete this run's downloaded files (keep_archives: false); the sums stay recorded."""
        for name in self.fetched:
            (self.dir / name).unlink(missing_ok=True)
