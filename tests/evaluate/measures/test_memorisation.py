from __future__ import annotations

import numpy as np
import pytest

from generation_support import CopySampler, FreshSampler, make_split
from pipeline.evaluate.measures import embedding, memorisation
from pipeline.evaluate.measures.intervals import IntervalPolicy

POLICY = IntervalPolicy(min_subjects=3, n_boot=100, seed=0)
N_GENERATED = 60


@pytest.fixture(scope="module")
def data():
    train = make_split(seed=10, n_subjects=12, slices=4, prefix="train")
    heldout = make_split(seed=11, n_subjects=8, slices=4, prefix="test")
    network = embedding.build_random_vgg()
    embed = lambda images: embedding.embed(images, network=network)
    return {
        "train": train,
        "heldout": heldout,
        "embed": embed,
        "train_features": (embed(train["images"]), embed(train["images"][..., ::-1])),
        "heldout_features": (embed(heldout["images"]), embed(heldout["images"][..., ::-1])),
    }


def check(data, generated):
    return memorisation.memorisation(
        generated, data["train"]["images"], data["heldout"]["images"], data["heldout"]["subject_ids"],
        generated_features=data["embed"](generated), train_features=data["train_features"],
        heldout_features=data["heldout_features"], feature_space="random_vgg16", quantile=0.05, max_share=0.2,
        policy=POLICY,
    )


def brute_force_distance_to_train(image: np.ndarray, train: np.ndarray) -> float:
    """RMS distance to the nearest training slice or its mirror image, with plain loops."""
    candidates = list(train) + [t[:, ::-1] for t in train]
    return min(float(np.sqrt(np.mean((image.astype(np.float64) - t) ** 2))) for t in candidates)


@pytest.mark.parametrize("mode", ["exact", "flip", "noise"])
def test_a_generator_that_returns_training_slices_is_flagged(data, mode):
    sampler = CopySampler(data["train"], mode=mode, noise_sigma=0.02)
    generated = sampler.sample(N_GENERATED, seed=1)
    block, per_image = check(data, generated)
    assert block["flagged"] and block["pixel"]["flagged"]
    assert block["pixel"]["share_closer"]["value"] >= 0.95
    if mode == "noise":  # noise reaches the random features too; exact and mirrored copies must be found there
        assert block["feature"]["share_closer"]["value"] >= 0.5
    else:
        assert block["feature"]["flagged"] and block["feature"]["share_closer"]["value"] >= 0.95
        # the copied slice itself is found, and whether it was mirrored
        assert np.array_equal(per_image["pixel_nearest_train_index"], sampler.last_indices)
        assert np.all(per_image["pixel_nearest_train_flipped"] == (mode == "flip"))
        assert np.allclose(per_image["pixel_nearest_train_distance"], 0.0, atol=1e-5)


def test_a_generator_that_draws_new_patients_is_not_flagged(data):
    generated = FreshSampler(n_classes=0).sample(N_GENERATED, seed=5)
    block, _ = check(data, generated)
    assert not block["flagged"]
    assert block["pixel"]["share_closer"]["value"] <= 0.2 and block["feature"]["share_closer"]["value"] <= 0.2
    # the same held-out set defines "close": about the quantile's share of new patients fall below it
    assert block["pixel"]["median_distance_generated_to_train"] > block["pixel"]["threshold"]


def test_threshold_and_distances_match_a_brute_force_computation(data):
    generated = CopySampler(data["train"], mode="noise", noise_sigma=0.05).sample(12, seed=2)
    block, per_image = check(data, generated)
    heldout_distances = [brute_force_distance_to_train(h, data["train"]["images"]) for h in data["heldout"]["images"]]
    assert block["pixel"]["threshold"] == pytest.approx(np.quantile(heldout_distances, 0.05), rel=1e-6)
    expected = [brute_force_distance_to_train(g, data["train"]["images"]) for g in generated]
    assert per_image["pixel_nearest_train_distance"] == pytest.approx(expected, rel=1e-6)
    share = np.mean(np.array(expected) < np.quantile(heldout_distances, 0.05))
    assert block["pixel"]["share_closer"]["value"] == pytest.approx(share)


def test_interval_of_the_share_contains_it_and_needs_enough_patients(data):
    generated = FreshSampler(n_classes=0).sample(30, seed=6)
    block, _ = check(data, generated)
    share = block["pixel"]["share_closer"]
    assert share["ci_method"] == "subject_jackknife"
    assert share["ci95"][0] <= share["value"] <= share["ci95"][1]
    few = memorisation.memorisation(generated, data["train"]["images"], data["heldout"]["images"][:8],
                                    data["heldout"]["subject_ids"][:8], policy=POLICY)[0]
    assert few["pixel"]["share_closer"]["ci95"] is None and "subjects" in few["pixel"]["share_closer"]["ci95_reason"]
    assert few["feature"] is None and few["feature_reason"]


def test_mismatched_sizes_are_a_clear_error(data):
    with pytest.raises(ValueError, match="one size"):
        memorisation.memorisation(np.zeros((3, 16, 16)), data["train"]["images"], data["heldout"]["images"],
                                  data["heldout"]["subject_ids"])
