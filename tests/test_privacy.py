"""Pseudonymous subject ids (salt outside the repository) and the identifying-string scanner."""

from __future__ import annotations

import csv
import gzip
import stat
import zlib
from pathlib import Path

import pytest

from dicom_support import write_ct_series, write_nifti
from pipeline.errors import ConfigError
from pipeline.privacy import SALT_ENV, find_markers, load_salt, main, pseudonym, pseudonymise_raw_dataset
from pipeline.sources.download import download_dataset

SALT = "unit-test-salt-0123456789abcdef"


def _tsv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle, delimiter="\t"))


def test_salt_file_is_created_once_private_and_reused(tmp_path, monkeypatch):
    monkeypatch.delenv(SALT_ENV)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    first = load_salt()
    path = tmp_path / "config" / "medgan-workflow" / "salt"
    assert path.read_text().strip() == first and len(first) == 64
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_salt() == first


def test_salt_from_the_environment_wins_and_must_be_long(monkeypatch):
    monkeypatch.setenv(SALT_ENV, SALT)
    assert load_salt() == SALT
    monkeypatch.setenv(SALT_ENV, "short")
    with pytest.raises(ConfigError, match="at least 16 characters"):
        load_salt()


def test_pseudonym_is_stable_keyed_and_a_valid_subject_id():
    first = pseudonym("Smith_John", SALT)
    assert first == pseudonym("Smith_John", SALT)
    assert first != pseudonym("Smith_John", SALT + "x") != pseudonym("Smith_Jane", SALT)
    assert first.startswith("sub-") and len(first) == 16 and "Smith" not in first


@pytest.fixture
def raw_dataset(tmp_path) -> Path:
    """A raw layout whose names carry identity: study folders, inner folders, an MR file, a partner."""
    raw = tmp_path / "raw"
    write_ct_series(raw / "Smith_John" / "Smith_John CT HEAD", n_slices=2)
    write_nifti(raw / "mri" / "Doe_Jane-T2.nii.gz")
    write_nifti(raw / "partners" / "Smith_John.nii.gz")
    write_nifti(raw / "truth" / "Smith_John_head.nii.gz")
    (raw / "reads.csv").write_text("name\nSmith_John\n")
    (raw / "Smith_John_notes.txt").write_text("left out: its name holds an id")
    (raw / "subjects.tsv").write_text(
        "subject_id\tmodality\tpath\tpartner_path\tpartner_modality\n"
        "Smith_John\tCT\tSmith_John\tpartners/Smith_John.nii.gz\tMR\n"
        "Doe_Jane\tMR\tmri/Doe_Jane-T2.nii.gz\t\t\n"
    )
    return raw


def test_raw_dataset_is_renamed_to_pseudonyms_everywhere(raw_dataset):
    mapping = pseudonymise_raw_dataset(raw_dataset, SALT)
    john, jane = mapping["Smith_John"], mapping["Doe_Jane"]
    assert mapping == {"Smith_John": pseudonym("Smith_John", SALT), "Doe_Jane": pseudonym("Doe_Jane", SALT)}
    rows = _tsv(raw_dataset / "subjects.tsv")
    assert rows == [
        {"subject_id": john, "modality": "CT", "path": john, "partner_path": f"partners/{john}.nii.gz",
         "partner_modality": "MR"},
        {"subject_id": jane, "modality": "MR", "path": f"IXI-T2/{jane}-T2.nii.gz", "partner_path": "",
         "partner_modality": ""},
    ]  # fmt: skip
    names = sorted(p.relative_to(raw_dataset).as_posix() for p in raw_dataset.rglob("*") if p.is_file())
    study = [f"{john}/d000/f{k:05d}.dcm" for k in range(2)]
    others = [f"IXI-T2/{jane}-T2.nii.gz", f"partners/{john}.nii.gz", f"truth/{john}_head.nii.gz"]
    assert names == sorted([*study, *others, "reads.csv", "subjects.tsv"])
    assert not any(word in name for name in names for word in ("Smith", "Doe", "HEAD"))


