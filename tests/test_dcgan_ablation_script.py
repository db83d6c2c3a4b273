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


def test_frd_rows_take_evenly_spaced_slices_and_the_floor_is_training_against_test_slices():
    """--frd: the floor is FRD of training slices against the test slices the samples are compared with
    (null when the two sets are the same images, large when the training slices are another kind of image)."""
    import numpy as np
    from skimage.data import shepp_logan_phantom
    from skimage.transform import resize

    module = _script()
    rng = np.random.default_rng(0)
    base = resize(shepp_logan_phantom(), (32, 32), anti_aliasing=True)
    heads = np.clip([np.roll(base, k, axis=1) + rng.normal(0, 0.03, base.shape) for k in range(8)], 0, 1)
    test = {"images": heads.astype(np.float32)}
    real, floor = module.frd_reference(test, test, 4)
    assert real.shape[0] == 4 and floor is None  # rows 0, 2, 5, 7 of the same images: the sets coincide
    flat = {"images": np.clip(heads * 0.3 + 0.5, 0, 1).astype(np.float32)}
    _, floor_flat = module.frd_reference(flat, test, 4)
    shifted = {"images": np.roll(test["images"], 1, axis=0)}  # other rows of the same kind of image
    _, floor_shifted = module.frd_reference(shifted, test, 4)
    assert floor_flat > floor_shifted > 0


def test_frd_option_is_passed_to_run(monkeypatch):
    module = _script()
    seen = []
    monkeypatch.chdir(REPO)
    monkeypatch.setattr(module, "load_labelled_slices", lambda path: {"path": path})
    monkeypatch.setattr(module, "run", lambda *args, **kwargs: seen.append(args[-1]))
    assert module.main(["--slices", "x", "--frd", "100", "--variant", "same", "{}"]) == 0
    assert seen == [100]
