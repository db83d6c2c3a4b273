"""The memorisation check on realistic slices: the built-in RSNA-layout head CT phantom (MNI152 anatomy
deformed per patient, skull, CSF, noise), brain window 40/80, 64 px as the default profile prepares it.

Planted copies of training slices (exact, mirrored, noised, shifted by whole and by fractions of
pixels, cropped and resized back) must each be caught (a near copy) at >= 90%, fresh patients'
slices at <= 10%; a set of fresh slices must not be flagged and one with 5% copies must be. The
distances are computed once per module; the set-level statistics are recomputed on subsets of them.
"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.stats
from scipy import ndimage
from skimage.transform import resize

from pipeline.evaluate.measures import embedding, memorisation
from pipeline.evaluate.measures.intervals import IntervalPolicy
from pipeline.preprocess.ct_slices import square_resize
from pipeline.preprocess.window import window_hu
from pipeline.sources import phantom_rsna_ich

SIZE = 64
PER_KIND = 20
POLICY = IntervalPolicy(min_subjects=8)
SEARCH = memorisation.CopySearch()  # the params.yaml defaults


def phantom_slices(first: int, n_patients: int, slices_per_patient: int) -> tuple[np.ndarray, np.ndarray]:
    """Windowed 64 px slices of phantom patients first .. first + n - 1 (healthy), and their patient ids."""
    params = phantom_rsna_ich.RsnaPhantomParams(matrix=128, pixel_mm=1.96, template_resolution_mm=2,
                                                slice_subsamples=1, slices_per_patient=slices_per_patient,
                                                n_patients=first + n_patients)
    images, subjects = [], []
    for index in range(first, first + n_patients):
        hu = phantom_rsna_ich.render_patient(index, 0, [], params).hu
        for k in range(hu.shape[2]):
            images.append(window_hu(square_resize(hu[..., k], SIZE), 40, 80))
            subjects.append(f"p{index:03d}")
    return np.stack(images).astype(np.float32), np.array(subjects)


def cropped(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A crop of 88-94% of the side at a random place, resized back (bilinear)."""
    side = int(rng.integers(56, 61))
    y, x = rng.integers(0, SIZE - side + 1, size=2)
    return resize(image[y : y + side, x : x + side], (SIZE, SIZE), order=1, preserve_range=True)


COPIES = {
    "exact": lambda image, rng: image,
    "mirrored": lambda image, rng: image[:, ::-1],
    "noised": lambda image, rng: np.clip(image + rng.normal(0.0, 0.02, image.shape), 0.0, 1.0),
    "shifted_1_2_px": lambda image, rng: np.roll(image, tuple(rng.choice([-2, -1, 1, 2], size=2)), axis=(0, 1)),
    "shifted_subpixel": lambda image, rng: ndimage.shift(image, rng.uniform(-2.0, 2.0, size=2), order=1),
    "cropped_resized": cropped,
}


@pytest.fixture(scope="module")
def data():
    """Training patients like the default profile's (24 x 5 slices), 10 held-out patients, 20 fresh
    patients x 10 slices (the generator that copies nothing) and PER_KIND planted copies of each kind."""
    train, train_subjects = phantom_slices(0, 24, 5)
    heldout, heldout_subjects = phantom_slices(24, 10, 5)
    fresh, _ = phantom_slices(34, 20, 10)
    rng = np.random.default_rng(0)
    sources = {kind: rng.integers(0, len(train), PER_KIND) for kind in COPIES}
    copies = {kind: np.stack([make(train[i], rng) for i in sources[kind]]).astype(np.float32)
              for kind, make in COPIES.items()}
    generated = np.concatenate([fresh, *copies.values()])
    kinds = np.array(["fresh"] * len(fresh) + [kind for kind in COPIES for _ in range(PER_KIND)])
    same_patient = train_subjects[:, None] == train_subjects[None, :]
    distances = {
        "generated": memorisation.nearest_aligned(generated, train, SEARCH),
        "heldout": memorisation.nearest_aligned(heldout, train, SEARCH).distance,
        "train": memorisation.nearest_aligned(train, train, SEARCH, exclude=same_patient).distance,
    }
    return {"train": train, "train_subjects": train_subjects, "heldout": heldout, "heldout_subjects": heldout_subjects,
            "generated": generated, "kinds": kinds, "sources": sources, "distances": distances}


def block_of(data, rows: np.ndarray) -> dict:
    d = data["distances"]
    return memorisation.space_block(d["generated"].distance[rows], d["heldout"], data["heldout_subjects"], d["train"],
                                    data["train_subjects"], SEARCH, POLICY)


def test_every_kind_of_planted_copy_is_caught_and_fresh_slices_are_not(data):
    fresh = np.flatnonzero(data["kinds"] == "fresh")
    block = block_of(data, fresh)
    near = data["distances"]["generated"].distance < block["threshold"]
    assert np.mean(near[fresh]) <= 0.10
    for kind in COPIES:
        rows = np.flatnonzero(data["kinds"] == kind)
        assert np.mean(near[rows]) >= 0.90, kind
        # the slice that was copied is the one found (a crop may match its neighbour slice instead)
        found = data["distances"]["generated"].index[rows] == data["sources"][kind]
        assert np.mean(found) >= (0.85 if kind == "cropped_resized" else 1.0), kind
    assert np.all(data["distances"]["generated"].flipped[data["kinds"] == "mirrored"])