def test_a_failure_leaves_the_original_layout_whole(raw_dataset):
    (raw_dataset / "partners" / "Smith_John.nii.gz").unlink()
    before = sorted(p.relative_to(raw_dataset) for p in raw_dataset.rglob("*"))
    with pytest.raises(Exception, match="partner_path of one subject does not exist"):
        pseudonymise_raw_dataset(raw_dataset, SALT)
    assert sorted(p.relative_to(raw_dataset) for p in raw_dataset.rglob("*")) == before
    assert [p.name for p in raw_dataset.parent.iterdir()] == ["raw"]


def test_local_download_pseudonymises_by_default(raw_dataset, tmp_path, monkeypatch):
    monkeypatch.setenv(SALT_ENV, SALT)
    out = tmp_path / "data" / "raw" / "ct_head"
    download_dataset("local", out, local_path=raw_dataset)
    assert [r["subject_id"] for r in _tsv(out / "subjects.tsv")] == [
        pseudonym("Smith_John", SALT),
        pseudonym("Doe_Jane", SALT),
    ]
    assert (raw_dataset / "Smith_John").is_dir(), "the user's copy is left as it was"


def test_pseudonym_cli_finds_a_patient_again(monkeypatch, capsys):
    monkeypatch.setenv(SALT_ENV, SALT)
    assert main(["pseudonym", "Smith_John"]) == 0
    assert capsys.readouterr().out == f"Smith_John\t{pseudonym('Smith_John', SALT)}\n"


def _png_with_text(keyword: bytes, text: bytes, compressed: bool) -> bytes:
    if compressed:
        kind, payload = b"zTXt", keyword + b"\0\0" + zlib.compress(text)
    else:
        kind, payload = b"tEXt", keyword + b"\0" + text
    chunk = len(payload).to_bytes(4, "big") + kind + payload + zlib.crc32(kind + payload).to_bytes(4, "big")
    return b"\x89PNG\r\n\x1a\n" + chunk


def test_scanner_looks_inside_gzip_and_png_text_chunks(tmp_path, capsys):
    (tmp_path / "header.nii.gz").write_bytes(gzip.compress(b"....descrip=QXNAMEQX...."))
    (tmp_path / "figure.png").write_bytes(_png_with_text(b"Title", b"qxpidqx", compressed=True))
    (tmp_path / "log.txt").write_text("nothing here")
    (tmp_path / "utf16.txt").write_bytes("QXNAMEQX".encode("utf-16-le"))
    hits = sorted((p.name, m, w) for p, m, w in find_markers([tmp_path], ["QXNAMEQX", "QXPIDQX"]))
    assert hits == [
        ("figure.png", "QXPIDQX", "PNG text chunk"),
        ("header.nii.gz", "QXNAMEQX", "gunzipped"),
        ("utf16.txt", "QXNAMEQX", "raw"),
    ]
    assert main(["scan", "--marker", "QXNAMEQX", str(tmp_path)]) == 1
    assert "QXNAMEQX" not in capsys.readouterr().out
    assert main(["scan", "--marker", "ABSENT", str(tmp_path)]) == 0


def test_scanner_opens_base64_data_uris_of_html_reports(tmp_path):
    """Snakemake's report embeds every result as a base64 data URI; a PNG inside keeps its text chunks."""
    import base64

    png = _png_with_text(b"Author", b"QXNAMEQX", compressed=True)
    log = gzip.compress(b"subject QXPIDQX done")
    (tmp_path / "report.html").write_text(
        f'<img src="data:image/png;base64,{base64.b64encode(png).decode()}">'
        f'<a href="data:application/gzip;base64,{base64.b64encode(log).decode()}">log</a>'
    )
    hits = sorted((m, w) for _, m, w in find_markers([tmp_path], ["QXNAMEQX", "QXPIDQX"]))
    assert hits == [
        ("QXNAMEQX", "base64 data URI, PNG text chunk"),
        ("QXPIDQX", "base64 data URI, gunzipped"),
    ]
