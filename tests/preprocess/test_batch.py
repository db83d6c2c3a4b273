"""One process for a dataset's subjects (pipeline.preprocess.batch): every subject's outputs as its
own stage command makes them (masking, windowing), in one process or over forked workers; the first
failure stops the batch with the stage's one-line error naming the file, or with --keep-going every
other subject still runs and the batch names every failed command."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest

from dicom_support import write_ct_series, write_nifti
from pipeline.errors import ConfigError
from pipeline.preprocess import batch, mask_headholder, window

SHAPE = (20, 24, 16)


def _volumes(folder, n: int) -> tuple[list, object]:
    """``n`` registered-like volumes (a bright ellipsoid of subject-dependent size) and a mask."""
    rng = np.random.default_rng(7)
    ijk = np.indices(SHAPE, dtype=np.float64)
    centre = (np.array(SHAPE) - 1) / 2
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    paths = []
    for index in range(n):
        radius = 5.0 + index
        inside = sum(((ijk[a] - centre[a]) / radius) ** 2 for a in range(3)) < 1
        values = (inside * 0.8 + rng.uniform(0, 0.1, SHAPE)).astype(np.float32)
        path = folder / f"s{index}.nii.gz"
        nib.save(nib.Nifti1Image(values, affine), path)
        paths.append(path)
    mask = folder / "mask.nii.gz"
    nib.save(nib.Nifti1Image((sum(((ijk[a] - centre[a]) / 7.0) ** 2 for a in range(3)) < 1).astype(np.uint8), affine), mask)
    return paths, mask


def _tasks(paths, mask, out) -> list:
    return [
        [["apply", "--image", str(p), "--mask", str(mask), "--out", str(out / p.name)],
         ["overlay", "--image", str(p), "--mask", str(mask), "--out", str(out / f"{p.name.split('.')[0]}.png")]]
        for p in paths
    ]  # fmt: skip


@pytest.mark.parametrize("workers", [1, 2])
def test_every_subject_as_its_own_command_makes_it(tmp_path, workers):
    paths, mask = _volumes(tmp_path, 3)
    alone, batched = tmp_path / "alone", tmp_path / "batched"
    for task in _tasks(paths, mask, alone):
        for argv in task:
            mask_headholder.main(argv)
    batch.run_batch("pipeline.preprocess.mask_headholder", _tasks(paths, mask, batched), workers=workers)
    for path in paths:
        expected, got = nib.load(alone / path.name), nib.load(batched / path.name)
        assert np.array_equal(np.asanyarray(expected.dataobj), np.asanyarray(got.dataobj)), path.name
        assert np.array_equal(expected.affine, got.affine)
        assert (batched / f"{path.name.split('.')[0]}.png").stat().st_size > 1000
    masked = np.asanyarray(nib.load(batched / paths[2].name).dataobj)
    assert masked.max() > 0.5 and masked[0, 0, 0] == 0  # the mask was applied, not copied


def test_first_failure_stops_the_batch_with_the_file_named(tmp_path):
    paths, mask = _volumes(tmp_path, 2)
    tasks = _tasks([tmp_path / "missing.nii.gz", *paths], mask, tmp_path / "out")
    proc = subprocess.run(
        [sys.executable, "-m", "pipeline.preprocess.batch", "pipeline.preprocess.mask_headholder",
         "--workers", "1", "--tasks", json.dumps(tasks)],
        capture_output=True, text=True,
    )  # fmt: skip
    assert proc.returncode == 1
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 2, proc.stderr
    assert "missing.nii.gz" in errors[0] and "apply --image" in errors[1] and "missing.nii.gz" in errors[1]
    assert not (tmp_path / "out" / paths[0].name).exists(), "nothing after the failing subject ran"


def test_bad_tasks_and_unknown_stages_are_clear_errors(tmp_path):
    with pytest.raises(ConfigError, match="stage must be one of"):
        batch.run_batch("os", [])
    proc = subprocess.run(
        [sys.executable, "-m", "pipeline.preprocess.batch", "pipeline.preprocess.register", "--tasks", '[["register"]]'],
        capture_output=True, text=True,
    )  # fmt: skip
    assert proc.returncode == 1 and "expected a list of tasks" in proc.stderr


def _window_tasks(raw, out) -> list:
    """Three CT studies of different slice spacing and size; the first with an MR partner and a CT
    partner over the full HU range, both onto its grid (the window rule's commands)."""
    tasks = []
    for index, (step_mm, size) in enumerate([(5.0, 16), (2.5, 12), (5.0, 8)]):
        study = raw / f"s{index}"
        if not study.exists():
            write_ct_series(study / "series", n_slices=6, size=size, step_mm=step_mm)
        grid = str(out / f"s{index}.nii.gz")
        task = [["ct", "--center", "40", "--width", "80", "--input", str(study), "--output", grid, "--voxel-mm", "1"]]
        if index == 0:
            mr, ct = raw / "partner_mr.nii.gz", raw / "partner_ct.nii.gz"
            write_nifti(mr)
            write_nifti(ct, np.linspace(-1000, 1500, 12**3).reshape(12, 12, 12))
            task += [
                ["partner", "--input", str(mr), "--modality", "MR", "--grid", grid,
                 "--output", str(out / "s0.partner.nii.gz"), "--percentiles", "0.5", "99.5"],
                ["partner", "--input", str(ct), "--modality", "CT", "--grid", grid,
                 "--output", str(out / "s0.partner_hu.nii.gz"), "--hu-range", "-1024", "3000"],
            ]  # fmt: skip
        tasks.append(task)
    return tasks


def _digests(folder) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.glob("*.nii.gz"))}


def test_windowing_every_subject_in_one_batch_writes_the_same_bytes(tmp_path):
    raw, alone, batched = tmp_path / "raw", tmp_path / "alone", tmp_path / "batched"
    for task in _window_tasks(raw, alone):
        for argv in task:
            window.main(argv)
    batch.run_batch("pipeline.preprocess.window", _window_tasks(raw, batched), workers=2)
    expected = _digests(alone)
    assert sorted(expected) == ["s0.nii.gz", "s0.partner.nii.gz", "s0.partner_hu.nii.gz", "s1.nii.gz", "s2.nii.gz"]
    assert _digests(batched) == expected
    shapes = {name: nib.load(alone / name).shape for name in expected}
    assert shapes["s0.partner.nii.gz"] == shapes["s0.nii.gz"] != shapes["s1.nii.gz"]  # partners on their grid


def test_keep_going_runs_every_other_subject_and_names_each_failure(tmp_path):
    raw, out = tmp_path / "raw", tmp_path / "out"
    tasks = _window_tasks(raw, out)
    missing = [raw / "gone_a", raw / "gone_b"]
    for task, folder in zip((tasks[0], tasks[2]), missing, strict=True):
        task[0][task[0].index("--input") + 1] = str(folder)
    proc = subprocess.run(
        [sys.executable, "-m", "pipeline.preprocess.batch", "pipeline.preprocess.window",
         "--workers", "2", "--keep-going", "--tasks", json.dumps(tasks)],
        capture_output=True, text=True,
    )  # fmt: skip
    assert proc.returncode == 1
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 3, proc.stderr
    assert sorted(errors[:2]) == [f"error: {f}: not a folder of DICOM files" for f in missing], errors
    assert errors[2].startswith("error: 2 of 3 tasks failed: ") and all(f"--input {f}" in errors[2] for f in missing)
    assert [p.name for p in out.glob("*.nii.gz")] == ["s1.nii.gz"], "the good subject was windowed"
