from __future__ import annotations

import json

import jsonschema
import matplotlib.image
import numpy as np
import pandas as pd
import pytest

from classifier_support import constant_classifier
from generation_support import CopySampler, FreshSampler, splits_with_classifier
from pipeline import figures
from pipeline.errors import InputDataError
from pipeline.evaluate.measures import embedding
from pipeline.evaluate.metrics_json import flatten_metrics, validate_metrics, write_metrics
from pipeline.evaluate.measures import prdc as prdc_module
from pipeline.evaluate.tasks.generation import discriminator_block, evaluate_generation
from pipeline.evaluate.measures.intervals import IntervalPolicy

POLICY = IntervalPolicy(min_subjects=3, n_boot=100, seed=0)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("slices")
    paths = splits_with_classifier(folder, seed=20, n_test_subjects=8)  # 8: a perfect AUC's Wilson interval clears 0.5
    epochs = np.arange(1, 31)
    history = pd.DataFrame({"epoch": epochs, "step": epochs * 4, "D": 1.0 / epochs, "G": 2.0 - 1.0 / epochs,
                            "d_real": 0.9 - epochs / 100, "d_fake": epochs / 100, "D_accuracy": 0.5 + 0 * epochs})
    history.to_csv(folder / "history.csv", index=False)
    return paths | {"history": folder / "history.csv", "folder": folder}


def evaluate(files, sampler, tmp_path, **kwargs):
    return evaluate_generation(
        sampler, files["test"], files["train"], val=files["val"], history=files["history"],
        classifier=files["classifier"], inception_weights=tmp_path / "absent.pth", n_generated=24, frd=False,
        intervals_policy=POLICY, samples_out=tmp_path / "samples.npz", per_image_out=tmp_path / "per_image.npz",
        **kwargs,
    )


def test_a_class_floor_is_drawn_size_matched_from_all_the_class_training_slices(files, tmp_path):
    """12 generated images a class beside 40 training slices: the overall floor is cut to 24 rows,
    of which only the class's prevalence is haemorrhage; each class's floor is drawn from all of
    that class's training slices instead, 12 of them where there are, evenly spaced."""
    metrics = evaluate_generation(FreshSampler(n_classes=2), files["test"], files["train"],
                                  inception_weights=tmp_path / "absent.pth", n_generated=12, frd=False, tstr=False,
                                  intervals_policy=POLICY)
    train, test = files["splits"]["train"], files["splits"]["test"]
    assert metrics["distribution"]["floor"]["n_floor"] == 24
    for c, name in enumerate(("healthy", "haemorrhage")):
        of_class = np.flatnonzero(train["labels"] == c)
        assert len(of_class) > 12  # enough to match 12 generated images, as the fixture is drawn
        floor = metrics["per_class"][name]["floor"]
        assert (floor["n_floor"], floor["n_compared"], floor["size_matched"]) == (12, 12, True), (name, floor)
        picked = of_class[np.unique(np.linspace(0, len(of_class) - 1, 12).round().astype(int))]
        by_hand = prdc_module.prdc(embedding.embed(test["images"][test["labels"] == c]),
                                   embedding.embed(train["images"][picked]))
        assert floor["prdc"]["coverage"]["value"] == pytest.approx(by_hand["coverage"])
        assert floor["prdc"]["density"]["value"] == pytest.approx(by_hand["density"])


