"""Style per organ on hand-made cases: Gram and intensity distances name the image a texture came from."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.evaluate.measures import organ_style


def _stripes(shape, period: int, low: float, high: float) -> np.ndarray:
    columns = (np.arange(shape[1]) // (period // 2)) % 2
    return np.where(columns[None, :] == 1, high, low).repeat(shape[0], axis=0).astype(np.float32)


def _case(seed: int = 0):
    """A style image whose organ 1 is coarse bright stripes, a content image whose organ 1 is a
    smooth dark grain; maps differ in where organ 1 lies (the generator's map is the content's)."""
    rng = np.random.default_rng(seed)
    size = 32
    content_map = np.zeros((size, size), np.uint8)
    content_map[4:28, 2:16] = 1
    style_map = np.zeros((size, size), np.uint8)
    style_map[6:30, 14:30] = 1
    style_texture = _stripes((size, size), 4, 0.55, 0.95)
    content_texture = np.clip(0.25 + 0.02 * rng.standard_normal((size, size)), 0, 1).astype(np.float32)
    style = np.where(style_map == 1, style_texture, 0.0).astype(np.float32)
    content = np.where(content_map == 1, content_texture, 0.0).astype(np.float32)
    return content, content_map, style, style_map, style_texture, content_texture


@pytest.mark.parametrize("copied_from", ["style", "content"])
def test_style_distances_name_the_image_the_texture_came_from(copied_from):
    content, content_map, style, style_map, style_texture, content_texture = _case()
    texture = style_texture if copied_from == "style" else content_texture
    generated = np.where(content_map == 1, texture, 0.0).astype(np.float32)  # anatomy of the content map
    d = organ_style.organ_style_distances(generated[None], content_map[None], content[None], content_map[None],
                                          style, style_map, n_classes=2, intensity=(-1000.0, 400.0))
    other = "content" if copied_from == "style" else "style"
    for measure in ("gram", "w1"):
        near, far = d[f"{measure}_to_{copied_from}"][0, 1], d[f"{measure}_to_{other}"][0, 1]
        assert near < far, (measure, near, far)
    # W1 in HU: the texture's own histogram is matched exactly (same values, other pixels)
    if copied_from == "content":
        assert d["w1_to_content"][0, 1] == pytest.approx(0.0, abs=1.0)


def test_style_distance_is_nan_for_an_organ_too_small_or_absent():
    content, content_map, style, style_map, _, _ = _case()
    d = organ_style.organ_style_distances(content[None], content_map[None], content[None], content_map[None],
                                          style, style_map, n_classes=3, min_pixels=16)
    assert np.all(np.isnan(d["gram_to_style"][:, 2]))     # class 2 absent everywhere
    assert d["gram_to_content"][0, 1] == pytest.approx(0.0, abs=1e-12)   # identical organ, identical features


def test_masked_gram_equals_a_direct_computation():
    rng = np.random.default_rng(1)
    layer1, layer2 = rng.standard_normal((3, 8, 8)), rng.standard_normal((4, 4, 4))
    mask = np.zeros((8, 8))
    mask[2:6, 1:5] = 1
    mask[1, 1] = 0.5                                         # a soft border pixel: weighted once, not squared
    grams = organ_style.masked_grams([layer1, layer2], mask)
    direct1 = np.einsum("ihw,jhw->ij", layer1 * mask, layer1) / mask.sum()
    pooled = mask.reshape(4, 2, 4, 2).mean(axis=(1, 3))    # the mask carried down one 2x2 pooling
    direct2 = np.einsum("ihw,jhw->ij", layer2 * pooled, layer2) / pooled.sum()
    assert np.allclose(grams[0], direct1) and np.allclose(grams[1], direct2)
    assert organ_style.masked_grams([layer1], np.zeros((8, 8))) is None


def test_the_measured_gram_is_the_one_the_style_loss_trains():
    """One definition (m / sum m): the evaluation's organ Gram equals the training loss's masked_gram."""
    import torch

    from pipeline.models.style_losses import masked_gram

    rng = np.random.default_rng(2)
    layer, mask = rng.standard_normal((5, 6, 6)), rng.random((6, 6))
    trained = masked_gram(torch.from_numpy(layer[None]).float(), torch.from_numpy(mask[None, None]).float())
    np.testing.assert_allclose(organ_style.masked_grams([layer], mask)[0], trained[0, 0].numpy(), rtol=1e-5, atol=1e-6)


def _two_textures(size: int = 32):
    """One organ map and two textures the Gram measure must tell apart: coarse bright stripes (A)
    and a dark fine grain (B)."""
    rng = np.random.default_rng(3)
    label = np.zeros((size, size), np.uint8)
    label[4:28, 4:28] = 1
    a = np.where(label == 1, _stripes((size, size), 6, 0.5, 0.9), 0.0).astype(np.float32)
    b = np.where(label == 1, np.clip(0.3 + 0.05 * rng.standard_normal((size, size)), 0, 1), 0.0).astype(np.float32)
    return label, a, b


def test_own_style_preference_prefers_the_texture_an_image_was_painted_with():
    label, a, b = _two_textures()
    moved = np.roll(label, 2, axis=1)            # another map: the texture, not the anatomy, must decide
    painted_a = np.where(moved == 1, np.roll(a, 2, axis=1), 0.0).astype(np.float32)
    painted_b = np.where(moved == 1, np.roll(b, 2, axis=1), 0.0).astype(np.float32)
    images, maps = np.stack([painted_a, painted_b]), np.stack([moved, moved])
    for_a = organ_style.own_style_preference(images, maps, (a, label), (b, label), [1])
    for_b = organ_style.own_style_preference(images, maps, (b, label), (a, label), [1])
    assert for_a[0, 0] > 0.5 and for_a[1, 0] < -0.5      # painted with A: prefers A; with B: prefers B
    np.testing.assert_allclose(for_b, -for_a)             # antisymmetric in the pair
    # an image halfway between the two textures (their mean) prefers neither strongly
    mixed = ((painted_a + painted_b) / 2).astype(np.float32)
    assert abs(organ_style.own_style_preference(mixed[None], moved[None], (a, label), (b, label), [1])[0, 0]) \
        < abs(for_a[0, 0])
    # an organ too small in the image gives NaN, not a preference
    assert np.isnan(organ_style.own_style_preference(images, np.zeros_like(maps), (a, label), (b, label), [1])).all()


def test_most_different_subjects_picks_the_two_contrasting_patients():
    """Four patients, two slices each: p0 and p3 carry textures A and B, p1 and p2 a texture in
    between (the two textures' mean); the pair must be (p0, p3)."""
    label, a, b = _two_textures()
    mid = ((a + b) / 2).astype(np.float32)
    images = np.stack([a, a, mid, mid, mid, mid, b, b])
    maps = np.stack([label] * 8)
    subjects = np.array(["p0", "p0", "p1", "p1", "p2", "p2", "p3", "p3"])
    first, second, measured = organ_style.most_different_subjects(images, maps, subjects, [1])
    assert (first, second) == ("p0", "p3")
    assert measured["distance"] > measured["median_pair_distance"] and measured["n_subjects"] == 4
