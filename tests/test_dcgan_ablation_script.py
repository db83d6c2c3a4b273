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
