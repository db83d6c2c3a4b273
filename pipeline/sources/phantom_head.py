"""Built-in head phantom: CQ500-like CT series and IXI-like T2 volumes, generated offline.

The anatomy comes from the MNI ICBM152 2009 template that nilearn ships in its wheel (grey and
white matter probabilities and the brain mask). The template is skull-stripped, so the layers
around the brain (CSF rim, skull tables and diploe, scalp fat and skin) are built from a signed
distance to the brain surface. Each subject gets its own smooth deformation and head pose, and
is rendered directly on the scanner grid in one resampling:
target voxel -> world -> inverse pose -> inverse deformation -> template.
Held-out subjects also get the same anatomy in the other modality (a "partner") so that the
translation can be scored against a ground truth, and every subject gets truth masks.
"""
from __future__ import annotations

import dataclasses
import functools
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
from nilearn import datasets as nilearn_datasets
from pydicom.uid import generate_uid
from scipy import ndimage
from scipy.spatial.transform import Rotation

from pipeline.atomic import atomic_dir
from pipeline.errors import ConfigError
from pipeline.progress import progress
from pipeline.sources.phantom_toolkit import (
    StoredPixels,
    check_seed,
    ct_slice_dataset,
    ds_value,
    knob_parser,
    knobs_from_schema,
    params_from_knobs,
    parse_cli,
    random_streams,
    smooth_noise,
)

LOG = logging.getLogger(__name__)

MODALITIES = ("CT", "MR")
SUBJECT_PREFIX = {"CT": "ct", "MR": "mr"}
PARTNER_MODALITY = {"CT": "MR", "MR": "CT"}
# Mixed into each subject's seed so that CT and MR subjects are different people.
MODALITY_SEED_CODE = {"CT": 1, "MR": 2}
MANIFEST_COLUMNS = ["subject_id", "modality", "path", "partner_path", "partner_modality"]
CT_SERIES_FOLDER = Path("Unknown Study") / "CT PLAIN THICK"
MR_FOLDER = Path("IXI-T2")

TISSUES = ("air", "skin", "fat", "cortical_bone", "diploe", "csf", "grey_matter", "white_matter")
# Typical unenhanced head-CT values.
TISSUE_HU = {
    "air": -1000.0, "skin": 40.0, "fat": -100.0, "cortical_bone": 1400.0, "diploe": 700.0,
    "csf": 5.0, "grey_matter": 40.0, "white_matter": 25.0,
}
# T2-weighted fast spin echo, relative to CSF: CSF bright, GM > WM, cortical bone dark,
# fatty marrow and scalp fat moderately bright.
TISSUE_T2 = {
    "air": 0.0, "skin": 0.35, "fat": 0.6, "cortical_bone": 0.03, "diploe": 0.2,
    "csf": 1.0, "grey_matter": 0.55, "white_matter": 0.4,
}
CT_WINDOW_CENTER_HU = 40
CT_WINDOW_WIDTH_HU = 80
CT_ENCODING = StoredPixels(bits_stored=16, signed=True, rescale_intercept=-1024)
# The signed distance to the brain surface is smooth, so a 2 mm grid keeps it accurate while
# its Euclidean distance transform stays cheap (about 1 s instead of 10 s at 1 mm).
DISTANCE_GRID_MM = 2.0
# The distance grid extends this far beyond the brain; farther out is always air.
DISTANCE_MARGIN_MM = 40.0
# Smoothing of the brain mask before, and of the distance after, the distance transform, so
# that the skull surfaces are not staircased.
MASK_SMOOTHING_MM = 1.5
DISTANCE_SMOOTHING_MM = 2.0
# Rendering first screens blocks of this many x this many voxels for "surely air" or
# "surely brain", at the undeformed block corner.
PRESCREEN_BLOCK = 2
# CSF this far under the brain surface is ventricle (the rest: sulci, cisterns, the rim).
VENTRICLE_DEPTH_MM = 15.0
# The displacement field is white noise on a grid this many times finer than its smoothness.
DISPLACEMENT_GRID_PER_SIGMA = 3
UID_ROOT = "medgan-phantom"


