"""Memorisation: does the generator hand back its training slices (a privacy leak of patient anatomy)?

For every generated image g, its nearest training image and its nearest held-out real image are
found, in pixel space and in a feature space. Training images enter together with their
left-right flips, because a copy mirrored by the training augmentation is still a copy (and so
do the held-out images, so that both distances are measured alike).

Definition (the number metrics.json reports as ``share_closer``):

    d_T(x)   = min over training images t and their flips of dist(x, t)
    tau      = the q-quantile (q = ``quantile``, default 0.05, linear interpolation) of d_T(h)
               over the held-out real images h: how close a *new patient's* slice comes to
               the training set
    share    = (1/M) sum_g 1[ d_T(g) < tau ]  over the M generated images

A generator that draws from the anatomy's distribution, like a new patient, puts about a share
q of its images below tau (the held-out images themselves do, by construction); one that returns
training slices, exact, flipped or with slight noise, puts nearly all of them there. The check is
``flagged`` when the share exceeds ``max_share`` in either space. The held-out set defines what
"close" means, so the check needs no absolute threshold that would differ between pixel sizes,
windows and datasets.

Distances: pixel space is the root-mean-square difference of the [0, 1] slices (same units as
the slices, comparable across sizes); the feature space is pipeline.evaluate.measures.embedding's random
VGG-16 (Euclidean distance of L2-normalised features). The interval of the share is the
two-set subject jackknife (``intervals.two_set_ci``): held-out patients and generated images are
left out in turn, because tau moves with the held-out set. Nearest neighbours are searched exactly, in chunks, so memory stays bounded for
large training sets.
"""

from __future__ import annotations

import numpy as np

from pipeline.evaluate.measures import intervals
from pipeline.evaluate.measures.intervals import IntervalPolicy
from pipeline.evaluate.measures.prdc import pairwise_distances

CHUNK = 512
"""Queries and references per block of the exact nearest-neighbour search (memory ~ CHUNK^2 floats)."""

DEFINITION = (
    "d_T(x) = distance from x to its nearest training image or left-right flip of one; tau = {q:g}-quantile "
    "(linear interpolation) of d_T over the held-out real images; share_closer = share of generated images g "
    "with d_T(g) < tau; flagged when share_closer > {max_share:g} (about {q:g} expected of a generator that "
    "draws like a new patient, about 1 of one that copies)"
)
PIXEL_SPACE = "pixels: root-mean-square difference of the [0,1] slices (flattened), same units as the slices"


def nearest(queries: np.ndarray, *reference_parts: np.ndarray, chunk: int = CHUNK) -> tuple[np.ndarray, np.ndarray]:
    """Distance to and index of each query's nearest reference row (exact Euclidean search in blocks).

    The references are the rows of ``reference_parts`` one after the other (e.g. the training
    images, then their mirror images); indices count through them. Each block is converted to
    float64 on its own, so a large float32 training set is never copied whole.
    """
    queries = np.asarray(queries).reshape(len(queries), -1)
    best = np.full(len(queries), np.inf)
    index = np.zeros(len(queries), np.int64)
    offset = 0
    for part in reference_parts:
        part = np.asarray(part).reshape(len(part), -1)
        for q0 in range(0, len(queries), chunk):
            block = queries[q0 : q0 + chunk].astype(np.float64)
            for r0 in range(0, len(part), chunk):
                distances = pairwise_distances(block, part[r0 : r0 + chunk].astype(np.float64))
                column = distances.argmin(axis=1)
                value = distances[np.arange(len(block)), column]
                better = value < best[q0 : q0 + chunk]
                best[q0 : q0 + chunk][better] = value[better]
                index[q0 : q0 + chunk][better] = column[better] + r0 + offset
        offset += len(part)
    return best, index


def share_closer(heldout_to_train: np.ndarray, generated_to_train: np.ndarray, quantile: float) -> float | None:
    """Share of generated distances below the q-quantile of the held-out ones (None when a set is empty)."""
    heldout_to_train = np.ravel(heldout_to_train)
    generated_to_train = np.ravel(generated_to_train)
    if heldout_to_train.size == 0 or generated_to_train.size == 0:
        return None
    threshold = np.quantile(heldout_to_train, quantile)
    return float(np.mean(generated_to_train < threshold))


