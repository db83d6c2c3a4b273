"""Built-in paediatric chest radiographs: a procedural stand-in for Kermany et al. 2018.

No chest X-ray can be downloaded on an offline machine, so this draws frontal (PA, radiological
display: the patient's left on the image's right) radiographs from a parametric thorax: soft
tissue and arms, lungs, heart and mediastinum (with the trachea and, in infants, the thymus),
spine, posterior and anterior rib arcs, clavicles, humeral heads, diaphragm domes and the gastric
bubble, breast shadows in older girls. The PNEUMONIA class adds lobar consolidation (bacterial,
mostly) or patchy bronchopneumonia (viral, mostly, often bilateral with perihilar haze) and
sometimes a blunted costophrenic angle. The two classes also differ the way report 000 says the
real set does, so a translator has the same shortcuts to learn: support devices (ECG electrodes
and leads, tubes, lines) are more frequent in PNEUMONIA, and PNEUMONIA children are younger
(barrel chest, horizontal ribs, larger heart, thymus, unossified humeral heads, smaller chest in
the frame). Every image then gets its own pose, exposure, blur and noise.

Written in Kermany's archive layout, ``chest_xray/{train,test}/{NORMAL,PNEUMONIA}/<name>.jpeg``
with Kermany's names (``IM-0115-0001.jpeg`` for normal patient IM-0115, ``person12_bacteria_45.jpeg``
for pneumonia patient person12), 8-bit grayscale JPEG; patients (1 to ``max_images_per_patient``
films each) never straddle train and test. Phantom-only truth sits beside it: ``truth/<name>_lungs.png``
(lung fields, heart and mediastinum excluded, on the image grid) and ``truth/findings.tsv``.
As a raw dataset (the download stage) it is laid out exactly like the real Kermany download.

    python -m pipeline.sources.phantom_cxr --out /tmp/cxr --seed 1 --n-normal 10 [--layout kermany]
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from pipeline.atomic import atomic_dir
from pipeline.sources.kermany import find_class_images
from pipeline.sources.phantom_toolkit import (
    bone_band,
    check_seed,
    ellipse_r2,
    knob_parser,
    knobs_from_schema,
    params_from_knobs,
    parse_cli,
    rescaled_to_unit,
    save_jpeg,
    save_png,
    smooth_noise,
    soft_inside,
)
from pipeline.sources.real_datasets import build_image_folders, scratch_folder, unique_entries, write_table

LOG = logging.getLogger(__name__)

LABELS = ("NORMAL", "PNEUMONIA")
#: Chance of each kind of device on a film that has devices (at least one is drawn).
DEVICE_KINDS = {"ecg": 0.8, "ng_tube": 0.5, "central_line": 0.4}
#: The heart: an ellipse with these semi-axes (chest units, times Patient.heart_size), tilted
#: by HEART_TILT_RAD (apex down and to the patient's left).
HEART_SEMI_AXES = (0.36, 0.26)
HEART_TILT_RAD = -0.4
#: The inner rib margin lies this far (chest units) inside Patient.chest_half_width.
RIB_MARGIN = 0.06
FINDINGS_COLUMNS = (
    "image",
    "split",
    "label",
    "patient",
    "age_years",
    "pattern",
    "effusion",
    "devices",
    "lung_opacity",
)


@knobs_from_schema("phantom_cxr")
class CxrPhantomParams:
    """Every knob of the chest radiograph phantom: params.yaml's phantom_cxr, documented (with
    ranges and defaults) in the schema."""


@dataclass(frozen=True)
class Patient:
    """What stays the same across one patient's films: age, body habitus, disease."""

    label: str
    name: str
    age_years: float
    maturity: float  # 0 at the youngest age, 1 at the oldest
    chest_half_width: float
    chest_height: float
    heart_size: float
    breast_shadows: bool
    infection: str  # "", "bacteria" or "virus"
    pattern: str  # "", "lobar" or "patchy"


@dataclass
class Radiograph:
    """One rendered film: image in [0, 1], lung-field mask and what was drawn.

    ``heart`` (the cardiac silhouette) and ``thorax`` (inside the inner rib margins, from the
    apices to the domes, mediastinum included) are the truth masks a cardiothoracic ratio is
    measured on (pipeline/preprocess/ctr.py); drawing them takes no random numbers, so the
    films are the same with or without them.
    """

    image: np.ndarray
    lungs: np.ndarray
    effusion: bool
    devices: tuple[str, ...]
    heart: np.ndarray | None = None
    thorax: np.ndarray | None = None


