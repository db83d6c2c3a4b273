"""Slices stage: one axial slab per subject, at the same reference-space index for everyone.

All volumes are registered onto the dataset's reference, so one index chosen on the reference
(a fraction of its head's z-extent) picks the same anatomy in every subject. Each slice is padded
to a square, resized, oriented for display (anterior at the top, the patient's left on the
image's right) and clipped to [0, 1]. Subjects, never slices, are split into train / val / test,
so no patient leaks between splits; subjects with a partner (the same anatomy in the other
modality) always go to test, where the partner is scored against the translation. Subjects whose
registration QC failed are dropped and listed, with the reason, in the manifest.

Framing (``frame_mm``): each dataset is registered onto its own reference subject, whose head sits
wherever its scanner put it on a grid of its own extent, so padding the whole plane to a square
leaves two datasets' heads at different places and scales in the frame. A translator between them
then learns to move and rescale the anatomy (measured on the headline's proof data: CT and T2 heads
3.3 px apart at 64 px, and both CycleGAN directions moved the head by 3.4 px; docs/evaluation.md).
With ``frame_mm`` set, every slice is resampled from the same square of the reference grid: centred
(to a fraction of a voxel) on the reference head's bounding box over the slab (above a tenth of its
maximum, largest component), ``frame_mm`` millimetres a side, zero beyond the grid. Every dataset's
reference head then sits centred at the same millimetres per pixel, whatever its grid; the head's
own size and shape stay as scanned (a box fitted to the head would scale each modality by what its
window shows of the head: skull in CT, scalp or brain in T2). None pads the whole plane instead.

Outputs in ``out_dir``: ``train.npz``, ``val.npz``, ``test.npz`` (arrays ``images`` float32
(N, size, size), ``subject_ids`` str, ``slice_index`` int; test also ``partner`` and
``has_partner``; for CT partners also kept over a full HU range (``partners_hu``: the window stage's
``partner --hu-range`` files, [0, 1] over ``partner_hu_range``) ``partner_hu`` float32 in HU and
``partner_hu_range``), ``manifest.csv`` and ``contact_sheet.png`` (one thumbnail per subject).

``partner`` stays the partner windowed before registration and resizing, as the CT subjects are,
so it is rendered like the images the translator learnt from; ``partner_hu`` goes through the same
registration and resizing in full HU (windowing it afterwards would differ at every tissue edge:
3.4 HU on average at the tiny profile's 32 px).
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import io
import json
import logging
import math
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import nibabel as nib
import numpy as np
from skimage.filters import threshold_otsu
from skimage.transform import resize

from pipeline.atomic import atomic_path
from pipeline.hashing import file_sha256
from pipeline.progress import progress
from pipeline.errors import ConfigError, InputDataError
from pipeline.preprocess import OPTIONAL, add_knob_options, run_cli, stage_parser

_log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
MANIFEST_COLUMNS = ("subject_id", "split", "slice_index", "status", "reason", "sha256")
# A fixed zip timestamp makes the .npz files byte-identical run to run (np.savez stamps "now").
_ZIP_DATE = (1980, 1, 1, 0, 0, 0)


def to_display(axial: np.ndarray) -> np.ndarray:
    """RAS+ axial slice indexed [x, y] -> rows anterior to posterior, columns patient's right to left."""
    return np.asarray(axial).T[::-1, ::-1]


def subject_id(path: str | Path) -> str:
    """Subject id of a stage file: its name up to the first dot (ids hold no dots)."""
    return Path(path).name.split(".")[0]


