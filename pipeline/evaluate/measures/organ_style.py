"""Style per organ: did a generated organ's texture come from the style image or from the content image?

Report 003 transfers texture organ by organ from a style image (another patient) while the
content image fixes the anatomy. For each organ and generated image two distances are measured,
each to the style image's same organ and to the content image's same organ:

- **Gram distance**: features of a fixed random VGG-16 trunk (pipeline.evaluate.measures.embedding's
  network, the same on every machine; Ustyuzhaninov et al. 2017 showed random shallow filters'
  Gram matrices describe texture) at relu1_2 (full size) and relu2_2 (half size). Per layer
  and organ the Gram matrix is the training loss's (style_losses.masked_gram): G = sum_p f_p f_p^T
  m_p / A, m the organ's mask carried down the pooling as its 2x2 average (the covered fraction,
  each pixel weighted once by it) and A = sum_p m_p the mask's area at that layer; the distance
  is the sum over the two layers of ||G_x - G_y||_F^2 / C^2 (C the channels). (Earlier m^2 / (C A):
  at soft mask borders that shrank a Gram with the organ's boundary-to-area ratio.) The network is
  independent of the training loss's VGG-19 (which may have trained weights or not), so the
  measure does not grade the loss by itself.
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
    "gram": "sum over random-VGG-16 relu1_2 and relu2_2 of ||G_x - G_y||_F^2 / C^2, G = sum_p f_p f_p^T m_p / sum_p m_p "
    "(the style loss's masked Gram) with m the organ's mask carried down the pooling as its 2x2 average",
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
    """Per layer the (C, C) Gram matrix of one image's features ((C, h, w) each) inside ``mask`` ((H, W)),
    as the training's style loss defines it (style_losses.masked_gram: sum_p f_p f_p^T m_p / sum_p m_p,
    the mask carried down the pooling): the same Gram is trained for and measured. None when the
    mask is empty at some level."""
    import torch

    from pipeline.models.style_losses import masked_gram

    grams = []
    for layer, m in zip(features, _mask_pyramid(mask, len(features))):
        if m.sum() <= 0:
            return None
        gram = masked_gram(torch.from_numpy(np.asarray(layer, np.float64))[None], torch.from_numpy(m)[None, None])
        grams.append(gram[0, 0].numpy())
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


PREFERENCE_DEFINITION = (
    "per generated image and organ: (d_other - d_own) / (d_other + d_own), d the Gram distance above between the "
    "image's organ and the same organ of the own style patient's style slice (d_own) or of the other style patient's "
    "(d_other); in [-1, 1], > 0: nearer its own style patient")


def organ_grams(images: np.ndarray, maps: np.ndarray, classes: list[int], min_pixels: int, network=None
                ) -> list[dict[int, list[np.ndarray]]]:
    """Per image: class -> its Gram matrices (masked_grams) for the classes with >= min_pixels pixels."""
    features = organ_features(images, network)
    out = []
    for i in range(len(images)):
        grams = {}
        for c in classes:
            mask = maps[i] == c
            if mask.sum() >= min_pixels:
                grams[c] = masked_grams([layer[i] for layer in features], mask)
        out.append(grams)
    return out


def most_different_subjects(images: np.ndarray, maps: np.ndarray, subject_ids: np.ndarray, classes: list[int],
                            min_pixels: int = 4, network=None) -> tuple[str, str, dict]:
    """The two patients whose organ textures differ most, measured on their slices.

    Per patient and organ the mean Gram matrix over its slices; per organ the Gram distance
    between two patients divided by that organ's median over all pairs (so each organ weighs
    alike), summed over ``classes``. Returns (first, second, {"distance", "median_pair_distance",
    "n_subjects"}); ties break by the sorted patient ids, so the choice is reproducible.
    """
    subjects = np.asarray(subject_ids).astype(str)
    names = sorted(set(subjects.tolist()))
    if len(names) < 2:
        raise ValueError("most_different_subjects needs slices of at least two patients")
    per_image = organ_grams(images, maps, classes, min_pixels, network)
    means: dict[str, dict[int, list[np.ndarray]]] = {}
    for name in names:
        rows = [per_image[i] for i in np.flatnonzero(subjects == name)]
        means[name] = {c: [np.mean(layers, axis=0) for layers in zip(*(r[c] for r in rows if c in r))]
                       for c in classes if any(c in r for r in rows)}
    pairs = [(a, b) for i, a in enumerate(names) for b in names[i + 1:]]
    raw = np.full((len(pairs), len(classes)), np.nan)
    for k, (a, b) in enumerate(pairs):
        for j, c in enumerate(classes):
            if c in means[a] and c in means[b]:
                raw[k, j] = gram_distance(means[a][c], means[b][c])
    scale = np.nanmedian(raw, axis=0)
    total = np.nansum(raw / np.where(scale > 0, scale, 1.0), axis=1)
    best = int(np.argmax(total))
    return pairs[best][0], pairs[best][1], {"distance": float(total[best]),
                                            "median_pair_distance": float(np.median(total)),
                                            "n_subjects": len(names)}


def own_style_preference(images: np.ndarray, maps: np.ndarray, own: tuple[np.ndarray, np.ndarray],
                         other: tuple[np.ndarray, np.ndarray], classes: list[int], min_pixels: int = 4,
                         network=None) -> np.ndarray:
    """(N, len(classes)) PREFERENCE_DEFINITION of generated ``images`` (with the maps they were made
    from) for the style slice ``own`` = (image, map) over ``other``; NaN where an organ is too small."""
    style = organ_grams(np.stack([own[0], other[0]]), np.stack([own[1], other[1]]), classes, min_pixels, network)
    generated = organ_grams(images, maps, classes, min_pixels, network)
    out = np.full((len(images), len(classes)), np.nan)
    for i, grams in enumerate(generated):
        for j, c in enumerate(classes):
            if c in grams and c in style[0] and c in style[1]:
                d_own, d_other = gram_distance(grams[c], style[0][c]), gram_distance(grams[c], style[1][c])
                if d_own + d_other > 0:
                    out[i, j] = (d_other - d_own) / (d_other + d_own)
    return out
