"""Patient privacy: pseudonymous subject ids, and a scanner that proves outputs carry no identity.

Real and local datasets name subjects by folder or file names that can identify a patient
(``Smith_John/``, an accession number, a hospital's study name). The download stage therefore
replaces every subject id by a salted hash, ``sub-`` + the first 12 hex digits of
HMAC-SHA256(salt, original id), and lays each subject's files out under names made from that
pseudonym only. The salt never enters the repository: it is ``$MEDGAN_SALT`` when set, else the
file ``~/.config/medgan-workflow/salt`` (``$XDG_CONFIG_HOME`` respected), created with 256 random
bits and mode 0600 on first use. Without the salt the hash cannot be reversed or recomputed by
trying names; with it, ``python -m pipeline.privacy pseudonym ID...`` finds a patient's
pseudonym again. The same salt gives the same ids, hence the same splits: share it (out of band)
with whoever must reproduce a run on real data.

Header fields are removed at the door: the download stage writes only de-identified files into
``data/raw`` (pipeline.sources.deidentify: DICOM PS3.15 Annex E Basic profile, NIfTI text fields,
JPEG / PNG metadata), and every later stage writes fresh images from voxels and geometry only
(pipeline.preprocess.window). ``python -m pipeline.privacy scan`` checks any folder for strings
you know identify a patient: run it over data/raw, .dvc/cache and a DVC remote before sharing.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import bz2
import contextlib
import csv
import functools
import gzip
import hashlib
import hmac
import logging
import lzma
import os
import re
import secrets
import shutil
import tempfile
import zlib
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import pydicom

from pipeline.atomic import atomic_dir
from pipeline.errors import ConfigError, InputDataError

_log = logging.getLogger(__name__)

SALT_ENV = "MEDGAN_SALT"
#: Shortest salt accepted: anything shorter could be guessed by trying salts.
MIN_SALT_CHARS = 16
PSEUDONYM_PREFIX = "sub-"
PSEUDONYM_HEX_DIGITS = 12
SUBJECTS_TSV = "subjects.tsv"
TRUTH_FOLDER = "truth"
MR_FOLDER = "IXI-T2"
MR_SUFFIX = "-T2.nii.gz"
PARTNER_FOLDER = "partners"
#: DICOM keywords that identify a patient, a visit or a person (PS3.15 Annex E's basic profile,
#: the fields a pipeline is most likely to copy). Nothing the project writes holds any of them.
IDENTIFYING_DICOM_KEYWORDS = (
    "PatientName", "PatientID", "PatientBirthDate", "PatientBirthTime", "PatientSex", "PatientAge",
    "PatientAddress", "PatientTelephoneNumbers", "OtherPatientIDs", "OtherPatientNames",
    "AccessionNumber", "InstitutionName", "InstitutionAddress", "InstitutionalDepartmentName",
    "ReferringPhysicianName", "PerformingPhysicianName", "OperatorsName", "PhysiciansOfRecord",
    "StudyDate", "SeriesDate", "AcquisitionDate", "ContentDate", "StudyTime", "SeriesTime",
    "AcquisitionTime", "ContentTime", "StudyID", "StationName", "DeviceSerialNumber",
    "StudyDescription", "SeriesDescription",
)  # fmt: skip
_SAFE_SUFFIX = re.compile(r"\.[A-Za-z0-9]{1,8}")
_PNG_TEXT_CHUNKS = (b"tEXt", b"zTXt", b"iTXt")
_ISO2022_TO_ASCII = b"\x1b(B"
#: Compressed streams the scan opens: magic bytes, how the hit is reported, how to decompress.
_COMPRESSED = (
    (b"\x1f\x8b", "gunzipped", gzip.decompress),
    (b"BZh", "bunzipped", bz2.decompress),
    (b"\xfd7zXZ\x00", "unxz'd", lzma.decompress),
)
#: Base64 payloads of data URIs (Snakemake's report embeds every result file this way).
_DATA_URI = re.compile(rb"base64,([A-Za-z0-9+/=\s]{16,})")


@contextlib.contextmanager
def values_kept_out_of_logs() -> Iterator[None]:
    """pydicom's value-validation warnings quote header values, which may identify the patient:
    silence them while a study is read (restored afterwards)."""
    settings = pydicom.config.settings
    previous = settings.reading_validation_mode
    settings.reading_validation_mode = pydicom.config.IGNORE
    try:
        yield
    finally:
        settings.reading_validation_mode = previous


def default_salt_file() -> Path:
    config_home = os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config"
    return Path(config_home) / "medgan-workflow" / "salt"


def load_salt(salt_file: str | Path | None = None) -> str:
    """The pseudonymisation salt: ``$MEDGAN_SALT``, else ``salt_file`` (default
    ``default_salt_file()``), created with 64 random hex digits (mode 0600) when absent."""
    from_env = os.environ.get(SALT_ENV, "")
    if from_env:
        if len(from_env) < MIN_SALT_CHARS:
            raise ConfigError(f"${SALT_ENV}: must be at least {MIN_SALT_CHARS} characters long")
        _log.info("pseudonym salt: from $%s", SALT_ENV)
        return from_env
    path = Path(salt_file) if salt_file is not None else default_salt_file()
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    if not path.exists():
        _create_salt_file(path)
    salt = path.read_text().strip()
    if len(salt) < MIN_SALT_CHARS:
        raise ConfigError(f"{path}: salt must be at least {MIN_SALT_CHARS} characters long")
    _log.info("pseudonym salt: from %s", path)
    return salt


def _create_salt_file(path: Path) -> None:
    """Write a new random salt (mode 0600) under a temporary name, then link it into place: a
    killed job never leaves a partial salt, and of two jobs starting together the first wins."""
    fd, tmp = tempfile.mkstemp(prefix=".salt.", dir=path.parent)  # mkstemp creates it 0600
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(secrets.token_hex(32) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.link(tmp, path)
        _log.info("pseudonym salt: created %s (keep it outside the repository; back it up)", path)
    except FileExistsError:
        pass  # another job created it first: everyone reads that one
    finally:
        os.unlink(tmp)


def pseudonym(original_id: str, salt: str) -> str:
    """``sub-`` + 12 hex digits of HMAC-SHA256(salt, original_id): stable, irreversible without the salt."""
    digest = hmac.new(salt.encode(), original_id.encode(), hashlib.sha256).hexdigest()
    return PSEUDONYM_PREFIX + digest[:PSEUDONYM_HEX_DIGITS]


def _link_or_copy(source: Path, destination: Path) -> None:
    destination.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(source, destination)  # the old layout stays whole until the swap; costs no space
    except OSError:
        shutil.copy2(source, destination)


def _safe_suffix(name: str) -> str:
    suffix = Path(name).suffix
    return suffix.lower() if _SAFE_SUFFIX.fullmatch(suffix) else ""


def _place_study_folder(source: Path, destination: Path) -> None:
    """Copy a study folder under neutral names (``d000/f00000.dcm``...): inner folder and file
    names of real studies often hold the patient's name or the series description."""
    folders = sorted({p.parent for p in source.rglob("*") if p.is_file()})
    for d, folder in enumerate(folders):
        files = sorted(p for p in folder.iterdir() if p.is_file())
        for f, path in enumerate(files):
            _link_or_copy(path, destination / f"d{d:03d}" / f"f{f:05d}{_safe_suffix(path.name)}")


