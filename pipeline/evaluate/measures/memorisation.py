"""Memorisation: does the generator hand back its training slices, as they are or moved a little?

A generator that memorises rarely returns a training slice byte for byte: it reproduces it shifted
by a pixel or two, cropped and resized back, mirrored, or with other noise. So the distance of an
image x to the training set is taken over those moves:

    d_T(x) = min over training slices t, left-right flips f, zooms z (a crop resized back) and
             translations s (|s_y|, |s_x| <= m pixels) of RMS( x - S_s Z_z F_f t )

the root-mean-square difference in [0, 1] units over the image's central window (a border of m
pixels left out, so every translation compares the same pixels of x). Zooms enlarge the training
slice about its centre (bilinear); together with the translations they cover a crop of up to
1 - 1/max(z) of the side anywhere in the image, resized back to full size.

Search, exact where it matters and pruned where it is cheap to prune:

1. candidates: every image, and every training slice, its mirror image and their zooms, is reduced
   to the magnitudes of its Fourier coefficients up to 12 cycles per image, which a translation
   does not change; the ``candidates`` training slices (flip included) nearest in that space are
   kept (low-resolution thumbnails fail here: a 2-pixel shift moves a thumbnail further than
   another patient's slice is);
2. alignment: for each candidate and zoom, the RMS at every translation within +-m comes from
   FFT cross-correlations (the window's sum of x^2, the shifted slice's sum of t^2 over the
   window, and the cross term; circular correlation is exact here because the window keeps m
   pixels from the border); the smallest is d_T(x), with the slice, flip, zoom and shift.

The same search (same candidates rule) is applied to every image whose distance enters the
comparison, so pruning cannot favour generated images over real ones.

Feature space (pipeline.evaluate.measures.embedding's random VGG-16, Euclidean distance of
L2-normalised features): the feature distance of x to the nearest training feature (images and
their mirror images embedded), taken for x as it is and for x moved back into its pixel match's
frame (the inverse of the shift, zoom and flip found in step 2), whichever is nearer. The random
features are not shift-invariant (a 2-pixel shift moves them as far as another patient's slice
does), so this re-alignment is what lets the feature space see moved copies.

What "near copy" means, and the flag. The reference is how close *new patients* come to the
training set: the held-out real slices (patients never trained on) against the training set,
and each training patient's slices against the other training patients' (leave one patient out:
a training patient is a new patient to the rest; with few held-out patients this is what gives
the comparison its power). With D_0 = the median of those reference distances:

    near copy:  d_T(x) < copy_ratio * D_0                (copy_ratio default 0.5)
    p_gen  = share of generated images that are near copies (Wilson interval, each image a unit)
    p_0    = share of reference slices that are near copies (Wilson on the effective size over
             patients; when none is, on the number of slices: rare events treated as independent,
             intervals.share_ci with rare_events=True)
    excess = p_gen - p_0, Newcombe's hybrid score interval; flagged when its lower bound > 0.

New patients' nearest-neighbour distances are concentrated (on the phantom head CT the closest
of 50 held-out slices came within 0.85 D_0), so p_0 is 0 or nearly so, and a copy's distance
(exact, mirrored or moved: 0; noised with sigma 0.02: ~0.1 D_0; a 10% crop resized back:
~0.3 D_0) falls far below the threshold. The held-out share alone is reported beside the pooled
one. The older statistic stays as ``share_closer``: the share of generated images nearer to the
training set than the ``quantile`` (0.05) quantile of the held-out distances (about that share
for a generator that draws like a new patient), with its two-set jackknife interval; it says
"closer than new patients", not "copies", and flags nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from pipeline.evaluate.measures import intervals
from pipeline.evaluate.measures.intervals import IntervalPolicy
from pipeline.evaluate.measures.prdc import pairwise_distances

SPECTRUM_CYCLES = 12
"""Candidates are chosen on Fourier magnitudes up to this many cycles per image (325 numbers an image):
translation-invariant; on phantom head CT the source of every shifted, zoomed or noised copy ranked
among the 8 nearest (fewer cycles lost cropped copies: 90% at 6 or 8)."""
REFINED_CANDIDATES = 5
"""Candidates per image refined (the best after the zoom x integer-shift grid): the source of a crop,
half a pixel and half a zoom step off the grid, ranked behind another slice on the grid 1 time in 10."""
REFINE_ROUNDS = 2
"""Rounds of the local 3 x 3 x 3 refinement of each image's best match (zoom, dy, dx): to a quarter pixel."""
QUERY_CHUNK = 8
"""Images aligned at once (memory ~ QUERY_CHUNK x candidates x zooms x H x W complex numbers)."""
FEATURE_CHUNK = 512
"""Rows per block of the exact feature-space nearest-neighbour search."""


