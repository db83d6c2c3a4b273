"""Registration: reproducible to the bit, recovers a known deformation, flags implausible results.

Heads are analytic (ellipsoid skull, brain, ventricles, an off-centre lesion) and sampled on 4 mm
grids so that a registration takes about a second.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from pipeline.errors import ConfigError, InputDataError, RegistrationError
from pipeline.preprocess import register

VOXEL_MM = 4.0
FIELD_OF_VIEW_MM = (180.0, 220.0, 180.0)


def _grid() -> tuple[np.ndarray, tuple[int, ...], np.ndarray]:
    """Affine, shape and world coordinates (3, N) of a RAS+ grid centred on the origin."""
    shape = tuple(round(extent / VOXEL_MM) for extent in FIELD_OF_VIEW_MM)
    affine = np.diag([VOXEL_MM, VOXEL_MM, VOXEL_MM, 1.0])
    affine[:3, 3] = -(np.array(shape) - 1) / 2 * VOXEL_MM
    voxels = np.indices(shape).reshape(3, -1).astype(np.float64)
    return affine, shape, affine[:3, :3] @ voxels + affine[:3, 3:4]


def _head(points: np.ndarray, size: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Windowed-CT-like intensities and the brain mask at world points (mm)."""
    x, y, z = points / size
    radius = np.sqrt((x / 66) ** 2 + (y / 84) ** 2 + (z / 70) ** 2)
    image = np.zeros(x.shape, np.float32)
    brain = radius < 0.86
    image[(radius >= 0.86) & (radius < 0.95)] = 1.0
    image[(radius >= 0.95) & (radius < 1.0)] = 0.45
    inner = np.sqrt((x / 52) ** 2 + (y / 70) ** 2 + (z / 55) ** 2) < 0.8
    image[brain] = 0.5
    image[brain & inner] = 0.62
    image[np.sqrt(((np.abs(x) - 9) / 6) ** 2 + ((y + 5) / 24) ** 2 + ((z - 8) / 12) ** 2) < 1] = 0.15
    image[np.sqrt((x - 20) ** 2 + (y - 30) ** 2 + (z + 10) ** 2) < 8] = 0.3
    return image, brain


def _deformed(
    points: np.ndarray, angles_deg=(6.0, -4.0, 10.0), shift_mm=(5.0, -4.0, 3.0), amplitude_mm=5.0
) -> np.ndarray:
    """A rotation, a shift and a smooth sinusoidal displacement of the sampling points."""
    moved = (
        Rotation.from_euler("xyz", angles_deg, degrees=True).as_matrix() @ points
        + np.array(shift_mm)[:, None]
    )
    return moved + amplitude_mm * np.sin(moved[[1, 2, 0]] / 35.0)


def _save(path: Path, values: np.ndarray, affine: np.ndarray, shape) -> Path:
    nib.save(nib.Nifti1Image(values.reshape(shape).astype(np.float32), affine), path)
    return path


@pytest.fixture(scope="module")
def pair(tmp_path_factory) -> dict[str, Path]:
    """Reference head, the same head rotated and deformed, and the moving head's brain mask."""
    folder = tmp_path_factory.mktemp("register")
    affine, shape, points = _grid()
    fixed, fixed_brain = _head(points)
    moving, moving_brain = _head(_deformed(points))
    return {
        "fixed": _save(folder / "fixed.nii.gz", fixed, affine, shape),
        "fixed_brain": _save(folder / "fixed_brain.nii.gz", fixed_brain, affine, shape),
        "moving": _save(folder / "moving.nii.gz", moving, affine, shape),
        "moving_brain": _save(folder / "moving_brain.nii.gz", moving_brain, affine, shape),
        "folder": folder,
    }


@pytest.fixture(scope="module")
def registered(pair) -> dict:
    folder = pair["folder"] / "run1"
    qc = register.register_to_reference(
        pair["moving"],
        pair["fixed"],
        folder / "moving.nii.gz",
        folder / "moving.transforms",
        folder / "moving.qc.json",
        seed=3,
    )
    return {"qc": qc, "folder": folder}


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2 * np.logical_and(a, b).sum() / (a.sum() + b.sum())


