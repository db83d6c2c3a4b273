"""Built-in normal-dose thorax CT with six-class label maps, laid out as a TCIA series download.

Report 003 trained on 20 hand-labelled slices of 12 TCIA lung-CT patients. This phantom gives the
same kind of data offline: per patient one study with one axial series, one DICOM file a slice,
in TCIA's folder layout, plus the label images a user would supply for them (the layout the
``tcia`` source and ``local`` layout ``tcia`` read, pipeline.sources.tcia):

    <PatientID>/<StudyInstanceUID>/<SeriesInstanceUID>/<NNNN>.dcm    NNNN = 0001.. from head to feet
    labels/<PatientID>/<StudyInstanceUID>/<SeriesInstanceUID>/<NNNN>.png   grey {0,50,100,150,200,230}
    subjects.tsv                                                     subject_id, modality, path
    truth/<PatientID>/.../<NNNN>_tissue.png, truth/tissues.tsv       (tests only: tissue per pixel)
    truth/textures.tsv                                               each patient's texture (below)

Each slice is drawn analytically in mm on the axial plane (painter's order, later structures
cover earlier ones): body outline with skin, subcutaneous fat and a muscle layer (thicker behind,
the paraspinal muscles), mediastinal fat; two lungs whose cross-section follows the level along
the lungs (zero at the apex, largest at ``lung_peak_level``, shrinking towards the bases) with a
branching 2-D tree of vessels and one of airways growing outward from each hilum plus scattered
vessel cross-sections; heart, ascending / descending aorta, pulmonary trunk and superior vena cava
(upper levels); trachea above the carina, main bronchi below; oesophagus; vertebral body with
cortex, posterior arch and spinous process, spinal canal with cord; ribs along the chest wall,
sternum, scapulae (upper levels). Every size, position and HU is drawn per patient from a
[low, high] range in params (``phantom_tcia_thorax``).

**Each patient has its own texture** (report 003 transfers another patient's texture organ by
organ, so the data must let textures differ), drawn from its own random stream so that anatomy
and label maps do not depend on it: a reconstruction kernel (one sharpness sets the PSF, the edge
overshoot, the noise grain and the noise gain together, as one kernel does), a noise level (dose),
a lung parenchyma pattern (band-pass noise shown as nodules or as a reticular network, with its
own scale and contrast) and the tissue means; smoothed fields texture fat, muscle, marrow and
blood. ``truth/textures.tsv`` records each patient's texture; ``most_different_textures`` picks
two patients whose textures differ most. Pixels are stored through RescaleSlope / Intercept; half the
patients use TCIA's common unsigned form (intercept -1024), the other half signed values with
intercept 0, so a reader that ignores the modality LUT is caught.

The stack: ``slices_per_patient`` slices ``slice_mm`` apart around ``stack_level`` (a share of the
lung height from the apex), so the slicing stage can pick 1-2 slices a patient at a similar level
(pipeline.preprocess.thorax_slices). Each slice's label map is written from the same structures
that were painted (``structure_labels``: structure -> class of pipeline.preprocess.thorax_labels),
so label and HU agree by construction; the tests read both back independently.

Ids are pseudonymous (``THX-<hex>`` patients, ``2.25.<hash>`` UIDs); the header carries a
PatientName / StudyDate / InstitutionName marker so that the de-identification at the door
(pipeline.sources.deidentify) is exercised on every build.
"""

from __future__ import annotations

import csv
import dataclasses
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from scipy import ndimage

from pipeline.atomic import atomic_dir
from pipeline.errors import ConfigError, InputDataError
from pipeline.labels import THORAX_CLASS_NAMES as CLASS_NAMES
from pipeline.labels import THORAX_GREY_VALUES as GREY_VALUES
from pipeline.progress import progress
from pipeline.sources.phantom_toolkit import (
    StoredPixels,
    check_seed,
    ct_slice_dataset,
    draw_ranges,
    draw_uniform,
    ellipse_r2,
    hashed_hex,
    hashed_uid,
    knob_defaults,
    knobs_from_schema,
    params_from_knobs,
    phantom_main,
    random_streams,
    save_png,
    scaled_to_sd,
    smooth_noise,
)
from pipeline.sources.real_datasets import write_table

LOG = logging.getLogger(__name__)

SEED_CODE = 18  # mixed into every seed: these patients are not the other phantoms'
LABELS_FOLDER = "labels"
TRUTH_FOLDER = "truth"
SUBJECTS_COLUMNS = ("subject_id", "modality", "path")
TEXTURES_TSV = "textures.tsv"
#: Tissues whose per-patient mean is part of the texture record.
TEXTURE_TISSUES = ("lung", "fat", "muscle", "blood")
#: truth/textures.tsv: one row a patient (what makes its texture its own).
TEXTURE_COLUMNS = ("subject_id", "kernel_sharpness", "psf_mm", "edge_enhancement", "noise_correlation_mm", "noise_hu",
                   "lung_pattern_mm", "lung_pattern_hu", "lung_reticulation",
                   *(f"{tissue}_hu" for tissue in TEXTURE_TISSUES))  # fmt: skip
