"""Through Snakemake: the thorax CT slices with six-class maps (report 003's data), on
configs/tiny.yaml: download (phantom_tcia_thorax, de-identified) -> prepare_thorax_slices, as the
session's tiny build (conftest's ``built_tiny_repo``: `dvc repro` from empty data) made them; a
rerun does nothing, a slicing knob reruns only the slices, a phantom knob both."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from workflow_support import assert_reruns, patients_apart, split_arrays

TARGET = "data/slices/ct_thorax/train.npz"


@pytest.mark.slow
def test_thorax_slices_from_empty_data_and_reruns(built_tiny_repo: Path):
    work = built_tiny_repo

    slices = work / "data" / "slices" / "ct_thorax"
    splits = split_arrays(slices)
    for data in splits:
        assert data["images"].shape[1:] == (32, 32) and data["label_maps"].shape == data["images"].shape
        assert set(np.unique(data["label_maps"])) <= set(range(6))
    patients = patients_apart(splits)
    counts = [len(data["images"]) for data in splits]
    assert counts == [9, 4, 16] and [len(p) for p in patients] == [6, 2, 8]  # configs/tiny.yaml
    assert (work / "data" / "raw" / "ct_thorax" / "deidentification.json").exists()

    assert_reruns(
        work, TARGET, "prepare_thorax_slices",
        ("preprocess.thorax_slices.level_offset_mm", 5.0), ("phantom_tcia_thorax.noise_hu", [10.0, 20.0]),
    )  # fmt: skip