@knobs_from_schema("phantom_head")
class PhantomParams:
    """Every knob of the head phantom: params.yaml's phantom_head, documented (with ranges and
    defaults) in the schema. The defaults give a CQ500-like CT and an IXI-like T2 quickly."""

    def check(self) -> None:
        if 2 * self.skull_table_mm >= self.skull_mm:
            raise ConfigError("phantom_head.skull_table_mm: two tables must be thinner than skull_mm")
        if self.skin_mm >= self.scalp_mm:
            raise ConfigError("phantom_head.skin_mm: must be thinner than scalp_mm")
        if self.holder_thickness_mm >= self.skull_mm:
            raise ConfigError(
                "phantom_head.holder_thickness_mm: must be thinner than skull_mm so erosion removes it first"
            )
        codes = self.mr_axcodes.upper()
        axis_of = {"R": 0, "L": 0, "A": 1, "P": 1, "S": 2, "I": 2}
        if {axis_of[c] for c in codes} != {0, 1, 2}:
            raise ConfigError(f"phantom_head.mr_axcodes: need one of R/L, A/P, S/I each, got {self.mr_axcodes!r}")
        object.__setattr__(self, "mr_axcodes", codes)


@dataclass(frozen=True)
class TissueModel:
    """Template anatomy: tissue probabilities plus the signed distance to the brain surface."""

    grey: np.ndarray
    white: np.ndarray
    template_vox_from_mm: np.ndarray
    brain_distance_mm: np.ndarray
    distance_vox_from_mm: np.ndarray
    distance_lo_mm: np.ndarray
    distance_hi_mm: np.ndarray
    brain_lo_mm: np.ndarray
    brain_hi_mm: np.ndarray
    ventricle_centre_mm: np.ndarray

    @property
    def head_centre_mm(self) -> np.ndarray:
        """Pivot of the head pose; placed at the scanner isocentre before translation."""
        return (self.brain_lo_mm + self.brain_hi_mm) / 2


@dataclass(frozen=True)
class SubjectAnatomy:
    """One subject: its deformation, its pose in the scanner and its layer boundaries.

    ``displacement_mm`` (3, ...) maps a point of the subject's undeformed head frame to the
    template point it shows (the inverse deformation), so rendering needs no inversion.
    """

    displacement_mm: np.ndarray
    displacement_vox_from_mm: np.ndarray
    template_from_world: np.ndarray
    mean_scale: float
    layer_tissues: tuple[str, ...]
    layer_outer_mm: np.ndarray


@dataclass(frozen=True)
class RenderedHead:
    """Tissue fractions on a target grid (TISSUES order) and the brain-mask fraction."""

    fractions: np.ndarray
    brain: np.ndarray

    def mix(self, values: dict[str, float]) -> np.ndarray:
        """Partial-volume image: each voxel's tissue fractions weighted by the tissue values."""
        weights = np.array([values[t] for t in TISSUES], dtype=np.float32)
        return np.tensordot(weights, self.fractions, axes=1)

    @property
    def head(self) -> np.ndarray:
        """Fraction of each voxel inside the head (scalp and everything within)."""
        return 1.0 - self.fractions[TISSUES.index("air")]


