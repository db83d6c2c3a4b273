"""Real-vs-real floors: what a set distance measures between two real sets of different patients.

A distance between generated and real images (FID, KID, FRD, PRDC, an organ's FRD) means little
alone: FRD 3.1 may be "as near as another hospital's patients" or "far off". The floor is the
same measure, computed the same way, between two REAL sets split by patient: the held-out real
set the generated images were compared with (the reference, unchanged) and the training patients'
real images. A generator whose distance sits at the floor is as near the held-out patients as
other real patients are; claims can be relative to it (``times`` / ``plus`` in params.yaml claims).

Comparable by construction: the reference rows are the comparison's, and the other real set is
cut to as many images as the compared (generated) set holds, evenly spaced over its patients
(``floor_rows``; all of them when it holds fewer, and ``size_matched`` says so: FID and FRD are
biased upward at small n, so a floor from fewer images errs high). Intervals follow
pipeline.evaluate.measures.intervals (two-set subject jackknife), each patient of either set its unit.
"""

from __future__ import annotations

import numpy as np

from pipeline.evaluate.measures.distribution import distribution_block, frd_block
from pipeline.evaluate.measures.intervals import IntervalPolicy
from pipeline.evaluate.measures.slices import fixed_sample_indices

FLOOR_SET = "floor"
"""Key of the other real set among the feature sets (``inception_and_radiomic_features``)."""

DEFINITION = (
    "the same distance between two real sets split by patient: the comparison's held-out real reference set vs "
    "real images of the training patients, cut to as many images as the compared set holds (evenly spaced; all of "
    "them when fewer: size_matched false, and FID / FRD then err high); the value a generator at the data would get"
)


def floor_rows(n_available: int, n_compared: int) -> np.ndarray:
    """Evenly spaced rows of the other real set, as many as the compared set holds (all when fewer)."""
    return fixed_sample_indices(n_available, n_compared)


def floor_block(
    reference_rows: np.ndarray,
    reference_subjects: np.ndarray,
    floor_subjects: np.ndarray,
    n_compared: int,
    features: dict[str, dict[str, np.ndarray]],
    radiomic_rows: dict[str, np.ndarray],
    problems: dict[str, str | None],
    fid_eps: float,
    policy: IntervalPolicy,
    compares: str,
    floor_subset: np.ndarray | None = None,
    sets: tuple[str, str] = ("real", FLOOR_SET),
) -> dict:
    """The floor beside a distribution block: the same FID / KID / FRD (/ PRDC) of the reference rows
    vs the real floor set (``sets``: the keys of the reference and the floor set among the
    features), or vs its ``floor_subset`` rows (e.g. one class), with ``n_compared`` the size of
    the generated set it stands beside."""
    rows = np.arange(len(floor_subjects)) if floor_subset is None else np.asarray(floor_subset)
    block = distribution_block(reference_rows, rows, reference_subjects, floor_subjects, features, radiomic_rows,
                               problems, fid_eps, policy, compares, sets=sets)
    counts = {"n_reference": block.pop("n_real"), "n_reference_subjects": block.pop("n_real_subjects"),
              "n_floor": block.pop("n_generated"),
              "n_floor_subjects": int(len(np.unique(np.asarray(floor_subjects)[rows].astype(str))))}
    return {"compares": block.pop("compares"), "definition": DEFINITION, "reason": None} | counts | {
        "n_compared": int(n_compared), "size_matched": counts["n_floor"] == int(n_compared)} | block


def frd_floor(reference: np.ndarray, reference_subjects: np.ndarray, other_real: np.ndarray,
              other_subjects: np.ndarray, n_compared: int, policy: IntervalPolicy) -> dict:
    """FRD of radiomic features of the reference images vs those of the other real images (e.g.
    inside one organ's mask), with the floor's metadata."""
    block = frd_block(reference, reference_subjects, other_real, other_subjects, policy)
    return block | {"definition": DEFINITION, "n_compared": int(n_compared),
                    "size_matched": int(block["n_generated"]) == int(n_compared)}


def unavailable_floor(reason: str) -> dict:
    """The floor block when there is no other real set (e.g. no training slices given)."""
    return {"reason": reason, "definition": DEFINITION}
