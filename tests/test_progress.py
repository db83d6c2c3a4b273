"""Progress display: a bar on a terminal, ETA log lines off it or in CI, silence when asked."""
from __future__ import annotations

import logging

import pytest
from tqdm import tqdm

from pipeline import progress as progress_module
from pipeline.progress import ProgressLines, progress, progress_counter, progress_mode


class Clock:
    """A monotonic clock the test moves by hand (no sleeping, no timing assumptions)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch) -> Clock:
    fake = Clock()
    monkeypatch.setattr(progress_module.time, "monotonic", fake)
    return fake


@pytest.fixture
def lines(caplog):
    caplog.set_level(logging.INFO, logger="pipeline.progress")
    return caplog


def test_mode_follows_the_environment(monkeypatch):
    monkeypatch.delenv("MEDGAN_PROGRESS", raising=False)
    monkeypatch.setenv("CI", "true")
    assert progress_mode() == "lines"
    monkeypatch.delenv("CI")
    monkeypatch.setattr(progress_module.sys.stderr, "isatty", lambda: False)
    assert progress_mode() == "lines"  # a Snakemake log file, a pipe
    monkeypatch.setattr(progress_module.sys.stderr, "isatty", lambda: True)
    assert progress_mode() == "bar"
    monkeypatch.setenv("MEDGAN_PROGRESS", "off")
    assert progress_mode() == "off"


def test_lines_mode_logs_once_per_interval_with_eta(monkeypatch, clock, lines):
    monkeypatch.setenv("MEDGAN_PROGRESS", "lines")
    seen = []
    for item in progress(range(10), "phantoms", unit="subject", interval_s=30):
        seen.append(item)
        clock.now += 10  # each subject takes 10 s
    assert seen == list(range(10))
    messages = [r.getMessage() for r in lines.records]
    # after 3 subjects (30 s), 6 (60 s), 9 (90 s) and at the end, never more often
    assert messages == [
        "phantoms: 3/10 subject (30%) elapsed 0:30, ETA 1:10",
        "phantoms: 6/10 subject (60%) elapsed 1:00, ETA 0:40",
        "phantoms: 9/10 subject (90%) elapsed 1:30, ETA 0:10",
        "phantoms: 10/10 subject (100%) elapsed 1:40, ETA 0:00",
    ]


def test_lines_mode_bytes_count_a_resumed_start_but_not_in_the_rate(clock, lines):
    counter = progress_counter("scan.zip", 4 << 20, unit="B", unit_scale=True, initial=2 << 20,
                               interval_s=5, mode="lines")
    assert isinstance(counter, ProgressLines)
    clock.now += 10
    counter.update(1 << 20)  # 1 MiB in 10 s: 1 MiB still to go takes 10 s more
    assert lines.records[-1].getMessage() == "scan.zip: 3.0 MiB/4.0 MiB (75%) elapsed 0:10, ETA 0:10"


def test_unknown_total_logs_the_count_without_eta(clock, lines):
    counter = progress_counter("files", None, unit="file", interval_s=1, mode="lines")
    clock.now += 2
    counter.update(5)
    assert lines.records[-1].getMessage() == "files: 5 file elapsed 0:02"


def test_off_mode_is_silent(monkeypatch, clock, lines, capsys):
    monkeypatch.setenv("MEDGAN_PROGRESS", "off")
    assert progress_counter("x", 3) is None
    for _ in progress(range(3), "quiet", interval_s=0):
        clock.now += 100
    assert lines.records == []
    assert capsys.readouterr() == ("", "")


def test_bar_mode_is_a_tqdm_bar_that_counts(monkeypatch):
    monkeypatch.setenv("MEDGAN_PROGRESS", "bar")
    counter = progress_counter("bar", 4, unit="step")
    assert isinstance(counter, tqdm) and counter.total == 4
    counter.update(3)
    assert counter.n == 3
    counter.close()