def draw_patient(rng: np.random.Generator, label: str, name: str, params: CxrPhantomParams) -> Patient:
    """Age from the class's log-normal, body habitus from age, disease for PNEUMONIA."""
    median = params.age_median_pneumonia_years if label == "PNEUMONIA" else params.age_median_normal_years
    low, high = params.age_range_years
    age = float(np.clip(median * math.exp(params.age_log_sigma * rng.standard_normal()), low, high))
    maturity = math.log(age / low) / math.log(high / low) if high > low else 1.0
    infection = pattern = ""
    if label == "PNEUMONIA":
        infection = "bacteria" if rng.random() < params.bacterial_fraction else "virus"
        lobar = params.lobar_given_bacterial if infection == "bacteria" else params.lobar_given_viral
        pattern = "lobar" if rng.random() < lobar else "patchy"
    return Patient(
        label=label,
        name=name,
        age_years=round(age, 2),
        maturity=maturity,
        # infants: a barrel chest (wide for its height) and a large heart (cardiothoracic ratio ~0.6)
        chest_half_width=0.78 * (1 + 0.04 * rng.standard_normal()),
        chest_height=(0.82 + 0.2 * maturity) * (1 + 0.04 * rng.standard_normal()),
        heart_size=(1.18 - 0.25 * maturity) * (1 + 0.06 * rng.standard_normal()),
        breast_shadows=age >= params.breast_shadow_min_age_years
        and rng.random() < params.breast_shadow_probability,
        infection=infection,
        pattern=pattern,
    )


def heart_width(heart_size: float) -> float:
    """Horizontal extent of the tilted heart ellipse (chest units): 2 sqrt(a^2 cos^2 + b^2 sin^2)."""
    a, b = HEART_SEMI_AXES
    c, s = math.cos(HEART_TILT_RAD), math.sin(HEART_TILT_RAD)
    return 2 * heart_size * math.sqrt((a * c) ** 2 + (b * s) ** 2)


def thoracic_width(chest_half_width: float) -> float:
    """Widest distance between the inner rib margins (chest units), reached at the domes."""
    return 2 * (chest_half_width - RIB_MARGIN)


def cardiothoracic_ratio(heart_size: float, chest_half_width: float) -> float:
    """The CTR the renderer draws for these proportions (pose scales both widths alike)."""
    return heart_width(heart_size) / thoracic_width(chest_half_width)


def heart_size_for_ratio(ratio: float, chest_half_width: float) -> float:
    """The Patient.heart_size that draws cardiothoracic ratio ``ratio`` in this chest."""
    return ratio * thoracic_width(chest_half_width) / heart_width(1.0)


# ---------------------------------------------------------------- rendering helpers


def _polyline(shape: tuple[int, int], rows: np.ndarray, cols: np.ndarray, width_px: float) -> np.ndarray:
    """A thin line through the points (rows, cols), drawn densely then blurred to ``width_px``."""
    canvas = np.zeros(shape, np.float32)
    steps = np.hypot(np.diff(rows), np.diff(cols))
    n = max(2, int(steps.sum() * 2))
    t = np.linspace(0, len(rows) - 1, n)
    r = np.interp(t, np.arange(len(rows)), rows).round().astype(int)
    c = np.interp(t, np.arange(len(cols)), cols).round().astype(int)
    keep = (r >= 0) & (r < shape[0]) & (c >= 0) & (c < shape[1])
    canvas[r[keep], c[keep]] = 1.0
    line = ndimage.gaussian_filter(canvas, width_px / 2)
    peak = line.max()
    return line / peak if peak > 0 else line


# ---------------------------------------------------------------- the film