#: The texture columns that still show on a coarse grid (6 mm pixels): see most_different_textures.
COARSE_TEXTURE_COLUMNS = ("lung_pattern_mm", "lung_pattern_hu", "lung_reticulation", *(f"{tissue}_hu" for tissue in TEXTURE_TISSUES))
#: Width of the reticular pattern's lines, in standard deviations of the band-pass field.
RETICULAR_LINE_WIDTH = 0.35
#: Header values that stand in for patient identity; de-identification must remove them.
IDENTITY_MARKERS = {"PatientName": "PHANTOM^THORAX", "StudyDate": "20190314",
                    "InstitutionName": "Phantom General Hospital", "PatientBirthDate": "19600101"}  # fmt: skip
UNSIGNED = StoredPixels(bits_stored=12, signed=False, rescale_intercept=-1024)
SIGNED = StoredPixels(bits_stored=16, signed=True, rescale_intercept=0)
STORED_MAX_UNSIGNED = 4095
LUNG_WINDOW = (-600, 1500)
MIN_HU = -1024

#: Tissues (index = value in truth/*_tissue.png) and the HU knob each draws from.
TISSUES = ("air", "lung", "fat", "skin", "muscle", "blood", "trabecular_bone", "cortical_bone", "csf", "cord",
           "airway_air")  # fmt: skip
#: Structures the painter draws (each is one tissue, or bone with a cortex).
STRUCTURES = ("outside_air", "skin", "subcutaneous_fat", "muscle", "mediastinal_fat", "oesophagus", "trachea_wall",
              "lung", "pulmonary_vessels", "airways", "heart", "aorta", "great_vessels", "vertebra", "ribs",
              "sternum", "scapulae", "spinal_canal", "spinal_cord")  # fmt: skip
#: The [low, high] anatomy knobs each patient draws one value from, in the order they are drawn.
ANATOMY_RANGES = ("body_half_width_mm", "body_half_depth_mm", "skin_mm", "fat_mm", "muscle_mm", "posterior_muscle_mm",
                  "lung_height_mm", "lung_peak_level", "stack_level", "mediastinum_half_width_mm", "heart_radius_mm",
                  "heart_left_mm", "heart_top_level", "aorta_radius_mm", "trachea_radius_mm", "carina_level",
                  "oesophagus_radius_mm", "vertebra_radius_mm", "spinal_canal_radius_mm", "cord_radius_mm",
                  "cortex_mm", "rib_thickness_mm", "sternum_half_width_mm", "scapula_length_mm",
                  "scapula_bottom_level", "vessel_root_radius_mm", "airway_root_radius_mm")  # fmt: skip


@knobs_from_schema("phantom_tcia_thorax")
class ThoraxPhantomParams:
    """Every knob of the thorax phantom: params.yaml's phantom_tcia_thorax, documented (with ranges
    and defaults) in the schema. Pairs are [low, high] ranges each patient draws one value from
    (uniform); the tables (``tissue_hu``, ``texture_hu``, ``structure_labels``) name only what they
    change, the rest keeps its default."""

    def check(self) -> None:
        defaults = knob_defaults(self.section)
        unknown = sorted(set(self.tissue_hu) - set(TISSUES)) + sorted(set(self.texture_hu) - set(TISSUES))
        if unknown:
            raise ConfigError(f"phantom_tcia_thorax.tissue_hu / texture_hu: unknown tissues {unknown}; known {TISSUES}")
        object.__setattr__(self, "tissue_hu", {**defaults["tissue_hu"], **self.tissue_hu})
        object.__setattr__(self, "texture_hu", {**defaults["texture_hu"], **self.texture_hu})
        labels = {**defaults["structure_labels"], **self.structure_labels}
        bad = {k: v for k, v in labels.items() if k not in STRUCTURES or v not in CLASS_NAMES}
        if bad:
            raise ConfigError(
                f"phantom_tcia_thorax.structure_labels: {bad} is not structure -> class; structures {STRUCTURES}, "
                f"classes {CLASS_NAMES}"
            )
        object.__setattr__(self, "structure_labels", labels)


# ----------------------------------------------------------------------------- anatomy


@dataclass
class Tree:
    """A 2-D branching tree: segments (x0, y0, x1, y1, radius) in mm."""

    segments: np.ndarray


