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
from pipeline.evaluate.measures.dice import DEFINITION as DICE_DEFINITION, dice_summary
from pipeline.evaluate.measures.distribution import (
    distribution_block,
    frd_block,
    inception_and_radiomic_features,
    unavailable_frd,
)
from pipeline.evaluate.measures.floor import DEFINITION as FLOOR_DEFINITION
from pipeline.evaluate.measures.floor import FLOOR_SET, floor_block, floor_rows, frd_floor, unavailable_floor
from pipeline.evaluate.measures.intervals import IntervalPolicy
from pipeline.evaluate.measures.memorisation import CopySearch
from pipeline.evaluate.measures.segmenter import load_segmenter, predict_maps
from pipeline.evaluate.measures.slices import fixed_sample_indices, load_map_slices
from pipeline.evaluate.measures.summary import summarise
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
    n_figure_examples: int = 4,
    histogram_bins: int = 40,
    device: str = "cpu",
    intervals_policy: IntervalPolicy = IntervalPolicy(),
    seed: int = 0,
    samples_out: Path | None = None,
    generated_out: Path | None = None,
) -> dict:
    """Metrics of a map-to-image generator (module docstring), as the dict written to metrics.json.

    test, train: slices npz with label_maps (contract of data/slices/ct_thorax/); segmenter:
    segmenter.pt; n_perturbed: images from perturbed training maps (perturb: perturb_map's knobs).
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
    maps_perturbed, source_index, fallback = perturbed_maps(train_data["label_maps"], n_perturbed,
                                                            seed + PERTURB_SEED_OFFSET, perturb)
    from_perturbed = generate(model, maps_perturbed, seed + PERTURB_SEED_OFFSET, batch_size)
    perturbed_subjects = train_data["subject_ids"].astype(str)[source_index]
    if generated_out is not None:
        write_generated(generated_out, from_perturbed, maps_perturbed, source_index, train_data["subject_ids"],
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
        f"training maps) vs {len(test_data['images'])} real test slices",
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
        "segmenter on images generated from perturbed training maps vs the perturbed maps (unit: source patient)")

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

    diversity, diversity_maps_drawn, diversity_images = diversity_block(model, test_data, diversity_maps,
                                                                        diversity_draws, seed, policy)

    memo, memo_values = memorisation_module.memorisation(
        generated, train_data["images"], train_data["subject_ids"].astype(str), test_data["images"], test_subjects,
        embed=embed, feature_space=embedding.SETTINGS["name"],
        known_features={"generated": features["embedding"]["generated"], "heldout": features["embedding"]["real"]},
        search=copy_search, policy=policy, device=device,
    )

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
        "style_per_organ": styles,
        "diversity": diversity,
        "memorisation": memo,
    }
    if samples_out is not None:
        save_samples(samples_out, test_data, from_test, model, train_data, maps_perturbed, source_index,
                     from_perturbed, diversity_maps_drawn, diversity_images, n_figure_examples, intensity,
                     histogram_bins, dice_test)
    return metrics


def save_samples(target: Path, test: dict, from_test: np.ndarray, model, train: dict, maps_perturbed: np.ndarray,
                 source_index: np.ndarray, from_perturbed: np.ndarray, diversity_maps: np.ndarray,
                 diversity_images: np.ndarray, n_examples: int, intensity: tuple[float, float], bins: int,
                 dice_test: np.ndarray) -> None:
    """samples.npz for the figures (pipeline.evaluate.tasks.map_to_image_figures)."""
    rows = fixed_sample_indices(len(from_test), n_examples)
    style_image = getattr(model, "style_image", None)
    style_map = getattr(model, "style_map", None)
    arrays = {
        "organ_names": np.array(CLASS_NAMES), "grey_values": np.array(GREY_VALUES, np.int64),
        "intensity": np.array(intensity, np.float64),
        "example_maps": test["label_maps"][rows].astype(np.uint8), "example_content": test["images"][rows],
        "example_result": from_test[rows], "example_dice": dice_test[rows],
        "perturbed_source_maps": train["label_maps"][source_index[:n_examples]].astype(np.uint8),
        "perturbed_maps": maps_perturbed[:n_examples], "perturbed_images": from_perturbed[:n_examples],
        "diversity_maps": diversity_maps, "diversity_images": diversity_images,
    }
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
    parser.add_argument("--n-perturbed", type=int, default=40, help="images generated from perturbed training maps")
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
    parser.add_argument("--n-figure-examples", type=int, default=4)
    parser.add_argument("--histogram-bins", type=int, default=40)
    parser.add_argument("--samples-out", type=Path, help="samples.npz for the figures")
    parser.add_argument("--generated-out", type=Path, help="npz of the images from perturbed maps (with their maps)")
    parser.add_argument("--figures-dir", type=Path, help="draw the figures here (needs --samples-out)")
    parser.add_argument("--history", type=Path, help="training history.csv (accepted for the rule; not read)")
    args = parser.parse_args(argv)
    if args.figures_dir is not None and (args.samples_out is None or args.generated_out is None):
        parser.error("--figures-dir needs --samples-out and --generated-out")
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
        return evaluate_map_to_image(
            model, args.test, args.train, args.segmenter, inception_weights=args.inception_weights,
            n_perturbed=args.n_perturbed, perturb=json.loads(args.perturb_json), batch_size=args.batch_size,
            fid_eps=args.fid_eps, frd=not args.skip_frd, frd_per_organ=not args.skip_frd_per_organ,
            frd_max_images=args.frd_max_images, style_min_pixels=args.style_min_pixels,
            diversity_maps=args.diversity_maps, diversity_draws=args.diversity_draws,
            copy_search=cli.copy_search(args),
            n_figure_examples=args.n_figure_examples, histogram_bins=args.histogram_bins, device=device,
            intervals_policy=cli.interval_policy(args), seed=args.seed, samples_out=args.samples_out,
            generated_out=args.generated_out,
        )

    def draw_figures(metrics: dict) -> list[Path]:
        if args.figures_dir is None:
            return []
        return figures.draw_all(args.samples_out, args.generated_out, args.figures_dir)

    return cli.run_evaluation(args, "map_to_image", "a map-to-image generator", evaluate, draw_figures,
                              outputs=[args.samples_out, args.generated_out], report=report, log=log)


if __name__ == "__main__":
    sys.exit(main())