def test_conditional_generator_end_to_end(files, tmp_path):
    metrics = evaluate(files, FreshSampler(n_classes=2), tmp_path)
    validate_metrics(metrics)
    write_metrics(tmp_path / "metrics.json", metrics)  # finite or null throughout, and valid on disk
    assert json.loads((tmp_path / "metrics.json").read_text())["task"] == "generation"

    # FID / KID need the standard Inception file: null with the reason, never another network's number
    assert metrics["distribution"]["fid"]["value"] is None and "not found" in metrics["distribution"]["fid"]["reason"]
    # PRDC of a generator that draws from the data's own process: high fidelity and coverage
    prdc = metrics["distribution"]["prdc"]
    assert prdc["feature_space"] == "random_vgg16" and prdc["n_real"] == 32 and prdc["n_generated"] == 48
    # a generator drawing new patients covers the real slices far better than one repeating a single slice
    # (the measures themselves are checked against a brute-force computation in test_prdc.py)
    collapsed = prdc_module.prdc(embedding.embed(files["splits"]["test"]["images"]),
                                 embedding.embed(np.repeat(files["splits"]["test"]["images"][:1], 48, axis=0)))
    assert prdc["recall"]["value"] > collapsed["recall"] + 0.3 and prdc["coverage"]["value"] > collapsed["coverage"]
    assert prdc["precision"]["value"] > 0.2
    assert set(metrics["per_class"]) == {"healthy", "haemorrhage"}
    assert metrics["per_class"]["haemorrhage"]["n_generated"] == 24

    # the real-vs-real floor beside it: held-out real slices vs the training patients' slices (all 40: fewer than
    # the 48 generated), the same PRDC computation on the same reference rows
    floor = metrics["distribution"]["floor"]
    train_images = files["splits"]["train"]["images"]
    assert (floor["n_reference"], floor["n_floor"], floor["n_compared"], floor["size_matched"]) == (32, 40, 48, False)
    by_hand = prdc_module.prdc(embedding.embed(files["splits"]["test"]["images"]), embedding.embed(train_images))
    assert floor["prdc"]["coverage"]["value"] == pytest.approx(by_hand["coverage"])
    assert floor["prdc"]["precision"]["value"] == pytest.approx(by_hand["precision"])
    haemorrhage_floor = metrics["per_class"]["haemorrhage"]["floor"]
    assert haemorrhage_floor["n_floor"] == int((files["splits"]["train"]["labels"] == 1).sum())  # fewer than 24
    assert haemorrhage_floor["size_matched"] is False

    # the report's measure: mean d_fake of epochs 11..30 = mean(11..30) / 100
    disc = metrics["discriminator"]
    assert disc["d_fake"]["value"] == pytest.approx(np.mean(np.arange(11, 31)) / 100)
    assert disc["n_epochs"] == 20 and disc["epochs"] == [11, 30] and "BCE" in disc["scale"]

    # the real classifier calls fakes asked to be haemorrhagic haemorrhagic (the blob is drawn for them)
    per_image = np.load(tmp_path / "per_image.npz")
    p1 = per_image["classifier_p1_generated"]
    asked = per_image["generated_labels"]
    share_haem = metrics["classifier"]["generated"]["haemorrhage"]["share_called_asked"]["mean"]
    assert share_haem == pytest.approx(np.mean(p1[asked == 1] > 0.5))
    assert metrics["classifier"]["test_accuracy"]["mean"] > 0.8 and share_haem > 0.7

    # train-on-synthetic: the same classifier trained on the generator's images does about as well on real slices
    tstr = metrics["tstr"]
    assert tstr["reason"] is None
    assert tstr["n_synthetic_per_class"] == {"healthy": int((files["splits"]["train"]["labels"] == 0).sum()),
                                             "haemorrhage": int((files["splits"]["train"]["labels"] == 1).sum())}
    assert tstr["trained_on_synthetic"]["test_accuracy"]["mean"] > 0.7
    assert tstr["trained_on_synthetic"]["test_auc"]["value"] > 0.7
    assert tstr["trained_on_real"]["test_auc"] == metrics["classifier"]["real_test"]["auc"]
    for variant in ("trained_on_synthetic", "trained_on_real_and_synthetic"):  # restarts 0: one attempt, kept
        assert [a["seed"] for a in tstr[variant]["attempts"]] == [tstr[variant]["kept_seed"]]
    assert metrics["classifier"]["real_test"]["usable"]
    assert metrics["classifier"]["generated"]["haemorrhage"]["classifier_auc"] == metrics["classifier"]["real_test"]["auc"]
    assert tstr["trained_on_real_and_synthetic"]["n_train"] == 2 * len(files["splits"]["train"]["labels"])

    assert not metrics["memorisation"]["flagged"]
    broken = {key: value for key, value in metrics.items() if key != "memorisation"}
    with pytest.raises(jsonschema.ValidationError, match="memorisation"):
        validate_metrics(broken)
    flat = flatten_metrics(metrics)
    assert "memorisation/pixel/share_closer/value" in flat and "distribution/prdc/precision/value" in flat

    samples = np.load(tmp_path / "samples.npz")
    assert samples["walk"].shape == (2, 8, 32, 32)  # one walk per class
    for draw, name in ((figures.generated_grid, "grid"), (figures.noise_walk, "walk"),
                       (figures.nearest_pairs, "pairs")):
        draw(tmp_path / "samples.npz", tmp_path / f"{name}.png")
        assert matplotlib.image.imread(tmp_path / f"{name}.png").std() > 0.05
    figures.history_figure(files["history"], "cgan", tmp_path / "curves.png")
    assert (tmp_path / "curves.png").stat().st_size > 10_000


def test_a_classifier_that_did_not_learn_gives_no_share_called_as_asked(files, tmp_path):
    """The issue's cGAN: every slice P(haemorrhage) = 0.501, so "share called as asked" was 1.0 for
    haemorrhage. Its real-test AUC is 0.5: shares and mean probabilities are null with the reason."""
    evaluation = dict(files, classifier=constant_classifier(tmp_path / "constant.pt", 32, p_1=0.501,
                                                            names=("healthy", "haemorrhage")))
    metrics = evaluate(evaluation, FreshSampler(n_classes=2), tmp_path, tstr=False)
    validate_metrics(metrics)
    assert not metrics["classifier"]["real_test"]["usable"]
    for name in ("healthy", "haemorrhage"):
        asked = metrics["classifier"]["generated"][name]
        assert asked["share_called_asked"]["mean"] is None and asked["mean_probability_asked"]["mean"] is None
        assert "AUC 0.500" in asked["reason"] and asked["classifier_auc"]["value"] == 0.5


