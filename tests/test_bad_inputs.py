"""Each bad input the README's table lists, fed to the stage CLI that meets it in the workflow:
one line on stderr naming the file and the problem, exit status 1, and nothing left behind that
looks like an output (no output file, no temporary beside it). Unit-level checks of the same
readers live in tests/preprocess/test_window.py; this file checks what the user sees.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import numpy as np
import pydicom
import pytest
import yaml

from dicom_support import IDENTITY, ct_slice, write_ct_series, write_nifti
from pipeline.preprocess import window
from pipeline.privacy import load_salt, pseudonym
from workflow_support import run, tiny_copy


def _run_stage(main, argv: list[str], capsys) -> str:
    """Run a stage CLI that must fail; return its one-line error message."""
    with pytest.raises(SystemExit) as caught:
        main(argv)
    assert caught.value.code == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    return lines[0]


def _assert_nothing_written(out: Path) -> None:
    assert not out.exists()
    assert list(out.parent.iterdir()) == [], "no temporary may be left beside the output"


def _subject(tmp_path: Path) -> tuple[Path, Path]:
    out_dir = tmp_path / "windowed"
    out_dir.mkdir()
    return tmp_path / "raw" / "patient", out_dir / "patient.nii.gz"


def _truncate_pixels(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:-20])


def _cut_before_pixels(path: Path) -> None:
    raw = path.read_bytes()
    path.write_bytes(raw[: raw.index(b"\xe0\x7f\x10\x00")])


def _garble_header(path: Path) -> None:
    raw = bytearray(path.read_bytes())
    raw[132:] = b"DICM" + b"\xff" * 40 + raw[176:]
    path.write_bytes(bytes(raw))


def _add_slice(folder: Path, name: str, z_mm: float, **options) -> None:
    """One more slice in the series already in ``folder`` (same SeriesInstanceUID)."""
    uid = str(pydicom.dcmread(folder / "IM000.dcm").SeriesInstanceUID)
    stored = np.full((8, 8), 1044, np.int16)
    ct_slice(stored, z_mm, uid, **options).save_as(folder / name, enforce_file_format=True)


def _mixed_series(folder: Path) -> None:
    write_ct_series(folder)
    _add_slice(folder, "IM004.dcm", 20.0, modality="MR")


def _irregular_series(folder: Path) -> None:
    write_ct_series(folder)
    _add_slice(folder, "IM_odd.dcm", 17.5)


CT_CASES = {
    # name: (how the patient folder is built, the file the message names, the words it holds)
    "truncated pixel data": (
        lambda f: _truncate_pixels(write_ct_series(f)[1]), "IM001.dcm", "pixel data cannot be decoded"
    ),
    "no pixel data": (lambda f: _cut_before_pixels(write_ct_series(f)[2]), "IM002.dcm", "no pixel data"),
    "corrupt header": (lambda f: _garble_header(write_ct_series(f)[0]), "IM000.dcm", "corrupt or truncated"),
    "not DICOM but .dcm": (
        lambda f: (write_ct_series(f), (f / "IM009.dcm").write_bytes(b"\0" * 64)), "IM009.dcm", "preamble"
    ),
    "missing RescaleSlope/Intercept": (
        lambda f: write_ct_series(f, rescale=False), "IM000.dcm", "no RescaleSlope/RescaleIntercept"
    ),
    "wrong Modality (MR in the CT dataset)": (
        lambda f: write_ct_series(f, modality="MR"), "", "no usable axial CT series; .*Modality MR, not CT"
    ),
    "mixed modalities in one series": (_mixed_series, "", "IM004.dcm: Modality MR in a series of CT"),
    "missing slice": (
        lambda f: write_ct_series(f, n_slices=6, skip=(3,)), "", "missing slice: gap of 10.00 mm"
    ),
    "inconsistent spacing": (_irregular_series, "", "irregular slice spacing"),
    "empty subject folder": (lambda f: f.mkdir(parents=True), "", "no DICOM image files found"),
}


@pytest.mark.parametrize("case", list(CT_CASES))
def test_bad_ct_input_stops_the_window_stage_with_one_line(case, tmp_path, capsys):
    build, named_file, problem = CT_CASES[case]
    subject, out = _subject(tmp_path)
    build(subject)
    message = _run_stage(window.main, ["ct", "--input", str(subject), "--output", str(out)], capsys)
    named = re.escape(str(subject)) + r"\S*" + re.escape(named_file)
    assert re.match(rf"error: {named}: .*{problem}", message), message
    for value in IDENTITY.values():
        assert value not in message
    _assert_nothing_written(out)


def test_ct_and_mr_series_in_one_folder_use_the_ct_and_log_the_mr(tmp_path, caplog):
    """A study folder with an MR series beside the CT series is normal (CQ500 studies hold several
    series): the CT series is used, the log names the MR one and why it was skipped."""
    subject, out = _subject(tmp_path)
    write_ct_series(subject / "ct")
    write_ct_series(subject / "mr", modality="MR")
    with caplog.at_level(logging.INFO):
        window.main(["ct", "--input", str(subject), "--output", str(out)])
    assert out.is_file()
    chosen = re.escape(str(subject / "ct"))
    assert re.search(rf"chose the series in {chosen}.*mr/IM000.dcm.*Modality MR, not CT", caplog.text)


NIFTI_CASES = {
    "NaN voxel": (np.nan, "1 voxels are NaN or infinite"),
    "Inf voxel": (np.inf, "1 voxels are NaN or infinite"),
    "4-D volume": ((4, 4, 4, 2), r"expected a 3-D volume, got shape \(4, 4, 4, 2\)"),
    "2-D image": ((4, 4), r"expected a 3-D volume, got shape \(4, 4\)"),
}


@pytest.mark.parametrize("case", list(NIFTI_CASES))
@pytest.mark.parametrize("command", ["mri", "partner"])
def test_bad_nifti_stops_the_mri_and_partner_stages_with_one_line(case, command, tmp_path, capsys):
    spoil, problem = NIFTI_CASES[case]
    if isinstance(spoil, tuple):
        source = write_nifti(tmp_path / "raw" / "bad.nii.gz", np.ones(spoil, np.float32))
    else:
        data = np.ones((6, 6, 6), np.float32)
        data[1, 2, 3] = spoil
        source = write_nifti(tmp_path / "raw" / "bad.nii.gz", data)
    grid = write_nifti(tmp_path / "raw" / "grid.nii.gz")
    out_dir = tmp_path / "windowed"
    out_dir.mkdir()
    out = out_dir / "s.partner.nii.gz"
    argv = [command, "--input", str(source), "--output", str(out)]
    if command == "partner":
        argv += ["--modality", "MR", "--grid", str(grid)]
    message = _run_stage(window.main, argv, capsys)
    assert re.fullmatch(rf"error: {re.escape(str(source))}: {problem}", message), message
    _assert_nothing_written(out)


# ------------------------------------------------------------------ through Snakemake


def test_schema_violation_names_the_key_and_the_allowed_values(repo_root, tmp_path):
    override = tmp_path / "bad.yaml"
    override.write_text(yaml.safe_dump({"preprocess": {"ct_window": {"preset": "brian"}}}))
    proc = run(["snakemake", "-n", "--configfile", str(override)], repo_root, check=False)
    assert proc.returncode != 0
    assert (
        "preprocess.ct_window.preset: 'brian' is not allowed; allowed values: 'brain', 'subdural', 'bone', "
        "'file', 'custom'" in proc.stdout + proc.stderr
    ), proc.stderr[-2000:]


def test_unknown_experiment_is_named_with_the_known_ones(repo_root):
    proc = run(["snakemake", "-n", "results/nonexistent/metrics.json"], repo_root, check=False)
    assert proc.returncode != 0
    said = proc.stderr + proc.stdout
    assert "unknown experiment 'nonexistent': params.yaml experiments are " in said
    assert all(name in said for name in ("cyclegan_ct_mri", "cyclegan_cxr_pneumonia", "dcgan_ct_brain"))


@pytest.mark.slow
def test_bad_subject_message_lands_in_the_rule_log_and_no_output(repo_root, tmp_path):
    """A local CT dataset with one truncated file: the dataset's window job windows the good
    subject, then fails; its log says which file and why, and which of the subjects' commands
    failed; no windowed folder is left that looks complete."""
    studies = tmp_path / "studies"
    write_ct_series(studies / "GOOD_STUDY" / "series")
    _truncate_pixels(write_ct_series(studies / "BAD_STUDY" / "series")[1])
    local = {"source": "local", "layout": "cq500", "local_path": str(studies), "n_subjects": None}
    override = {"datasets": {"ct_head": local}}
    work = tiny_copy(repo_root, tmp_path / "repo", override, git=False)
    salt = load_salt()
    good, bad = pseudonym("GOOD_STUDY", salt), pseudonym("BAD_STUDY", salt)
    proc = run(["snakemake", "--cores", "1", "data/windowed/ct_head/subjects"], work, check=False)
    assert proc.returncode != 0
    log = (work / "logs" / "window" / "ct_head.log").read_text()
    errors = [line for line in log.splitlines() if line.startswith("error:")]
    assert len(errors) == 2, log
    assert re.match(rf"error: data/raw/ct_head/{bad}/d000/f00001.dcm: pixel data cannot be decoded", errors[0]), log
    assert errors[1].startswith("error: 1 of 2 tasks failed: python -m pipeline.preprocess.window ct "), log
    assert f"--input data/raw/ct_head/{bad} " in errors[1] and good not in errors[1], log
    assert f"data/raw/ct_head/{good}: chose the series" in log, "the good subject was windowed all the same"
    assert not (work / "data" / "windowed" / "ct_head" / "subjects").exists()
    assert not list((work / "data" / "windowed" / "ct_head").glob(".*"))