@dataclass
class Anatomy:
    """One patient's drawn values (mm, HU); trees are per lung."""

    values: dict[str, float]
    hu: dict[str, float]
    vessel_trees: list[Tree]
    airway_trees: list[Tree]
    rib_angles: list[np.ndarray]
    vessel_dots: list[np.ndarray]  # per lung: (n, 3) unit-disc positions and radius in mm


def _grow_tree(rng: np.random.Generator, start: tuple[float, float], angle: float, length: float, radius: float,
               generations: int) -> Tree:  # fmt: skip
    """Segments of a bifurcating tree: each child turns 20-40 degrees, 0.75 x length, 0.72 x radius."""
    segments = []
    stack = [(start[0], start[1], angle, length, radius, generations)]
    while stack:
        x, y, a, length_mm, r, left = stack.pop()
        x1, y1 = x + length_mm * np.cos(a), y + length_mm * np.sin(a)
        segments.append((x, y, x1, y1, r))
        if left > 0:
            for sign in (-1, 1):
                turn = sign * np.deg2rad(rng.uniform(20, 40))
                stack.append((x1, y1, a + turn, length_mm * rng.uniform(0.68, 0.82), r * 0.72, left - 1))
    return Tree(np.asarray(segments, dtype=np.float64))


def draw_anatomy(rng: np.random.Generator, params: ThoraxPhantomParams) -> Anatomy:
    values = draw_ranges(rng, params, ANATOMY_RANGES)
    hu = {name: draw_uniform(rng, params.tissue_hu[name]) for name in TISSUES}
    half_w = values["body_half_width_mm"]
    vessel_trees, airway_trees, dots = [], [], []
    for side in (-1, 1):  # -1: patient right (image left), +1: patient left
        hilum = (side * (values["mediastinum_half_width_mm"] + 8.0), -5.0)
        outward = 0.0 if side > 0 else np.pi
        lung_width = half_w - values["mediastinum_half_width_mm"]
        vessel_trees.append(_grow_tree(rng, hilum, outward + rng.uniform(-0.3, 0.3), 0.28 * lung_width,
                                       values["vessel_root_radius_mm"], params.vessel_generations))  # fmt: skip
        airway_trees.append(_grow_tree(rng, hilum, outward + rng.uniform(-0.4, 0.4), 0.25 * lung_width,
                                       values["airway_root_radius_mm"], max(params.vessel_generations - 2, 0)))  # fmt: skip
        n = params.vessel_dots_per_lung
        radius = np.sqrt(rng.random(n))
        theta = rng.uniform(0, 2 * np.pi, n)
        dots.append(np.stack([radius * np.cos(theta), radius * np.sin(theta), rng.uniform(0.8, 2.2, n)], axis=1))
    n_ribs = [int(rng.integers(params.n_ribs_per_side[0], params.n_ribs_per_side[1] + 1)) for _ in range(2)]
    # Rib angles around the chest wall (0 = patient's side, pi/2 = back), from front-side to back.
    rib_angles = [np.sort(rng.uniform(-0.35 * np.pi, 0.42 * np.pi, n)) for n in n_ribs]
    return Anatomy(values, hu, vessel_trees, airway_trees, rib_angles, dots)


# ----------------------------------------------------------------------------- painting


