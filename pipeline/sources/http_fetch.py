"""Safe HTTP downloads for multi-gigabyte datasets over links that drop.

A file is streamed into ``<target>.part``; a broken connection is retried with exponential
backoff and resumed with an HTTP Range request from the bytes already on disk, so a 4 GB
archive never restarts from zero. Only once the whole file is there and its SHA-256 matches is
the ``.part`` renamed onto ``<target>``: a file under the final name is always complete and
verified. (The ``.part`` is deliberately not an ``atomic_path`` temporary: that one is deleted on
failure, and a resumable download must keep what it has.)

Credentials travel only in the ``auth`` argument (HTTP basic auth headers); they never appear in
URLs, log lines or error messages.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
import shutil
import time
import urllib.parse
from pathlib import Path

import requests
from tqdm import tqdm

from pipeline.hashing import file_sha256
from pipeline.errors import PipelineError
from pipeline.progress import ProgressLines, progress_counter

log = logging.getLogger(__name__)

RETRY_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
SHA256_HEX = re.compile(r"[0-9a-f]{8,64}")


class DownloadError(PipelineError):
    """A download failed in a way that retrying will not fix."""


class OfflineError(DownloadError):
    """The server could not be reached at all: most likely this machine has no internet."""


class ChecksumError(DownloadError):
    """The downloaded bytes are not the expected file; nothing was kept under the final name."""


class HTTPStatusError(DownloadError):
    """The server answered with an error status (kept apart so callers can explain 401 / 403)."""

    def __init__(self, url: str, status: int, reason: str):
        self.status = status
        super().__init__(f"{redact_url(url)}: the server answered HTTP {status} {reason}".rstrip())


class InsufficientSpaceError(PipelineError):
    """Not enough free disk space to write what is about to be written."""


@dataclasses.dataclass(frozen=True)
class FetchSettings:
    """How hard a download tries, and how it reports.

    retries: extra attempts after the first (each resumes where the last stopped).
    backoff_s: wait before the first retry; doubles at every further retry.
    timeout_s: connect timeout and the longest silence tolerated while reading.
    chunk_bytes: read size while streaming to disk.
    free_space_margin_bytes: free space to leave on the disk after the file is written.
    progress: True for a tqdm bar, False for a log line with bytes done and the ETA every
        ``progress_interval_s``, None to choose as pipeline.progress does (a bar on a terminal,
        lines off it or with CI set; MEDGAN_PROGRESS=bar|lines|off overrides).
    progress_interval_s: seconds between two progress log lines.
    """

    retries: int = 4
    backoff_s: float = 2.0
    timeout_s: float = 30.0
    chunk_bytes: int = 1 << 20
    free_space_margin_bytes: int = 1 << 30
    progress: bool | None = None
    progress_interval_s: float = 30.0


DEFAULT_SETTINGS = FetchSettings()


class _Transient(Exception):
    """A failure worth retrying (dropped connection, short body, 5xx)."""


def redact_url(url: str) -> str:
    """The URL without user:password@ or query string, safe to print (signed URLs carry tokens)."""
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urllib.parse.urlunsplit((parts.scheme, host, parts.path, "", ""))


def sha256_matches(digest: str, expected: str | None) -> bool:
    """True when ``expected`` is None, the full digest, or a prefix of it (torch hub file names)."""
    return expected is None or digest.startswith(expected.lower())


def ensure_free_space(directory: str | Path, needed_bytes: int, what: str, margin_bytes: int) -> None:
    """Refuse to start writing ``needed_bytes`` into ``directory`` unless they fit with a margin."""
    free = shutil.disk_usage(directory).free
    if needed_bytes + margin_bytes > free:
        raise InsufficientSpaceError(
            f"{what} needs {_human(needed_bytes)} but {directory} has only {_human(free)} free "
            f"(keeping {_human(margin_bytes)} spare); free some space or choose another folder"
        )


def fetch(
    url: str,
    target: str | Path,
    *,
    sha256: str | None = None,
    auth: tuple[str, str] | None = None,
    settings: FetchSettings = DEFAULT_SETTINGS,
    session: requests.Session | None = None,
) -> str:
    """Download ``url`` to ``target`` (resumable, verified) and return the file's SHA-256.

    ``sha256`` is the expected hex digest or a prefix of at least 8 digits; None accepts any
    content (the caller records the returned digest). An existing ``target`` that matches is
    reused without touching the network. On a mismatch the partial file is deleted and
    ChecksumError raised, so the next attempt starts clean.
    """
    if sha256 is not None and not SHA256_HEX.fullmatch(sha256.lower()):
        raise ValueError(f"expected SHA-256 must be 8 to 64 hex digits, got {sha256!r}")
    target = Path(target)
    if target.exists():
        digest = file_sha256(target, settings.chunk_bytes)
        if sha256_matches(digest, sha256):
            log.info("%s: already downloaded and verified", target)
            return digest
        log.warning("%s does not match the expected SHA-256; downloading it again", target)
        target.unlink()
    target.parent.mkdir(parents=True, exist_ok=True)
    part = target.with_name(target.name + ".part")

    own_session = session is None
    session = session or requests.Session()
    try:
        _download_with_retries(session, url, part, auth, settings)
    finally:
        if own_session:
            session.close()

    digest = file_sha256(part, settings.chunk_bytes)
    if not sha256_matches(digest, sha256):
        part.unlink()
        raise ChecksumError(
            f"{redact_url(url)}: SHA-256 {digest} does not match the expected {sha256}; "
            "the download was discarded (a corrupt transfer, or the provider changed the file)"
        )
    with open(part, "rb") as fh:
        os.fsync(fh.fileno())
    os.replace(part, target)
    log.info("%s: saved (%s, sha256 %s)", target, _human(target.stat().st_size), digest)
    return digest


def _download_with_retries(
    session: requests.Session, url: str, part: Path, auth: tuple[str, str] | None, settings: FetchSettings
) -> None:
    """Run the attempts; a transient failure waits backoff_s * 2**attempt and resumes."""
    got_response = False
    for attempt in range(settings.retries + 1):
        try:
            _download_once(session, url, part, auth, settings)
            return
        except (
            requests.ConnectionError,
            requests.Timeout,
            requests.exceptions.ChunkedEncodingError,
            _Transient,
        ) as exc:
            got_response = got_response or not _is_connect_failure(exc)
            reason = _short_reason(exc)
            if attempt == settings.retries:
                if not got_response:
                    raise OfflineError(
                        f"cannot reach {redact_url(url)} ({reason}): this machine seems offline or the "
                        "server is down; download the file elsewhere and use the local source instead "
                        "(params: source: local, local_path: <file or folder>; "
                        "CLI: --source local --local-path PATH)"
                    ) from None
                kept = part.stat().st_size if part.exists() else 0
                raise DownloadError(
                    f"{redact_url(url)}: gave up after {attempt + 1} attempts ({reason}); "
                    f"{_human(kept)} kept in {part}, the next run resumes from there"
                ) from None
            wait = settings.backoff_s * 2**attempt
            log.warning(
                "%s: %s; retry %d of %d in %.1f s",
                redact_url(url),
                reason,
                attempt + 1,
                settings.retries,
                wait,
            )
            time.sleep(wait)


def _download_once(
    session: requests.Session, url: str, part: Path, auth: tuple[str, str] | None, settings: FetchSettings
) -> None:
    """One GET that appends to ``part`` from its current size (Range) or rewrites it (200)."""
    offset = part.stat().st_size if part.exists() else 0
    headers = {"Range": f"bytes={offset}-"} if offset else {}
    with session.get(url, headers=headers, auth=auth, stream=True, timeout=settings.timeout_s) as response:
        if response.status_code == 416 and offset:
            if _content_range_total(response) == offset:
                return  # the previous attempt had already received every byte
            part.unlink()
            raise _Transient("the partial file is longer than the remote file; restarting")
        if response.status_code in RETRY_STATUSES:
            raise _Transient(f"HTTP {response.status_code} {response.reason}")
        if response.status_code >= 400:
            raise HTTPStatusError(url, response.status_code, response.reason or "")
        if response.status_code == 206:
            start = _content_range_start(response)
            if start != offset:
                part.unlink(missing_ok=True)
                raise _Transient(f"the server resumed at byte {start}, not {offset}; restarting")
        else:
            offset = 0  # the server ignored the Range header and sends the whole file
        remaining = int(response.headers["Content-Length"]) if "Content-Length" in response.headers else None
        if remaining is not None:
            ensure_free_space(part.parent, remaining, redact_url(url), settings.free_space_margin_bytes)
        total = offset + remaining if remaining is not None else None
        if offset:
            log.info("%s: resuming at %s of %s", redact_url(url), _human(offset), _human(total))
        else:
            log.info("%s: downloading %s to %s", redact_url(url), _human(total), part)
        with (
            open(part, "ab" if offset else "wb") as fh,
            _progress_bar(part.name, total, offset, settings) as bar,
        ):
            for block in response.iter_content(chunk_size=settings.chunk_bytes):
                fh.write(block)
                bar.update(len(block))
        received = part.stat().st_size
        if total is not None and received != total:
            raise _Transient(f"connection closed after {received} of {total} bytes")


def _progress_bar(name: str, total: int | None, initial: int, settings: FetchSettings) -> tqdm | ProgressLines:
    """Bytes received so far, as a bar or periodic ETA lines (see FetchSettings.progress)."""
    mode = {True: "bar", False: "lines", None: None}[settings.progress]
    counter = progress_counter(name, total, unit="B", unit_scale=True, initial=initial, mode=mode,
                               interval_s=settings.progress_interval_s)
    return counter if counter is not None else tqdm(disable=True)


def _content_range_start(response: requests.Response) -> int | None:
    match = re.match(r"bytes (\d+)-\d+/", response.headers.get("Content-Range", ""))
    return int(match.group(1)) if match else None


def _content_range_total(response: requests.Response) -> int | None:
    match = re.match(r"bytes [^/]+/(\d+)", response.headers.get("Content-Range", ""))
    return int(match.group(1)) if match else None


CONNECT_FAILURES = frozenset(
    {"NewConnectionError", "NameResolutionError", "ConnectionRefusedError", "gaierror"}
)


def _is_connect_failure(exc: BaseException) -> bool:
    """True when no connection was ever made (refused, DNS failure, connect timeout)."""
    if isinstance(exc, requests.exceptions.ConnectTimeout):
        return True
    if isinstance(exc, requests.exceptions.ChunkedEncodingError) or not isinstance(
        exc, requests.ConnectionError
    ):
        return False
    return bool(CONNECT_FAILURES & _cause_chain_names(exc))


def _cause_chain_names(exc: BaseException) -> set[str]:
    """Class names of everything that led to ``exc`` (urllib3 nests its causes in args and .reason)."""
    names: set[str] = set()
    seen: set[int] = set()
    stack: list[BaseException] = [exc]
    while stack:
        current = stack.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        names.add(type(current).__name__)
        linked = [current.__cause__, current.__context__, getattr(current, "reason", None), *current.args]
        stack.extend(e for e in linked if isinstance(e, BaseException))
    return names


def _short_reason(exc: BaseException) -> str:
    names = _cause_chain_names(exc)
    if "NameResolutionError" in names or "gaierror" in names:
        return "the host name did not resolve"
    if "ConnectionRefusedError" in names:
        return "connection refused"
    if isinstance(exc, requests.Timeout) or "TimeoutError" in names:
        return "timed out"
    if isinstance(exc, _Transient):
        return str(exc)
    if isinstance(exc, requests.exceptions.ChunkedEncodingError) or "ProtocolError" in names:
        return "connection dropped mid-transfer"
    return type(exc).__name__


def _human(n_bytes: int | None) -> str:
    if n_bytes is None:
        return "unknown size"
    if n_bytes < 1024:
        return f"{n_bytes} B"
    size = n_bytes / 1024
    for unit in ("KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            break
        size /= 1024
    return f"{size:.1f} {unit}"
