"""Evaluate a map-to-image generator (report 003: seg map + z -> chest CT with another patient's style).

The generation evaluator's questions, plus the two that report 003's claims need:

- **Distribution** (``distribution``): FID / KID (Inception, null with the reason when its weights
  are not on disk), FRD and PRDC (random VGG-16) of all generated images (from the test maps and
  from the perturbed maps) vs the real test slices, as pipeline.evaluate.measures.distribution computes them;
  **FRD per organ** (``frd_per_organ``): frd-score's radiomics inside each organ's mask (the real
  slice's own map, the generated image's input map).
- **Anatomical faithfulness** (``anatomy``): the U-Net segmenter trained on real slices
  (pipeline.evaluate.measures.segmenter, its own rule) reads a map back from each generated image; Dice
  per organ against the map the image was generated from, for the test maps and the perturbed
  maps, beside the segmenter's own Dice on the real test slices (a low Dice on generated images
  is the generator's only where the segmenter scores high on real ones).
- **Style per organ** (``style_per_organ``, pipeline.evaluate.measures.organ_style): for the images
  generated from the test maps, per organ the Gram distance and the Wasserstein-1 distance of
  intensities (HU) to the style image's same organ vs to the content image's (the real test
  slice the map belongs to); ``difference`` = to-content minus to-style (positive: nearer the
  style); ``closer`` says which, "style" / "content" when the difference's interval excludes 0,
  else "undecided". Null with the reason when the model draws its style each step (no one style).
- **Diversity over z** (``diversity``): for ``diversity_maps`` test maps, ``diversity_draws``
  images each (one style, different z); per map the mean over pairs of the RMS pixel difference
  and of 1 - SSIM (skimage, data range 1). Beside it the same measures between the real test
  slices of different patients (what "different images" looks like in this data).
- **Memorisation** (``memorisation``): every generated image's nearest training slice under flips,
  zooms and translations, near copies counted against new patients' slices
  (pipeline.evaluate.measures.memorisation), pixels and random VGG-16 features. With ~20 training
  images copies are the main risk.
- **Reference CT** (``reference_ct``): each image generated from a test map against the real test
  slice that map was drawn from, in HU inside that slice's body mask, as SynthRAD scores a synthetic
  CT (pipeline.evaluate.measures.synthetic_ct: MAE and PSNR over the HU range the slices hold, their
  ``hu_window``). The generator is not asked to reproduce that slice (its texture comes from another
  patient's style image, its z is random): the number says how near the generated CT comes to the
  anatomy's own CT, not an error against a target.
- What the perceptual losses used (``perceptual_weights``: "imagenet" or "random"), from the model.

Units of the intervals: real test slices and images generated from a test map belong to the
map's patient (subject bootstrap / jackknife over patients); images from perturbed maps to their
source map's patient; every other generated image is its own unit. Seeds: the test-map images
use ``seed``, the perturbed maps and their images ``seed + 1``, the diversity draws ``seed + 2``.

CLI: python -m pipeline.evaluate --model model.pt --test test.npz --train train.npz --segmenter segmenter.pt ...
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from itertools import combinations
from pathlib import Path

import numpy as np

from pipeline.atomic import atomic_path
from pipeline.errors import InputDataError, PipelineError
from pipeline.evaluate import cli
from pipeline.evaluate.measures import embedding
from pipeline.evaluate.measures import fid as fid_module
from pipeline.evaluate.measures import frd as frd_module
from pipeline.evaluate.measures import memorisation as memorisation_module
from pipeline.evaluate.measures import organ_style
from pipeline.evaluate.measures import prdc as prdc_module
from pipeline.evaluate.measures.dice import CHANGED_DEFINITION, changed_pixel_dice
from pipeline.evaluate.measures.dice import DEFINITION as DICE_DEFINITION, dice_summary
from pipeline.evaluate.measures.distribution import (
    distribution_block,
    frd_block,
    inception_and_radiomic_features,
    unavailable_frd,
)
from pipeline.evaluate.measures.floor import DEFINITION as FLOOR_DEFINITION
from pipeline.evaluate.measures.floor import FLOOR_SET, floor_block, floor_rows, frd_floor, unavailable_floor
from pipeline.evaluate.measures.image_metrics import BODY_THRESHOLD_HU
from pipeline.evaluate.measures.intervals import IntervalPolicy
from pipeline.evaluate.measures.memorisation import CopySearch
from pipeline.evaluate.measures.segmenter import load_segmenter, predict_maps
from pipeline.evaluate.measures.slices import fixed_sample_indices, load_map_slices
from pipeline.evaluate.measures.summary import summarise
from pipeline.evaluate.measures.synthetic_ct import score_synthetic_ct
from pipeline.generate_from_maps import generate, perturbed_maps, write_generated
from pipeline.hashing import file_sha256
from pipeline.preprocess.thorax_labels import CLASS_NAMES, GREY_VALUES

log = logging.getLogger("pipeline.evaluate.tasks.map_to_image")

PERTURB_SEED_OFFSET = 1
DIVERSITY_SEED_OFFSET = 2


def _intensity(test: dict[str, np.ndarray]) -> tuple[tuple[float, float], str]:
    """([0,1] -> unit) mapping of the W1 distances and histograms: the slices' HU window when they carry one."""
    if "hu_window" in test:
        lo, hi = (float(v) for v in np.asarray(test["hu_window"]).ravel()[:2])
        return (lo, hi), f"HU (hu = {lo:g} + x * ({hi:g} - {lo:g}), the slices' hu_window)"
    return (0.0, 1.0), "[0, 1] slice units (the slices carry no hu_window)"


