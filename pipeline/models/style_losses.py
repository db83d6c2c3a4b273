"""Perceptual losses of report 003 (CT from a segmentation map with per-organ style): the masked
(per-segment) Gram style loss, the VGG-19 content loss and total variation in both directions.

Layers (names as in ``losses.VGG19_LAYERS``, indices into torchvision's ``vgg19().features``):
  - style: the first ReLU and the ReLU right after each pooling, relu1_1 (index 1), relu2_1 (6),
    relu3_1 (11), relu4_1 (20), relu5_1 (29): the report's "RELU activations of the first layer
    and every other RELU layer that succeeds the pooling layer" (Gatys et al.'s style layers);
  - content: the ReLU of the 10th convolution. Counting convolutions conv1_1, conv1_2, conv2_1,
    conv2_2, conv3_1..conv3_4, conv4_1, conv4_2: the 10th is conv4_2 (index 21), its ReLU relu4_2
    is index 22 (Gatys et al.'s content layer).

Masks follow the VGG path: a segment's one-hot mask (1 inside, 0 outside) is carried through the
same layers as the image; 3x3 convolutions with padding 1 keep the grid, and at every pooling
layer the mask is average-pooled with that layer's window and stride (2x2, stride 2). The carried
mask is therefore the fraction of each feature cell's input pixels inside the segment: the six
masks still sum to 1 at every position, and a small organ never vanishes or swells at the deep
layers (a max-pool would dilate it by a cell per pooling, a threshold could delete it). The Gram
matrix of segment k at layer l is the mask-weighted mean of the feature outer products,
G_k = sum_p m_k(p) F(p) F(p)^T / sum_p m_k(p), i.e. normalised by the segment's (soft) area; the
layer loss is ||G_k(generated) - G_k(style)||_F^2 / (4 N_l^2) (N_l channels), which for a mask
of ones equals the report's eq. 4, 1 / (4 N_l^2 M_l^2) ||G(R) - G(S)||_F^2. A segment absent from
either image (no pixel of that class in the full-resolution map) is skipped and counted.

Content (report eq. 2): 1 / (2 N_l M_l) ||R - O||_F^2 at relu4_2 between the generated image and
the image the map was drawn from. The report's eq. 7 sums this over the six segments; the masks
partition the image, so the sum is the whole-image loss, computed once.

Total variation (report eq. 5 repeats the vertical term; both directions here): per image the sum
of squared differences of vertically and of horizontally adjacent pixels, averaged over the
batch, on the generator's [-1, 1] output.

Greyscale images go to VGG as three equal channels with ImageNet mean / std normalisation
(``losses.vgg_input``). The VGG weights are torchvision's ImageNet file when given, else random,
drawn as torchvision initialises VGG-19 (the caller records which: ``pretrained: none`` only).
"""
from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.errors import ConfigError
from pipeline.models.losses import _IMAGENET_MEAN, _IMAGENET_STD, VGG19_LAYERS, load_vgg19_features, vgg_input

#: The report's style layers: the first ReLU and the ReLU right after each pooling.
STYLE_LAYERS = ("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1")
#: The report's content layer: the ReLU of the 10th convolution (conv4_2).
CONTENT_LAYER = "relu4_2"


