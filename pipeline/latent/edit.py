"""Disease-aware editing (report 004, Fig. 2C-D): move held-out healthy codes along a latent
direction toward cardiomegaly and measure what the edit did.

Directions (unit vectors in w, or in flattened W+ when the codes differ per layer):
- ``encoder_pair`` (the report's recipe): v = normalise(mean_k E(I*_k) - E(I_k)) over the first
  ``direction_pairs`` patients of the phantom's CTR ladder, I the patient's own healthy render
  and I* the same patient rendered with the ladder's largest heart (the report edited I by hand
  in an image editor; here the pair is exact). Those patients are left out of the ladder check.
- ``lda``: the separation stage's LDA normal (pointing toward cardiomegaly); absent when the
  separation stage had too few codes of a class to fit LDA.
- ``ctr_regression`` (``ctr_regression_samples`` > 0): the least-squares direction of the CTR the
  segmenter measures on ``ctr_regression_samples`` of G's own samples, regressed on their w
  (InterFaceGAN's recipe with a measured continuous attribute instead of a classifier's labels);
  needs neither labels nor the encoder.

Each held-out (validation / test) healthy image's optimised code w (up to ``max_images``) becomes w + alpha v for
every alpha in ``alphas``; alpha 0 is the unedited reconstruction. ``alpha_unit`` sets the length of v:
``w`` (a unit vector), ``w_std`` (each direction as long as the standard deviation of G's own codes
along it: ``w_std_samples`` mapped z, projected on the direction; alpha 1 is one standard
deviation of the codes G draws along that direction, whatever the scale of G's w space, as
GANSpace counts its edits; each direction has its own length in w, written to
``step_length``) or ``pair_distance`` (v as long as the encoder-pair difference |mean E(I*) - E(I)|, for
all directions: alpha 1 is the encoder's own estimate of the move from a patient's healthy heart to
the ladder's largest one; an encoder that shrinks its codes toward G's mean w shrinks that unit
with them: measured on the proof run, a pair distance of 0.34 against a spread of 1.8 of G's codes
along the same direction, docs/experiment-stylegan-cxr.md). Measures per edited image:
- CTR, from the label map a heart / thorax segmenter (``pipeline/evaluate/measures/segmenter.py``, the
  U-Net of pipeline/evaluate/measures/segmenter.py, trained by its own rule on phantom slices with truth maps) predicts, through
  ``pipeline.preprocess.ctr.ctr_from_masks``; the segmenter's own CTR error on the held-out
  phantom test slices (|CTR from predicted map - truth CTR|) is reported beside it;
- the real-data classifier's cardiomegaly probability (``pipeline/evaluate/measures/classifier.py``,
  trained on real train slices by its own rule), beside its AUC and balanced accuracy on the
  held-out real slices, and null with the reason when it fails that check (no better than chance,
  or outputs hovering at 0.5: ``classifier_real_test``);
- identity: SSIM between the edited image and the unedited reconstruction over the thorax
  outside the heart (``thorax_outside_heart``: pixels the segmenter calls thorax or heart in
  either image, less the union of the heart masks predicted in both), the skimage SSIM map (Wang
  et al. window, data range 1) averaged over those pixels. Not over the flat background beside
  the body, where SSIM is about 1 whatever the edit, and which would lift the average towards 1
  by its share of the film;
- on the phantom's ladder patients (not used for the direction): SSIM of the edited image against
  the patient's true render at the ladder CTR nearest the CTR the edit reached.
CTR change per unit alpha: the least-squares slope of CTR on alpha per image, averaged, with the
subject-bootstrap interval; the same for the classifier probability.

Where the edit reaches cardiomegaly (``at_target_ctr``): the smallest alpha whose mean measured CTR
has its whole 95% interval at or above ``target_ctr`` (the phantom's cardiomegaly threshold, 0.5),
else the alpha with the largest mean CTR (``reached`` false); at that alpha the CTR, the identity
SSIM outside the heart and P(cardiomegaly), each with its interval over subjects, plus the share of
images whose own CTR reaches the target at some alpha. The alpha is chosen on the same images it
is scored on; CTR rises with alpha when the edit works, so the choice is the first step past the
target, not a search for the best-looking one.
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipeline.atomic import atomic_path, write_json
from pipeline.errors import ConfigError, InputDataError, PipelineError

log = logging.getLogger("pipeline.latent.edit")

DEFAULT_SETTINGS: dict[str, Any] = {
    "alphas": [0.0, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0],   # steps along the direction, in alpha_unit
    "direction": "encoder_pair",           # the headline direction: encoder_pair | lda
    "direction_pairs": 1,                  # ladder patients whose (healthy, enlarged) pair makes v (report: 1)
    "max_images": 32,                      # held-out healthy test images edited
    "n_figure_images": 4,                  # rows of the edit-sequence figure
    "target_ctr": 0.5,                     # CTR an edit toward cardiomegaly should reach (the phantom's threshold)
    "alpha_unit": "w_std",                 # w_std (G's codes' std along each direction) | w (unit steps) | pair_distance
    "w_std_samples": 2000,                 # mapped z whose spread along each direction is its unit (alpha_unit w_std;
                                           # not inversion's n_w_std_samples: one overall spread for its noise)
    "ctr_regression_samples": 0,           # G samples whose measured CTR is regressed on w (0: no ctr_regression direction)
}
DIRECTIONS = ("encoder_pair", "lda", "ctr_regression")
ALPHA_UNITS = ("w", "w_std", "pair_distance")


def unit_direction(difference: np.ndarray, per_layer: bool) -> np.ndarray:
    """A (num_ws, w_dim) code difference as a unit (num_ws, w_dim) step: in W (``per_layer`` False)
    the first layer's w normalised and repeated; in W+ the whole flattened difference normalised."""
    difference = np.asarray(difference, np.float64)
    if per_layer:
        norm = np.linalg.norm(difference)
        if norm == 0:
            raise ConfigError("the edit direction is zero: the encoder codes of the pair are identical")
        return difference / norm
    w = difference[0]
    norm = np.linalg.norm(w)
    if norm == 0:
        raise ConfigError("the edit direction is zero: the encoder codes of the pair are identical")
    return np.repeat((w / norm)[None], len(difference), axis=0)