def _verdict(difference: dict) -> str:
    """'style' / 'content' when the interval of (to-content - to-style) excludes 0, else 'undecided'."""
    ci = difference.get("ci95")
    if difference.get("mean") is None:
        return "undecided"
    if ci is None:
        return "undecided"
    return "style" if ci[0] > 0 else "content" if ci[1] < 0 else "undecided"


def reference_ct_block(test: dict[str, np.ndarray], from_test: np.ndarray, subjects: np.ndarray,
                       threshold_hu: float, policy: IntervalPolicy) -> tuple[dict | None, str | None]:
    """Images from the test maps vs the real slices of those maps in HU (module docstring), or None and the reason."""
    if "hu_window" not in test:
        return None, "the test slices carry no hu_window, so [0,1] does not map to HU"
    (low, high), _ = _intensity(test)
    to_hu = lambda images: low + np.asarray(images, np.float64) * (high - low)
    block, _ = score_synthetic_ct(
        to_hu(test["images"]), to_hu(from_test), subjects, policy, (low, high), threshold_hu,
        f"image generated from the map of each real test slice, [0,1] -> HU = {low:g} + v * ({high:g} - {low:g}) "
        "(the slices' hu_window, the range the data hold: HU beyond it were clipped when slicing)")
    block["compares"] = ("image generated from a test map vs the real test slice of that map (its content image), "
                         "in HU inside the real slice's body mask; the generator is not asked to reproduce that slice "
                         "(style from another patient, random z)")
    return block, None


def style_block(distances: dict[str, np.ndarray], subjects: np.ndarray, organ_names: list[str],
                policy: IntervalPolicy) -> dict:
    """Per organ: distances to style and content, their difference and the share nearer the style."""
    block = {}
    for c, name in enumerate(organ_names):
        organ = {}
        for measure in ("gram", "w1"):
            to_style, to_content = distances[f"{measure}_to_style"][:, c], distances[f"{measure}_to_content"][:, c]
            valid = np.isfinite(to_style) & np.isfinite(to_content)
            difference = summarise(np.where(valid, to_content - to_style, np.nan), subjects, policy)
            organ[measure] = {
                "to_style": summarise(to_style, subjects, policy),
                "to_content": summarise(to_content, subjects, policy),
                "difference": difference,
                "share_closer_to_style": summarise(np.where(valid, (to_style < to_content).astype(float), np.nan),
                                                   subjects, policy, share=True),
                "closer": _verdict(difference),
            }
        block[name] = organ
    return block


def pairwise_diversity(images: np.ndarray) -> tuple[float, float]:
    """Mean over pairs of the RMS difference and of 1 - SSIM (data range 1) of (K, H, W) images."""
    from skimage.metrics import structural_similarity

    rms, dissimilarity = [], []
    for i, j in combinations(range(len(images)), 2):
        rms.append(float(np.sqrt(np.mean((images[i].astype(np.float64) - images[j]) ** 2))))
        dissimilarity.append(1.0 - float(structural_similarity(images[i], images[j], data_range=1.0)))
    return float(np.mean(rms)), float(np.mean(dissimilarity))


