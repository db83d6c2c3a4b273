"""Built-in adult chest radiographs in CheXpert's layout, with the heart size known exactly.

CheXpert is registration-gated, so the offline default draws its own: the procedural radiograph
of pipeline/sources/phantom_cxr.py (``render_radiograph``, unchanged) with adult proportions
(``maturity`` 1: sloping ribs, ossified humeral heads, no thymus; breast shadows in women), and a
heart sized so that each patient has a chosen cardiothoracic ratio (CTR): healthy patients draw it
from ``ctr_healthy``, cardiomegaly patients from ``ctr_cardiomegaly`` (normal distributions,
mean and sd). The Cardiomegaly label follows the CTR (above ``ctr_threshold``: 1); a label near
the threshold (``uncertain_band``) or, at ``uncertain_probability``, any label is written
uncertain (-1), and a negative is often left blank (not mentioned: ``negative_blank_fraction``),
as CheXpert's labeller does. Support Devices follows the devices the renderer drew. The other
twelve observations are label-only (nothing drawn) at the rates of ``finding_rates``, so that the
label policy and "No Finding" behave as in the real CSVs. Some studies also hold a lateral view
(``lateral_probability``; a simple side projection: sternum, heart in front, spine behind),
so selecting frontal views matters; frontal views are AP or PA (``ap_fraction``).

Layout (as CheXpert-v1.0-small): ``CheXpert-v1.0-small/{train,valid}/patientNNNNN/studyN/
view1_frontal.jpg`` (+ ``view2_lateral.jpg``), ``train.csv`` / ``valid.csv`` with Path, Sex,
Age, Frontal/Lateral, AP/PA and the 14 observations as 1.0 / 0.0 / -1.0 / blank (valid.csv
holds expert labels: 0.0 / 1.0 only). Phantom truth sits outside CheXpert's folder, in
``phantom_truth/``:

* ``truth.csv``: per frontal image its Path, patient, CTR and ``label_map`` (a PNG under
  ``phantom_truth/masks/``: 0 background, 1 thorax, 2 heart; pipeline/preprocess/ctr.py);
* ``ladder.csv`` + ``ladder/<patient>/<k>.png`` (+ ``<k>_mask.png``): for ``ladder_patients``
  healthy patients, the same film (same pose, exposure, devices and noise: the same random
  numbers) rendered at each CTR of ``ladder_ctr`` plus the patient's own CTR (``base`` = 1 marks
  that one; it is pixel for pixel the patient's first frontal film before JPEG), lossless PNG.
  These patients are meant for the test split (pipeline/preprocess/chexpert_prep.py puts them
  there); their Cardiomegaly labels are never uncertain, so their films stay in under every
  label policy.

    python -m pipeline.sources.phantom_chexpert --out /tmp/chexpert --seed 1 [--n-patients-train 20]
"""

from __future__ import annotations

import argparse
import copy
import csv
import dataclasses
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from scipy import ndimage

from pipeline.atomic import atomic_dir
from pipeline.errors import ConfigError
from pipeline.labels import CTR_BACKGROUND, CTR_HEART, CTR_THORAX
from pipeline.sources.phantom_cxr import (
    CxrPhantomParams,
    Patient,
    _band,
    _edge,
    _ellipse,
    heart_size_for_ratio,
    render_radiograph,
)

LOG = logging.getLogger(__name__)

DATASET_FOLDER = "CheXpert-v1.0-small"
TRUTH_FOLDER = "phantom_truth"
SPLIT_FOLDERS = {"train": "train.csv", "valid": "valid.csv"}
#: CheXpert's observations, in its CSV column order.
OBSERVATIONS = (
    "No Finding",
    "Enlarged Cardiomediastinum",
    "Cardiomegaly",
    "Lung Opacity",
    "Lung Lesion",
    "Edema",
    "Consolidation",
    "Pneumonia",
    "Atelectasis",
    "Pneumothorax",
    "Pleural Effusion",
    "Pleural Other",
    "Fracture",
    "Support Devices",
)
CSV_COLUMNS = ("Path", "Sex", "Age", "Frontal/Lateral", "AP/PA", *OBSERVATIONS)
#: Observations drawn from finding_rates only (not rendered).
LABEL_ONLY = tuple(
    name for name in OBSERVATIONS if name not in ("No Finding", "Cardiomegaly", "Support Devices")
)
POSITIVE, NEGATIVE, UNCERTAIN, BLANK = "1.0", "0.0", "-1.0", ""
TRUTH_COLUMNS = ("Path", "patient", "ctr", "label_map")
LADDER_COLUMNS = ("patient", "index", "ctr", "base", "image", "label_map", "Path")
#: CheXpert's positive / uncertain / negative shares (the rest blank), roughly as in its train.csv.
DEFAULT_FINDING_RATES = {
    "Enlarged Cardiomediastinum": (0.05, 0.06, 0.05),
    "Lung Opacity": (0.47, 0.02, 0.03),
    "Lung Lesion": (0.04, 0.01, 0.01),
    "Edema": (0.23, 0.06, 0.09),
    "Consolidation": (0.07, 0.12, 0.13),
    "Pneumonia": (0.03, 0.08, 0.01),
    "Atelectasis": (0.15, 0.15, 0.01),
    "Pneumothorax": (0.09, 0.01, 0.25),
    "Pleural Effusion": (0.39, 0.05, 0.14),
    "Pleural Other": (0.02, 0.01, 0.01),
    "Fracture": (0.04, 0.01, 0.01),
}