def difference_length(difference: np.ndarray, per_layer: bool) -> float:
    """Length of a (num_ws, w_dim) code difference as ``unit_direction`` measures it: the first
    layer's w in W, the whole flattened difference in W+."""
    difference = np.asarray(difference, np.float64)
    return float(np.linalg.norm(difference if per_layer else difference[0]))


def regression_direction(w: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, float]:
    """Unit vector of the least-squares fit of ``values`` (n,) on codes ``w`` (n, w_dim) with an
    intercept (rows with a non-finite value left out), and the fit's R^2."""
    w, values = np.asarray(w, np.float64), np.asarray(values, np.float64)
    keep = np.isfinite(values)
    if keep.sum() <= w.shape[1] + 1:
        raise ConfigError(f"the CTR regression needs more than {w.shape[1] + 1} samples with a measured CTR, "
                          f"got {int(keep.sum())}: raise edit.ctr_regression_samples")
    x, y = w[keep] - w[keep].mean(axis=0), values[keep] - values[keep].mean()
    coef = np.linalg.lstsq(x, y, rcond=None)[0]
    norm = np.linalg.norm(coef)
    if norm == 0:
        raise ConfigError("the CTR regression direction is zero: the measured CTR does not vary with w")
    r2 = 1.0 - float(np.sum((y - x @ coef) ** 2) / np.sum(y ** 2)) if np.sum(y ** 2) > 0 else float("nan")
    return coef / norm, r2


def spread_along(step: np.ndarray, sample_ws: np.ndarray) -> float:
    """The multiplier that makes ``step`` (num_ws, w_dim) one standard deviation (ddof 1) of G's codes
    along it. G's codes ``sample_ws`` (n, w_dim) are repeated over the layers, so in the flattened
    code space their projection on the step's direction is ``w . sum_l step_l / |step|`` and its
    standard deviation sigma; the move ``sigma * step / |step|`` is ``step`` times
    ``sigma / |step|``, i.e. ``std(w . sum_l step_l) / |step|^2``. One formula whatever the step's
    scale: a unit w repeated over the layers (W) moves each layer by the std of ``w . u``; a step
    differing per layer (W+), or a W step normalised over all layers, the same way. A direction
    along which G's codes do not vary (or a non-finite spread) is an error, never a zero step."""
    step, sample_ws = np.asarray(step, np.float64), np.asarray(sample_ws, np.float64)
    if len(sample_ws) < 2:
        raise ConfigError("edit.w_std_samples must be >= 2 to measure the codes' spread")
    norm2 = float(np.sum(step ** 2))
    multiplier = float(np.std(sample_ws @ step.sum(axis=0), ddof=1)) / norm2 if norm2 > 0 else float("nan")
    if not np.isfinite(multiplier) or multiplier <= 1e-12:
        raise ConfigError(f"G's codes do not vary along this edit direction (spread {multiplier!r}): "
                          "alpha_unit w_std has no unit here; use alpha_unit w")
    return multiplier