def diversity_block(model, test: dict[str, np.ndarray], n_maps: int, n_draws: int, seed: int,
                    policy: IntervalPolicy) -> tuple[dict, np.ndarray, np.ndarray]:
    """Diversity over z (module docstring); also returns the maps and images drawn, for the figure."""
    definition = ("per map: mean over the K(K-1)/2 pairs of K images generated with one style and different z of "
                  "the RMS pixel difference ([0,1] units) and of 1 - SSIM (skimage, data range 1, 7x7 window); "
                  "mean over maps with the subject-bootstrap interval")
    if n_draws < 2 or n_maps < 1:
        return {"definition": definition, "reason": "diversity_draws < 2 or diversity_maps < 1"}, np.zeros(0), np.zeros(0)
    rows = fixed_sample_indices(len(test["images"]), n_maps)
    maps = test["label_maps"][rows].astype(np.uint8)
    draws = np.stack([generate(model, np.repeat(maps[k][None], n_draws, axis=0), seed + DIVERSITY_SEED_OFFSET + k,
                               n_draws) for k in range(len(rows))])
    values = np.array([pairwise_diversity(images) for images in draws])
    subjects = test["subject_ids"].astype(str)[rows]
    real_rms, real_ssim, real_subjects = [], [], []
    real_rows = fixed_sample_indices(len(test["images"]), n_maps * n_draws)  # as many real slices as generated
    for i, j in combinations(real_rows, 2):
        if test["subject_ids"][i] != test["subject_ids"][j]:
            rms, dis = pairwise_diversity(test["images"][[i, j]])
            real_rms.append(rms)
            real_ssim.append(dis)
            real_subjects.append(str(test["subject_ids"][i]))
    block = {
        "definition": definition,
        "reason": None,
        "n_maps": len(rows),
        "draws_per_map": n_draws,
        "seed": seed + DIVERSITY_SEED_OFFSET,
        "rms_difference": summarise(values[:, 0], subjects, policy),
        "one_minus_ssim": summarise(values[:, 1], subjects, policy),
        "real_test_different_patients": {
            "what": "the same measures between pairs of real test slices of different patients, among "
            "diversity_maps x diversity_draws evenly spaced test slices (each pair counted for its first patient)",
            "rms_difference": summarise(np.array(real_rms), np.array(real_subjects), policy) if real_rms else None,
            "one_minus_ssim": summarise(np.array(real_ssim), np.array(real_subjects), policy) if real_ssim else None,
        },
    }
    return block, maps, draws


def changed_pixels_block(predicted: np.ndarray, perturbed: np.ndarray, source: np.ndarray,
                         predicted_unperturbed: np.ndarray, subjects: np.ndarray, organ_names: list[str],
                         policy: IntervalPolicy) -> dict:
    """Dice on the pixels the perturbation changed, beside the same count for the image generated
    from the UNPERTURBED map (what following the old anatomy scores there: the floor), and their
    per-image difference (paired: the same source map, so far more power than two intervals)."""
    scores, follows_perturbed, follows_source = changed_pixel_dice(predicted, perturbed, source, len(organ_names))
    floor, _, _ = changed_pixel_dice(predicted_unperturbed, perturbed, source, len(organ_names))

    def organ_mean(values: np.ndarray) -> np.ndarray:
        organs = values[:, 1:]
        return np.array([np.nanmean(row) if np.isfinite(row).any() else np.nan for row in organs])

    n_changed = (perturbed != source).reshape(len(perturbed), -1).sum(axis=1)
    return {
        "definition": CHANGED_DEFINITION,
        "n_images": len(scores),
        "changed_pixels_per_image": summarise(n_changed.astype(float), subjects, policy),
        "per_class": {name: summarise(scores[:, c], subjects, policy) for c, name in enumerate(organ_names)},
        "mean_organ_dice": summarise(organ_mean(scores), subjects, policy),
        "share_read_as_perturbed": summarise(follows_perturbed, subjects, policy),
        "share_read_as_source": summarise(follows_source, subjects, policy),
        "unperturbed_image_floor": {
            "what": "the same Dice for the image generated from the source (unperturbed) map: an image that "
                    "ignores the perturbation scores this",
            "mean_organ_dice": summarise(organ_mean(floor), subjects, policy),
        },
        "perturbed_minus_unperturbed": summarise(organ_mean(scores) - organ_mean(floor), subjects, policy),
    }


def _styled_pair(models: dict) -> tuple[dict | None, str | None]:
    """The style test's four generators by role, from what each model says of itself (its style
    patient, its style weight, the texture pair it was chosen from); (None, why) when incomplete."""
    pair = next((m.texture_pair for m in models.values() if getattr(m, "texture_pair", None)), None)
    if pair is None:
        return None, "no generator was trained for a texture pair (model.style_subject: texture_pair_first / _second)"
    roles = {}
    for name, m in models.items():
        if getattr(m, "texture_pair", None) != pair or m.style_subject not in (pair["first"], pair["second"]):
            continue
        key = ("control" if m.style_weight == 0 else "styled", "first" if m.style_subject == pair["first"] else "second")
        roles[key] = name
    wanted = [(kind, side) for kind in ("styled", "control") for side in ("first", "second")]
    missing = [f"{kind} {side}" for kind, side in wanted if (kind, side) not in roles]
    if missing:
        return None, f"the style test needs a generator for each of {missing} (experiments.<name>.style_variants)"
    return {"pair": pair, "roles": roles}, None