class Canvas:
    """Structure and tissue per pixel, painted in order; grid in mm (x to the patient's left, y back)."""

    def __init__(self, matrix: int, pixel_mm: float):
        centre = (matrix - 1) / 2
        coords = (np.arange(matrix) - centre) * pixel_mm
        self.y, self.x = np.meshgrid(coords, coords, indexing="ij")
        self.pixel_mm = pixel_mm
        self.structure = np.zeros((matrix, matrix), np.uint8)
        self.tissue = np.zeros((matrix, matrix), np.uint8)

    def paint(self, mask: np.ndarray, structure: str, tissue: str) -> None:
        self.structure[mask] = STRUCTURES.index(structure)
        self.tissue[mask] = TISSUES.index(tissue)

    def _box(self, x0: float, x1: float, y0: float, y1: float) -> tuple[slice, slice]:
        """Rows and columns of the grid covering [x0, x1] x [y0, y1] mm (a margin of a pixel)."""
        origin, n = self.x[0, 0], self.x.shape[0]
        columns = slice(max(int((x0 - origin) / self.pixel_mm), 0), min(int((x1 - origin) / self.pixel_mm) + 2, n))
        rows = slice(max(int((y0 - origin) / self.pixel_mm), 0), min(int((y1 - origin) / self.pixel_mm) + 2, n))
        return rows, columns

    def ellipse(self, cx: float, cy: float, ax: float, ay: float, angle: float = 0.0) -> np.ndarray:
        """Boolean mask of an ellipse (half axes ax, ay mm, turned by ``angle``), computed in its box."""
        mask = np.zeros(self.x.shape, bool)
        reach = max(ax, ay)
        box = self._box(cx - reach, cx + reach, cy - reach, cy + reach)
        mask[box] = ellipse_r2(self.x[box], self.y[box], cx, cy, max(ax, 1e-6), max(ay, 1e-6), angle) <= 1.0
        return mask

    def bone(self, inner: np.ndarray, outer: np.ndarray, structure: str) -> None:
        """A bone: cortex between ``outer`` and ``inner``, marrow inside ``inner``."""
        self.paint(outer, structure, "cortical_bone")
        self.paint(inner & outer, structure, "trabecular_bone")

    def segments(self, tree: Tree, inside: np.ndarray, structure: str, tissue: str, scale: float = 1.0) -> None:
        """Thick line segments (radius x ``scale``), only where ``inside``; each within its bounding box."""
        for x0, y0, x1, y1, r in tree.segments:
            r = r * scale
            box = self._box(min(x0, x1) - r, max(x0, x1) + r, min(y0, y1) - r, max(y0, y1) + r)
            px, py = self.x[box], self.y[box]
            if px.size == 0:
                continue
            dx, dy = x1 - x0, y1 - y0
            t = np.clip(((px - x0) * dx + (py - y0) * dy) / max(dx * dx + dy * dy, 1e-9), 0, 1)
            near = (px - x0 - t * dx) ** 2 + (py - y0 - t * dy) ** 2 <= r * r
            mask = near & inside[box]
            self.structure[box][mask] = STRUCTURES.index(structure)
            self.tissue[box][mask] = TISSUES.index(tissue)


def _lung_scale(level: float, peak: float) -> float:
    """Lung cross-section scale at ``level``: 0 at the apex (0) and at the base (1), 1 at ``peak``."""
    span = peak if level < peak else 1 - peak
    return float(np.sqrt(max(1 - ((level - peak) / span) ** 2, 0.0)))


