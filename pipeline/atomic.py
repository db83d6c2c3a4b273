"""Crash-safe writes: every output is written under a temporary name and renamed into place.

A killed job therefore never leaves a half-written file that looks complete, and a good
result is only replaced once its successor is fully on disk (os.replace is atomic on POSIX
within one file system, which is why the temporary lives beside the target).
"""
from __future__ import annotations

import contextlib
import ctypes
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator

_UMASK = os.umask(0)
os.umask(_UMASK)


@contextlib.contextmanager
def atomic_path(target: str | Path, suffix: str | None = None, durable: bool = True) -> Iterator[Path]:
    """Yield a temporary file path beside ``target``; rename it onto ``target`` on success.

    The temporary keeps ``target``'s suffixes (``.nii.gz``, ``.npz``...) unless ``suffix`` is
    given, so libraries that pick a format from the file name write the right one.
    On any exception the temporary is removed and ``target`` is left untouched.
    ``durable``: fsync the file before the rename. False only for files inside an
    ``atomic_dir(..., flush=True)`` being built, which flushes its file system once before the
    folder is swapped in (720 fsyncs of a dataset's DICOM files cost ~7 s of waiting).
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    suffix = "".join(target.suffixes) if suffix is None else suffix
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name.split('.')[0]}.", suffix=".tmp" + suffix, dir=target.parent)
    os.fchmod(fd, 0o666 & ~_UMASK)  # mkstemp makes 0600; outputs get the usual permissions
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        if durable:
            with open(tmp_path, "rb") as fh:
                os.fsync(fh.fileno())
        os.replace(tmp_path, target)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def atomic_dir(target: str | Path, flush: bool = False) -> Iterator[Path]:
    """Yield a temporary directory beside ``target``; swap it into place on success.

    An existing ``target`` is replaced only after the new one is complete. ``flush``: first flush
    the file system holding it (:func:`flush_file_system`, once for the whole tree), for trees whose
    files were written with ``atomic_path(..., durable=False)``.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    # No dot before the random part: a folder named ".x.h5k2....tmp" would make antsRegistration
    # write a warp field as a transform file (pipeline.preprocess.register.ANTS_PATH_TRIGGERS).
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", suffix=".tmp", dir=target.parent))
    tmp.chmod(0o777 & ~_UMASK)
    try:
        yield tmp
        if flush:
            flush_file_system(tmp)
        if target.exists():
            old = target.with_name(f".{target.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(target, old)
            os.replace(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def flush_file_system(path: Path) -> None:
    """Write the file system holding ``path`` to disk: Linux's syncfs (that file system only, not
    every mount of a shared machine, which a stale network mount could hang), else os.sync."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fd = os.open(path, os.O_RDONLY)
        try:
            if libc.syncfs(fd) == 0:
                return
        finally:
            os.close(fd)
    except (OSError, AttributeError):  # no syncfs in this C library (macOS)
        pass
    os.sync()


def write_json(target: str | Path, obj: Any) -> None:
    """Write ``obj`` as pretty, key-sorted JSON, atomically."""
    with atomic_path(target) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, allow_nan=False) + "\n")


def write_text(target: str | Path, text: str) -> None:
    with atomic_path(target) as tmp:
        tmp.write_text(text)