def direction_as_code(vector: np.ndarray, num_ws: int, w_dim: int) -> np.ndarray:
    """A unit vector of w_dim (repeated over layers) or num_ws * w_dim entries as a (num_ws, w_dim) step."""
    vector = np.asarray(vector, np.float64).ravel()
    if vector.size == w_dim:
        return np.repeat(vector[None], num_ws, axis=0)
    if vector.size == num_ws * w_dim:
        return vector.reshape(num_ws, w_dim)
    raise ConfigError(f"the LDA direction has {vector.size} entries, codes have {w_dim} (W) or {num_ws * w_dim} (W+)")


def apply_edit(codes: np.ndarray, step: np.ndarray, alphas: list[float]) -> np.ndarray:
    """(n, num_ws, w_dim) codes -> (n, n_alphas, num_ws, w_dim) codes w + alpha v."""
    alphas_arr = np.asarray(alphas, np.float64)[None, :, None, None]
    return np.asarray(codes, np.float64)[:, None] + alphas_arr * np.asarray(step)[None, None]


def slopes(alphas: list[float], values: np.ndarray) -> np.ndarray:
    """Least-squares slope of each row of ``values`` (n, n_alphas) on alpha (NaN entries left out)."""
    x = np.asarray(alphas, np.float64)
    out = np.full(len(values), np.nan)
    for i, row in enumerate(np.asarray(values, np.float64)):
        keep = np.isfinite(row)
        if keep.sum() >= 2 and np.ptp(x[keep]) > 0:
            out[i] = np.polyfit(x[keep], row[keep], 1)[0]
    return out


def ssim_outside(reference: np.ndarray, test: np.ndarray, outside: np.ndarray) -> float:
    """Mean of the SSIM map of two [0, 1] images over the ``outside`` pixels (NaN if none)."""
    from skimage.metrics import structural_similarity

    from pipeline.evaluate.measures.image_metrics import SSIM_SETTINGS

    if not outside.any():
        return float("nan")
    _, ssim_map = structural_similarity(reference.astype(np.float64), test.astype(np.float64), data_range=1.0,
                                        gaussian_weights=SSIM_SETTINGS["gaussian_weights"],
                                        sigma=SSIM_SETTINGS["sigma"],
                                        use_sample_covariance=SSIM_SETTINGS["use_sample_covariance"],
                                        K1=SSIM_SETTINGS["K1"], K2=SSIM_SETTINGS["K2"], full=True)
    return float(ssim_map[outside].mean())


def thorax_outside_heart(base_map: np.ndarray, edited_map: np.ndarray) -> np.ndarray:
    """Pixels of the body that are heart in neither segmentation: (thorax or heart in either map)
    and not heart in either (pipeline.labels CTR classes)."""
    from pipeline.labels import CTR_BACKGROUND, CTR_HEART

    body = (base_map != CTR_BACKGROUND) | (edited_map != CTR_BACKGROUND)
    return body & (base_map != CTR_HEART) & (edited_map != CTR_HEART)


def first_alpha_reaching(ctr_summaries: list[dict], target: float) -> tuple[int, bool]:
    """Index of the first alpha whose CTR interval lies wholly at or above ``target`` (and True),
    else of the alpha with the largest mean CTR (and False); summaries as ``summarise`` writes them."""
    for a, summary in enumerate(ctr_summaries):
        if summary.get("ci95") is not None and summary["ci95"][0] >= target:
            return a, True
    means = [s["mean"] if s.get("mean") is not None else -np.inf for s in ctr_summaries]
    return int(np.argmax(means)), False


def at_target_block(alphas: list[float], ctr: np.ndarray, identity: np.ndarray, probability: np.ndarray,
                    subjects: np.ndarray, target: float, policy) -> dict:
    """CTR, identity SSIM outside the heart and P(cardiomegaly) at the first alpha where the edit
    reaches ``target`` (``first_alpha_reaching``), with the share of images that reach it at all."""
    ctr_summaries = [_summary(ctr[:, a], subjects, policy) for a in range(len(alphas))]
    base = int(np.argmin(np.abs(np.asarray(alphas))))
    base_mean = ctr_summaries[base]["mean"]
    if base_mean is None or base_mean >= target:
        reason = (f"the unedited reconstructions measure a mean CTR of {base_mean:.3f}, already at or above {target:g}: "
                  "they are not healthy hearts, so no edit can show reaching it" if base_mean is not None
                  else "the unedited reconstructions have no measured CTR")
        null = {"mean": None, "ci95": None, "reason": reason}
        return {"target_ctr": float(target), "reached": False, "alpha": None, "reason": reason, "ctr": null,
                "identity_ssim_outside_heart": null, "probability": null, "share_of_images_reaching": null}
    edited = [i for i in range(len(alphas)) if i != base]
    k, reached = first_alpha_reaching([ctr_summaries[i] for i in edited], target)
    a = edited[k]
    per_image_reached = (np.nan_to_num(ctr, nan=-np.inf) >= target).any(axis=1).astype(np.float64)
    return {"what": f"the first edited alpha whose mean CTR interval lies wholly at or above {target:g} (else the alpha "
                    "of the largest mean CTR); CTR, identity SSIM over the thorax outside the heart and P(cardiomegaly) there",
            "target_ctr": float(target), "reached": bool(reached), "alpha": float(alphas[a]),
            "ctr": ctr_summaries[a],
            "identity_ssim_outside_heart": _summary(identity[:, a], subjects, policy),
            "probability": _summary(probability[:, a], subjects, policy),
            "share_of_images_reaching": _summary(per_image_reached, subjects, policy)}


