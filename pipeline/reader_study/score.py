"""Score a reader study: answers CSVs against key.json, per reader and pooled, with a figure.

The design these methods fit (pipeline/reader_study/draw.py; docs/reader-study.md argues it in
full): each image's truth is its own fair coin, the count of each truth is neither fixed nor
stated, and images are shown one at a time. "Generated" is the positive class.

Per reader:
- ``accuracy``: correct answers / images, exact Clopper-Pearson 95% interval (beta quantiles). With independent
  fair-coin truths every answer is right with the same probability p (the reader's accuracy on a
  random image of this design), so the count is Binomial(n, p); ``p_value_vs_chance`` is the
  exact two-sided binomial test of p = 0.5, exact under "this reader cannot tell" whatever the
  reader's strategy (always "real", comparing images, ...), because the coins are independent of
  everything the reader sees then.
- ``sensitivity_fake`` (generated answered "generated" / generated), ``fakes_taken_for_real``
  (= 1 - sensitivity) and ``specificity_fake`` (real answered "real" / real): Clopper-Pearson,
  conditional on the study's counts (undefined when the coins left a class empty).
- ``auc`` (when the study asked for confidences): answer and confidence as one 10-point rating of
  "generated" (generated with confidence c: 5 + c; real: 6 - c); Mann-Whitney AUC (ties count
  half) with DeLong's variance and a normal 95% interval clipped to [0, 1].

Pooled over readers (every reader saw the same images, so their answers are not independent):
- every measure as the mean over readers, with the Obuchowski-Rockette method in Hillis's form
  for one test, readers and images both random: variance MS(readers)/J + max(Cov2, 0), where
  Cov2 is the mean covariance between two readers' estimates over images (DeLong for the AUC,
  the sample covariance of right / wrong over images for proportions), and Hillis's
  Satterthwaite degrees of freedom for a t interval. The interval speaks for other readers like
  these reading other images like these. With one reader it is that reader's interval.
- ``p_value_vs_chance``: an exact randomisation test of "no reader can tell": under it the
  answers are independent of the coins, so image i adds m_i correct answers (readers who said
  "generated") or J - m_i, each with probability 1/2, independently; the exact distribution of
  the total is their convolution. For one reader it is the binomial test.

An interval that contains 0.5 (accuracy, AUC) says the study could not tell readers from
chance; with 24 images it is wide (about 0.29-0.71 at 12 / 24 correct), which is no proof that
the images are indistinguishable.
"""
from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from scipy.stats import beta, binomtest, norm, t as student_t

from pipeline.atomic import atomic_path
from pipeline.errors import InputDataError
from pipeline.reader_study import ANSWER_COLUMNS, CONFIDENCE_LEVELS, FAKE, REAL, SCORED_KEY_FORMATS, TRUTHS

LEVEL = 0.95
CHANCE = 0.5
#: (measure, images it is taken over, the answer counted): the four proportions of a reader.
PROPORTIONS = {"accuracy": ("all", "correct"), "fakes_taken_for_real": (FAKE, "said_real"),
               "sensitivity_fake": (FAKE, "said_fake"), "specificity_fake": (REAL, "said_real")}
#: Two-sided tolerance when comparing integer totals held as floats.
TIE_TOLERANCE = 1e-9


@dataclass
class ReaderAnswers:
    """One reader's answers, by image id ("real" / "fake"), with confidences when asked."""

    reader: str
    path: Path
    answers: dict[str, str]
    confidence: dict[str, int] | None


def read_key(path: Path) -> dict[str, Any]:
    path = Path(path)
    try:
        key = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputDataError(path, "key not found") from None
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise InputDataError(path, f"is not a readable key.json ({err})") from err
    if not isinstance(key, dict) or not isinstance(key.get("images"), list):
        raise InputDataError(path, "is not a reader-study key.json")
    if key.get("format") not in SCORED_KEY_FORMATS:
        raise InputDataError(path, f"is a key of format {key.get('format')!r}; this version reads formats "
                                   f"{', '.join(map(str, SCORED_KEY_FORMATS))} (one fair coin per image, drawn from a "
                                   "secret)")
    for number, entry in enumerate(key["images"], start=1):
        if entry.get("truth") not in TRUTHS or not entry.get("image_id") or entry.get("position") != number:
            raise InputDataError(path, f"image entry {number} ({entry.get('image_id')!r}) has no valid truth, id "
                                       "or position")
    return key