@dataclass(frozen=True)
class CopySearch:
    """How near copies are looked for and called (``experiments.<name>.evaluate.memorisation_*``)."""

    max_shift: float = 0.09375  # translations up to this share of the side, each axis (6 px at 64)
    zooms: tuple[float, ...] = (1.0, 1.0625, 1.125, 1.1875)  # training slices enlarged about the centre
    candidates: int = 8  # training slices (or mirror images) per image given the full alignment
    copy_ratio: float = 0.5  # near copy: distance below this share of the reference median
    quantile: float = 0.05  # share_closer: the held-out distances' quantile
    flips: bool = field(default=True)

    def __post_init__(self) -> None:
        if not 0.0 <= self.max_shift < 0.5:
            raise ValueError(f"memorisation_max_shift must lie in [0, 0.5), got {self.max_shift}")
        if not self.zooms or min(self.zooms) < 1.0:
            raise ValueError(f"memorisation_zooms must be factors >= 1 (1 = no zoom), got {list(self.zooms)}")
        if self.candidates < 1:
            raise ValueError(f"memorisation_candidates must be >= 1, got {self.candidates}")
        if not 0.0 < self.copy_ratio < 1.0 or not 0.0 < self.quantile < 1.0:
            raise ValueError(f"memorisation_copy_ratio and memorisation_quantile must lie in (0, 1), got "
                             f"{self.copy_ratio} and {self.quantile}")

    def shift_pixels(self, side: int) -> int:
        return int(round(self.max_shift * side))

    def describe(self, shape: tuple[int, int]) -> dict:
        m = self.shift_pixels(min(shape))
        return {
            "max_shift": self.max_shift,
            "max_shift_pixels": m,
            "zooms": list(self.zooms),
            "flips": self.flips,
            "candidates": self.candidates,
            "candidate_spectrum_cycles": SPECTRUM_CYCLES,
            "window": f"central {shape[0] - 2 * m} x {shape[1] - 2 * m} pixels of the {shape[0]} x {shape[1]} image",
            "copy_ratio": self.copy_ratio,
            "quantile": self.quantile,
        }


@dataclass
class Matches:
    """Each query's nearest training slice under the search: distance and the move that aligns them."""

    distance: np.ndarray  # RMS over the window, [0, 1] units
    index: np.ndarray  # row of the reference set
    flipped: np.ndarray  # the reference's mirror image matched
    zoom: np.ndarray  # the factor the reference was enlarged by
    shift: np.ndarray  # (n, 2): the query is the zoomed reference moved by (dy, dx) pixels (halves too)

    @property
    def moved(self) -> np.ndarray:
        return (self.zoom != 1.0) | np.any(self.shift != 0, axis=1)


def _torch():
    import torch

    return torch


def _resample(images, axis: int, zoom: np.ndarray, shift: np.ndarray):
    """``images`` (..., H, W) resampled along ``axis`` (-2 rows, -1 columns): out(p) = in(c + (p - c -
    shift) / zoom) by linear interpolation, zero outside (pixel centres at i + 1/2, c = size / 2);
    zoom and shift broadcast against the leading axes. As a product with the (size x size)
    interpolation matrix: BLAS beats a gather of the two neighbours here, by 5x on a CPU."""
    torch = _torch()
    size = images.shape[axis]
    zoom, shift = np.broadcast_arrays(np.asarray(zoom, np.float64), np.asarray(shift, np.float64))
    centres = np.arange(size) + 0.5 - size / 2.0
    source = (centres - shift[..., None]) / zoom[..., None] + size / 2.0 - 0.5  # (..., size)
    below = np.floor(source)[..., None]
    above_weight = source[..., None] - below
    columns = np.arange(size)
    matrix = (columns == below) * (1.0 - above_weight) + (columns == below + 1.0) * above_weight
    matrix = torch.from_numpy(matrix).to(images.device, images.dtype)  # (..., out, in)
    return matrix @ images if axis == -2 else images @ matrix.transpose(-1, -2)


