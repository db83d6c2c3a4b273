"""Extract zip and tar archives without trusting them.

Every member is checked before anything is written: a name that is absolute, climbs with
``..`` or carries a drive letter, and any member that is not a plain file or folder (symlink,
hardlink, device, fifo) makes the whole archive refused. Extraction goes into a temporary
folder beside the target that is renamed only when every member came out intact, so a corrupt
or truncated archive never leaves a half-extracted dataset that looks complete.
"""

from __future__ import annotations

import gzip
import lzma
import re
import stat
import tarfile
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path, PurePosixPath

from pipeline.atomic import atomic_dir
from pipeline.errors import InputDataError
from pipeline.sources.http_fetch import ensure_free_space

ARCHIVE_SUFFIXES = (".zip", ".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tar.xz", ".txz")
JUNK_NAMES = frozenset({"__MACOSX", ".DS_Store", "Thumbs.db"})  # macOS resource forks, Finder/Explorer files
DRIVE_LETTER = re.compile(r"^[A-Za-z]:")
CORRUPT_ERRORS = (
    zipfile.BadZipFile,
    tarfile.TarError,
    zlib.error,
    gzip.BadGzipFile,
    lzma.LZMAError,
    EOFError,
)
TAR_SUFFIXES = ARCHIVE_SUFFIXES[1:]


def is_archive(path: str | Path) -> bool:
    name = Path(path).name.lower()
    return Path(path).is_file() and name.endswith(ARCHIVE_SUFFIXES)


def is_junk(relative: str | Path) -> bool:
    """True for files that archive tools add beside the data (never part of a dataset)."""
    return any(part in JUNK_NAMES or part.startswith("._") for part in PurePosixPath(relative).parts)


def extract_archive(
    archive: str | Path,
    target: str | Path,
    *,
    include: Callable[[str], bool] | None = None,
    free_space_margin_bytes: int = 0,
) -> Path:
    """Extract ``archive`` into ``target`` atomically (``target`` appears only when complete).

    include: keeps only members whose normalised name it accepts (all members are still checked).
    free_space_margin_bytes: disk space to leave free after extraction.
    """
    target = Path(target)
    with atomic_dir(target) as tmp:
        safe_extract(archive, tmp, include=include, free_space_margin_bytes=free_space_margin_bytes)
    return target


def safe_extract(
    archive: str | Path,
    dest: str | Path,
    *,
    include: Callable[[str], bool] | None = None,
    free_space_margin_bytes: int = 0,
) -> list[str]:
    """Extract ``archive`` into the existing folder ``dest``; return the member names written.

    ``dest`` should be a temporary folder the caller discards on error (as ``atomic_dir`` does):
    a corrupt member raises InputDataError part-way through. Junk files (``__MACOSX``,
    ``.DS_Store``) are skipped.
    """
    archive, dest = Path(archive), Path(dest)
    keep = include or (lambda name: True)
    name = archive.name.lower()
    try:
        if name.endswith(".zip") or (not name.endswith(TAR_SUFFIXES) and zipfile.is_zipfile(archive)):
            return _extract_zip(archive, dest, keep, free_space_margin_bytes)
        if name.endswith(TAR_SUFFIXES) or tarfile.is_tarfile(archive):
            return _extract_tar(archive, dest, keep, free_space_margin_bytes)
    except CORRUPT_ERRORS as exc:
        raise InputDataError(archive, f"corrupt or truncated archive ({type(exc).__name__}: {exc})") from exc
    raise InputDataError(archive, "not a zip or tar archive")


def _extract_zip(archive: Path, dest: Path, keep: Callable[[str], bool], margin: int) -> list[str]:
    with zipfile.ZipFile(archive) as zf:
        chosen: list[zipfile.ZipInfo] = []
        for info in zf.infolist():
            name = _checked_name(archive, info.filename)
            mode = info.external_attr >> 16  # Unix st_mode when made on Unix; 0 or bare permissions otherwise
            if stat.S_IFMT(mode) not in (0, stat.S_IFREG, stat.S_IFDIR):
                raise InputDataError(
                    archive, f"refusing member {info.filename!r}: {_kind(mode)}, not a plain file"
                )
            if not info.is_dir() and not is_junk(name) and keep(name):
                chosen.append(info)
        ensure_free_space(dest, sum(i.file_size for i in chosen), f"extracting {archive.name}", margin)
        for info in chosen:
            zf.extract(info, dest)  # reads through the CRC check: a corrupt member raises BadZipFile
    return [_normalised(i.filename) for i in chosen]


def _extract_tar(archive: Path, dest: Path, keep: Callable[[str], bool], margin: int) -> list[str]:
    with tarfile.open(archive, "r:*") as tf:
        chosen: list[tarfile.TarInfo] = []
        for member in tf.getmembers():
            name = _checked_name(archive, member.name)
            if not (member.isreg() or member.isdir()):
                raise InputDataError(
                    archive, f"refusing member {member.name!r}: {_tar_kind(member)}, not a plain file"
                )
            if member.isreg() and not is_junk(name) and keep(name):
                chosen.append(member)
        ensure_free_space(dest, sum(m.size for m in chosen), f"extracting {archive.name}", margin)
        # The "data" filter repeats the path and type checks inside tarfile itself (PEP 706).
        tf.extractall(dest, members=chosen, filter="data")
    return [_normalised(m.name) for m in chosen]


def _normalised(name: str) -> str:
    return str(PurePosixPath(name.replace("\\", "/")))


def _checked_name(archive: Path, name: str) -> str:
    """The member's normalised relative name, or InputDataError if it could escape the target."""
    normalised = name.replace("\\", "/")
    path = PurePosixPath(normalised)
    if not normalised or path.is_absolute() or DRIVE_LETTER.match(normalised):
        raise InputDataError(
            archive, f"refusing member {name!r}: absolute path, would be written outside the target"
        )
    if ".." in path.parts:
        raise InputDataError(archive, f"refusing member {name!r}: '..' would climb out of the target")
    return str(path)


def _kind(mode: int) -> str:
    if stat.S_ISLNK(mode):
        return "a symbolic link"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    return "a special file"


def _tar_kind(member: tarfile.TarInfo) -> str:
    if member.issym():
        return "a symbolic link"
    if member.islnk():
        return "a hard link"
    if member.isdev():
        return "a device or fifo"
    return "a special file"