def read_answers(path: Path, key: dict[str, Any]) -> ReaderAnswers:
    """One answers CSV, checked row by row against the key; every problem names the file and row."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise InputDataError(path, "answers file not found") from None
    except (OSError, UnicodeDecodeError) as err:
        raise InputDataError(path, f"cannot be read as UTF-8 text ({err})") from err
    rows = csv.reader(text.splitlines())
    header = next(rows, None)
    if header is None:
        raise InputDataError(path, "is empty; expected a header " + ",".join(ANSWER_COLUMNS))
    header = [h.strip() for h in header]
    missing = [c for c in ANSWER_COLUMNS if c not in header]
    if missing:
        raise InputDataError(path, f"row 1 (header) lacks column(s) {missing}; expected {','.join(ANSWER_COLUMNS)}")
    column = {name: header.index(name) for name in ANSWER_COLUMNS}
    shown = {entry["image_id"]: entry["position"] for entry in key["images"]}
    answers: dict[str, str] = {}
    confidence: dict[str, int] = {}
    first_row: dict[str, int] = {}
    reader = None
    for row_number, row in enumerate(rows, start=2):
        if not any(field.strip() for field in row):
            continue
        where = f"row {row_number}"
        if len(row) != len(header):
            raise InputDataError(path, f"{where}: {len(row)} fields, the header has {len(header)}")
        value = {name: row[index].strip() for name, index in column.items()}
        if value["study_id"] != key["study_id"]:
            raise InputDataError(path, f"{where}: study_id {value['study_id']!r} is not this key's study "
                                       f"{key['study_id']!r} (answers to another study?)")
        if not value["reader"]:
            raise InputDataError(path, f"{where}: reader is empty")
        if reader is None:
            reader = value["reader"]
        elif value["reader"] != reader:
            raise InputDataError(path, f"{where}: reader {value['reader']!r} differs from {reader!r} of the rows above "
                                       "(one reader per file)")
        image_id = value["image_id"]
        if image_id not in shown:
            raise InputDataError(path, f"{where}: unknown image id {image_id!r}")
        if image_id in first_row:
            raise InputDataError(path, f"{where}: image {image_id!r} is answered twice (first in row {first_row[image_id]})")
        first_row[image_id] = row_number
        if value["position"] != str(shown[image_id]):
            raise InputDataError(path, f"{where}: image {image_id!r} was shown at position {shown[image_id]}, "
                                       f"the row says {value['position']!r}")
        if value["answer"] not in TRUTHS:
            raise InputDataError(path, f"{where}: answer {value['answer']!r} must be {REAL} or {FAKE}")
        answers[image_id] = value["answer"]
        if key["confidence"]:
            levels = [str(level) for level in CONFIDENCE_LEVELS]
            if value["confidence"] not in levels:
                raise InputDataError(path, f"{where}: confidence {value['confidence']!r} must be one of {', '.join(levels)}")
            confidence[image_id] = int(value["confidence"])
        elif value["confidence"]:
            raise InputDataError(path, f"{where}: confidence {value['confidence']!r} given, but this study asked for none")
    if not answers:
        raise InputDataError(path, "holds no answer rows")
    unanswered = [entry for entry in key["images"] if entry["image_id"] not in answers]
    if unanswered:
        listed = ", ".join(f"{e['image_id']} (position {e['position']})" for e in unanswered)
        raise InputDataError(path, f"answers {len(answers)} of {len(key['images'])} images; missing: {listed}")
    return ReaderAnswers(str(reader), path, answers, confidence if key["confidence"] else None)


def proportion(k: int, n: int) -> dict[str, Any]:
    if n == 0:
        return {"value": None, "k": 0, "n": 0, "reason": "the coins gave this study no image of this class"}
    tail = (1 - LEVEL) / 2  # Clopper-Pearson as beta quantiles (scipy's binomtest finds the same by root search)
    low = beta.ppf(tail, k, n - k + 1) if k > 0 else 0.0
    high = beta.ppf(1 - tail, k + 1, n - k) if k < n else 1.0
    return {"value": k / n, "k": int(k), "n": int(n), "ci95": [float(low), float(high)],
            "ci_method": "clopper_pearson_exact"}


def ratings(answers: np.ndarray, confidence: np.ndarray) -> np.ndarray:
    """10-point rating of "generated" from answer (True = generated) and confidence 1..5."""
    top = CONFIDENCE_LEVELS[-1]
    return np.where(answers, top + confidence, top + 1 - confidence)


def delong(fake_ratings: np.ndarray, real_ratings: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """Mann-Whitney AUCs of J readers (rows) and DeLong's (J, J) covariance of them over images
    (None with fewer than two images of a class)."""
    fake_ratings, real_ratings = np.atleast_2d(fake_ratings), np.atleast_2d(real_ratings)
    diff = fake_ratings[:, :, None] - real_ratings[:, None, :]
    kernel = (diff > 0) + 0.5 * (diff == 0)
    aucs = kernel.mean(axis=(1, 2))
    n_fake, n_real = fake_ratings.shape[1], real_ratings.shape[1]
    if n_fake < 2 or n_real < 2:
        return aucs, None
    fake_placements, real_placements = kernel.mean(axis=2), kernel.mean(axis=1)
    covariance = (np.atleast_2d(np.cov(fake_placements)) / n_fake + np.atleast_2d(np.cov(real_placements)) / n_real)
    return aucs, covariance


def mean_covariance(values: np.ndarray) -> np.ndarray:
    """(J, J) covariance over images of J readers' means of ``values`` (J, m): S / m."""
    return np.atleast_2d(np.cov(np.atleast_2d(values).astype(np.float64))) / values.shape[-1]