def _knob(default: Any, help_text: str) -> Any:
    return field(default=default, metadata={"help": help_text})


@dataclass(frozen=True)
class ChexpertPhantomParams:
    """Every knob of the adult CheXpert-layout phantom (params.yaml: phantom_chexpert)."""

    n_patients_train: int = _knob(60, "Patients in CheXpert's train folder.")
    n_patients_valid: int = _knob(16, "Patients in CheXpert's valid folder.")
    max_studies_per_patient: int = _knob(3, "Most studies of one patient (same anatomy and heart).")
    repeat_probability: float = _knob(0.35, "Chance of each further study, up to the maximum.")
    lateral_probability: float = _knob(0.3, "Studies that also hold a lateral view.")
    ap_fraction: float = _knob(0.75, "Frontal views taken AP (the rest PA; CheXpert: mostly AP).")
    female_fraction: float = _knob(0.45, "Female patients.")
    age_mean_years: float = _knob(60.0, "Mean age.")
    age_sd_years: float = _knob(17.0, "Age standard deviation.")
    age_range_years: tuple[float, float] = _knob((18.0, 90.0), "Ages are clipped to this range.")
    cardiomegaly_fraction: float = _knob(0.3, "Patients whose CTR is drawn from ctr_cardiomegaly.")
    ctr_healthy: tuple[float, float] = _knob((0.42, 0.03), "Healthy CTR: mean and sd.")
    ctr_cardiomegaly: tuple[float, float] = _knob((0.58, 0.04), "Cardiomegaly CTR: mean and sd.")
    ctr_range: tuple[float, float] = _knob((0.3, 0.75), "CTRs are clipped to this range.")
    ctr_threshold: float = _knob(0.5, "Cardiomegaly label 1 above this CTR, 0 below.")
    uncertain_band: float = _knob(0.02, "Cardiomegaly written -1 within +- this of the threshold.")
    uncertain_probability: float = _knob(0.05, "Chance any other Cardiomegaly label is written -1.")
    negative_blank_fraction: float = _knob(0.6, "Negative labels left blank (not mentioned) instead of 0.0.")
    finding_rates: dict[str, tuple[float, float, float]] = field(
        default_factory=lambda: dict(DEFAULT_FINDING_RATES),
        metadata={
            "help": "Per label-only observation: shares of positive, uncertain, negative (the rest blank)."
        },
    )
    device_probability: float = _knob(0.5, "Frontal films with support devices (drawn, and labelled).")
    breast_shadow_probability: float = _knob(0.8, "Women with breast shadows.")
    chest_jitter: float = _knob(0.04, "Chest width and height vary by this relative sd between patients.")
    ladder_patients: int = _knob(8, "Healthy patients rendered at every CTR of ladder_ctr.")
    ladder_ctr: tuple[float, ...] = _knob((0.4, 0.45, 0.5, 0.55, 0.6, 0.65), "CTRs of the ladder renders.")
    short_side: int = _knob(160, "Short side of the generated images (pixels).")
    aspect_range: tuple[float, float] = _knob((0.78, 0.9), "Width / height drawn in this range (portrait).")
    rotation_deg: float = _knob(4.0, "Patient rotation in the image plane drawn in +- this.")
    scale_jitter: float = _knob(0.05, "Chest size in the frame scaled by 1 +- this.")
    translation: float = _knob(0.04, "Chest centre shifted by +- this fraction of the short side.")
    exposure_jitter: float = _knob(0.15, "Contrast and brightness vary by +- this (relative).")
    gamma_range: tuple[float, float] = _knob((0.8, 1.25), "Display gamma drawn in this range.")
    blur_px: float = _knob(0.8, "Detector blur (Gaussian sigma, pixels).")
    noise_sigma: float = _knob(0.02, "Quantum noise standard deviation on the [0, 1] image.")
    jpeg_quality: int = _knob(92, "JPEG quality of the written files.")

    def __post_init__(self) -> None:
        problems = []
        if self.n_patients_train < 1 or self.n_patients_valid < 0 or self.max_studies_per_patient < 1:
            problems.append(
                "n_patients_train and max_studies_per_patient must be >= 1, n_patients_valid >= 0"
            )
        for name in (
            "repeat_probability",
            "lateral_probability",
            "ap_fraction",
            "female_fraction",
            "cardiomegaly_fraction",
            "uncertain_probability",
            "negative_blank_fraction",
            "device_probability",
            "breast_shadow_probability",
        ):
            if not 0 <= getattr(self, name) <= 1:
                problems.append(f"{name} must lie in [0, 1]")
        for name in ("age_range_years", "ctr_range", "aspect_range", "gamma_range"):
            low, high = getattr(self, name)
            if not 0 < low <= high:
                problems.append(f"{name} must be (low, high) with 0 < low <= high")
        for name in ("ctr_healthy", "ctr_cardiomegaly"):
            mean, sd = getattr(self, name)
            if not (0 < mean < 1 and sd >= 0):
                problems.append(f"{name} must be (mean in (0, 1), sd >= 0)")
        if not self.ctr_healthy[0] < self.ctr_threshold < self.ctr_cardiomegaly[0]:
            problems.append("ctr_threshold must lie between the healthy and the cardiomegaly mean")
        unknown = sorted(set(self.finding_rates) - set(LABEL_ONLY))
        if unknown:
            problems.append(f"finding_rates: unknown observations {unknown}; known: {list(LABEL_ONLY)}")
        for name, shares in self.finding_rates.items():
            if len(shares) != 3 or min(shares) < 0 or sum(shares) > 1:
                problems.append(f"finding_rates.{name}: three shares >= 0 adding up to at most 1")
        if not all(0 < ctr < 1 for ctr in self.ladder_ctr) or self.ladder_patients < 0:
            problems.append("ladder_ctr values must lie in (0, 1), ladder_patients >= 0")
        if self.short_side < 32:
            problems.append("short_side must be >= 32")
        if not 1 <= self.jpeg_quality <= 100:
            problems.append("jpeg_quality must lie in [1, 100]")
        if problems:
            raise ConfigError("phantom_chexpert: " + "; ".join(problems))

    def renderer(self) -> CxrPhantomParams:
        """The radiograph renderer's knobs (pose, exposure, devices) for these adults."""
        return CxrPhantomParams(
            short_side=self.short_side,
            aspect_range=self.aspect_range,
            rotation_deg=self.rotation_deg,
            scale_jitter=self.scale_jitter,
            translation=self.translation,
            exposure_jitter=self.exposure_jitter,
            gamma_range=self.gamma_range,
            blur_px=self.blur_px,
            noise_sigma=self.noise_sigma,
            jpeg_quality=self.jpeg_quality,
            device_probability_normal=self.device_probability,
        )