def render_radiograph(patient: Patient, rng: np.random.Generator, params: CxrPhantomParams) -> Radiograph:
    """One frontal film of ``patient`` with its own pose, findings, devices and exposure."""
    aspect = rng.uniform(*params.aspect_range)
    short = params.short_side
    height, width = (short, round(short * aspect)) if aspect >= 1 else (round(short / aspect), short)
    shape = (height, width)
    px = 2.0 / short  # one pixel in chest units (the short side spans [-1, 1] before scaling)

    # pose: chest frame (x to the image right = patient's left, y down) -> image
    scale = (0.62 + 0.2 * patient.maturity) * (1 + params.scale_jitter * rng.uniform(-1, 1))
    angle = math.radians(params.rotation_deg * rng.uniform(-1, 1))
    shift = params.translation * 2 * rng.uniform(-1, 1, size=2)
    rows, cols = np.mgrid[0:height, 0:width].astype(np.float32)
    u = (cols - (width - 1) / 2) / (short / 2) - shift[0]
    v = (rows - (height - 1) / 2) / (short / 2) - shift[1] + 0.08
    c, s = math.cos(angle), math.sin(angle)
    x = (c * u + s * v) / scale
    y = (-s * u + c * v) / scale
    ramp = 2 * px / scale  # anti-aliasing width in chest units

    wt, ht = patient.chest_half_width, patient.chest_height
    y_apex, y_cp = -0.95 * ht, 0.62 * ht
    ax_ = np.abs(x)

    # soft tissue: torso cylinder, neck, arms, abdomen
    body_w = wt + 0.12
    shoulder_line = y_apex - 0.3 + 0.25 * (ax_ / body_w) ** 2
    torso = np.sqrt(np.clip(1 - (x / body_w) ** 2, 0, None)) * soft_inside(y - shoulder_line, 0.08)
    neck = np.sqrt(np.clip(1 - (x / 0.28) ** 2, 0, None))
    arm_x = wt + 0.3
    arms = np.sqrt(np.clip(1 - ((ax_ - arm_x) / 0.15) ** 2, 0, None)) * soft_inside(y - (y_apex - 0.05), 0.1)
    soft = 0.42 * np.maximum(np.maximum(torso, 0.8 * neck), 0.7 * arms)
    if patient.breast_shadows:
        for side in (-1, 1):
            r2 = ellipse_r2(x, y, side * 0.42, 0.45 * ht, 0.3, 0.24)
            soft = soft + 0.07 * np.sqrt(np.clip(1 - r2, 0, None))

    # diaphragm domes (the right, on the image left, sits higher) and the abdomen below them
    dome_peak = 0.2 + 0.04 * rng.standard_normal()
    dome_y = (
        y_cp
        - dome_peak * np.clip(1 - ((ax_ - 0.4 * wt) / (0.6 * wt)) ** 2, 0, 1)
        - np.where(x < 0, 0.05, 0.0)
    )
    below_dome = soft_inside(y - dome_y, ramp)
    abdomen = 0.22 * below_dome * np.sqrt(np.clip(1 - (x / body_w) ** 2, 0, None))

    # mediastinum (+ thymus in infants), heart
    thymus = 0.14 * (1 - patient.maturity) ** 1.5
    med_half = 0.1 + thymus * np.exp(-(((y + 0.45 * ht) / 0.22) ** 2))
    mediastinum = soft_inside(med_half - ax_, ramp) * soft_inside(y - (y_apex - 0.3), ramp)
    heart_ax, heart_ay = HEART_SEMI_AXES[0] * patient.heart_size, HEART_SEMI_AXES[1] * patient.heart_size
    heart_r2 = ellipse_r2(
        x, y, 0.1 + 0.2 * (patient.heart_size - 1), 0.36 * ht, heart_ax, heart_ay, HEART_TILT_RAD
    )
    heart = np.clip(1 - heart_r2, 0, None) ** 0.25
    heart_mask = soft_inside(1 - heart_r2, ramp / heart_ay)

    # lungs: between mediastinum and rib cage, from the apex down to the domes
    t = np.clip((y - y_apex) / (y_cp - y_apex), 0, 1)
    lateral = 0.12 + (wt - RIB_MARGIN - 0.12) * (1 - (1 - t) ** 2) ** 0.6
    lung_region = (
        soft_inside(lateral - ax_, ramp)
        * soft_inside(ax_ - med_half, ramp)
        * soft_inside(y - y_apex, ramp)
        * soft_inside(dome_y - y, ramp)
    )
    thorax_region = soft_inside(lateral - ax_, ramp) * soft_inside(y - y_apex, ramp) * soft_inside(dome_y - y, ramp)
    lungs = lung_region * (1 - heart_mask)
    air = ndimage.gaussian_filter(lungs, 0.04 / px * scale)  # thicker air column mid-lung

    # pneumonia: consolidation replaces air inside the lungs
    opacity = np.zeros(shape, np.float32)
    effusion = False
    if patient.label == "PNEUMONIA":
        density = rng.uniform(*params.consolidation_density)
        texture = 0.75 + 0.25 * rescaled_to_unit(smooth_noise(rng, shape, 0.02 / px))
        if patient.pattern == "lobar":
            opacity = density * texture * _lobe(rng, x, y, y_apex, y_cp, ramp)
        else:
            opacity = density * texture * _patches(rng, x, y, lungs, patient.infection, params, px, scale)
        for side in (-1, 1):
            if rng.random() < params.effusion_probability:
                effusion = True
                height_fluid = rng.uniform(0.12, 0.3) * ht
                # meniscus: fills the lateral costophrenic recess, rising along the chest wall
                meniscus = (y - (y_cp - height_fluid)) - 1.6 * (ax_ - (wt - 0.06)) ** 2 * 4
                opacity = np.maximum(opacity, soft_inside(meniscus, 0.03) * (side * x > 0.25 * wt))
    opacity = np.clip(opacity, 0, 1) * lung_region

    # bones: spine, ribs (posterior arcs from the spine, anterior arcs towards the sternum), clavicles, humeri
    bone = (
        0.05
        * np.clip(1 - (x / 0.075) ** 2, 0, None) ** 0.5
        * (0.75 + 0.25 * np.cos(2 * math.pi * y / (0.14 * ht)))
        * soft_inside(y - (y_apex - 0.3), ramp)
    )
    slope = 0.15 + 0.25 * patient.maturity  # infants' ribs run nearly horizontal
    n_ribs = 10
    gap = (y_cp - y_apex) / (n_ribs - 1.5)
    lat = np.clip((ax_ - 0.07) / (wt - 0.07), 0, 1)
    inside_cage = soft_inside(wt + 0.02 - ax_, ramp) * soft_inside(ax_ - 0.07, ramp)
    rib_half = 0.022 * (0.8 + 0.4 * patient.maturity)
    for k in range(n_ribs):
        y0 = y_apex - 0.04 + k * gap
        posterior = y0 - 0.05 * lat + (slope + 0.1) * lat**2.5
        bone = bone + 0.11 * bone_band(y, posterior, rib_half) * inside_cage
        anterior = posterior + 0.05 + slope * 1.3 * (1 - lat) * soft_inside(lat - 0.25, 0.02)
        bone = bone + 0.06 * bone_band(y, anterior, rib_half * 0.9) * inside_cage * soft_inside(lat - 0.3, 0.05)
    clav_s = np.clip((ax_ - 0.1) / (0.55 * wt), 0, 1)
    clavicle = y_apex - 0.02 - 0.1 * clav_s + 0.025 * np.sin(2 * math.pi * clav_s)
    bone = bone + 0.16 * bone_band(y, clavicle, 0.035) * soft_inside(ax_ - 0.1, ramp) * soft_inside(
        0.1 + 0.55 * wt - ax_, ramp
    )
    head_r = 0.04 + 0.09 * patient.maturity  # humeral heads ossify with age
    for side in (-1, 1):
        r2 = ellipse_r2(x, y, side * (wt + 0.2), y_apex - 0.08, head_r, head_r)
        shaft = np.clip(1 - ((x - side * (wt + 0.24)) / 0.05) ** 2, 0, None) ** 0.5 * soft_inside(
            y - (y_apex - 0.08), ramp
        )
        bone = bone + 0.18 * np.maximum(np.sqrt(np.clip(1 - r2, 0, None)), shaft)

    # gastric bubble under the left dome (image right)
    bubble = np.sqrt(np.clip(1 - ellipse_r2(x, y, 0.35 * wt, y_cp + 0.1, 0.13, 0.07), 0, None))

    attenuation = (
        soft
        + abdomen
        + 0.12 * mediastinum * (1 - below_dome)
        + 0.22 * heart
        - 0.32 * air * (1 - opacity)
        - 0.1 * bubble * below_dome
        + bone
    )
    # trachea and main bronchi: air in the upper mediastinum
    trachea_x = np.where(y < -0.35 * ht, 0.0, np.sign(x) * (y + 0.35 * ht) * 0.8)
    trachea = (
        soft_inside(0.035 - np.abs(x - trachea_x), ramp)
        * soft_inside(y - (y_apex - 0.35), ramp)
        * soft_inside(-0.15 * ht - y, ramp)
    )
    attenuation = attenuation - 0.2 * trachea * mediastinum

    devices: list[str] = []
    device_p = (
        params.device_probability_pneumonia
        if patient.label == "PNEUMONIA"
        else params.device_probability_normal
    )
    metal = np.zeros(shape, np.float32)
    if rng.random() < device_p:
        metal, devices = _devices(rng, shape, x, y, wt, y_apex, y_cp, px, scale)

    image = develop_film(attenuation, rng, params, metal)
    return Radiograph(
        image=image,
        lungs=lungs > 0.5,
        effusion=effusion,
        devices=tuple(devices),
        heart=heart_mask > 0.5,
        thorax=thorax_region > 0.5,
    )


