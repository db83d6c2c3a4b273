"""Evaluate a trained generator (DCGAN, conditional GAN; later StyleGAN) against real held-out slices.

Reports 002-004 ask the same questions of a generator, so they share this evaluator:

- **Distribution** (``distribution``; for a conditional generator also ``per_class``): FID and
  KID in the standard Inception space (null with the reason when its weights are not on disk),
  FRD in radiomic space, and precision / recall / density / coverage (k = 5) in the random
  VGG-16 space of pipeline.evaluate.measures.embedding, between the real test slices and generated ones.
- **Diversity** (``distribution/diversity``, per class too; pipeline.evaluate.measures.diversity):
  the mean pairwise distance of the generated images over that of real test slices of different
  patients, in the same random VGG-16 space (1: as varied as real patients; near 0: collapse).
- **The report's own measure** (``discriminator``): the mean of D's output on generated images
  over the last epochs of training (default 20), read from history.csv's ``d_fake`` column.
- **Classifier utility** (``classifier``, ``tstr``): the classifier trained on real healthy vs
  haemorrhage slices (pipeline.evaluate.measures.classifier), its held-out accuracy on real slices, and
  the share of generated slices asked to be of a class that it calls that class (report 002's
  45.3% for haemorrhage); train-on-synthetic / test-on-real: the same network and settings
  trained on generated slices only and on real + generated, selected on the real validation
  slices, tested on the real test slices.
- **Memorisation** (``memorisation``, pipeline.evaluate.measures.memorisation): does the generator
  return training slices, exactly, mirrored, noised, shifted or cropped, more often than new
  patients' slices come that close to the training set?

Sampling: a conditional generator is asked for ``n_generated`` images of every class, an
unconditional one for ``n_generated`` in all, with ``seed``; the train-on-synthetic set is drawn
with seed + 1 (not the images that are scored), the noise walk with seeds + 2 and + 3.
Generated images are independent draws, so each is its own unit ("subject") in every interval;
real test slices are grouped by patient. Intervals follow pipeline.evaluate.measures.intervals (subject
bootstrap for per-image means, two-set subject jackknife for set-level statistics).

CLI: python -m pipeline.evaluate.tasks.generation --model model.pt --test test.npz --train train.npz ...
(``python -m pipeline.evaluate`` dispatches here for models whose task is "generation").
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import numpy as np

from pipeline.atomic import atomic_path
from pipeline.errors import InputDataError, PipelineError
from pipeline.evaluate import cli
from pipeline.evaluate.measures import embedding, memorisation as memorisation_module, prdc as prdc_module
from pipeline.evaluate.measures.diversity import MeanPairwiseDistance
from pipeline.evaluate.measures import fid as fid_module
from pipeline.evaluate.measures import frd as frd_module
from pipeline.evaluate.measures.classifier import acceptance, beside, null_summary, real_test_check
from pipeline.evaluate.measures.distribution import distribution_block, inception_and_radiomic_features
from pipeline.evaluate.measures.floor import FLOOR_SET, floor_block, floor_rows, unavailable_floor
from pipeline.evaluate.measures.intervals import IntervalPolicy
from pipeline.evaluate.measures.memorisation import CopySearch
from pipeline.evaluate.measures.slices import fixed_sample_indices, load_labelled_slices, load_test_slices
from pipeline.evaluate.measures.summary import balanced_accuracy, summarise
from pipeline.hashing import file_sha256
from pipeline.models import Sampler  # noise(n, seed) / generate(z, labels), where present, draw the walk

log = logging.getLogger("pipeline.evaluate.tasks.generation")

DEFAULT_CLASS_NAMES = ("healthy", "haemorrhage")
"""Label 0 and 1 of the labelled slices (contract: ``labels``, 1 = RSNA's ``any``)."""
TSTR_SEED_OFFSET = 1
WALK_SEED_OFFSETS = (2, 3)


def draw(sampler: Sampler, n: int, labels: np.ndarray | None, seed: int, shape: tuple[int, int]) -> np.ndarray:
    """``sampler.sample`` with its contract checked: (n, H, W) of the real slices' size, finite, in [0, 1]."""
    images = np.asarray(sampler.sample(n, labels=labels, seed=seed), dtype=np.float32)
    if images.shape != (n, *shape):
        raise PipelineError(f"the generator returned shape {images.shape}, expected {(n, *shape)} "
                            "(the real slices' size: evaluate on slices of the training size)")
    if n and (not np.all(np.isfinite(images)) or images.min() < 0.0 or images.max() > 1.0):
        raise PipelineError("the generator returned values outside [0, 1] or not finite")
    return images


def generate_sets(sampler: Sampler, n_generated: int, seed: int, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray | None]:
    """``n_generated`` images per class (conditional; labels in class order) or in all (unconditional)."""
    if sampler.n_classes:
        labels = np.repeat(np.arange(sampler.n_classes, dtype=np.int64), n_generated)
        return draw(sampler, len(labels), labels, seed, shape), labels
    return draw(sampler, n_generated, None, seed, shape), None


def discriminator_block(history_csv: Path | None, last_epochs: int) -> dict:
    """Report 002's measure: mean of history.csv's per-epoch ``d_fake`` over the last ``last_epochs`` epochs."""
    definition = (f"mean over the last {last_epochs} epochs (fewer when training ran fewer) of D's mean output on "
                  "generated images per epoch, history.csv column d_fake; d_real likewise on real images")
    reason_interval = ("no sampling interval: the epochs are consecutive states of one training run, not "
                       "independent draws; their spread (std, min, max) is given instead")
    if history_csv is None:
        return {"definition": definition, "reason": "no training history given"}
    import pandas as pd

    history_csv = Path(history_csv)
    if not history_csv.is_file():
        raise InputDataError(history_csv, "training history not found")
    history = pd.read_csv(history_csv)
    missing = [c for c in ("epoch", "d_fake") if c not in history.columns]
    if missing:
        raise InputDataError(history_csv, f"no column {missing}: the generator's history must log D's output on fakes")
    per_epoch = history.groupby("epoch").mean(numeric_only=True).sort_index().tail(last_epochs)
    if per_epoch.empty:
        raise InputDataError(history_csv, "no rows")
    scale = ("probability D(G(z)) in [0, 1] (BCE)" if "D_accuracy" in history.columns else
             "raw critic value (Wasserstein; not a probability)" if "wasserstein" in history.columns else
             "as logged by the model")

    def spread(column: str) -> dict | None:
        if column not in per_epoch.columns:
            return None
        values = per_epoch[column].to_numpy(np.float64)
        return {"value": float(values.mean()), "std": float(values.std()), "min": float(values.min()),
                "max": float(values.max()), "ci95": None, "ci95_reason": reason_interval}

    return {
        "definition": definition,
        "reason": None,
        "scale": scale,
        "last_epochs": last_epochs,
        "n_epochs": len(per_epoch),
        "epochs": [int(per_epoch.index.min()), int(per_epoch.index.max())],
        "d_fake": spread("d_fake"),
        "d_real": spread("d_real"),
    }


def class_floor_set(name: str) -> str:
    """Key of class ``name``'s floor set among the feature sets."""
    return f"{FLOOR_SET}_{name}"


def class_floor_rows(train_labels: np.ndarray, generated_labels: np.ndarray, class_names) -> dict[str, np.ndarray]:
    """Each class's floor set: training rows of that class, as many as the generated images asked to
    be it (floor_rows: evenly spaced; all when fewer, and the floor says size_matched false). Drawn
    from all the class's training slices, not from the overall floor already cut to the generated
    count, which would hold only the class's prevalence of it (28 haemorrhage slices beside 100)."""
    rows = {}
    for c, name in enumerate(class_names):
        of_class = np.flatnonzero(np.asarray(train_labels) == c)
        rows[class_floor_set(name)] = of_class[floor_rows(len(of_class), int((generated_labels == c).sum()))]
    return rows


def class_floor_radiomic_counts(generated_labels: np.ndarray, class_names, frd_max_images: int) -> dict[str, int]:
    """As many radiomic rows in each class's floor as that class's generated images get among the
    generated set's ``frd_max_images`` evenly spaced ones: the class floor's FRD is size-matched too."""
    picked = fixed_sample_indices(len(generated_labels), frd_max_images)
    return {class_floor_set(name): max(int((generated_labels[picked] == c).sum()), MIN_RADIOMIC_ROWS)
            for c, name in enumerate(class_names)}


MIN_RADIOMIC_ROWS = 2
"""FRD needs at least two images a set (a covariance); fewer radiomic rows are not extracted."""


def classifier_blocks(
    classifier: Path,
    test: dict[str, np.ndarray],
    generated: np.ndarray,
    generated_labels: np.ndarray | None,
    generated_ids: np.ndarray,
    class_names: tuple[str, str],
    batch_size: int,
    policy: IntervalPolicy,
    device: str = "cpu",
) -> tuple[dict, dict[str, np.ndarray]]:
    """The real-data classifier (on ``device``) on the real test slices and on the generated ones."""
    from pipeline.evaluate.measures.classifier import load_classifier, probability_of_b

    network, checkpoint = load_classifier(classifier, device)
    p_real = probability_of_b(network, checkpoint, test["images"], batch_size)
    p_generated = probability_of_b(network, checkpoint, generated, batch_size)
    labels = test["labels"]
    correct = ((p_real > 0.5).astype(np.int64) == labels).astype(np.float64)
    subjects = test["subject_ids"].astype(str)
    per_class = {name: (summarise(correct[labels == c], subjects[labels == c], policy, share=True)
                        if (labels == c).any() else None)
                 for c, name in enumerate(class_names)}
    recalls = [block["mean"] for block in per_class.values() if block is not None]
    check = real_test_check(p_real, labels, subjects, policy, *acceptance(checkpoint), class_names=tuple(class_names))
    block = {
        "path": str(classifier),
        "sha256": file_sha256(classifier),
        "class_names": list(class_names),
        "compares": "classifier trained on real slices (label 0 vs 1), applied to the real test slices and to "
        "generated ones; called class c when P(c) > 0.5",
        "test_accuracy": summarise(correct, subjects, policy, share=True),
        "test_accuracy_per_class": per_class,
        "test_balanced_accuracy": float(np.mean(recalls)) if len(recalls) == 2 else None,
        "test_balanced_accuracy_estimate": balanced_accuracy(correct, labels, subjects, policy),
        "real_test": check,
        "generated": {},
    }

    def score(values: np.ndarray, units: np.ndarray, share: bool = False) -> dict:
        """A share or mean probability on generated images: null with the reason when the check fails."""
        if check["usable"]:
            return summarise(values, units, policy, share=share)
        return null_summary(len(values), len(np.unique(units.astype(str))), check["reason"])

    if generated_labels is None:
        called = (p_generated > 0.5).astype(np.float64)
        block["generated"]["unconditional"] = {
            "asked": None,
            "share_called": {class_names[1]: score(called, generated_ids, share=True)},
            "real_test_share_called": {class_names[1]: summarise((p_real > 0.5).astype(np.float64), subjects, policy,
                                                                 share=True)},
            "real_test_prevalence": {class_names[1]: summarise((labels == 1).astype(np.float64), subjects, policy,
                                                               share=True)},
            "reason": check["reason"],
        } | beside(check)
    else:
        for c, name in enumerate(class_names):
            asked = generated_labels == c
            p_asked = p_generated[asked] if c == 1 else 1.0 - p_generated[asked]
            block["generated"][name] = {
                "asked": name,
                "share_called_asked": score((p_asked > 0.5).astype(np.float64), generated_ids[asked], share=True),
                "mean_probability_asked": score(p_asked, generated_ids[asked]),
                "reason": check["reason"],
            } | beside(check)
    return block, {"classifier_p1_real_test": p_real, "classifier_p1_generated": p_generated}


def tstr_block(
    sampler: Sampler,
    classifier: Path,
    train: dict[str, np.ndarray],
    val: dict[str, np.ndarray],
    test: dict[str, np.ndarray],
    class_names: tuple[str, str],
    seed: int,
    policy: IntervalPolicy,
    device: str = "cpu",
) -> dict:
    """Train-on-synthetic / test-on-real with the real classifier's own network and settings (on ``device``).

    The synthetic training set has as many images of each class as the real training set (one
    for one, so the comparison is of the data, not of its amount); real + synthetic is both.
    Every variant starts from the same seed, is selected on the real validation slices and
    scored on the real test slices; trained-on-real is the classifier.pt itself.
    """
    import torch

    from pipeline.devices import deterministic
    from pipeline.evaluate.measures.classifier import (DEFAULT_SETTINGS, auc_with_interval, fit_classifier,
                                                       load_classifier, predict_logits, to_tensor)

    _, checkpoint = load_classifier(classifier)
    settings = DEFAULT_SETTINGS | checkpoint.get("settings", {})
    counts = [int((train["labels"] == c).sum()) for c in (0, 1)]
    labels = np.repeat(np.arange(2, dtype=np.int64), counts)
    synthetic = draw(sampler, len(labels), labels, seed + TSTR_SEED_OFFSET, train["images"].shape[1:])
    size = settings["image_size"]
    x_val, y_val = to_tensor(val["images"], size), torch.from_numpy(val["labels"])
    x_test = to_tensor(test["images"], size)
    subjects = test["subject_ids"].astype(str)
    variants = {
        "trained_on_synthetic": (synthetic, labels),
        "trained_on_real_and_synthetic": (np.concatenate([train["images"], synthetic]),
                                          np.concatenate([train["labels"], labels])),
    }
    deterministic(device)
    block = {
        "compares": "the real classifier's network and settings trained on generated slices (asked classes as "
        "labels) or on real + generated, selected on the real validation slices, accuracy on the real test slices",
        "n_synthetic_per_class": dict(zip(class_names, counts)),
        "seed": seed,
        "sampling_seed": seed + TSTR_SEED_OFFSET,
    }
    for name, (images, y) in variants.items():
        network, best, _ = fit_classifier(to_tensor(images, size), torch.from_numpy(y), x_val, y_val, settings, seed,
                                          device)
        logits = predict_logits(network, x_test, settings["batch_size"]).cpu()
        predicted = logits.argmax(dim=1).numpy()
        correct = (predicted == test["labels"]).astype(np.float64)
        recalls = [float(correct[test["labels"] == c].mean()) for c in (0, 1) if (test["labels"] == c).any()]
        block[name] = {
            "n_train": len(y),
            "selected_epoch": best["epoch"],
            "kept_seed": best["seed"],
            "attempts": best["attempts"],  # a stalled training restarted from the next seed (`restarts`)
            "test_accuracy": summarise(correct, subjects, policy, share=True),
            "test_balanced_accuracy": float(np.mean(recalls)) if len(recalls) == 2 else None,
            "test_balanced_accuracy_estimate": balanced_accuracy(correct, test["labels"], subjects, policy),
            "test_auc": auc_with_interval(torch.softmax(logits, dim=1)[:, 1].double().numpy(), test["labels"],
                                          subjects, policy),
        }
    return block


def load_labelled(path: Path, need_labels: bool) -> dict[str, np.ndarray]:
    """A slices npz, checked; with its 0 / 1 ``labels`` checked too when the evaluation needs them."""
    return load_labelled_slices(path) if need_labels else load_test_slices(path)


def _input_block(path: Path, data: dict[str, np.ndarray]) -> dict:
    block = {"path": str(path), "sha256": file_sha256(path), "n_images": len(data["images"]),
             "n_subjects": int(len(np.unique(data["subject_ids"].astype(str)))),
             "image_shape": list(data["images"].shape[1:])}
    if "labels" in data:
        block["n_per_label"] = [int((data["labels"] == c).sum()) for c in (0, 1)]
    return block


def evaluate_generation(
    model: Sampler,
    test: Path,
    train: Path,
    val: Path | None = None,
    history: Path | None = None,
    classifier: Path | None = None,
    inception_weights: Path | None = None,
    n_generated: int = 200,
    batch_size: int = 32,
    fid_eps: float = 1e-6,
    frd: bool = True,
    frd_max_images: int = 200,
    copy_search: CopySearch = CopySearch(),
    d_fake_last_epochs: int = 20,
    tstr: bool = True,
    class_names: tuple[str, str] = DEFAULT_CLASS_NAMES,
    n_figure_examples: int = 8,
    walk_steps: int = 8,
    n_nearest_pairs: int = 6,
    device: str = "cpu",
    intervals_policy: IntervalPolicy = IntervalPolicy(),
    seed: int = 0,
    samples_out: Path | None = None,
    per_image_out: Path | None = None,
) -> dict:
    """Metrics of a generator against the real slices, as the dict written to metrics.json.

    test, train, val: slices npz (contract of data/slices/<dataset>/); ``labels`` is required of
    test (and train / val for train-on-synthetic) when the generator is conditional or a
    classifier is given. history: training history.csv (report 002's D(G(z)) measure).
    classifier: classifier.pt trained on real labelled slices (None: classifier blocks null).
    inception_weights: the standard FID file (absent: FID / KID null with the reason).
    n_generated: images per class (conditional) or in all (unconditional), default 200.
    frd / frd_max_images: FRD on at most this many evenly spaced images per set (~0.4 s an image).
    copy_search: the memorisation check's knobs (pipeline.evaluate.measures.memorisation.CopySearch).
    d_fake_last_epochs: epochs averaged in the discriminator measure (report 002: 20).
    tstr: train-on-synthetic / test-on-real (conditional generator, classifier and val needed).
    n_figure_examples, walk_steps, n_nearest_pairs: what samples_out keeps for the figures.
    """
    conditional = bool(model.n_classes)
    if conditional and model.n_classes != len(class_names):
        raise PipelineError(f"the generator has {model.n_classes} classes, the evaluation names {len(class_names)}: "
                            f"{list(class_names)}")
    needs_labels = conditional or classifier is not None
    test_path, train_path = Path(test), Path(train)
    test_data = load_labelled(test_path, needs_labels)
    train_data = load_labelled(train_path, conditional)  # per-class floors and train-on-synthetic need its labels
    if train_data["images"].shape[1:] != test_data["images"].shape[1:]:
        raise InputDataError(train_path, f"slice size {train_data['images'].shape[1:]} differs from {test_path}'s")
    val_data = load_labelled(Path(val), True) if (val is not None and tstr and conditional and classifier) else None
    shape = tuple(test_data["images"].shape[1:])
    policy = intervals_policy

    generated, generated_labels = generate_sets(model, n_generated, seed, shape)
    generated_ids = np.array([f"generated_{i}" for i in range(len(generated))])
    real_subjects = test_data["subject_ids"].astype(str)

    on_floor = floor_rows(len(train_data["images"]), len(generated))
    floor_subjects = train_data["subject_ids"].astype(str)[on_floor]
    floor_sets = {FLOOR_SET: on_floor} | (class_floor_rows(train_data["labels"], generated_labels, class_names)
                                          if conditional else {})
    radiomic_counts = {"real": frd_max_images, "generated": frd_max_images} | {
        name: frd_max_images for name in floor_sets} | (class_floor_radiomic_counts(
            generated_labels, class_names, frd_max_images) if conditional else {})
    features, radiomic_rows, problems = inception_and_radiomic_features(
        {"real": test_data["images"], "generated": generated}
        | {name: train_data["images"][rows] for name, rows in floor_sets.items()},
        inception_weights, frd, radiomic_counts, batch_size, device)
    network = embedding.build_random_vgg()
    embed = lambda images: embedding.embed(images, batch_size, network, device)
    train_embedding = embed(train_data["images"])
    features["embedding"] = {"real": embed(test_data["images"]), "generated": embed(generated)} | {
        name: train_embedding[rows] for name, rows in floor_sets.items()}

    all_real, all_generated = np.arange(len(test_data["images"])), np.arange(len(generated))
    distribution = distribution_block(
        all_real, all_generated, real_subjects, generated_ids, features, radiomic_rows, problems, fid_eps, policy,
        f"{len(generated)} generated images vs {len(all_real)} real test slices",
    )
    distribution["floor"] = floor_block(
        all_real, real_subjects, floor_subjects, len(generated), features, radiomic_rows, problems, fid_eps, policy,
        f"{len(on_floor)} real training slices ({len(np.unique(floor_subjects))} patients) vs {len(all_real)} real "
        "test slices",
    )
    diversity = lambda real_rows, generated_rows: MeanPairwiseDistance(
        features["embedding"]["real"][real_rows], real_subjects[real_rows],
        features["embedding"]["generated"][generated_rows], generated_ids[generated_rows],
    ).block(policy, embedding.SETTINGS["name"])
    distribution["diversity"] = diversity(all_real, all_generated)
    per_class, per_class_reason = None, "unconditional generator" if not conditional else None
    if conditional:
        per_class = {}
        for c, name in enumerate(class_names):
            real_rows = np.flatnonzero(test_data["labels"] == c)
            generated_rows = np.flatnonzero(generated_labels == c)
            if len(real_rows) < 2:
                per_class[name] = {"reason": f"{len(real_rows)} real test slices of class {name}: too few to compare"}
                continue
            per_class[name] = distribution_block(
                real_rows, generated_rows, real_subjects, generated_ids, features, radiomic_rows, problems, fid_eps,
                policy, f"{len(generated_rows)} generated images asked to be {name} vs {len(real_rows)} real {name} "
                "test slices",
            ) | {"reason": None, "diversity": diversity(real_rows, generated_rows)}
            floor_of_class = floor_sets[class_floor_set(name)]
            per_class[name]["floor"] = unavailable_floor(f"{len(floor_of_class)} real training slices of class {name}: "
                                                         "too few to compare") if len(floor_of_class) < 2 else floor_block(
                real_rows, real_subjects, train_data["subject_ids"].astype(str)[floor_of_class], len(generated_rows),
                features, radiomic_rows, problems, fid_eps, policy,
                f"{len(floor_of_class)} real {name} training slices vs {len(real_rows)} real {name} test slices",
                sets=("real", class_floor_set(name)))

    memo, memo_values = memorisation_module.memorisation(
        generated, train_data["images"], train_data["subject_ids"].astype(str), test_data["images"], real_subjects,
        embed=embed, feature_space=embedding.SETTINGS["name"],
        known_features={"generated": features["embedding"]["generated"], "heldout": features["embedding"]["real"]},
        search=copy_search, policy=policy, device=device,
    )

    per_image: dict[str, np.ndarray] = {"generated_labels": generated_labels if conditional else np.zeros(0, np.int64)}
    per_image |= {f"memorisation_{key}": value for key, value in memo_values.items()}
    if classifier is not None:
        classifier_info, classifier_values = classifier_blocks(
            Path(classifier), test_data, generated, generated_labels, generated_ids, class_names, batch_size, policy,
            device)
        per_image |= classifier_values
    else:
        classifier_info = {"reason": "no classifier given"}
    if not tstr:
        tstr_info = {"reason": "train-on-synthetic switched off (evaluate.tstr: false)"}
    elif not conditional:
        tstr_info = {"reason": "unconditional generator: generated images have no label to train on"}
    elif classifier is None or val_data is None:
        tstr_info = {"reason": "needs the real classifier and the validation slices"}
    else:
        tstr_info = tstr_block(model, Path(classifier), train_data, val_data, test_data, class_names, seed, policy,
                               device)
        tstr_info["trained_on_real"] = {"test_accuracy": classifier_info["test_accuracy"],
                                        "test_balanced_accuracy": classifier_info["test_balanced_accuracy"],
                                        "test_auc": classifier_info["real_test"]["auc"],
                                        "note": "the classifier.pt itself (same network and settings; its "
                                        "seed is classifier.json's kept_seed)"}
        tstr_info["reason"] = None

    metrics = {
        "schema_version": 1,
        "task": "generation",
        "generator": {"n_classes": int(model.n_classes), "class_names": list(class_names) if conditional else None,
                      "image_shape": list(shape), "n_generated": len(generated),
                      "n_generated_per_class": n_generated if conditional else None, "seed": seed},
        "inputs": {"test": _input_block(test_path, test_data), "train": _input_block(train_path, train_data)}
        | ({"val": _input_block(Path(val), val_data)} if val_data is not None else {}),
        "settings": {
            "data_range": 1.0,
            "normalisation": "slices and generated images in [0,1] (the windowed slices of the dataset)",
            "features": {"inception": fid_module.FEATURE_SETTINGS, "embedding": embedding.SETTINGS,
                         "radiomics": frd_module.FRD_SETTINGS | {"enabled": frd, "max_images_per_set": frd_max_images}},
            "inception_weights": None if inception_weights is None else str(inception_weights),
            "fid_eps": fid_eps,
            "prdc": prdc_module.DEFINITION.format(k=prdc_module.NEAREST_K),
            "memorisation": memo["definition"],
            "classifier": "called class 1 when P(class 1) > 0.5; shares and mean probabilities null with the reason "
            "when the classifier fails its real-test check (classifier.real_test); train-on-synthetic is never "
            "nulled: each variant's own real-test AUC and balanced accuracy are its result",
            "intervals": policy.describe() | {"generated_units": "each generated image is its own unit"},
            "seed": seed,
        },
        "distribution": distribution,
        "per_class": per_class,
        "per_class_reason": per_class_reason,
        "discriminator": discriminator_block(history, d_fake_last_epochs),
        "classifier": classifier_info,
        "tstr": tstr_info,
        "memorisation": memo,
    }
    if samples_out is not None:
        save_samples(samples_out, model, generated, generated_labels, test_data, train_data, memo_values,
                     class_names, n_figure_examples, walk_steps, n_nearest_pairs, seed, memo["pixel"]["threshold"])
    if per_image_out is not None:
        with atomic_path(per_image_out) as tmp:
            np.savez_compressed(tmp, **per_image)
    return metrics


def noise_walk(sampler: Sampler, steps: int, labels: np.ndarray | None, seed: int) -> np.ndarray | None:
    """Images along the great circle between two seeded noise vectors (spherical interpolation,
    which keeps the norm of Gaussian noise), one row per label; None when the sampler has no
    ``noise`` / ``generate`` pair."""
    if not (hasattr(sampler, "noise") and hasattr(sampler, "generate")):
        return None
    import torch

    start, end = (sampler.noise(1, seed + offset)[0].double() for offset in WALK_SEED_OFFSETS)
    angle = torch.arccos(torch.clamp(torch.dot(start, end) / (start.norm() * end.norm()), -1.0, 1.0))
    fractions = torch.linspace(0.0, 1.0, steps, dtype=torch.float64)
    if float(angle) < 1e-6:
        walk = start[None] * (1 - fractions[:, None]) + end[None] * fractions[:, None]
    else:
        walk = (torch.sin((1 - fractions) * angle)[:, None] * start + torch.sin(fractions * angle)[:, None] * end
                ) / torch.sin(angle)
    walk = walk.float()
    rows = [None] if labels is None else list(labels)
    return np.stack([
        sampler.generate(walk, None if label is None else np.full(steps, label, np.int64)) for label in rows
    ])


def save_samples(target: Path, sampler: Sampler, generated: np.ndarray, generated_labels: np.ndarray | None,
                 test: dict[str, np.ndarray], train: dict[str, np.ndarray], memo_values: dict[str, np.ndarray],
                 class_names: tuple[str, str], n_examples: int, walk_steps: int, n_pairs: int, seed: int,
                 threshold: float) -> None:
    """samples.npz for the figures: per-class grids of generated and real images, the noise walk,
    and the generated images nearest to a training image (pixel space) with their neighbours."""
    rows = list(class_names) if generated_labels is not None else ["generated"]
    arrays: dict[str, np.ndarray] = {"row_names": np.array(rows)}
    for index, name in enumerate(rows):
        mask = generated_labels == index if generated_labels is not None else np.ones(len(generated), bool)
        real_mask = test["labels"] == index if generated_labels is not None else np.ones(len(test["images"]), bool)
        arrays[f"grid_generated_{index}"] = generated[mask][:n_examples]
        real = test["images"][real_mask]
        arrays[f"grid_real_{index}"] = real[fixed_sample_indices(len(real), n_examples)] if len(real) else real
    walk = noise_walk(sampler, walk_steps, None if generated_labels is None else np.arange(len(rows)), seed)
    if walk is not None:
        arrays["walk"] = walk
    order = np.argsort(memo_values["pixel_nearest_train_distance"], kind="stable")[:n_pairs]
    train_index = memo_values["pixel_nearest_train_index"][order]
    heldout_index = memo_values["pixel_nearest_heldout_index"][order]
    flip = lambda images, flipped: np.where(flipped[:, None, None], images[..., ::-1], images)
    arrays |= {
        "pairs_generated": generated[order],
        "pairs_train": flip(train["images"][train_index], memo_values["pixel_nearest_train_flipped"][order]),
        "pairs_train_flipped": memo_values["pixel_nearest_train_flipped"][order],
        "pairs_train_subject": train["subject_ids"][train_index].astype(str),
        "pairs_train_distance": memo_values["pixel_nearest_train_distance"][order],
        "pairs_heldout": flip(test["images"][heldout_index], memo_values["pixel_nearest_heldout_flipped"][order]),
        "pairs_heldout_distance": memo_values["pixel_nearest_heldout_distance"][order],
        "pairs_threshold": np.array(threshold),
    }
    with atomic_path(target) as tmp:
        np.savez_compressed(tmp, **arrays)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m pipeline.evaluate.tasks.generation", description=__doc__.splitlines()[0])
    cli.add_common_arguments(parser, "trained model.pt of a generator")
    parser.add_argument("--test", type=Path, required=True, help="real held-out test.npz")
    parser.add_argument("--train", type=Path, required=True, help="the generator's training slices (memorisation)")
    parser.add_argument("--val", type=Path, help="real validation slices (train-on-synthetic selection)")
    parser.add_argument("--history", type=Path, help="training history.csv (D(G(z)) measure, training curves)")
    parser.add_argument("--classifier", type=Path, help="classifier.pt trained on real labelled slices")
    parser.add_argument("--inception-weights", type=Path, help="pt_inception-2015-12-05-6726825d.pth")
    parser.add_argument("--class-names", nargs=2, default=list(DEFAULT_CLASS_NAMES), metavar=("NAME0", "NAME1"))
    parser.add_argument("--n-generated", type=int, default=200, help="images per class (conditional) or in all")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--fid-eps", type=float, default=1e-6)
    parser.add_argument("--skip-frd", action="store_true", help="leave FRD null (PyRadiomics ~0.4 s an image)")
    parser.add_argument("--frd-max-images", type=int, default=200)
    cli.add_memorisation_arguments(parser)
    parser.add_argument("--d-fake-last-epochs", type=int, default=20)
    parser.add_argument("--skip-tstr", action="store_true", help="no train-on-synthetic / test-on-real")
    parser.add_argument("--n-figure-examples", type=int, default=8)
    parser.add_argument("--walk-steps", type=int, default=8)
    parser.add_argument("--n-nearest-pairs", type=int, default=6)
    parser.add_argument("--samples-out", type=Path, help="samples.npz for the figures")
    parser.add_argument("--per-image-out", type=Path, help="npz of every per-image value")
    parser.add_argument("--sample-grid", type=Path, help="draw real vs generated per class here")
    parser.add_argument("--noise-walk", type=Path, help="draw the walk between two noise vectors here")
    parser.add_argument("--nearest-pairs", type=Path, help="draw the generated images nearest to training ones here")
    parser.add_argument("--training-curves", type=Path, help="draw losses and D(x), D(G(z)) here (needs --history)")
    args = parser.parse_args(argv)
    cli.require_with(parser, args, ("sample_grid", "noise_walk", "nearest_pairs"), "samples_out")
    cli.require_with(parser, args, ("training_curves",), "history")
    return args


def report(metrics: dict) -> None:
    """Log PRDC and the memorisation shares, and a warning when memorisation is flagged."""
    memo = metrics["memorisation"]
    log.info("PRDC %s; near copies of training slices (pixels) %.3f of generated vs %.3f of new patients' slices%s",
             {m: round(metrics["distribution"]["prdc"][m]["value"], 3) for m in prdc_module.MEASURES}
             if metrics["distribution"]["prdc"]["reason"] is None else metrics["distribution"]["prdc"]["reason"],
             memo["pixel"]["share_near_copies"]["value"], memo["pixel"]["reference_share_near_copies"]["value"],
             " FLAGGED" if memo["flagged"] else "")
    if memo["flagged"]:
        log.warning("more generated images are near copies of training slices than new patients' slices are: "
                    "it may reproduce patient anatomy")


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    from pipeline import figures

    def evaluate(model, device: str) -> dict:
        return evaluate_generation(
            model, args.test, args.train, val=args.val, history=args.history, classifier=args.classifier,
            inception_weights=args.inception_weights, n_generated=args.n_generated, batch_size=args.batch_size,
            fid_eps=args.fid_eps, frd=not args.skip_frd, frd_max_images=args.frd_max_images,
            copy_search=cli.copy_search(args),
            d_fake_last_epochs=args.d_fake_last_epochs, tstr=not args.skip_tstr,
            class_names=tuple(args.class_names), n_figure_examples=args.n_figure_examples,
            walk_steps=args.walk_steps, n_nearest_pairs=args.n_nearest_pairs, device=device,
            intervals_policy=cli.interval_policy(args), seed=args.seed, samples_out=args.samples_out,
            per_image_out=args.per_image_out,
        )

    samples = args.samples_out
    draw_figures = lambda metrics: cli.draw([
        (args.sample_grid, lambda out: figures.generated_grid(samples, out)),
        (args.noise_walk, lambda out: figures.noise_walk(samples, out)),
        (args.nearest_pairs, lambda out: figures.nearest_pairs(samples, out)),
        (args.training_curves, lambda out: cli.training_curves(args.model, args.history, out)),
    ])
    return cli.run_evaluation(args, "generation", "a generator", evaluate, draw_figures,
                              outputs=[args.samples_out, args.per_image_out], report=report, log=log)


if __name__ == "__main__":
    sys.exit(main())
