"""Score a reader study: answers CSVs against key.json, per reader and pooled, with a figure.

Per reader ("fake" is the positive class):
- ``accuracy``: correct answers / all images;
- ``fakes_taken_for_real``: generated images answered "real" / generated images;
- ``sensitivity_fake``: generated answered "generated" / generated (= 1 - the above);
- ``specificity_fake``: real answered "real" / real;
each with an exact Clopper-Pearson 95% interval (scipy ``binomtest(...).proportion_ci(method="exact")``)
over the images, and ``p_value_vs_chance``, the two-sided exact binomial test of accuracy 0.5.
- ``auc`` (when the study asked for confidences): the answer and its confidence make one
  10-point rating of "generated" (generated with confidence c: 5 + c; real with confidence c:
  6 - c), and the AUC is the Mann-Whitney probability that a generated image is rated above a
  real one (ties count half), with a percentile bootstrap interval over images (real and
  generated resampled separately, ``n_boot`` replicates, the key's seed).

Pooled over readers: the same proportions over every (reader, image) answer, and the mean of the
readers' AUCs. Every reader saw the same images, so answers are not independent across readers:
the pooled intervals are percentile bootstraps over images (each resampled image brings all its
readers' answers), not binomial intervals over answers.

An interval that contains 0.5 (accuracy, AUC) says the study could not tell this reader from
chance; with 24 images it is wide (about 0.29-0.71 at 12 / 24 correct), which is no proof that
the images are indistinguishable. docs/reader-study.md says more.
"""
from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from scipy.stats import binomtest

from pipeline.atomic import atomic_path
from pipeline.errors import InputDataError
from pipeline.reader_study import ANSWER_COLUMNS, CONFIDENCE_LEVELS, FAKE, KEY_FORMAT, REAL, TRUTHS
from pipeline.reader_study.draw import stream

LEVEL = 0.95
CHANCE = 0.5
PROPORTIONS = ("accuracy", "fakes_taken_for_real", "sensitivity_fake", "specificity_fake")


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
    if not isinstance(key, dict) or key.get("format") != KEY_FORMAT or not isinstance(key.get("images"), list):
        raise InputDataError(path, f"is not a reader-study key.json of format {KEY_FORMAT}")
    for entry in key["images"]:
        if entry.get("truth") not in TRUTHS or not entry.get("image_id"):
            raise InputDataError(path, f"image entry {entry.get('image_id')!r} has no valid truth")
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
    ci = binomtest(int(k), int(n)).proportion_ci(confidence_level=LEVEL, method="exact")
    return {"value": k / n, "k": int(k), "n": int(n), "ci95": [float(ci.low), float(ci.high)],
            "ci_method": "clopper_pearson_exact"}


def ratings(answers: np.ndarray, confidence: np.ndarray) -> np.ndarray:
    """10-point rating of "generated" from answer (True = fake) and confidence 1..5."""
    top = CONFIDENCE_LEVELS[-1]
    return np.where(answers, top + confidence, top + 1 - confidence)


def auc(fake_ratings: np.ndarray, real_ratings: np.ndarray) -> np.ndarray:
    """Mann-Whitney AUC along the last axis (leading axes: bootstrap replicates)."""
    diff = fake_ratings[..., :, None] - real_ratings[..., None, :]
    return (diff > 0).mean(axis=(-2, -1)) + 0.5 * (diff == 0).mean(axis=(-2, -1))


def _percentile(values: np.ndarray) -> list[float]:
    tail = (1 - LEVEL) / 2 * 100
    low, high = np.percentile(values, [tail, 100 - tail])
    return [float(low), float(high)]


def _rates(said_fake: np.ndarray, is_fake: np.ndarray) -> dict[str, np.ndarray]:
    """The four proportions over the last two axes (reader, image) of answer matrices."""
    correct = said_fake == is_fake
    fake, real = is_fake, ~is_fake
    n_fake, n_real = fake.sum(axis=-1, keepdims=True), real.sum(axis=-1, keepdims=True)
    return {
        "accuracy": correct.mean(axis=(-2, -1)),
        "fakes_taken_for_real": ((~said_fake & fake).sum(-1) / n_fake[..., 0]).mean(-1),
        "sensitivity_fake": ((said_fake & fake).sum(-1) / n_fake[..., 0]).mean(-1),
        "specificity_fake": ((~said_fake & real).sum(-1) / n_real[..., 0]).mean(-1),
    }