def measure_ctr(maps: np.ndarray) -> np.ndarray:
    from pipeline.preprocess.ctr import ctr_from_masks

    return np.array([ctr_from_masks(m) for m in maps], np.float64)


def measure_widths(maps: np.ndarray) -> np.ndarray:
    """(n, 2) heart and thoracic widths in pixels, as ``ctr_from_masks`` measures them (NaN where
    the map has no heart or no thorax, as the CTR is)."""
    from pipeline.preprocess.ctr import heart_width_px, thoracic_width_px

    out = np.array([[heart_width_px(m), thoracic_width_px(m)] for m in maps], np.float64).reshape(-1, 2)
    out[(out == 0).any(axis=1)] = np.nan
    return out


def _summary(values: np.ndarray, subjects: np.ndarray, policy) -> dict:
    from pipeline.evaluate.measures.summary import summarise

    return summarise(np.asarray(values, np.float64), subjects, policy)


class EditMeasures:
    """The segmenter and the classifier, applied to stacks of images in [0, 1]."""

    def __init__(self, segmenter_path: Path, classifier_path: Path, device: str = "cpu"):
        from pipeline.evaluate.measures.classifier import load_classifier
        from pipeline.evaluate.measures.segmenter import load_segmenter

        self.segmenter, self.segmenter_checkpoint = load_segmenter(segmenter_path, device)
        names = list(self.segmenter_checkpoint["organ_names"])
        if names[:3] != ["background", "thorax", "heart"]:
            raise InputDataError(Path(segmenter_path), f"segments {names}, not background / thorax / heart")
        self.classifier, self.classifier_checkpoint = load_classifier(classifier_path, device)

    def maps(self, images: np.ndarray) -> np.ndarray:
        from pipeline.evaluate.measures.segmenter import predict_maps

        return predict_maps(self.segmenter, images)

    def probability(self, images: np.ndarray) -> np.ndarray:
        from pipeline.evaluate.measures.classifier import probability_of_b

        return probability_of_b(self.classifier, self.classifier_checkpoint, images)

    def real_test_check(self, test: dict[str, np.ndarray], policy) -> dict:
        """The classifier on the held-out real slices with a 0 / 1 label (classifier.real_test_check)."""
        from pipeline.evaluate.measures.classifier import acceptance, real_test_check

        labels = np.asarray(test.get("labels", np.full(len(test["images"]), -1)))
        known = np.isin(labels, (0, 1))
        return real_test_check(self.probability(test["images"][known]), labels[known], test["subject_ids"][known],
                               policy, *acceptance(self.classifier_checkpoint),
                               class_names=tuple(self.classifier_checkpoint.get("class_names", ("0", "1"))))


def classifier_scores_checked(block: dict, check: dict) -> dict:
    """An edit block's P(cardiomegaly) numbers beside the classifier's real-test AUC and balanced
    accuracy, nulled with the reason when the classifier fails its real-test check."""
    from pipeline.evaluate.measures.classifier import beside, null_summary

    out = block | beside(check) | {"probability_reason": check["reason"]}
    if not check["usable"]:
        null = lambda summary: null_summary(summary["n"], summary["n_subjects"], check["reason"])
        out["probability_per_alpha"] = [{"alpha": entry["alpha"], **null(entry)} for entry in block["probability_per_alpha"]]
        out["probability_slope_per_unit_alpha"] = null(block["probability_slope_per_unit_alpha"])
        at_target = block.get("at_target_ctr")
        if at_target and (at_target.get("probability") or {}).get("n") is not None:  # measured there: null it too
            out["at_target_ctr"] = at_target | {"probability": null(at_target["probability"])}
    return out


