"""Style per organ: did a generated organ's texture come from the style image or from the content image?

Report 003 transfers texture organ by organ from a style image (another patient) while the
content image fixes the anatomy. For each organ and generated image two distances are measured,
each to the style image's same organ and to the content image's same organ:

- **Gram distance**: features of a fixed random VGG-16 trunk (pipeline.evaluate.measures.embedding's
  network, the same on every machine; Ustyuzhaninov et al. 2017 showed random shallow filters'
  Gram matrices describe texture) at relu1_2 (full size) and relu2_2 (half size). Per layer
  and organ the Gram matrix is G = F_m F_m^T / (C * A), F_m the features times the organ's mask
  (carried down the pooling as the 2x2 average of the mask, i.e. the covered fraction), C the
  channels and A the mask's area at that layer; the distance is the sum over the two layers of
  ||G_x - G_y||_F^2 / C^2. Independent of the training loss's VGG-19 (which may have trained
  weights or not), so the measure does not grade the loss by itself.
- **Wasserstein-1 of intensities** (HU when the slices carry ``hu_window``, else [0, 1] units):
  scipy.stats.wasserstein_distance between the organ's pixel values in the two images.

An organ with fewer than ``min_pixels`` pixels in any of the three images gives NaN (left out).
"closer to style" per image means distance to style < distance to content.
"""

from __future__ import annotations

import numpy as np

GRAM_LAYERS = {"relu1_2": 4, "relu2_2": 9}
"""Layer name -> number of modules of the VGG-16 trunk (torchvision cfg "D") up to and including it."""

DEFINITION = {
    "gram": "sum over random-VGG-16 relu1_2 and relu2_2 of ||G_x - G_y||_F^2 / C^2, G = F_m F_m^T / (C * A) with "
    "F_m the features masked by the organ (mask carried down the pooling as its 2x2 average) and A the mask area",
    "wasserstein_1": "scipy.stats.wasserstein_distance of the organ's pixel values of the two images",
    "closer_to_style": "share of images whose distance to the style image's organ is below the distance to the "
    "content image's organ",
}


def organ_features(images: np.ndarray, network=None) -> list[np.ndarray]:
    """[(N, C, H, W) relu1_2, (N, C, H/2, W/2) relu2_2] float64 features of (N, H, W) slices in [0, 1]."""
    import torch

    from pipeline.evaluate.measures.embedding import build_random_vgg

    from pipeline.devices import module_device

    network = network if network is not None else build_random_vgg()
    out = []
    with torch.inference_mode():
        x = torch.from_numpy(np.ascontiguousarray(images, np.float32))[:, None].repeat(1, 3, 1, 1) * 2.0 - 1.0
        x = x.to(module_device(network))  # the VGG may have been moved to the GPU (embedding.embed does)
        done = 0
        for end in GRAM_LAYERS.values():
            x = network[done:end](x)
            done = end
            out.append(x.double().cpu().numpy())
    return out


def _mask_pyramid(mask: np.ndarray, n_levels: int) -> list[np.ndarray]:
    masks = [mask.astype(np.float64)]
    for _ in range(n_levels - 1):
        m = masks[-1]
        h, w = (m.shape[0] // 2) * 2, (m.shape[1] // 2) * 2
        masks.append(m[:h, :w].reshape(h // 2, 2, w // 2, 2).mean(axis=(1, 3)))
    return masks


def masked_grams(features: list[np.ndarray], mask: np.ndarray) -> list[np.ndarray] | None:
    """Per layer the (C, C) Gram matrix of one image's features ((C, h, w) each) inside ``mask`` ((H, W))."""
    grams = []
    for layer, m in zip(features, _mask_pyramid(mask, len(features))):
        area = m.sum()
        if area <= 0:
            return None
        flat = (layer * m[None]).reshape(len(layer), -1)
        grams.append(flat @ flat.T / (len(layer) * area))
    return grams


def gram_distance(a: list[np.ndarray], b: list[np.ndarray]) -> float:
    return float(sum(np.sum((x - y) ** 2) / len(x) ** 2 for x, y in zip(a, b)))


def organ_style_distances(
    generated: np.ndarray, generated_maps: np.ndarray, content: np.ndarray, content_maps: np.ndarray,
    style: np.ndarray, style_map: np.ndarray, n_classes: int, min_pixels: int = 16,
    intensity: tuple[float, float] = (0.0, 1.0), network=None,
) -> dict[str, np.ndarray]:
    """(N, n_classes) arrays gram_to_style, gram_to_content, w1_to_style, w1_to_content.

    generated, content: (N, H, W) in [0, 1] with their maps (the generated image's map is the one
    it was generated from); style, style_map: (H, W), the one style image. ``intensity`` = (lo, hi)
    maps [0, 1] to the W1 unit (the HU window). Class 0 (background) is measured like the others.
    """
    from scipy.stats import wasserstein_distance

    lo, hi = intensity
    n = len(generated)
    keys = ("gram_to_style", "gram_to_content", "w1_to_style", "w1_to_content")
    out = {key: np.full((n, n_classes), np.nan) for key in keys}
    feats_generated = organ_features(generated, network)
    feats_content = organ_features(content, network)
    feats_style = organ_features(style[None], network)
    style_layers = [layer[0] for layer in feats_style]
    for c in range(n_classes):
        style_mask = style_map == c
        if style_mask.sum() < min_pixels:
            continue
        style_gram = masked_grams(style_layers, style_mask)
        style_values = lo + style[style_mask] * (hi - lo)
        for i in range(n):
            g_mask, c_mask = generated_maps[i] == c, content_maps[i] == c
            if g_mask.sum() < min_pixels or c_mask.sum() < min_pixels:
                continue
            g_gram = masked_grams([layer[i] for layer in feats_generated], g_mask)
            c_gram = masked_grams([layer[i] for layer in feats_content], c_mask)
            out["gram_to_style"][i, c] = gram_distance(g_gram, style_gram)
            out["gram_to_content"][i, c] = gram_distance(g_gram, c_gram)
            g_values = lo + generated[i][g_mask] * (hi - lo)
            out["w1_to_style"][i, c] = wasserstein_distance(g_values, style_values)
            out["w1_to_content"][i, c] = wasserstein_distance(g_values, lo + content[i][c_mask] * (hi - lo))
    return out