def paint_slice(anatomy: Anatomy, level: float, params: ThoraxPhantomParams) -> Canvas:
    """The structures of one axial slice at ``level`` (share of the lung height from the apex)."""
    v = anatomy.values
    cv = Canvas(params.matrix, params.pixel_mm)
    aw, ad = v["body_half_width_mm"], v["body_half_depth_mm"]
    # Body narrows a little towards the apex.
    taper = 0.85 + 0.15 * min(level / max(v["lung_peak_level"], 1e-6), 1.0)
    aw, ad = aw * taper, ad * (0.92 + 0.08 * taper)
    body = cv.ellipse(0, 0, aw, ad)
    cv.paint(body, "skin", "skin")
    skin, fat, muscle, back = v["skin_mm"], v["fat_mm"], v["muscle_mm"], v["posterior_muscle_mm"]
    cv.paint(cv.ellipse(0, 0, aw - skin, ad - skin), "subcutaneous_fat", "fat")
    wall = skin + fat
    cv.paint(cv.ellipse(0, 0, aw - wall, ad - wall), "muscle", "muscle")
    # Thoracic cavity: inside the muscle; its back wall is thicker (paraspinal muscles).
    cav_w = aw - wall - muscle
    cav_front, cav_back = ad - wall - muscle, ad - wall - back
    cav_cy = (cav_back - cav_front) / 2
    cav_d = (cav_back + cav_front) / 2
    cavity = cv.ellipse(0, cav_cy, cav_w, cav_d)
    cv.paint(cavity, "mediastinal_fat", "fat")
    # Scapulae (upper levels): thin blades behind the ribs, in the back muscle.
    if level < v["scapula_bottom_level"]:
        for side in (-1, 1):
            length = v["scapula_length_mm"]
            cx, cy = side * 0.55 * cav_w, ad - wall - 0.5 * back + 4
            angle = side * np.deg2rad(-20)
            outer = cv.ellipse(cx, cy, length, 5.0, angle) & body
            inner = cv.ellipse(cx, cy, length - v["cortex_mm"], 5.0 - v["cortex_mm"], angle)
            cv.bone(inner, outer, "scapulae")
    # Ribs: cross-sections along the chest wall, just outside the cavity.
    for side, angles in zip((-1, 1), anatomy.rib_angles, strict=True):
        r = v["rib_thickness_mm"] / 2
        for a in angles:
            cx = side * (cav_w + r * 0.6) * np.cos(a)
            cy = cav_cy + (cav_d + r * 0.6) * np.sin(a)
            along = np.arctan2(np.cos(a), -side * np.sin(a))  # long axis along the wall
            outer = cv.ellipse(cx, cy, 1.8 * r, r, along)
            inner = cv.ellipse(cx, cy, 1.8 * r - v["cortex_mm"], r - v["cortex_mm"], along)
            cv.bone(inner, outer, "ribs")
    # Sternum at the front.
    sw = v["sternum_half_width_mm"]
    st_cy = -(ad - wall - muscle / 2)
    cv.bone(cv.ellipse(0, st_cy, sw - v["cortex_mm"], 7.0 - v["cortex_mm"]), cv.ellipse(0, st_cy, sw, 7.0), "sternum")
    # Lungs: two ellipses in the cavity, apart by the mediastinum, scaled by the level.
    scale = _lung_scale(level, v["lung_peak_level"])
    mw = v["mediastinum_half_width_mm"]
    vr = v["vertebra_radius_mm"]
    vert_cy = cav_cy + cav_d - 0.6 * vr
    lungs = np.zeros_like(body)
    lung_masks = []
    for side in (-1, 1):
        half = (cav_w - mw) / 2
        lcx = side * (mw + half)
        lung = cv.ellipse(lcx, cav_cy + 4, half * (0.3 + 0.7 * scale), cav_d * (0.25 + 0.75 * scale)) & cavity
        lung &= ~cv.ellipse(0, vert_cy, vr + 14, vr + 10)  # the spine and its muscles
        lung &= np.abs(cv.x) > mw
        lung_masks.append((lung, lcx, half, cav_d))
        lungs |= lung
    # Heart (from heart_top_level), shifted left and forward; it pushes the left lung aside.
    heart_mask = np.zeros_like(body)
    if level >= v["heart_top_level"]:
        grow = min((level - v["heart_top_level"]) / 0.25, 1.0)
        hr = v["heart_radius_mm"] * (0.55 + 0.45 * grow)
        heart_mask = cv.ellipse(v["heart_left_mm"], cav_cy - 0.35 * cav_d + 0.5 * hr * 0.4, hr, 0.78 * hr,
                                np.deg2rad(-35)) & cavity  # fmt: skip
    lungs &= ~cv.ellipse(v["heart_left_mm"], cav_cy - 0.35 * cav_d + 0.2 * v["heart_radius_mm"],
                         v["heart_radius_mm"] * 1.05 if level >= v["heart_top_level"] else 0.0,
                         0.8 * v["heart_radius_mm"], np.deg2rad(-35))  # fmt: skip
    cv.paint(lungs, "lung", "lung")
    for (lung, lcx, half, depth), vessels, airways, dots in zip(
        lung_masks, anatomy.vessel_trees, anatomy.airway_trees, anatomy.vessel_dots, strict=True
    ):
        inside = lung & lungs
        wobble = 0.7 + 0.3 * np.cos(7 * level)  # trees change calibre with the level
        cv.segments(vessels, inside, "pulmonary_vessels", "blood", wobble)
        wall = Tree(airways.segments * np.array([1, 1, 1, 1, 1.35]))
        cv.segments(wall, inside, "airways", "muscle", wobble)  # bronchial wall (inside the lung label)
        cv.segments(airways, inside, "airways", "airway_air", wobble)
        for dx, dy, r in dots:
            cv.paint(cv.ellipse(lcx + dx * half * scale, cav_cy + dy * depth * scale * 0.9, r, r) & inside,
                     "pulmonary_vessels", "blood")  # fmt: skip
    if heart_mask.any():
        cv.paint(heart_mask, "heart", "blood")
    # Vertebra: body with cortex, canal with cord behind it, arch and spinous process.
    cortex = v["cortex_mm"]
    canal_r = v["spinal_canal_radius_mm"]
    canal_cy = vert_cy + vr + canal_r + 2
    arch = cv.ellipse(0, canal_cy + 2, canal_r + 7, canal_r + 8) & (cv.y > vert_cy)  # pedicles reach the body
    arch |= cv.ellipse(0, canal_cy + canal_r + 14, 4.0, 14.0)
    cv.bone(cv.ellipse(0, canal_cy + 2, canal_r + 7 - cortex, canal_r + 8 - cortex) & arch, arch, "vertebra")
    cv.bone(cv.ellipse(0, vert_cy, vr - cortex, vr - cortex), cv.ellipse(0, vert_cy, vr, vr), "vertebra")
    cv.paint(cv.ellipse(0, canal_cy, canal_r, canal_r), "spinal_canal", "csf")
    cv.paint(cv.ellipse(0, canal_cy, v["cord_radius_mm"], v["cord_radius_mm"] * 0.85), "spinal_cord", "cord")
    # Descending aorta: left in front of the spine.
    ar = v["aorta_radius_mm"]
    cv.paint(cv.ellipse(vr * 0.9 + ar * 0.4, vert_cy - vr - ar * 0.6, ar, ar), "aorta", "blood")
    # Oesophagus: right in front of the spine, behind the trachea.
    er = v["oesophagus_radius_mm"]
    oes_cy = vert_cy - vr - er - 1
    cv.paint(cv.ellipse(-er * 0.5, oes_cy, er, er * 0.8), "oesophagus", "muscle")
    # Airway: trachea above the carina, two main bronchi below it (both with a wall).
    tr = v["trachea_radius_mm"]
    tr_cy = oes_cy - er - tr - 3
    if level < v["carina_level"]:
        centres = [(0.0, tr_cy, tr)]
    else:
        spread = min((level - v["carina_level"]) * 250, mw + 6)
        centres = [(side * (tr + spread), tr_cy + 4, tr * 0.75) for side in (-1, 1)] if spread < mw + 6 else []
    for cx, cy, r in centres:
        cv.paint(cv.ellipse(cx, cy, r + 1.8, r + 1.8) & ~lungs, "trachea_wall", "muscle")
        cv.paint(cv.ellipse(cx, cy, r, r), "airways", "airway_air")
    # Great vessels above the heart: ascending aorta, pulmonary trunk, superior vena cava.
    gv_cy = tr_cy - tr - 1.3 * ar - 6
    if level < v["heart_top_level"] + 0.08:
        cv.paint(cv.ellipse(-4, gv_cy, 1.3 * ar, 1.3 * ar) & cavity, "great_vessels", "blood")
        cv.paint(cv.ellipse(-4 - 1.3 * ar - 8, gv_cy + 2, 0.8 * ar, 0.8 * ar) & cavity, "great_vessels", "blood")
        if level > v["carina_level"] - 0.05:
            cv.paint(cv.ellipse(1.3 * ar + 8, gv_cy - 4, 1.1 * ar, 1.1 * ar) & cavity, "great_vessels", "blood")
    cv.paint(~body, "outside_air", "air")
    return cv