def develop_film(
    attenuation: np.ndarray, rng: np.random.Generator, exposure: Any, metal: np.ndarray | None = None
) -> np.ndarray:
    """A [0, 1] film from an attenuation map: film response (1 - exp(-k A) compresses dense parts
    as a film's shoulder does), exposure (contrast, brightness, gamma), radio-opaque metal on top,
    detector blur and quantum noise. ``exposure`` holds the exposure knobs (exposure_jitter,
    gamma_range, blur_px, noise_sigma), as both radiograph phantoms name them."""
    film = 1 - np.exp(-2.2 * np.clip(attenuation, 0, None))
    contrast = 1.05 * (1 + exposure.exposure_jitter * rng.uniform(-1, 1))
    offset = exposure.exposure_jitter * 0.3 * rng.uniform(-1, 1)
    image = np.clip(offset + contrast * film, 0, 1) ** rng.uniform(*exposure.gamma_range)
    if metal is not None:
        image = np.maximum(image, 0.95 * metal)
    image = ndimage.gaussian_filter(image, exposure.blur_px)
    image = image + exposure.noise_sigma * rng.standard_normal(image.shape).astype(np.float32)
    return np.clip(image, 0, 1).astype(np.float32)


def _lobe(rng: np.random.Generator, x, y, y_apex: float, y_cp: float, ramp: float) -> np.ndarray:
    """One lobe's consolidation: sharp at its fissure, fading towards the hilum."""
    lobe = rng.choice(["right_upper", "right_lower", "left_lower", "lingula"])
    side = -1 if lobe.startswith("right") else 1
    on_side = soft_inside(side * x - 0.05, ramp)
    fissure = y_apex + (0.45 + 0.08 * rng.standard_normal()) * (y_cp - y_apex)
    if lobe == "right_upper":  # the horizontal fissure bounds it below
        region = soft_inside(fissure - y, ramp)
    elif lobe == "lingula":
        region = soft_inside(y - fissure, ramp) * soft_inside(0.8 * (y_cp - y_apex) + y_apex - y, 0.15)
    else:  # lower lobes: oblique fissure, highest laterally-posteriorly
        region = soft_inside(y - (fissure + 0.15 - 0.25 * np.abs(x)), 0.05)
    return on_side * region