def style_transfer_block(model, variants: dict, maps: np.ndarray, subjects: np.ndarray, seed: int, batch_size: int,
                         organ_names: list[str], organs: tuple[str, ...], min_pixels: int, network,
                         policy: IntervalPolicy) -> tuple[dict, dict]:
    """Does each generator's organ texture follow ITS style patient? (docs/experiment-seg2ct.md)

    Two style patients A, B (the training patients whose textures differ most); generators G_A,
    G_B trained for each and their style-weight-0 twins C_A, C_B (the same runs, content sets
    included, without the style loss). Per held-out map m and organ, with p(X, P) the
    preference of X's image for P's style slice over the other's (organ_style.PREFERENCE_DEFINITION):
    styled(m) = (p(G_A(m), A) + p(G_B(m), B)) / 2 and control(m) = (p(C_A(m), A) + p(C_B(m), B)) / 2.
    A style transfer gives styled > 0; without the style loss the same difference is what the
    runs' other differences (content sets, training noise) produce. Also returns the style
    slices and every generator's images (for the figure; empty when the test cannot run).
    """
    definition = ("per held-out map and organ: styled = mean over the two style patients P of the preference of the "
                  "image of P's generator for P's style slice over the other patient's; control = the same for the "
                  "style-weight-0 twins. " + organ_style.PREFERENCE_DEFINITION)
    models = {"main": model, **variants}
    found, reason = _styled_pair(models)
    if found is None:
        return {"definition": definition, "reason": reason}, {}
    pair, roles = found["pair"], found["roles"]
    styles = {side: (models[roles[("styled", side)]].style_image, models[roles[("styled", side)]].style_map.astype(np.int64))
              for side in ("first", "second")}
    classes = [organ_names.index(name) for name in organs]
    preference = {}
    drawn = {f"style_{side}": styles[side][0] for side in styles} | {f"style_map_{side}": styles[side][1] for side in styles}
    for (kind, side), name in roles.items():
        other = "second" if side == "first" else "first"
        images = drawn[f"{kind}_{side}"] = generate(models[name], maps, seed, batch_size)
        preference[(kind, side)] = organ_style.own_style_preference(images, maps, styles[side], styles[other], classes,
                                                                   min_pixels, network)
    block = {"definition": definition, "reason": None,
             "style_patients": {"first": pair["first"], "second": pair["second"]},
             "pair_choice": {k: v for k, v in pair.items() if k not in ("first", "second")} | {
                 "how": "the two training patients with the largest sum over texture_pair_organs of the Gram distance "
                        "(organ_style) between their mean organ Gram matrices, each organ scaled by its median over "
                        "all pairs"},
             "generators": {f"{kind}_{side}": name for (kind, side), name in sorted(roles.items())},
             "n_maps": len(maps), "per_organ": {}}
    for j, organ in enumerate(organs):
        styled = (preference[("styled", "first")][:, j] + preference[("styled", "second")][:, j]) / 2
        control = (preference[("control", "first")][:, j] + preference[("control", "second")][:, j]) / 2
        block["per_organ"][organ] = {
            "styled": summarise(styled, subjects, policy),
            "control": summarise(control, subjects, policy),
            "styled_minus_control": summarise(styled - control, subjects, policy),
            "styled_first": summarise(preference[("styled", "first")][:, j], subjects, policy),
            "styled_second": summarise(preference[("styled", "second")][:, j], subjects, policy),
            "share_nearer_own": summarise(np.where(np.isfinite(styled), (np.minimum(
                preference[("styled", "first")][:, j], preference[("styled", "second")][:, j]) > 0).astype(float),
                np.nan), subjects, policy, share=True),
        }
    return block, drawn


def frd_per_organ_block(real: np.ndarray, real_maps: np.ndarray, real_subjects: np.ndarray, generated: np.ndarray,
                        generated_maps: np.ndarray, generated_ids: np.ndarray, organ_names: list[str],
                        max_images: int, policy: IntervalPolicy,
                        floor: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None) -> dict:
    """FRD inside each organ's mask (classes 1..), real test slices vs generated images; with
    ``floor`` = (images, maps, subjects) of the training patients, each organ's real-vs-real floor
    (real test vs real training slices, each inside its own map) under ``floor``."""
    real_rows = fixed_sample_indices(len(real), max_images)
    generated_rows = fixed_sample_indices(len(generated), max_images)
    sets = [("real", real, real_maps, real_rows), ("generated", generated, generated_maps, generated_rows)]
    if floor is not None:
        floor_images, floor_maps, floor_subjects = floor
        on_floor = floor_rows(len(floor_images), len(generated_rows))
        sets.append((FLOOR_SET, floor_images, floor_maps, on_floor))
    block = {"n_real_max": len(real_rows), "n_generated_max": len(generated_rows)}
    floors = {"definition": FLOOR_DEFINITION, "reason": None} if floor is not None else unavailable_floor(
        "no training slices given")
    for c, name in enumerate(organ_names):
        if c == 0:
            continue
        try:
            features = [frd_module.radiomic_features(images[rows], f"radiomics {name} {side}", masks=maps[rows] == c)[0]
                        for side, images, maps, rows in sets]
        except (ValueError, RuntimeError) as err:
            block[name] = unavailable_frd(f"radiomic feature extraction failed: {str(err)[:200]}")
            if floor is not None:
                floors[name] = block[name]
            continue
        block[name] = frd_block(features[0], real_subjects[real_rows], features[1], generated_ids[generated_rows], policy)
        if floor is not None:
            floors[name] = frd_floor(features[0], real_subjects[real_rows], features[2], floor_subjects[on_floor],
                                     block[name]["n_generated"], policy)  # images showing the organ
    return block | {"floor": floors}