def _pseudonymous_path(kind: str, pid: str, source: Path, modality: str) -> str:
    if kind == "partner":
        return f"{PARTNER_FOLDER}/{pid}.nii.gz"
    if source.is_dir():
        return pid
    if modality == "MR":
        return f"{MR_FOLDER}/{pid}{MR_SUFFIX}"
    return f"{pid}{''.join(Path(source.name).suffixes[-2:])}"


def pseudonymise_raw_dataset(raw_dir: str | Path, salt: str) -> dict[str, str]:
    """Rename every subject of a raw dataset (``subjects.tsv`` layout) to its pseudonym, in place
    and atomically; returns original id -> pseudonym (kept in memory only, never written).

    Each subject's image, partner and truth masks are re-placed under pseudonymous names
    (hard links, so no data is copied); CT study folders get neutral inner names. Other files at
    the top (download records, reads.csv) are kept unless their name holds an original id;
    folders no row points to are dropped.
    """
    raw_dir = Path(raw_dir)
    index = raw_dir / SUBJECTS_TSV
    try:
        with open(index, newline="") as handle:
            reader = csv.DictReader(handle, delimiter="\t")
            columns, rows = list(reader.fieldnames or ()), list(reader)
    except OSError as exc:
        raise InputDataError(index, f"cannot be read ({exc.strerror})") from exc
    mapping = {row["subject_id"]: pseudonym(row["subject_id"], salt) for row in rows}
    if len(set(mapping.values())) != len(mapping):
        raise InputDataError(index, "two subject ids share a pseudonym; raise PSEUDONYM_HEX_DIGITS")
    used: set[str] = {SUBJECTS_TSV}
    with atomic_dir(raw_dir) as tmp:
        for row in rows:
            pid = mapping[row["subject_id"]]
            for kind, column in (("image", "path"), ("partner", "partner_path")):
                if not row.get(column):
                    continue
                source = raw_dir / row[column]
                if not source.exists():
                    raise InputDataError(index, f"{column} of one subject does not exist")
                target = _pseudonymous_path(kind, pid, source, row["modality"])
                if source.is_dir():
                    _place_study_folder(source, tmp / target)
                else:
                    _link_or_copy(source, tmp / target)
                used.add(Path(row[column]).parts[0])
                row[column] = target
            for truth in sorted((raw_dir / TRUTH_FOLDER).glob(f"{row['subject_id']}_*")):
                _link_or_copy(truth, tmp / TRUTH_FOLDER / (pid + truth.name[len(row["subject_id"]) :]))
                used.add(TRUTH_FOLDER)
            row["subject_id"] = pid
        dropped = 0
        for entry in sorted(raw_dir.iterdir()):
            if entry.name in used:
                continue
            if entry.is_file() and not any(original in entry.name for original in mapping):
                _link_or_copy(entry, tmp / entry.name)
            else:
                dropped += 1
        with open(tmp / SUBJECTS_TSV, "w", newline="") as handle:
            writer = csv.DictWriter(handle, columns, delimiter="\t", lineterminator="\n")
            writer.writeheader()
            writer.writerows(rows)
    _log.info("pseudonymised %d subjects; %d unreferenced top-level entries left out", len(rows), dropped)
    return mapping


