"""Built-in head-CT slices with intracranial haemorrhage, laid out as the RSNA 2019 Kaggle data.

The anatomy is the head phantom's (pipeline.sources.phantom_head: MNI ICBM152 2009 brain, skull,
scalp, head holder, per-patient deformation and pose). Each patient gets a short axial stack of
``slices_per_patient`` 5 mm slices around the head centre (shifted by up to ``stack_offset_mm``),
written as RSNA writes them: one single-slice DICOM per image, ``stage_2_train/ID_<hex>.dcm``,
512 x 512, RescaleIntercept -1024, PatientID / StudyInstanceUID / SeriesInstanceUID / the image
id as SOPInstanceUID in RSNA's pseudonymous ``ID_<hex>`` form (so slices group by patient and
order along z by ImagePositionPatient), and ``stage_2_train.csv`` in RSNA's form (six rows per
image, pipeline.sources.rsna_labels). The files are then placed by the real source's own code
(pipeline.sources.rsna_ich.build_rsna_ich), so everything after the download reads phantom and
real RSNA data alike.

**Each patient looks like itself** (a generator needs slices that differ between patients as real
ones do): from its own random stream each patient draws a head size and shape, a skull thickness,
a ventricle size (a smooth warp about the ventricles, pipeline.sources.phantom_head.scale_ventricles),
grey- and white-matter HU and a noise level (``truth/patients.tsv``), and the head phantom's pose
draws a wider tilt and position. The anatomy is rendered on ``anatomy_matrix`` (about the
template's 1 mm) and resampled to the file's grid, on which bleeds and noise are drawn.

**Labels come first, blood second, and the labels are what was drawn.** A plan fixes which
slices bleed: ``round(haemorrhage_fraction x slices)`` positive slices (RSNA: about 14 % of
whole-head series; the default: 30 % of these supratentorial stacks), in
runs of consecutive slices of bleeding patients, each patient with one subtype drawn by
``subtype_weights`` (RSNA's label counts) and a second one with ``second_subtype_probability``.
Each bleed is then drawn on every slice of its run, its size following an ellipsoid's cross
section along z, with one acute-blood value drawn in ``blood_hu`` (about 50-90 HU):

* epidural: a biconvex lens against the inner table, short and thick;
* subdural: a long thin crescent along the convexity, kept off the midline (the falx);
* intraparenchymal: an irregular blob (a radius modulated by random harmonics) in the brain;
* intraventricular: the dependent (posterior, the patient lies supine) part of the ventricles;
* subarachnoid: the CSF of the sulci, the rim and the cisterns within a radius of a centre placed
  where those spaces are widest (blood collects there), so it is as thin as the spaces are.

A subtype counts on a slice only where at least ``min_bleed_mm2`` of it is at least half blood;
otherwise it is not drawn there at all, so a slice's CSV row is 1 exactly where blood was drawn
and a slice labelled healthy is bit-identical to the same patient rendered with no haemorrhage.
``mass_effect`` (0-1) pushes brain away from epidural, subdural and intraparenchymal bleeds by
that share of their thickness (the other two form no mass). ``truth/<image id>_haemorrhage.png``
records the blood (0 none, 1-5 the subtype in SUBTYPES order, wherever any blood is drawn,
partial-volume edges included) and
``truth/bleeds.tsv`` every bleed's parameters; neither is used by the workflow, only by tests.

**RSNA's 12-bit quirk.** Most files store HU + 1024 as unsigned 12-bit values with intercept
-1024. The series of a share ``quirk_fraction`` of the patients are written the way some RSNA
scanners wrote theirs: BitsStored 12, PixelRepresentation 0, RescaleIntercept 0, yet the values
are 12-bit two's complement (air at -1000 HU stored as 3096, clipped at -1000 as those scanners
did), which shows air as bright bone unless corrected. pipeline.preprocess.window corrects it
(``_unwrap_rsna_12bit``).

Random streams are separate per purpose (anatomy, noise, bleed geometry per patient; the plan
and the quirk for the set), so turning haemorrhage or the quirk off changes nothing else.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from scipy import ndimage

from pipeline.atomic import atomic_dir
from pipeline.errors import ConfigError
from pipeline.progress import progress
from pipeline.sources import phantom_head as head_phantom
from pipeline.sources.phantom_toolkit import (
    StoredPixels,
    check_seed,
    ct_slice_dataset,
    draw_ranges,
    draw_uniform,
    hashed_hex,
    knobs_from_schema,
    params_from_knobs,
    phantom_main,
    random_streams,
    resample_linear,
    save_png,
)
from pipeline.sources.real_datasets import scratch_folder, write_table
from pipeline.sources.rsna_ich import RSNA_IMAGE_FOLDER, RSNA_LABELS, build_rsna_ich, read_rsna_labels
from pipeline.sources.rsna_labels import SUBTYPES, write_subtype_labels

LOG = logging.getLogger(__name__)

# Mixed into every seed so that these patients are not the CT / MR phantom subjects.
SEED_CODE = 3
# Stream of the set-level draws (the plan, the quirk); patients use their index (< this).
SET_STREAM = 2**32 - 1
TRUTH_FOLDER = "truth"
PATIENTS_COLUMNS = ("patient_id", "quirk", "stack_offset_mm", "bleeding", "head_scale", "skull_mm", "ventricle_scale",
                    "grey_matter_hu", "white_matter_hu", "noise_hu")  # fmt: skip
BLEEDS_COLUMNS = ("patient_id", "subtype", "first_slice", "last_slice", "blood_hu", "size_mm", "thickness_mm")
# Stored values of ordinary files: HU + 1024 as unsigned 12-bit, as most RSNA files are.
PLAIN = StoredPixels(bits_stored=12, signed=False, rescale_intercept=-1024)
# The quirk: intercept 0, two's complement in 12 bits; those scanners clipped air at -1000 HU.
QUIRK = StoredPixels(bits_stored=12, signed=False, rescale_intercept=0)
QUIRK_FLOOR_HU = -1000
BRAIN_WINDOW = (40, 80)
# Anatomical regions on a slice, from the rendered tissue fractions.
VENTRICLE_MIN_DEPTH_MM = 15.0  # CSF this deep under the inner table is ventricle (or cistern)
PARENCHYMA_MIN_DEPTH_MM = 8.0  # a parenchymal bleed's centre lies at least this deep
SUBARACHNOID_CSF_SHARE = 0.3  # pixels with this much CSF belong to the subarachnoid spaces
CISTERN_SMOOTHING_MM = 3.0  # subarachnoid centres: CSF within about this distance...
CISTERN_QUANTILE = 0.75  # ...in the top quarter of the subarachnoid spaces
MIDLINE_CLEARANCE_DEG = 8.0  # a subdural crescent stops this far (in angle) from the midline
EDGE_SIGMA_PX = 0.5  # blood edges are blurred by this much (partial volume of the pixel)
HARMONICS = 3  # random harmonics shaping an irregular parenchymal blob
RAY_HALF_WIDTH_RAD = 0.05  # pixels this close in angle to a direction lie on its ray


@knobs_from_schema("phantom_rsna_ich")
class RsnaPhantomParams:
    """Every knob of the RSNA-layout phantom: params.yaml's phantom_rsna_ich, documented (with
    ranges and defaults) in the schema."""

    def check(self) -> None:
        if sum(self.subtype_weights) <= 0:
            raise ConfigError(
                f"phantom_rsna_ich.subtype_weights: need weights ({', '.join(SUBTYPES)}) with a positive sum, "
                f"got {self.subtype_weights}"
            )

    def head_params(self, look: PatientLook, matrix: int) -> head_phantom.PhantomParams:
        """The head phantom's knobs for one patient on a ``matrix`` grid over RSNA's field of view;
        the rest of its anatomy knobs keep their defaults."""
        grid = {"ct_matrix": matrix, "ct_pixel_mm": self.pixel_mm * self.matrix / matrix, "ct_slice_mm": self.slice_mm,
                "ct_n_slices": self.slices_per_patient, "ct_slice_subsamples": self.slice_subsamples}  # fmt: skip
        return head_phantom.PhantomParams(
            template_resolution_mm=self.template_resolution_mm, head_scale=look.head_scale,
            scale_jitter=self.head_shape_jitter, rotation_deg=self.rotation_deg, translation_mm=self.translation_mm,
            skull_mm=look.skull_mm, **grid,
        )  # fmt: skip


@dataclass(frozen=True)
class PatientLook:
    """What makes a patient's slices its own besides the deformation, pose and bleeds (one row of
    truth/patients.tsv): head size, skull, ventricles, grey / white HU, noise."""

    head_scale: float
    skull_mm: float
    ventricle_scale: float
    grey_matter_hu: float
    white_matter_hu: float
    noise_hu: float


def draw_look(rng: np.random.Generator, params: RsnaPhantomParams) -> PatientLook:
    """One value a patient from each of the look's [low, high] knobs (PatientLook's order)."""
    return PatientLook(**draw_ranges(rng, params, [f.name for f in dataclasses.fields(PatientLook)]))


# ----------------------------------------------------------------------------- the plan


@dataclass(frozen=True)
class PlannedBleed:
    """A bleed of one subtype over slices ``first..last`` (inclusive) of a patient's stack."""

    subtype: str
    first: int
    last: int


