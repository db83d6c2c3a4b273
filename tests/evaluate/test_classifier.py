from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from pipeline.evaluate import classifier

SIZE = 16


def write_split(folder, split: str, n_subjects: int, rng: np.random.Generator) -> dict:
    """Domain a: dark noisy squares; domain b: bright ones with a disc -- easy for a real classifier."""
    yy, xx = np.mgrid[:SIZE, :SIZE]
    disc = ((yy - SIZE / 2) ** 2 + (xx - SIZE / 2) ** 2 < (SIZE / 4) ** 2).astype(np.float32)
    paths = {}
    for domain, (level, with_disc) in {"a": (0.2, False), "b": (0.5, True)}.items():
        n = 3 * n_subjects
        images = level + 0.1 * rng.random((n, SIZE, SIZE)) + (0.3 * disc if with_disc else 0.0)
        paths[domain] = folder / f"{domain}_{split}.npz"
        np.savez(
            paths[domain],
            images=np.clip(images, 0, 1).astype(np.float32),
            subject_ids=np.repeat([f"{domain}{split}{i}" for i in range(n_subjects)], 3),
            slice_index=np.tile(np.arange(3), n_subjects),
        )
    return paths


@pytest.fixture(scope="module")
def splits(tmp_path_factory):
    folder = tmp_path_factory.mktemp("slices")
    rng = np.random.default_rng(0)
    return {split: write_split(folder, split, n, rng) for split, n in (("train", 4), ("val", 2), ("test", 2))}


def train(splits, out, seed=3):
    return classifier.train_classifier(
        splits["train"], splits["val"], splits["test"], out / "classifier.pt", out / "classifier.json",
        domain_names=("CT", "MR"), epochs=8, batch_size=4, lr=1e-2, width=4, n_blocks=2, image_size=SIZE,
        threads=1, seed=seed,
    )


def test_classifier_learns_the_domains_and_scores_translations(splits, tmp_path):
    summary = train(splits, tmp_path)
    assert summary["test_accuracy"] == 1.0 and summary["test_balanced_accuracy"] == 1.0
    assert summary["n_train"] == [12, 12] and 1 <= summary["selected_epoch"] <= summary["epochs_run"] <= 8
    assert json.loads((tmp_path / "classifier.json").read_text())["domain_names"] == ["CT", "MR"]
    network, checkpoint = classifier.load_classifier(tmp_path / "classifier.pt")
    with np.load(splits["test"]["b"]) as b, np.load(splits["test"]["a"]) as a:
        p_b = classifier.probability_of_b(network, checkpoint, np.concatenate([a["images"], b["images"]]))
    assert np.all(p_b[:6] < 0.5) and np.all(p_b[6:] > 0.5)
    larger = classifier.probability_of_b(network, checkpoint, np.full((2, 2 * SIZE, 2 * SIZE), 0.2, np.float32))
    assert larger.shape == (2,)  # resized to the training size


def test_same_seed_same_classifier(splits, tmp_path):
    train(splits, tmp_path / "one")
    train(splits, tmp_path / "two")
    train(splits, tmp_path / "other", seed=4)
    weights = {
        run: torch.load(tmp_path / run / "classifier.pt", weights_only=True)["state_dict"]
        for run in ("one", "two", "other")
    }
    assert all(torch.equal(weights["one"][k], weights["two"][k]) for k in weights["one"])
    assert not all(torch.equal(weights["one"][k], weights["other"][k]) for k in weights["one"])