def score_study(key: dict[str, Any], readers: Sequence[ReaderAnswers], n_boot: int, seed: int) -> dict[str, Any]:
    """scores.json's content (see the module doc)."""
    ids = [entry["image_id"] for entry in key["images"]]
    is_fake = np.array([entry["truth"] == FAKE for entry in key["images"]])
    said_fake = np.array([[r.answers[i] == FAKE for i in ids] for r in readers])
    with_confidence = all(r.confidence is not None for r in readers)
    rated = (ratings(said_fake, np.array([[r.confidence[i] for i in ids] for r in readers]))
             if with_confidence else None)
    rng = stream(seed, "bootstrap")  # one set of resamples shared by every reader and the pooled scores
    fake_idx, real_idx = np.flatnonzero(is_fake), np.flatnonzero(~is_fake)
    boot = np.concatenate([rng.choice(fake_idx, size=(n_boot, len(fake_idx))),
                           rng.choice(real_idx, size=(n_boot, len(real_idx)))], axis=1)
    n_fake = len(fake_idx)
    per_reader: dict[str, Any] = {}
    for r, reader in enumerate(readers):
        correct = int((said_fake[r] == is_fake).sum())
        block = {
            "file": str(reader.path), "n_images": len(ids),
            "accuracy": proportion(correct, len(ids)),
            "fakes_taken_for_real": proportion(int((~said_fake[r] & is_fake).sum()), n_fake),
            "sensitivity_fake": proportion(int((said_fake[r] & is_fake).sum()), n_fake),
            "specificity_fake": proportion(int((~said_fake[r] & ~is_fake).sum()), len(real_idx)),
            "p_value_vs_chance": float(binomtest(correct, len(ids), CHANCE).pvalue),
        }
        if rated is None:
            block["auc"] = {"value": None, "reason": "the study asked for no confidences"}
        else:
            value = float(auc(rated[r][fake_idx], rated[r][real_idx]))
            replicates = auc(rated[r][boot[:, :n_fake]], rated[r][boot[:, n_fake:]])
            block["auc"] = {"value": value, "ci95": _percentile(replicates), "ci_method": "bootstrap_images_percentile",
                            "n_boot": n_boot}
        per_reader[reader.reader] = block
    pooled_point = _rates(said_fake, is_fake)
    pooled_boot = _rates(said_fake[:, boot].transpose(1, 0, 2), is_fake[boot][:, None, :])
    pooled: dict[str, Any] = {"n_readers": len(readers), "n_answers": int(said_fake.size)}
    for name in PROPORTIONS:
        pooled[name] = {"value": float(pooled_point[name]), "ci95": _percentile(pooled_boot[name]),
                        "ci_method": "bootstrap_images_percentile", "n_boot": n_boot}
    if rated is None:
        pooled["auc"] = {"value": None, "reason": "the study asked for no confidences"}
    else:
        fake_r, real_r = rated[:, boot[:, :n_fake]], rated[:, boot[:, n_fake:]]
        pooled["auc"] = {"value": float(auc(rated[:, fake_idx], rated[:, real_idx]).mean()),
                         "ci95": _percentile(auc(fake_r, real_r).mean(axis=0)),
                         "definition": "mean of the readers' AUCs", "ci_method": "bootstrap_images_percentile",
                         "n_boot": n_boot}
    validity = ("fakes drawn at random: the scores estimate how well readers tell the generator's typical output "
                "from real images" if key["pick"] == "random" else
                f"fakes picked by the discriminator (best of {key['candidates_per_image']}): the scores describe the "
                "generator's most convincing outputs, not its typical ones, and favour 'indistinguishable'")
    return {"study_id": key["study_id"], "experiment": key["experiment"], "pick": key["pick"], "validity": validity,
            "n_real": int((~is_fake).sum()), "n_fake": n_fake, "confidence_level": LEVEL, "seed": seed,
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
            flat[f"{prefix}/{measure}_ci95_low"], flat[f"{prefix}/{measure}_ci95_high"] = map(float, entry["ci95"])
        if "p_value_vs_chance" in block:
            flat[f"{prefix}/p_value_vs_chance"] = block["p_value_vs_chance"]
    return flat


def answer_figure(key: dict[str, Any], readers: Sequence[ReaderAnswers], images_dir: Path, out_png: Path,
                  columns: int = 6) -> None:
    """The grid as shown, each image with its truth and every reader's answer (right or wrong)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image

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
        ax.imshow(np.asarray(Image.open(path)), cmap="gray", vmin=0, vmax=255, interpolation="nearest")
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
