"""Slices stage for chest CT with six-class label maps (report 003) -> train / val / test.

Input: a raw folder in the TCIA layout the download stage writes for ``phantom_tcia_thorax``,
``tcia`` and ``local`` with layout ``tcia``: ``subjects.tsv`` (subject_id, modality, path) with
one series folder a patient, ``<patient>/<study>/<series>/<NNNN>.dcm``, one axial slice a file.
Each slice's map comes from ``label_maps``:

* ``raw``: ``labels/<patient>/<study>/<series>/<NNNN>.png`` in the raw folder (what the phantom
  writes, and what a user puts beside a local series);
* a folder: the same relative paths under that folder (maps drawn on the downloaded data);
* ``auto``: an APPROXIMATE rule from HU and connected components (``auto_label_map``); report
  003's maps were drawn by hand, so metrics on auto maps measure something weaker.

Label images hold report 003's grey values {0, 50, 100, 150, 200, 230}; any other value, a
missing label file or a map whose size differs from its slice is an InputDataError naming the
file, and nothing is written.

**Which slices.** Report 003 hand-picked 1-2 slices a patient "from a similar anatomical
position". Here the level is found from the map: the slice with the largest lung area, moved by
``level_offset_mm`` along z; a patient's slices are the ones nearest to that level (ties: the
one nearer the head). Train patients give 1 or 2 slices so that ``train_images`` slices come from
``train_patients`` patients (report: 20 from 12; the patients that give 2 are the first in the
split order); val and test patients give ``eval_slices_per_patient``.

**Split** by patient, by counts: patients are ordered by a hash of (seed, id) (so a patient keeps
its place when others are added); the first ``train_patients`` are train, the next
``val_patients`` val, the rest test.

**Each slice**: HU through the modality LUT (pipeline.preprocess.window.read_slice_hu), padded to
a square with its minimum, resized to ``size`` (linear, anti-aliased, in HU), then
``hu_window`` [lo, hi] mapped linearly to [0, 1] and clipped (hu = lo + x (hi - lo) inverts it
inside the window). The map is padded with background and resized by nearest neighbour on the
same grid, so only the six classes survive.

Outputs in ``out_dir`` (swapped in whole): ``{train,val,test}.npz`` with ``images`` float32
(N, size, size) in [0, 1], ``label_maps`` uint8 class indices 0..5, ``subject_ids`` str,
``slice_index`` int64 (the slice's place in its series from the feet), ``hu_window`` float32 (2,),
``image_ids`` str (the file's path in the raw folder); ``manifest.csv`` and ``contact_sheet.png``
(each slice with its map's outlines).
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

from pipeline.atomic import atomic_dir
from pipeline.errors import ConfigError, InputDataError, PipelineError
from pipeline.hashing import file_sha256
from pipeline.preprocess.ct_slices import square_resize
from pipeline.preprocess.extract_slices import SPLITS, save_npz
from pipeline.preprocess.thorax_labels import CLASS_NAMES, read_label_image
from pipeline.preprocess.window import hu_range_to_unit, read_slice_hu, values_kept_out_of_logs
from pipeline.progress import progress

_log = logging.getLogger(__name__)

SUBJECTS_TSV = "subjects.tsv"
LABELS_FOLDER = "labels"
LABEL_SUFFIX = ".png"
MANIFEST_COLUMNS = ("subject_id", "split", "slice_index", "z_mm", "image_id", "label_source", "lung_area_mm2",
                    "sha256")  # fmt: skip
MIN_SIZE = 8
LUNGS = CLASS_NAMES.index("lungs")
#: Outline colours of the contact sheet, one RGB per class (background has none).
OUTLINE_RGB = np.array([[0, 0, 0], [1.0, 0.85, 0.2], [0.2, 0.6, 1.0], [1.0, 0.2, 0.2], [0.9, 0.9, 0.9],
                        [0.3, 1.0, 0.3]], np.float32)  # fmt: skip


@dataclass(frozen=True)
class AutoRule:
    """Thresholds of the approximate automatic map (preprocess.thorax_slices.auto_rule)."""

    body_hu: float = -500.0
    air_hu: float = -400.0
    bone_hu: float = 200.0
    blood_hu: tuple[float, float] = (20.0, 80.0)
    min_lung_share: float = 0.01


@dataclass
class _Slice:
    path: Path
    image_id: str
    patient: str
    z_mm: float
    hu: np.ndarray
    classes: np.ndarray
    pixel_mm2: float
    label_source: str
    slice_index: int = 0
    split: str = ""


def nearest_resize(label_map: np.ndarray, size: int) -> np.ndarray:
    """Pad a class map to a centred square with background (0), then nearest-neighbour resize:
    every output pixel copies the input pixel under its centre, so no new value can appear."""
    rows, columns = label_map.shape
    side = max(rows, columns)
    padded = np.zeros((side, side), label_map.dtype)
    top, left = (side - rows) // 2, (side - columns) // 2
    padded[top : top + rows, left : left + columns] = label_map
    index = np.minimum(((np.arange(size) + 0.5) * side / size).astype(np.int64), side - 1)
    return padded[np.ix_(index, index)]


def _largest_component(mask: np.ndarray) -> np.ndarray:
    labelled, n = ndimage.label(mask)
    if n == 0:
        return mask
    sizes = ndimage.sum_labels(mask, labelled, index=np.arange(1, n + 1))
    return labelled == (int(np.argmax(sizes)) + 1)


def auto_label_map(hu: np.ndarray, rule: AutoRule = AutoRule()) -> np.ndarray:
    """An APPROXIMATE six-class map from HU alone (real data without drawn maps).

    body = largest component above body_hu with its holes filled; lungs = air (below air_hu) inside
    it in components of at least min_lung_share of the body, holes filled (vessels); bone = above
    bone_hu; spinal canal = the largest hole inside bone (filled bone minus bone) in the back half;
    heart_vessels = the largest blood-HU component inside the lungs' convex hull, holes filled;
    the rest of the body = body.
    """
    from skimage.morphology import convex_hull_image

    body = ndimage.binary_fill_holes(_largest_component(hu > rule.body_hu))
    classes = np.where(body, CLASS_NAMES.index("body"), 0).astype(np.uint8)
    air, n = ndimage.label(body & (hu < rule.air_hu))
    lungs = np.zeros_like(body)
    if n:
        sizes = ndimage.sum_labels(np.ones_like(hu), air, index=np.arange(1, n + 1))
        keep = np.flatnonzero(sizes >= rule.min_lung_share * body.sum()) + 1
        lungs = ndimage.binary_fill_holes(np.isin(air, keep))  # vessels inside the lungs count as lung
    bone = body & (hu > rule.bone_hu)
    holes, n_holes = ndimage.label(ndimage.binary_fill_holes(bone) & ~bone)
    canal = np.zeros_like(body)
    if n_holes:  # the largest hole in bone behind the body's middle (marrow noise makes small ones)
        rows = np.nonzero(body)[0]
        middle = (rows.min() + rows.max()) / 2
        index = np.arange(1, n_holes + 1)
        sizes = ndimage.sum_labels(np.ones_like(hu), holes, index)
        centres = np.array(ndimage.center_of_mass(np.ones_like(hu), holes, index))
        sizes[centres[:, 0] < middle] = 0
        if sizes.max() > 0:
            canal = holes == int(np.argmax(sizes)) + 1
    heart = np.zeros_like(body)
    if lungs.any():
        hull = convex_hull_image(lungs) & body & ~lungs & ~bone
        blood = ndimage.binary_opening(hull & (hu >= rule.blood_hu[0]) & (hu <= rule.blood_hu[1]), iterations=1)
        heart = ndimage.binary_fill_holes(_largest_component(blood)) if blood.any() else blood
    for name, mask in (("lungs", lungs), ("heart_vessels", heart), ("bone", bone), ("spinal_canal", canal)):
        classes[mask] = CLASS_NAMES.index(name)
    return classes


def _read_subjects(raw_dir: Path) -> list[dict[str, str]]:
    index = raw_dir / SUBJECTS_TSV
    try:
        with open(index, newline="") as handle:
            rows = list(csv.DictReader(handle, delimiter="\t"))
    except OSError as exc:
        raise InputDataError(index, f"cannot be read ({exc.strerror}); is this a TCIA-layout raw folder?") from exc
    if not rows or not {"subject_id", "path"} <= set(rows[0]):
        raise InputDataError(index, "needs rows with the columns subject_id and path")
    return rows


def _label_for(path: Path, relative: Path, raw_dir: Path, label_maps: str, hu: np.ndarray,
               rule: AutoRule) -> tuple[np.ndarray, str]:  # fmt: skip
    if label_maps == "auto":
        return auto_label_map(hu, rule), "auto"
    folder = raw_dir / LABELS_FOLDER if label_maps == "raw" else Path(label_maps)
    label_path = folder / relative.with_suffix(LABEL_SUFFIX)
    if not label_path.is_file():
        raise InputDataError(label_path, f"label image of {path} is missing (label_maps: {label_maps})")
    classes = read_label_image(label_path)
    if classes.shape != hu.shape:
        raise InputDataError(label_path, f"label image is {classes.shape[1]}x{classes.shape[0]} but its slice "
                                         f"{path.name} is {hu.shape[1]}x{hu.shape[0]}")  # fmt: skip
    return classes, "drawn" if label_maps != "raw" else "raw"


def _read_series(raw_dir: Path, row: dict[str, str], label_maps: str, rule: AutoRule) -> list[_Slice]:
    folder = raw_dir / row["path"]
    files = sorted(folder.glob("*.dcm"))
    if not files:
        raise InputDataError(folder, "holds no .dcm slices (subjects.tsv names it)")
    slices = []
    for path in files:
        ds, hu = read_slice_hu(path)
        with values_kept_out_of_logs():
            position = ds.get("ImagePositionPatient")
            spacing = ds.get("PixelSpacing")
        if position is None or spacing is None:
            raise InputDataError(path, "needs ImagePositionPatient and PixelSpacing to order and measure slices")
        relative = path.relative_to(raw_dir)
        classes, source = _label_for(path, relative, raw_dir, label_maps, hu, rule)
        slices.append(_Slice(path, relative.as_posix(), row["subject_id"], float(position[2]), hu, classes,
                             float(spacing[0]) * float(spacing[1]), source))  # fmt: skip
    slices.sort(key=lambda s: s.z_mm)
    for k, s in enumerate(slices):
        s.slice_index = k
    return slices


def pick_level_slices(series: list[_Slice], n: int, level_offset_mm: float) -> list[_Slice]:
    """The ``n`` slices nearest to the level of the largest lung area (+ offset, + = headwards)."""
    areas = [int((s.classes == LUNGS).sum()) * s.pixel_mm2 for s in series]
    if max(areas) <= 0:
        raise InputDataError(series[0].path.parent, "no slice of this series shows lungs (label class 'lungs')")
    target = series[int(np.argmax(areas))].z_mm + level_offset_mm
    ranked = sorted(series, key=lambda s: (abs(s.z_mm - target), -s.z_mm))
    return sorted(ranked[:n], key=lambda s: s.z_mm)


def split_patients(patients: Sequence[str], train: int, val: int, seed: int) -> dict[str, str]:
    """Patients by a hash of (seed, id): the first ``train`` train, the next ``val`` val, the rest test."""
    order = sorted(patients, key=lambda p: hashlib.sha256(f"{seed}:{p}".encode()).hexdigest())
    return {p: "train" if i < train else "val" if i < train + val else "test" for i, p in enumerate(order)}


def _contact_sheet(chosen: list[_Slice], images: dict[int, np.ndarray], maps: dict[int, np.ndarray], out_png: Path,
                   n_tiles: int, title: str) -> None:  # fmt: skip
    from pipeline.figures import contact_sheet

    picks = chosen[:: max(1, len(chosen) // max(n_tiles, 1))][:n_tiles]
    tiles = []
    for s in picks:
        image, classes = images[id(s)], maps[id(s)]
        rgb = np.repeat(image[..., None], 3, axis=2)
        edge = classes != ndimage.grey_erosion(classes, size=3)
        rgb[edge] = OUTLINE_RGB[classes[edge]]
        tiles.append((f"{s.patient[:11]} z{s.slice_index}\n{s.split}", rgb, False))
    contact_sheet(tiles, out_png, title)


def prepare_thorax_slices(
    raw_dir: str | Path,
    out_dir: str | Path,
    size: int = 64,
    hu_window: Sequence[float] = (-1000.0, 1000.0),
    train_patients: int = 12,
    val_patients: int = 4,
    train_images: int = 20,
    eval_slices_per_patient: int = 2,
    level_offset_mm: float = 0.0,
    label_maps: str = "raw",
    seed: int = 0,
    contact_sheet_tiles: int = 24,
    auto_rule: AutoRule = AutoRule(),
) -> dict[str, int]:
    """Write the split files, the manifest and the contact sheet; return slices per split."""
    if size < MIN_SIZE:
        raise ConfigError(f"preprocess.thorax_slices.size: must be >= {MIN_SIZE}, got {size}")
    lo, hi = (float(v) for v in hu_window)
    if not lo < hi:
        raise ConfigError(f"preprocess.thorax_slices.hu_window: need [lo, hi] with lo < hi, got {list(hu_window)}")
    if not train_patients <= train_images <= 2 * train_patients:
        raise ConfigError(
            f"preprocess.thorax_slices.train_images: 1-2 slices a train patient means {train_patients}.."
            f"{2 * train_patients}, got {train_images}"
        )
    raw_dir, out_dir = Path(raw_dir), Path(out_dir)
    rows = _read_subjects(raw_dir)
    if len({r["subject_id"] for r in rows}) != len(rows):
        raise InputDataError(raw_dir / SUBJECTS_TSV, "lists a patient twice; one series a patient is expected")
    if len(rows) <= train_patients + val_patients:
        raise ConfigError(
            f"preprocess.thorax_slices: {len(rows)} patients in {raw_dir} leave none for test after "
            f"{train_patients} train + {val_patients} val"
        )
    assignment = split_patients([r["subject_id"] for r in rows], train_patients, val_patients, seed)
    two_each = sorted((p for p, s in assignment.items() if s == "train"),
                      key=lambda p: hashlib.sha256(f"{seed}:{p}".encode()).hexdigest())[: train_images - train_patients]  # fmt: skip
    chosen: list[_Slice] = []
    for row in progress(rows, "thorax series", unit="patient"):
        series = _read_series(raw_dir, row, label_maps, auto_rule)
        split = assignment[row["subject_id"]]
        n = eval_slices_per_patient if split != "train" else 2 if row["subject_id"] in two_each else 1
        for s in pick_level_slices(series, n, level_offset_mm):
            s.split = split
            chosen.append(s)
    chosen.sort(key=lambda s: (SPLITS.index(s.split), s.patient, s.z_mm))
    images = {id(s): hu_range_to_unit(square_resize(s.hu, size), (lo, hi)) for s in chosen}
    maps = {id(s): nearest_resize(s.classes, size) for s in chosen}
    counts = {}
    with atomic_dir(out_dir) as tmp:
        for split in SPLITS:
            members = [s for s in chosen if s.split == split]
            save_npz(
                tmp / f"{split}.npz",
                {
                    "images": np.stack([images[id(s)] for s in members]) if members else np.zeros((0, size, size), np.float32),
                    "label_maps": np.stack([maps[id(s)] for s in members]).astype(np.uint8) if members else np.zeros((0, size, size), np.uint8),
                    "subject_ids": np.array([s.patient for s in members], dtype=str),
                    "slice_index": np.array([s.slice_index for s in members], dtype=np.int64),
                    "hu_window": np.array([lo, hi], np.float32),
                    "image_ids": np.array([s.image_id for s in members], dtype=str),
                },
            )  # fmt: skip
            counts[split] = len(members)
        with open(tmp / "manifest.csv", "w", newline="") as handle:
            writer = csv.writer(handle, lineterminator="\n")
            writer.writerow(MANIFEST_COLUMNS)
            writer.writerows(
                (s.patient, s.split, s.slice_index, f"{s.z_mm:.2f}", s.image_id, s.label_source,
                 f"{(s.classes == LUNGS).sum() * s.pixel_mm2:.0f}", file_sha256(s.path))  # fmt: skip
                for s in chosen
            )
        _contact_sheet(chosen, images, maps, tmp / "contact_sheet.png", contact_sheet_tiles,
                       f"{out_dir.name}: HU {lo:g}..{hi:g}; outlines: body, lungs, heart/vessels, bone, canal")  # fmt: skip
    patients = {split: len({s.patient for s in chosen if s.split == split}) for split in SPLITS}
    _log.info("slices per split %s from patients %s (classes %s)", counts, patients, ", ".join(CLASS_NAMES))
    return counts


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m pipeline.preprocess.thorax_slices",
                                     description=__doc__.split("\n")[0])  # fmt: skip
    optional = {"default": argparse.SUPPRESS}
    parser.add_argument("--raw", dest="raw_dir", required=True, type=Path, help="e.g. data/raw/ct_thorax")
    parser.add_argument("--out-dir", dest="out_dir", required=True, type=Path)
    parser.add_argument("--size", type=int, **optional)
    parser.add_argument("--hu-window", dest="hu_window", type=float, nargs=2, **optional)
    parser.add_argument("--train-patients", dest="train_patients", type=int, **optional)
    parser.add_argument("--val-patients", dest="val_patients", type=int, **optional)
    parser.add_argument("--train-images", dest="train_images", type=int, **optional)
    parser.add_argument("--eval-slices-per-patient", dest="eval_slices_per_patient", type=int, **optional)
    parser.add_argument("--level-offset-mm", dest="level_offset_mm", type=float, **optional)
    parser.add_argument("--label-maps", dest="label_maps", **optional, help="raw | auto | a folder")
    parser.add_argument("--seed", type=int, **optional)
    parser.add_argument("--contact-sheet-tiles", dest="contact_sheet_tiles", type=int, **optional)
    for name, default in vars(AutoRule()).items():
        nargs = 2 if isinstance(default, tuple) else None
        parser.add_argument(f"--auto-{name.replace('_', '-')}", dest=f"auto_{name}", type=float, nargs=nargs, **optional)
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    parser = _parser()
    args = vars(parser.parse_args(argv))
    rule = {key.removeprefix("auto_"): args.pop(key) for key in list(args) if key.startswith("auto_")}
    if "blood_hu" in rule:
        rule["blood_hu"] = tuple(rule["blood_hu"])
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        prepare_thorax_slices(**args, auto_rule=AutoRule(**rule))
    except PipelineError as exc:
        parser.exit(1, f"error: {exc}\n")


if __name__ == "__main__":
    main()
