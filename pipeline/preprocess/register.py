"""Registered stage: every subject of a dataset is mapped onto one reference subject with ANTs.

Rigid then deformable SyN (report 001, section 2.1), run through antsRegistration's full
interface so that every stage's iterations, shrink factors and smoothing are knobs.

Determinism: ANTs gives different results run to run unless its multi-threaded metric sums run on
one thread and its sampling is seeded. ITK reads ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS once, when
its first filter runs, so this module pins it *before* importing ants; in antspyx 0.6.3,
``ants.config.set_ants_deterministic`` does no more than set that variable (too late once ITK ran)
and a seed that the full interface ignores, so the seed goes to antsRegistration as
``--random-seed`` instead. One thread per job is fine: Snakemake runs subjects in parallel.

Outputs per subject (all written, whatever the outcome, so that a failed subject never stops
the workflow unless asked to): the image on the reference grid, a transforms folder holding
``0GenericAffine.mat`` (centre-of-mass initialisation + rigid) and, for SyN, ``1Warp.nii.gz``,
and a QC JSON. A subject whose registration is implausible gets ``"status": "failed"`` and a
reason in its QC JSON; its image is still written (for inspection) and the slice stage drops it.
If ANTs itself raised or returned without writing its transforms (it reports some write failures
on stderr only), the transforms folder holds an identity affine and the image is the subject
resampled onto the reference grid as is.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

_THREADS_VARIABLE = "ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"
# True unless ants was imported (and perhaps ran ITK) before the variable was pinned.
_THREADS_PINNED = "ants" not in sys.modules or os.environ.get(_THREADS_VARIABLE) == "1"
os.environ[_THREADS_VARIABLE] = "1"

import ants  # after the thread pinning above
import nibabel as nib
import numpy as np
from ants.internal import get_pointer_string

from pipeline.atomic import atomic_dir, atomic_path, write_json
from pipeline.errors import ConfigError, InputDataError, PipelineError, RegistrationError
from pipeline.preprocess import OPTIONAL, run_commands_cli, stage_parser

_log = logging.getLogger(__name__)

AFFINE_FILE = "0GenericAffine.mat"
WARP_FILE = "1Warp.nii.gz"
TRANSFORMS = ("Rigid", "SyN")
ON_FAILURE = ("exclude", "stop")
#: ANTs metric -> its sampling parameter (neighbourhood radius for CC, histogram bins for MI),
#: the values antsRegistrationSyN.sh uses.
METRIC_PARAMETER = {"CC": 2, "MI": 32, "Mattes": 32, "MeanSquares": 0}
#: A level stops early once the metric's slope over the last 10 iterations is below 1e-6
#: (antsRegistrationSyN.sh's convergence threshold and window).
CONVERGENCE = "1e-6,10"
#: antsRegistration picks how to write each transform from substrings of the output path it is
#: given (case-sensitive; ANTs' itkantsReadWriteTransform.h, WriteTransform): with any of these
#: anywhere in it (a folder's name included), it writes the SyN warp field as a transform file,
#: which fails with a message on stderr only, leaving the affine alone and a "successful"
#: rigid-only registration (seen when a temporary folder's random name began "h5"). A comma or
#: bracket would split its ``--output [prefix]`` option instead.
ANTS_PATH_TRIGGERS = (".h5", ".hdf5", ".hdf4", ".xfm", ".mat", ".txt", ",", "[", "]")
INVERSE_WARP_FILE = "1InverseWarp.nii.gz"


def _check_determinism(seed: int) -> None:
    if not _THREADS_PINNED:
        raise PipelineError(
            f"ants was imported before pipeline.preprocess.register could set {_THREADS_VARIABLE}=1; "
            "registration would not be reproducible (import this module first, or export the variable)"
        )
    if not isinstance(seed, (int, np.integer)) or seed < 1:
        raise ConfigError(
            f"register.seed: must be an integer >= 1 (ANTs reads 0 as 'seed from the clock'), got {seed!r}"
        )
    os.environ["ANTS_RANDOM_SEED"] = str(int(seed))


def _read_volume(path: str | Path) -> ants.ANTsImage:
    path = Path(path)
    if not path.is_file():
        raise InputDataError(path, "file not found")
    try:
        values = np.asanyarray(nib.load(path).dataobj)  # ITK's reader turns NaN into 0 silently
        image = ants.image_read(str(path), pixeltype="float")
    except Exception as exc:  # nibabel and ITK raise many types for a bad file
        raise InputDataError(path, f"not a readable NIfTI image ({exc})") from exc
    if values.ndim != 3:
        raise InputDataError(path, f"expected a 3-D volume, got shape {values.shape}")
    if not np.all(np.isfinite(values)):
        raise InputDataError(path, "contains NaN or infinite voxels")
    if np.ptp(values) == 0:
        raise InputDataError(path, "is constant (empty volume)")
    return image


def _ncc(a: np.ndarray, b: np.ndarray) -> float:
    """Normalised cross-correlation over the whole grid; 0 when either image is constant."""
    a = a.ravel().astype(np.float64) - a.mean()
    b = b.ravel().astype(np.float64) - b.mean()
    denominator = np.sqrt(np.dot(a, a) * np.dot(b, b))
    return float(np.dot(a, b) / denominator) if denominator > 0 else 0.0


def _stage_arguments(
    kind: str,
    fixed: ants.ANTsImage,
    moving: ants.ANTsImage,
    metric: str,
    iterations: Sequence[int],
    shrink_factors: Sequence[int],
    smoothing_sigmas: Sequence[float],
    *,
    sampling_fraction: float = 1.0,
    gradient_step: float,
    flow_sigma: float = 3.0,
    total_sigma: float = 0.0,
) -> list[str]:
    """One antsRegistration stage (--transform, --metric, --convergence, pyramid)."""
    if not len(iterations) == len(shrink_factors) == len(smoothing_sigmas):
        raise ConfigError(
            f"register: {kind} iterations, shrink factors and smoothing sigmas need one value per level, "
            f"got {list(iterations)}, {list(shrink_factors)}, {list(smoothing_sigmas)}"
        )
    if metric not in METRIC_PARAMETER:
        raise ConfigError(
            f"register: {kind} metric must be one of {sorted(METRIC_PARAMETER)}, got {metric!r}"
        )
    pair = f"{get_pointer_string(fixed)},{get_pointer_string(moving)},1,{METRIC_PARAMETER[metric]}"
    sampling = f",Regular,{sampling_fraction}" if sampling_fraction < 1 else ""
    transform = (
        f"SyN[{gradient_step},{flow_sigma},{total_sigma}]" if kind == "SyN" else f"{kind}[{gradient_step}]"
    )
    return [
        "--transform", transform,
        "--metric", f"{metric}[{pair}{sampling}]",
        "--convergence", f"[{'x'.join(str(int(i)) for i in iterations)},{CONVERGENCE}]",
        "--shrink-factors", "x".join(str(int(s)) for s in shrink_factors),
        "--smoothing-sigmas", "x".join(f"{float(s):g}" for s in smoothing_sigmas) + "vox",
    ]  # fmt: skip


def _run_ants(
    fixed: ants.ANTsImage, moving: ants.ANTsImage, stages: list[str], prefix: str, seed: int
) -> None:
    """antsRegistration with a centre-of-mass start; transforms are written as ``prefix`` + AFFINE_FILE..."""
    arguments = [
        "--dimensionality", "3",
        "--float", "1",
        "--output", f"[{prefix}]",
        "--interpolation", "Linear",
        "--initial-moving-transform", f"[{get_pointer_string(fixed)},{get_pointer_string(moving)},1]",
        *stages,
        "--random-seed", str(int(seed)),
        "--collapse-output-transforms", "1",
        "--write-composite-transform", "0",
    ]  # fmt: skip
    ants.registration(arguments, None)


def _ants_can_write_to(folder: Path) -> bool:
    """False where antsRegistration would misread the output prefix ``folder`` + "/" (exactly the
    string it is given: :data:`ANTS_PATH_TRIGGERS`)."""
    return not any(trigger in f"{folder}{os.sep}" for trigger in ANTS_PATH_TRIGGERS)


@contextlib.contextmanager
def _ants_output_folder(work: Path, target: Path) -> Iterator[Path]:
    """Where antsRegistration writes ``target``'s transforms: ``work`` (its temporary folder)
    itself, or, when that path would be misread, a scratch folder under the system's temporary
    directory whose files are moved into ``work`` afterwards (the unused inverse warp left
    behind); a clear error naming ``target`` when neither path is safe."""
    if _ants_can_write_to(work):
        yield work
        return
    scratch = Path(tempfile.mkdtemp(prefix="ants-"))
    try:
        if not _ants_can_write_to(scratch):
            raise ConfigError(
                f"{target}: antsRegistration misreads an output path containing any of "
                f"{' '.join(ANTS_PATH_TRIGGERS)} (it silently drops the warp field), and the temporary "
                f"directory {scratch.parent} has one too: rename the folder or set TMPDIR"
            )
        yield scratch
        (scratch / INVERSE_WARP_FILE).unlink(missing_ok=True)
        for written in scratch.iterdir():
            shutil.move(str(written), str(work / written.name))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _rigid_stage(fixed: ants.ANTsImage, moving: ants.ANTsImage, knobs: dict) -> list[str]:
    """The rigid stage from the ``rigid_*`` knobs of ``register_to_reference``."""
    return _stage_arguments(
        "Rigid",
        fixed,
        moving,
        knobs["rigid_metric"],
        knobs["rigid_iterations"],
        knobs["rigid_shrink_factors"],
        knobs["rigid_smoothing_sigmas"],
        sampling_fraction=knobs["rigid_sampling_fraction"],
        gradient_step=knobs["rigid_gradient_step"],
    )


def _warp(reference: ants.ANTsImage, image: ants.ANTsImage, transforms_dir: Path) -> ants.ANTsImage:
    transform_list = [
        str(transforms_dir / name) for name in (WARP_FILE, AFFINE_FILE) if (transforms_dir / name).exists()
    ]
    if not (transforms_dir / AFFINE_FILE).exists():
        raise InputDataError(transforms_dir, f"no {AFFINE_FILE}: not a transforms folder written by register")
    return ants.apply_transforms(reference, image, transform_list, interpolator="linear", defaultvalue=0.0)


@functools.lru_cache(maxsize=4)
def _head_mask(reference_path: Path, mtime_ns: int, size: int) -> ants.ANTsImage:
    """ants.get_mask of the reference volume (above-mean voxels, cleaned up and filled), once per
    process and reference file (its morphology costs ~0.3 s, the same for every subject of a
    dataset); the file's mtime and size are part of the key, so a rewritten reference is read again."""
    return ants.get_mask(_read_volume(reference_path))


