"""Resumable, verified downloads against a real HTTP server on 127.0.0.1."""

from __future__ import annotations

import hashlib
from collections import namedtuple

import numpy as np
import pytest

from pipeline.sources import http_fetch
from pipeline.sources.http_fetch import (
    ChecksumError,
    HTTPStatusError,
    InsufficientSpaceError,
    OfflineError,
    fetch,
    redact_url,
)

PAYLOAD = np.random.default_rng(7).integers(0, 256, 200_000, dtype=np.uint8).tobytes()
PAYLOAD_SHA = hashlib.sha256(PAYLOAD).hexdigest()


def test_clean_download_is_verified_and_leaves_no_part_file(server, tmp_path, fast):
    url = server.add("/data/IXI-T2.tar", PAYLOAD)
    target = tmp_path / "cache" / "IXI-T2.tar"

    digest = fetch(url, target, sha256=PAYLOAD_SHA, settings=fast)

    assert digest == PAYLOAD_SHA
    assert target.read_bytes() == PAYLOAD
    assert not (tmp_path / "cache" / "IXI-T2.tar.part").exists()
    assert [s.range for s in server.requests_for("/data/IXI-T2.tar")] == [None]


def test_dropped_connection_is_resumed_with_a_range_request(server, tmp_path, fast):
    url = server.add("/big.zip", PAYLOAD, drop_after=80_000)
    target = tmp_path / "big.zip"

    digest = fetch(url, target, sha256=PAYLOAD_SHA, settings=fast)

    first, resumed = server.requests_for("/big.zip")
    assert first.range is None
    # The retry asks only for what is missing: it starts after the bytes already on disk (the
    # read that hit the drop may lose its last partial chunk, never more).
    start = int(resumed.range.removeprefix("bytes=").rstrip("-"))
    assert 80_000 - fast.chunk_bytes < start <= 80_000
    assert digest == PAYLOAD_SHA
    assert target.read_bytes() == PAYLOAD


def test_part_file_left_by_an_earlier_run_is_resumed(server, tmp_path, fast):
    url = server.add("/big.zip", PAYLOAD)
    target = tmp_path / "big.zip"
    (tmp_path / "big.zip.part").write_bytes(PAYLOAD[:123_456])

    assert fetch(url, target, sha256=PAYLOAD_SHA, settings=fast) == PAYLOAD_SHA

    assert [s.range for s in server.requests_for("/big.zip")] == ["bytes=123456-"]
    assert target.read_bytes() == PAYLOAD


def test_server_ignoring_range_restarts_from_zero(server, tmp_path, fast):
    url = server.add("/big.zip", PAYLOAD, ignore_range=True)
    (tmp_path / "big.zip.part").write_bytes(b"x" * 5000)

    fetch(url, tmp_path / "big.zip", sha256=PAYLOAD_SHA, settings=fast)

    assert (tmp_path / "big.zip").read_bytes() == PAYLOAD


def test_checksum_mismatch_keeps_nothing(server, tmp_path, fast):
    url = server.add("/weights.pth", PAYLOAD)
    target = tmp_path / "weights.pth"
    wrong = hashlib.sha256(b"another file").hexdigest()

    with pytest.raises(ChecksumError, match="does not match the expected"):
        fetch(url, target, sha256=wrong, settings=fast)

    assert not target.exists()
    assert not (tmp_path / "weights.pth.part").exists()


def test_hash_prefix_is_accepted_like_torch_hub_names(server, tmp_path, fast):
    url = server.add("/resnet.pth", PAYLOAD)
    assert fetch(url, tmp_path / "resnet.pth", sha256=PAYLOAD_SHA[:8], settings=fast) == PAYLOAD_SHA
    with pytest.raises(ChecksumError):
        fetch(url, tmp_path / "other.pth", sha256="00000000", settings=fast)


def test_verified_file_already_there_is_reused_without_a_request(server, tmp_path, fast):
    url = server.add("/a.tar", PAYLOAD)
    target = tmp_path / "a.tar"
    target.write_bytes(PAYLOAD)

    assert fetch(url, target, sha256=PAYLOAD_SHA, settings=fast) == PAYLOAD_SHA
    assert server.seen == []


def test_connection_refused_gives_one_line_offline_error(refused_url, tmp_path, fast):
    with pytest.raises(OfflineError) as raised:
        fetch(refused_url, tmp_path / "IXI-T2.tar", settings=fast)

    message = str(raised.value)
    assert "\n" not in message
    assert refused_url in message
    assert "offline" in message
    assert "--source local --local-path" in message
    assert not (tmp_path / "IXI-T2.tar").exists()


def test_server_errors_are_retried_then_succeed(server, tmp_path, fast):
    url = server.add("/flaky.bin", PAYLOAD, statuses_first=[503, 500])
    assert fetch(url, tmp_path / "flaky.bin", settings=fast) == PAYLOAD_SHA
    assert len(server.requests_for("/flaky.bin")) == 3


def test_not_found_is_not_retried(server, tmp_path, fast):
    with pytest.raises(HTTPStatusError) as raised:
        fetch(server.url("/missing.zip"), tmp_path / "missing.zip", settings=fast)
    assert raised.value.status == 404
    assert len(server.requests_for("/missing.zip")) == 1


def test_disk_space_is_checked_before_writing(server, tmp_path, fast, monkeypatch):
    url = server.add("/big.zip", PAYLOAD)
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(http_fetch.shutil, "disk_usage", lambda path: usage(10**9, 10**9 - 1000, 1000))

    with pytest.raises(InsufficientSpaceError, match="only 1000 B free"):
        fetch(url, tmp_path / "big.zip", settings=fast)

    assert not (tmp_path / "big.zip").exists()
    assert not (tmp_path / "big.zip.part").exists()


def test_redact_url_drops_userinfo_and_query():
    assert (
        redact_url("https://user:secret@host.org:8443/a/b.zip?token=abc") == "https://host.org:8443/a/b.zip"
    )


def test_progress_is_log_lines_not_a_bar_when_ci_is_set(monkeypatch, caplog):
    monkeypatch.setenv("CI", "true")
    monkeypatch.delenv("MEDGAN_PROGRESS", raising=False)
    caplog.set_level("INFO", logger="pipeline.progress")
    with http_fetch._progress_bar("x.zip", 4 << 20, 1 << 20, http_fetch.FetchSettings()) as bar:
        bar.update(3 << 20)
    assert not hasattr(bar, "disable")  # not a tqdm bar
    assert "x.zip: 4.0 MiB/4.0 MiB (100%)" in caplog.text and "ETA" in caplog.text
