from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from scipy import stats

from pipeline.evaluate.measures import classifier
from pipeline.evaluate.measures.intervals import IntervalPolicy

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


def train(splits, out, seed=3, **knobs):
    return classifier.train_classifier(
        splits["train"], splits["val"], splits["test"], out / "classifier.pt", out / "classifier.json",
        domain_names=("CT", "MR"), epochs=8, batch_size=4, lr=1e-2, width=4, n_blocks=2, image_size=SIZE,
        threads=1, seed=seed, **knobs,
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


def test_labelled_mode_learns_healthy_vs_haemorrhage_through_the_cli(tmp_path):
    """One dataset's slices, label 0 vs 1 from its ``labels`` array; the checkpoint keeps every setting."""
    from generation_support import make_split, write_npz

    paths = {name: write_npz(tmp_path / f"{name}.npz", make_split(seed, n, 4, name))
             for name, seed, n in (("train", 20, 10), ("val", 21, 4), ("test", 22, 6))}
    code = classifier.main([
        "--train", str(paths["train"]), "--val", str(paths["val"]), "--test", str(paths["test"]),
        "--class-names", "healthy", "haemorrhage", "--epochs", "20", "--batch-size", "8", "--lr", "3e-3",
        "--width", "8", "--n-blocks", "3", "--image-size", "32", "--patience", "20", "--threads", "1",
        "--activation", "leaky_relu", "--shift-pixels", "2",
        "--out-model", str(tmp_path / "classifier.pt"), "--out-json", str(tmp_path / "classifier.json"),
    ])
    assert code == 0
    summary = json.loads((tmp_path / "classifier.json").read_text())
    with np.load(paths["test"]) as test:
        assert summary["n_test"] == [int((test["labels"] == 0).sum()), int((test["labels"] == 1).sum())]
    assert summary["class_names"] == ["healthy", "haemorrhage"] and summary["test_balanced_accuracy"] > 0.8
    checkpoint = torch.load(tmp_path / "classifier.pt", weights_only=True)
    assert checkpoint["settings"] == {"epochs": 20, "batch_size": 8, "lr": 3e-3, "weight_decay": 1e-4, "width": 8,
                                      "n_blocks": 3, "image_size": 32, "flip_probability": 0.5, "patience": 20,
                                      "min_epochs": 20, "min_auc": 0.7, "min_confidence": 0.6,
                                      "pooling": "average",
                                      "activation": "leaky_relu", "shift_pixels": 2, "restarts": 0}
    assert summary["attempts"][0]["seed"] == summary["kept_seed"]  # the first attempt learned: kept
    assert len(summary["attempts"]) == 1
    assert checkpoint["activation"] == "leaky_relu"
    network, _ = classifier.load_classifier(tmp_path / "classifier.pt")
    assert any(isinstance(m, torch.nn.LeakyReLU) for m in network)
    assert summary["settings"]["architecture"].startswith("3 x (conv3x3-leaky_relu-maxpool)")


def test_labelled_mode_bad_input_names_the_file(tmp_path, splits):
    # a domain-mode npz has no labels: the error names the file and the missing array
    with pytest.raises(classifier.InputDataError, match="missing array 'labels'") as error:
        classifier.train_label_classifier(splits["train"]["a"], splits["val"]["a"], splits["test"]["a"],
                                          tmp_path / "c.pt", tmp_path / "c.json", epochs=1)
    assert str(splits["train"]["a"]) in str(error.value)
    assert not (tmp_path / "c.pt").exists()
    with pytest.raises(SystemExit):  # the two modes do not mix
        classifier.main(["--train", "t.npz", "--val", "v.npz", "--test", "x.npz", "--train-a", "a.npz",
                         "--out-model", "m.pt", "--out-json", "m.json"])


POLICY = IntervalPolicy(min_subjects=4, n_boot=300, seed=0)


def auc_by_hand(scores, labels) -> float:
    pairs = [(p, n) for p, lp in zip(scores, labels) if lp == 1 for n, ln in zip(scores, labels) if ln == 0]
    return float(np.mean([1.0 if p > n else 0.5 if p == n else 0.0 for p, n in pairs]))


def scored_slices(separation: float, seed: int = 0):
    """12 patients x 4 slices, two of each patient's slices class 1; P(class 1) rises with ``separation``."""
    rng = np.random.default_rng(seed)
    labels = np.tile([0, 0, 1, 1], 12)
    subjects = np.repeat([f"p{i}" for i in range(12)], 4)
    scores = 1 / (1 + np.exp(-(separation * (labels - 0.5) + rng.normal(size=48))))
    return scores, labels, subjects


def test_auc_and_its_interval_over_patients_match_a_hand_count():
    scores, labels, subjects = scored_slices(separation=2.0)
    scores[5] = scores[8]  # a tie counts one half
    block = classifier.auc_with_interval(scores, labels, subjects, POLICY)
    assert block["value"] == pytest.approx(auc_by_hand(scores, labels), abs=1e-12)
    assert block["n_positive"] == 24 and block["n_negative"] == 24 and block["n_subjects"] == 12
    low, high = block["ci95"]
    assert low < block["value"] < high and high - low > 0.05 and block["ci_method"] == "subject_bootstrap"
    # the interval resamples patients: by hand, replicate AUCs of patient resamples bracket it the same way
    rng = np.random.default_rng(1)
    replicates = []
    for _ in range(300):
        drawn = rng.integers(0, 12, 12)
        rows = np.concatenate([np.flatnonzero(subjects == f"p{i}") for i in drawn])
        replicates.append(auc_by_hand(scores[rows], labels[rows]))
    assert np.percentile(replicates, 2.5) == pytest.approx(low, abs=0.04)
    assert np.percentile(replicates, 97.5) == pytest.approx(high, abs=0.04)
    one_class = classifier.auc_with_interval(scores[labels == 1], labels[labels == 1], subjects[labels == 1], POLICY)
    assert one_class["value"] is None and "one class" in one_class["reason"]


def test_a_perfect_ranking_on_eight_patients_is_not_an_interval_at_one():
    """Every positive above every negative: every bootstrap replicate is 1 and the percentile
    interval [1, 1] would pass 'AUC >= 0.95' from 8 patients; Wilson with n = 8 subjects instead."""
    labels = np.tile([0, 0, 1, 1], 8)
    subjects = np.repeat([f"p{i}" for i in range(8)], 4)
    block = classifier.auc_with_interval(labels * 0.8 + 0.1, labels, subjects, POLICY)
    q2 = stats.t.ppf(0.975, 7) ** 2
    wilson_low = (1 + q2 / 16 - np.sqrt(q2) * np.sqrt(q2 / 256)) / (1 + q2 / 8)
    assert block["value"] == 1.0 and block["ci_method"] == "wilson_at_bound"
    assert block["ci95"] == pytest.approx([wilson_low, 1.0]) and block["ci95"][0] < 0.6


def test_a_classifier_that_ranks_well_but_calls_one_class_the_other_at_one_half_is_not_usable():
    """Healthy slices at P(haemorrhage) 0.05, haemorrhage ones at 0.30-0.45: every pair ranked right
    (AUC 1) and a balanced mean P(true class) of ~0.67, yet no haemorrhage slice is called
    haemorrhage at 0.5, the cut-off every share uses."""
    labels = np.tile([0, 0, 1, 1], 12)
    subjects = np.repeat([f"p{i}" for i in range(12)], 4)
    scores = np.where(labels == 1, np.linspace(0.30, 0.45, 48), 0.05)
    check = classifier.real_test_check(scores, labels, subjects, POLICY, min_auc=0.7, min_confidence=0.6,
                                       class_names=("healthy", "haemorrhage"))
    assert check["auc"]["value"] == 1.0 and check["mean_probability_true_class"] > 0.6
    assert check["recall_at_half"]["haemorrhage"]["mean"] == 0.0 and check["recall_at_half"]["healthy"]["mean"] == 1.0
    assert check["recall_at_half"]["healthy"]["ci_method"] == "subject_wilson"
    assert not check["usable"] and "class haemorrhage" in check["reason"] and "0.000" in check["reason"]
    fair = classifier.real_test_check(np.where(labels == 1, 0.8, 0.05), labels, subjects, POLICY, min_auc=0.7,
                                      min_confidence=0.6, class_names=("healthy", "haemorrhage"))
    assert fair["usable"] and fair["recall_at_half"]["haemorrhage"]["mean"] == 1.0


def test_a_constant_classifier_and_one_hovering_at_one_half_are_not_usable():
    scores, labels, subjects = scored_slices(separation=0.0)
    constant = classifier.real_test_check(np.full(48, 0.501), labels, subjects, POLICY, min_auc=0.7, min_confidence=0.6)
    assert constant["auc"]["value"] == 0.5 and not constant["usable"] and "min_auc" in constant["reason"]
    assert constant["balanced_accuracy"] == 0.5  # everything called class 1: recall 1 and 0
    # ranks the classes perfectly by the fourth decimal, every output ~0.5: AUC 1, but its probabilities say nothing
    hovering = 0.5 + 1e-4 * (labels - 0.5)
    check = classifier.real_test_check(hovering, labels, subjects, POLICY, min_auc=0.7, min_confidence=0.6)
    assert check["auc"]["value"] == 1.0 and check["balanced_accuracy"] == 1.0
    assert not check["usable"] and "hover" in check["reason"]
    scores, labels, subjects = scored_slices(separation=6.0)
    good = classifier.real_test_check(scores, labels, subjects, POLICY, min_auc=0.7, min_confidence=0.6)
    assert good["usable"] and good["reason"] is None and good["auc"]["ci95"][0] > 0.5
    # an AUC above the minimum whose interval still reaches chance is not usable either
    scores, labels, subjects = scored_slices(separation=0.8, seed=2)
    weak = classifier.real_test_check(scores, labels, subjects, POLICY, min_auc=0.6, min_confidence=0.5)
    assert weak["auc"]["value"] > 0.6 and weak["auc"]["ci95"][0] <= 0.5
    assert not weak["usable"] and "reaching chance" in weak["reason"]



def test_max_pooling_keeps_a_small_lesions_evidence_whatever_the_image_around_it():
    """A bright 2 x 2 spot on an empty 16 px image and the same spot on a 64 px one: with max
    pooling the logits are the same (the strongest local response), with average pooling the 15
    extra sixteenths of empty image dilute them (why the haemorrhage classifier pools by max)."""
    torch.manual_seed(0)
    small, large = torch.zeros(1, 1, 16, 16), torch.zeros(1, 1, 64, 64)
    small[..., 7:9, 7:9] = 1.0
    large[..., 7:9, 7:9] = 1.0
    by_max = classifier.build_network(4, 2, "max").eval()
    by_average = classifier.build_network(4, 2, "average").eval()
    by_average.load_state_dict(by_max.state_dict())  # the same weights: only the pooling differs
    with torch.no_grad():
        assert torch.allclose(by_max(small), by_max(large), atol=1e-6)
        assert not torch.allclose(by_average(small), by_average(large), atol=1e-3)
    with pytest.raises(ValueError, match="pooling"):
        classifier.build_network(4, 2, "median")


def test_max_pooled_classifier_learns_small_bright_spots_in_varied_heads():
    """Heads of random size and skull thickness; positives carry one bright 2 x 2 spot inside,
    as a small bleed in a 64 px brain-window slice. The max-pooled classifier, trained as the
    pipeline trains it, must tell held-out heads apart (balanced accuracy >= 0.9)."""
    size, rng = 32, np.random.default_rng(5)
    yy, xx = np.mgrid[:size, :size]

    def heads(n):
        labels = np.arange(n) % 2
        images = np.zeros((n, size, size), np.float32)
        for image, label in zip(images, labels):
            radius, skull = rng.uniform(9, 13), rng.uniform(1.0, 2.5)
            r = np.hypot(yy - size / 2, xx - size / 2)
            image[r < radius] = 1.0
            image[r < radius - skull] = 0.4 + 0.05 * rng.standard_normal((r < radius - skull).sum())
            if label:
                i, j = rng.integers(size // 2 - 5, size // 2 + 4, 2)
                image[i:i + 2, j:j + 2] = 1.0
        return torch.from_numpy(np.clip(images, 0, 1))[:, None], torch.from_numpy(labels)

    torch.set_num_threads(1)
    settings = classifier.DEFAULT_SETTINGS | {"pooling": "max", "width": 8, "epochs": 25, "min_epochs": 25,
                                             "batch_size": 16, "lr": 3e-3, "patience": 25, "image_size": size}
    network, _, _ = classifier.fit_classifier(*heads(160), *heads(40), settings, seed=0)
    x_test, y_test = heads(80)
    _, balanced, _ = classifier._scores(classifier.predict_logits(network, x_test, 32), y_test)
    assert balanced >= 0.9, balanced


def test_random_shift_moves_each_image_by_its_own_offset_and_fills_with_zeros():
    """Each image of the batch is its own whole-pixel translation of the input (the offset read
    back from where a single bright pixel went), within +-max_shift, and what came in from
    outside the image is 0, as the slices' background."""
    n, size, k = 64, 12, 3
    images = torch.zeros(n, 1, size, size)
    images[:, 0, 5, 6] = 1.0
    images[:, 0, 0, :] = 0.5  # a top row that must move with the image, not wrap round
    moved = classifier.random_shift(images, k, torch.Generator().manual_seed(0))
    assert moved.shape == images.shape
    offsets = set()
    for image in moved[:, 0]:
        row, col = divmod(int(image.argmax()), size)
        dy, dx = row - 5, col - 6
        assert abs(dy) <= k and abs(dx) <= k
        expected = torch.zeros(size, size)
        src = images[0, 0]
        for i in range(size):
            for j in range(size):
                if 0 <= i - dy < size and 0 <= j - dx < size:
                    expected[i, j] = src[i - dy, j - dx]
        assert torch.equal(image, expected)
        offsets.add((dy, dx))
    assert len(offsets) > 20  # drawn per image, not one offset for the batch
    assert {dy for dy, _ in offsets} >= {-k, k} and {dx for _, dx in offsets} >= {-k, k}  # the whole range
    generator = torch.Generator().manual_seed(1)
    state = generator.get_state()
    assert torch.equal(classifier.random_shift(images, 0, generator), images)
    assert torch.equal(generator.get_state(), state)  # off draws nothing: other classifiers unchanged
    with pytest.raises(ValueError, match="shift_pixels"):
        classifier._settings({"shift_pixels": -1})
    with pytest.raises(ValueError, match="shift_pixels"):
        classifier._settings({"shift_pixels": 32, "image_size": 64})


def test_same_seed_same_shifted_classifier(splits, tmp_path):
    """Shifts are drawn from the seeded generator: two runs with the same seed give the same network."""
    first = train(splits, tmp_path / "one", shift_pixels=2)
    second = train(splits, tmp_path / "two", shift_pixels=2)
    assert first["history"] == second["history"]
    train(splits, tmp_path / "unshifted")
    a, b, c = (torch.load(tmp_path / run / "classifier.pt", weights_only=True)["state_dict"]
               for run in ("one", "two", "unshifted"))
    assert all(torch.equal(a[key], b[key]) for key in a)
    assert not all(torch.equal(a[key], c[key]) for key in a)  # the shifts did reach training


def test_a_leaky_classifier_is_rebuilt_as_it_was_trained(tmp_path):
    """The activation travels in classifier.pt: a leaky-ReLU network loaded back scores images as
    the trained one did (a ReLU rebuild has the same weights, so only the scores tell)."""
    torch.manual_seed(0)
    network = classifier.build_network(4, 2, "max", "leaky_relu").eval()
    assert any(isinstance(m, torch.nn.LeakyReLU) for m in network)
    path = tmp_path / "classifier.pt"
    torch.save({"state_dict": network.state_dict(), "width": 4, "n_blocks": 2, "pooling": "max",
                "activation": "leaky_relu", "image_size": 16}, path)
    loaded, _ = classifier.load_classifier(path)
    images = torch.rand(8, 1, 16, 16) - 0.5
    with torch.no_grad():
        assert torch.allclose(loaded(images), network(images))
        relu = classifier.build_network(4, 2, "max", "relu").eval()
        relu.load_state_dict(network.state_dict())
        assert not torch.allclose(relu(images), network(images), atol=1e-4)
    with pytest.raises(ValueError, match="activation"):
        classifier.build_network(4, 2, "max", "gelu")


def _noise_task(n, seed):
    """Labels no image can predict: a short training stays at ~ln 2 on its training data (a stall)."""
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, 16, 16, generator=generator), torch.arange(n) % 2


def test_a_stalled_training_restarts_from_the_next_seed_and_keeps_the_lowest_validation_loss():
    """Unlearnable labels stall every attempt: restarts 2 makes three, from seed, seed + 1, seed + 2,
    and the network returned scores the lowest of their validation losses (recomputed here with
    torch's cross-entropy on its logits, not read from the summary; the classes are balanced, so
    the training's class weights are 1)."""
    torch.set_num_threads(1)
    settings = classifier.DEFAULT_SETTINGS | {"width": 4, "epochs": 3, "min_epochs": 3, "patience": 1,
                                             "batch_size": 16, "image_size": 16, "restarts": 2}
    x_train, y_train = _noise_task(48, 1)
    x_val, y_val = _noise_task(32, 2)
    network, best, _ = classifier.fit_classifier(x_train, y_train, x_val, y_val, settings, seed=7)
    attempts = best["attempts"]
    assert [a["seed"] for a in attempts] == [7, 8, 9] and all(a["stalled"] for a in attempts)
    logits = classifier.predict_logits(network, x_val, 16)
    loss = torch.nn.functional.cross_entropy(logits, y_val)  # balanced classes: the class weights are 1
    assert float(loss) == pytest.approx(min(a["val_loss"] for a in attempts), abs=1e-6)
    assert best["seed"] == min(attempts, key=lambda a: a["val_loss"])["seed"]
    _, once, _ = classifier.fit_classifier(x_train, y_train, x_val, y_val, settings | {"restarts": 0}, seed=7)
    assert [a["seed"] for a in once["attempts"]] == [7]  # restarts 0: one attempt, stalled or not


def test_restarts_stop_at_the_first_training_that_learned(monkeypatch):
    """A stalled first attempt (its training loss never below 0.95 ln 2), a learned second: the
    second is kept and no third runs."""
    train_losses = {3: [0.70, 0.693, 0.692], 4: [0.69, 0.40, 0.20], 5: [0.69, 0.1, 0.05]}
    calls = []

    def fake_fit_once(x_train, y_train, x_val, y_val, settings, seed, device):
        calls.append(seed)
        history = [{"train_loss": loss} for loss in train_losses[seed]]
        return f"network {seed}", {"loss": 0.9 - 0.1 * seed, "epoch": 2}, history

    monkeypatch.setattr(classifier, "fit_once", fake_fit_once)
    network, best, _ = classifier.fit_classifier(None, None, None, None, {"restarts": 2}, seed=3)
    assert calls == [3, 4] and network == "network 4" and best["seed"] == 4
    assert [a["stalled"] for a in best["attempts"]] == [True, False]


def test_restarts_must_be_a_whole_number_of_at_least_zero():
    for bad in (-1, 1.5, True):
        with pytest.raises(ValueError, match="restarts must be a whole number"):
            classifier._settings({"restarts": bad})


def _fake_fit_once(monkeypatch, runs: dict):
    """fit_once replaced by canned attempts: seed -> (training losses by epoch, lowest validation loss)."""
    calls = []

    def fake(x_train, y_train, x_val, y_val, settings, seed, device):
        calls.append(seed)
        train_losses, val_loss = runs[seed]
        return f"network {seed}", {"loss": val_loss, "epoch": 1}, [{"train_loss": x} for x in train_losses]

    monkeypatch.setattr(classifier, "fit_once", fake)
    return calls


def test_when_every_attempt_stalls_the_lowest_validation_loss_is_kept_not_the_first_or_last(monkeypatch):
    calls = _fake_fit_once(monkeypatch, {8: ([0.70, 0.693], 0.70), 9: ([0.70, 0.693], 0.66),
                                         10: ([0.70, 0.693], 0.68)})
    network, best, _ = classifier.fit_classifier(None, None, None, None, {"restarts": 2}, seed=8)
    assert calls == [8, 9, 10] and network == "network 9" and best["seed"] == 9


def test_an_attempt_that_learned_is_kept_over_a_stalled_one_with_a_lower_validation_loss(monkeypatch):
    """Train-on-synthetic: a classifier that fits the generated slices (training loss 0.05) may
    score worse on real validation slices than a constant answer; it is still the one kept."""
    calls = _fake_fit_once(monkeypatch, {1: ([0.70, 0.693], 0.693), 2: ([0.60, 0.05], 0.90)})
    network, best, history = classifier.fit_classifier(None, None, None, None, {"restarts": 2}, seed=1)
    assert calls == [1, 2] and network == "network 2" and best["seed"] == 2
    assert best["loss"] == 0.90 and [row["train_loss"] for row in history] == [0.60, 0.05]  # one attempt's