def plan_haemorrhages(rng: np.random.Generator, params: RsnaPhantomParams) -> dict[int, list[PlannedBleed]]:
    """Patient index (0-based) -> its bleeds; the runs add up to round(fraction x slices) positive slices."""
    n_slices = params.n_patients * params.slices_per_patient
    remaining = int(np.floor(params.haemorrhage_fraction * n_slices + 0.5))
    weights = np.asarray(params.subtype_weights) / sum(params.subtype_weights)
    plan: dict[int, list[PlannedBleed]] = {}
    for patient in rng.permutation(params.n_patients):
        if remaining <= 0:
            break
        run = int(min(remaining, rng.integers(1, params.slices_per_patient + 1)))
        first = int(rng.integers(0, params.slices_per_patient - run + 1))
        subtypes = [SUBTYPES[rng.choice(len(SUBTYPES), p=weights)]]
        if rng.random() < params.second_subtype_probability:
            others = [s for s in SUBTYPES if s not in subtypes]
            other_weights = np.array([weights[SUBTYPES.index(s)] for s in others])
            if other_weights.sum() > 0:
                subtypes.append(others[rng.choice(len(others), p=other_weights / other_weights.sum())])
        plan[int(patient)] = [PlannedBleed(s, first, first + run - 1) for s in subtypes]
        remaining -= run
    return plan