def edit_block(sampler, measures: EditMeasures, codes: np.ndarray, subjects: np.ndarray, step: np.ndarray,
               alphas: list[float], policy, target_ctr: float = DEFAULT_SETTINGS["target_ctr"]
               ) -> tuple[dict, dict[str, np.ndarray]]:
    """Edit every code along ``step`` and measure CTR, probability and identity per alpha."""
    from pipeline.latent.invert import render

    edited = apply_edit(codes, step, alphas)
    n, n_alpha = edited.shape[:2]
    images = render(sampler, torch.from_numpy(edited.reshape(n * n_alpha, *edited.shape[2:])).float())
    maps = measures.maps(images)
    ctr = measure_ctr(maps).reshape(n, n_alpha)
    widths = measure_widths(maps).reshape(n, n_alpha, 2)
    probability = measures.probability(images).reshape(n, n_alpha)
    images = images.reshape(n, n_alpha, *images.shape[1:])
    maps = maps.reshape(n, n_alpha, *maps.shape[1:])
    base = int(np.argmin(np.abs(np.asarray(alphas))))
    identity = np.full((n, n_alpha), np.nan)
    for i in range(n):
        for a in range(n_alpha):
            if a != base:
                identity[i, a] = ssim_outside(images[i, base], images[i, a], thorax_outside_heart(maps[i, base],
                                                                                                   maps[i, a]))
    edited_cols = [a for a in range(n_alpha) if a != base]
    block = {
        "n_images": int(n), "n_subjects": int(len(np.unique(subjects))),
        "alphas": [float(a) for a in alphas],
        "ctr_per_alpha": [{"alpha": float(alpha), **_summary(ctr[:, a], subjects, policy)}
                          for a, alpha in enumerate(alphas)],
        "ctr_slope_per_unit_alpha": _summary(slopes(alphas, ctr), subjects, policy),
        # the CTR's two parts: a heart that widens, or a thorax that narrows (the same ratio either way)
        "heart_width_px_per_alpha": [{"alpha": float(alpha), **_summary(widths[:, a, 0], subjects, policy)}
                                     for a, alpha in enumerate(alphas)],
        "thorax_width_px_per_alpha": [{"alpha": float(alpha), **_summary(widths[:, a, 1], subjects, policy)}
                                      for a, alpha in enumerate(alphas)],
        "heart_width_slope_px_per_unit_alpha": _summary(slopes(alphas, widths[..., 0]), subjects, policy),
        "thorax_width_slope_px_per_unit_alpha": _summary(slopes(alphas, widths[..., 1]), subjects, policy),
        "probability_per_alpha": [{"alpha": float(alpha), **_summary(probability[:, a], subjects, policy)}
                                  for a, alpha in enumerate(alphas)],
        "probability_slope_per_unit_alpha": _summary(slopes(alphas, probability), subjects, policy),
        "identity_ssim_outside_heart": _summary(np.nanmean(identity[:, edited_cols], axis=1)
                                                if edited_cols else np.full(n, np.nan), subjects, policy),
        "identity_ssim_outside_heart_per_alpha": [{"alpha": float(alpha), **_summary(identity[:, a], subjects, policy)}
                                                  for a, alpha in enumerate(alphas) if a != base],
        "at_target_ctr": at_target_block(alphas, ctr, np.where(np.arange(n_alpha) == base, 1.0, identity), probability,
                                         subjects, target_ctr, policy),
    }
    return block, {"images": images, "ctr": ctr, "probability": probability}


def ladder_block(sampler, measures: EditMeasures, ladder: dict[str, np.ndarray], ladder_codes: np.ndarray,
                 patients: np.ndarray, step: np.ndarray, alphas: list[float], policy) -> dict | None:
    """SSIM of each edit of a ladder patient's own render against its true render at the nearest CTR."""
    from pipeline.evaluate.measures.image_metrics import ssim_per_image

    if not len(patients):
        return None
    block, out = edit_block(sampler, measures, ladder_codes[patients], ladder["subject_ids"][patients].astype(str),
                            step, alphas, policy)
    truth_ctr = ladder["ctr"][patients]
    per_image = []
    for i, p in enumerate(patients):
        nearest = [int(np.nanargmin(np.abs(truth_ctr[i] - c))) if np.isfinite(c) else None for c in out["ctr"][i]]
        values = [ssim_per_image(ladder["images"][p][k][None], out["images"][i, a][None])[0]
                  for a, k in enumerate(nearest) if k is not None]
        per_image.append(np.mean(values) if values else np.nan)
    subjects = ladder["subject_ids"][patients].astype(str)
    return {"n_patients": int(len(patients)),
            "what": "SSIM (full image) of each edit against the same patient's true render at the ladder CTR "
                    "nearest the CTR measured on the edit, mean over alphas",
            "ssim_vs_true_render": _summary(np.asarray(per_image), subjects, policy),
            "ctr_slope_per_unit_alpha": block["ctr_slope_per_unit_alpha"]}