def evaluate_map_to_image(
    model,
    test: Path,
    train: Path,
    segmenter: Path,
    inception_weights: Path | None = None,
    n_perturbed: int = 40,
    perturb: dict | None = None,
    batch_size: int = 16,
    fid_eps: float = 1e-6,
    frd: bool = True,
    frd_per_organ: bool = True,
    frd_max_images: int = 50,
    style_min_pixels: int = 16,
    diversity_maps: int = 4,
    diversity_draws: int = 6,
    copy_search: CopySearch = CopySearch(),
    body_threshold_hu: float = BODY_THRESHOLD_HU,
    n_figure_examples: int = 4,
    histogram_bins: int = 40,
    device: str = "cpu",
    intervals_policy: IntervalPolicy = IntervalPolicy(),
    seed: int = 0,
    samples_out: Path | None = None,
    generated_out: Path | None = None,
    style_variants: dict | None = None,
    style_transfer_organs: tuple[str, ...] = ("body", "lungs"),
) -> dict:
    """Metrics of a map-to-image generator (module docstring), as the dict written to metrics.json.

    test, train: slices npz with label_maps (contract of data/slices/ct_thorax/); segmenter:
    segmenter.pt; n_perturbed: images from perturbed test maps (perturb: perturb_map's knobs);
    style_variants: name -> the other trained generators of the style test (style_transfer_block).
    """
    organ_names = list(CLASS_NAMES)
    n_classes = len(organ_names)
    test_path, train_path = Path(test), Path(train)
    test_data, train_data = load_map_slices(test_path, n_classes), load_map_slices(train_path, n_classes)
    shape = tuple(test_data["images"].shape[1:])
    if train_data["images"].shape[1:] != shape:
        raise InputDataError(train_path, f"slice size {train_data['images'].shape[1:]} differs from {test_path}'s")
    if tuple(getattr(model, "image_size", shape)) != shape:
        raise PipelineError(f"the model generates {tuple(model.image_size)} images, the test slices are {shape}")
    policy = intervals_policy
    intensity, intensity_unit = _intensity(test_data)
    perturb = dict(perturb or {})
    test_subjects = test_data["subject_ids"].astype(str)

    from_test = generate(model, test_data["label_maps"].astype(np.uint8), seed, batch_size)
    # Perturbed HELD-OUT maps: a training map's anatomy could be drawn from memory, a new one cannot.
    maps_perturbed, source_index, fallback = perturbed_maps(test_data["label_maps"], n_perturbed,
                                                            seed + PERTURB_SEED_OFFSET, perturb)
    from_perturbed = generate(model, maps_perturbed, seed + PERTURB_SEED_OFFSET, batch_size)
    perturbed_subjects = test_subjects[source_index]
    if generated_out is not None:
        write_generated(generated_out, from_perturbed, maps_perturbed, source_index, test_data["subject_ids"],
                        seed + PERTURB_SEED_OFFSET, perturb, test_data.get("hu_window"), fallback)
    generated = np.concatenate([from_test, from_perturbed])
    generated_maps = np.concatenate([test_data["label_maps"].astype(np.uint8), maps_perturbed])
    generated_ids = np.array([f"generated_{i}" for i in range(len(generated))])

    # distribution: FID / KID / FRD / PRDC, as for any generator, beside the real-vs-real floor
    on_floor = floor_rows(len(train_data["images"]), len(generated))
    floor_subjects = train_data["subject_ids"].astype(str)[on_floor]
    features, radiomic_rows, problems = inception_and_radiomic_features(
        {"real": test_data["images"], "generated": generated, FLOOR_SET: train_data["images"][on_floor]},
        inception_weights, frd, frd_max_images, batch_size, device)
    network = embedding.build_random_vgg()
    embed = lambda images: embedding.embed(images, batch_size, network, device)
    train_embedding = embed(train_data["images"])
    features["embedding"] = {"real": embed(test_data["images"]), "generated": embed(generated),
                             FLOOR_SET: train_embedding[on_floor]}
    all_real = np.arange(len(test_data["images"]))
    distribution = distribution_block(
        all_real, np.arange(len(generated)), test_subjects, generated_ids, features,
        radiomic_rows, problems, fid_eps, policy,
        f"{len(generated)} generated images ({len(from_test)} from the test maps, {len(from_perturbed)} from perturbed "
        f"test maps) vs {len(test_data['images'])} real test slices",
    )
    distribution["floor"] = floor_block(
        all_real, test_subjects, floor_subjects, len(generated), features, radiomic_rows, problems, fid_eps, policy,
        f"{len(on_floor)} real training slices ({len(np.unique(floor_subjects))} patients) vs {len(all_real)} real "
        "test slices")
    if not frd:
        frd_organs = {"reason": problems["frd"]}
    elif not frd_per_organ:
        frd_organs = {"reason": "FRD per organ switched off (evaluate.frd_per_organ: false)"}
    else:
        frd_organs = {"reason": None} | frd_per_organ_block(
            test_data["images"], test_data["label_maps"], test_subjects, generated, generated_maps, generated_ids,
            organ_names, frd_max_images, policy, floor=(train_data["images"], train_data["label_maps"],
                                                        train_data["subject_ids"].astype(str)))

    # anatomy: the segmenter on real test slices and on generated images
    seg_network, seg_checkpoint = load_segmenter(segmenter, device)
    if list(seg_checkpoint["organ_names"]) != organ_names:
        raise InputDataError(segmenter, f"segments {seg_checkpoint['organ_names']}, the evaluation needs {organ_names}")
    anatomy = {"definition": DICE_DEFINITION, "segmenter": {"path": str(segmenter), "sha256": file_sha256(segmenter)}}
    anatomy["segmenter_real_test"], _ = dice_summary(
        predict_maps(seg_network, test_data["images"], batch_size), test_data["label_maps"], test_subjects,
        organ_names, policy, "segmenter on the real test slices vs their own maps (the segmenter's own accuracy)")
    predicted_test = predict_maps(seg_network, from_test, batch_size)
    anatomy["generated_test_maps"], dice_test = dice_summary(
        predicted_test, test_data["label_maps"], test_subjects, organ_names, policy,
        "segmenter on images generated from the test maps vs those maps")
    predicted_perturbed = predict_maps(seg_network, from_perturbed, batch_size)
    anatomy["generated_perturbed_maps"], _ = dice_summary(
        predicted_perturbed, maps_perturbed, perturbed_subjects, organ_names, policy,
        "segmenter on images generated from perturbed held-out (test) maps vs the perturbed maps (unit: source patient)")
    anatomy["generated_perturbed_maps"]["changed_pixels"] = changed_pixels_block(
        predicted_perturbed, maps_perturbed, test_data["label_maps"][source_index], predicted_test[source_index],
        perturbed_subjects, organ_names, policy)

    # style per organ
    style_image = getattr(model, "style_image", None)
    style_map = getattr(model, "style_map", None)
    distances = None
    if style_image is None or style_map is None:
        styles = {"reason": "the model draws its style image each step: there is no one style image to compare with"}
    else:
        style_image, style_map = np.asarray(style_image, np.float32), np.asarray(style_map).astype(np.int64)
        distances = organ_style.organ_style_distances(
            from_test, test_data["label_maps"], test_data["images"], test_data["label_maps"], style_image, style_map,
            n_classes, style_min_pixels, intensity, network)
        styles = {"reason": None, "style_subject": getattr(model, "style_subject", None),
                  "compares": "images generated from the test maps: each organ vs the style image's same organ and vs "
                  "the content image's (the real test slice of that map)",
                  "per_organ": style_block(distances, test_subjects, organ_names, policy)}

    style_test, style_images = style_transfer_block(model, style_variants or {}, test_data["label_maps"].astype(np.uint8),
                                      test_subjects, seed, batch_size, organ_names, style_transfer_organs,
                                      style_min_pixels, network, policy)

    diversity, diversity_maps_drawn, diversity_images = diversity_block(model, test_data, diversity_maps,
                                                                        diversity_draws, seed, policy)

    memo, memo_values = memorisation_module.memorisation(
        generated, train_data["images"], train_data["subject_ids"].astype(str), test_data["images"], test_subjects,
        embed=embed, feature_space=embedding.SETTINGS["name"],
        known_features={"generated": features["embedding"]["generated"], "heldout": features["embedding"]["real"]},
        search=copy_search, policy=policy, device=device,
    )

    reference_ct, reference_ct_reason = reference_ct_block(test_data, from_test, test_subjects, body_threshold_hu,
                                                           policy)
    weights = getattr(model, "perceptual_weights", None)
    metrics = {
        "schema_version": 1,
        "task": "map_to_image",
        "organ_names": organ_names,
        "grey_values": list(GREY_VALUES),
        "perceptual_weights": weights,
        "perceptual_weights_note": (
            "the VGG-19 of the content and style losses had ImageNet weights" if weights == "imagenet" else
            "the VGG-19 of the content and style losses was an untrained (random) network: offline profile, its "
            "content and style terms are not the report's" if weights == "random" else
            "the model does not say which VGG-19 weights its perceptual losses used"),
        "generator": {
            "image_shape": list(shape), "n_labels": int(getattr(model, "n_labels", n_classes)),
            "nz": getattr(model, "nz", None), "style_fixed": style_image is not None,
            "style_subject": getattr(model, "style_subject", None),
            "n_from_test_maps": len(from_test), "n_from_perturbed_maps": len(from_perturbed), "seed": seed,
            "perturbed_seed": seed + PERTURB_SEED_OFFSET, "perturb": perturb,
            "n_perturbation_fell_back": int(fallback.sum()),
        },
        "inputs": {name: {"path": str(p), "sha256": file_sha256(p), "n_images": len(d["images"]),
                          "n_subjects": int(len(np.unique(d["subject_ids"].astype(str)))),
                          "image_shape": list(d["images"].shape[1:])}
                   for name, p, d in (("test", test_path, test_data), ("train", train_path, train_data))},
        "settings": {
            "data_range": 1.0,
            "normalisation": "slices and generated images in [0,1] (the HU window of the dataset mapped to [0,1])",
            "intensity_unit": intensity_unit,
            "features": {"inception": fid_module.FEATURE_SETTINGS, "embedding": embedding.SETTINGS,
                         "radiomics": frd_module.FRD_SETTINGS | {"enabled": frd, "per_organ": frd_per_organ,
                                                                 "max_images_per_set": frd_max_images}},
            "inception_weights": None if inception_weights is None else str(inception_weights),
            "fid_eps": fid_eps,
            "prdc": prdc_module.DEFINITION.format(k=prdc_module.NEAREST_K),
            "style": organ_style.DEFINITION | {"min_pixels": style_min_pixels,
                                               "feature_network": embedding.SETTINGS["name"]},
            "memorisation": memo["definition"],
            "intervals": policy.describe() | {"units": "real test slices and images from a test map: the map's "
                                              "patient; images from perturbed maps: the source patient; other "
                                              "generated images: each its own unit"},
            "seed": seed,
        },
        "distribution": distribution,
        "frd_per_organ": frd_organs,
        "anatomy": anatomy,
        "reference_ct": reference_ct,
        "reference_ct_reason": reference_ct_reason,
        "style_per_organ": styles,
        "style_transfer": style_test,
        "diversity": diversity,
        "memorisation": memo,
    }
    if samples_out is not None:
        save_samples(samples_out, test_data, from_test, model, maps_perturbed, source_index,
                     from_perturbed, diversity_maps_drawn, diversity_images, n_figure_examples, intensity,
                     histogram_bins, dice_test, style_images)
    return metrics