def _patches(
    rng: np.random.Generator,
    x,
    y,
    lungs: np.ndarray,
    infection: str,
    params: CxrPhantomParams,
    px: float,
    scale: float,
) -> np.ndarray:
    """Bronchopneumonia: acinar patches clustered in one or both lungs, viral with perihilar haze."""
    candidates = np.flatnonzero(lungs.ravel() > 0.5)
    patches = np.zeros(lungs.shape, np.float32)
    if candidates.size == 0:
        return patches
    bilateral = infection == "virus" or rng.random() < 0.3
    favoured_side = rng.choice([-1, 1])
    xs, ys = x.ravel()[candidates], y.ravel()[candidates]
    weights = np.where(bilateral | (np.sign(xs) == favoured_side), 1.0, 0.05) * (1 + np.clip(ys, 0, None))
    low, high = params.patchy_blobs
    picks = rng.choice(candidates, size=int(rng.integers(low, high + 1)), p=weights / weights.sum())
    canvas = np.zeros(lungs.shape, np.float32)
    canvas.ravel()[picks] = rng.uniform(0.5, 1.0, size=len(picks))
    patches = ndimage.gaussian_filter(canvas, rng.uniform(0.035, 0.07) / px * scale)
    patches = np.clip(patches / max(float(patches.max()), 1e-6) * 1.4, 0, 1)
    if infection == "virus":
        hilar = np.exp(-(ellipse_r2(x, y, 0.0, -0.05, 0.45, 0.35)))
        patches = np.maximum(patches, 0.5 * hilar)
    return patches