# ----------------------------------------------------------------------------- HU


@dataclass(frozen=True)
class Texture:
    """One patient's image texture: its reconstruction kernel, noise and lung parenchyma pattern."""

    kernel_sharpness: float
    psf_mm: float
    edge_enhancement: float
    noise_correlation_mm: float
    noise_hu: float
    lung_pattern_mm: float
    lung_pattern_hu: float
    lung_reticulation: float


def _by_sharpness(sharpness: float, soft_sharp: tuple[float, float]) -> float:
    """A kernel property between its soft-kernel and its sharp-kernel value."""
    return float(soft_sharp[0] + sharpness * (soft_sharp[1] - soft_sharp[0]))


def draw_texture(rng: np.random.Generator, params: ThoraxPhantomParams) -> Texture:
    """A patient's texture: one kernel (sharpness sets PSF, edge overshoot, grain and noise gain
    together), a dose (noise level) and a lung pattern, each drawn in its [low, high] range."""
    sharpness = draw_uniform(rng, params.kernel_sharpness)
    dose_noise = draw_uniform(rng, params.noise_hu)
    low_psf, high_psf = params.psf_mm
    low_grain, high_grain = params.noise_correlation_mm
    return Texture(
        kernel_sharpness=sharpness,
        psf_mm=_by_sharpness(sharpness, (high_psf, low_psf)),
        edge_enhancement=_by_sharpness(sharpness, params.edge_enhancement),
        noise_correlation_mm=_by_sharpness(sharpness, (high_grain, low_grain)),
        noise_hu=dose_noise * (1 + params.kernel_noise_gain * sharpness),
        lung_pattern_mm=draw_uniform(rng, params.lung_pattern_mm),
        lung_pattern_hu=draw_uniform(rng, params.lung_pattern_hu),
        lung_reticulation=draw_uniform(rng, params.lung_reticulation),
    )


def lung_pattern(rng: np.random.Generator, shape: tuple[int, int], texture: Texture, pixel_mm: float) -> np.ndarray:
    """The lung parenchyma's pattern (HU, mean 0, sd ``lung_pattern_hu``): band-pass noise between
    the pattern's scale and twice it, shown as blobs at its peaks (nodular) and as thin lines at its
    zero crossings (reticular), mixed by ``lung_reticulation``."""
    white = smooth_noise(rng, shape, 0.0)
    sigma = texture.lung_pattern_mm / pixel_mm
    band = ndimage.gaussian_filter(white, sigma) - ndimage.gaussian_filter(white, 2 * sigma)
    band /= max(float(band.std()), 1e-6)
    nodular = np.maximum(band, 0.0)
    reticular = np.exp(-((band / RETICULAR_LINE_WIDTH) ** 2))

    def standardised(field_: np.ndarray) -> np.ndarray:
        return (field_ - field_.mean()) / max(float(field_.std()), 1e-6)

    mixed = (1 - texture.lung_reticulation) * standardised(nodular) + texture.lung_reticulation * standardised(reticular)
    return scaled_to_sd(mixed - mixed.mean(), texture.lung_pattern_hu).astype(np.float32)


