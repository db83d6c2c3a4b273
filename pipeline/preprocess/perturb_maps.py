"""New anatomy from an existing thorax label map (report 003's "perturbing the boundaries").

A perturbation is (1) a smooth random elastic deformation of the whole map (a Gaussian-smoothed
random displacement field, peak ``elastic_displacement`` x side, applied by nearest neighbour so
only the six classes exist afterwards), then (2) per organ in ``organs`` a dilation into or an
erosion back to body soft tissue by a radius drawn in +- ``organ_offset`` x side (eroded pixels
take the class of the nearest pixel outside the organ; dilation only takes body soft tissue, so
organs never eat each other).

It must never delete an organ or tear it apart. After each step every class of the input is
checked: it keeps at least ``min_organ_share`` of its pixels and has exactly as many connected
components (8-connectivity) as before (a rib does not vanish, a lung does not split, two ribs do
not merge). A failed elastic deformation is redrawn at ``retry_shrink`` x the strength; after
``max_tries`` the input's boundaries are kept, with ``fallback=True`` in the result and a warning
(no silent failure; a result identical to the input is flagged the same way). A dilation / erosion that fails is retried with the radius shrunk towards 0
(the radius applied is recorded per organ): thin structures such as ribs at 64 px (1-2 px wide)
would otherwise vanish. Every knob is in params.yaml ``map_perturbation``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from pipeline.errors import ConfigError
from pipeline.preprocess.thorax_labels import CLASS_NAMES, N_CLASSES

_log = logging.getLogger(__name__)

BODY = CLASS_NAMES.index("body")
EIGHT_CONNECTED = np.ones((3, 3), bool)
#: How many sigmas the displacement field's Gaussian kernel reaches (scipy's truncate).
FIELD_TRUNCATE = 3.0


@dataclass(frozen=True)
class PerturbKnobs:
    """params.yaml map_perturbation (documented in the schema)."""

    elastic_displacement: float = 0.03
    elastic_smoothness: float = 0.1
    organ_offset: float = 0.015
    organs: tuple[str, ...] = ("lungs", "heart_vessels", "bone", "spinal_canal")
    min_organ_share: float = 0.5
    max_tries: int = 12
    retry_shrink: float = 0.85

    def __post_init__(self) -> None:
        object.__setattr__(self, "organs", tuple(self.organs))
        unknown = [o for o in self.organs if o not in CLASS_NAMES or o in ("background", "body")]
        if unknown:
            raise ConfigError(f"map_perturbation.organs: {unknown} are not organ classes of {CLASS_NAMES[2:]}")
        if not (0 <= self.elastic_displacement <= 0.5 and self.elastic_smoothness > 0 and 0 <= self.organ_offset <= 0.5):
            raise ConfigError("map_perturbation: elastic_displacement and organ_offset in [0, 0.5], elastic_smoothness > 0")
        if not (0 <= self.min_organ_share <= 1 and self.max_tries >= 1 and 0 < self.retry_shrink <= 1):
            raise ConfigError("map_perturbation: min_organ_share in [0, 1], max_tries >= 1, retry_shrink in (0, 1]")


@dataclass
class Perturbation:
    """A perturbed map and how it was obtained."""

    label_map: np.ndarray
    strength: float  # elastic strength used: 1 = the knobs as given; 0 = no elastic deformation (fallback)
    tries: int  # elastic attempts
    fallback: bool  # True: every elastic attempt failed its check, or the result equals the input
    offsets_px: dict[str, int] = field(default_factory=dict)  # organ -> dilation (+) / erosion (-) applied


def _elastic(label_map: np.ndarray, rng: np.random.Generator, displacement_px: float, sigma_px: float) -> np.ndarray:
    """Warp by a smooth random field scaled to a peak of ``displacement_px``; nearest neighbour."""
    if displacement_px <= 0:
        return label_map.copy()
    shape = label_map.shape
    fields = []
    for _ in range(2):
        f = ndimage.gaussian_filter(rng.standard_normal(shape), sigma_px, mode="reflect", truncate=FIELD_TRUNCATE)
        fields.append(f)
    peak = max(float(np.sqrt(fields[0] ** 2 + fields[1] ** 2).max()), 1e-12)
    rows, columns = np.meshgrid(np.arange(shape[0]), np.arange(shape[1]), indexing="ij")
    coords = [rows + fields[0] * displacement_px / peak, columns + fields[1] * displacement_px / peak]
    return ndimage.map_coordinates(label_map, coords, order=0, mode="nearest").astype(label_map.dtype)


def _resize_organ(label_map: np.ndarray, organ: int, radius: int) -> np.ndarray:
    """Dilate ``organ`` into body soft tissue (radius > 0) or erode it (radius < 0): eroded pixels
    take the class of the nearest pixel outside the organ."""
    mask = label_map == organ
    if radius == 0 or not mask.any():
        return label_map
    out = label_map.copy()
    if radius > 0:
        grown = ndimage.distance_transform_edt(~mask) <= radius
        out[grown & (label_map == BODY)] = organ
        return out
    inside_depth, (near_r, near_c) = ndimage.distance_transform_edt(mask, return_indices=True)
    shaved = mask & (inside_depth <= -radius)
    out[shaved] = label_map[near_r[shaved], near_c[shaved]]
    return out


def _components(label_map: np.ndarray, cls: int) -> int:
    return int(ndimage.label(label_map == cls, structure=EIGHT_CONNECTED)[1])


def check_perturbed(original: np.ndarray, perturbed: np.ndarray, min_share: float) -> list[str]:
    """What is wrong with ``perturbed`` (empty: every class kept whole), class by class."""
    problems = []
    for cls in range(N_CLASSES):
        before = int((original == cls).sum())
        if before == 0:
            continue
        after = int((perturbed == cls).sum())
        if after < min_share * before:
            problems.append(f"{CLASS_NAMES[cls]} kept {after} of {before} pixels")
            continue
        n_before, n_after = _components(original, cls), _components(perturbed, cls)
        if n_before != n_after:
            problems.append(f"{CLASS_NAMES[cls]} has {n_after} pieces, was {n_before}")
    return problems


def perturb_map_checked(label_map: np.ndarray, rng: np.random.Generator, **knobs: object) -> Perturbation:
    """Perturb a class map (H, W) uint8 0..5 with the checks and retries of the module docstring."""
    settings = PerturbKnobs(**knobs)  # type: ignore[arg-type]
    label_map = np.asarray(label_map)
    if label_map.ndim != 2 or label_map.dtype != np.uint8 or (label_map.size and label_map.max() >= N_CLASSES):
        raise ValueError(f"label_map must be (H, W) uint8 class indices 0..{N_CLASSES - 1}")
    side = min(label_map.shape)
    strength, tries = 1.0, 0
    out, problems = label_map.copy(), ["not tried"]
    while problems and tries < settings.max_tries:
        tries += 1
        out = _elastic(label_map, rng, strength * settings.elastic_displacement * side,
                       settings.elastic_smoothness * side)  # fmt: skip
        problems = check_perturbed(label_map, out, settings.min_organ_share)
        if problems:
            strength *= settings.retry_shrink
    fallbacks = []
    if problems:
        out, strength = label_map.copy(), 0.0
        fallbacks.append("elastic: " + "; ".join(problems))
    limit = int(round(settings.organ_offset * side))
    offsets = {}
    for organ in settings.organs:
        radius = int(rng.integers(-limit, limit + 1))
        while radius != 0:  # smaller radii towards 0 until the organ passes
            candidate = _resize_organ(out, CLASS_NAMES.index(organ), radius)
            if not check_perturbed(label_map, candidate, settings.min_organ_share):
                out = candidate
                break
            radius = int(radius * settings.retry_shrink) if settings.retry_shrink < 1 else 0
        offsets[organ] = radius
    if not fallbacks and np.array_equal(out, label_map):
        fallbacks.append("every step that passed the checks left the map as it was")
    if fallbacks:
        _log.warning("map perturbation: %s: the unperturbed boundaries are kept", "; ".join(fallbacks))
    return Perturbation(out, strength, tries, bool(fallbacks), offsets)


def perturb_map(label_map: np.ndarray, rng: np.random.Generator, **knobs: object) -> np.ndarray:
    """The perturbed map only (iface contract); use perturb_map_checked to record fallbacks."""
    return perturb_map_checked(label_map, rng, **knobs).label_map