# ----------------------------------------------------------------------------- drawing


@dataclass
class SliceRegions:
    """Where each subtype can lie on one slice, on the (columns i, rows j) grid of the render."""

    intracranial: np.ndarray  # share of the pixel inside the inner table (brain + CSF)
    depth_mm: np.ndarray  # distance under the inner table
    parenchyma: np.ndarray  # bool: grey + white matter
    ventricles: np.ndarray  # bool: deep CSF
    subarachnoid: np.ndarray  # share of CSF where CSF forms the subarachnoid spaces
    centre: np.ndarray  # (2,) centroid of the intracranial space, pixels
    pixel_mm: float


def slice_regions(fractions: np.ndarray, pixel_mm: float) -> SliceRegions:
    """Regions of one slice from its tissue fractions (TISSUES, i, j)."""
    tissue = {name: fractions[head_phantom.TISSUES.index(name)] for name in ("csf", "grey_matter", "white_matter")}
    intracranial = np.clip(tissue["csf"] + tissue["grey_matter"] + tissue["white_matter"], 0.0, 1.0)
    inside = intracranial > 0.5
    depth = ndimage.distance_transform_edt(inside) * pixel_mm
    csf = tissue["csf"] > 0.5
    ventricles = csf & (depth > VENTRICLE_MIN_DEPTH_MM)
    subarachnoid = np.where((tissue["csf"] > SUBARACHNOID_CSF_SHARE) & ~ventricles, tissue["csf"], 0.0)
    centre = np.argwhere(inside).mean(axis=0) if inside.any() else (np.array(fractions.shape[1:]) - 1) / 2
    return SliceRegions(
        intracranial=intracranial,
        depth_mm=depth,
        parenchyma=(tissue["grey_matter"] + tissue["white_matter"]) > 0.5,
        ventricles=ventricles,
        subarachnoid=subarachnoid,
        centre=np.asarray(centre, dtype=float),
        pixel_mm=pixel_mm,
    )


@dataclass(frozen=True)
class BleedShape:
    """One bleed's geometry, fixed for a patient; drawn on each slice scaled by ``scale``."""

    subtype: str
    blood_hu: float
    size_mm: float  # half-length (epidural, subdural), radius (parenchymal, subarachnoid), fill share (ventricular)
    thickness_mm: float  # epidural / subdural greatest thickness; 0 otherwise
    angle_rad: float  # epidural / subdural: direction of the centre from the head centre (0 anterior, pi/2 left)
    point: tuple[float, float]  # parenchymal / subarachnoid centre, pixels (i, j)
    harmonics: tuple[tuple[float, float], ...]  # parenchymal: (amplitude, phase) per harmonic

    @property
    def mass_mm(self) -> float:
        """How far the bleed can push brain: an extra-axial bleed its thickness; a parenchymal blob
        a third of its radius (incompressible tissue at its rim moves ~R/3); blood in the CSF none."""
        if self.subtype in ("epidural", "subdural"):
            return self.thickness_mm
        return self.size_mm / 3 if self.subtype == "intraparenchymal" else 0.0


def _angles(shape: tuple[int, int], centre: np.ndarray) -> np.ndarray:
    """Angle of each pixel seen from ``centre``: 0 anterior (-j), pi/2 the patient's left (+i)."""
    i, j = np.meshgrid(np.arange(shape[0]), np.arange(shape[1]), indexing="ij")
    return np.arctan2(i - centre[0], -(j - centre[1]))


def _wrap(angle: np.ndarray | float) -> np.ndarray | float:
    return (np.asarray(angle) + np.pi) % (2 * np.pi) - np.pi