def normal_interval(value: float, variance: float) -> list[float]:
    half = norm.ppf(0.5 + LEVEL / 2) * np.sqrt(max(variance, 0.0))
    return [float(max(0.0, value - half)), float(min(1.0, value + half))]


def obuchowski_rockette(foms: np.ndarray, covariance: np.ndarray) -> dict[str, Any]:
    """Mean figure of merit over J >= 2 readers with the random-reader, random-image interval of
    Obuchowski-Rockette-Hillis for one test (see the module doc)."""
    n_readers = len(foms)
    mean = float(np.mean(foms))
    ms_readers = float(np.var(foms, ddof=1))
    off_diagonal = covariance[~np.eye(n_readers, dtype=bool)]
    cov2 = float(off_diagonal.mean())
    cov2_used = max(cov2, 0.0)
    variance = ms_readers / n_readers + cov2_used
    df = (ms_readers + n_readers * cov2_used) ** 2 / (ms_readers ** 2 / (n_readers - 1)) if ms_readers > 0 else np.inf
    quantile = norm.ppf(0.5 + LEVEL / 2) if not np.isfinite(df) else student_t.ppf(0.5 + LEVEL / 2, df)
    half = quantile * np.sqrt(variance)
    return {"value": mean, "ci95": [float(max(0.0, mean - half)), float(min(1.0, mean + half))],
            "ci_method": "obuchowski_rockette_hillis_random_readers_random_images", "se": float(np.sqrt(variance)),
            "df": float(df) if np.isfinite(df) else None, "ms_readers": ms_readers, "cov2": cov2}


