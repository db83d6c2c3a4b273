"""Report 002's claims in params.yaml read the generation evaluator's metrics.json: every path
exists, and the diversity claim tells a generator that draws new patients from one that repeats
a single slice (mode collapse)."""
from __future__ import annotations

import numpy as np
import pytest
import yaml

from generation_support import FreshSampler, splits_with_classifier
from pipeline.evaluate.measures.intervals import IntervalPolicy
from pipeline.evaluate.tasks.generation import evaluate_generation
from pipeline.verdict import FAIL, PASS, VERDICTS, judge_all

POLICY = IntervalPolicy(min_subjects=3, n_boot=100, seed=0)


class CollapsedSampler(FreshSampler):
    """Every sample the same new patient's slice: inside the data, but one image."""

    def sample(self, n: int, labels: np.ndarray | None = None, seed: int = 0) -> np.ndarray:
        return np.repeat(super().sample(1, None if labels is None else np.asarray(labels)[:1], seed), n, axis=0)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("slices")
    return splits_with_classifier(folder, seed=30, n_test_subjects=8)


def claims(experiment: str) -> list[dict]:
    with open("params.yaml") as f:
        return yaml.safe_load(f)["experiments"][experiment]["claims"]


def judged(files, sampler, experiment: str, tstr: bool) -> dict[str, dict]:
    metrics = evaluate_generation(sampler, files["test"], files["train"], val=files["val"],
                                  classifier=files["classifier"], n_generated=32, frd=False, tstr=tstr,
                                  intervals_policy=POLICY)
    return {record["name"]: record for record in judge_all(claims(experiment), metrics, "metrics.json")}


def test_dcgan_claims_read_existing_paths_and_diversity_tells_collapse_apart(files):
    fresh = judged(files, FreshSampler(n_classes=0), "dcgan_ct_brain", tstr=False)
    assert set(fresh) == {c["name"] for c in claims("dcgan_ct_brain")}
    assert all(r["verdict"] in VERDICTS for r in fresh.values())
    assert fresh["samples_as_varied_as_patients"]["verdict"] == PASS
    collapsed = judged(files, CollapsedSampler(n_classes=0), "dcgan_ct_brain", tstr=False)
    assert collapsed["samples_as_varied_as_patients"]["verdict"] == FAIL
    assert collapsed["samples_as_varied_as_patients"]["value"] < 0.05


def test_cgan_claims_read_existing_paths(files):
    out = judged(files, FreshSampler(n_classes=2), "cgan_ct_haemorrhage", tstr=True)
    assert set(out) == {c["name"] for c in claims("cgan_ct_haemorrhage")}
    assert all(r["verdict"] in VERDICTS for r in out.values())
    assert out["classifier_sound"]["value"] is not None
