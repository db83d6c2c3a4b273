"""Small thorax phantoms for the tests of issue 18's data (phantom, slices, perturbation)."""

from __future__ import annotations

from pathlib import Path

from pipeline.sources.download import download_dataset

SEED = 5
#: One soft kernel at a standard dose for every patient: tests of HU against labels (and of the
#: HU rule that approximates labels) are about anatomy, not about the per-patient textures, whose
#: sharp kernels overshoot at edges and raise the noise (tests/sources/test_thorax_texture.py).
QUIET_TEXTURE = {"kernel_sharpness": [0.0, 0.0], "noise_hu": [12.0, 12.0]}
#: Enough patients for a train / val / test split by counts; a coarse grid keeps it fast.
SPLIT_KNOBS = {"n_patients": 5, "slices_per_patient": 3, "matrix": 128, "pixel_mm": 3.0, **QUIET_TEXTURE}
#: The default grid (256 x 1.5 mm), where ribs and cortex have pure pixels, for HU checks.
FINE_KNOBS = {"n_patients": 2, "slices_per_patient": 2, **QUIET_TEXTURE}


def build_thorax_raw(root: Path, staging: Path, **knobs) -> Path:
    """A de-identified raw folder, exactly as the download stage writes data/raw/ct_thorax."""
    return download_dataset("phantom_tcia_thorax", root / "ct_thorax", seed=SEED, phantom_options=knobs,
                            staging_dir=staging)  # fmt: skip