def read_reference_json(path: str | Path) -> tuple[str, Path]:
    """Reference subject id and volume named by ``register choose``'s JSON.

    Registration maps the reference onto itself by identity (a byte copy), so that volume is also
    the registered reference.
    """
    path = Path(path)
    try:
        record = json.loads(path.read_text())
        return str(record["reference"]), Path(record["path"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise InputDataError(path, f"not a reference JSON written by 'register choose' ({exc})") from exc


def load_volume(path: str | Path) -> nib.Nifti1Image:
    """A 3-D NIfTI volume (its voxels read when asked for); InputDataError naming the file when it
    is missing, not a readable NIfTI image or not 3-D."""
    path = Path(path)
    if not path.is_file():
        raise InputDataError(path, "file not found")
    try:
        image = nib.load(path)
    except Exception as exc:  # nibabel raises many types for a bad file
        raise InputDataError(path, f"not a readable NIfTI image ({exc})") from exc
    if len(image.shape) != 3:
        raise InputDataError(path, f"expected a 3-D volume, got shape {image.shape}")
    return image


def _load_ras(path: str | Path) -> nib.Nifti1Image:
    image = load_volume(path)
    if nib.aff2axcodes(image.affine) != ("R", "A", "S"):
        raise InputDataError(path, f"not RAS+ oriented (axes {''.join(nib.aff2axcodes(image.affine))})")
    return image


def reference_slice_indices(reference_path: str | Path, axial_fraction: float, slab: int) -> list[int]:
    """``slab`` consecutive axial indices centred at ``axial_fraction`` of the head's z-extent.

    The head is the reference's Otsu foreground, so air and the field of view do not move the index.
    """
    reference = _load_ras(reference_path)
    values = reference.get_fdata(dtype=np.float32)
    if np.ptp(values) == 0:
        raise InputDataError(reference_path, "is constant: no head to place the slice in")
    rows = np.flatnonzero((values > threshold_otsu(values)).any(axis=(0, 1)))
    centre = rows[0] + math.floor(axial_fraction * (rows[-1] - rows[0]) + 0.5)
    indices = [int(centre) - (slab - 1) // 2 + offset for offset in range(slab)]
    if indices[0] < 0 or indices[-1] >= values.shape[2]:
        raise ConfigError(
            f"slices.slab: {slab} slices around index {centre} leave the reference's {values.shape[2]} slices"
        )
    return indices


#: The square a slice is cut from, in display coordinates of the reference grid (voxel centres at
#: integers): (top edge, left edge, side), floats; the whole-plane frame is whole voxels.
Frame = tuple[float, float, float]


def whole_plane_frame(shape: Sequence[int]) -> Frame:
    """The whole axial plane (display orientation) zero-padded to a square, centred."""
    height, width = shape[1], shape[0]  # display rows run along y, columns along x
    side = max(height, width)
    return (-((side - height) // 2), -((side - width) // 2), side)


def head_box(reference_values: np.ndarray, indices: Sequence[int]) -> tuple[float, float, float, float]:
    """The reference head's bounding box over the slab ``indices`` in display coordinates (top,
    bottom, left, right: the outer edges of its edge voxels).

    The head: the largest connected component of the slab's mean smoothed (Gaussian, 1 voxel) above a
    tenth of its maximum, so acquisition noise in the background and stray bright voxels do not
    widen the box; its edge is then read on the unsmoothed mean (above a tenth of its maximum).
    """
    from scipy import ndimage

    raw = np.mean([to_display(reference_values[:, :, index]) for index in indices], axis=0).astype(np.float64)
    smooth = ndimage.gaussian_filter(raw, 1.0)
    if not smooth.max() > 0:
        raise InputDataError("reference", f"no head in the reference's slices {list(indices)} to frame")
    mask = smooth > 0.1 * smooth.max()
    labels, count = ndimage.label(mask)
    largest = 1 + int(np.argmax(ndimage.sum_labels(mask, labels, range(1, count + 1))))
    # the smoothing finds the head; its edge is read on the unsmoothed slab (smoothing widens it)
    head = (raw > 0.1 * raw.max()) & ndimage.binary_dilation(labels == largest, iterations=2)
    rows, columns = np.nonzero(head)
    return rows.min() - 0.5, rows.max() + 0.5, columns.min() - 0.5, columns.max() + 0.5


def head_frame(reference: nib.Nifti1Image, indices: Sequence[int], frame_mm: float) -> Frame:
    """The square ``frame_mm`` a side centred on the reference head's box (display coordinates)."""
    zooms = [float(z) for z in reference.header.get_zooms()[:2]]
    if abs(zooms[0] - zooms[1]) > 0.01 * max(zooms):
        raise InputDataError("reference", f"in-plane voxels of {zooms[0]:g} x {zooms[1]:g} mm: framing in mm "
                             "needs square voxels (the windowing stage resamples to preprocess.voxel_mm)")
    top, bottom, left, right = head_box(np.asanyarray(reference.dataobj), indices)
    side = frame_mm / zooms[0]
    extent_mm = max(bottom - top, right - left) * zooms[0]
    if extent_mm > frame_mm:
        raise ConfigError(f"slices.frame_mm: the reference head spans {extent_mm:.0f} mm in its slices, more "
                          f"than the frame's {frame_mm:g} mm: raise frame_mm or the head is cut")
    return ((top + bottom) / 2 - side / 2, (left + right) / 2 - side / 2, side)


def _prepare(axial: np.ndarray, size: int, frame: Frame | None = None) -> np.ndarray:
    """Display orientation, cut to ``frame``, resized, clipped to [0, 1]. Without a frame: the whole
    plane zero-padded to a square (keeps the aspect) and resized (skimage, anti-aliased). With one:
    resampled (bilinear, zero beyond the grid) at the frame's output pixel centres after the same
    anti-aliasing Gaussian skimage's resize uses (sigma = (scale - 1) / 2)."""
    picture = to_display(axial)
    if frame is None:
        top, left, side = whole_plane_frame(np.shape(axial))
        square = np.zeros((side, side), dtype=np.float32)
        rows = slice(max(top, 0), min(top + side, picture.shape[0]))
        columns = slice(max(left, 0), min(left + side, picture.shape[1]))
        square[rows.start - top : rows.stop - top, columns.start - left : columns.stop - left] = picture[rows, columns]
        resized = resize(square, (size, size), order=1, anti_aliasing=side > size, preserve_range=True)
        return np.clip(resized, 0.0, 1.0).astype(np.float32)
    from scipy import ndimage

    top, left, side = frame
    scale = side / size
    source = picture.astype(np.float64)
    if scale > 1:
        source = ndimage.gaussian_filter(source, (scale - 1) / 2, mode="constant")
    centres = (np.arange(size) + 0.5) * scale - 0.5  # output pixel centres, in voxels from the frame's edge
    rows, columns = np.meshgrid(top + 0.5 + centres, left + 0.5 + centres, indexing="ij")
    resampled = ndimage.map_coordinates(source, [rows, columns], order=1, mode="constant", cval=0.0)
    return np.clip(resampled, 0.0, 1.0).astype(np.float32)


def _slab(
    path: Path, reference: nib.Nifti1Image, reference_path: Path, indices: list[int], size: int,
    frame: Frame | None = None,
) -> np.ndarray:
    image = _load_ras(path)
    if image.shape != reference.shape or not np.allclose(image.affine, reference.affine, atol=1e-3):
        raise InputDataError(
            path, f"not on the reference grid of {reference_path} (shape {image.shape} vs {reference.shape})"
        )
    values = np.asanyarray(image.dataobj)
    slab = np.stack([_prepare(np.asarray(values[:, :, index], dtype=np.float32), size, frame) for index in indices])
    if not np.all(np.isfinite(slab)):
        raise InputDataError(path, "contains NaN or infinite voxels in the extracted slices")
    return slab


def _qc_failure(qc_path: Path | None) -> str | None:
    """Why the registration QC excludes a subject, or None when it passed (or there is no QC)."""
    if qc_path is None:
        return None
    try:
        record = json.loads(Path(qc_path).read_text())
        status = record["status"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise InputDataError(qc_path, f"not a registration QC JSON ({exc})") from exc
    return None if status == "ok" else f"registration QC {status}: {record.get('reason', '')}".strip()


def check_split_fractions(section: str, val_fraction: float, test_fraction: float) -> None:
    """ConfigError naming ``section`` unless val and test shares leave some subjects for training."""
    if not (0 <= val_fraction < 1 and 0 <= test_fraction < 1 and val_fraction + test_fraction < 1):
        raise ConfigError(
            f"{section}: val_fraction + test_fraction must lie in [0, 1), got {val_fraction}, {test_fraction}"
        )


def split_subjects(
    subjects: Sequence[str], forced_test: Sequence[str], val_fraction: float, test_fraction: float, seed: int
) -> dict[str, str]:
    """Assign each subject to a split, deterministically from (seed, subject id).

    Forced subjects go to test and count towards its share. The others are ordered by a hash of
    (seed, id), so a subject keeps its place when others are added; the first take the rest of the
    test share, the next the val share, the remainder train. A split with a non-zero fraction gets
    at least one subject as long as train keeps one.
    """
    forced = sorted(set(forced_test) & set(subjects))
    free = sorted(
        set(subjects) - set(forced), key=lambda s: hashlib.sha256(f"{seed}:{s}".encode()).hexdigest()
    )
    total = len(subjects)
    n_test = max(0, math.floor(test_fraction * total + 0.5) - len(forced))
    n_val = math.floor(val_fraction * total + 0.5)
    if test_fraction > 0 and not forced and n_test == 0:
        n_test = 1
    if val_fraction > 0 and n_val == 0:
        n_val = 1
    n_test = min(n_test, max(len(free) - 1, 0))
    n_val = min(n_val, max(len(free) - 1 - n_test, 0))
    assignment = {s: "test" for s in forced}
    for position, subject in enumerate(free):
        assignment[subject] = "test" if position < n_test else "val" if position < n_test + n_val else "train"
    return assignment


def _stacked(slabs: list[np.ndarray], size: int) -> np.ndarray:
    return np.concatenate(slabs) if slabs else np.zeros((0, size, size), np.float32)


def number_within_patient(items: Sequence[Any]) -> dict[str, int]:
    """Set each item's ``slice_index`` to its place among its patient's items (``item.patient``, in
    the order given); returns each patient's number of items."""
    counts: dict[str, int] = {}
    for item in items:
        item.slice_index = counts.get(item.patient, 0)
        counts[item.patient] = item.slice_index + 1
    return counts


def assign_splits(items: Sequence[Any], assignment: dict[str, str], subject_of: Callable[[Any], str]) -> dict:
    """Set each item's ``split`` to its subject's in ``assignment`` (split_subjects); returns each
    split's items, in SPLITS order."""
    for item in items:
        item.split = assignment[subject_of(item)]
    return {split: [item for item in items if item.split == split] for split in SPLITS}


def save_npz(target: Path, arrays: dict[str, np.ndarray]) -> None:
    """np.savez's layout (one .npy per array, loadable by np.load) without its timestamps."""
    with atomic_path(target) as tmp, zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED) as archive:
        for name, array in arrays.items():
            buffer = io.BytesIO()
            np.lib.format.write_array(buffer, np.asanyarray(array), allow_pickle=False)
            archive.writestr(zipfile.ZipInfo(f"{name}.npy", date_time=_ZIP_DATE), buffer.getvalue())


@dataclass
class _Subject:
    subject_id: str
    sha256: str
    slab: np.ndarray
    partner: np.ndarray | None = None
    partner_hu: np.ndarray | None = None
    exclusion: str | None = None
    split: str = ""


def _contact_sheet(subjects: list[_Subject], out_png: Path) -> None:
    from pipeline.figures import contact_sheet

    tiles = [
        (f"{s.subject_id}\n{'EXCLUDED' if s.exclusion else s.split}", s.slab[len(s.slab) // 2], bool(s.exclusion))
        for s in subjects
    ]
    contact_sheet(tiles, out_png)


def extract_slices(
    volumes: dict[str, Path],
    partners: dict[str, Path],
    qc: dict[str, Path | None],
    reference_path: str | Path,
    out_dir: str | Path,
    axial_fraction: float = 0.5,
    slab: int = 1,
    size: int = 256,
    val_fraction: float = 0.15,
    test_fraction: float = 0.2,
    seed: int = 0,
    test_subjects: Sequence[str] = (),
    partners_hu: dict[str, Path] | None = None,
    partner_hu_range: Sequence[float] | None = None,
    frame_mm: float | None = None,
) -> dict[str, int]:
    """Write the three split files, the manifest and the contact sheet; returns samples per split.

    axial_fraction: where the slice sits in the reference head's z-extent (0 = lowest head slice,
        1 = vertex; 0.5 = mid-head, around the lateral ventricles).
    slab: consecutive slices taken around that index, each one a sample.
    size: output side in pixels (the slice is zero-padded to a square first).
    frame_mm: frame every slice on the reference head (centred, this many mm a side; module
        docstring); None: the whole plane padded to a square.
    val_fraction / test_fraction: share of the kept subjects in val / test; subjects with a partner
        or listed in ``test_subjects`` always go to test. seed: drives the split.
    partners_hu: per subject with a partner, the partner CT over ``partner_hu_range`` = [low, high] HU
        mapped to [0, 1] (every partner needs one; stored in HU as ``partner_hu``).
    """
    if not 0 <= axial_fraction <= 1:
        raise ConfigError(f"slices.axial_fraction: must be in [0, 1], got {axial_fraction}")
    if frame_mm is not None and not frame_mm > 0:
        raise ConfigError(f"slices.frame_mm: must be > 0 or null, got {frame_mm}")
    if slab < 1 or size < 8:
        raise ConfigError(f"slices: slab must be >= 1 and size >= 8, got {slab}, {size}")
    check_split_fractions("slices", val_fraction, test_fraction)
    if not volumes:
        raise ConfigError("slices: no volumes given")
    partners_hu = dict(partners_hu or {})
    if partners_hu and (partner_hu_range is None or set(partners_hu) != set(partners)):
        raise ConfigError("slices: full-HU partners need partner_hu_range and one file for each partner, got "
                          f"{sorted(partners_hu)} for partners {sorted(partners)}")
    for kind, mapping in (("partner", partners), ("QC", qc)):
        orphans = sorted(set(mapping) - set(volumes))
        if orphans:
            raise InputDataError(
                mapping[orphans[0]], f"{kind} file for subject {orphans[0]!r}, which has no volume"
            )
    reference_path, out_dir = Path(reference_path), Path(out_dir)
    indices = reference_slice_indices(reference_path, axial_fraction, slab)
    reference = _load_ras(reference_path)
    frame = None
    if frame_mm is not None:
        try:
            frame = head_frame(reference, indices, frame_mm)
        except InputDataError as exc:
            raise InputDataError(reference_path, exc.problem) from exc

    subjects = []
    for sid in progress(sorted(volumes), f"slices {out_dir.name}", unit="subject"):
        path = Path(volumes[sid])
        slices = _slab(path, reference, reference_path, indices, size, frame)
        subject = _Subject(sid, file_sha256(path), slices)
        subject.exclusion = _qc_failure(qc.get(sid))
        if sid in partners and not subject.exclusion:
            subject.partner = _slab(Path(partners[sid]), reference, reference_path, indices, size, frame)
            if sid in partners_hu:
                subject.partner_hu = _slab(Path(partners_hu[sid]), reference, reference_path, indices, size,
                                           frame)
        subjects.append(subject)
    kept = [s for s in subjects if not s.exclusion]
    assignment = split_subjects(
        [s.subject_id for s in kept], [*test_subjects, *partners], val_fraction, test_fraction, seed
    )
    counts = {}
    for split, members in assign_splits(kept, assignment, lambda s: s.subject_id).items():
        arrays = {
            "images": _stacked([s.slab for s in members], size),
            "subject_ids": np.array([s.subject_id for s in members for _ in indices], dtype=str),
            "slice_index": np.array([i for _ in members for i in indices], dtype=np.int64),
        }
        if split == "test":
            blank = np.zeros((len(indices), size, size), np.float32)
            arrays["partner"] = _stacked([blank if s.partner is None else s.partner for s in members], size)
            arrays["has_partner"] = np.array([s.partner is not None for s in members for _ in indices], bool)
            if partners_hu:
                low, high = (float(v) for v in partner_hu_range)
                unit = _stacked([blank if s.partner_hu is None else s.partner_hu for s in members], size)
                arrays["partner_hu"] = (low + unit.astype(np.float64) * (high - low)).astype(np.float32)
                arrays["partner_hu_range"] = np.array([low, high], np.float32)
        save_npz(out_dir / f"{split}.npz", arrays)
        counts[split] = len(arrays["images"])

    with atomic_path(out_dir / "manifest.csv") as tmp, open(tmp, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(MANIFEST_COLUMNS)
        for s in subjects:
            if s.exclusion:
                writer.writerow([s.subject_id, "", "", "excluded", s.exclusion, s.sha256])
            else:
                writer.writerows([s.subject_id, s.split, index, "ok", "", s.sha256] for index in indices)
    _contact_sheet(subjects, out_dir / "contact_sheet.png")
    _log.info(
        "slices at z=%s, frame %s: %s samples; %d subject(s) excluded", indices,
        "whole plane" if frame is None else f"(top, left, side) {frame}", counts, len(subjects) - len(kept)
    )
    return counts


def _by_subject(paths: Sequence[Path], option: str) -> dict[str, Path]:
    mapping = {subject_id(path): Path(path) for path in paths}
    if len(mapping) != len(paths):
        raise ConfigError(f"slices {option}: two files give the same subject id")
    return mapping


def _parser() -> argparse.ArgumentParser:
    parser = stage_parser("pipeline.preprocess.extract_slices", __doc__)
    parser.add_argument(
        "--volumes", required=True, type=Path, nargs="+", help="<subject>.nii.gz files on the reference grid"
    )
    parser.add_argument("--partners", type=Path, nargs="*", default=[], help="<subject>.partner.nii.gz files")
    parser.add_argument(
        "--qc", type=Path, nargs="*", default=[], help="<subject>.qc.json files from registration"
    )
    reference = parser.add_mutually_exclusive_group(required=True)
    reference.add_argument("--reference", type=Path, help="the reference volume, on the volumes' grid")
    reference.add_argument(
        "--reference-json",
        dest="reference_json",
        type=Path,
        help="or register's reference JSON: the reference subject's file among --volumes is used",
    )
    parser.add_argument("--out-dir", dest="out_dir", required=True, type=Path)
    knobs = ["axial_fraction", "slab", "size", "val_fraction", "test_fraction", "seed"]
    add_knob_options(parser, extract_slices, knobs, {"test_subjects": {"nargs": "*"}, "frame_mm": {"type": float}})
    parser.add_argument("--partners-hu", type=Path, nargs="*", default=[],
                        help="<subject>.partner_hu.nii.gz files: CT partners over --partner-hu-range (window partner --hu-range)")
    parser.add_argument("--partner-hu-range", dest="partner_hu_range", type=float, nargs=2, metavar=("LOW", "HIGH"),
                        help="the HU range the --partners-hu files span over [0, 1]", **OPTIONAL)
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    run_cli(_parser(), _extract_from_files, argv)


def _extract_from_files(args: dict) -> None:
    volumes = _by_subject(args.pop("volumes"), "--volumes")
    partners = _by_subject(args.pop("partners"), "--partners")
    partners_hu = _by_subject(args.pop("partners_hu"), "--partners-hu")
    qc = _by_subject(args.pop("qc"), "--qc")
    reference, reference_json = args.pop("reference"), args.pop("reference_json")
    if reference_json is not None:
        reference_id, reference_volume = read_reference_json(reference_json)
        reference = volumes.get(reference_id, reference_volume)
    extract_slices(volumes, partners, qc, reference, args.pop("out_dir"), partners_hu=partners_hu, **args)


if __name__ == "__main__":
    main()