def chance_p_value(said_fake: np.ndarray, is_fake: np.ndarray) -> float:
    """Exact two-sided randomisation test of "no reader can tell" over (J, n) answers."""
    said_fake = np.atleast_2d(said_fake)
    n_readers = said_fake.shape[0]
    said_generated = said_fake.sum(axis=0)
    distribution = np.ones(1)
    for m in said_generated:
        longer = np.zeros(len(distribution) + n_readers)
        longer[m:m + len(distribution)] += 0.5 * distribution
        longer[n_readers - m:n_readers - m + len(distribution)] += 0.5 * distribution
        distribution = longer
    observed = int((said_fake == is_fake[None, :]).sum())
    centre = said_fake.size / 2
    extreme = np.abs(np.arange(len(distribution)) - centre) >= abs(observed - centre) - TIE_TOLERANCE
    return float(min(1.0, distribution[extreme].sum()))


def _counted(said_fake: np.ndarray, is_fake: np.ndarray) -> dict[str, np.ndarray]:
    return {"correct": said_fake == is_fake, "said_fake": said_fake, "said_real": ~said_fake}


def _images_of(is_fake: np.ndarray, which: str) -> np.ndarray:
    return {"all": np.ones_like(is_fake), FAKE: is_fake, REAL: ~is_fake}[which]


def _auc_block(value: float, variance: float | None) -> dict[str, Any]:
    if variance is None:
        return {"value": value, "reason": "an interval needs at least two images of each class"}
    return {"value": value, "ci95": normal_interval(value, variance), "se": float(np.sqrt(max(variance, 0.0))),
            "ci_method": "delong_normal"}


def score_study(key: dict[str, Any], readers: Sequence[ReaderAnswers]) -> dict[str, Any]:
    """scores.json's content (see the module doc)."""
    ids = [entry["image_id"] for entry in key["images"]]
    is_fake = np.array([entry["truth"] == FAKE for entry in key["images"]])
    said_fake = np.array([[r.answers[i] == FAKE for i in ids] for r in readers])
    counted = _counted(said_fake, is_fake)
    n_fake, n_real = int(is_fake.sum()), int((~is_fake).sum())
    with_confidence = all(r.confidence is not None for r in readers)
    rated = (ratings(said_fake, np.array([[r.confidence[i] for i in ids] for r in readers]))
             if with_confidence else None)
    aucs, auc_covariance = (delong(rated[:, is_fake], rated[:, ~is_fake]) if rated is not None and n_fake and n_real
                            else (None, None))
    no_auc = {"value": None, "reason": "the study asked for no confidences" if rated is None
              else "the coins gave this study no image of one class"}
    per_reader: dict[str, Any] = {}
    for r, reader in enumerate(readers):
        block: dict[str, Any] = {"file": str(reader.path), "n_images": len(ids)}
        for measure, (which, answer) in PROPORTIONS.items():
            images = _images_of(is_fake, which)
            block[measure] = proportion(int(counted[answer][r][images].sum()), int(images.sum()))
        block["p_value_vs_chance"] = float(binomtest(block["accuracy"]["k"], len(ids), CHANCE).pvalue)
        block["auc"] = (no_auc if aucs is None else
                        _auc_block(float(aucs[r]), None if auc_covariance is None else float(auc_covariance[r, r])))
        per_reader[reader.reader] = block
    pooled: dict[str, Any] = {"n_readers": len(readers), "n_answers": int(said_fake.size),
                              "p_value_vs_chance": chance_p_value(said_fake, is_fake),
                              "p_value_method": "exact randomisation test over the fair-coin truths"}
    one = next(iter(per_reader.values()))
    for measure, (which, answer) in PROPORTIONS.items():
        images = _images_of(is_fake, which)
        if not images.any():
            pooled[measure] = one[measure]
        elif len(readers) == 1:
            pooled[measure] = {**one[measure], "ci_method": "one reader: clopper_pearson_exact over images"}
        else:
            values = counted[answer][:, images]
            pooled[measure] = obuchowski_rockette(values.mean(axis=1), mean_covariance(values))
    if aucs is None:
        pooled["auc"] = no_auc
    elif auc_covariance is None:
        pooled["auc"] = {"value": float(aucs.mean()), "reason": "an interval needs at least two images of each class"}
    elif len(readers) == 1:
        pooled["auc"] = {**one["auc"], "ci_method": "one reader: delong_normal"}
    else:
        pooled["auc"] = {**obuchowski_rockette(aucs, auc_covariance), "definition": "mean of the readers' AUCs"}
    validity = ("fakes drawn at random: the scores estimate how well readers tell the generator's typical output "
                "from real images" if key["pick"] == "random" else
                f"fakes picked by the discriminator (best of {key['candidates_per_image']}): the scores describe the "
                "generator's most convincing outputs, not its typical ones, and favour 'indistinguishable'")
    return {"study_id": key["study_id"], "experiment": key["experiment"], "pick": key["pick"], "validity": validity,
            "design": "one fair coin per image (count not stated), one image at a time",
            "n_images": len(ids), "n_real": n_real, "n_fake": n_fake, "confidence_level": LEVEL,
            "readers": per_reader, "pooled": pooled}