def draw_shape(
    rng: np.random.Generator, subtype: str, regions: SliceRegions, params: RsnaPhantomParams
) -> BleedShape:
    """A bleed's geometry, placed on the run's middle slice (``regions``)."""
    blood_hu = draw_uniform(rng, params.blood_hu)
    point = (float(regions.centre[0]), float(regions.centre[1]))
    harmonics: tuple[tuple[float, float], ...] = ()
    size, thickness, angle = 0.0, 0.0, 0.0
    if subtype == "epidural":
        size, thickness = draw_uniform(rng, params.epidural_length_mm), draw_uniform(rng, params.epidural_thickness_mm)
        angle = float(rng.uniform(-np.pi, np.pi))
    elif subtype == "subdural":
        size, thickness = draw_uniform(rng, params.subdural_length_mm), draw_uniform(rng, params.subdural_thickness_mm)
        angle = float(rng.choice([-1, 1]) * rng.uniform(np.pi / 4, 3 * np.pi / 4))  # a lateral convexity
    elif subtype == "intraparenchymal":
        size = draw_uniform(rng, params.parenchymal_radius_mm)
        candidates = np.argwhere(regions.parenchyma & (regions.depth_mm > PARENCHYMA_MIN_DEPTH_MM + size / 2))
        if len(candidates) == 0:
            candidates = np.argwhere(regions.parenchyma)
        if len(candidates):
            point = tuple(float(v) for v in candidates[rng.integers(len(candidates))])
        amplitudes = rng.uniform(0, 1, HARMONICS)
        amplitudes *= params.parenchymal_irregularity / max(float(amplitudes.sum()), 1e-9)
        harmonics = tuple((float(a), float(rng.uniform(0, 2 * np.pi))) for a in amplitudes)
    elif subtype == "intraventricular":
        size = draw_uniform(rng, params.ventricle_fill)
    else:  # subarachnoid
        size = draw_uniform(rng, params.subarachnoid_radius_mm)
        # Blood collects where the CSF spaces are widest (cisterns, Sylvian fissures): centres in
        # the widest quarter of the subarachnoid spaces, by their CSF within a few millimetres.
        spaces = regions.subarachnoid > 0
        width = ndimage.gaussian_filter(regions.subarachnoid, CISTERN_SMOOTHING_MM / regions.pixel_mm)
        candidates = np.argwhere(spaces & (width >= np.quantile(width[spaces], CISTERN_QUANTILE))) if spaces.any() else []
        if len(candidates):
            point = tuple(float(v) for v in candidates[rng.integers(len(candidates))])
    return BleedShape(subtype, blood_hu, size, thickness, angle, point, harmonics)


def _table_radius_px(regions: SliceRegions, angle_rad: float) -> float | None:
    """Distance from the head centre to the inner table in one direction: the farthest
    intracranial pixel near that ray (None where the ray meets no intracranial pixel)."""
    grid_shape = regions.intracranial.shape
    inside = regions.intracranial > 0.5
    i, j = np.meshgrid(np.arange(grid_shape[0]), np.arange(grid_shape[1]), indexing="ij")
    near_ray = inside & (np.abs(_wrap(_angles(grid_shape, regions.centre) - angle_rad)) < RAY_HALF_WIDTH_RAD)
    if not near_ray.any():
        return None
    return float(np.hypot(i - regions.centre[0], j - regions.centre[1])[near_ray].max())


def _convexity_mask(shape: BleedShape, regions: SliceRegions, scale: float, lens: bool) -> np.ndarray:
    """Epidural lens (``lens``) or subdural crescent against the inner table around ``shape.angle_rad``."""
    grid_shape = regions.intracranial.shape
    inside = regions.intracranial > 0.5
    angles = _angles(grid_shape, regions.centre)
    table_px = _table_radius_px(regions, shape.angle_rad)
    if table_px is None:
        return np.zeros(grid_shape, bool)
    table_mm = table_px * regions.pixel_mm
    half_length, thickness = shape.size_mm * scale, shape.thickness_mm * scale
    half_angle = half_length / table_mm
    if not lens:  # a subdural collection stops at the falx
        to_midline = min(abs(_wrap(shape.angle_rad)), abs(_wrap(shape.angle_rad - np.pi)))
        half_angle = min(half_angle, max(to_midline - np.deg2rad(MIDLINE_CLEARANCE_DEG), 0.0))
    if half_angle <= 0 or thickness <= 0:
        return np.zeros(grid_shape, bool)
    along = _wrap(angles - shape.angle_rad) / half_angle  # -1..1 over the bleed
    profile = 1 - along**2 if lens else 1 - along**4
    return inside & (np.abs(along) < 1) & (regions.depth_mm < thickness * profile)