@dataclass(frozen=True)
class AdultPatient:
    """One phantom patient: sex, age, anatomy (the renderer's Patient) and the CTR it was drawn at."""

    patient_id: str
    sex: str
    age: int
    ctr: float
    anatomy: Patient

    def with_ctr(self, ctr: float) -> AdultPatient:
        """The same patient with a heart drawn at another CTR (everything else identical)."""
        heart = heart_size_for_ratio(ctr, self.anatomy.chest_half_width)
        return dataclasses.replace(self, ctr=ctr, anatomy=dataclasses.replace(self.anatomy, heart_size=heart))


def draw_adult(rng: np.random.Generator, patient_id: str, params: ChexpertPhantomParams) -> AdultPatient:
    """Sex, age, chest proportions, and the CTR from the healthy or the cardiomegaly distribution."""
    female = rng.random() < params.female_fraction
    age = round(
        float(np.clip(rng.normal(params.age_mean_years, params.age_sd_years), *params.age_range_years))
    )
    enlarged = rng.random() < params.cardiomegaly_fraction
    mean, sd = params.ctr_cardiomegaly if enlarged else params.ctr_healthy
    ctr = float(np.clip(rng.normal(mean, sd), *params.ctr_range))
    # adult chest as phantom_cxr draws it at maturity 1 (its oldest children), women a little narrower
    half_width = 0.78 * (0.96 if female else 1.0) * (1 + params.chest_jitter * rng.standard_normal())
    height = 1.02 * (1 + params.chest_jitter * rng.standard_normal())
    anatomy = Patient(
        label="NORMAL",  # the renderer's pneumonia class: none here (findings other than the heart are label-only)
        name=patient_id,
        age_years=float(age),
        maturity=1.0,
        chest_half_width=half_width,
        chest_height=height,
        heart_size=heart_size_for_ratio(ctr, half_width),
        breast_shadows=bool(female and rng.random() < params.breast_shadow_probability),
        infection="",
        pattern="",
    )
    return AdultPatient(patient_id, "Female" if female else "Male", age, ctr, anatomy)