def _devices(
    rng: np.random.Generator, shape, x, y, wt: float, y_apex: float, y_cp: float, px: float, scale: float
) -> tuple[np.ndarray, list[str]]:
    """Radio-opaque support devices: ECG electrodes with leads, a nasogastric tube, a central line."""
    metal = np.zeros(shape, np.float32)
    kinds = []
    unit = scale / px  # pixels per chest unit
    # chest-frame -> pixel coordinates, from the x / y grids (linear: read off three pixels)
    origin = np.array([x[0, 0], y[0, 0]])
    per_col = np.array([x[0, 1] - x[0, 0], y[0, 1] - y[0, 0]])
    per_row = np.array([x[1, 0] - x[0, 0], y[1, 0] - y[0, 0]])
    to_pixels = np.linalg.inv(np.column_stack([per_row, per_col]))

    def pixel(points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        rc = to_pixels @ (points - origin[:, None])
        return rc[0], rc[1]

    if rng.random() < DEVICE_KINDS["ecg"]:
        kinds.append("ecg")
        for _ in range(int(rng.integers(2, 5))):
            centre = np.array([rng.uniform(-wt, wt), rng.uniform(y_apex, y_cp)])
            ring = ellipse_r2(x, y, centre[0], centre[1], 0.05, 0.05)
            metal = np.maximum(metal, soft_inside(1 - ring, 0.3) * (0.6 + 0.4 * soft_inside(0.35 - ring, 0.2)))
            end = centre + rng.normal(0, 1, 2) * 1.5
            bend = centre + rng.normal(0, 0.4, 2)
            t = np.linspace(0, 1, 60)
            curve = (1 - t) ** 2 * centre[:, None] + 2 * (1 - t) * t * bend[:, None] + t**2 * end[:, None]
            metal = np.maximum(metal, 0.8 * _polyline(shape, *pixel(curve), max(1.5, 0.008 * unit)))
    if rng.random() < DEVICE_KINDS["ng_tube"]:
        kinds.append("ng_tube")
        t = np.linspace(0, 1, 40)
        path = np.stack(
            [0.03 * np.sin(3 * t) + 0.3 * wt * t**3, y_apex - 0.5 + (y_cp + 0.2 - y_apex + 0.5) * t]
        )
        metal = np.maximum(metal, 0.7 * _polyline(shape, *pixel(path), max(1.5, 0.015 * unit)))
    if rng.random() < DEVICE_KINDS["central_line"] or not kinds:
        kinds.append("central_line")
        side = rng.choice([-1, 1])
        t = np.linspace(0, 1, 40)
        path = np.stack([side * (wt + 0.35) * (1 - t) ** 1.5 + 0.05 * side, (y_apex - 0.05) + 0.55 * t**2])
        metal = np.maximum(metal, 0.75 * _polyline(shape, *pixel(path), max(1.2, 0.01 * unit)))
    return metal, kinds


# ---------------------------------------------------------------- the dataset


def _patient_plan(rng: np.random.Generator, n_images: int, params: CxrPhantomParams) -> list[int]:
    """Films per patient (1 .. max_images_per_patient) adding up to exactly ``n_images``."""
    counts = []
    while sum(counts) < n_images:
        films = 1
        while films < params.max_images_per_patient and rng.random() < params.repeat_probability:
            films += 1
        counts.append(min(films, n_images - sum(counts)))
    return counts


def write_kermany_layout(folder: str | Path, seed: int, **knobs: Any) -> list[dict[str, Any]]:
    """Write ``chest_xray/{train,test}/{NORMAL,PNEUMONIA}/*.jpeg`` and ``truth/`` in ``folder``.

    ``knobs`` are fields of :class:`CxrPhantomParams`. The same seed and knobs give identical
    files. Returns one findings row per image.
    """
    params = params_from_knobs(CxrPhantomParams, knobs)
    check_seed(seed)
    folder = Path(folder)
    truth = folder / "truth"
    counts = {
        "NORMAL": params.n_normal,
        "PNEUMONIA": max(1, round(params.n_normal * params.pneumonia_per_normal)),
    }
    rows: list[dict[str, Any]] = []
    image_counter = 0
    for label_index, label in enumerate(LABELS):
        plan_rng = np.random.default_rng([seed, label_index])
        plan = _patient_plan(plan_rng, counts[label], params)
        for patient_index, n_films in enumerate(plan, start=1):
            rng = np.random.default_rng([seed, label_index, patient_index])
            name = f"IM-{patient_index:04d}" if label == "NORMAL" else f"person{patient_index}"
            patient = draw_patient(rng, label, name, params)
            split = "test" if rng.random() < params.test_folder_fraction else "train"
            for film in range(1, n_films + 1):
                image_counter += 1
                if label == "NORMAL":
                    stem = f"{name}-{film:04d}"
                else:
                    stem = f"{name}_{patient.infection}_{image_counter}"
                radiograph = render_radiograph(patient, rng, params)
                save_jpeg(radiograph.image, folder / "chest_xray" / split / label / f"{stem}.jpeg", params.jpeg_quality)
                save_png(radiograph.lungs.astype(np.uint8) * 255, truth / f"{stem}_lungs.png")
                rows.append(
                    {
                        "image": stem,
                        "split": split,
                        "label": label,
                        "patient": name,
                        "age_years": patient.age_years,
                        "pattern": patient.pattern,
                        "effusion": radiograph.effusion,
                        "devices": ",".join(radiograph.devices),
                        "lung_opacity": round(float(radiograph.image[radiograph.lungs].mean()), 4)
                        if radiograph.lungs.any()
                        else "",
                    }
                )
    write_table(truth / "findings.tsv", FINDINGS_COLUMNS, rows)
    return rows


def write_phantom_cxr_dataset(out_dir: str | Path, seed: int, **knobs: Any) -> Path:
    """The download stage's phantom_cxr source: generate, then lay out as a Kermany download is.

    Result in ``out_dir`` (swapped in atomically): ``<label>/<image_id>.jpeg`` and ``images.tsv``
    (pipeline.sources.kermany), plus ``truth/<image_id>_lungs.png`` and ``truth/findings.tsv``
    keyed by the same image ids (``train_IM-0001-0001``, ``test_person3_virus_7``, ...).
    """
    out_dir = Path(out_dir)
    started = time.perf_counter()
    with atomic_dir(out_dir) as tmp, scratch_folder(tmp) as scratch:
        rows = write_kermany_layout(scratch, seed, **knobs)
        entries = unique_entries(scratch, find_class_images(scratch / "chest_xray"))
        build_image_folders(tmp, list(entries.values()), move=True)
        image_ids = {entry.source.stem: entry.image_id for entry in entries.values()}
        (tmp / "truth").mkdir()
        for stem, image_id in image_ids.items():
            (scratch / "truth" / f"{stem}_lungs.png").rename(tmp / "truth" / f"{image_id}_lungs.png")
        write_table(tmp / "truth" / "findings.tsv", FINDINGS_COLUMNS, [{**row, "image": image_ids[row["image"]]} for row in rows])
    LOG.info("phantom_cxr: %d images in %.1f s", len(rows), time.perf_counter() - started)
    return out_dir


def main(argv: list[str] | None = None) -> None:
    parser = knob_parser(__doc__, CxrPhantomParams)
    parser.add_argument(
        "--layout",
        choices=("raw", "kermany"),
        default="raw",
        help="raw: the workflow's raw dataset (as after a download); kermany: the archive's folders.",
    )
    out, seed, knobs = parse_cli(parser, argv)
    write = write_phantom_cxr_dataset if knobs.pop("layout") == "raw" else write_kermany_layout
    write(out, seed, **knobs)


if __name__ == "__main__":
    main()