def _blob_mask(shape: BleedShape, regions: SliceRegions, scale: float) -> np.ndarray:
    grid_shape = regions.intracranial.shape
    i, j = np.meshgrid(np.arange(grid_shape[0]), np.arange(grid_shape[1]), indexing="ij")
    di, dj = i - shape.point[0], j - shape.point[1]
    theta = np.arctan2(di, -dj)
    modulation = 1 + sum(a * np.sin((h + 2) * theta + phase) for h, (a, phase) in enumerate(shape.harmonics))
    radius_px = shape.size_mm * scale / regions.pixel_mm * modulation
    return regions.parenchyma & (np.hypot(di, dj) < radius_px)


def _ventricle_mask(shape: BleedShape, regions: SliceRegions, scale: float) -> np.ndarray:
    if not regions.ventricles.any():
        return np.zeros_like(regions.ventricles)
    rows = np.nonzero(regions.ventricles)[1]
    level = np.quantile(rows, 1 - shape.size_mm * scale)  # rows grow to posterior: the dependent side
    j = np.arange(regions.ventricles.shape[1])[None, :]
    return regions.ventricles & (j >= level)


def _subarachnoid_fraction(shape: BleedShape, regions: SliceRegions, scale: float) -> np.ndarray:
    grid_shape = regions.intracranial.shape
    i, j = np.meshgrid(np.arange(grid_shape[0]), np.arange(grid_shape[1]), indexing="ij")
    near = np.hypot(i - shape.point[0], j - shape.point[1]) * regions.pixel_mm < shape.size_mm * scale
    return np.where(near, regions.subarachnoid, 0.0)


def blood_fraction(shape: BleedShape, regions: SliceRegions, scale: float) -> np.ndarray:
    """Share of each pixel that is blood of this bleed on a slice where its size is ``scale`` x full."""
    if shape.subtype == "subarachnoid":
        return _subarachnoid_fraction(shape, regions, scale).astype(np.float32)  # blood fills the CSF only
    if shape.subtype == "epidural":
        mask = _convexity_mask(shape, regions, scale, lens=True)
    elif shape.subtype == "subdural":
        mask = _convexity_mask(shape, regions, scale, lens=False)
    elif shape.subtype == "intraparenchymal":
        mask = _blob_mask(shape, regions, scale)
    else:
        mask = _ventricle_mask(shape, regions, scale)
    if not mask.any():
        return np.zeros(mask.shape, np.float32)
    soft = ndimage.gaussian_filter(mask.astype(np.float32), EDGE_SIGMA_PX)
    return np.clip(soft * regions.intracranial, 0.0, 1.0).astype(np.float32)


def push_brain(hu: np.ndarray, shape: BleedShape, regions: SliceRegions, shift_mm: float) -> np.ndarray:
    """Mass effect: brain displaced ``shift_mm`` away from the bleed, fading over the bleed's size."""
    if shift_mm <= 0:
        return hu
    grid_shape = hu.shape
    i, j = np.meshgrid(np.arange(grid_shape[0]), np.arange(grid_shape[1]), indexing="ij")
    if shape.subtype == "intraparenchymal":
        origin = np.array(shape.point)
        away_i, away_j = i - origin[0], j - origin[1]
    else:  # extra-axial: push toward the head centre, from the table point in the bleed's direction
        direction = np.array([np.sin(shape.angle_rad), -np.cos(shape.angle_rad)])
        origin = regions.centre + direction * (_table_radius_px(regions, shape.angle_rad) or 0.0)
        away_i, away_j = np.full(grid_shape, -direction[0]), np.full(grid_shape, -direction[1])
    norm = np.maximum(np.hypot(away_i, away_j), 1e-6)
    reach_px = max(shape.size_mm, shape.thickness_mm) / regions.pixel_mm
    distance = np.hypot(i - origin[0], j - origin[1])
    magnitude = shift_mm / regions.pixel_mm * np.exp(-0.5 * (distance / reach_px) ** 2)
    magnitude *= regions.intracranial > 0.5
    source = np.stack([i - magnitude * away_i / norm, j - magnitude * away_j / norm])
    pushed = ndimage.map_coordinates(hu, source, order=1, mode="nearest")
    came_from_inside = ndimage.map_coordinates(regions.intracranial, source, order=1, mode="nearest") > 0.5
    pushed = np.where(came_from_inside, pushed, head_phantom.TISSUE_HU["csf"])
    return np.where(magnitude > 0, pushed, hu).astype(np.float32)


# ----------------------------------------------------------------------------- one patient


@dataclass
class RenderedPatient:
    """A patient's stack: HU (i, j, slice), blood label maps, per-slice subtype labels, geometry."""

    hu: np.ndarray
    blood_labels: np.ndarray  # uint8 (i, j, slice): 0 none, 1..5 SUBTYPES index + 1
    labels: np.ndarray  # uint8 (slice, 6): RSNA_COLUMNS order
    affine: np.ndarray
    bleeds: list[BleedShape]
    runs: list[PlannedBleed]
    look: PatientLook
    stack_offset_mm: float


