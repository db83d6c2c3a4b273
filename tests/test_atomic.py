import json

import pytest

from pipeline.atomic import atomic_dir, atomic_path, write_json


def test_atomic_path_keeps_old_file_on_failure(tmp_path):
    target = tmp_path / "out.nii.gz"
    target.write_text("good")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            assert tmp.name.endswith(".nii.gz") and tmp.parent == tmp_path
            tmp.write_text("half")
            raise RuntimeError("killed")
    assert target.read_text() == "good"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.nii.gz"]


def test_atomic_dir_swaps_only_when_complete(tmp_path):
    target = tmp_path / "raw"
    with atomic_dir(target) as tmp:
        (tmp / "a.txt").write_text("1")
    with pytest.raises(ValueError):
        with atomic_dir(target) as tmp:
            (tmp / "b.txt").write_text("2")
            raise ValueError
    assert [p.name for p in target.iterdir()] == ["a.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["raw"]


def test_write_json_refuses_nan(tmp_path):
    with pytest.raises(ValueError):
        write_json(tmp_path / "m.json", {"x": float("nan")})
    assert not (tmp_path / "m.json").exists()
    write_json(tmp_path / "m.json", {"x": 1})
    assert json.loads((tmp_path / "m.json").read_text()) == {"x": 1}


def test_files_inside_an_atomic_dir_are_flushed_once_with_the_folder_not_one_by_one(tmp_path, monkeypatch):
    """durable=False skips the per-file fsync; atomic_dir(flush=True) flushes its file system once
    before the swap, so a folder swapped in is on disk; a plain atomic_path still fsyncs its file."""
    import os

    from pipeline import atomic

    events = []
    monkeypatch.setattr(os, "fsync", lambda fd: events.append("fsync"))
    monkeypatch.setattr(atomic, "flush_file_system", lambda path: events.append(
        ("sync", (tmp_path / "dataset").exists(), sorted(p.name for p in folder.iterdir()))))
    with atomic_dir(tmp_path / "dataset", flush=True) as folder:
        for index in range(3):
            with atomic_path(folder / f"{index}.dcm", durable=False) as tmp:
                tmp.write_bytes(b"x")
    assert events == [("sync", False, ["0.dcm", "1.dcm", "2.dcm"])]  # once, all files written, before the swap
    assert sorted(p.name for p in (tmp_path / "dataset").iterdir()) == ["0.dcm", "1.dcm", "2.dcm"]
    events.clear()
    write_json(tmp_path / "alone.json", {"a": 1})
    assert events == ["fsync"]


def test_flush_file_system_uses_syncfs_on_linux_not_a_machine_wide_sync(tmp_path, monkeypatch):
    """On Linux the flush is syncfs of the folder's own file system: os.sync (every mount of a
    shared machine, which a stale network mount can hang) must not be reached."""
    import os
    import sys

    from pipeline.atomic import flush_file_system

    if not sys.platform.startswith("linux"):
        pytest.skip("syncfs is Linux's")

    def machine_wide():
        raise AssertionError("os.sync called: syncfs failed or was not tried")

    monkeypatch.setattr(os, "sync", machine_wide)
    (tmp_path / "a.txt").write_text("x")
    flush_file_system(tmp_path)