def _moved(images, zoom, shift_y, shift_x):
    """images (..., H, W) enlarged by ``zoom`` about the centre and moved by (shift_y, shift_x) pixels,
    bilinear (a row pass, then a column pass: zoom and shift are separable), zero outside; the
    parameters broadcast against the leading axes of ``images``."""
    return _resample(_resample(images, -2, zoom, shift_y), -1, zoom, shift_x)


def _spectra(images):
    """(..., H, W) -> (..., D): magnitudes of the 2-D Fourier coefficients up to SPECTRUM_CYCLES cycles per
    image each way; unchanged by a (circular) translation, so moved copies keep their source's."""
    torch = _torch()
    magnitude = torch.fft.rfft2(images).abs()
    k = min(SPECTRUM_CYCLES, (images.shape[-2] - 1) // 2, images.shape[-1] // 2)  # small images: all they have
    low = torch.cat([magnitude[..., : k + 1, : k + 1], magnitude[..., -k:, : k + 1]], dim=-2)
    return low.reshape(*images.shape[:-2], -1)


def _candidates(queries, references, search: CopySearch, exclude: np.ndarray | None):
    """(M, k) candidate references per query, numbered index + N * flipped, nearest first by spectrum
    (over the zooms)."""
    torch = _torch()
    n_refs = len(references)
    query_spectra = _spectra(queries)
    query_norms = (query_spectra**2).sum(dim=1)[:, None]
    flips = (False, True) if search.flips else (False,)
    scores = torch.full((len(queries), len(flips) * n_refs), float("inf"), dtype=queries.dtype,
                        device=queries.device)
    for f, flipped in enumerate(flips):
        zooms = np.asarray(search.zooms)
        spectra = _spectra(_moved((references.flip(-1) if flipped else references)[:, None], zooms, 0.0, 0.0))
        block = scores[:, f * n_refs : (f + 1) * n_refs]
        for z in range(len(search.zooms)):
            squared = query_norms + (spectra[:, z] ** 2).sum(dim=1)[None, :] - 2.0 * query_spectra @ spectra[:, z].T
            torch.minimum(block, squared, out=block)
    if exclude is not None:
        scores[torch.from_numpy(np.tile(exclude, (1, len(flips)))).to(queries.device)] = float("inf")
    k = min(search.candidates, int(torch.isfinite(scores).sum(dim=1).min()))
    if k < 1:
        raise ValueError("an image has no training slice left to compare with (all excluded)")
    return torch.topk(scores, k, dim=1, largest=False).indices


def nearest_aligned(queries: np.ndarray, references: np.ndarray, search: CopySearch,
                    exclude: np.ndarray | None = None, device: str = "cpu") -> Matches:
    """Each query's nearest reference under flips, zooms and translations (see the module docstring).

    queries (M, H, W), references (N, H, W) in [0, 1]; ``exclude`` (M, N) bool: references a query
    may not match (its own patient's slices, for the leave-one-patient-out reference). ``device``:
    where the tensors live (a GPU for large sets; float32 rounding differs in the last digits).
    """
    torch = _torch()
    queries_t = torch.from_numpy(np.ascontiguousarray(queries, np.float32)).to(device)
    references_t = torch.from_numpy(np.ascontiguousarray(references, np.float32)).to(device)
    n_queries, height, width = queries_t.shape
    m = search.shift_pixels(min(height, width))
    window = torch.zeros(height, width, dtype=torch.float32, device=device)
    window[m : height - m, m : width - m] = 1.0
    window_spectrum = torch.fft.rfft2(window)
    shifts = torch.arange(-m, m + 1, device=device)
    candidates = _candidates(queries_t, references_t, search, exclude).cpu()
    n_refs, zooms = len(references_t), np.asarray(search.zooms)
    result = {key: [] for key in ("distance", "index", "flipped", "zoom", "shift")}
    for start in range(0, n_queries, QUERY_CHUNK):
        masked = queries_t[start : start + QUERY_CHUNK] * window
        chosen = candidates[start : start + QUERY_CHUNK]
        rows, k = chosen.shape
        index, flipped = chosen % n_refs, chosen >= n_refs
        refs = references_t[index.to(device)]
        refs = torch.where(flipped.to(device)[..., None, None], refs.flip(-1), refs)
        refs = _moved(refs[:, :, None], zooms, 0.0, 0.0)  # (rows, k, Z, H, W)
        spectrum = torch.fft.rfft2(refs)
        cross = torch.fft.irfft2(torch.fft.rfft2(masked)[:, None, None] * spectrum.conj(), s=(height, width))
        energy = torch.fft.irfft2(window_spectrum * torch.fft.rfft2(refs * refs).conj(), s=(height, width))
        squared = (masked**2).sum(dim=(-2, -1))[:, None, None, None, None] + energy - 2.0 * cross
        squared = squared[..., shifts % height, :][..., shifts % width]  # (rows, k, Z, 2m+1, 2m+1)
        # each candidate's best zoom and shift; the REFINED_CANDIDATES best candidates go on to refinement
        per_candidate, where = (t.cpu() for t in squared.reshape(rows, k, -1).min(dim=2))
        kept = torch.topk(per_candidate, min(REFINED_CANDIDATES, k), dim=1, largest=False).indices.numpy()
        picked = np.arange(rows)[:, None]
        z, y, x = np.unravel_index(where.numpy()[picked, kept], squared.shape[2:])
        result["distance"].append(np.sqrt(np.maximum(per_candidate.numpy()[picked, kept], 0.0) / float(window.sum())))
        result["index"].append(index.numpy()[picked, kept])
        result["flipped"].append(flipped.numpy()[picked, kept])
        result["zoom"].append(np.asarray(search.zooms, np.float64)[z])
        result["shift"].append(np.stack([y - m, x - m], axis=-1).astype(np.float64))
    kept = result["distance"][0].shape[1]
    grid = Matches(**{key: np.concatenate(parts).reshape(n_queries * kept, *np.shape(parts[0])[2:])
                      for key, parts in result.items()})
    refined = _refined(queries_t.repeat_interleave(kept, dim=0), references_t, grid, search, window)
    best = refined.distance.reshape(n_queries, kept).argmin(axis=1) + np.arange(n_queries) * kept
    return Matches(refined.distance[best], refined.index[best], refined.flipped[best], refined.zoom[best],
                   refined.shift[best])


def _refined(queries, references, grid: Matches, search: "CopySearch", window) -> Matches:
    """The grid's best match of each query with its zoom and shift refined by REFINE_ROUNDS rounds of
    a local 3 x 3 x 3 search (round r: shifts +-0.5 / 2^r pixels, zooms +-half a zoom step / 2^r):
    a copy moved by a fraction of a pixel, or a crop resized back between the zoom steps, otherwise
    keeps its sharp edges up to half a pixel off, which costs as much RMS as another patient's slice."""
    torch = _torch()
    zoom_step = np.diff(sorted(search.zooms)).min() / 2.0 if len(search.zooms) > 1 else 0.0
    steps = np.array([-1.0, 0.0, 1.0])
    device = references.device
    references = references[torch.from_numpy(grid.index).to(device)]
    references = torch.where(torch.from_numpy(grid.flipped).to(device)[:, None, None], references.flip(-1), references)
    best, zoom, shift = grid.distance.copy(), grid.zoom.copy(), grid.shift.copy()
    n_window = float(window.sum())
    for level in range(REFINE_ROUNDS):
        scale = 0.5**level
        zooms = np.maximum(zoom[:, None] + steps * zoom_step * scale, 1.0)  # (n, 3)
        shifts_y = shift[:, :1] + steps * 0.5 * scale
        shifts_x = shift[:, 1:] + steps * 0.5 * scale
        for start in range(0, len(queries), QUERY_CHUNK):
            rows = slice(start, start + QUERY_CHUNK)
            warped = _moved(references[rows, None, None, None], zooms[rows, :, None, None],
                            shifts_y[rows, None, :, None], shifts_x[rows, None, None, :])  # (r, 3, 3, 3, H, W)
            squared = (((warped - queries[rows, None, None, None]) * window) ** 2).sum(dim=(-2, -1)) / n_window
            squared = squared.reshape(len(squared), -1).cpu().numpy()
            j = squared.argmin(axis=1)
            better = np.flatnonzero(squared[np.arange(len(j)), j] < best[rows] ** 2)
            zi, yi, xi = np.unravel_index(j[better], (3, 3, 3))
            index = better + start
            best[index] = np.sqrt(squared[better, j[better]])
            zoom[index] = zooms[index, zi]
            shift[index] = np.stack([shifts_y[index, yi], shifts_x[index, xi]], axis=1)
    return Matches(best, grid.index, grid.flipped, zoom, shift)


def matched_references(references: np.ndarray, matches: Matches, device: str = "cpu") -> np.ndarray:
    """Each query's matched reference moved as the search found (mirrored, zoomed, shifted): the image
    the pixel distance compared the query with."""
    torch = _torch()
    images = torch.from_numpy(np.ascontiguousarray(references[matches.index], np.float32)).to(device)
    images = torch.where(torch.from_numpy(matches.flipped).to(device)[:, None, None], images.flip(-1), images)
    return _moved(images, matches.zoom, matches.shift[:, 0], matches.shift[:, 1]).cpu().numpy()


def nearest_features(queries: np.ndarray, references: np.ndarray, exclude: np.ndarray | None = None) -> np.ndarray:
    """Euclidean distance of each query row to its nearest reference row (``exclude`` (M, N) rows skipped)."""
    best = np.full(len(queries), np.inf)
    for start in range(0, len(queries), FEATURE_CHUNK):
        distances = pairwise_distances(queries[start : start + FEATURE_CHUNK], references)
        if exclude is not None:
            distances[exclude[start : start + FEATURE_CHUNK]] = np.inf
        best[start : start + FEATURE_CHUNK] = distances.min(axis=1)
    return best


def _feature_distances(embed: Callable[[np.ndarray], np.ndarray], images_features: np.ndarray,
                       references: np.ndarray, matches: Matches, reference_features: np.ndarray,
                       exclude: np.ndarray | None = None, device: str = "cpu") -> np.ndarray:
    """Feature distance of each image to the nearest training feature (slices and their mirror images,
    ``exclude`` tiled to both halves) or to the feature of its pixel match moved as found, whichever
    is nearer: the random features move with a 2-pixel shift as far as to another patient's slice,
    so the moved match is what lets the feature space see moved copies."""
    both = None if exclude is None else np.tile(exclude, (1, 2))
    nearest = nearest_features(images_features, reference_features, both)
    matched = embed(matched_references(references, matches, device))
    return np.minimum(nearest, np.linalg.norm(images_features - matched, axis=1))


def _share_block(near: np.ndarray, subject_ids: np.ndarray, policy: IntervalPolicy) -> dict:
    return {"value": float(np.mean(near))} | intervals.share_ci(near.astype(np.float64), subject_ids, policy,
                                                                rare_events=True)


def space_block(
    generated: np.ndarray,
    heldout: np.ndarray,
    heldout_subjects: np.ndarray,
    train_lopo: np.ndarray,
    train_subjects: np.ndarray,
    search: CopySearch,
    policy: IntervalPolicy,
) -> dict:
    """The memorisation block of one space from the distances to the training set of the generated
    images, the held-out slices, and the training slices against the other training patients."""
    reference = np.concatenate([heldout, train_lopo])
    reference_subjects = np.concatenate([[f"heldout:{s}" for s in np.asarray(heldout_subjects).astype(str)],
                                         [f"train:{s}" for s in np.asarray(train_subjects).astype(str)]])
    typical = float(np.median(reference))
    threshold = search.copy_ratio * typical
    generated_ids = np.array([f"generated_{i}" for i in range(len(generated))])
    near_generated = _share_block(generated < threshold, generated_ids, policy)
    near_reference = _share_block(reference < threshold, reference_subjects, policy)
    excess = intervals.difference_of_shares_ci(near_generated, near_reference)
    share = share_closer(heldout, generated, search.quantile)
    closer = intervals.two_set_ci(
        lambda h, g: share_closer(heldout[h], generated[g], search.quantile), np.asarray(heldout_subjects),
        generated_ids, policy, lower_bound=0.0, upper_bound=1.0,
    )
    return {
        "reference_median_distance": typical,
        "threshold": threshold,
        "share_near_copies": near_generated,
        "reference_share_near_copies": near_reference,
        "heldout_share_near_copies": float(np.mean(heldout < threshold)),
        "train_share_near_copies_of_other_patients": float(np.mean(train_lopo < threshold)),
        "excess_share_near_copies": excess,
        "flagged": bool(excess["ci95"] is not None and excess["ci95"][0] > 0.0),
        "share_closer": {"value": share, "threshold": float(np.quantile(heldout, search.quantile))} | closer,
        "median_distance_generated_to_train": float(np.median(generated)),
        "median_distance_heldout_to_train": float(np.median(heldout)),
        "median_distance_train_to_other_patients": float(np.median(train_lopo)),
    }


def share_closer(heldout_to_train: np.ndarray, generated_to_train: np.ndarray, quantile: float) -> float | None:
    """Share of generated distances below the q-quantile of the held-out ones (None when a set is empty)."""
    heldout_to_train = np.ravel(heldout_to_train)
    generated_to_train = np.ravel(generated_to_train)
    if heldout_to_train.size == 0 or generated_to_train.size == 0:
        return None
    threshold = np.quantile(heldout_to_train, quantile)
    return float(np.mean(generated_to_train < threshold))


def _other_patients(train_subjects: np.ndarray) -> np.ndarray:
    """(N, N) True where two training slices belong to one patient (left out of each other's search)."""
    subjects = np.asarray(train_subjects).astype(str)
    return subjects[:, None] == subjects[None, :]


@dataclass
class CopyDistances:
    """Distances to the training set under the search, per space ("pixel", "feature"): of the generated
    images, the held-out slices and the training slices (to the other training patients'); and the
    generated images' pixel matches among the training and the held-out slices."""

    generated: dict[str, np.ndarray]
    heldout: dict[str, np.ndarray]
    train: dict[str, np.ndarray]
    generated_to_train: Matches
    generated_to_heldout: Matches


def copy_distances(
    generated: np.ndarray,
    train: np.ndarray,
    train_subjects: np.ndarray,
    heldout: np.ndarray,
    embed: Callable[[np.ndarray], np.ndarray] | None = None,
    known_features: dict[str, np.ndarray] | None = None,
    search: CopySearch = CopySearch(),
    device: str = "cpu",
) -> CopyDistances:
    """Every distance the memorisation block is made of (see the module docstring); ``embed``: images ->
    features (None: pixels only), ``known_features``: the "generated" and "heldout" images' features
    already computed."""
    same_patient = _other_patients(train_subjects)
    if same_patient.all():
        raise ValueError("the training slices come from one patient: no other patient to compare them with")
    to_train = nearest_aligned(generated, train, search, device=device)
    to_heldout = nearest_aligned(generated, heldout, search, device=device)
    heldout_to_train = nearest_aligned(heldout, train, search, device=device)
    train_to_others = nearest_aligned(train, train, search, exclude=same_patient, device=device)
    distances = CopyDistances({"pixel": to_train.distance}, {"pixel": heldout_to_train.distance},
                              {"pixel": train_to_others.distance}, to_train, to_heldout)
    if embed is not None:
        known = known_features or {}
        train_features = np.concatenate([embed(train), embed(np.ascontiguousarray(train[..., ::-1]))])
        for images, matches, exclude, own, name in (
            (generated, to_train, None, known.get("generated"), "generated"),
            (heldout, heldout_to_train, None, known.get("heldout"), "heldout"),
            (train, train_to_others, same_patient, train_features[: len(train)], "train"),
        ):
            own = embed(images) if own is None else own
            getattr(distances, name)["feature"] = _feature_distances(embed, own, train, matches, train_features,
                                                                     exclude, device)
    return distances


def memorisation(
    generated: np.ndarray,
    train: np.ndarray,
    train_subjects: np.ndarray,
    heldout: np.ndarray,
    heldout_subjects: np.ndarray,
    embed: Callable[[np.ndarray], np.ndarray] | None = None,
    feature_space: str | None = None,
    known_features: dict[str, np.ndarray] | None = None,
    search: CopySearch = CopySearch(),
    policy: IntervalPolicy = IntervalPolicy(),
    device: str = "cpu",
) -> tuple[dict, dict[str, np.ndarray]]:
    """The "memorisation" block of metrics.json and per-generated-image nearest neighbours.

    generated, train, heldout: (N, H, W) slices in [0, 1] (held-out: real images of patients the
    generator never saw); train_subjects, heldout_subjects: their patient ids (a training slice is
    compared with the other patients' slices; the intervals' unit). embed: images -> features of
    the feature space named ``feature_space`` (None: pixels only); known_features: features
    already computed of "generated" and "heldout" (as they are), so they are not embedded twice.
    device: where the search (and the caller's embedding) runs.
    """
    generated, train, heldout = (np.asarray(x, np.float32) for x in (generated, train, heldout))
    if generated.shape[1:] != train.shape[1:] or heldout.shape[1:] != train.shape[1:]:
        raise ValueError(
            f"generated {generated.shape[1:]}, training {train.shape[1:]} and held-out {heldout.shape[1:]} "
            "images must share one size"
        )
    if min(len(generated), len(train), len(heldout)) == 0:
        raise ValueError("memorisation needs generated, training and held-out images")
    if len(train_subjects) != len(train) or len(heldout_subjects) != len(heldout):
        raise ValueError("one patient id per training and per held-out image is needed")
    distances = copy_distances(generated, train, train_subjects, heldout, embed, known_features, search, device)
    to_train, to_heldout = distances.generated_to_train, distances.generated_to_heldout
    block = {
        "definition": DEFINITION.format(ratio=search.copy_ratio),
        "compares": "every generated image vs the training slices (mirror images, zooms and translations "
        "searched); reference: held-out slices vs the training slices, and each training patient's slices vs "
        "the other training patients'",
        "search": search.describe(train.shape[1:]),
        "n_generated": len(generated),
        "n_train": len(train),
        "n_train_subjects": int(len(np.unique(np.asarray(train_subjects).astype(str)))),
        "n_heldout": len(heldout),
        "n_heldout_subjects": int(len(np.unique(np.asarray(heldout_subjects).astype(str)))),
        "feature": None,
        "feature_reason": "no feature space given" if embed is None else None,
    }
    for space in distances.generated:
        block[space] = space_block(distances.generated[space], distances.heldout[space], heldout_subjects,
                                   distances.train[space], train_subjects, search, policy)
    block["pixel"] |= {
        "space": "pixels: root-mean-square difference of the [0,1] slices over the central window, after the "
                 "flip, zoom and translation that bring them nearest",
        "median_distance_generated_to_heldout": float(np.median(to_heldout.distance)),
        "share_nearest_training_is_flipped": float(np.mean(to_train.flipped)),
        "share_nearest_training_is_moved": float(np.mean(to_train.moved)),
        "share_nearer_training_than_heldout": float(np.mean(to_train.distance < to_heldout.distance)),
    }
    if block["feature"] is not None:
        block["feature"]["space"] = (f"{feature_space or 'unnamed'}: Euclidean distance of the features to the "
                                     "nearest training slice's or mirror image's, or to the pixel match's moved "
                                     "as found, whichever is nearer")
    block["flagged"] = bool(block["pixel"]["flagged"] or (block["feature"] or {}).get("flagged", False))
    per_image = {
        "pixel_nearest_train_index": to_train.index,
        "pixel_nearest_train_flipped": to_train.flipped,
        "pixel_nearest_train_zoom": to_train.zoom,
        "pixel_nearest_train_shift": to_train.shift,
        "pixel_nearest_train_distance": to_train.distance,
        "pixel_nearest_heldout_index": to_heldout.index,
        "pixel_nearest_heldout_flipped": to_heldout.flipped,
        "pixel_nearest_heldout_distance": to_heldout.distance,
    } | {f"{space}_near_copy": distances.generated[space] < block[space]["threshold"] for space in distances.generated}
    if "feature" in distances.generated:
        per_image["feature_nearest_train_distance"] = distances.generated["feature"]
    return block, per_image


DEFINITION = (
    "d_T(x) = smallest RMS difference (pixels; feature space: feature distance) between x and a training slice "
    "under left-right flips, zooms and translations (search); reference: held-out slices vs training and each "
    "training patient's slices vs the other training patients'; near copy: d_T < {ratio:g} x the reference's "
    "median; flagged when the share of near copies among generated images exceeds the reference's (lower bound "
    "of the Newcombe 95% interval of the difference above 0)"
)