def label_map_of(film) -> np.ndarray:
    """The truth label map of a rendered film: 0 background, 1 thorax, 2 heart (heart wins)."""
    label_map = np.full(film.image.shape, CTR_BACKGROUND, np.uint8)
    label_map[film.thorax] = CTR_THORAX
    label_map[film.heart] = CTR_HEART
    return label_map


def render_lateral(
    patient: AdultPatient, rng: np.random.Generator, params: ChexpertPhantomParams
) -> np.ndarray:
    """A simple lateral view (anterior to the image left): chest wall, sternum, lungs, heart in
    front, spine behind, diaphragm; the same film response, exposure, blur and noise as frontals."""
    aspect = rng.uniform(*params.aspect_range)
    short = params.short_side
    height, width = round(short / aspect), short
    rows, cols = np.mgrid[0:height, 0:width].astype(np.float32)
    scale = 0.85 * (1 + params.scale_jitter * rng.uniform(-1, 1))
    x = ((cols - (width - 1) / 2) / (short / 2)) / scale
    y = ((rows - (height - 1) / 2) / (short / 2)) / scale
    ramp = 4.0 / short / scale
    depth = 0.55 * patient.anatomy.chest_half_width / 0.78
    body = np.sqrt(np.clip(1 - _ellipse(x, y, 0.0, 0.1, depth + 0.15, 1.3), 0, None))
    dome = 0.55 - 0.15 * x
    lungs = np.clip(1 - _ellipse(x, y, 0.05, -0.1, depth, 0.85), 0, None) ** 0.5 * _edge(dome - y, ramp)
    size = patient.anatomy.heart_size
    heart = np.clip(1 - _ellipse(x, y, -0.2, 0.3, 0.3 * size, 0.28 * size, 0.3), 0, None) ** 0.25
    spine = _band(x, np.full_like(x, depth - 0.05), 0.09) * (0.8 + 0.2 * np.cos(2 * math.pi * y / 0.16))
    sternum = _band(x, np.full_like(x, -depth - 0.02), 0.025) * _edge(0.35 - np.abs(y + 0.3), ramp)
    attenuation = 0.5 * body + 0.2 * heart - 0.3 * lungs * (1 - 0.6 * heart) + 0.15 * spine + 0.08 * sternum
    film = 1 - np.exp(-2.2 * np.clip(attenuation, 0, None))
    contrast = 1.05 * (1 + params.exposure_jitter * rng.uniform(-1, 1))
    image = np.clip(contrast * film, 0, 1) ** rng.uniform(*params.gamma_range)
    image = ndimage.gaussian_filter(image, params.blur_px)
    image = image + params.noise_sigma * rng.standard_normal(image.shape).astype(np.float32)
    return np.clip(image, 0, 1).astype(np.float32)