def patient_rngs(seed: int, index: int) -> tuple[np.random.Generator, ...]:
    """Independent generators for a patient's anatomy, noise, bleed geometry and look."""
    return random_streams(4, seed, SEED_CODE, index)


def stack_grid(head_params: head_phantom.PhantomParams, offset_mm: float) -> tuple[tuple[int, int, int], np.ndarray]:
    """The head phantom's axial CT grid with its centre moved ``offset_mm`` along z."""
    shape, affine = head_phantom.ct_grid(head_params)
    affine = affine.copy()
    affine[2, 3] += offset_mm
    return shape, affine


def render_anatomy(model: head_phantom.TissueModel, anatomy: head_phantom.SubjectAnatomy, look: PatientLook,
                   offset_mm: float, params: RsnaPhantomParams) -> tuple[head_phantom.RenderedHead, np.ndarray]:  # fmt: skip
    """Tissue fractions on the slice grid (and its affine): rendered on ``anatomy_matrix`` and
    resampled linearly, pixel area to pixel area, when ``matrix`` is finer."""
    coarse = min(params.anatomy_matrix, params.matrix)
    head_params = params.head_params(look, coarse)
    shape, affine = stack_grid(head_params, offset_mm)
    head = head_phantom.render_head(model, anatomy, shape, affine, params.slice_subsamples, head_params.ct_pixel_mm)
    _, fine_affine = stack_grid(params.head_params(look, params.matrix), offset_mm)
    if coarse == params.matrix:
        return head, fine_affine
    fractions = resample_linear(head.fractions, params.matrix, (1, 2))
    brain = resample_linear(head.brain, params.matrix, (0, 1))
    return head_phantom.RenderedHead(fractions=fractions, brain=brain), fine_affine


def _run_scale(run: PlannedBleed, k: int) -> float:
    """A bleed's size on slice ``k`` of its run relative to its middle: an ellipsoid's cross
    section, but at least half, since the end slices of a run still cut a visible part of it."""
    half = (run.last - run.first) / 2 + 0.5
    offset = k - (run.first + run.last) / 2
    return max(float(np.sqrt(max(1 - (offset / half) ** 2, 0.0))), 0.5)


def _draw_slice(hu_slice: np.ndarray, k: int, runs: list[PlannedBleed], bleeds: list[BleedShape],
                regions: SliceRegions | None, params: RsnaPhantomParams) -> list[tuple[BleedShape, np.ndarray]]:  # fmt: skip
    """The bleeds that count on slice ``k`` with their blood fractions; applies their mass effect
    to ``hu_slice`` in place. A bleed smaller than ``min_bleed_mm2`` is neither drawn nor counted."""
    min_pixels = params.min_bleed_mm2 / params.pixel_mm**2
    drawn = []
    for run, bleed in zip(runs, bleeds, strict=True):
        if not run.first <= k <= run.last or regions is None:
            continue
        scale = _run_scale(run, k)
        fraction = blood_fraction(bleed, regions, scale)
        if np.count_nonzero(fraction >= 0.5) < max(min_pixels, 1):
            continue
        shift = params.mass_effect * bleed.mass_mm * scale
        hu_slice[...] = push_brain(hu_slice, bleed, regions, shift)
        drawn.append((bleed, fraction))
    return drawn


def _mix_blood(hu_slice: np.ndarray, drawn: list[tuple[BleedShape, np.ndarray]]) -> np.ndarray:
    """Replace each pixel's blood share by blood HU, in place; return the blood label map
    (0 none, else the SUBTYPES index + 1 of the bleed with the largest share, wherever there is
    any blood)."""
    stacked = np.stack([fraction for _, fraction in drawn])
    total = stacked.sum(axis=0)
    weights = stacked / np.maximum(total, 1.0)  # overlapping bleeds share a pixel, never exceed it
    values = np.array([bleed.blood_hu for bleed, _ in drawn], np.float32)
    hu_slice[...] = hu_slice * (1 - np.clip(total, 0.0, 1.0)) + np.tensordot(values, weights, axes=1)
    codes = np.array([SUBTYPES.index(bleed.subtype) + 1 for bleed, _ in drawn], np.uint8)
    return np.where(total > 0, codes[np.argmax(stacked, axis=0)], 0).astype(np.uint8)


