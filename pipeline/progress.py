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


def _format_amount(amount: float, unit: str, unit_scale: bool) -> str:
    """``123 step``, or with ``unit_scale`` binary prefixes as tqdm shows bytes: ``1.5 MiB``."""
    if not unit_scale:
        return f"{amount:g} {unit}"
    for prefix in ("", "Ki", "Mi", "Gi", "Ti"):
        if abs(amount) < 1024 or prefix == "Ti":
            return f"{amount:.0f} {unit}" if not prefix else f"{amount:.1f} {prefix}{unit}"
        amount /= 1024
    raise AssertionError("unreachable")


class ProgressLines:
    """Counts completed units and logs a line at most every ``interval_s`` (and at the end).

    ``initial`` units were done before (a resumed download): they count toward the total but not
    toward the rate the ETA is computed from.
    """

    def __init__(self, desc: str, total: int | None, unit: str, interval_s: float, *,
                 unit_scale: bool = False, initial: int = 0) -> None:
        self.desc, self.total, self.unit, self.interval_s = desc, total, unit, interval_s
        self.unit_scale = unit_scale
        self.initial = self.done = initial
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
        done = _format_amount(self.done, self.unit, self.unit_scale)
        if self.total:
            rate = (self.done - self.initial) / elapsed if elapsed > 0 else 0.0
            eta = (self.total - self.done) / rate if rate > 0 else float("nan")
            eta_text = _format_seconds(eta) if eta == eta else "?"
            total = _format_amount(self.total, self.unit, self.unit_scale)
            done = done if self.unit_scale else f"{self.done:g}"  # "1.0 MiB/2.0 GiB", "3/10 subject"
            return (f"{self.desc}: {done}/{total} ({100 * self.done / self.total:.0f}%) "
                    f"elapsed {_format_seconds(elapsed)}, ETA {eta_text}")
        return f"{self.desc}: {done} elapsed {_format_seconds(elapsed)}"

    def close(self) -> None:
        """Nothing to release; present so callers treat both modes alike."""

    def __enter__(self) -> "ProgressLines":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def progress_counter(
    desc: str, total: int | None = None, *, unit: str = "it", interval_s: float = 30.0,
    unit_scale: bool = False, initial: int = 0, mode: str | None = None,
) -> tqdm | ProgressLines | None:
    """A counter with ``update(n)`` and ``close()`` (also a context manager) for loops that are not
    plain iterables; None when progress is off. ``unit_scale`` shows amounts with binary prefixes
    (bytes), ``initial`` units are already done, ``mode`` overrides :func:`progress_mode`."""
    mode = mode or progress_mode()
    if mode == "off":
        return None
    if mode == "bar":
        return tqdm(total=total, initial=initial, desc=desc, unit=unit, unit_scale=unit_scale,
                    unit_divisor=1024 if unit_scale else 1000, dynamic_ncols=True)
    return ProgressLines(desc, total, unit, interval_s, unit_scale=unit_scale, initial=initial)


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
