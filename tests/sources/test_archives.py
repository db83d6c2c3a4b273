"""Archive extraction refuses members that escape the target and never leaves half a dataset."""

from __future__ import annotations

import io
import stat
import tarfile
import zipfile
from pathlib import Path

import pytest

from pipeline.errors import InputDataError
from pipeline.sources.archives import extract_archive

MEMBERS = {"IXI-T2/IXI002-Guys-0828-T2.nii.gz": b"a" * 3000, "IXI-T2/IXI012-HH-1211-T2.nii.gz": b"b" * 5000}


def _leftovers(folder: Path) -> list[str]:
    """Temporary folders atomic_dir would leave behind if it failed to clean up."""
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


@pytest.mark.parametrize("kind", ["zip", "tar", "tar.gz"])
def test_clean_archive_is_extracted_whole(kind, build, write, tmp_path):
    members = {**MEMBERS, "__MACOSX/IXI-T2/._IXI002-Guys-0828-T2.nii.gz": b"resource fork"}
    data = build.zip(members) if kind == "zip" else build.tar(members, "gz" if kind == "tar.gz" else "")
    archive = write(f"IXI-T2.{kind}", data)

    target = extract_archive(archive, tmp_path / "out" / "ixi")

    written = {str(p.relative_to(target)): p.read_bytes() for p in target.rglob("*") if p.is_file()}
    assert written == MEMBERS
    assert _leftovers(tmp_path / "out") == []


def test_include_keeps_only_chosen_members(build, write, tmp_path):
    archive = write("a.zip", build.zip(MEMBERS))
    target = extract_archive(archive, tmp_path / "out", include=lambda name: "HH" in name)
    assert [p.name for p in target.rglob("*.nii.gz")] == ["IXI012-HH-1211-T2.nii.gz"]


def _tar_with(member: tarfile.TarInfo, data: bytes = b"") -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tf:
        good = tarfile.TarInfo("ok/first.dcm")
        good.size = 4
        tf.addfile(good, io.BytesIO(b"DICM"))
        member.size = len(data) if member.isreg() else 0
        tf.addfile(member, io.BytesIO(data) if member.isreg() else None)
    return buffer.getvalue()


def _tar_member(name: str, kind: bytes = tarfile.REGTYPE, linkname: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = linkname
    return info


@pytest.mark.parametrize(
    ("member", "reason"),
    [
        (lambda outside: _tar_member("../escaped.txt"), "'..'"),
        (lambda outside: _tar_member("ok/../../escaped.txt"), "'..'"),
        (lambda outside: _tar_member(str(outside / "escaped.txt")), "absolute"),
        (
            lambda outside: _tar_member("ok/link", tarfile.SYMTYPE, str(outside / "escaped.txt")),
            "symbolic link",
        ),
        (lambda outside: _tar_member("ok/hard", tarfile.LNKTYPE, "ok/first.dcm"), "hard link"),
        (lambda outside: _tar_member("ok/dev", tarfile.CHRTYPE), "device"),
    ],
    ids=["dotdot", "nested-dotdot", "absolute", "symlink", "hardlink", "device"],
)
def test_malicious_tar_is_refused_and_nothing_is_written(member, reason, write, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    archive = write("evil.tar", _tar_with(member(outside), b"pwned"))
    target = tmp_path / "work" / "dataset"

    with pytest.raises(InputDataError, match=reason):
        extract_archive(archive, target)

    assert not target.exists()
    assert list(outside.iterdir()) == []
    assert not (tmp_path / "escaped.txt").exists() and not (tmp_path / "work" / "escaped.txt").exists()
    assert _leftovers(tmp_path / "work") == []


def _zip_with(name: str, data: bytes, mode: int | None = None) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        zf.writestr("ok/first.dcm", b"DICM")
        info = zipfile.ZipInfo(name)
        if mode is not None:
            info.create_system = 3
            info.external_attr = mode << 16
        zf.writestr(info, data)
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda outside: _zip_with("../escaped.txt", b"pwned"), "'..'"),
        (lambda outside: _zip_with(str(outside / "escaped.txt"), b"pwned"), "absolute"),
        (lambda outside: _zip_with("C:/escaped.txt", b"pwned"), "absolute"),
        (lambda outside: _zip_with("ok/link", str(outside).encode(), stat.S_IFLNK | 0o777), "symbolic link"),
    ],
    ids=["dotdot", "absolute", "drive-letter", "symlink"],
)
def test_malicious_zip_is_refused_and_nothing_is_written(make, reason, write, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    archive = write("evil.zip", make(outside))
    target = tmp_path / "work" / "dataset"

    with pytest.raises(InputDataError, match=reason):
        extract_archive(archive, target)

    assert not target.exists()
    assert list(outside.iterdir()) == []
    assert not (tmp_path / "escaped.txt").exists()
    assert _leftovers(tmp_path / "work") == []


@pytest.mark.parametrize("kind", ["zip", "tar", "tar.gz"])
def test_truncated_archive_fails_without_a_half_extracted_dataset(kind, build, write, tmp_path):
    members = {f"study/{i:03d}.dcm": bytes([i]) * 20_000 for i in range(6)}
    data = build.zip(members) if kind == "zip" else build.tar(members, "gz" if kind == "tar.gz" else "")
    archive = write(f"cut.{kind}", data[: len(data) * 2 // 3])
    target = tmp_path / "work" / "dataset"

    with pytest.raises(InputDataError, match="corrupt or truncated"):
        extract_archive(archive, target)

    assert not target.exists()
    assert _leftovers(tmp_path / "work") == []


def test_corrupt_zip_member_fails_its_crc_check(build, write, tmp_path):
    members = {"study/a.dcm": b"A" * 50_000, "study/b.dcm": b"B" * 50_000}
    data = bytearray(build.zip(members))
    position = data.index(b"study/b.dcm") + len("study/b.dcm") + 10  # inside b.dcm's compressed bytes
    data[position] ^= 0xFF
    archive = write("corrupt.zip", bytes(data))

    with pytest.raises(InputDataError, match="corrupt or truncated"):
        extract_archive(archive, tmp_path / "work" / "dataset")
    assert not (tmp_path / "work" / "dataset").exists()


def test_failed_extraction_leaves_the_previous_complete_dataset_untouched(build, write, tmp_path):
    target = extract_archive(write("good.zip", build.zip(MEMBERS)), tmp_path / "dataset")
    broken = build.zip({"x/y.dcm": b"y" * 10_000})

    with pytest.raises(InputDataError):
        extract_archive(write("broken.zip", broken[:-30]), target)

    assert {p.name for p in target.rglob("*.nii.gz")} == {Path(n).name for n in MEMBERS}