def test_recovers_known_rotation_and_deformation(pair, registered, tmp_path):
    folder = registered["folder"]
    register.apply_subject_transforms(
        pair["moving_brain"], pair["fixed"], folder / "moving.transforms", tmp_path / "brain.nii.gz"
    )
    fixed_brain = nib.load(pair["fixed_brain"]).get_fdata() > 0.5
    before = _dice(nib.load(pair["moving_brain"]).get_fdata() > 0.5, fixed_brain)
    after = _dice(nib.load(tmp_path / "brain.nii.gz").get_fdata() > 0.5, fixed_brain)
    assert before < 0.92
    assert after >= 0.95

    qc = json.loads((folder / "moving.qc.json").read_text())
    assert qc == registered["qc"]
    assert qc["status"] == "ok" and qc["reason"] == ""
    assert qc["ncc_final"] > qc["ncc_rigid"] > qc["ncc_identity"]
    assert 0.5 < qc["jacobian_min"] < 1 < qc["jacobian_max"] < 2
    assert sorted(p.name for p in (folder / "moving.transforms").iterdir()) == [
        "0GenericAffine.mat",
        "1Warp.nii.gz",
    ]
    assert nib.load(folder / "moving.nii.gz").shape == nib.load(pair["fixed"]).shape


def test_registration_is_bit_identical_in_process_and_across_processes(pair, registered, tmp_path):
    register.register_to_reference(
        pair["moving"],
        pair["fixed"],
        tmp_path / "a.nii.gz",
        tmp_path / "a.transforms",
        tmp_path / "a.qc.json",
        seed=3,
    )
    reference_json = tmp_path / "reference.json"
    reference_json.write_text(json.dumps({"path": str(pair["fixed"])}))
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pipeline.preprocess.register",
            "register",
            "--moving",
            str(pair["moving"]),
            "--reference-json",
            str(reference_json),
            "--out",
            str(tmp_path / "b.nii.gz"),
            "--transforms",
            str(tmp_path / "b.transforms"),
            "--qc",
            str(tmp_path / "b.qc.json"),
            "--seed",
            "3",
        ],
        check=True,
        capture_output=True,
    )
    first = np.asarray(nib.load(registered["folder"] / "moving.nii.gz").dataobj)
    for run in ("a", "b"):
        again = np.asarray(nib.load(tmp_path / f"{run}.nii.gz").dataobj)
        assert first.dtype == again.dtype == np.float32
        assert np.array_equal(first, again)
        warp = np.asarray(nib.load(tmp_path / f"{run}.transforms" / "1Warp.nii.gz").dataobj)
        assert np.array_equal(
            warp, np.asarray(nib.load(registered["folder"] / "moving.transforms" / "1Warp.nii.gz").dataobj)
        )
        qc = json.loads((tmp_path / f"{run}.qc.json").read_text())
        assert {k: qc[k] for k in ("ncc_final", "jacobian_min", "jacobian_max")} == {
            k: registered["qc"][k] for k in ("ncc_final", "jacobian_min", "jacobian_max")
        }


def test_partner_follows_its_subject(pair, registered, tmp_path):
    """A partner on the subject's grid is warped exactly as the subject was (CLI, reference JSON)."""
    folder = registered["folder"]
    reference_json = tmp_path / "reference.json"
    reference_json.write_text(json.dumps({"reference": "fixed", "path": str(pair["fixed"])}))
    register.main([
        "apply", "--image", str(pair["moving"]), "--reference-json", str(reference_json),
        "--transforms", str(folder / "moving.transforms"), "--out", str(tmp_path / "partner.nii.gz"),
    ])  # fmt: skip
    assert np.array_equal(
        np.asarray(nib.load(tmp_path / "partner.nii.gz").dataobj),
        np.asarray(nib.load(folder / "moving.nii.gz").dataobj),
    )


def test_qc_flags_a_broken_registration(pair, tmp_path):
    """Sparse noise is no head: the QC fails it, every output is still written, "stop" raises."""
    affine, shape, _ = _grid()
    noise = (np.random.default_rng(0).random(int(np.prod(shape))) < 0.02).astype(np.float32)
    broken = _save(tmp_path / "broken.nii.gz", noise, affine, shape)
    qc = register.register_to_reference(
        broken,
        pair["fixed"],
        tmp_path / "out.nii.gz",
        tmp_path / "out.transforms",
        tmp_path / "out.qc.json",
        seed=3,
    )
    assert qc["status"] == "failed"
    assert "min_similarity" in qc["reason"]
    assert json.loads((tmp_path / "out.qc.json").read_text())["status"] == "failed"
    assert (tmp_path / "out.nii.gz").is_file() and (
        tmp_path / "out.transforms" / "0GenericAffine.mat"
    ).is_file()

    with pytest.raises(RegistrationError, match="broken.nii.gz"):
        register.register_to_reference(
            broken,
            pair["fixed"],
            tmp_path / "stop.nii.gz",
            tmp_path / "stop.transforms",
            tmp_path / "stop.qc.json",
            seed=3,
            on_failure="stop",
        )
    assert json.loads((tmp_path / "stop.qc.json").read_text())["status"] == "failed"
    assert not (tmp_path / "stop.nii.gz").exists() and not (tmp_path / "stop.transforms").exists()


