"""GAN losses: adversarial (BCE, LSGAN, WGAN-GP, WGAN with weight clipping), their helpers
(gradient penalty, weight clipping, the instance-noise schedule) and the cycle losses of report 001.

Images are 1-channel tensors in [-1, 1] (the generators' tanh range), so SSIM uses a data
range of 2. L1 cycle and identity losses are plain ``torch.nn.functional.l1_loss``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
import torchvision
from torch import nn
from torchmetrics.functional.image import structural_similarity_index_measure

from pipeline.errors import ConfigError, InputDataError
from pipeline.models.networks import load_state_file

ADVERSARIAL_LOSSES = ("bce", "lsgan", "wgan_gp")
#: Critic losses of the Wasserstein GAN: the same score, Lipschitz-bounded by a gradient
#: penalty (Gulrajani et al. 2017) or by clipping the weights (Arjovsky et al. 2017).
WASSERSTEIN_LOSSES = ("wgan_gp", "wgan_clip")
#: Width of the [-1, 1] image range, the SSIM ``data_range``.
IMAGE_DATA_RANGE = 2.0


def adversarial_loss(kind: str, prediction: torch.Tensor, target_is_real: bool) -> torch.Tensor:
    """Loss of discriminator outputs against "real" or "fake".

    bce: binary cross-entropy on logits (report 001); lsgan: squared error to 1 / 0 (Mao et al.,
    the classic CycleGAN); wgan_gp: the critic's mean score, negated for real.
    """
    prediction = prediction.float()
    if kind == "bce":
        target = torch.ones_like(prediction) if target_is_real else torch.zeros_like(prediction)
        return F.binary_cross_entropy_with_logits(prediction, target)
    if kind == "lsgan":
        return F.mse_loss(prediction, torch.full_like(prediction, 1.0 if target_is_real else 0.0))
    if kind in WASSERSTEIN_LOSSES:
        return -prediction.mean() if target_is_real else prediction.mean()
    raise ConfigError(f"adversarial_loss must be one of {ADVERSARIAL_LOSSES + WASSERSTEIN_LOSSES[1:]}, got {kind!r}")


def decision_threshold(kind: str) -> float:
    """Output value separating "real" from "fake" calls, for discriminator accuracy."""
    return 0.5 if kind == "lsgan" else 0.0


def gradient_penalty(critic: Callable[[torch.Tensor], torch.Tensor], real: torch.Tensor, fake: torch.Tensor,
                     generator: torch.Generator | None = None) -> torch.Tensor:
    """WGAN-GP penalty (Gulrajani et al.): (||grad critic(x_hat)|| - 1)^2 on random interpolates.

    The mixing weights come from ``generator`` (on any device) so that runs are reproducible.
    """
    alpha = torch.rand(real.shape[0], 1, 1, 1, generator=generator,
                       device=generator.device if generator is not None else real.device)
    alpha = alpha.to(device=real.device, dtype=real.dtype)
    mixed = (alpha * real.detach() + (1 - alpha) * fake.detach()).requires_grad_(True)
    score = critic(mixed).float()
    (grad,) = torch.autograd.grad(score.sum(), mixed, create_graph=True)
    return ((grad.flatten(1).norm(2, dim=1) - 1) ** 2).mean()


@torch.no_grad()
def clip_weights(net: nn.Module, clip_value: float) -> None:
    """Clamp every parameter of ``net`` to [-clip_value, clip_value] (WGAN's crude Lipschitz bound)."""
    for parameter in net.parameters():
        parameter.clamp_(-clip_value, clip_value)


def instance_noise_std(epoch: int, initial_std: float, anneal_epochs: int) -> float:
    """Std of the instance noise (Sonderby et al. 2017) during epoch ``epoch`` (0-based): falls
    linearly from ``initial_std`` in the first epoch to 0 from epoch ``anneal_epochs`` on
    (0 anneal epochs: no noise)."""
    if anneal_epochs <= 0 or initial_std <= 0:
        return 0.0
    return initial_std * max(0.0, 1.0 - epoch / anneal_epochs)


def ssim_loss(x: torch.Tensor, y: torch.Tensor, kernel_size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """1 - SSIM (Gaussian window, k1 0.01, k2 0.03, data range 2 for [-1, 1] images); differentiable.

    Always computed in float32: its local variances (E[x^2] - E[x]^2) cancel badly in bfloat16.
    """
    with torch.autocast(x.device.type, enabled=False):
        ssim = structural_similarity_index_measure(x.float(), y.float(), gaussian_kernel=True, kernel_size=kernel_size,
                                                   sigma=sigma, data_range=IMAGE_DATA_RANGE)
    return 1.0 - ssim


def _vgg19_layer_names() -> list[str]:
    """Names of torchvision's ``vgg19().features`` modules in order: conv1_1, relu1_1, ..., pool5."""
    names = []
    for block, n_convs in enumerate((2, 2, 4, 4, 4), start=1):
        for conv in range(1, n_convs + 1):
            names += [f"conv{block}_{conv}", f"relu{block}_{conv}"]
        names.append(f"pool{block}")
    return names


VGG19_LAYERS = _vgg19_layer_names()


def _vgg19_features_up_to(last_index: int) -> nn.Sequential:
    """torchvision's VGG-19 ``features`` cut after ``last_index``, built without the deeper layers
    (building all of VGG-19 costs seconds and hundreds of MB for layers the loss never uses)."""
    config, n_modules = [], 0
    for entry in torchvision.models.vgg.cfgs["E"]:
        if n_modules > last_index:
            break
        config.append(entry)
        n_modules += 1 if entry == "M" else 2
    return torchvision.models.vgg.make_layers(config, batch_norm=False)[: last_index + 1]
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


def load_vgg19_features(last_index: int, weights: Path | None) -> nn.Sequential:
    """VGG-19 ``features`` up to ``last_index``, frozen in eval mode, with the ImageNet weights of
    ``weights`` (a torchvision state-dict file) or randomly initialised for None."""
    features = _vgg19_features_up_to(last_index)
    if weights is not None:
        prefix = "features."
        state = {k[len(prefix):]: v for k, v in load_state_file(weights).items() if k.startswith(prefix)}
        state = {k: v for k, v in state.items() if int(k.split(".")[0]) < len(features)}
        try:
            features.load_state_dict(state)
        except RuntimeError as err:
            raise InputDataError(weights, f"does not match torchvision VGG-19 ({err})") from err
    return features.eval().requires_grad_(False)


def vgg_input(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """1-channel [-1, 1] images -> the 3-channel ImageNet-normalised input VGG expects."""
    x = ((x + 1) / 2).repeat(1, 3, 1, 1)
    return (x - mean.to(x.dtype)) / std.to(x.dtype)


class VGGPerceptualLoss(nn.Module):
    """Cycle-perceptual loss (Armanious et al., Cycle-MedGAN): sum_i w_i * L1(F_i(x), F_i(y)).

    F_i are VGG-19 activations at ``layers`` (names as in ``VGG19_LAYERS``). The 1-channel
    [-1, 1] input is mapped to [0, 1], repeated to RGB and ImageNet-normalised, as the weights
    expect. Without a weight file the extractor is randomly initialised (still a fixed
    multi-scale feature map, but not the published loss): the caller records which.
    """

    def __init__(self, layers: Sequence[str] = ("relu1_2", "relu2_2", "relu3_2"),
                 layer_weights: Sequence[float] = (1.0, 1.0, 1.0), weights: Path | None = None):
        super().__init__()
        unknown = [name for name in layers if name not in VGG19_LAYERS]
        if unknown or not layers:
            raise ConfigError(f"perceptual_layers must be a non-empty list of {VGG19_LAYERS}, got {list(layers)}")
        if len(layer_weights) != len(layers):
            raise ConfigError(f"perceptual_layer_weights needs one weight per layer ({len(layers)}), "
                              f"got {list(layer_weights)}")
        self.indices = [VGG19_LAYERS.index(name) for name in layers]
        self.layer_weights = [float(w) for w in layer_weights]
        self.features = load_vgg19_features(max(self.indices), weights)
        self.register_buffer("mean", torch.tensor(_IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(_IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def _activations(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = vgg_input(x, self.mean, self.std)
        found = {}
        for index, layer in enumerate(self.features):
            x = layer(x)
            found[index] = x
        return [found[index] for index in self.indices]

    def forward(self, reconstructed: torch.Tensor, original: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            targets = self._activations(original)
        loss = reconstructed.new_zeros((), dtype=torch.float32)
        for weight, feature, target in zip(self.layer_weights, self._activations(reconstructed), targets):
            loss = loss + weight * F.l1_loss(feature.float(), target.float())
        return loss