def _affine_apply(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Apply a 4x4 affine to (3, N) points, keeping the points' float type."""
    matrix = matrix.astype(points.dtype)
    return matrix[:3, :3] @ points + matrix[:3, 3:4]


@functools.lru_cache(maxsize=2)
def load_tissue_model(template_resolution_mm: int) -> TissueModel:
    """Load nilearn's MNI152 maps and compute the signed distance to the brain (cached per process)."""
    grey_img = nilearn_datasets.load_mni152_gm_template(resolution=template_resolution_mm)
    white_img = nilearn_datasets.load_mni152_wm_template(resolution=template_resolution_mm)
    mask_img = nilearn_datasets.load_mni152_brain_mask(resolution=template_resolution_mm)
    template_affine = mask_img.affine
    mask = np.asanyarray(mask_img.dataobj) > 0
    # Fortran order (z slowest): an axial slice then reads a thin slab of memory, which makes
    # the interpolation twice as fast as in C order.
    grey = np.asfortranarray(np.clip(np.asanyarray(grey_img.dataobj, dtype=np.float32), 0, 1))
    white = np.asfortranarray(np.clip(np.asanyarray(white_img.dataobj, dtype=np.float32), 0, 1))

    voxels = np.argwhere(mask)
    brain_lo = _affine_apply(template_affine, voxels.min(0)[:, None].astype(float))[:, 0]
    brain_hi = _affine_apply(template_affine, voxels.max(0)[:, None].astype(float))[:, 0]
    lo = brain_lo - DISTANCE_MARGIN_MM
    shape = np.ceil((brain_hi - lo + DISTANCE_MARGIN_MM) / DISTANCE_GRID_MM).astype(int) + 1
    distance_affine = np.diag([DISTANCE_GRID_MM] * 3 + [1.0])
    distance_affine[:3, 3] = lo
    template_vox_from_mm = np.linalg.inv(template_affine)

    smooth_mask = ndimage.gaussian_filter(mask.astype(np.float32), MASK_SMOOTHING_MM / template_resolution_mm)
    grid = np.indices(shape, dtype=np.float64).reshape(3, -1)
    coords = _affine_apply(template_vox_from_mm @ distance_affine, grid)
    inside = (ndimage.map_coordinates(smooth_mask, coords, order=1, cval=0.0) > 0.5).reshape(shape)
    outside_mm = ndimage.distance_transform_edt(~inside, sampling=DISTANCE_GRID_MM)
    inside_mm = ndimage.distance_transform_edt(inside, sampling=DISTANCE_GRID_MM)
    # Voxel-centre distances put the surface half a voxel from either side's boundary voxels.
    signed = np.where(inside, -(inside_mm - DISTANCE_GRID_MM / 2), outside_mm - DISTANCE_GRID_MM / 2)
    signed = ndimage.gaussian_filter(signed.astype(np.float32), DISTANCE_SMOOTHING_MM / DISTANCE_GRID_MM)
    # The ventricles: the template's CSF (brain mask, neither grey nor white) deep under the surface.
    csf_voxels = np.argwhere(mask & (grey + white < 0.5)).T.astype(float)
    csf_mm = _affine_apply(template_affine, csf_voxels)
    depth = ndimage.map_coordinates(signed, _affine_apply(np.linalg.inv(distance_affine), csf_mm), order=1)
    ventricle_centre = csf_mm[:, depth < -VENTRICLE_DEPTH_MM].mean(axis=1)
    return TissueModel(
        grey=grey,
        white=white,
        template_vox_from_mm=template_vox_from_mm,
        brain_distance_mm=np.asfortranarray(signed),
        distance_vox_from_mm=np.linalg.inv(distance_affine),
        distance_lo_mm=lo,
        distance_hi_mm=lo + (shape - 1) * DISTANCE_GRID_MM,
        brain_lo_mm=brain_lo,
        brain_hi_mm=brain_hi,
        ventricle_centre_mm=ventricle_centre,
    )


def draw_anatomy(rng: np.random.Generator, model: TissueModel, params: PhantomParams) -> SubjectAnatomy:
    """Draw a subject: smooth displacement field, layer thicknesses and head pose."""
    spacing = params.deformation_smoothness_mm / DISPLACEMENT_GRID_PER_SIGMA
    shape = tuple(np.ceil((model.distance_hi_mm - model.distance_lo_mm) / spacing).astype(int) + 1)
    displacement = np.stack([smooth_noise(rng, shape, DISPLACEMENT_GRID_PER_SIGMA, mode="wrap") for _ in range(3)])
    displacement *= params.deformation_mm / float(np.sqrt(np.mean(np.sum(displacement**2, axis=0))))
    displacement_affine = np.diag([spacing] * 3 + [1.0])
    displacement_affine[:3, 3] = model.distance_lo_mm

    def jittered(thickness: float) -> float:
        return thickness * (1 + rng.uniform(-params.layer_jitter, params.layer_jitter))

    diploe = params.skull_mm - 2 * params.skull_table_mm
    layers = (
        ("csf", jittered(params.csf_rim_mm)),
        ("cortical_bone", jittered(params.skull_table_mm)),
        ("diploe", jittered(diploe)),
        ("cortical_bone", jittered(params.skull_table_mm)),
        ("fat", jittered(params.scalp_mm - params.skin_mm)),
        ("skin", jittered(params.skin_mm)),
    )

    angles = rng.uniform(-params.rotation_deg, params.rotation_deg, size=3)
    translation = rng.uniform(-params.translation_mm, params.translation_mm, size=3)
    scales = params.head_scale * (1 + rng.uniform(-params.scale_jitter, params.scale_jitter, size=3))
    world_from_template = np.eye(4)
    world_from_template[:3, :3] = Rotation.from_euler("xyz", angles, degrees=True).as_matrix() @ np.diag(scales)
    world_from_template[:3, 3] = translation - world_from_template[:3, :3] @ model.head_centre_mm
    mean_scale = float(np.mean(scales))
    return SubjectAnatomy(
        displacement_mm=displacement,
        displacement_vox_from_mm=np.linalg.inv(displacement_affine),
        template_from_world=np.linalg.inv(world_from_template),
        mean_scale=mean_scale,
        layer_tissues=tuple(name for name, _ in layers),
        # Thicknesses are wanted in world mm; the distance lives in template mm.
        layer_outer_mm=np.cumsum([mm for _, mm in layers]) / mean_scale,
    )


def scale_ventricles(anatomy: SubjectAnatomy, model: TissueModel, factor: float, reach_mm: float) -> SubjectAnatomy:
    """The same subject with ventricles ``factor`` times as large (slit ventricles below 1,
    atrophy or hydrocephalus above): a smooth radial warp about the template's ventricle centre,
    full strength there and fading over ``reach_mm`` (Gaussian), composed with the subject's
    deformation, so the skull and scalp around it do not move."""
    grid_shape = anatomy.displacement_mm.shape[1:]
    points = _affine_apply(np.linalg.inv(anatomy.displacement_vox_from_mm), np.indices(grid_shape).reshape(3, -1).astype(float))
    offset = points - model.ventricle_centre_mm[:, None]
    shrink = 1 + (1 / factor - 1) * np.exp(-np.sum(offset**2, axis=0) / reach_mm**2)
    warped = model.ventricle_centre_mm[:, None] + offset * shrink
    warped_vox = _affine_apply(anatomy.displacement_vox_from_mm, warped)
    deformed = warped + np.stack(
        [ndimage.map_coordinates(c, warped_vox, order=1, mode="nearest") for c in anatomy.displacement_mm]
    )
    displacement = (deformed - points).reshape(3, *grid_shape).astype(np.float32)
    return dataclasses.replace(anatomy, displacement_mm=displacement)


def _fraction_beyond(distance: np.ndarray, boundary: float, width: float) -> np.ndarray:
    """Share of a voxel of size ``width`` lying beyond the surface ``distance == boundary``."""
    return np.clip(0.5 + (distance - boundary) / width, 0.0, 1.0)


def _tissue_fractions(
    model: TissueModel,
    anatomy: SubjectAnatomy,
    centres_mm: np.ndarray,
    deep_in_brain: np.ndarray,
    slice_step_mm: np.ndarray,
    slice_offsets: np.ndarray,
    width_mm: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Tissue fractions (len(TISSUES), N) and brain fraction (N,) of voxels at deformed template points.

    The layers' shares average samples through the slice (``centre + offset x slice_step``),
    except for voxels known to lie ``deep_in_brain``. Grey and white matter come from the
    centre only: the template's probability maps are already smoother than a slice.
    """
    fractions = np.zeros((len(TISSUES), centres_mm.shape[1]), dtype=np.float32)
    brain = np.ones(centres_mm.shape[1], dtype=np.float32)
    shell = ~deep_in_brain
    samples = centres_mm[:, None, shell] + slice_step_mm[:, None, None] * slice_offsets[None, :, None]
    distance = ndimage.map_coordinates(
        model.brain_distance_mm,
        _affine_apply(model.distance_vox_from_mm, samples.reshape(3, -1)),
        order=1,
        mode="nearest",
    ).reshape(len(slice_offsets), -1)
    width = width_mm / anatomy.mean_scale
    beyond_inner = _fraction_beyond(distance, 0.0, width)
    brain[shell] = 1.0 - beyond_inner.mean(0)
    for tissue, outer in zip(anatomy.layer_tissues, anatomy.layer_outer_mm):
        beyond_outer = _fraction_beyond(distance, float(outer), width)
        fractions[TISSUES.index(tissue), shell] += (beyond_inner - beyond_outer).mean(0)
        beyond_inner = beyond_outer
    fractions[TISSUES.index("air"), shell] = beyond_inner.mean(0)

    in_brain = brain > 0
    template_vox = _affine_apply(model.template_vox_from_mm, centres_mm[:, in_brain])
    grey = ndimage.map_coordinates(model.grey, template_vox, order=1, cval=0.0)
    white = ndimage.map_coordinates(model.white, template_vox, order=1, cval=0.0)
    total = np.maximum(grey + white, 1.0)
    grey, white = grey / total, white / total
    share = brain[in_brain]
    fractions[TISSUES.index("grey_matter"), in_brain] = share * grey
    fractions[TISSUES.index("white_matter"), in_brain] = share * white
    fractions[TISSUES.index("csf"), in_brain] += share * (1.0 - grey - white)
    return fractions, brain


def _expand_blocks(block_mask: np.ndarray, block: int, shape: tuple[int, int]) -> np.ndarray:
    """Give every voxel of a block its block's value."""
    return np.repeat(np.repeat(block_mask, block, axis=0), block, axis=1)[: shape[0], : shape[1]]


def render_head(
    model: TissueModel,
    anatomy: SubjectAnatomy,
    shape: tuple[int, int, int],
    affine: np.ndarray,
    slice_subsamples: int,
    partial_volume_mm: float,
) -> RenderedHead:
    """Render a subject on a target grid (voxel -> world via ``affine``), slice by slice.

    Each voxel averages ``slice_subsamples`` samples of the layers along its third axis
    (thick-slice partial volume); within a sample, layer boundaries are blurred over
    ``partial_volume_mm``. The displacement is taken at the voxel centre: it varies little
    across one slice. A coarse look at the undeformed distance to the brain first finds the
    voxels that are surely air or surely brain, so that only the rest pays for every sample.
    """
    # float32 points: ample for millimetres, half the memory traffic of float64.
    template_from_voxel = (anatomy.template_from_world @ affine).astype(np.float32)
    slice_step = template_from_voxel[:3, 2]
    offsets = ((np.arange(slice_subsamples) + 0.5) / slice_subsamples - 0.5).astype(np.float32)
    i, j = np.meshgrid(np.arange(shape[0], dtype=np.float32), np.arange(shape[1], dtype=np.float32), indexing="ij")
    plane = template_from_voxel[:3, 0, None, None] * i + template_from_voxel[:3, 1, None, None] * j
    block = PRESCREEN_BLOCK
    # How far the deformed samples of a voxel, or any voxel of its block, stray from the
    # block's first voxel before deformation (template mm).
    stray = (
        float(np.sqrt(np.sum(anatomy.displacement_mm**2, axis=0)).max())
        + partial_volume_mm / anatomy.mean_scale
        + float(np.linalg.norm(slice_step)) / 2
        + (block - 1) * float(np.linalg.norm(template_from_voxel[:3, 0]) + np.linalg.norm(template_from_voxel[:3, 1]))
    )
    air_beyond = anatomy.layer_outer_mm[-1] + stray

    # Slice-major while rendering, so that each slice is written contiguously.
    fractions = np.zeros((shape[2], len(TISSUES), *shape[:2]), dtype=np.float32)
    fractions[:, TISSUES.index("air")] = 1.0
    brain = np.zeros((shape[2], *shape[:2]), dtype=np.float32)
    for k in range(shape[2]):
        centre = plane + (slice_step * k + template_from_voxel[:3, 3])[:, None, None]
        coarse = centre[:, ::block, ::block]
        undeformed_distance = ndimage.map_coordinates(
            model.brain_distance_mm,
            _affine_apply(model.distance_vox_from_mm, coarse.reshape(3, -1)),
            order=1,
            mode="nearest",
        ).reshape(coarse.shape[1:])
        near = _expand_blocks(undeformed_distance < air_beyond, block, shape[:2])
        if not near.any():
            continue
        deep_in_brain = _expand_blocks(undeformed_distance < -stray, block, shape[:2])[near]
        points = centre[:, near]
        displacement_vox = _affine_apply(anatomy.displacement_vox_from_mm, points)
        points = points + np.stack(
            [ndimage.map_coordinates(c, displacement_vox, order=1, mode="nearest") for c in anatomy.displacement_mm]
        )
        fractions[k][:, near], brain[k][near] = _tissue_fractions(
            model, anatomy, points, deep_in_brain, slice_step, offsets, partial_volume_mm
        )
    return RenderedHead(
        fractions=np.ascontiguousarray(fractions.transpose(1, 2, 3, 0)),
        brain=np.ascontiguousarray(brain.transpose(1, 2, 0)),
    )


def ct_grid(params: PhantomParams) -> tuple[tuple[int, int, int], np.ndarray]:
    """Axial CT grid as (columns, rows, slices) with its RAS affine, centred on the scanner isocentre.

    Columns run to the patient's left and rows to posterior (DICOM's LPS with orientation
    [1,0,0,0,1,0]); slices run inferior to superior.
    """
    shape = (params.ct_matrix, params.ct_matrix, params.ct_n_slices)
    spacing = np.array([params.ct_pixel_mm, params.ct_pixel_mm, params.ct_slice_mm])
    affine = np.diag([-spacing[0], -spacing[1], spacing[2], 1.0])
    affine[:3, 3] = -affine[:3, :3] @ ((np.array(shape) - 1) / 2)
    return shape, affine


def mr_grid(params: PhantomParams) -> tuple[tuple[int, int, int], np.ndarray]:
    """MR grid with IXI-like voxels in the ``mr_axcodes`` orientation, centred on the isocentre."""
    shape = tuple(max(1, int(round(n / params.mr_voxel_scale))) for n in params.mr_matrix)
    spacing = np.array(params.mr_voxel_mm) * params.mr_voxel_scale
    orientation = nib.orientations.axcodes2ornt(tuple(params.mr_axcodes))
    affine = np.eye(4)
    affine[:3, :3] = 0.0
    for voxel_axis, (world_axis, flip) in enumerate(orientation):
        affine[int(world_axis), voxel_axis] = flip * spacing[voxel_axis]
    affine[:3, 3] = -affine[:3, :3] @ ((np.array(shape) - 1) / 2)
    return shape, affine


def headholder_fraction(head: np.ndarray, affine: np.ndarray, params: PhantomParams) -> np.ndarray:
    """Share of each in-plane pixel covered by the curved head-holder plate (same on every slice).

    The plate is a cylinder shell along the scanner's z axis, fixed in the scanner, placed behind
    the head so that its inner surface clears the scalp by ``holder_gap_mm``.
    """
    shape = head.shape[:2]
    i, j = np.meshgrid(np.arange(shape[0]), np.arange(shape[1]), indexing="ij")
    x = affine[0, 0] * i + affine[0, 1] * j + affine[0, 3]
    y = affine[1, 0] * i + affine[1, 1] * j + affine[1, 3]
    head_2d = (head > 0).any(axis=2)
    centre_x = float(x[head_2d].mean())
    clear_radius = params.holder_radius_mm - params.holder_gap_mm
    dx = x[head_2d] - centre_x
    reachable = np.abs(dx) < clear_radius
    # Highest arc centre that keeps every head pixel inside the cleared radius.
    centre_y = float(np.min(y[head_2d][reachable] + np.sqrt(clear_radius**2 - dx[reachable] ** 2)))
    radius = np.hypot(x - centre_x, y - centre_y)
    width = float(np.hypot(affine[0, 0], affine[1, 0]))
    radial = _fraction_beyond(radius, params.holder_radius_mm, width) - _fraction_beyond(
        radius, params.holder_radius_mm + params.holder_thickness_mm, width
    )
    from_posterior = np.abs(np.arctan2(x - centre_x, centre_y - y))
    angular = _fraction_beyond(np.deg2rad(params.holder_half_angle_deg) * radius, from_posterior * radius, width)
    return (radial * angular).astype(np.float32)


def bias_field(
    rng: np.random.Generator, shape: tuple[int, int, int], affine: np.ndarray, strength: float
) -> np.ndarray:
    """Smooth multiplicative receive-coil bias: exp(strength x random quadratic in [-1, 1])."""
    voxels = np.indices(shape, dtype=np.float32).reshape(3, -1)
    world = _affine_apply(affine, voxels)
    world /= np.abs(world).max(axis=1, keepdims=True)
    x, y, z = world
    terms = np.stack([x, y, z, x * x, y * y, z * z, x * y, y * z, x * z])
    smooth = rng.standard_normal(len(terms)) @ terms
    smooth /= np.abs(smooth).max()
    return np.exp(strength * smooth).reshape(shape).astype(np.float32)


def _uid(seed: int, *parts: str) -> str:
    return generate_uid(entropy_srcs=[UID_ROOT, str(seed), *parts])


def write_ct_series(
    series_dir: Path, hu: np.ndarray, affine: np.ndarray, subject_id: str, seed: int, params: PhantomParams
) -> None:
    """Write a (columns, rows, slices) HU volume as one CT Image Storage file per axial slice."""
    series_dir.mkdir(parents=True, exist_ok=True)
    int16 = np.iinfo(np.int16)
    stored = np.clip(np.round(hu) - CT_ENCODING.rescale_intercept, int16.min, int16.max).astype(np.int16)
    lps_from_ras = np.diag([-1.0, -1.0, 1.0])
    row_direction = lps_from_ras @ affine[:3, 0] / np.linalg.norm(affine[:3, 0])
    column_direction = lps_from_ras @ affine[:3, 1] / np.linalg.norm(affine[:3, 1])
    study_uid = _uid(seed, subject_id, "study")
    series_uid = _uid(seed, subject_id, "series")
    frame_uid = _uid(seed, subject_id, "frame-of-reference")
    for k in range(stored.shape[2]):
        position = lps_from_ras @ _affine_apply(affine, np.array([[0.0], [0.0], [k]]))[:, 0]
        ds = ct_slice_dataset(
            stored[:, :, k].T, CT_ENCODING, sop_uid=_uid(seed, subject_id, "slice", str(k)), study_uid=study_uid,
            series_uid=series_uid, patient_id=subject_id, position_lps=position,
            orientation=(*row_direction, *column_direction),
            pixel_spacing=(np.linalg.norm(affine[:3, 1]), np.linalg.norm(affine[:3, 0])),
            slice_mm=params.ct_slice_mm, window=(CT_WINDOW_CENTER_HU, CT_WINDOW_WIDTH_HU),
        )  # fmt: skip
        ds.FrameOfReferenceUID = frame_uid
        ds.PatientName = subject_id
        ds.PatientIdentityRemoved = "YES"  # synthetic: the id is the only "identity" there is
        ds.DeidentificationMethod = "synthetic phantom; no patient, dates, institution or staff"
        ds.Manufacturer = "medgan head phantom"
        ds.StudyDescription = "Head phantom"
        ds.SeriesDescription = CT_SERIES_FOLDER.name
        ds.BodyPartExamined = "HEAD"
        ds.PatientPosition = "HFS"
        ds.SeriesNumber = 1
        ds.InstanceNumber = k + 1
        ds.SliceLocation = ds_value(position[2])
        ds.RescaleType = "HU"
        ds.save_as(series_dir / f"CT{k:06d}.dcm", enforce_file_format=True)


def _save_nifti(path: Path, data: np.ndarray, affine: np.ndarray) -> None:
    image = nib.Nifti1Image(data, affine)
    image.header.set_xyzt_units("mm")
    image.set_qform(affine, code=1)
    image.set_sform(affine, code=1)
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(image, path)


@dataclass(frozen=True)
class SimulatedSubject:
    """One subject on its raw grid: the acquired image, the noise-free partner and the tissues."""

    modality: str
    image: np.ndarray
    partner: np.ndarray
    affine: np.ndarray
    head: RenderedHead


def subject_rngs(seed: int, modality: str, index: int) -> tuple[np.random.Generator, np.random.Generator]:
    """Independent generators for a subject's anatomy and for its acquisition noise."""
    return random_streams(2, seed, MODALITY_SEED_CODE[modality], index)


def simulate_subject(modality: str, index: int, seed: int, params: PhantomParams) -> SimulatedSubject:
    """Render subject ``index`` of a ``modality`` dataset: CT in HU (float), MR as int16 magnitude.

    The partner is the same anatomy in the other modality on the same grid, without noise,
    bias field or head holder (HU for an MR subject, T2 signal for a CT subject).
    """
    model = load_tissue_model(params.template_resolution_mm)
    anatomy_rng, acquisition = subject_rngs(seed, modality, index)
    anatomy = draw_anatomy(anatomy_rng, model, params)
    if modality == "CT":
        shape, affine = ct_grid(params)
        head = render_head(model, anatomy, shape, affine, params.ct_slice_subsamples, params.ct_pixel_mm)
        holder = headholder_fraction(head.head, affine, params)[:, :, None] * head.fractions[TISSUES.index("air")]
        image = head.mix(TISSUE_HU) + holder * (params.holder_hu - TISSUE_HU["air"])
        image += acquisition.normal(0.0, params.ct_noise_hu, size=shape).astype(np.float32)
        partner = head.mix(TISSUE_T2) * params.mr_signal_max
    else:
        shape, affine = mr_grid(params)
        voxel_mm = float(np.cbrt(abs(np.linalg.det(affine[:3, :3]))))
        head = render_head(model, anatomy, shape, affine, 1, voxel_mm)
        signal = head.mix(TISSUE_T2) * params.mr_signal_max
        signal *= bias_field(acquisition, shape, affine, params.mr_bias_strength)
        sigma = params.mr_noise * params.mr_signal_max
        real = signal + acquisition.normal(0.0, sigma, size=shape)
        imaginary = acquisition.normal(0.0, sigma, size=shape)
        image = np.clip(np.round(np.hypot(real, imaginary)), 0, np.iinfo(np.int16).max).astype(np.int16)
        partner = head.mix(TISSUE_HU)
    return SimulatedSubject(modality, image, partner.astype(np.float32), affine, head)


def _write_subject(
    root: Path, subject: SimulatedSubject, subject_id: str, paired: bool, seed: int, params: PhantomParams
) -> dict[str, str]:
    """Write one subject (and its partner when paired) under ``root``; return its manifest row."""
    if subject.modality == "CT":
        write_ct_series(root / subject_id / CT_SERIES_FOLDER, subject.image, subject.affine, subject_id, seed, params)
        image_path = subject_id
    else:
        image_path = (MR_FOLDER / f"{subject_id}-T2.nii.gz").as_posix()
        _save_nifti(root / image_path, subject.image, subject.affine)
    for kind, fraction in (("brain", subject.head.brain), ("head", subject.head.head)):
        _save_nifti(root / "truth" / f"{subject_id}_{kind}.nii.gz", (fraction > 0.5).astype(np.uint8), subject.affine)
    partner_path = f"partners/{subject_id}.nii.gz" if paired else ""
    if paired:
        _save_nifti(root / partner_path, subject.partner, subject.affine)
    return {
        "subject_id": subject_id,
        "modality": subject.modality,
        "path": image_path,
        "partner_path": partner_path,
        "partner_modality": PARTNER_MODALITY[subject.modality] if paired else "",
    }


def write_phantom_dataset(
    out_dir: str | Path, modality: str, n_subjects: int, n_paired: int, seed: int, **knobs: object
) -> pd.DataFrame:
    """Generate a phantom dataset folder (CQ500-like CT or IXI-like T2) and return its manifest.

    The last ``n_paired`` subjects are the held-out test subjects that also get a partner in the
    other modality. ``knobs`` are the fields of :class:`PhantomParams` (see there for defaults).
    The folder is built aside and swapped into place, so a killed run leaves nothing complete.
    """
    if modality not in MODALITIES:
        raise ConfigError(f"phantom modality: must be one of {MODALITIES}, got {modality!r}")
    if n_subjects < 1 or not 0 <= n_paired <= n_subjects:
        raise ConfigError(
            f"phantom subjects: need n_subjects >= 1 and 0 <= n_paired <= n_subjects, got {n_subjects}, {n_paired}"
        )
    check_seed(seed)
    params = params_from_knobs(PhantomParams, knobs)
    rows = []
    with atomic_dir(out_dir) as tmp:
        for index in progress(range(1, n_subjects + 1), f"{modality} phantoms", unit="subject"):
            started = time.perf_counter()
            subject_id = f"{SUBJECT_PREFIX[modality]}{index:03d}"
            paired = index > n_subjects - n_paired
            subject = simulate_subject(modality, index, seed, params)
            rows.append(_write_subject(tmp, subject, subject_id, paired, seed, params))
            LOG.info("%s: %.2f s", subject_id, time.perf_counter() - started)
        manifest = pd.DataFrame(rows, columns=MANIFEST_COLUMNS)
        manifest.to_csv(tmp / "subjects.tsv", sep="\t", index=False)
    return manifest


def main(argv: list[str] | None = None) -> None:
    parser = knob_parser(__doc__, PhantomParams)
    parser.add_argument("--modality", choices=MODALITIES, required=True)
    parser.add_argument("--n-subjects", type=int, required=True)
    parser.add_argument(
        "--n-paired", type=int, default=0, help="Held-out subjects that get a partner (default: %(default)s)."
    )
    out, seed, knobs = parse_cli(parser, argv)
    modality, n_subjects, n_paired = (knobs.pop(name) for name in ("modality", "n_subjects", "n_paired"))
    write_phantom_dataset(out, modality, n_subjects, n_paired, seed, **knobs)


if __name__ == "__main__":
    main()