def test_qc_flags_a_deformation_outside_the_jacobian_range(pair, registered, tmp_path):
    """The known deformation stretches tissue by ~20 %: a 1 % tolerance must flag it, naming the range."""
    assert registered["qc"]["jacobian_max"] > 1.02
    qc = register.register_to_reference(
        pair["moving"],
        pair["fixed"],
        tmp_path / "out.nii.gz",
        tmp_path / "out.transforms",
        tmp_path / "out.qc.json",
        seed=3,
        max_jacobian=1.01,
    )
    assert qc["status"] == "failed"
    assert qc["reason"].startswith("Jacobian determinant range") and "[0.99, 1.01]" in qc["reason"]
    assert (qc["jacobian_min"], qc["jacobian_max"]) == (
        registered["qc"]["jacobian_min"],
        registered["qc"]["jacobian_max"],
    )


def test_reference_subject_maps_to_itself(pair, tmp_path):
    qc = register.register_to_reference(
        pair["fixed"],
        pair["fixed"],
        tmp_path / "ref.nii.gz",
        tmp_path / "ref.transforms",
        tmp_path / "ref.qc.json",
        seed=3,
    )
    assert qc["status"] == "ok" and qc["ncc_final"] == 1.0
    assert (tmp_path / "ref.nii.gz").read_bytes() == pair["fixed"].read_bytes()
    register.apply_subject_transforms(
        pair["moving"], pair["fixed"], tmp_path / "ref.transforms", tmp_path / "p.nii.gz"
    )
    assert np.allclose(
        nib.load(tmp_path / "p.nii.gz").get_fdata(), nib.load(pair["moving"]).get_fdata(), atol=1e-6
    )


def test_choose_reference_prefers_the_typical_subject(tmp_path):
    """Three similar heads and one much larger one: the outlier is never chosen; CLI writes the JSON."""
    affine, shape, points = _grid()
    paths = []
    for subject, (angles, size) in {
        "s01": ((0, 0, 4), 1.0),
        "s02": ((3, 0, -5), 0.97),
        "s03": ((0, -4, 2), 1.02),
        "big": ((0, 0, 0), 1.25),
    }.items():
        image, _ = _head(_deformed(points, angles, (0, 0, 0), 0.0), size)
        paths.append(_save(tmp_path / f"{subject}.nii.gz", image, affine, shape))
    out = tmp_path / "reference.json"
    register.main(
        ["choose", "--inputs", *map(str, paths), "--out", str(out), "--seed", "2", "--exclude", "s02"]
    )
    chosen = json.loads(out.read_text())
    assert chosen["reference"] in {"s01", "s03"}
    assert set(chosen["scores"]) == {"s01", "s03", "big"}
    assert chosen["scores"]["big"] < min(chosen["scores"]["s01"], chosen["scores"]["s03"])
    assert chosen["score"] == max(chosen["scores"].values())
    assert chosen["excluded"] == ["s02"]
    assert register.read_reference_json(out) == tmp_path / f"{chosen['reference']}.nii.gz"


def test_bad_inputs_are_named(pair, tmp_path):
    affine, shape, _ = _grid()
    values = np.zeros(int(np.prod(shape)), np.float32)
    values[:10] = np.nan
    bad = _save(tmp_path / "nan.nii.gz", values, affine, shape)
    with pytest.raises(InputDataError, match="nan.nii.gz.*NaN"):
        register.register_to_reference(
            bad, pair["fixed"], tmp_path / "o.nii.gz", tmp_path / "o.tf", tmp_path / "o.json", seed=1
        )
    with pytest.raises(ConfigError, match="seed"):
        register.register_to_reference(
            pair["moving"],
            pair["fixed"],
            tmp_path / "o.nii.gz",
            tmp_path / "o.tf",
            tmp_path / "o.json",
            seed=0,
        )
    with pytest.raises(InputDataError, match="not a reference JSON"):
        register.read_reference_json(pair["fixed"])