def segmenter_ctr_error(measures: EditMeasures, test: dict[str, np.ndarray], policy) -> dict:
    """|CTR(predicted map) - truth CTR| on held-out phantom slices (real data has no truth: null)."""
    truth = test.get("ctr")
    if truth is None or not np.isfinite(truth).any():
        return {"ctr_abs_error": None, "reason": "the test slices carry no truth CTR (real data)"}
    keep = np.isfinite(truth)
    predicted = measure_ctr(measures.maps(test["images"][keep]))
    subjects = test["subject_ids"][keep].astype(str)
    return {"what": "segmenter's CTR error on held-out phantom test slices: |CTR of the predicted map - truth CTR|",
            "ctr_abs_error": _summary(np.abs(predicted - truth[keep]), subjects, policy),
            "n_no_ctr": int(np.sum(~np.isfinite(predicted)))}


def run_edits(generator_path: Path, encoder_path: Path, codes_path: Path, direction_path: Path, ladder_path: Path,
              test_path: Path, segmenter_path: Path, classifier_path: Path, settings: dict[str, Any], seed: int,
              policy, device: str = "cpu") -> tuple[dict, dict[str, np.ndarray]]:
    """The edit section and the figures' arrays; G, the encoder, the segmenter and the classifier
    run on ``device``."""
    from pipeline.latent.invert import load_test_images, render
    from pipeline.models import load_trained
    from pipeline.models.stylegan2_encoder import load_frozen_generator

    if settings.get("alpha_unit", "w") not in ALPHA_UNITS:
        raise ConfigError(f"edit.alpha_unit must be one of {ALPHA_UNITS}, got {settings.get('alpha_unit')!r}")
    settings = {**DEFAULT_SETTINGS, **settings}
    if settings["direction"] not in DIRECTIONS:
        raise ConfigError(f"edit.direction must be one of {DIRECTIONS}, got {settings['direction']!r}")
    if settings["direction"] == "ctr_regression" and int(settings["ctr_regression_samples"]) <= 0:
        raise ConfigError("edit.direction ctr_regression needs edit.ctr_regression_samples > 0")
    alphas = [float(a) for a in settings["alphas"]]
    if len(alphas) < 2 or 0.0 not in alphas:
        raise ConfigError(f"edit.alphas needs 0 (the unedited reconstruction) and at least one more value, got {alphas}")
    sampler = load_frozen_generator(generator_path, device)
    encoder = load_trained(encoder_path, device)
    num_ws, w_dim = int(sampler.num_ws), int(sampler.w_dim)
    with np.load(codes_path, allow_pickle=False) as data:
        codes = {k: data[k] for k in data.files}
    with np.load(ladder_path, allow_pickle=False) as data:
        ladder = {k: data[k] for k in data.files}
    with np.load(direction_path, allow_pickle=False) as data:
        lda_vector = data["direction"]
    test = load_test_images(test_path, sampler.image_size)
    measures = EditMeasures(segmenter_path, classifier_path, device)

    n_pairs = int(settings["direction_pairs"])
    if not 1 <= n_pairs < len(ladder["images"]):
        raise ConfigError(f"edit.direction_pairs must be in 1..{len(ladder['images']) - 1} (ladder of "
                          f"{len(ladder['images'])} patients; the rest check the edits), got {n_pairs}")
    base_idx = ladder["base_index"].astype(int)
    enlarged_idx = np.nanargmax(ladder["ctr"], axis=1)
    pairs = range(n_pairs)
    base_images = np.stack([ladder["images"][p, base_idx[p]] for p in pairs])
    enlarged_images = np.stack([ladder["images"][p, enlarged_idx[p]] for p in pairs])
    difference = (encoder.encode(enlarged_images).numpy() - encoder.encode(base_images).numpy()).mean(axis=0)
    per_layer = codes["real_codes_optimisation"].shape[1] > 1 and not np.allclose(
        codes["real_codes_optimisation"], codes["real_codes_optimisation"][:, :1])
    steps = {"encoder_pair": unit_direction(difference, per_layer)}
    if lda_vector.size:
        steps["lda"] = direction_as_code(lda_vector, num_ws, w_dim)
    elif settings["direction"] == "lda":
        raise InputDataError(Path(direction_path), "holds no LDA direction (too few codes of a class to fit LDA): "
                                                   "use edit.direction encoder_pair")
    regression = None
    if int(settings["ctr_regression_samples"]) > 0:
        z = sampler.noise(int(settings["ctr_regression_samples"]), seed=seed + 7)
        with torch.no_grad():
            sample_ws = sampler.mapping(z).float().cpu()
        sample_ctr = measure_ctr(measures.maps(render(sampler, sample_ws)))
        regression = {"n_samples": int(len(sample_ctr)), "n_measured": int(np.isfinite(sample_ctr).sum()),
                      "r2_in_sample": None, "reason": None}
        try:
            vector, regression["r2_in_sample"] = regression_direction(sample_ws[:, 0].numpy(), sample_ctr)
            steps["ctr_regression"] = direction_as_code(vector, num_ws, w_dim)
        except ConfigError as err:   # G's samples give too few measurable hearts: no such direction, said why
            if settings["direction"] == "ctr_regression":
                raise
            regression["reason"] = str(err)
    if settings["alpha_unit"] == "pair_distance":
        lengths = {name: difference_length(difference, per_layer) for name in steps}
    elif settings["alpha_unit"] == "w_std":
        z = sampler.noise(int(settings["w_std_samples"]), seed=seed + 11)
        with torch.no_grad():
            spread_ws = sampler.mapping(z).float().cpu()[:, 0].numpy()
        lengths = {name: spread_along(step, spread_ws) for name, step in steps.items()}
    else:
        lengths = {name: 1.0 for name in steps}
    steps = {name: step * lengths[name] for name, step in steps.items()}

    healthy = np.flatnonzero(codes["real_labels"] == 0)[: int(settings["max_images"])]
    if not len(healthy):
        raise InputDataError(Path(codes_path), "no healthy (label 0) test codes to edit")
    real_codes = codes["real_codes_optimisation"][healthy]
    subjects = codes["real_subject_ids"][healthy].astype(str)
    ladder_codes = codes.get("ladder_codes_optimisation")
    check_patients = np.arange(n_pairs, len(ladder["images"]))

    section: dict[str, Any] = {
        "what": "edits of held-out healthy test images along a latent direction toward cardiomegaly",
        "settings": {**settings, "seed": seed},
        "device": str(device),
        "headline_direction": settings["direction"],
        "step_length": {"alpha_unit": settings["alpha_unit"], "w_per_unit_alpha": lengths,
                        "encoder_pair_distance": difference_length(difference, per_layer),
                        "what": "length in w of the step alpha = 1, per direction (the encoder's pair distance "
                                "beside it)"},
        "direction_pairs": {"patients": [str(s) for s in ladder["subject_ids"][:n_pairs]],
                            "base_ctr": [float(ladder["ctr"][p, base_idx[p]]) for p in pairs],
                            "enlarged_ctr": [float(ladder["ctr"][p, enlarged_idx[p]]) for p in pairs]},
        "ctr_segmenter": segmenter_ctr_error(measures, test, policy),
        "ctr_regression": regression,
        "classifier_real_test": measures.real_test_check(test, policy),
        "directions": {},
    }
    figures: dict[str, np.ndarray] = {"alphas": np.asarray(alphas)}
    for name, step in steps.items():
        block, out = edit_block(sampler, measures, real_codes, subjects, step, alphas, policy,
                                float(settings["target_ctr"]))
        if ladder_codes is not None:
            block["vs_true_ladder"] = ladder_block(sampler, measures, ladder, ladder_codes, check_patients, step,
                                                   alphas, policy)
        section["directions"][name] = classifier_scores_checked(block, section["classifier_real_test"])
        figures.update({f"{name}_images": out["images"][: settings["n_figure_images"]], f"{name}_ctr": out["ctr"],
                        f"{name}_probability": out["probability"]})
    return section, figures