def render_hu(cv: Canvas, anatomy: Anatomy, texture: Texture, rng: np.random.Generator,
              params: ThoraxPhantomParams) -> np.ndarray:  # fmt: skip
    """HU of a painted slice: tissue means + texture fields + the lung pattern, then the patient's
    kernel (PSF blur, edge overshoot) and its correlated noise."""
    px = params.pixel_mm
    hu = np.zeros(cv.tissue.shape, np.float32)
    for index, name in enumerate(TISSUES):
        where = cv.tissue == index
        if not where.any():
            continue
        value = np.full(hu.shape, anatomy.hu[name], np.float32)
        texture_sd = float(params.texture_hu.get(name, 0.0))
        if texture_sd > 0:
            value += scaled_to_sd(smooth_noise(rng, hu.shape, params.texture_mm / px), texture_sd)
        if name == "lung":
            value += lung_pattern(rng, hu.shape, texture, px)
        hu[where] = value[where]
    if texture.psf_mm > 0:
        hu = ndimage.gaussian_filter(hu, texture.psf_mm / px)
    if texture.edge_enhancement > 0:
        hu = hu + texture.edge_enhancement * (hu - ndimage.gaussian_filter(hu, params.edge_mm / px))
    if texture.noise_hu > 0:
        hu = hu + scaled_to_sd(smooth_noise(rng, hu.shape, texture.noise_correlation_mm / px), texture.noise_hu)
    return np.maximum(hu, MIN_HU).astype(np.float32)


def texture_row(subject_id: str, anatomy: Anatomy, texture: Texture) -> dict[str, object]:
    """A patient's row of truth/textures.tsv: its texture and its tissue means."""
    row: dict[str, object] = {"subject_id": subject_id}
    row |= {name: round(value, 4) for name, value in dataclasses.asdict(texture).items()}
    row |= {f"{tissue}_hu": round(anatomy.hu[tissue], 2) for tissue in TEXTURE_TISSUES}
    return row


def most_different_textures(
    textures_tsv: str | Path, candidates: Sequence[str] | None = None, columns: Sequence[str] = COARSE_TEXTURE_COLUMNS
) -> tuple[str, str]:
    """The two patients (of ``candidates``, default all) whose recorded textures differ most: the
    largest Euclidean distance over ``columns`` of truth/textures.tsv after scaling each to unit
    standard deviation over the table (so HU and shares weigh alike). The default columns are what
    still shows on a coarse grid such as the default 64 px slices (6 mm pixels): tissue means and
    the lung pattern; kernel, grain and noise matter at the phantom's own resolution."""
    with open(textures_tsv, newline="") as handle:
        rows = list(csv.DictReader(handle, delimiter="\t"))
    values = np.array([[float(row[c]) for c in columns] for row in rows])
    scaled = (values - values.mean(axis=0)) / np.maximum(values.std(axis=0), 1e-12)
    ids = [row["subject_id"] for row in rows]
    keep = [i for i, sid in enumerate(ids) if candidates is None or sid in set(candidates)]
    if len(keep) < 2:
        raise InputDataError(Path(textures_tsv), f"needs two of the patients {list(candidates or ids)[:5]}...")
    pairs = [(float(np.linalg.norm(scaled[a] - scaled[b])), ids[a], ids[b]) for i, a in enumerate(keep) for b in keep[i + 1:]]
    _, first, second = max(pairs)
    return first, second


# ----------------------------------------------------------------------------- files


def patient_id(seed: int, index: int) -> str:
    return "THX-" + hashed_hex(8, "thorax-phantom", seed, index).upper()


def slice_dataset(hu: np.ndarray, *, pid: str, study: str, series: str, sop: str, number: int, z_mm: float,
                  signed: bool, params: ThoraxPhantomParams) -> pydicom.Dataset:  # fmt: skip
    """One axial CT slice as TCIA serves it (rows = patient front to back, columns = right to left),
    signed with intercept 0 or TCIA's common unsigned 12-bit form with intercept -1024."""
    if signed:
        encoding, stored = SIGNED, np.clip(np.round(hu), -32768, 32767).astype(np.int16)
    else:
        encoding = UNSIGNED
        stored = np.clip(np.round(hu) - UNSIGNED.rescale_intercept, 0, STORED_MAX_UNSIGNED).astype(np.uint16)
    half = (params.matrix - 1) / 2 * params.pixel_mm
    ds = ct_slice_dataset(stored, encoding, sop_uid=sop, study_uid=study, series_uid=series, patient_id=pid,
                          position_lps=(-half, -half, z_mm), orientation=(1, 0, 0, 0, 1, 0),
                          pixel_spacing=(params.pixel_mm, params.pixel_mm), slice_mm=params.slice_mm,
                          window=LUNG_WINDOW)  # fmt: skip
    for keyword, value in IDENTITY_MARKERS.items():
        setattr(ds, keyword, value)
    ds.BodyPartExamined = "CHEST"
    ds.InstanceNumber = number
    return ds