def test_a_set_of_fresh_slices_is_not_flagged_and_one_with_five_percent_copies_is(data):
    fresh = np.flatnonzero(data["kinds"] == "fresh")
    clean = block_of(data, fresh)
    assert not clean["flagged"] and clean["share_near_copies"]["value"] == 0.0
    assert clean["reference_share_near_copies"]["value"] == 0.0
    for kind in COPIES:
        rows = np.concatenate([fresh[:190], np.flatnonzero(data["kinds"] == kind)[:10]])  # 10 of 200 copies
        block = block_of(data, rows)
        assert block["flagged"], kind
        low, high = block["excess_share_near_copies"]["ci95"]
        assert 0.0 < low <= block["excess_share_near_copies"]["value"] <= high
    # the old rule (share below the held-out 5% quantile > 0.2) does not see them: 5% copies stay under 0.2
    assert block["share_closer"]["value"] < 0.2


def test_the_reference_is_how_close_new_patients_come(data):
    d = data["distances"]
    block = block_of(data, np.flatnonzero(data["kinds"] == "fresh"))
    reference = np.concatenate([d["heldout"], d["train"]])
    assert block["reference_median_distance"] == pytest.approx(np.median(reference))
    assert block["threshold"] == pytest.approx(SEARCH.copy_ratio * np.median(reference))
    # a training patient's slices against the other training patients' are as far as held-out patients' are
    assert scipy.stats.mannwhitneyu(d["heldout"], d["train"]).pvalue > 0.01
    assert np.min(reference) > block["threshold"]


def brute_force_grid_distance(query: np.ndarray, reference: np.ndarray, max_shift: int) -> float:
    """RMS over the central window, min over flips and integer shifts, with plain slicing."""
    best = np.inf
    core = query[max_shift:-max_shift, max_shift:-max_shift].astype(np.float64)
    for candidate in (reference, reference[:, ::-1]):
        for dy in range(-max_shift, max_shift + 1):
            for dx in range(-max_shift, max_shift + 1):
                moved = candidate[max_shift - dy : SIZE - max_shift - dy, max_shift - dx : SIZE - max_shift - dx]
                best = min(best, float(np.sqrt(np.mean((core - moved) ** 2))))
    return best


def test_aligned_distance_is_at_most_the_brute_force_grid_minimum_and_zero_for_a_shifted_copy(data):
    search = memorisation.CopySearch(zooms=(1.0,), candidates=len(data["train"]))  # every slice a candidate
    m = search.shift_pixels(SIZE)
    queries = data["generated"][data["kinds"] == "fresh"][:4]
    matches = memorisation.nearest_aligned(queries, data["train"][:10], search)
    for query, distance in zip(queries, matches.distance):
        brute = min(brute_force_grid_distance(query, t, m) for t in data["train"][:10])
        assert distance <= brute + 1e-4 and distance >= 0.8 * brute  # sub-pixel refinement only lowers it a little
    shifted = np.roll(data["train"][3], (2, -1), axis=(0, 1))[None]
    match = memorisation.nearest_aligned(shifted, data["train"][:10], search)
    assert match.index[0] == 3 and match.distance[0] < 1e-3 and tuple(match.shift[0]) == (2.0, -1.0)


@pytest.fixture(scope="module")
def feature_run(data):
    """The whole check, both spaces, on a smaller set (random VGG-16 features cost ~1 GFLOP an image):
    40 fresh slices and 4 copies of each kind against the first 12 training patients."""
    network = embedding.build_random_vgg()
    embed = lambda images: embedding.embed(images, network=network)
    keep = data["train_subjects"] < "p012"
    fresh = np.flatnonzero(data["kinds"] == "fresh")[::5]
    copies = [np.flatnonzero(data["kinds"] == kind)[keep[data["sources"][kind]]][:4] for kind in COPIES]
    rows = np.concatenate([fresh, *copies])
    block, per_image = memorisation.memorisation(
        data["generated"][rows], data["train"][keep], data["train_subjects"][keep], data["heldout"],
        data["heldout_subjects"], embed=embed, feature_space="random_vgg16", search=SEARCH, policy=POLICY)
    return block, per_image, data["kinds"][rows]


def test_the_feature_space_sees_moved_copies_too(feature_run):
    block, per_image, kinds = feature_run
    near = per_image["feature_near_copy"]
    assert np.mean(near[kinds == "fresh"]) <= 0.10
    for kind in COPIES:
        assert np.mean(near[kinds == kind]) >= 0.75, kind  # 4 images a kind here: 3 of 4
    assert block["feature"]["flagged"] and block["pixel"]["flagged"] and block["flagged"]  # 24 of 64 are copies
    assert block["feature_reason"] is None and block["search"]["max_shift_pixels"] == 6


def test_interval_of_the_share_contains_it_and_bad_input_is_a_clear_error(data, feature_run):
    block = feature_run[0]
    for space in ("pixel", "feature"):
        for key in ("share_near_copies", "reference_share_near_copies", "excess_share_near_copies", "share_closer"):
            value, (low, high) = block[space][key]["value"], block[space][key]["ci95"]
            assert low <= value <= high, (space, key)
    with pytest.raises(ValueError, match="one size"):
        memorisation.memorisation(np.zeros((3, 16, 16)), data["train"], data["train_subjects"], data["heldout"],
                                  data["heldout_subjects"])
    with pytest.raises(ValueError, match="one patient"):
        memorisation.memorisation(data["heldout"], data["train"][:5], data["train_subjects"][:5], data["heldout"],
                                  data["heldout_subjects"])