def edit_figures(figures: dict[str, np.ndarray], headline: str, sequence_png: Path, curves_png: Path) -> None:
    """Edit sequences with the measured CTR under each image, and CTR / probability against alpha."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    alphas = figures["alphas"]
    images, ctr = figures[f"{headline}_images"], figures[f"{headline}_ctr"]
    fig, axes = plt.subplots(len(images), len(alphas), figsize=(1.6 * len(alphas), 1.8 * len(images)), squeeze=False)
    for r in range(len(images)):
        for c, alpha in enumerate(alphas):
            ax = axes[r][c]
            ax.imshow(images[r, c], cmap="gray", vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_xlabel(f"CTR {ctr[r, c]:.2f}" if np.isfinite(ctr[r, c]) else "CTR -", fontsize=7)
            if r == 0:
                ax.set_title(f"alpha {alpha:g}", fontsize=7)
    fig.suptitle(f"Edits along the {headline} direction\n(CTR measured by the segmenter)", fontsize=8)
    fig.tight_layout()
    with atomic_path(sequence_png) as tmp:
        fig.savefig(tmp, format="png", dpi=100, bbox_inches="tight")  # the title wider than a narrow sheet
    plt.close(fig)

    fig, axes = plt.subplots(1, 2, figsize=(8, 3))
    for name in DIRECTIONS:
        if f"{name}_ctr" not in figures:
            continue
        for ax, key in zip(axes, ("ctr", "probability")):
            values = figures[f"{name}_{key}"]
            ax.errorbar(alphas, np.nanmean(values, axis=0), yerr=np.nanstd(values, axis=0), label=name, capsize=3)
    axes[0].set_ylabel("measured CTR")
    axes[1].set_ylabel("classifier P(cardiomegaly)")
    for ax, key in zip(axes, ("ctr", "probability")):
        ax.set_xlabel("alpha (edit strength)")
        ax.set_title("mean and std over the edited images", fontsize=8)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
        if not any(np.isfinite(figures[f"{name}_{key}"]).any() for name in DIRECTIONS if f"{name}_{key}" in figures):
            ax.text(0.5, 0.5, "nothing measured: the segmenter found\nno heart or thorax in any edited image",
                    ha="center", va="center", fontsize=8, transform=ax.transAxes)
    fig.tight_layout()
    with atomic_path(curves_png) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m pipeline.latent.edit", description=__doc__.splitlines()[0])
    for name, help_text in (("generator", "G's model.pt"), ("encoder", "the encoder's model.pt"),
                            ("codes", "the inversion stage's codes npz"), ("direction", "the separation stage's npz"),
                            ("ladder", "ctr_ladder.npz of the phantom"), ("test", "test slices npz"),
                            ("segmenter", "heart / thorax segmenter.pt"), ("classifier", "classifier.pt")):
        parser.add_argument(f"--{name}", type=Path, required=True, help=help_text)
    parser.add_argument("--alphas", type=float, nargs="+", default=DEFAULT_SETTINGS["alphas"])
    parser.add_argument("--edit-direction", choices=DIRECTIONS, default=DEFAULT_SETTINGS["direction"])
    for key in ("direction_pairs", "max_images", "n_figure_images"):
        parser.add_argument(f"--{key.replace('_', '-')}", type=int, default=DEFAULT_SETTINGS[key])
    parser.add_argument("--ctr-regression-samples", type=int, default=DEFAULT_SETTINGS["ctr_regression_samples"])
    parser.add_argument("--w-std-samples", type=int, default=DEFAULT_SETTINGS["w_std_samples"],
                        help="mapped z whose spread along each direction is alpha's unit (--alpha-unit w_std)")
    parser.add_argument("--alpha-unit", choices=ALPHA_UNITS, default=DEFAULT_SETTINGS["alpha_unit"])
    parser.add_argument("--target-ctr", type=float, default=DEFAULT_SETTINGS["target_ctr"],
                        help="CTR the edits should reach (at_target_ctr)")
    parser.add_argument("--min-subjects", type=int, default=8)
    parser.add_argument("--n-boot", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto", help="auto (CUDA when present), cpu or cuda: where G, the "
                                                          "encoder, the segmenter and the classifier run")
    parser.add_argument("--out-json", type=Path, required=True)
    parser.add_argument("--sequence-figure", type=Path, required=True)
    parser.add_argument("--curves-figure", type=Path, required=True)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    from pipeline.devices import resolve_device
    from pipeline.evaluate.measures.intervals import IntervalPolicy

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    settings = {"alphas": list(args.alphas), "direction": args.edit_direction, "direction_pairs": args.direction_pairs,
                "max_images": args.max_images, "n_figure_images": args.n_figure_images, "target_ctr": args.target_ctr,
                "alpha_unit": args.alpha_unit, "ctr_regression_samples": args.ctr_regression_samples,
                "w_std_samples": args.w_std_samples}
    torch.manual_seed(args.seed)
    try:
        policy = IntervalPolicy(min_subjects=args.min_subjects, n_boot=args.n_boot, seed=args.seed)
        section, figures = run_edits(args.generator, args.encoder, args.codes, args.direction, args.ladder, args.test,
                                     args.segmenter, args.classifier, settings, args.seed, policy,
                                     resolve_device(args.device))
    except PipelineError as err:
        log.error("%s", err)
        return 1
    edit_figures(figures, settings["direction"], args.sequence_figure, args.curves_figure)
    write_json(args.out_json, section)
    head = section["directions"][settings["direction"]]
    log.info("edit (%s): CTR slope %s per unit alpha, identity SSIM %s", settings["direction"],
             head["ctr_slope_per_unit_alpha"]["mean"], head["identity_ssim_outside_heart"]["mean"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
