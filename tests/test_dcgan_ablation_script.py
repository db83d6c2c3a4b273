"""scripts/dcgan_ablation.py: a variant changes the experiment's knobs as Snakemake resolves them
(params.yaml, then the --configfile overlays), never the code's full-profile defaults."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from pipeline.config import load_params
from pipeline.models.dcgan import CGAN_KNOBS

REPO = Path(__file__).resolve().parents[1]


def _script():
    spec = importlib.util.spec_from_file_location("dcgan_ablation", REPO / "scripts" / "dcgan_ablation.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def script(monkeypatch):
    """The script with its data loading and training replaced by a recorder of what each variant runs."""
    module = _script()
    runs = []
    monkeypatch.chdir(REPO)
    monkeypatch.setattr(module, "load_labelled_slices", lambda path: {"path": path})
    monkeypatch.setattr(module, "run", lambda name, cls, knobs, *args, **kwargs: runs.append((name, cls, knobs)))
    module.runs = runs
    return module


def test_a_variant_changes_the_proof_profiles_cgan_and_nothing_else(script):
    proof = REPO / "configs" / "proof.yaml"
    assert script.main(["--slices", "x", "--conditional", "--configfile", str(proof),
                        "--variant", "narrow", '{"ndf": 4}']) == 0
    (name, cls, knobs), = script.runs
    expected = dict(load_params("params.yaml", config_files=[proof])["experiments"]["cgan_ct_haemorrhage"]["model"])
    assert expected.pop("name") == "cgan" and cls is script.ConditionalDCGAN
    assert knobs == {**expected, "ndf": 4}
    # what every variant used to be built on instead: the code's defaults (the full profile's G and D)
    assert {k: knobs[k] for k in ("ngf", "d_norm")} != {k: CGAN_KNOBS[k] for k in ("ngf", "d_norm")}


def test_the_model_class_follows_the_experiment(script):
    assert script.main(["--slices", "x", "--variant", "same", "{}"]) == 0
    (_, cls, knobs), = script.runs
    assert cls is script.DCGAN and "d_condition" not in knobs
    with pytest.raises(SystemExit):
        script.main(["--slices", "x", "--experiment", "cgan_ct_haemorrhage", "--variant", "same", "{}"])
    with pytest.raises(SystemExit):
        script.main(["--slices", "x", "--conditional", "--experiment", "dcgan_ct_brain", "--variant", "same", "{}"])


def test_the_frd_floor_takes_the_training_and_test_slices_the_evaluator_takes(monkeypatch):
    """--frd: real rows evenly spaced over the test slices; the floor's training rows cut to the evaluator's
    generated count first, then evenly spaced (pipeline/evaluate/tasks/generation.py); the test set first,
    as the set whose statistics z-score both. Each image's only pixel value is its row number."""
    import numpy as np

    module = _script()
    n_train, n_test, n_images, n_generated = 716, 304, 100, 400
    train = {"images": np.arange(n_train, dtype=np.float32)[:, None, None] * np.ones((1, 2, 2), np.float32)}
    test = {"images": np.arange(n_test, dtype=np.float32)[:, None, None] * np.ones((1, 2, 2), np.float32)}
    calls = []
    monkeypatch.setattr(module, "radiomic_features", lambda images: images[:, :1, 0].astype(np.float64))
    monkeypatch.setattr(module.frd, "frd_from_features", lambda *sets: calls.append(sets) or (1.5, None, 1, None))
    real, floor = module.frd_reference(train, test, n_images, n_generated)
    evenly = lambda n, k: np.unique(np.linspace(0, n - 1, k).round().astype(int))
    assert floor == 1.5 and np.array_equal(real[:, 0], evenly(n_test, n_images))
    (first, second), = calls
    assert np.array_equal(first[:, 0], evenly(n_test, n_images))
    assert np.array_equal(second[:, 0], evenly(n_train, n_generated)[evenly(n_generated, n_images)])
    assert not np.array_equal(second[:, 0], evenly(n_train, n_images))  # not simply 100 of all 716


def test_frd_takes_at_most_the_scored_samples_and_not_checkpoints(script):
    with pytest.raises(SystemExit):
        script.main(["--slices", "x", "--frd", "201", "--variant", "same", "{}"])
    with pytest.raises(SystemExit):
        script.main(["--slices", "x", "--frd", "100", "--checkpoints", "a.pt"])


def test_frd_option_is_passed_to_run(monkeypatch):
    module = _script()
    seen = []
    monkeypatch.chdir(REPO)
    monkeypatch.setattr(module, "load_labelled_slices", lambda path: {"path": path})
    monkeypatch.setattr(module, "run", lambda *args, **kwargs: seen.append(args[-2:]))
    assert module.main(["--slices", "x", "--frd", "100", "--variant", "same", "{}"]) == 0
    assert module.main(["--slices", "x", "--conditional", "--frd", "50", "--variant", "same", "{}"]) == 0
    params = load_params("params.yaml")["experiments"]
    assert seen == [(100, params["dcgan_ct_brain"]["evaluate"]["n_generated"]),  # the evaluator's generated count:
                    (50, 2 * params["cgan_ct_haemorrhage"]["evaluate"]["n_generated"])]  # per class for the cGAN


def test_the_grids_folder_exists_before_training(script, tmp_path):
    """A missing --grids folder once stopped a run at its first scored row, after its first hour."""
    grids = tmp_path / "new" / "grids"
    created = []
    script.run = lambda name, cls, knobs, data, test, steps, every, batch, seed, grids, *rest: created.append(
        grids.is_dir())
    assert script.main(["--slices", "x", "--grids", str(grids), "--variant", "same", "{}"]) == 0
    assert created == [True]
