"""A Snakemake run killed midway (SIGKILL to its whole process group, as a lost terminal or an
OOM killer would) and started again with the README's commands finishes with the same results as
an uninterrupted run. The uninterrupted run is the PHI test's, on the same inputs and params."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch

from phi_support import marked_copy, shared_inputs, uninterrupted_build
from workflow_support import BIN, TARGET, run

#: Kill once this many registered volumes exist: inside a dataset's register job, before training.
KILL_AFTER_REGISTERED = 2
KILL_TIMEOUT_S = 300


def _killed_midway(work: Path) -> None:
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    proc = subprocess.Popen(
        ["snakemake", "--cores", "2", TARGET], cwd=work, env=env, start_new_session=True,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.monotonic() + KILL_TIMEOUT_S
    try:
        while len(list((work / "data" / "registered").glob("*/subjects/*.qc.json"))) < KILL_AFTER_REGISTERED:
            assert proc.poll() is None, "snakemake ended before it could be killed"
            assert time.monotonic() < deadline, "registration never started"
            time.sleep(0.2)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def _results(work: Path) -> tuple[dict, list[str]]:
    """metrics.json without the file hashes of the torch models it names, and those models' paths:
    torch.save stamps a random serialization id into every file, so equal weights give different
    bytes (their contents are compared instead)."""
    metrics = json.loads((work / TARGET).read_text())
    models = []
    for block in metrics.values():
        if isinstance(block, dict) and str(block.get("path", "")).endswith(".pt"):
            block.pop("sha256")
            models.append(block["path"])
    return metrics, sorted(models)


def _same_contents(a, b) -> bool:
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same_contents(a[k], b[k]) for k in a)
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and torch.equal(a, b)
    return a == b


@pytest.mark.slow
def test_killed_run_restarted_gives_the_uninterrupted_results(tmp_path_factory, repo_root):
    reference = uninterrupted_build(tmp_path_factory, repo_root)
    inputs = shared_inputs(tmp_path_factory, repo_root)
    work = marked_copy(repo_root, tmp_path_factory.mktemp("restart") / "repo", inputs)
    _killed_midway(work)
    assert not (work / TARGET).exists()

    run(["snakemake", "--unlock"], work)
    run(["snakemake", "--cores", "2", "--rerun-incomplete", TARGET], work)

    (metrics, models), (expected_metrics, expected_models) = _results(work), _results(reference)
    assert metrics == expected_metrics
    assert models == expected_models and models
    load = {"map_location": "cpu", "weights_only": False}
    for model in models:
        assert _same_contents(torch.load(work / model, **load), torch.load(reference / model, **load)), model
    for split in ("train", "val", "test"):
        for dataset in ("ct_head", "mri_t2"):
            name = f"data/slices/{dataset}/{split}.npz"
            assert (work / name).read_bytes() == (reference / name).read_bytes(), name
