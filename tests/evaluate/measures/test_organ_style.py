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
    grams = organ_style.masked_grams([layer1, layer2], mask)
    direct1 = np.einsum("ihw,jhw->ij", layer1 * mask, layer1 * mask) / (3 * mask.sum())
    pooled = mask.reshape(4, 2, 4, 2).mean(axis=(1, 3))    # the mask carried down one 2x2 pooling
    direct2 = np.einsum("ihw,jhw->ij", layer2 * pooled, layer2 * pooled) / (4 * pooled.sum())
    assert np.allclose(grams[0], direct1) and np.allclose(grams[1], direct2)
    assert organ_style.masked_grams([layer1], np.zeros((8, 8))) is None
