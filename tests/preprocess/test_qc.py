"""Preprocessing QC: the registration table and the per-stage contact sheet."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import matplotlib.image
import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from pipeline import figures
from pipeline.errors import InputDataError
from pipeline.preprocess import qc


def _qc_record(subject: str, status: str = "ok", reason: str = "", ncc_final: float = 0.95) -> dict:
    return {
        "subject": subject,
        "status": status,
        "reason": reason,
        "ncc_identity": 0.5,
        "ncc_rigid": 0.8,
        "ncc_final": ncc_final,
        "jacobian_min": 0.7,
        "jacobian_max": 1.4,
        "settings": {"max_jacobian": 10.0},
    }


@pytest.fixture
def registered(tmp_path: Path) -> tuple[list[Path], Path]:
    records = [
        _qc_record("s1", reason="reference subject: identity transform", ncc_final=1.0),
        _qc_record("s2"),
        _qc_record("s3", "failed", "NCC to the reference 0.3 is below min_similarity 0.5", ncc_final=0.3),
        _qc_record("s0"),
    ]
    paths = []
    for record in records:
        path = tmp_path / f"{record['subject']}.qc.json"
        path.write_text(json.dumps(record))
        paths.append(path)
    reference = tmp_path / "reference.json"
    reference.write_text(json.dumps({"reference": "s1", "path": "s1.nii.gz", "score": 0.9,
                                     "scores": {"s1": 0.9, "s2": 0.8, "s3": 0.7}}))
    return paths, reference


def test_registration_table_puts_failures_first_and_reads_every_field(registered, tmp_path):
    qc_jsons, reference = registered
    out = tmp_path / "out" / "qc.csv"
    qc.registration_table(qc_jsons, reference, out)
    table = pd.read_csv(out).fillna({"reason": ""})
    assert list(table.columns) == list(qc.REGISTRATION_COLUMNS)
    assert list(table["subject_id"]) == ["s3", "s0", "s1", "s2"]
    assert list(table["status"]) == ["failed", "ok", "ok", "ok"]
    assert table.loc[0, "reason"].startswith("NCC to the reference 0.3")
    assert list(table["is_reference"]) == [False, False, True, False]
    assert table.loc[0, "ncc_final"] == pytest.approx(0.3)
    assert table.loc[2, "reference_score"] == pytest.approx(0.9)
    assert np.isnan(table.loc[1, "reference_score"])  # s0 was not a reference candidate
    assert table.loc[3, "jacobian_max"] == pytest.approx(1.4)
    assert [p.name for p in out.parent.iterdir()] == ["qc.csv"]  # nothing half-written left beside it


def test_registration_table_names_a_bad_qc_file(registered, tmp_path):
    qc_jsons, reference = registered
    broken = tmp_path / "s9.qc.json"
    broken.write_text(json.dumps({"subject": "s9", "status": "ok"}))
    with pytest.raises(InputDataError, match="s9.qc.json.*missing"):
        qc.registration_table([*qc_jsons, broken], reference, tmp_path / "qc.csv")
    assert not (tmp_path / "qc.csv").exists()


def _volume(path: Path, marker_x: int, marker_y: int) -> None:
    """A 20x24x10 RAS+ volume, dark except one bright voxel at (x, y) on the mid-axial slice."""
    data = np.zeros((20, 24, 10), np.float32)
    data[marker_x, marker_y, 5] = 1.0
    nib.save(nib.Nifti1Image(data, np.diag([2.0, 2.0, 2.0, 1.0])), path)


def test_contact_sheet_shows_every_subject_in_display_convention(tmp_path, monkeypatch):
    # Marker on the patient's right (high x in RAS+) and anterior (high y): must land top left.
    paths = []
    for index in (3, 1, 0, 4, 2):
        path = tmp_path / f"sub{index}.nii.gz"
        _volume(path, 17, 21)
        paths.append(path)
    drawn = []
    monkeypatch.setattr(figures.plt, "close", drawn.append)
    qc.contact_sheet(paths, tmp_path / "sheet.png", "ct_head: windowed")
    assert matplotlib.image.imread(tmp_path / "sheet.png").shape[0] > 100
    (figure,) = drawn
    assert figure.texts[0].get_text() == "ct_head: windowed"
    shown = [
        (axis.get_title(), np.asarray(axis.images[0].get_array())) for axis in figure.axes if axis.images
    ]
    assert [title for title, _ in shown] == [f"sub{index}" for index in range(5)]
    for _, thumbnail in shown:
        assert thumbnail.shape == (24, 20)
        rows, columns = np.nonzero(thumbnail)
        assert (rows.tolist(), columns.tolist()) == ([24 - 1 - 21], [20 - 1 - 17])


def test_contact_sheet_cli_and_bad_volume(tmp_path):
    good = tmp_path / "a1.nii.gz"
    _volume(good, 3, 3)
    bad = tmp_path / "b2.nii.gz"
    bad.write_bytes(b"not a nifti")
    result = subprocess.run(
        [sys.executable, "-m", "pipeline.preprocess.qc", "contact-sheet", "--volumes", str(good), str(bad),
         "--out", str(tmp_path / "sheet.png"), "--title", "t"],
        capture_output=True, text=True, check=False,
    )
    assert result.returncode == 1
    assert "b2.nii.gz" in result.stderr
    assert not (tmp_path / "sheet.png").exists()
    subprocess.run(
        [sys.executable, "-m", "pipeline.preprocess.qc", "contact-sheet", "--volumes", str(good),
         "--out", str(tmp_path / "sheet.png"), "--title", "t"],
        check=True,
    )
    assert (tmp_path / "sheet.png").stat().st_size > 0
