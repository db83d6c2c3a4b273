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

import copy
import dataclasses
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.atomic import atomic_dir
from pipeline.errors import ConfigError
from pipeline.labels import CTR_BACKGROUND, CTR_HEART, CTR_THORAX
from pipeline.sources.phantom_cxr import (
    CxrPhantomParams,
    Patient,
    develop_film,
    heart_size_for_ratio,
    render_radiograph,
)
from pipeline.sources.phantom_toolkit import (
    bone_band,
    check_seed,
    ellipse_r2,
    knobs_from_schema,
    params_from_knobs,
    phantom_main,
    save_jpeg,
    save_png,
    soft_inside,
)
from pipeline.sources.real_datasets import write_table

LOG = logging.getLogger(__name__)

DATASET_FOLDER = "CheXpert-v1.0-small"
TRUTH_FOLDER = "phantom_truth"
SPLIT_FOLDERS = {"train": "train.csv", "valid": "valid.csv"}
#: CheXpert's observations, in its CSV column order.
OBSERVATIONS = ("No Finding", "Enlarged Cardiomediastinum", "Cardiomegaly", "Lung Opacity", "Lung Lesion", "Edema",
                "Consolidation", "Pneumonia", "Atelectasis", "Pneumothorax", "Pleural Effusion", "Pleural Other",
                "Fracture", "Support Devices")  # fmt: skip
#: Knobs of the radiograph renderer (pipeline/sources/phantom_cxr.py) this phantom sets under the same names.
RENDERER_KNOBS = ("short_side", "aspect_range", "rotation_deg", "scale_jitter", "translation", "exposure_jitter",
                  "gamma_range", "blur_px", "noise_sigma", "jpeg_quality")  # fmt: skip
CSV_COLUMNS = ("Path", "Sex", "Age", "Frontal/Lateral", "AP/PA", *OBSERVATIONS)
#: Observations drawn from finding_rates only (not rendered).
LABEL_ONLY = tuple(
    name for name in OBSERVATIONS if name not in ("No Finding", "Cardiomegaly", "Support Devices")
)
POSITIVE, NEGATIVE, UNCERTAIN, BLANK = "1.0", "0.0", "-1.0", ""
TRUTH_COLUMNS = ("Path", "patient", "ctr", "label_map")
LADDER_COLUMNS = ("patient", "index", "ctr", "base", "image", "label_map", "Path")


@knobs_from_schema("phantom_chexpert")
class ChexpertPhantomParams:
    """Every knob of the adult CheXpert-layout phantom: params.yaml's phantom_chexpert, documented
    (with ranges and defaults) in the schema."""

    def check(self) -> None:
        problems = []
        for name in ("ctr_healthy", "ctr_cardiomegaly"):
            if not 0 < getattr(self, name)[0] < 1:
                problems.append(f"{name} must be (mean in (0, 1), sd >= 0)")
        if not self.ctr_healthy[0] < self.ctr_threshold < self.ctr_cardiomegaly[0]:
            problems.append("ctr_threshold must lie between the healthy and the cardiomegaly mean")
        unknown = sorted(set(self.finding_rates) - set(LABEL_ONLY))
        if unknown:
            problems.append(f"finding_rates: unknown observations {unknown}; known: {list(LABEL_ONLY)}")
        for name, shares in self.finding_rates.items():
            if sum(shares) > 1:
                problems.append(f"finding_rates.{name}: three shares adding up to at most 1")
        if problems:
            raise ConfigError("phantom_chexpert: " + "; ".join(problems))

    def renderer(self) -> CxrPhantomParams:
        """The radiograph renderer's knobs (pose, exposure, devices) for these adults."""
        shared = {name: getattr(self, name) for name in RENDERER_KNOBS}
        return CxrPhantomParams(**shared, device_probability_normal=self.device_probability)


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
    body = np.sqrt(np.clip(1 - ellipse_r2(x, y, 0.0, 0.1, depth + 0.15, 1.3), 0, None))
    dome = 0.55 - 0.15 * x
    lungs = np.clip(1 - ellipse_r2(x, y, 0.05, -0.1, depth, 0.85), 0, None) ** 0.5 * soft_inside(dome - y, ramp)
    size = patient.anatomy.heart_size
    heart = np.clip(1 - ellipse_r2(x, y, -0.2, 0.3, 0.3 * size, 0.28 * size, 0.3), 0, None) ** 0.25
    spine = bone_band(x, np.full_like(x, depth - 0.05), 0.09) * (0.8 + 0.2 * np.cos(2 * math.pi * y / 0.16))
    sternum = bone_band(x, np.full_like(x, -depth - 0.02), 0.025) * soft_inside(0.35 - np.abs(y + 0.3), ramp)
    attenuation = 0.5 * body + 0.2 * heart - 0.3 * lungs * (1 - 0.6 * heart) + 0.15 * spine + 0.08 * sternum
    return develop_film(attenuation, rng, params)


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


def write_chexpert_layout(folder: str | Path, seed: int, **knobs: Any) -> dict[str, int]:
    """Write ``CheXpert-v1.0-small/`` and ``phantom_truth/`` in ``folder``; same seed and knobs,
    same files. ``knobs`` are fields of :class:`ChexpertPhantomParams`. Returns counts."""
    params = params_from_knobs(ChexpertPhantomParams, knobs)
    check_seed(seed)
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
                save_jpeg(film.image, root / frontal, params.jpeg_quality)
                label_map = label_map_of(film)
                mask_path = Path("masks") / frontal.with_suffix(".png")
                save_png(label_map, truth / mask_path)
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
                    save_jpeg(render_lateral(patient, rng, params), root / lateral, params.jpeg_quality)
                    csv_rows.append(_csv_row(lateral, patient, "Lateral", "", labels))
                    counts["lateral"] += 1
        write_table(root / table, CSV_COLUMNS, csv_rows, delimiter=",")
    write_table(truth / "truth.csv", TRUTH_COLUMNS, truth_rows, delimiter=",")
    write_table(truth / "ladder.csv", LADDER_COLUMNS, ladder_rows, delimiter=",")
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
        save_png(np.round(film.image * 255).astype(np.uint8), truth / image)
        save_png(label_map_of(film), truth / mask)
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


def write_phantom_chexpert_dataset(out_dir: str | Path, seed: int, **knobs: Any) -> Path:
    """The download stage's phantom_chexpert source: the layout above, swapped in atomically."""
    out_dir = Path(out_dir)
    started = time.perf_counter()
    with atomic_dir(out_dir) as tmp:
        counts = write_chexpert_layout(tmp, seed, **knobs)
    LOG.info("phantom_chexpert: %s in %.1f s", counts, time.perf_counter() - started)
    return out_dir


main = phantom_main(__doc__, ChexpertPhantomParams, write_phantom_chexpert_dataset)


if __name__ == "__main__":
    main()