def test_copying_generator_is_flagged_and_the_pairs_show_the_copies(files, tmp_path):
    train = files["splits"]["train"]
    sampler = CopySampler(train, mode="flip", n_classes=2)
    metrics = evaluate(files, sampler, tmp_path, tstr=False, n_nearest_pairs=4)
    validate_metrics(metrics)
    memo = metrics["memorisation"]
    assert memo["flagged"] and memo["pixel"]["share_closer"]["value"] == 1.0
    assert memo["pixel"]["share_nearest_training_is_flipped"] == 1.0
    samples = np.load(tmp_path / "samples.npz")
    # each shown pair is a generated image beside the training slice it mirrors
    assert np.allclose(samples["pairs_generated"], samples["pairs_train"], atol=1e-6)
    assert metrics["tstr"]["reason"].startswith("train-on-synthetic switched off")


def test_unconditional_generator(files, tmp_path):
    metrics = evaluate(files, FreshSampler(n_classes=0), tmp_path)
    validate_metrics(metrics)
    assert metrics["per_class"] is None and metrics["per_class_reason"] == "unconditional generator"
    assert metrics["tstr"]["reason"].startswith("unconditional generator")
    unconditional = metrics["classifier"]["generated"]["unconditional"]
    assert set(unconditional["share_called"]) == {"haemorrhage"}
    assert np.load(tmp_path / "samples.npz")["walk"].shape == (1, 8, 32, 32)
    assert evaluate(files, FreshSampler(n_classes=0), tmp_path) == metrics  # same seed, same numbers (CPU)


def test_generator_breaking_its_contract_is_named(files, tmp_path):
    class Wrong(FreshSampler):
        def sample(self, n, labels=None, seed=0):
            return super().sample(n, labels, seed) * 2.0  # outside [0, 1]

    with pytest.raises(Exception, match=r"outside \[0, 1\]"):
        evaluate(files, Wrong(n_classes=2), tmp_path)


def test_slices_without_labels_for_a_conditional_generator_name_the_file(files, tmp_path):
    unlabelled = tmp_path / "test.npz"
    split = files["splits"]["test"]
    np.savez(unlabelled, **{key: split[key] for key in ("images", "subject_ids", "slice_index")})
    with pytest.raises(InputDataError, match="missing array 'labels'") as error:
        evaluate_generation(FreshSampler(n_classes=2), unlabelled, files["train"], frd=False, tstr=False)
    assert str(unlabelled) in str(error.value)


def test_history_without_d_fake_is_a_clear_error(tmp_path):
    csv = tmp_path / "history.csv"
    pd.DataFrame({"epoch": [1, 2], "loss_G": [1.0, 0.5]}).to_csv(csv, index=False)
    with pytest.raises(InputDataError, match="d_fake") as error:
        discriminator_block(csv, 20)
    assert str(csv) in str(error.value)
    short = tmp_path / "short.csv"
    pd.DataFrame({"epoch": [1, 2, 3], "d_fake": [0.2, 0.4, 0.9]}).to_csv(short, index=False)
    block = discriminator_block(short, 20)  # fewer epochs than asked: all of them, and says so
    assert block["n_epochs"] == 3 and block["d_fake"]["value"] == pytest.approx(0.5)


def test_cli_on_a_real_exported_conditional_dcgan(files, tmp_path):
    """The CLI end to end on model.pt of the real (untrained) cGAN: loads it, scores it, draws the figures."""
    import torch

    from pipeline.evaluate.tasks import generation
    from pipeline.models import model_class

    cgan = model_class("cgan")
    model = cgan(cgan.resolve_config({"nz": 8, "ngf": 8, "ndf": 4}), None, 0, (32, 32))
    torch.save({**model.export(), "image_size": [32, 32]}, tmp_path / "model.pt")  # as the engine exports it
    out = {name: tmp_path / f"{name}.png" for name in ("grid", "walk", "pairs", "curves")}
    code = generation.main([
        "--model", str(tmp_path / "model.pt"), "--test", str(files["test"]), "--train", str(files["train"]),
        "--val", str(files["val"]), "--history", str(files["history"]), "--classifier", str(files["classifier"]),
        "--inception-weights", str(tmp_path / "absent.pth"), "--out", str(tmp_path / "metrics.json"),
        "--n-generated", "12", "--frd-max-images", "6", "--min-subjects", "3", "--n-boot", "50", "--device", "cpu",
        "--skip-tstr",
        "--samples-out", str(tmp_path / "samples.npz"), "--sample-grid", str(out["grid"]),
        "--noise-walk", str(out["walk"]), "--nearest-pairs", str(out["pairs"]),
        "--training-curves", str(out["curves"]),
    ])
    assert code == 0
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    validate_metrics(metrics)
    assert metrics["model"]["sha256"] and metrics["generator"]["n_classes"] == 2
    frd = metrics["distribution"]["frd"]
    assert (frd["value"] is not None) or frd["reason"]  # radiomics ran: a number, or why not
    assert all(path.stat().st_size > 5_000 for path in out.values())
    assert not list(tmp_path.glob(".*.tmp*"))  # nothing half-written