def space_block(
    generated: np.ndarray,
    train: tuple[np.ndarray, np.ndarray],
    heldout: tuple[np.ndarray, np.ndarray],
    heldout_subjects: np.ndarray,
    quantile: float,
    max_share: float,
    scale: float,
    policy: IntervalPolicy,
) -> tuple[dict, dict[str, np.ndarray]]:
    """The memorisation block of one space; rows are flattened images or feature vectors.

    train, heldout: (rows, rows of the left-right flipped images), row for row (a flipped image's
    features are not the flipped features, so the caller embeds the flips). ``scale`` divides
    Euclidean distances (sqrt(pixels) turns them into RMS differences; 1 for features). Also
    returns per-generated-image arrays: the nearest training and held-out images (index, whether
    the flip was nearer, distance).
    """
    n_train, n_heldout = len(train[0]), len(heldout[0])
    d_gen_train, i_gen_train = nearest(generated, *train)
    d_gen_heldout, i_gen_heldout = nearest(generated, *heldout)
    d_heldout_train = nearest(heldout[0], *train)[0]
    d_gen_train, d_gen_heldout, d_heldout_train = (d / scale for d in (d_gen_train, d_gen_heldout, d_heldout_train))
    share = share_closer(d_heldout_train, d_gen_train, quantile)
    generated_ids = np.array([f"generated_{i}" for i in range(len(generated))])
    interval = intervals.two_set_ci(
        lambda h, g: share_closer(d_heldout_train[h], d_gen_train[g], quantile), np.asarray(heldout_subjects),
        generated_ids, policy, lower_bound=0.0,
    )
    block = {
        "threshold": float(np.quantile(d_heldout_train, quantile)),
        "share_closer": {"value": share} | interval,
        "flagged": bool(share > max_share),
        "median_distance_generated_to_train": float(np.median(d_gen_train)),
        "median_distance_generated_to_heldout": float(np.median(d_gen_heldout)),
        "median_distance_heldout_to_train": float(np.median(d_heldout_train)),
        "share_nearest_training_is_flipped": float(np.mean(i_gen_train >= n_train)),
        "share_nearer_training_than_heldout": float(np.mean(d_gen_train < d_gen_heldout)),
    }
    per_image = {
        "nearest_train_index": i_gen_train % n_train,
        "nearest_train_flipped": i_gen_train >= n_train,
        "nearest_train_distance": d_gen_train,
        "nearest_heldout_index": i_gen_heldout % n_heldout,
        "nearest_heldout_flipped": i_gen_heldout >= n_heldout,
        "nearest_heldout_distance": d_gen_heldout,
    }
    return block, per_image


def memorisation(
    generated: np.ndarray,
    train: np.ndarray,
    heldout: np.ndarray,
    heldout_subjects: np.ndarray,
    generated_features: np.ndarray | None = None,
    train_features: tuple[np.ndarray, np.ndarray] | None = None,
    heldout_features: tuple[np.ndarray, np.ndarray] | None = None,
    feature_space: str | None = None,
    quantile: float = 0.05,
    max_share: float = 0.2,
    policy: IntervalPolicy = IntervalPolicy(),
) -> tuple[dict, dict[str, np.ndarray]]:
    """The "memorisation" block of metrics.json and per-generated-image nearest neighbours.

    generated, train, heldout: (N, H, W) slices in [0, 1] (held-out: real images of patients the
    generator never saw). heldout_subjects: their patient ids (the interval's unit).
    *_features: the same images in the feature space; train_features and heldout_features are
    pairs (features of the images, features of their flips, row for row), because a flipped
    image's features are not the flipped features. feature_space: its name, stated in the block.
    quantile (default 0.05), max_share (default 0.2): see the module docstring.
    """
    generated, train, heldout = (np.asarray(x, np.float32) for x in (generated, train, heldout))
    if generated.shape[1:] != train.shape[1:] or heldout.shape[1:] != train.shape[1:]:
        raise ValueError(
            f"generated {generated.shape[1:]}, training {train.shape[1:]} and held-out {heldout.shape[1:]} "
            "images must share one size"
        )
    if min(len(generated), len(train), len(heldout)) == 0:
        raise ValueError("memorisation needs generated, training and held-out images")
    n_pixels = int(np.prod(train.shape[1:]))
    pixel, pixel_values = space_block(
        generated, (train, train[..., ::-1]), (heldout, heldout[..., ::-1]), heldout_subjects, quantile,
        max_share, np.sqrt(n_pixels), policy,
    )
    block = {
        "definition": DEFINITION.format(q=quantile, max_share=max_share),
        "compares": "every generated image vs the training slices (and their left-right flips) and vs the "
        "held-out real slices",
        "quantile": quantile,
        "max_share": max_share,
        "n_generated": len(generated),
        "n_train": len(train),
        "n_heldout": len(heldout),
        "n_heldout_subjects": int(len(np.unique(np.asarray(heldout_subjects).astype(str)))),
        "pixel": pixel | {"space": PIXEL_SPACE},
        "feature": None,
        "feature_reason": "no feature space given",
    }
    per_image = {f"pixel_{key}": value for key, value in pixel_values.items()}
    if generated_features is not None:
        feature, feature_values = space_block(
            generated_features, train_features, heldout_features, heldout_subjects, quantile, max_share, 1.0,
            policy,
        )
        block["feature"] = feature | {"space": feature_space or "unnamed"}
        block["feature_reason"] = None
        per_image |= {f"feature_{key}": value for key, value in feature_values.items()}
    block["flagged"] = bool(block["pixel"]["flagged"] or (block["feature"] or {}).get("flagged", False))
    return block, per_image