def save_samples(target: Path, test: dict, from_test: np.ndarray, model, maps_perturbed: np.ndarray,
                 source_index: np.ndarray, from_perturbed: np.ndarray, diversity_maps: np.ndarray,
                 diversity_images: np.ndarray, n_examples: int, intensity: tuple[float, float], bins: int,
                 dice_test: np.ndarray, style_images: dict | None = None) -> None:
    """samples.npz for the figures (pipeline.evaluate.tasks.map_to_image_figures)."""
    rows = fixed_sample_indices(len(from_test), n_examples)
    style_image = getattr(model, "style_image", None)
    style_map = getattr(model, "style_map", None)
    arrays = {
        "organ_names": np.array(CLASS_NAMES), "grey_values": np.array(GREY_VALUES, np.int64),
        "intensity": np.array(intensity, np.float64),
        "example_maps": test["label_maps"][rows].astype(np.uint8), "example_content": test["images"][rows],
        "example_result": from_test[rows], "example_dice": dice_test[rows],
        "perturbed_source_maps": test["label_maps"][source_index[:n_examples]].astype(np.uint8),
        "perturbed_maps": maps_perturbed[:n_examples], "perturbed_images": from_perturbed[:n_examples],
        "diversity_maps": diversity_maps, "diversity_images": diversity_images,
    }
    if style_images:  # the style test: style slices and each generator's images of the example maps
        arrays |= {"pair_" + key: np.asarray(value)[rows] if key.startswith(("styled_", "control_")) else np.asarray(value)
                   for key, value in style_images.items()}
    if style_image is not None and style_map is not None:
        arrays |= {"style_image": np.asarray(style_image, np.float32), "style_map": np.asarray(style_map, np.uint8)}
        lo, hi = intensity
        edges = np.linspace(lo, hi, bins + 1)
        histograms = np.zeros((len(CLASS_NAMES), 3, bins))
        for c in range(len(CLASS_NAMES)):
            for k, values in enumerate((from_test[test["label_maps"] == c], np.asarray(style_image)[np.asarray(style_map) == c],
                                        test["images"][test["label_maps"] == c])):
                if values.size:
                    histograms[c, k] = np.histogram(lo + values * (hi - lo), bins=edges, density=True)[0]
        arrays |= {"histogram_edges": edges, "histograms": histograms,
                   "histogram_sets": np.array(["generated (test maps)", "style image", "content (real test)"])}
    with atomic_path(target) as tmp:
        np.savez_compressed(tmp, **arrays)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m pipeline.evaluate.tasks.map_to_image", description=__doc__.splitlines()[0])
    cli.add_common_arguments(parser, "trained map-to-image model.pt")
    parser.add_argument("--test", type=Path, required=True, help="real test slices npz with label_maps")
    parser.add_argument("--train", type=Path, required=True, help="training slices (memorisation, perturbed maps)")
    parser.add_argument("--segmenter", type=Path, required=True, help="segmenter.pt (pipeline.evaluate.measures.segmenter)")
    parser.add_argument("--inception-weights", type=Path, help="pt_inception-2015-12-05-6726825d.pth")
    parser.add_argument("--n-perturbed", type=int, default=40, help="images generated from perturbed held-out (test) maps")
    parser.add_argument("--perturb-json", default="{}", help="map_perturbation knobs as a JSON object")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--fid-eps", type=float, default=1e-6)
    parser.add_argument("--skip-frd", action="store_true")
    parser.add_argument("--skip-frd-per-organ", action="store_true")
    parser.add_argument("--frd-max-images", type=int, default=50)
    parser.add_argument("--style-min-pixels", type=int, default=16)
    parser.add_argument("--diversity-maps", type=int, default=4)
    parser.add_argument("--diversity-draws", type=int, default=6)
    cli.add_memorisation_arguments(parser)
    parser.add_argument("--body-threshold-hu", type=float, default=BODY_THRESHOLD_HU,
                        help="reference-CT block: body mask = real slice above this HU (largest component, filled)")
    parser.add_argument("--n-figure-examples", type=int, default=4)
    parser.add_argument("--histogram-bins", type=int, default=40)
    parser.add_argument("--style-variant", action="append", default=[], metavar="NAME=PATH",
                        help="another generator of the style test (model.pt); repeat per variant")
    parser.add_argument("--samples-out", type=Path, help="samples.npz for the figures")
    parser.add_argument("--generated-out", type=Path, help="npz of the images from perturbed maps (with their maps)")
    parser.add_argument("--figures-dir", type=Path, help="draw the figures here (needs --samples-out)")
    parser.add_argument("--history", type=Path, help="training history.csv, for --training-curves")
    parser.add_argument("--training-curves", type=Path, help="draw the training history here (needs --history)")
    args = parser.parse_args(argv)
    if args.figures_dir is not None and (args.samples_out is None or args.generated_out is None):
        parser.error("--figures-dir needs --samples-out and --generated-out")
    cli.require_with(parser, args, ("training_curves",), "history")
    return args


