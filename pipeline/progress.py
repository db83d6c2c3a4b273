"""Progress on long loops: a tqdm bar on a terminal, one log line per interval elsewhere.

Snakemake writes each rule's output to `logs/...`, and CI captures stdout: a bar redrawn with
carriage returns turns those into unreadable walls, so off a terminal (or with ``CI`` set, or
``MEDGAN_PROGRESS=lines``) the same loop logs ``desc: done/total (pct) elapsed, ETA`` at most
once per ``interval_s``. ``MEDGAN_PROGRESS=bar`` forces the bar, ``off`` silences both.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Iterable, Iterator
from typing import TypeVar

from tqdm import tqdm

T = TypeVar("T")
log = logging.getLogger("pipeline.progress")


def progress_mode() -> str:
    """'bar', 'lines' or 'off', from ``MEDGAN_PROGRESS``, else from the terminal and ``CI``."""
    forced = os.environ.get("MEDGAN_PROGRESS", "").strip().lower()
    if forced in {"bar", "lines", "off"}:
        return forced
    if os.environ.get("CI") or not sys.stderr.isatty():
        return "lines"
    return "bar"


def _format_seconds(seconds: float) -> str:
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


class ProgressLines:
    """Counts completed units and logs a line at most every ``interval_s`` (and at the end)."""

    def __init__(self, desc: str, total: int | None, unit: str, interval_s: float) -> None:
        self.desc, self.total, self.unit, self.interval_s = desc, total, unit, interval_s
        self.done = 0
        self.start = time.monotonic()
        self.last_logged = self.start

    def update(self, n: int = 1) -> None:
        self.done += n
        now = time.monotonic()
        if now - self.last_logged >= self.interval_s or self.done == self.total:
            self.last_logged = now
            log.info(self.line(now))

    def line(self, now: float) -> str:
        elapsed = now - self.start
        if self.total:
            rate = self.done / elapsed if elapsed > 0 else 0.0
            eta = (self.total - self.done) / rate if rate > 0 else float("nan")
            eta_text = _format_seconds(eta) if eta == eta else "?"
            return (
                f"{self.desc}: {self.done}/{self.total} {self.unit} "
                f"({100 * self.done / self.total:.0f}%) elapsed {_format_seconds(elapsed)}, "
                f"ETA {eta_text}"
            )
        return f"{self.desc}: {self.done} {self.unit} elapsed {_format_seconds(elapsed)}"

    def close(self) -> None:
        """Nothing to release; present so callers treat both modes alike."""


def progress_counter(
    desc: str, total: int | None = None, *, unit: str = "it", interval_s: float = 30.0
) -> tqdm | ProgressLines | None:
    """A counter with ``update(n)`` and ``close()`` for loops that are not plain iterables."""
    mode = progress_mode()
    if mode == "off":
        return None
    if mode == "bar":
        return tqdm(total=total, desc=desc, unit=unit, dynamic_ncols=True)
    return ProgressLines(desc, total, unit, interval_s)


def progress(
    items: Iterable[T],
    desc: str,
    *,
    total: int | None = None,
    unit: str = "it",
    interval_s: float = 30.0,
) -> Iterator[T]:
    """Yield ``items`` while showing progress (bar or periodic log lines, see the module doc)."""
    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    counter = progress_counter(desc, total, unit=unit, interval_s=interval_s)
    try:
        for item in items:
            yield item
            if counter is not None:
                counter.update(1)
    finally:
        if counter is not None:
            counter.close()
