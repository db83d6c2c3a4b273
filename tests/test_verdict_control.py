"""The learning-rate-0 control: a CycleGAN that never learns must FAIL report 001's claims.

The real engine (pipeline.train) trains the experiment's own model configuration with
lr_g = lr_d = 0 on small paired slices (each CT slice with the same anatomy's T2, as the phantom
partners are), the real classifier is trained on the real slices, the real evaluator scores the
untrained translator, and the experiment's claims as params.yaml declares them are judged from
that metrics.json. Nothing learnt, nothing may pass: translations of a random network are not
nearer the partner than the input itself, and its cycle does not return the input. The anatomy
guards (no global shift, size kept) are left out: a network that learnt nothing moves nothing.
"""
from __future__ import annotations

import numpy as np
import yaml
from scipy.ndimage import gaussian_filter

from pipeline.evaluate.measures.classifier import train_classifier
from pipeline.evaluate.measures.intervals import IntervalPolicy
from pipeline.evaluate.metrics_json import validate_metrics
from pipeline.evaluate.tasks.translation import evaluate_translation
from pipeline.models import load_trained
from pipeline.train import train
from pipeline.verdict import FAIL, PASS, judge_all

SIZE = 32
EXPERIMENT = "cyclegan_ct_mri"


def anatomy(rng: np.random.Generator, n: int) -> np.ndarray:
    """Smooth random 'heads' in [0, 1]: the anatomy both modalities render."""
    images = gaussian_filter(rng.random((n, SIZE, SIZE)), sigma=(0, 3, 3))
    low, high = images.min(axis=(1, 2), keepdims=True), images.max(axis=(1, 2), keepdims=True)
    return ((images - low) / (high - low)).astype(np.float32)


def write_split(folder, split: str, n_subjects: int, rng: np.random.Generator) -> dict[str, str]:
    """CT = the anatomy, T2 = its square (another contrast of the same structures), 2 slices a subject;
    each domain's slices carry the other rendering as their partner."""
    shared = anatomy(rng, 2 * n_subjects)
    renders = {"a": shared, "b": shared**2}
    paths = {}
    for domain, other in (("a", "b"), ("b", "a")):
        path = folder / f"{domain}_{split}.npz"
        np.savez(path, images=renders[domain], subject_ids=np.repeat([f"{domain}{split}{i}" for i in range(n_subjects)], 2),
                 slice_index=np.tile([0, 1], n_subjects), partner=renders[other],
                 has_partner=np.ones(2 * n_subjects, bool))
        paths[domain] = path
    return paths


def test_learning_rate_zero_fails_report_001s_claims(tmp_path, repo_root):
    params = yaml.safe_load((repo_root / "params.yaml").read_text())["experiments"][EXPERIMENT]
    rng = np.random.default_rng(0)
    splits = {split: write_split(tmp_path, split, n, rng) for split, n in (("train", 8), ("val", 3), ("test", 6))}
    model = params["model"] | {"decoder_channels": [8, 8, 8, 8, 8], "perceptual_layers": ["relu1_2"],
                               "perceptual_layer_weights": [1.0], "lr_g": 0.0, "lr_d": 0.0, "pretrained": "none"}
    schedule = {"epochs": 1, "steps_per_epoch": 2, "batch_size": 2, "lr_constant_epochs": 1, "lr_decay_epochs": 0,
                "sample_every": 1, "checkpoint_every": 1, "n_samples": 2, "device": "cpu", "threads": 1}
    train(splits["train"], splits["val"], tmp_path / "model", {"model": model, "train": params["train"] | schedule},
          "lr0_control", f"sqlite:///{tmp_path / 'mlflow.db'}", None, 1)
    train_classifier(splits["train"], splits["val"], splits["test"], tmp_path / "classifier.pt",
                     tmp_path / "classifier.json", domain_names=("CT", "T2"), epochs=30, min_epochs=5, batch_size=8,
                     width=4, n_blocks=2, image_size=SIZE, threads=1, seed=0)
    metrics = evaluate_translation(
        load_trained(tmp_path / "model" / "model.pt"), splits["test"]["a"], splits["test"]["b"],
        inception_weights=tmp_path / "absent.pth", classifier=tmp_path / "classifier.pt", frd=False,
        train_paths=splits["train"], intervals_policy=IntervalPolicy(min_subjects=4, n_boot=200),
    )
    validate_metrics(metrics)
    verdicts = {r["name"]: r for r in judge_all(params["claims"], metrics, "metrics.json")}
    for claim in ("ct_to_mri_beats_input", "mri_to_ct_beats_input", "ct_cycle_kept", "mri_cycle_kept"):
        assert verdicts[claim]["verdict"] == FAIL, (claim, verdicts[claim])
    # guards, not achievements: a network that learnt nothing moves and rescales nothing either
    guards = {name for name in verdicts if name.endswith(("_no_global_shift", "_keeps_size"))}
    assert len(guards) == 4, sorted(guards)
    learnt = [name for name, record in verdicts.items()
              if record["verdict"] == PASS and name != "classifier_sound" and name not in guards]
    assert not learnt, {name: verdicts[name] for name in learnt}
    assert metrics["ct_to_mri"]["paired"]["ssim_input"]["mean"] > 0.5  # doing nothing is already near the partner

