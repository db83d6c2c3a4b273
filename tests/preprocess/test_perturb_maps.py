"""Tests of the label-map perturbation (new anatomy for report 003): every organ stays present and
in one piece (as many connected components as before, counted here with scipy.ndimage.label),
over many seeds, on phantom maps at the default size; failures fall back visibly."""

from __future__ import annotations

import numpy as np
import pytest
import yaml
from scipy import ndimage

from pipeline.errors import ConfigError
from pipeline.preprocess.perturb_maps import perturb_map, perturb_map_checked
from pipeline.preprocess.thorax_slices import nearest_resize
from pipeline.sources import phantom_tcia_thorax as tp

N_SEEDS = 40
SIZE = 64  # preprocess.thorax_slices.size on the default profile
EIGHT = np.ones((3, 3), bool)
CLASS_OF_GREY = {0: 0, 50: 1, 100: 2, 150: 3, 200: 4, 230: 5}


@pytest.fixture(scope="module")
def knobs(repo_root) -> dict:
    return yaml.safe_load((repo_root / "params.yaml").read_text())["map_perturbation"]


@pytest.fixture(scope="module")
def maps() -> list[np.ndarray]:
    """Class maps of phantom slices of three patients at two levels, resized as the slices stage does."""
    params = tp.ThoraxPhantomParams()
    out = []
    for index in range(3):
        anatomy = tp.draw_anatomy(tp.patient_rngs(7, index)[0], params)
        for level in (0.45, 0.65):
            grey = tp.label_map_of(tp.paint_slice(anatomy, level, params), params)
            classes = np.vectorize(CLASS_OF_GREY.get)(grey).astype(np.uint8)
            out.append(nearest_resize(classes, SIZE))
    return out


def _pieces(label_map: np.ndarray) -> dict[int, int]:
    return {c: ndimage.label(label_map == c, structure=EIGHT)[1] for c in range(6) if (label_map == c).any()}


def test_every_organ_stays_present_and_in_one_piece_over_many_seeds(maps, knobs):
    changed = 0
    for i, label_map in enumerate(maps):
        for seed in range(N_SEEDS):
            out = perturb_map(label_map, np.random.default_rng([seed, i]), **knobs)
            assert out.shape == label_map.shape and out.dtype == np.uint8
            assert _pieces(out) == _pieces(label_map), f"map {i} seed {seed}"
            changed += not np.array_equal(out, label_map)
    assert changed >= 0.9 * len(maps) * N_SEEDS, "the perturbation should change nearly every map"


def test_perturbation_moves_boundaries_by_about_the_set_strength(maps, knobs):
    strong = {**knobs, "elastic_displacement": 0.06}
    shares = [np.mean(perturb_map(m, np.random.default_rng(s), **strong) != m) for m in maps for s in range(5)]
    weak = [np.mean(perturb_map(m, np.random.default_rng(s), **{**knobs, "elastic_displacement": 0.0,
                                                                   "organ_offset": 0.0}) != m)
            for m in maps for s in range(5)]  # fmt: skip
    assert np.mean(shares) > 0.005 and np.mean(weak) == 0.0


def test_same_seed_same_map(maps, knobs):
    a = perturb_map(maps[0], np.random.default_rng(3), **knobs)
    b = perturb_map(maps[0], np.random.default_rng(3), **knobs)
    assert np.array_equal(a, b)


def test_an_impossible_check_falls_back_to_the_input_and_says_so(maps, knobs, caplog):
    # An organ that must keep all its pixels while being eroded by several pixels cannot pass.
    harsh = {**knobs, "min_organ_share": 1.0, "organ_offset": 0.1, "max_tries": 2, "retry_shrink": 1.0}
    result = perturb_map_checked(maps[1], np.random.default_rng(0), **harsh)
    assert result.fallback and result.tries == 2 and result.strength == 0.0
    assert np.array_equal(result.label_map, maps[1])
    assert "unperturbed boundaries are kept" in caplog.text


def test_a_torn_organ_is_caught_by_the_check():
    from pipeline.preprocess.perturb_maps import check_perturbed

    original = np.ones((20, 20), np.uint8)
    original[5:15, 3:17] = 2  # one lung
    torn = original.copy()
    torn[5:15, 10] = 1  # cut in two
    assert check_perturbed(original, torn, 0.5) == ["lungs has 2 pieces, was 1"]


def test_bad_knobs_are_named(maps):
    with pytest.raises(ConfigError, match="organs"):
        perturb_map(maps[0], np.random.default_rng(0), organs=["liver"])