def _study_labels(
    rng: np.random.Generator,
    patient: AdultPatient,
    devices: bool,
    expert: bool,
    params: ChexpertPhantomParams,
    certain: bool = False,
) -> dict[str, str]:
    """One study's 14 observations. ``expert`` (valid.csv): only 0.0 / 1.0, no uncertainty.
    ``certain``: Cardiomegaly never -1 (ladder patients: their films stay in under every policy)."""

    def negative() -> str:
        return NEGATIVE if expert or rng.random() >= params.negative_blank_fraction else BLANK

    labels: dict[str, str] = {}
    for name in LABEL_ONLY:
        positive, uncertain, negative_share = params.finding_rates.get(name, (0.0, 0.0, 0.0))
        draw = rng.random()
        if draw < positive:
            labels[name] = POSITIVE
        elif draw < positive + uncertain:
            labels[name] = NEGATIVE if expert else UNCERTAIN
        elif draw < positive + uncertain + negative_share:
            labels[name] = NEGATIVE
        else:
            labels[name] = NEGATIVE if expert else BLANK
    enlarged = patient.ctr > params.ctr_threshold
    borderline = abs(patient.ctr - params.ctr_threshold) < params.uncertain_band
    if not expert and (borderline or rng.random() < params.uncertain_probability) and not certain:
        labels["Cardiomegaly"] = UNCERTAIN
    else:
        labels["Cardiomegaly"] = POSITIVE if enlarged else negative()
    labels["Support Devices"] = POSITIVE if devices else negative()
    pathology = [labels[name] for name in OBSERVATIONS if name not in ("No Finding", "Support Devices")]
    labels["No Finding"] = (
        POSITIVE
        if POSITIVE not in pathology and UNCERTAIN not in pathology
        else (NEGATIVE if expert else BLANK)
    )
    return {name: labels[name] for name in OBSERVATIONS}


def _studies_per_patient(rng: np.random.Generator, params: ChexpertPhantomParams) -> int:
    studies = 1
    while studies < params.max_studies_per_patient and rng.random() < params.repeat_probability:
        studies += 1
    return studies


def _save_jpeg(image: np.ndarray, target: Path, quality: int) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.round(image * 255).astype(np.uint8)
    Image.fromarray(pixels, mode="L").save(target, format="JPEG", quality=quality)


def _save_png(array: np.ndarray, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array, mode="L").save(target, format="PNG")


def write_chexpert_layout(folder: str | Path, seed: int, **knobs: Any) -> dict[str, int]:
    """Write ``CheXpert-v1.0-small/`` and ``phantom_truth/`` in ``folder``; same seed and knobs,
    same files. ``knobs`` are fields of :class:`ChexpertPhantomParams`. Returns counts."""
    known = {f.name for f in dataclasses.fields(ChexpertPhantomParams)}
    unknown = sorted(set(knobs) - known)
    if unknown:
        raise ConfigError(f"phantom_chexpert: unknown knobs {unknown}; known: {sorted(known)}")
    if seed < 0:
        raise ConfigError(f"seed: must be >= 0, got {seed}")
    knobs = {key: tuple(value) if isinstance(value, list) else value for key, value in knobs.items()}
    if "finding_rates" in knobs:
        knobs["finding_rates"] = {name: tuple(shares) for name, shares in knobs["finding_rates"].items()}
    params = ChexpertPhantomParams(**knobs)
    renderer = params.renderer()
    folder = Path(folder)
    root, truth = folder / DATASET_FOLDER, folder / TRUTH_FOLDER
    truth_rows: list[dict[str, Any]] = []
    ladder_rows: list[dict[str, Any]] = []
    counts = {"frontal": 0, "lateral": 0, "ladder_patients": 0}
    patients: list[tuple[str, AdultPatient]] = []
    number = 0
    for split_index, (split, n_patients) in enumerate(
        (("train", params.n_patients_train), ("valid", params.n_patients_valid))
    ):
        for _ in range(n_patients):
            number += 1
            patients.append(
                (split, draw_adult(np.random.default_rng([seed, 0, number]), f"patient{number:05d}", params))
            )
    healthy = [p.patient_id for _, p in patients if p.ctr < params.ctr_threshold - params.uncertain_band]
    pick = np.random.default_rng([seed, 1]).permutation(len(healthy))[: params.ladder_patients]
    ladder_ids = {healthy[i] for i in pick}

    for split, table in SPLIT_FOLDERS.items():
        csv_rows = []
        for patient_split, patient in patients:
            if patient_split != split:
                continue
            rng = np.random.default_rng([seed, 2, int(patient.patient_id[len("patient") :])])
            for study in range(1, _studies_per_patient(rng, params) + 1):
                study_dir = Path(split) / patient.patient_id / f"study{study}"
                before_film = copy.deepcopy(rng)
                film = render_radiograph(patient.anatomy, rng, renderer)
                frontal = study_dir / "view1_frontal.jpg"
                _save_jpeg(film.image, root / frontal, params.jpeg_quality)
                label_map = label_map_of(film)
                mask_path = Path("masks") / frontal.with_suffix(".png")
                _save_png(label_map, truth / mask_path)
                truth_rows.append(
                    {
                        "Path": f"{DATASET_FOLDER}/{frontal.as_posix()}",
                        "patient": patient.patient_id,
                        "ctr": f"{patient.ctr:.6f}",
                        "label_map": mask_path.as_posix(),
                    }
                )
                if study == 1 and patient.patient_id in ladder_ids:
                    ladder_rows += _write_ladder(patient, before_film, renderer, params, truth, frontal)
                    counts["ladder_patients"] += 1
                labels = _study_labels(
                    rng,
                    patient,
                    bool(film.devices),
                    split == "valid",
                    params,
                    patient.patient_id in ladder_ids,
                )
                view = "AP" if rng.random() < params.ap_fraction else "PA"
                csv_rows.append(_csv_row(frontal, patient, "Frontal", view, labels))
                counts["frontal"] += 1
                if rng.random() < params.lateral_probability:
                    lateral = study_dir / "view2_lateral.jpg"
                    _save_jpeg(render_lateral(patient, rng, params), root / lateral, params.jpeg_quality)
                    csv_rows.append(_csv_row(lateral, patient, "Lateral", "", labels))
                    counts["lateral"] += 1
        _write_csv(root / table, CSV_COLUMNS, csv_rows)
    _write_csv(truth / "truth.csv", TRUTH_COLUMNS, truth_rows)
    _write_csv(truth / "ladder.csv", LADDER_COLUMNS, ladder_rows)
    return counts


