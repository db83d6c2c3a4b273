"""Through Snakemake: report 004's chest X-rays (CheXpert layout) from empty data, on configs/tiny.yaml.

download (phantom_chexpert, de-identified) -> prepare_chexpert, as the session's tiny build
(conftest's ``built_tiny_repo``: `dvc repro` from empty data) made them; a rerun does nothing, a
preprocessing knob reruns only the prep, a phantom knob both.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from workflow_support import assert_reruns, patients_apart, split_arrays

TARGET = "data/slices/cxr_cardiomegaly/ctr_ladder.npz"


@pytest.mark.slow
def test_cxr_cardiomegaly_from_empty_data_and_reruns(built_tiny_repo: Path):
    work = built_tiny_repo

    slices = work / "data" / "slices" / "cxr_cardiomegaly"
    size = 32  # configs/tiny.yaml
    splits = split_arrays(slices)
    for data in splits:
        assert data["images"].shape[1:] == (size, size) and data["label_maps"].shape[1:] == (size, size)
        assert set(np.unique(data["labels"])) <= {0, 1}
    patients = patients_apart(splits)
    ladder = np.load(slices / "ctr_ladder.npz")
    assert ladder["images"].shape == (3, 7, size, size)  # tiny: 3 ladder patients, 6 CTRs + their own
    assert set(map(str, ladder["subject_ids"])) <= patients[2]
    assert (slices / "manifest.csv").exists() and (slices / "contact_sheet.png").exists()
    assert (work / "data" / "raw" / "cxr_cardiomegaly" / "CheXpert-v1.0-small" / "train.csv").exists()

    assert_reruns(
        work, TARGET, "prepare_chexpert",
        ("preprocess.chexpert.uncertain_policy", "zeros"), ("phantom_chexpert.lateral_probability", 0.5),
    )  # fmt: skip
