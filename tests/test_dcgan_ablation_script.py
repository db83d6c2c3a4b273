"""scripts/dcgan_ablation.py: a variant changes the experiment's knobs as Snakemake resolves them."""
from __future__ import annotations

import importlib.util

import yaml

from conftest import REPO
from pipeline.models.dcgan import DCGAN_KNOBS


def _script():
    spec = importlib.util.spec_from_file_location("dcgan_ablation", REPO / "scripts" / "dcgan_ablation.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_variants_start_from_params_and_the_overlay_not_the_code_defaults(monkeypatch):
    monkeypatch.chdir(REPO)
    params = yaml.safe_load((REPO / "params.yaml").read_text())["experiments"]["cgan_ct_haemorrhage"]["model"]
    proof = yaml.safe_load((REPO / "configs" / "proof.yaml").read_text())["experiments"]["cgan_ct_haemorrhage"]["model"]
    script = _script()

    cls, knobs = script.experiment_knobs("cgan_ct_haemorrhage", [REPO / "configs" / "proof.yaml"])
    assert cls is script.ConditionalDCGAN
    assert knobs["ndf"] == proof["ndf"] != params["ndf"]            # the overlay's
    assert knobs["ngf"] == params["ngf"] != DCGAN_KNOBS["ngf"]  # params.yaml's, not the code's 64
    assert knobs["d_norm"] == params["d_norm"] == "spectral"
    assert "name" not in knobs

    cls, knobs = script.experiment_knobs("dcgan_ct_brain", [])
    assert cls is script.DCGAN and knobs["ndf"] == yaml.safe_load((REPO / "params.yaml").read_text())[
        "experiments"]["dcgan_ct_brain"]["model"]["ndf"]