def _jacobian_range_in_head(reference: ants.ANTsImage, reference_path: Path, warp_file: Path) -> tuple[float, float]:
    """Jacobian determinant extremes inside the reference head (:func:`_head_mask` of the file
    ``reference`` was read from). Outside it, the field only has to bridge air and the
    field-of-view edge, where extreme values mean nothing."""
    jacobian = ants.create_jacobian_determinant_image(reference, str(warp_file))  # on the warp's grid
    stat = reference_path.stat()
    head = (
        ants.resample_image_to_target(
            _head_mask(reference_path.resolve(), stat.st_mtime_ns, stat.st_size), jacobian,
            interp_type="nearestNeighbor",
        ).numpy()
        > 0
    )
    values = jacobian.numpy()[head] if head.any() else jacobian.numpy().ravel()
    return float(values.min()), float(values.max())


def _write_image(image: ants.ANTsImage, target: Path) -> None:
    with atomic_path(target) as tmp:
        ants.image_write(image.clone("float"), str(tmp))


def _write_identity_affine(folder: Path) -> None:
    ants.write_transform(
        ants.create_ants_transform(transform_type="AffineTransform", dimension=3), str(folder / AFFINE_FILE)
    )


def choose_reference(
    volumes: dict[str, Path],
    out_json: str | Path,
    seed: int,
    exclude: Sequence[str] = (),
    rigid_iterations: Sequence[int] = (100, 50),
    rigid_shrink_factors: Sequence[int] = (8, 4),
    rigid_smoothing_sigmas: Sequence[float] = (3, 2),
    rigid_metric: str = "MI",
    rigid_sampling_fraction: float = 0.25,
    rigid_gradient_step: float = 0.1,
) -> str:
    """Pick the subject most like its group, with n - 1 rigid registrations.

    The provisional reference is the subject of median head volume (Otsu foreground), so that an
    odd scan is not the frame everyone is aligned to. Every other subject is rigidly aligned to it;
    each subject's score is the NCC between it and the mean of the *other* aligned subjects
    (leave-one-out, so that no subject is compared with itself). Highest score wins; ties go to
    the first subject id. Writes ``out_json`` and returns the chosen subject id.
    The rigid knobs mean what they mean in ``register_to_reference``.
    """
    rigid_knobs = {name: value for name, value in locals().items() if name.startswith("rigid_")}
    _check_determinism(seed)
    candidates = sorted(subject for subject in volumes if subject not in set(exclude))
    if not candidates:
        raise InputDataError(Path(out_json).parent, "no candidate left to choose a reference from")
    images = {subject: _read_volume(volumes[subject]) for subject in candidates}
    head_volume = {
        s: float(ants.threshold_image(images[s], "Otsu", 1).sum() * np.prod(images[s].spacing))
        for s in candidates
    }
    by_volume = sorted(candidates, key=lambda s: (head_volume[s], s))
    provisional = by_volume[(len(by_volume) - 1) // 2]
    fixed = images[provisional]

    aligned: dict[str, np.ndarray] = {}
    with tempfile.TemporaryDirectory(prefix="choose_reference-") as work:
        for subject in candidates:
            if subject == provisional:
                aligned[subject] = fixed.numpy()
                continue
            start = time.perf_counter()
            prefix = str(Path(work) / f"{subject}_")
            moving = images[subject]
            stage = _rigid_stage(fixed, moving, rigid_knobs)
            try:
                _run_ants(fixed, moving, stage, prefix, seed)
            except RuntimeError as exc:
                raise RegistrationError(
                    f"{volumes[subject]}: rigid alignment to {volumes[provisional]} failed ({exc})"
                ) from exc
            warped = ants.apply_transforms(fixed, moving, [f"{prefix}{AFFINE_FILE}"], interpolator="linear")
            aligned[subject] = warped.numpy()
            _log.info("rigid %s -> %s: %.1f s", subject, provisional, time.perf_counter() - start)

    total = np.sum([aligned[s].astype(np.float64) for s in candidates], axis=0)
    scores = {}
    for subject in candidates:
        others = (total - aligned[subject]) / (len(candidates) - 1) if len(candidates) > 1 else total
        scores[subject] = round(_ncc(aligned[subject], others), 6)
    chosen = max(candidates, key=lambda s: (scores[s], -candidates.index(s)))
    write_json(
        out_json,
        {
            "reference": chosen,
            "path": str(volumes[chosen]),
            "score": scores[chosen],
            "scores": scores,
            "provisional": provisional,
            "excluded": sorted(set(exclude) & set(volumes)),
            "seed": int(seed),
            "method": "rigid alignment of every subject to the provisional reference (median Otsu head "
            "volume); score = NCC to the mean of the other aligned subjects; highest score wins",
        },
    )
    _log.info("reference: %s (NCC %.4f, %d candidates)", chosen, scores[chosen], len(candidates))
    return chosen


def _implausibility(
    jacobian_range: tuple[float, float],
    ncc_rigid: float,
    ncc_final: float,
    max_jacobian: float,
    min_similarity: float,
) -> str | None:
    """Why a finished registration is not credible, or None."""
    problems = []
    if not 1 / max_jacobian <= jacobian_range[0] <= jacobian_range[1] <= max_jacobian:
        problems.append(
            f"Jacobian determinant range [{jacobian_range[0]:.3f}, {jacobian_range[1]:.3f}] "
            f"outside the plausible [{1 / max_jacobian:.3g}, {max_jacobian:.3g}]"
        )
    if ncc_final < ncc_rigid:
        problems.append(
            f"similarity fell in the deformable stage "
            f"(NCC {ncc_rigid:.4f} after rigid, {ncc_final:.4f} after SyN)"
        )
    if ncc_final < min_similarity:
        problems.append(f"NCC to the reference {ncc_final:.4f} is below min_similarity {min_similarity}")
    return "; ".join(problems) or None


def register_to_reference(
    moving_path: str | Path,
    reference_path: str | Path,
    out_image: str | Path,
    transforms_dir: str | Path,
    qc_json: str | Path,
    seed: int,
    transform: str = "SyN",
    rigid_iterations: Sequence[int] = (100, 50),
    rigid_shrink_factors: Sequence[int] = (8, 4),
    rigid_smoothing_sigmas: Sequence[float] = (3, 2),
    rigid_metric: str = "MI",
    rigid_sampling_fraction: float = 0.25,
    rigid_gradient_step: float = 0.1,
    syn_iterations: Sequence[int] = (30, 15, 5),
    syn_shrink_factors: Sequence[int] = (8, 4, 2),
    syn_smoothing_sigmas: Sequence[float] = (3, 2, 1),
    syn_metric: str = "MI",
    syn_gradient_step: float = 0.2,
    syn_flow_sigma: float = 3.0,
    syn_total_sigma: float = 0.0,
    max_jacobian: float = 10.0,
    min_similarity: float = 0.5,
    on_failure: str = "exclude",
) -> dict:
    """Rigid then SyN registration of one subject onto the reference grid; returns the QC record.

    Defaults are the fast setting (2 mm volumes, ~10 s a subject on one thread): coarse pyramids
    with no level at full resolution, and MI (robust to the scanner-to-scanner intensity drift left
    after MR normalisation). For real use at 1 mm add levels and iterations (see params.yaml).

    transform: "SyN" (rigid + deformable) or "Rigid" (rigid only).
    rigid_*: rigid stage pyramid (iterations, shrink factors, smoothing sigmas in voxels per level),
        metric (CC, MI, Mattes, MeanSquares) and the fraction of voxels it samples (regular grid,
        seeded jitter; 1 = all) and its gradient step.
    syn_*: the SyN stage pyramid and metric; gradient step, update-field and total-field smoothing.
    max_jacobian: the deformation's Jacobian determinant must stay within [1 / max_jacobian,
        max_jacobian] inside the reference head (below: tissue crushed or folded; above: blown up).
    min_similarity: lowest acceptable NCC between the registered subject and the reference.
    on_failure: "exclude" writes every output and marks the QC failed; "stop" raises
        RegistrationError naming the subject file (after writing the QC JSON).
    """
    # The knobs of this call, for the QC record (taken before any other local variable exists).
    settings = {
        name: list(value) if isinstance(value, tuple) else value
        for name, value in locals().items()
        if name.startswith(("rigid_", "syn_", "max_jacobian", "min_similarity"))
    }
    _check_determinism(seed)
    if transform not in TRANSFORMS:
        raise ConfigError(f"register.transform: must be one of {TRANSFORMS}, got {transform!r}")
    if on_failure not in ON_FAILURE:
        raise ConfigError(f"register.on_failure: must be one of {ON_FAILURE}, got {on_failure!r}")
    if not max_jacobian > 1:
        raise ConfigError(f"register.max_jacobian: must be > 1, got {max_jacobian}")
    moving_path, reference_path = Path(moving_path), Path(reference_path)
    transforms_dir = Path(transforms_dir)
    moving = _read_volume(moving_path)
    reference = _read_volume(reference_path)
    start = time.perf_counter()
    qc: dict = {
        "subject": moving_path.name.split(".")[0],
        "moving": str(moving_path),
        "reference": str(reference_path),
        "transform": transform,
        "seed": int(seed),
        "antspyx": ants.__version__,
    }
    is_reference = moving_path.resolve() == reference_path.resolve()
    ncc_identity = _ncc(
        ants.resample_image_to_target(moving, reference, interp_type="linear").numpy(), reference.numpy()
    )
    failure = None
    with atomic_dir(transforms_dir) as work:
        if is_reference:
            _write_identity_affine(work)
        else:
            stages = _rigid_stage(reference, moving, settings)
            if transform == "SyN":
                stages += _stage_arguments(
                    "SyN",
                    reference,
                    moving,
                    syn_metric,
                    syn_iterations,
                    syn_shrink_factors,
                    syn_smoothing_sigmas,
                    gradient_step=syn_gradient_step,
                    flow_sigma=syn_flow_sigma,
                    total_sigma=syn_total_sigma,
                )
            try:
                with _ants_output_folder(work, transforms_dir) as written:
                    _run_ants(reference, moving, stages, f"{written}{os.sep}", seed)
                expected = (AFFINE_FILE, WARP_FILE) if transform == "SyN" else (AFFINE_FILE,)
                missing = [name for name in expected if not (work / name).exists()]
                if missing:
                    raise RuntimeError(f"it wrote no {' or '.join(missing)} (its messages on stderr say why)")
            except RuntimeError as exc:
                failure = f"antsRegistration failed: {exc}"
                for leftover in work.iterdir():
                    leftover.unlink()
                _write_identity_affine(work)
            (work / INVERSE_WARP_FILE).unlink(missing_ok=True)  # not used downstream; saves disk

        rigid_only = ants.apply_transforms(
            reference, moving, [str(work / AFFINE_FILE)], interpolator="linear"
        )
        warped = _warp(reference, moving, work)
        ncc_rigid = _ncc(rigid_only.numpy(), reference.numpy())
        ncc_final = _ncc(warped.numpy(), reference.numpy())
        jacobian_range = (
            _jacobian_range_in_head(reference, reference_path, work / WARP_FILE)
            if (work / WARP_FILE).exists()
            else (1.0, 1.0)
        )

        if failure is None:
            failure = _implausibility(jacobian_range, ncc_rigid, ncc_final, max_jacobian, min_similarity)
        qc.update(
            status="failed" if failure else "ok",
            reason=failure or ("reference subject: identity transform" if is_reference else ""),
            ncc_identity=round(ncc_identity, 6),
            ncc_rigid=round(ncc_rigid, 6),
            ncc_final=round(ncc_final, 6),
            jacobian_min=round(jacobian_range[0], 6),
            jacobian_max=round(jacobian_range[1], 6),
            settings=settings,
        )
        if failure is not None and on_failure == "stop":
            write_json(qc_json, qc)  # the only output left behind: it says why
            raise RegistrationError(f"{moving_path}: registration to {reference_path} failed: {failure}")
        if is_reference:
            with atomic_path(out_image) as tmp:
                tmp.write_bytes(reference_path.read_bytes())
        else:
            _write_image(warped, Path(out_image))

    write_json(qc_json, qc)
    _log.info(
        "%s: %s in %.1f s (NCC %.4f -> %.4f -> %.4f, Jacobian %.3f..%.3f)%s",
        qc["subject"],
        qc["status"],
        time.perf_counter() - start,
        ncc_identity,
        ncc_rigid,
        ncc_final,
        *jacobian_range,
        f": {failure}" if failure else "",
    )
    return qc


def apply_subject_transforms(
    image_path: str | Path, reference_path: str | Path, transforms_dir: str | Path, out_path: str | Path
) -> None:
    """Warp a partner image with its subject's transforms onto the reference grid (linear)."""
    warped = _warp(_read_volume(reference_path), _read_volume(image_path), Path(transforms_dir))
    _write_image(warped, Path(out_path))


def read_reference_json(path: str | Path) -> Path:
    """The reference volume named by a ``choose`` JSON."""
    path = Path(path)
    try:
        return Path(json.loads(path.read_text())["path"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise InputDataError(path, f"not a reference JSON written by 'register choose' ({exc})") from exc


def _add_rigid_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--rigid-iterations", dest="rigid_iterations", type=int, nargs="+", **OPTIONAL)
    parser.add_argument(
        "--rigid-shrink-factors", dest="rigid_shrink_factors", type=int, nargs="+", **OPTIONAL
    )
    parser.add_argument(
        "--rigid-smoothing-sigmas", dest="rigid_smoothing_sigmas", type=float, nargs="+", **OPTIONAL
    )
    parser.add_argument("--rigid-metric", dest="rigid_metric", choices=sorted(METRIC_PARAMETER), **OPTIONAL)
    parser.add_argument("--rigid-sampling-fraction", dest="rigid_sampling_fraction", type=float, **OPTIONAL)
    parser.add_argument("--rigid-gradient-step", dest="rigid_gradient_step", type=float, **OPTIONAL)


def _parser() -> argparse.ArgumentParser:
    parser = stage_parser("pipeline.preprocess.register", __doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    choose = commands.add_parser("choose", help="pick the dataset's reference subject")
    choose.add_argument(
        "--inputs",
        required=True,
        type=Path,
        nargs="+",
        help="windowed volumes; subject id = name before the first dot",
    )
    choose.add_argument("--out", required=True, type=Path)
    choose.add_argument("--seed", required=True, type=int)
    choose.add_argument("--exclude", nargs="*", default=(), help="subject ids that may not be the reference")
    _add_rigid_options(choose)

    register = commands.add_parser("register", help="register one subject onto the reference")
    register.add_argument("--moving", required=True, type=Path)
    register.add_argument("--reference-json", dest="reference_json", required=True, type=Path)
    register.add_argument("--out", required=True, type=Path)
    register.add_argument("--transforms", required=True, type=Path)
    register.add_argument("--qc", required=True, type=Path)
    register.add_argument("--seed", required=True, type=int)
    register.add_argument("--transform", choices=TRANSFORMS, **OPTIONAL)
    _add_rigid_options(register)
    register.add_argument("--syn-iterations", dest="syn_iterations", type=int, nargs="+", **OPTIONAL)
    register.add_argument("--syn-shrink-factors", dest="syn_shrink_factors", type=int, nargs="+", **OPTIONAL)
    register.add_argument(
        "--syn-smoothing-sigmas", dest="syn_smoothing_sigmas", type=float, nargs="+", **OPTIONAL
    )
    register.add_argument("--syn-metric", dest="syn_metric", choices=sorted(METRIC_PARAMETER), **OPTIONAL)
    register.add_argument("--syn-gradient-step", dest="syn_gradient_step", type=float, **OPTIONAL)
    register.add_argument("--syn-flow-sigma", dest="syn_flow_sigma", type=float, **OPTIONAL)
    register.add_argument("--syn-total-sigma", dest="syn_total_sigma", type=float, **OPTIONAL)
    register.add_argument("--max-jacobian", dest="max_jacobian", type=float, **OPTIONAL)
    register.add_argument("--min-similarity", dest="min_similarity", type=float, **OPTIONAL)
    register.add_argument("--on-failure", dest="on_failure", choices=ON_FAILURE, **OPTIONAL)

    apply = commands.add_parser("apply", help="warp a partner image with its subject's transforms")
    apply.add_argument("--image", required=True, type=Path)
    target = apply.add_mutually_exclusive_group(required=True)
    target.add_argument("--reference", type=Path, help="the reference volume (target grid)")
    target.add_argument("--reference-json", dest="reference_json", type=Path, help="or the choose JSON")
    apply.add_argument("--transforms", required=True, type=Path)
    apply.add_argument("--out", required=True, type=Path)
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    run_commands_cli(_parser(), {"choose": _choose, "register": _register, "apply": _apply}, argv)


def _choose(inputs: list[Path], out: Path, **knobs) -> None:
    volumes = {path.name.split(".")[0]: path for path in inputs}
    if len(volumes) != len(inputs):
        raise ConfigError("register choose --inputs: two files give the same subject id")
    choose_reference(volumes, out, **knobs)


def _register(moving: Path, reference_json: Path, out: Path, transforms: Path, qc: Path, **knobs) -> None:
    register_to_reference(moving, read_reference_json(reference_json), out, transforms, qc, **knobs)


def _apply(
    image: Path, reference: Path | None, reference_json: Path | None, transforms: Path, out: Path
) -> None:
    apply_subject_transforms(image, reference or read_reference_json(reference_json), transforms, out)


def resume_outputs(task: Sequence[Sequence[str]]) -> list[Path]:
    """What one subject's task (``register``, then ``apply`` for its partners) writes, for
    pipeline.preprocess.batch --resume-dir; ConfigError for a command it cannot resume."""
    outputs: list[Path] = []
    for argv in task:
        command = argv[0] if argv else ""
        flags = {"register": ("--out", "--transforms", "--qc"), "apply": ("--out",)}.get(command)
        if flags is None:
            raise ConfigError(f"batch --resume-dir: cannot resume 'register {command}' commands")
        outputs += [Path(value) for flag, value in zip(argv, argv[1:]) if flag in flags]
    return outputs


def resume_inputs(task: Sequence[Sequence[str]]) -> list[Path]:
    """Every file or folder one subject's task reads, the reference volume behind
    ``--reference-json`` included, and an ``apply``'s transforms unless the task's own ``register``
    writes them: pipeline.preprocess.batch keys a kept result on their contents."""
    inputs: list[Path] = []
    written: set[str] = set()
    for argv in task:
        for flag, value in zip(argv, argv[1:]):
            if flag in ("--moving", "--image", "--reference"):
                inputs.append(Path(value))
            elif flag == "--reference-json":
                inputs += [Path(value), read_reference_json(value)]
            elif flag == "--transforms" and argv[0] == "apply" and value not in written:
                inputs.append(Path(value))
        if argv and argv[0] == "register":
            written.update(value for flag, value in zip(argv, argv[1:]) if flag == "--transforms")
    return inputs


def resume_versions() -> str:
    """The libraries whose version changes a registration, for pipeline.preprocess.batch's key."""
    return ", ".join(
        f"{name} {version}"
        for name, version in (("antspyx", ants.__version__), ("nibabel", nib.__version__),
                              ("numpy", np.__version__), ("python", sys.version))
    )  # fmt: skip


if __name__ == "__main__":
    main()