def label_map_of(cv: Canvas, params: ThoraxPhantomParams) -> np.ndarray:
    """Grey-value label image (report 003's encoding) from the painted structures."""
    lookup = np.array([GREY_VALUES[CLASS_NAMES.index(params.structure_labels[s])] for s in STRUCTURES], np.uint8)
    return lookup[cv.structure]


def patient_rngs(seed: int, index: int) -> tuple[np.random.Generator, ...]:
    """Independent generators for a patient's anatomy, its image noise and its texture draw (the
    anatomy and its label maps do not change when the texture knobs do)."""
    return random_streams(3, seed, SEED_CODE, index)


def slice_levels(anatomy: Anatomy, params: ThoraxPhantomParams) -> np.ndarray:
    """Levels (share of the lung height from the apex) of a patient's slices, head to feet."""
    offsets = (np.arange(params.slices_per_patient) - (params.slices_per_patient - 1) / 2) * params.slice_mm
    return anatomy.values["stack_level"] + offsets / anatomy.values["lung_height_mm"]


def write_patient(root: Path, index: int, seed: int, params: ThoraxPhantomParams) -> dict[str, object]:
    """Render and write one patient's series, label images and truth; return its textures.tsv row
    (its folder is ``<subject_id>/<study>/<series>``)."""
    anatomy_rng, noise_rng, texture_rng = patient_rngs(seed, index)
    anatomy = draw_anatomy(anatomy_rng, params)
    texture = draw_texture(texture_rng, params)
    pid = patient_id(seed, index)
    study, series = hashed_uid("thorax", seed, index, "study"), hashed_uid("thorax", seed, index, "series")
    folder = f"{pid}/{study}/{series}"
    for sub in ("", f"{LABELS_FOLDER}/", f"{TRUTH_FOLDER}/"):
        (root / sub / folder).mkdir(parents=True)
    height = anatomy.values["lung_height_mm"]
    for k, level in enumerate(slice_levels(anatomy, params)):
        canvas = paint_slice(anatomy, float(level), params)
        hu = render_hu(canvas, anatomy, texture, noise_rng, params)
        name = f"{k + 1:04d}"
        ds = slice_dataset(hu, pid=pid, study=study, series=series, sop=hashed_uid("thorax", seed, index, "sop", k),
                           number=k + 1, z_mm=-level * height, signed=index % 2 == 1, params=params)  # fmt: skip
        ds.save_as(root / folder / f"{name}.dcm", enforce_file_format=True)
        save_png(label_map_of(canvas, params), root / LABELS_FOLDER / folder / f"{name}.png")
        save_png(canvas.tissue, root / TRUTH_FOLDER / folder / f"{name}_tissue.png")
    return {"folder": folder, **texture_row(pid, anatomy, texture)}


def write_phantom_thorax_dataset(out_dir: str | Path, seed: int, **knobs: Any) -> Path:
    """The download stage's phantom_tcia_thorax source: generate the TCIA-layout set in ``out_dir``.

    ``knobs`` are ThoraxPhantomParams' fields. Written beside ``out_dir`` and swapped in whole.
    """
    check_seed(seed)
    params = params_from_knobs(ThoraxPhantomParams, knobs)
    started = time.perf_counter()
    out_dir = Path(out_dir)
    with atomic_dir(out_dir) as tmp:
        patients = [write_patient(tmp, index, seed, params)
                    for index in progress(range(params.n_patients), "thorax phantoms", unit="patient")]  # fmt: skip
        write_table(tmp / "subjects.tsv", SUBJECTS_COLUMNS, [(p["subject_id"], "CT", p["folder"]) for p in patients])
        write_table(tmp / TRUTH_FOLDER / "tissues.tsv", ("value", "tissue"), enumerate(TISSUES))
        write_table(tmp / TRUTH_FOLDER / TEXTURES_TSV, TEXTURE_COLUMNS, patients)
    LOG.info("phantom_tcia_thorax: %d patients x %d slices, %.1f s", params.n_patients, params.slices_per_patient,
             time.perf_counter() - started)  # fmt: skip
    return out_dir


main = phantom_main(__doc__, ThoraxPhantomParams, write_phantom_thorax_dataset)


if __name__ == "__main__":
    main()