def _write_ladder(
    patient: AdultPatient,
    state: np.random.Generator,
    renderer: CxrPhantomParams,
    params: ChexpertPhantomParams,
    truth: Path,
    frontal: Path,
) -> list[dict[str, Any]]:
    """The patient's first frontal film re-rendered at every ladder CTR and at its own."""
    ratios = sorted({*params.ladder_ctr, patient.ctr})
    rows = []
    for index, ratio in enumerate(ratios):
        film = render_radiograph(patient.with_ctr(ratio).anatomy, copy.deepcopy(state), renderer)
        image = Path("ladder") / patient.patient_id / f"{index}.png"
        mask = Path("ladder") / patient.patient_id / f"{index}_mask.png"
        _save_png(np.round(film.image * 255).astype(np.uint8), truth / image)
        _save_png(label_map_of(film), truth / mask)
        rows.append(
            {
                "patient": patient.patient_id,
                "index": index,
                "ctr": f"{ratio:.6f}",
                "base": int(ratio == patient.ctr),
                "image": image.as_posix(),
                "label_map": mask.as_posix(),
                "Path": f"{DATASET_FOLDER}/{frontal.as_posix()}",
            }
        )
    return rows


def _csv_row(
    path: Path, patient: AdultPatient, view: str, ap_pa: str, labels: dict[str, str]
) -> dict[str, Any]:
    return {
        "Path": f"{DATASET_FOLDER}/{path.as_posix()}",
        "Sex": patient.sex,
        "Age": patient.age,
        "Frontal/Lateral": view,
        "AP/PA": ap_pa,
        **labels,
    }


def _write_csv(target: Path, columns: tuple[str, ...], rows: list[dict[str, Any]]) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target, "w", newline="") as handle:
        writer = csv.DictWriter(handle, columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)


def write_phantom_chexpert_dataset(out_dir: str | Path, seed: int, **knobs: Any) -> Path:
    """The download stage's phantom_chexpert source: the layout above, swapped in atomically."""
    out_dir = Path(out_dir)
    started = time.perf_counter()
    with atomic_dir(out_dir) as tmp:
        counts = write_chexpert_layout(tmp, seed, **knobs)
    LOG.info("phantom_chexpert: %s in %.1f s", counts, time.perf_counter() - started)
    return out_dir


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="Folder to write.")
    parser.add_argument("--seed", type=int, required=True)
    for knob in dataclasses.fields(ChexpertPhantomParams):
        if knob.default is dataclasses.MISSING or isinstance(knob.default, tuple):
            continue  # nested knobs: params.yaml (the download stage's --phantom-option)
        flag = f"--{knob.name.replace('_', '-')}"
        parser.add_argument(
            flag, type=type(knob.default), default=argparse.SUPPRESS, help=knob.metadata["help"]
        )
    return parser


def main(argv: list[str] | None = None) -> None:
    args = vars(_parser().parse_args(argv))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    out, seed = args.pop("out"), args.pop("seed")
    write_phantom_chexpert_dataset(out, seed, **args)


if __name__ == "__main__":
    main()
