"""Through Snakemake: the thorax CT slices with six-class maps (report 003's data), on
configs/tiny.yaml: download (phantom_tcia_thorax, de-identified) -> prepare_thorax_slices, as the
session's tiny build (conftest's ``built_tiny_repo``: `dvc repro` from empty data) made them; a
rerun does nothing, a slicing knob reruns only the slices, a phantom knob both."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from workflow_support import changed_param, planned_jobs

TARGET = "data/slices/ct_thorax/train.npz"


@pytest.mark.slow
def test_thorax_slices_from_empty_data_and_reruns(built_tiny_repo: Path):
    work = built_tiny_repo

    slices = work / "data" / "slices" / "ct_thorax"
    counts, patients = [], []
    for split in ("train", "val", "test"):
        data = np.load(slices / f"{split}.npz")
        assert data["images"].shape[1:] == (32, 32) and data["label_maps"].shape == data["images"].shape
        assert set(np.unique(data["label_maps"])) <= set(range(6))
        counts.append(len(data["images"]))
        patients.append(set(map(str, data["subject_ids"])))
    assert counts == [9, 4, 16] and [len(p) for p in patients] == [6, 2, 8]  # configs/tiny.yaml
    assert not (patients[0] & patients[1] or patients[0] & patients[2] or patients[1] & patients[2])
    assert (work / "data" / "raw" / "ct_thorax" / "deidentification.json").exists()

    assert planned_jobs(work, TARGET) == {}
    with changed_param(work, "preprocess.thorax_slices.level_offset_mm", 5.0):
        assert planned_jobs(work, TARGET) == {"prepare_thorax_slices": 1}
    with changed_param(work, "phantom_tcia_thorax.noise_hu", 20.0):
        assert planned_jobs(work, TARGET) == {"download": 1, "prepare_thorax_slices": 1}