def test_the_path_check_matches_what_ants_misreads():
    """Exactly the string given to ANTs, case-sensitive (ANTs' WriteTransform uses find()): every
    trigger anywhere in it is caught, look-alikes are not."""
    for trigger in register.ANTS_PATH_TRIGGERS:
        assert not register._ants_can_write_to(Path(f"out/study{trigger}x/s.transforms"))
        assert not register._ants_can_write_to(Path(f"out/s{trigger}"))
    for fine in ("out/STUDY.H5/s", "out/a.MAT/s", "out/a.tfm/s", "out/a.nii.gz/s", "out/.s-h5k.tmp"):
        assert register._ants_can_write_to(Path(fine))


@pytest.mark.parametrize("trigger", ["h5", "hdf4", "mat"])
def test_a_path_that_ants_would_misread_still_gets_its_warp(pair, registered, tmp_path, monkeypatch, trigger):
    """antsRegistration writes its warp as a transform file (and fails, on stderr only) when its
    output path contains ".h5", ".mat"...: a folder so named must still get the same registration.
    (CI once failed when a temporary folder's random name began "h5".)"""
    monkeypatch.setattr(register.tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    folder = tmp_path / f"study.{trigger}x" / "moving.transforms"
    qc = register.register_to_reference(
        pair["moving"], pair["fixed"], folder.parent / "moving.nii.gz", folder, folder.parent / "qc.json",
        seed=3,
    )
    assert qc["status"] == "ok", qc["reason"]
    assert sorted(p.name for p in folder.iterdir()) == ["0GenericAffine.mat", "1Warp.nii.gz"]
    warp = np.asarray(nib.load(folder / "1Warp.nii.gz").dataobj)
    expected = np.asarray(nib.load(registered["folder"] / "moving.transforms" / "1Warp.nii.gz").dataobj)
    assert np.array_equal(warp, expected)
    assert not list((tmp_path / "tmp").iterdir())  # the scratch folder is gone


def test_a_temporary_directory_ants_would_misread_is_a_clear_error(pair, tmp_path, monkeypatch):
    unsafe_tmp = tmp_path / "scratch.h5"
    unsafe_tmp.mkdir()
    monkeypatch.setattr(register.tempfile, "tempdir", str(unsafe_tmp))
    out = tmp_path / "study.h5"
    with pytest.raises(ConfigError, match=r"study\.h5.*TMPDIR") as excinfo:
        register.register_to_reference(
            pair["moving"], pair["fixed"], out / "o.nii.gz", out / "t", out / "q.json", seed=3
        )
    assert not (out / "t").exists() and not list(unsafe_tmp.iterdir())
    assert "study.h5/t" in str(excinfo.value) and ".tmp" not in str(excinfo.value)  # the folder asked for


def test_syn_that_writes_no_warp_is_a_failed_registration(pair, tmp_path, monkeypatch):
    """antsRegistration returning without its warp fails the subject's QC (no silent rigid-only result)."""
    real_run = register._run_ants

    def run_then_lose_the_warp(fixed, moving, stages, prefix, seed):
        real_run(fixed, moving, stages, prefix, seed)
        Path(prefix, register.WARP_FILE).unlink()

    monkeypatch.setattr(register, "_run_ants", run_then_lose_the_warp)
    qc = register.register_to_reference(
        pair["moving"], pair["fixed"], tmp_path / "o.nii.gz", tmp_path / "t", tmp_path / "q.json", seed=3
    )
    assert qc["status"] == "failed" and f"wrote no {register.WARP_FILE}" in qc["reason"]


def test_a_failed_batch_keeps_finished_subjects_and_the_rerun_restores_them(
    pair, registered, tmp_path, monkeypatch
):
    """pipeline.preprocess.batch --resume-dir: Snakemake deletes a failed register job's output folder;
    the subjects it had finished (register, then apply to a partner) come back from the resume
    folder on the rerun over two forked workers (not registered again, bit-identical), a successful
    batch clears it, a kept subject whose input changed since is registered again, and a damaged
    entry only costs the shortcut."""
    from pipeline.preprocess import batch

    reference_json = tmp_path / "reference.json"
    reference_json.write_text(json.dumps({"path": str(pair["fixed"])}))
    out, resume, log = tmp_path / "subjects", tmp_path / "resume", tmp_path / "registered.log"
    first, second = tmp_path / "first_in.nii.gz", tmp_path / "second_in.nii.gz"
    first.write_bytes(pair["moving"].read_bytes())

    def task(name: str, moving: Path) -> list[list[str]]:
        return [
            ["register", "--moving", str(moving), "--reference-json", str(reference_json),
             "--out", str(out / f"{name}.nii.gz"), "--transforms", str(out / f"{name}.transforms"),
             "--qc", str(out / f"{name}.qc.json"), "--seed", "3"],
            ["apply", "--image", str(pair["moving_brain"]), "--reference-json", str(reference_json),
             "--transforms", str(out / f"{name}.transforms"), "--out", str(out / f"{name}.brain.nii.gz")],
        ]  # fmt: skip

    real = register.register_to_reference

    def counted(moving, *args, **kwargs):  # forked workers append to one file
        with open(log, "a") as fh:
            fh.write(f"{Path(moving).name}\n")
        return real(moving, *args, **kwargs)

    def registered_since() -> list[str]:
        names = log.read_text().split() if log.exists() else []
        log.unlink(missing_ok=True)
        return sorted(names)

    monkeypatch.setattr(register, "register_to_reference", counted)
    tasks = [task("first", first), task("second", second)]  # second's input is missing
    with pytest.raises(batch.BatchCommandFailed, match="second_in.nii.gz"):
        batch.run_batch("pipeline.preprocess.register", tasks, resume_dir=resume)
    assert registered_since() == ["first_in.nii.gz", "second_in.nii.gz"]  # the second one fails
    assert len([p for p in resume.iterdir() if (p / "complete").is_file()]) == 1
    first_brain = (out / "first.brain.nii.gz").read_bytes()
    shutil.rmtree(out)  # what Snakemake does with a failed job's output folder

    second.write_bytes(pair["moving"].read_bytes())
    batch.run_batch("pipeline.preprocess.register", tasks, workers=2, resume_dir=resume)
    assert registered_since() == ["second_in.nii.gz"]  # the first one was restored, not registered again
    expected = np.asarray(nib.load(registered["folder"] / "moving.nii.gz").dataobj)
    for name in ("first", "second"):
        assert np.array_equal(np.asarray(nib.load(out / f"{name}.nii.gz").dataobj), expected)
        assert (out / f"{name}.transforms" / register.WARP_FILE).is_file()
    assert (out / "first.brain.nii.gz").read_bytes() == first_brain  # the kept file itself
    brains = [np.asarray(nib.load(out / f"{name}.brain.nii.gz").dataobj) for name in ("first", "second")]
    assert np.array_equal(*brains)
    qc = json.loads((out / "first.qc.json").read_text())
    assert qc["ncc_final"] == registered["qc"]["ncc_final"]
    assert not resume.exists()  # a successful batch clears it

    failing = [tasks[0], task("x", tmp_path / "none")]
    with pytest.raises(batch.BatchCommandFailed):  # keeps the first subject again
        batch.run_batch("pipeline.preprocess.register", failing, resume_dir=resume)
    image = nib.load(first)
    nib.save(nib.Nifti1Image(np.asarray(image.dataobj) * 0.9, image.affine), first)  # same path, new content
    registered_since()
    batch.run_batch("pipeline.preprocess.register", [tasks[0]], resume_dir=resume)
    assert registered_since() == ["first_in.nii.gz"]

    with pytest.raises(batch.BatchCommandFailed):
        batch.run_batch("pipeline.preprocess.register", failing, resume_dir=resume)
    (entry,) = [p for p in resume.iterdir() if (p / "complete").is_file()]
    (entry / "complete").write_text("{damaged")
    registered_since()
    batch.run_batch("pipeline.preprocess.register", [tasks[0]], resume_dir=resume)
    assert registered_since() == ["first_in.nii.gz"]  # ran again instead of restoring a damaged entry


def test_what_a_kept_registration_is_keyed_on(pair, registered, tmp_path):
    """An apply whose transforms the task did not write is keyed on their contents; a command the
    stage cannot resume (choose) makes the task run without a key."""
    from pipeline.preprocess import batch

    transforms = tmp_path / "t.transforms"
    shutil.copytree(registered["folder"] / "moving.transforms", transforms)
    apply = [["apply", "--image", str(pair["moving_brain"]), "--reference", str(pair["fixed"]),
              "--transforms", str(transforms), "--out", str(tmp_path / "o.nii.gz")]]  # fmt: skip
    assert register.resume_outputs(apply) == [tmp_path / "o.nii.gz"]
    before = batch._task_key(register, apply)
    (transforms / register.WARP_FILE).write_bytes(b"changed")
    assert before is not None and batch._task_key(register, apply) != before
    choose = [["choose", "--inputs", str(pair["moving"]), "--out", str(tmp_path / "r.json")]]
    assert batch._task_key(register, choose) is None