def render_patient(index: int, seed: int, planned: list[PlannedBleed], params: RsnaPhantomParams) -> RenderedPatient:
    """Render patient ``index`` (0-based): its look and anatomy, then the planned bleeds, then noise."""
    model = head_phantom.load_tissue_model(params.template_resolution_mm)
    anatomy_rng, noise_rng, bleed_rng, look_rng = patient_rngs(seed, index)
    look = draw_look(look_rng, params)
    head_params = params.head_params(look, params.matrix)
    anatomy = head_phantom.draw_anatomy(anatomy_rng, model, head_params)
    anatomy = head_phantom.scale_ventricles(anatomy, model, look.ventricle_scale, params.ventricle_reach_mm)
    offset = float(anatomy_rng.uniform(-params.stack_offset_mm, params.stack_offset_mm))
    head, affine = render_anatomy(model, anatomy, look, offset, params)
    shape = head.brain.shape
    holder = head_phantom.headholder_fraction(head.head, affine, head_params)[:, :, None]
    air = head.fractions[head_phantom.TISSUES.index("air")]
    tissue_hu = {**head_phantom.TISSUE_HU, "grey_matter": look.grey_matter_hu, "white_matter": look.white_matter_hu}
    hu = head.mix(tissue_hu) + holder * air * (head_params.holder_hu - tissue_hu["air"])
    noise = noise_rng.normal(0.0, look.noise_hu, size=shape).astype(np.float32)

    n_slices = shape[2]
    labels = np.zeros((n_slices, len(SUBTYPES) + 1), np.uint8)
    blood_labels = np.zeros(shape, np.uint8)
    runs = list(planned)
    regions = [slice_regions(head.fractions[..., k], params.pixel_mm) for k in range(n_slices)] if runs else []
    bleeds = [draw_shape(bleed_rng, run.subtype, regions[(run.first + run.last) // 2], params) for run in runs]
    for k in range(n_slices):
        drawn = _draw_slice(hu[..., k], k, runs, bleeds, regions[k] if runs else None, params)
        if any(run.first <= k <= run.last for run in runs) and not drawn:
            # Planned to bleed, but no planned subtype fits this slice (no ventricle at this
            # level, say): a small parenchymal bleed keeps the planned share of positive slices.
            runs.append(PlannedBleed("intraparenchymal", k, k))
            bleeds.append(draw_shape(bleed_rng, "intraparenchymal", regions[k], params))
            drawn = _draw_slice(hu[..., k], k, runs[-1:], bleeds[-1:], regions[k], params)
        if not drawn:
            continue
        blood_labels[..., k] = _mix_blood(hu[..., k], drawn)
        for bleed, _ in drawn:
            labels[k, SUBTYPES.index(bleed.subtype)] = 1
        labels[k, -1] = 1
    return RenderedPatient(hu + noise, blood_labels, labels, affine, bleeds, runs, look, offset)


# ----------------------------------------------------------------------------- files


def _hex_id(length: int, *parts: object) -> str:
    """RSNA-style pseudonymous id ``ID_<hex>``, a hash of the seed and the object's place."""
    return "ID_" + hashed_hex(length, *parts)


def image_ids(seed: int, index: int, n_slices: int) -> list[str]:
    """Image ids of a patient's slices (RSNA: 9 hex digits)."""
    return [_hex_id(9, "rsna-phantom", seed, index, "slice", k) for k in range(n_slices)]


def stored_values(hu: np.ndarray, quirk: bool) -> np.ndarray:
    """Unsigned 12-bit stored values: HU + 1024, or for a quirk file HU (>= -1000) in two's complement."""
    wrap = 2**PLAIN.bits_stored
    if quirk:
        clipped = np.clip(np.round(hu), QUIRK_FLOOR_HU, wrap + QUIRK_FLOOR_HU - 1).astype(np.int32)
        return (clipped % wrap).astype(np.uint16)
    return np.clip(np.round(hu) - PLAIN.rescale_intercept, 0, wrap - 1).astype(np.uint16)


@contextlib.contextmanager
def _rsna_uids_allowed() -> Iterator[None]:
    """RSNA put ``ID_<hex>`` pseudonyms into UI fields, which DICOM does not allow; so do we."""
    settings = pydicom.config.settings
    previous = settings.reading_validation_mode, settings.writing_validation_mode
    settings.reading_validation_mode = settings.writing_validation_mode = pydicom.config.IGNORE
    try:
        yield
    finally:
        settings.reading_validation_mode, settings.writing_validation_mode = previous


def write_slice(path: Path, hu_slice: np.ndarray, image_id: str, patient_id: str, study_id: str,
                series_id: str, position_lps: np.ndarray, quirk: bool, params: RsnaPhantomParams) -> None:  # fmt: skip
    """One RSNA-like single-slice CT file; ``hu_slice`` is (rows, columns)."""
    with _rsna_uids_allowed():
        ds = ct_slice_dataset(
            stored_values(hu_slice, quirk), QUIRK if quirk else PLAIN, sop_uid=image_id, study_uid=study_id,
            series_uid=series_id, patient_id=patient_id, position_lps=position_lps, orientation=(1, 0, 0, 0, 1, 0),
            pixel_spacing=(params.pixel_mm, params.pixel_mm), slice_mm=params.slice_mm, window=BRAIN_WINDOW,
        )  # fmt: skip
        ds.save_as(path, enforce_file_format=True)


def _write_patient(root: Path, index: int, seed: int, patient: RenderedPatient, quirk: bool,
                   params: RsnaPhantomParams) -> tuple[dict[str, np.ndarray], list[dict[str, object]], dict[str, object]]:  # fmt: skip
    """Write a patient's slices and truth; return image id -> labels, its bleeds.tsv rows and its
    patients.tsv row."""
    patient_id = _hex_id(8, "rsna-phantom", seed, index, "patient")
    study_id = _hex_id(10, "rsna-phantom", seed, index, "study")
    series_id = _hex_id(10, "rsna-phantom", seed, index, "series")
    ids = image_ids(seed, index, patient.hu.shape[2])
    lps_from_ras = np.diag([-1.0, -1.0, 1.0])
    labels = {}
    for k, image_id in enumerate(ids):
        position = lps_from_ras @ (patient.affine[:3, :3] @ np.array([0.0, 0.0, k]) + patient.affine[:3, 3])
        write_slice(root / RSNA_IMAGE_FOLDER / f"{image_id}.dcm", patient.hu[..., k].T, image_id, patient_id,
                    study_id, series_id, position, quirk, params)  # fmt: skip
        save_png(patient.blood_labels[..., k].T, root / TRUTH_FOLDER / f"{image_id}_haemorrhage.png")
        labels[image_id] = patient.labels[k]
    rows = [
        {"patient_id": patient_id, "subtype": bleed.subtype, "first_slice": run.first, "last_slice": run.last,
         "blood_hu": round(bleed.blood_hu, 1), "size_mm": round(bleed.size_mm, 2),
         "thickness_mm": round(bleed.thickness_mm, 2)}  # fmt: skip
        for run, bleed in zip(patient.runs, patient.bleeds, strict=True)
    ]
    look = {name: round(value, 3) for name, value in dataclasses.asdict(patient.look).items()}
    patient_row = {"patient_id": patient_id, "quirk": int(quirk), "stack_offset_mm": round(patient.stack_offset_mm, 2),
                   "bleeding": int(bool(patient.runs)), **look}  # fmt: skip
    return labels, rows, patient_row


def write_phantom_rsna_dataset(out_dir: str | Path, seed: int, **knobs: Any) -> Path:
    """The download stage's phantom_rsna_ich source: generate, then lay out as an RSNA download is.

    ``knobs`` are RsnaPhantomParams' fields. Result in ``out_dir`` (swapped in atomically):
    ``stage_2_train/ID_<hex>.dcm``, ``stage_2_train.csv`` and ``images.tsv`` (placed by
    pipeline.sources.rsna_ich), plus ``truth/``.
    """
    check_seed(seed)
    params = params_from_knobs(RsnaPhantomParams, knobs)
    plan_rng, quirk_rng = random_streams(2, seed, SEED_CODE, SET_STREAM)
    plan = plan_haemorrhages(plan_rng, params)
    quirky = quirk_rng.random(params.n_patients) < params.quirk_fraction
    out_dir = Path(out_dir)
    started = time.perf_counter()
    with atomic_dir(out_dir) as tmp, scratch_folder(tmp) as scratch:
        (scratch / RSNA_IMAGE_FOLDER).mkdir()
        (scratch / TRUTH_FOLDER).mkdir()
        labels: dict[str, np.ndarray] = {}
        bleed_rows: list[dict[str, object]] = []
        patient_rows: list[dict[str, object]] = []
        for index in progress(range(params.n_patients), "RSNA-layout phantoms", unit="patient"):
            patient = render_patient(index, seed, plan.get(index, []), params)
            patient_labels, rows, patient_row = _write_patient(scratch, index, seed, patient, bool(quirky[index]), params)
            labels.update(patient_labels)
            bleed_rows.extend(rows)
            patient_rows.append(patient_row)
        write_subtype_labels(scratch / RSNA_LABELS, labels)
        images = {image_id: scratch / RSNA_IMAGE_FOLDER / f"{image_id}.dcm" for image_id in labels}
        build_rsna_ich(tmp, scratch / RSNA_LABELS, read_rsna_labels(scratch / RSNA_LABELS), images, move=True)
        (scratch / TRUTH_FOLDER).rename(tmp / TRUTH_FOLDER)
        write_table(tmp / TRUTH_FOLDER / "bleeds.tsv", BLEEDS_COLUMNS, bleed_rows)
        write_table(tmp / TRUTH_FOLDER / "patients.tsv", PATIENTS_COLUMNS, patient_rows)
    positive = sum(int(v[-1]) for v in labels.values())
    LOG.info(
        "phantom_rsna_ich: %d patients, %d slices, %d with haemorrhage, %d quirk patients, %.1f s",
        params.n_patients, len(labels), positive, int(quirky.sum()), time.perf_counter() - started,
    )  # fmt: skip
    return out_dir


main = phantom_main(__doc__, RsnaPhantomParams, write_phantom_rsna_dataset)


if __name__ == "__main__":
    main()