def mlflow_metrics(scores: dict[str, Any]) -> dict[str, float]:
    """Flat ``reader_study/<reader>/<measure>`` values and interval ends for MLflow."""
    flat: dict[str, float] = {}
    blocks = {**{f"reader_study/{name}": block for name, block in scores["readers"].items()},
              "reader_study/pooled": scores["pooled"]}
    for prefix, block in blocks.items():
        for measure in (*PROPORTIONS, "auc"):
            entry = block[measure]
            if entry.get("value") is None:
                continue
            flat[f"{prefix}/{measure}"] = float(entry["value"])
            if "ci95" in entry:
                flat[f"{prefix}/{measure}_ci95_low"], flat[f"{prefix}/{measure}_ci95_high"] = map(float, entry["ci95"])
        flat[f"{prefix}/p_value_vs_chance"] = float(block["p_value_vs_chance"])
    return flat


def answer_figure(key: dict[str, Any], readers: Sequence[ReaderAnswers], images_dir: Path, out_png: Path,
                  columns: int = 6) -> None:
    """The images in the order shown, each with its truth and every reader's answer (right or wrong)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image

    from pipeline.reader_study.render import SCREEN_MAX, windowed

    window = tuple(key["settings"]["display_window"])
    entries = key["images"]
    cols = min(columns, len(entries))
    rows = -(-len(entries) // cols)
    tile_in, text_in = 2.0, 0.22 * (len(readers) + 1)
    fig, axes = plt.subplots(rows, cols, figsize=(cols * tile_in, rows * (tile_in + text_in)), squeeze=False)
    colour = {REAL: "#2c7fb8", FAKE: "#e6550d"}
    for ax in axes.flat:
        ax.axis("off")
    for ax, entry in zip(axes.flat, entries):
        path = Path(images_dir) / Path(entry["file"]).name
        if not path.is_file():
            raise InputDataError(path, "image of the study not found (keep images/ beside key.json)")
        ax.axis("on")
        ax.imshow(windowed(np.asarray(Image.open(path)), window), cmap="gray", vmin=0, vmax=SCREEN_MAX,
                  interpolation="nearest")
        ax.set_xticks([])
        ax.set_yticks([])
        for spine in ax.spines.values():
            spine.set_edgecolor(colour[entry["truth"]])
            spine.set_linewidth(4)
        truth = "generated" if entry["truth"] == FAKE else "real"
        ax.set_title(f"#{entry['position']}  {truth}", fontsize=9, color=colour[entry["truth"]], fontweight="bold")
        lines = []
        for reader in readers:
            said = reader.answers[entry["image_id"]]
            mark = "right" if said == entry["truth"] else "WRONG"
            conf = f" ({reader.confidence[entry['image_id']]})" if reader.confidence else ""
            lines.append(f"{reader.reader}: {'generated' if said == FAKE else 'real'}{conf} {mark}")
        ax.set_xlabel("\n".join(lines), fontsize=7)
    fig.suptitle(f"Reader study {key['study_id']} ({key['experiment']}, pick: {key['pick']}): "
                 "frame = truth (blue real, orange generated)", fontsize=10)
    fig.tight_layout()
    try:
        with atomic_path(out_png) as tmp:
            fig.savefig(tmp, dpi=120, format="png")
    finally:
        plt.close(fig)