# ---------------------------------------------------------------------------- marker scan


def _png_text(data: bytes) -> Iterator[bytes]:
    """The payloads of a PNG's text chunks (tEXt, zTXt decompressed, iTXt)."""
    position = 8
    while position + 8 <= len(data):
        length = int.from_bytes(data[position : position + 4], "big")
        kind = data[position + 4 : position + 8]
        payload = data[position + 8 : position + 8 + length]
        if kind in _PNG_TEXT_CHUNKS:
            if kind == b"zTXt":
                keyword, _, rest = payload.partition(b"\0")
                with_text = keyword + b" " + _inflate(rest[1:])
                yield with_text
            else:
                yield payload
        position += 12 + length


def _inflate(data: bytes) -> bytes:
    try:
        return zlib.decompress(data)
    except zlib.error:
        return b""


def _decoded_views(data: bytes) -> Iterator[tuple[str, bytes]]:
    """Decompressed content (gzip, bzip2, xz), PNG text chunks, and the content of base64 data URIs."""
    for magic, where, decompress in _COMPRESSED:
        if data.startswith(magic):
            try:
                yield where, decompress(data)
            except (OSError, EOFError, ValueError, zlib.error, lzma.LZMAError):
                pass
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        for text in _png_text(data):
            yield "PNG text chunk", text
    for match in _DATA_URI.finditer(data):
        try:
            yield "base64 data URI", base64.b64decode(match.group(1), validate=False)
        except (binascii.Error, ValueError):
            pass


def _views(path: Path) -> Iterator[tuple[str, bytes]]:
    """The bytes of a file as stored, and what _decoded_views finds in them (one level down
    again, so a PNG or gzip inside a data URI is opened too)."""
    data = path.read_bytes()
    yield "raw", data
    for where, decoded in _decoded_views(data):
        yield where, decoded
        for inner, deeper in _decoded_views(decoded):
            yield f"{where}, {inner}", deeper


@functools.cache
def _encodings() -> tuple[str, ...]:
    """UTF-8, UTF-16 (Windows tools) and every character set a DICOM header may declare
    (pydicom's table: the ISO 8859 family, ISO 2022 Japanese and Korean, GB18030...): a name in a
    Latin-1 or Japanese header is not in its UTF-8 bytes."""
    from pydicom.charset import python_encoding  # only the scan needs it

    return ("utf-8", "utf-16-le", *sorted(set(python_encoding.values())))


def _needles(marker: str) -> frozenset[bytes]:
    """``marker`` in every encoding it can be written in, as written, in lower and in upper case
    (bytes.lower() folds ASCII letters only), lowered like the data it is compared with."""
    found = set()
    for form in {marker, marker.lower(), marker.upper()}:
        for encoding in _encodings():
            with contextlib.suppress(UnicodeError):
                # ISO 2022: a writer may switch back to ASCII (ESC ( B) or to JIS Roman (ESC ( J)
                found.add(form.encode(encoding).removesuffix(_ISO2022_TO_ASCII).lower())
    return frozenset(found)


def find_markers(roots: Iterable[str | Path], markers: Sequence[str]) -> list[tuple[Path, str, str]]:
    """Every (file, marker, where) such that ``marker`` occurs in a file under ``roots``: in its
    bytes as stored (case-insensitive; UTF-8, UTF-16-LE and every DICOM character set),
    decompressed (gzip, bzip2, xz), in a PNG text chunk, or in a base64 data URI (HTML reports)."""
    needles = {m: _needles(m) for m in markers}
    found = []
    for root in roots:
        root = Path(root)
        files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
        for path in files:
            for where, data in _views(path):
                lowered = data.lower()
                found.extend(
                    (path, m, where) for m, codes in needles.items() if any(c in lowered for c in codes)
                )
    return found


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.privacy", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    find = commands.add_parser("pseudonym", help="print the pseudonyms of original ids (needs the salt)")
    find.add_argument("ids", nargs="+")
    scan = commands.add_parser("scan", help="look for identifying strings in outputs before sharing them")
    scan.add_argument("--marker", action="append", required=True, help="a string to look for; repeatable")
    scan.add_argument("paths", nargs="+", type=Path)
    args = parser.parse_args(argv)
    if args.command == "pseudonym":
        salt = load_salt()
        for original in args.ids:
            print(f"{original}\t{pseudonym(original, salt)}")
        return 0
    hits = find_markers(args.paths, args.marker)
    for path, _marker, where in hits:
        print(f"{path}: identifying string found ({where})")  # the marker itself is not repeated
    return 1 if hits else 0


if __name__ == "__main__":
    raise SystemExit(main())