def report(metrics: dict) -> None:
    """Log the mean organ Dice of generated images beside the segmenter's own, and a warning when
    memorisation is flagged."""
    dice = metrics["anatomy"]
    log.info("mean organ Dice: generated (test maps) %s, segmenter on real test %s",
             dice["generated_test_maps"]["mean_organ_dice"]["mean"], dice["segmenter_real_test"]["mean_organ_dice"]["mean"])
    if metrics["memorisation"]["flagged"]:
        log.warning("more generated images are near copies of training slices than new patients' slices are")


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    from pipeline.evaluate.tasks import map_to_image_figures as figures

    def evaluate(model, device: str) -> dict:
        from pipeline.models import load_trained

        variants = {}
        for value in args.style_variant:
            name, sep, path = value.partition("=")
            if not sep or not name or not path or name in variants or name == "main":
                raise InputDataError(Path(path or value), f"--style-variant takes NAME=PATH with a new name, got {value!r}")
            variants[name] = load_trained(path, device)
        return evaluate_map_to_image(
            model, args.test, args.train, args.segmenter, inception_weights=args.inception_weights,
            n_perturbed=args.n_perturbed, perturb=json.loads(args.perturb_json), batch_size=args.batch_size,
            fid_eps=args.fid_eps, frd=not args.skip_frd, frd_per_organ=not args.skip_frd_per_organ,
            frd_max_images=args.frd_max_images, style_min_pixels=args.style_min_pixels,
            diversity_maps=args.diversity_maps, diversity_draws=args.diversity_draws,
            copy_search=cli.copy_search(args), body_threshold_hu=args.body_threshold_hu,
            n_figure_examples=args.n_figure_examples, histogram_bins=args.histogram_bins, device=device,
            intervals_policy=cli.interval_policy(args), seed=args.seed, samples_out=args.samples_out,
            generated_out=args.generated_out, style_variants=variants,
        )

    def draw_figures(metrics: dict) -> list[Path]:
        drawn = cli.draw([(args.training_curves, lambda out: cli.training_curves(args.model, args.history, out))])
        if args.figures_dir is None:
            return drawn
        return drawn + figures.draw_all(args.samples_out, args.generated_out, args.figures_dir)

    return cli.run_evaluation(args, "map_to_image", "a map-to-image generator", evaluate, draw_figures,
                              outputs=[args.samples_out, args.generated_out], report=report, log=log)


if __name__ == "__main__":
    sys.exit(main())
