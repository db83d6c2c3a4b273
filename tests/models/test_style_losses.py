"""Report 003's perceptual losses, each checked against an independent computation: the masked Gram
style loss (explicit loops), its masks on the VGG grid (block means), the layers the report names
(torchvision's own vgg19 layer list), the content loss (a direct slice of vgg19.features) and
total variation in both directions (values by hand)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision
from torch import nn

from pipeline.errors import InputDataError
from pipeline.models.losses import VGG19_LAYERS
from pipeline.models.style_losses import (
    CONTENT_LAYER, STYLE_LAYERS, MaskedVGGFeatures, content_loss, masked_gram, one_hot_masks, present_segments,
    style_loss, total_variation)

N_LABELS = 6


def blob_maps(size: int, seed: int, n: int = 1) -> torch.Tensor:
    """(n, 1, size, size) maps with the six classes as nested rectangles and a random stripe pattern."""
    rng = np.random.default_rng(seed)
    maps = np.zeros((n, 1, size, size), dtype=np.int64)
    for i in range(n):
        maps[i, 0, 2:-2, 2:-2] = 1
        for label in range(2, N_LABELS):
            top, left = rng.integers(2, size - 8, 2)
            maps[i, 0, top:top + rng.integers(3, 7), left:left + rng.integers(3, 7)] = label
    return torch.from_numpy(maps)


@pytest.fixture(scope="module")
def vgg():
    torch.manual_seed(0)
    return MaskedVGGFeatures([*STYLE_LAYERS, CONTENT_LAYER], None)


def test_layers_are_the_reports_by_torchvision_index():
    """Counted on torchvision's own vgg19().features: the 10th Conv2d is index 21 and its ReLU 22
    (relu4_2); the style layers are the first ReLU and the ReLU right after each pooling."""
    features = torchvision.models.vgg19(weights=None).features
    convs = [i for i, layer in enumerate(features) if isinstance(layer, nn.Conv2d)]
    assert convs[9] == 21 and isinstance(features[22], nn.ReLU)
    assert VGG19_LAYERS.index(CONTENT_LAYER) == 22
    pools = [i for i, layer in enumerate(features) if isinstance(layer, nn.MaxPool2d)]
    first_relu = next(i for i, layer in enumerate(features) if isinstance(layer, nn.ReLU))
    after_pools = [p + 2 for p in pools[:4]]  # pool -> conv -> ReLU
    assert all(isinstance(features[i], nn.ReLU) for i in after_pools)
    assert [VGG19_LAYERS.index(name) for name in STYLE_LAYERS] == [first_relu, *after_pools] == [1, 6, 11, 20, 29]


def test_content_loss_is_relu4_2_of_vgg19_features(vgg):
    """Equals eq. 2 computed on a direct slice vgg19.features[:23] carrying the same weights (and
    differs from the neighbouring layers'); an image differing only outside the content layer's
    reach would not matter, so check the slice end exactly."""
    reference = torchvision.models.vgg19(weights=None).features
    reference.load_state_dict(vgg.features.state_dict(), strict=False)
    reference.eval()
    torch.manual_seed(1)
    a, b = torch.rand(2, 1, 1, 32, 32) * 2 - 1
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)

    def direct(x, end):
        with torch.no_grad():
            return reference[:end]((((x + 1) / 2).repeat(1, 3, 1, 1) - mean) / std).numpy()

    fa, fb = direct(a, 23), direct(b, 23)
    expected = ((fa - fb) ** 2).sum() / (2 * fa.shape[1] * fa.shape[2] * fa.shape[3])
    with torch.no_grad():
        got = content_loss(vgg(a, [CONTENT_LAYER])[CONTENT_LAYER], vgg(b, [CONTENT_LAYER])[CONTENT_LAYER])
    assert got.item() == pytest.approx(expected, rel=1e-5)
    for end in (22, 24):  # conv4_2 before its ReLU, conv4_3
        other = ((direct(a, end) - direct(b, end)) ** 2).sum() / (2 * fa[0].size)
        assert other != pytest.approx(expected, rel=1e-3)


def test_masked_gram_equals_explicit_loops():
    rng = np.random.default_rng(3)
    f = rng.normal(size=(2, 3, 4, 5)).astype(np.float32)
    m = rng.random((2, 2, 4, 5)).astype(np.float32)
    expected = np.zeros((2, 2, 3, 3))
    for b in range(2):
        for k in range(2):
            area = sum(m[b, k, y, x] for y in range(4) for x in range(5))
            for i in range(3):
                for j in range(3):
                    expected[b, k, i, j] = sum(m[b, k, y, x] * f[b, i, y, x] * f[b, j, y, x]
                                               for y in range(4) for x in range(5)) / area
    got = masked_gram(torch.from_numpy(f), torch.from_numpy(m)).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


def test_style_loss_equals_a_direct_computation_on_a_small_case():
    """Two layers, two segments, weights 1 and 0.5, one segment unused in the second image."""
    rng = np.random.default_rng(4)
    feats = {"l1": rng.normal(size=(2, 3, 4, 4)), "l2": rng.normal(size=(2, 5, 2, 2))}
    masks = {"l1": rng.random((2, 2, 4, 4)), "l2": rng.random((2, 2, 2, 2))}
    grams = {"l1": rng.normal(size=(2, 2, 3, 3)), "l2": rng.normal(size=(2, 2, 5, 5))}
    used = np.array([[True, True], [True, False]])
    weights = {"l1": 1.0, "l2": 0.5}
    expected = 0.0
    for name, w in weights.items():
        channels = feats[name].shape[1]
        for b in range(2):
            for k in range(2):
                if not used[b, k]:
                    continue
                f, m = feats[name][b].reshape(channels, -1), masks[name][b, k].reshape(-1)
                gram = (f * m) @ f.T / m.sum()
                expected += w * ((gram - grams[name][b, k]) ** 2).sum() / (4 * channels ** 2) / 2
    t = {k: {n: torch.from_numpy(v) for n, v in d.items()} for k, d in
         (("f", feats), ("m", masks), ("g", grams))}
    got = style_loss(t["f"], t["m"], t["g"], torch.from_numpy(used), weights)
    assert got.item() == pytest.approx(expected, rel=1e-6)


def _style(vgg, generated, gen_maps, style, style_maps):
    with torch.no_grad():
        masks = vgg.carry_masks(one_hot_masks(gen_maps, N_LABELS), STYLE_LAYERS)
        features = vgg(generated, STYLE_LAYERS)
        style_features = vgg(style, STYLE_LAYERS)
        style_masks = vgg.carry_masks(one_hot_masks(style_maps, N_LABELS), STYLE_LAYERS)
        grams = {name: masked_gram(style_features[name], style_masks[name]) for name in STYLE_LAYERS}
        used = present_segments(gen_maps, N_LABELS) & present_segments(style_maps, N_LABELS)
        return style_loss(features, masks, grams, used, dict.fromkeys(STYLE_LAYERS, 1.0)).item()


def test_style_loss_is_zero_for_identical_images_and_maps_and_positive_otherwise(vgg):
    torch.manual_seed(2)
    image = torch.rand(1, 1, 32, 32) * 2 - 1
    maps = blob_maps(32, 0)
    assert _style(vgg, image, maps, image.clone(), maps.clone()) == 0.0
    assert _style(vgg, image, maps, torch.rand(1, 1, 32, 32) * 2 - 1, maps) > 0


def test_a_segment_absent_from_one_image_is_ignored(vgg):
    """Segment 3 is missing from the generated map: whatever the style image's segment-3 Gram
    matrices are, the loss is the same, and it equals the sum over the other segments alone;
    counting segment 3 anyway would change it."""
    torch.manual_seed(5)
    gen_maps, style_maps = blob_maps(32, 1), blob_maps(32, 2)
    gen_maps[gen_maps == 3] = 1
    used = present_segments(gen_maps, N_LABELS) & present_segments(style_maps, N_LABELS)
    assert used[0].tolist() == [True, True, True, False, True, True]
    generated, style = torch.rand(2, 1, 1, 32, 32) * 2 - 1
    weights = dict.fromkeys(STYLE_LAYERS, 1.0)
    with torch.no_grad():
        gen_masks = vgg.carry_masks(one_hot_masks(gen_maps, N_LABELS), STYLE_LAYERS)
        features = vgg(generated, STYLE_LAYERS)
        style_masks = vgg.carry_masks(one_hot_masks(style_maps, N_LABELS), STYLE_LAYERS)
        grams = {n: masked_gram(vgg(style, STYLE_LAYERS)[n], style_masks[n]) for n in STYLE_LAYERS}
        scrambled = {n: g.clone() for n, g in grams.items()}
        for g in scrambled.values():
            g[:, 3] = 1e3 * torch.randn_like(g[:, 3])
        base = style_loss(features, gen_masks, grams, used, weights).item()
        assert style_loss(features, gen_masks, scrambled, used, weights).item() == base
        by_segment = 0.0
        for k in (0, 1, 2, 4, 5):
            alone = torch.zeros_like(used)
            alone[0, k] = True
            by_segment += style_loss(features, gen_masks, grams, alone, weights).item()
        assert base == pytest.approx(by_segment, rel=1e-5)
        assert style_loss(features, gen_masks, scrambled, torch.ones_like(used), weights).item() > 10 * base


def test_masks_follow_the_vgg_pooling(vgg):
    """At relu{k}_1 the carried mask is the mean of the full-resolution mask over 2^(k-1) blocks:
    the fraction of each feature cell's pixels inside the segment; the six still sum to 1."""
    maps = blob_maps(32, 7)
    carried = vgg.carry_masks(one_hot_masks(maps, N_LABELS))
    onehot = np.eye(N_LABELS)[maps[0, 0].numpy()].transpose(2, 0, 1)
    for level, name in enumerate(STYLE_LAYERS):
        block = 2 ** level
        expected = onehot.reshape(N_LABELS, 32 // block, block, 32 // block, block).mean(axis=(2, 4))
        np.testing.assert_allclose(carried[name][0].numpy(), expected, atol=1e-6)
        np.testing.assert_allclose(carried[name][0].sum(0).numpy(), 1.0, atol=1e-6)
    assert carried[CONTENT_LAYER].shape[-1] == 32 // 8


def test_total_variation_counts_both_directions():
    """A 4x4 ramp of step 0.5 along x: 4 rows x 3 differences of 0.25 = 3.0; along y the same;
    both at once 6.0. The report's equation would give 0 for the first."""
    ramp = torch.arange(4.0) * 0.5
    along_x = ramp.expand(4, 4)[None, None]
    along_y = along_x.transpose(-1, -2)
    assert total_variation(along_x).item() == pytest.approx(3.0)
    assert total_variation(along_y).item() == pytest.approx(3.0)
    assert total_variation(along_x + along_y).item() == pytest.approx(6.0)
    assert total_variation(torch.stack([along_x[0], 2 * along_y[0]])).item() == pytest.approx((3.0 + 12.0) / 2)


def test_missing_vgg_file_with_imagenet_is_an_error_naming_it(tmp_path):
    from pipeline.models.seg2ct import Seg2CT
    with pytest.raises(InputDataError, match="vgg19-dcbb9e9d.pth") as err:
        Seg2CT({"ngf": 4, "ndf": 4, "nz": 4, "pretrained": "imagenet"}, tmp_path, 0, (16, 16))
    assert str(tmp_path) in str(err.value)
    model = Seg2CT({"ngf": 4, "ndf": 4, "nz": 4, "pretrained": "none"}, tmp_path, 0, (16, 16))
    assert model.perceptual_weights == "random" and model.pretrained["vgg19_perceptual"].startswith("random")
