"""Through Snakemake: the haemorrhage CT slices (RSNA layout) from empty data, on configs/tiny.yaml.

download (phantom_rsna_ich, de-identified) -> prepare_ct_slices, as planned in an empty copy of the
repository and as the session's tiny build (conftest's ``built_tiny_repo``) made them; a rerun does
nothing, a preprocessing knob reruns only the slices, a phantom knob both.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from workflow_support import changed_param, planned_jobs, tiny_copy

TARGET = "data/slices/ct_haemorrhage/train.npz"


@pytest.mark.slow
def test_ct_slices_from_empty_data_and_reruns(repo_root: Path, tmp_path: Path, built_tiny_repo: Path):
    empty = tiny_copy(repo_root, tmp_path / "repo", git=False)
    assert planned_jobs(empty, TARGET) == {"download": 1, "prepare_ct_slices": 1}
    work = built_tiny_repo

    slices = work / "data" / "slices" / "ct_haemorrhage"
    size = 32  # configs/tiny.yaml
    patients = []
    for split in ("train", "val", "test"):
        data = np.load(slices / f"{split}.npz")
        assert data["images"].shape[1:] == (size, size)
        patients.append(set(map(str, data["subject_ids"])))
    assert not (patients[0] & patients[1] or patients[0] & patients[2] or patients[1] & patients[2])
    assert (slices / "manifest.csv").exists() and (slices / "contact_sheet.png").exists()
    assert (work / "data" / "raw" / "ct_haemorrhage" / "stage_2_train.csv").exists()

    assert planned_jobs(work, TARGET) == {}
    with changed_param(work, "preprocess.ct_slices.window_width", 100):
        assert planned_jobs(work, TARGET) == {"prepare_ct_slices": 1}
    with changed_param(work, "phantom_rsna_ich.mass_effect", 0.2):
        assert planned_jobs(work, TARGET) == {"download": 1, "prepare_ct_slices": 1}