class MaskedVGGFeatures(nn.Module):
    """Frozen VGG-19 features at named layers, and segment masks carried down the same path."""

    def __init__(self, layers: Sequence[str], weights: Path | None):
        super().__init__()
        unknown = [name for name in layers if name not in VGG19_LAYERS]
        if unknown or not layers:
            raise ConfigError(f"VGG layers must be a non-empty list of {VGG19_LAYERS}, got {list(layers)}")
        self.layer_names = tuple(dict.fromkeys(layers))
        self.indices = {name: VGG19_LAYERS.index(name) for name in self.layer_names}
        self.features = load_vgg19_features(max(self.indices.values()), weights)
        if weights is None:
            _torchvision_vgg_init(self.features)
        self.register_buffer("mean", torch.tensor(_IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(_IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, images: torch.Tensor, layers: Sequence[str] | None = None) -> dict[str, torch.Tensor]:
        """Activations of (B, 1, H, W) [-1, 1] images at ``layers`` (default all of this extractor's)."""
        wanted = {self.indices[name]: name for name in (layers or self.layer_names)}
        x = vgg_input(images, self.mean, self.std)
        found = {}
        for index, layer in enumerate(self.features[: max(wanted) + 1]):
            x = layer(x)
            if index in wanted:
                found[wanted[index]] = x
        return found

    def carry_masks(self, masks: torch.Tensor, layers: Sequence[str] | None = None) -> dict[str, torch.Tensor]:
        """(B, K, H, W) masks on each layer's feature grid: average-pooled with the window and stride
        of every pooling layer on the way, unchanged by the (grid-preserving) convolutions."""
        wanted = {self.indices[name]: name for name in (layers or self.layer_names)}
        m = masks.float()
        carried = {}
        for index, layer in enumerate(self.features[: max(wanted) + 1]):
            if isinstance(layer, nn.MaxPool2d):
                m = F.avg_pool2d(m, kernel_size=layer.kernel_size, stride=layer.stride, padding=layer.padding,
                                 ceil_mode=layer.ceil_mode)
            if index in wanted:
                carried[wanted[index]] = m
        return carried


def _torchvision_vgg_init(features: nn.Module) -> None:
    """Random weights as ``torchvision.models.vgg19(weights=None)`` draws them (Kaiming normal,
    fan-out, zero bias): activations keep their scale down the layers, whereas the bare layers'
    default init shrinks them ~1e4-fold by relu4_2 and leaves the content loss ~0."""
    for module in features.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            nn.init.zeros_(module.bias)


def one_hot_masks(label_maps: torch.Tensor, n_labels: int) -> torch.Tensor:
    """(B, 1, H, W) or (B, H, W) integer classes -> (B, n_labels, H, W) float one-hot masks."""
    maps = label_maps[:, 0] if label_maps.ndim == 4 else label_maps
    return F.one_hot(maps.long(), n_labels).permute(0, 3, 1, 2).float()


def masked_gram(features: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """(B, C, h, w) features and (B, K, h, w) masks -> (B, K, C, C) Gram matrices per segment,
    normalised by the segment's masked area (an empty mask gives zeros): G_k = sum_p f_p f_p^T
    m_kp / sum_p m_kp, every pixel weighted once by its (soft, after pooling) mask value. The one
    definition: the evaluation's organ Grams (pipeline/evaluate/measures/organ_style.py) call this.
    Float64 inputs stay float64 (the evaluation's host work); half or float32 compute in float32."""
    dtype = torch.promote_types(features.dtype, torch.float32)
    f = features.to(dtype).flatten(2)
    m = masks.to(dtype).flatten(2)
    area = m.sum(-1).clamp_min(torch.finfo(torch.float32).tiny)
    weighted = f.unsqueeze(1) * (m / area[..., None]).unsqueeze(2)  # (B, K, C, P): one pass over the features
    return weighted @ f.unsqueeze(1).transpose(-1, -2)


def present_segments(label_maps: torch.Tensor, n_labels: int) -> torch.Tensor:
    """(B, n_labels) bool: which classes have at least one pixel in each map."""
    return one_hot_masks(label_maps, n_labels).flatten(2).sum(-1) > 0


def style_loss(generated: Mapping[str, torch.Tensor], generated_masks: Mapping[str, torch.Tensor],
               style_grams: Mapping[str, torch.Tensor], used: torch.Tensor,
               layer_weights: Mapping[str, float]) -> torch.Tensor:
    """Masked Gram style loss, mean over the batch: sum over layers l (weight w_l) and used segments k
    of ||G_k(generated) - G_k(style)||_F^2 / (4 N_l^2).

    ``generated``: layer -> (B, C, h, w) features; ``generated_masks``: layer -> (B, K, h, w) carried
    masks; ``style_grams``: layer -> (B, K, C, C) Gram matrices of the style images (or (1, K, C, C)
    for one fixed style); ``used``: (B, K) bool, segments present in both images.
    """
    total = None
    weight = used.float()
    for name, w in layer_weights.items():
        features = generated[name]
        channels = features.shape[1]
        diff = masked_gram(features, generated_masks[name]) - style_grams[name]
        per_segment = diff.pow(2).sum((-2, -1)) / (4 * channels ** 2)
        term = w * (per_segment * weight).sum(1).mean()
        total = term if total is None else total + term
    return total


def content_loss(generated: torch.Tensor, original: torch.Tensor) -> torch.Tensor:
    """Report eq. 2, mean over the batch: ||R - O||_F^2 / (2 N M) per image (N channels, M positions)."""
    per_image = (generated.float() - original.float()).pow(2).flatten(1).sum(1)
    return (per_image / (2 * generated[0].numel())).mean()


def total_variation(images: torch.Tensor) -> torch.Tensor:
    """Sum of squared differences of vertically and of horizontally adjacent pixels per image,
    mean over the batch."""
    x = images.float()
    vertical = (x[..., 1:, :] - x[..., :-1, :]).pow(2).flatten(1).sum(1)
    horizontal = (x[..., :, 1:] - x[..., :, :-1]).pow(2).flatten(1).sum(1)
    return (vertical + horizontal).mean()
