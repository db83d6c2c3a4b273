"""DCGAN (Radford et al. 2016) and its conditional form (Mirza & Osindero 2014) for 1-channel
images generated from noise: report 002, brain CT slices with and without haemorrhage.

Networks (square power-of-two sizes from 16 up; report 002: 128x128, z of 100):
  - G: z (and the one-hot class) as a 1x1 map -> transposed conv k4 s1 to 4x4 -> transposed
    convs k4 s2 p1 doubling the size and halving the width down to ``ngf`` -> a last one to 1
    channel and tanh. BatchNorm + ReLU after every layer but the output.
  - D: conv k4 s2 p1 from the image (no normalisation on the input layer) -> convs k4 s2 p1
    doubling the width from ``ndf`` down to 4x4 -> conv k4 to one logit. LeakyReLU(0.2);
    BatchNorm in the hidden layers (``d_norm``).
  - Weights N(0, 0.02), BatchNorm scales N(1, 0.02) (the DCGAN recipe).
  - D's base width is a quarter of G's (``ndf`` 16 vs ``ngf`` 64): report 002's fix for a D
    that won within one epoch.

Losses (``adversarial_loss``): ``bce`` (the report's minimax loss; G maximises log D(G(z)),
the non-saturating form), ``wgan_gp`` (Wasserstein critic with gradient penalty; a critic
with BatchNorm would couple the images the penalty differentiates, so ``d_norm: auto`` gives
it layer normalisation instead) and ``wgan_clip`` (weights clipped to +-``clip_value`` after
every critic step). With ``n_critic`` > 1 the critic is updated that many times per G update
(each engine step is one D update; G steps every ``n_critic``-th).

Optimisers follow each loss's paper unless set (``optimizer``, ``lr_g``, ``lr_d``,
``adam_betas``, ``n_critic``: ``auto`` or null takes ``RECIPES[adversarial_loss]``): bce Adam 2e-4,
betas (0.5, 0.999), one D step per G step (Radford et al., report 002); wgan_gp Adam 1e-4,
betas (0, 0.9), 5 critic steps (Gulrajani et al.); wgan_clip RMSProp 5e-5, 5 critic steps
(Arjovsky et al.: momentum-based optimisers made the clipped critic unstable).

D's normalisation (``d_norm``): ``batch`` is the DCGAN recipe and sound at its batch of 128;
at the CPU profile's batch of 8 a BatchNorm D sees batch statistics of 8 images that differ
between its real and its fake half-batches, tells them apart by those alone and wins within a
few epochs (measured: docs/experiment-dcgan-ct.md). ``spectral`` (Miyato et al. 2018) bounds
each layer's Lipschitz constant without coupling the images of a batch; ``layer`` and
``none`` are the other batch-free choices.

Instance noise (``instance_noise_std``, ``instance_noise_epochs``): Gaussian noise of this std
(in the [-1, 1] image range) is added to every image D sees, real and fake, in both phases,
annealed linearly to 0 over the first ``instance_noise_epochs`` epochs.

DiffAugment (``augment: diffaugment``; Zhao et al. 2020, ``pipeline.models.augment``): every image
D sees, real and fake, in both phases, gets a random brightness / contrast change, a translation
of up to ``translate_fraction`` of the side and a cut-out square of ``cutout_fraction`` of it, so D
cannot win by memorising a small training set. Measured on the proof data (docs/experiment-dcgan-ct.md):
the DCGAN (ndf 16) at batch 8 on 720 slices collapsed by 900 steps with D right on 93-97%, and
with DiffAugment collapsed all the same (one seed) with D right on 63-71%; so it is off by default.
The gradient penalty (wgan_gp) is taken on the augmented images; the cut-out can hide a class's
defining detail (a bleed) from a conditional D.

Minibatch standard deviation (``d_minibatch_std``: a group size, 0 = off; Karras et al. 2018):
D's last layer also sees how much the images of each group differ, averaged over features and
pixels, so a G that maps every z to one image is caught by that number alone. Not with
``wgan_gp`` (it couples the images the penalty differentiates, as a BatchNorm D would). Off by
default: on the proof data (docs/experiment-dcgan-ct.md, one run per seed) it did not prevent the
collapse: of the two seeds the plain spectral D kept varied for 1,200 steps, one collapsed with it
and the other reached a coverage of 0.03 (0.49 without).

Conditional GAN (``cgan``): the class enters G as a one-hot vector concatenated with z, and D
as ``d_condition`` says: ``image_maps`` (report 002: one constant map per class concatenated
with the image channels), ``class_bias``, ``feature_maps`` or ``projection`` (see
DCGANDiscriminator). On the CPU default the first four collapsed by 600 steps with a spectral D;
maps on the image collapse even an unconditional DCGAN (docs/experiment-dcgan-ct.md), so the
others are there to be measured. ``auxiliary`` is an AC-GAN variant (Odena et al. 2017): D never
sees the class; a second head on D's last features predicts it. That head's loss is the
cross-entropy with the labels of real slices only (times ``aux_class_weight``; D's trunk is shared
with the real / fake head, which sees generated images); G's loss adds the same cross-entropy of
its images against the class asked, so G is pushed to draw what the head tells apart on real
slices. Odena et al. also train the head on generated images (with the class asked); here it is
not, so a G that ignores the label cannot teach D's head that its images are of the class asked.
A judge trained on the same real slices is then not independent of what G optimised: G may meet
the head with features no real slice has, so a share called as asked above the judge's own
recall on real slices reads as exaggeration, not realism (docs/experiment-dcgan-ct.md). The fakes
of a step are asked for the classes of that step's real batch, so G sees the training class mix;
``class_balanced: true`` draws the real batches class-balanced instead (each class equally often),
e.g. for RSNA's ~14% haemorrhage.

History columns: ``D``, ``G`` losses; ``d_real`` / ``d_fake``, D's mean output on the real and
on the fake batch of each D step before its update (probabilities for bce, raw critic values
for the Wasserstein losses): the report's own measure is the mean of ``d_fake`` over the last
20 epochs. ``D_accuracy`` (bce), ``gp`` and ``wasserstein`` (mean critic real - fake) as the
loss asks; ``instance_noise_std`` when noise is on; with ``auxiliary``, ``D_class`` (the class head's
cross-entropy on the real batch), ``D_class_accuracy`` (its accuracy there) and ``G_class`` (on G's
images against the class asked), whose weighted sums are part of ``D`` and ``G``.

The sample grids show fixed noise vectors drawn once from the seed and kept in the checkpoint,
so every grid of a run (resumed or not) shows the same z. The exported sampler draws its noise
from a CPU generator seeded per call: the same seed gives the same images on any device.
"""
from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pipeline.errors import ConfigError, InputDataError
from pipeline.models import EXPORT_FORMAT, DataInput, GANModel, frozen, merge_knobs
from pipeline.models.augment import diff_augment
from pipeline.models.losses import (
    adversarial_loss, clip_weights, gradient_penalty, instance_noise_std)
from pipeline.models.stylegan2_networks import minibatch_stddev

log = logging.getLogger(__name__)

GENERATION_LOSSES = ("bce", "wgan_gp", "wgan_clip")
D_NORMS = ("auto", "batch", "layer", "spectral", "none")
DCGAN_AUGMENTS = ("none", "diffaugment")
#: How G doubles its maps: transposed convolutions (DCGAN) or nearest-neighbour resize + convolution.
G_UPSAMPLES = ("transposed", "resize")
D_CONDITIONS = ("image_maps", "feature_maps", "class_bias", "projection", "auxiliary")
OPTIMIZERS = ("adam", "rmsprop")
#: Each loss's optimiser as its paper trained it; a knob left at "auto" takes its value from here.
RECIPES: dict[str, dict[str, Any]] = {
    "bce": {"optimizer": "adam", "lr_g": 2e-4, "lr_d": 2e-4, "adam_betas": [0.5, 0.999], "n_critic": 1},
    "wgan_gp": {"optimizer": "adam", "lr_g": 1e-4, "lr_d": 1e-4, "adam_betas": [0.0, 0.9], "n_critic": 5},
    "wgan_clip": {"optimizer": "rmsprop", "lr_g": 5e-5, "lr_d": 5e-5, "adam_betas": [0.5, 0.999], "n_critic": 5},
}
AUTO = "auto"
#: Smallest image side: G starts from 4x4 and needs at least two doublings.
MIN_IMAGE_SIZE = 16

DCGAN_KNOBS: dict[str, Any] = {
    "nz": 100,                   # length of the noise vector z (report 002: 100)
    "ngf": 64,                   # G's width at the last hidden layer; doubles towards the 4x4 start
    "ndf": 16,                   # D's width after its first layer: a quarter of ngf (report 002)
    "init_std": 0.02,            # N(0, std) init of every conv (DCGAN)
    "adversarial_loss": "bce",   # bce | wgan_gp | wgan_clip
    "d_norm": "auto",            # D's hidden-layer normalisation; auto: batch, layer for wgan_gp
    "gp_weight": 10.0,           # wgan_gp: weight of the gradient penalty
    "clip_value": 0.01,          # wgan_clip: critic weights clipped to +-clip_value
    "instance_noise_std": 0.0,   # std of the noise added to D's inputs at epoch 0 (0: off)
    "instance_noise_epochs": 0,  # epochs over which it anneals linearly to 0
    "augment": "none",           # none | diffaugment: every image D sees, real and generated, in both phases
    "translate_fraction": 0.125,  # diffaugment: largest translation, fraction of the side (Zhao et al.: 1/8)
    "cutout_fraction": 0.5,      # diffaugment: side of the cut-out square, fraction of the side (Zhao et al.: 1/2)
    # None or "auto": the loss's paper (RECIPES)
    "optimizer": None,           # adam | rmsprop
    "n_critic": None,            # D updates per G update
    "lr_g": None,
    "lr_d": None,
    "adam_betas": None,
    "n_fixed_noise": 64,         # fixed noise vectors kept for the sample grids
    "d_minibatch_std": 0,        # D sees the images' spread over groups of this many (ProGAN); 0: off
    "g_upsample": "transposed",  # transposed (DCGAN, report 002) | resize: nearest x2 + 3x3 conv (Odena et al. 2016)
}
CGAN_KNOBS: dict[str, Any] = {
    **DCGAN_KNOBS,
    "class_names": ["healthy", "haemorrhage"],  # class i is the npz label i
    "class_balanced": False,     # draw real batches class-balanced instead of in shuffled passes
    "d_condition": "image_maps",  # how the class enters D: image_maps (report 002) | ... | auxiliary (AC-GAN)
    "aux_class_weight": 1.0,     # d_condition auxiliary: weight of the class cross-entropy (D's and G's loss)
}
#: Generated columns of an unconditional sample grid.
_GRID_COLUMNS = 3


def _n_doublings(image_size: int) -> int:
    """Stride-2 layers between 4x4 and ``image_size`` (a power of two >= MIN_IMAGE_SIZE)."""
    if image_size < MIN_IMAGE_SIZE or image_size & (image_size - 1):
        raise ConfigError(f"the DCGAN takes square power-of-two images of at least {MIN_IMAGE_SIZE}, got "
                          f"{image_size}: set train.image_size (e.g. 64 or 128)")
    return int(math.log2(image_size)) - 2


def _init_dcgan(net: nn.Module, std: float) -> None:
    """DCGAN init: convs N(0, std), BatchNorm scales N(1, std) and shifts 0 (torch's global RNG)."""
    for module in net.modules():
        if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
            # a spectrally normalised conv computes its weight from the stored original
            weight = (module.parametrizations.weight.original if nn.utils.parametrize.is_parametrized(module, "weight")
                      else module.weight)
            nn.init.normal_(weight, 0.0, std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.normal_(module.weight, 1.0, std)
            nn.init.zeros_(module.bias)


def _optimizer(cfg: Mapping[str, Any], net: nn.Module, lr: float) -> torch.optim.Optimizer:
    """The configured optimiser of one network (fused: one vectorised pass over all parameters)."""
    if cfg["optimizer"] == "rmsprop":
        return torch.optim.RMSprop(net.parameters(), lr=lr)
    return torch.optim.Adam(net.parameters(), lr=lr, betas=tuple(cfg["adam_betas"]), fused=True)


def _doubling(upsample: str, channels_in: int, channels_out: int) -> list[nn.Module]:
    """One of G's 2x layers: a k4 s2 transposed convolution (DCGAN), or ``resize``: nearest-neighbour
    upsampling then a k3 convolution (Odena et al. 2016, "Deconvolution and Checkerboard Artifacts").
    A k4 s2 transposed convolution overlaps evenly, but each output pixel parity gets its own 2x2
    sub-kernel, learnt independently: where they differ the output repeats a 2x2 pattern (a flat
    input already gives one, tests/models/test_dcgan.py). After a nearest-neighbour doubling one
    kernel serves every output pixel, so a flat input stays flat."""
    if upsample == "resize":
        return [nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(channels_in, channels_out, 3, 1, 1, bias=False)]
    return [nn.ConvTranspose2d(channels_in, channels_out, 4, 2, 1, bias=False)]


class DCGANGenerator(nn.Module):
    """z (B, nz) [+ one-hot (B, n_classes)] -> (B, 1, S, S) in [-1, 1]; ``upsample`` (G_UPSAMPLES) says
    how each stride-2 layer doubles the maps (the first, 1 -> 4 px, is a transposed convolution in both)."""

    def __init__(self, image_size: int, nz: int, ngf: int, n_classes: int = 0, upsample: str = "transposed"):
        super().__init__()
        if upsample not in G_UPSAMPLES:
            raise ConfigError(f"model.g_upsample must be one of {G_UPSAMPLES}, got {upsample!r}")
        self.nz, self.n_classes, self.image_size = nz, n_classes, image_size
        n = _n_doublings(image_size)
        width = ngf * 2 ** (n - 1)
        layers: list[nn.Module] = [nn.ConvTranspose2d(nz + n_classes, width, 4, 1, 0, bias=False),
                                   nn.BatchNorm2d(width), nn.ReLU(True)]
        for _ in range(n - 1):
            layers += [*_doubling(upsample, width, width // 2), nn.BatchNorm2d(width // 2), nn.ReLU(True)]
            width //= 2
        layers += [*_doubling(upsample, width, 1), nn.Tanh()]
        self.net = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        if self.n_classes:
            z = torch.cat([z, F.one_hot(labels, self.n_classes).to(z.dtype)], dim=1)
        return self.net(z[:, :, None, None])


def _norm(kind: str, channels: int) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "layer":  # normalises each image over channels and pixels: no coupling across the batch
        return nn.GroupNorm(1, channels)
    return nn.Identity()


def _conv(kind: str, *args: Any, **kwargs: Any) -> nn.Conv2d:
    """A D convolution, spectrally normalised when ``kind`` is "spectral" (every layer, as Miyato et al.)."""
    conv = nn.Conv2d(*args, **kwargs)
    return nn.utils.parametrizations.spectral_norm(conv) if kind == "spectral" else conv


class MinibatchStd(nn.Module):
    """One more feature map for D's last layer: how much a group of ``group_size`` images differs
    (Karras et al. 2018, ProGAN; ``stylegan2_networks.minibatch_stddev``), so a generator that
    draws one image for every z is told apart by that alone. Real and generated images go
    through D in separate calls in training, so a group never mixes them; a batch whose size the
    group does not divide takes the largest group that does (``minibatch_stddev``). A score of one
    image depends on its batchmates, so the reader study refuses such a D as its judge."""

    def __init__(self, group_size: int):
        super().__init__()
        self.group_size = group_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return minibatch_stddev(x, self.group_size)


class DCGANDiscriminator(nn.Module):
    """(B, 1, S, S) [+ class] -> (B,) logits (bce) or critic scores (Wasserstein).

    The class enters as ``condition`` says: one constant map per class concatenated with the
    image (``image_maps``, report 002's figure) or with the first layer's features
    (``feature_maps``), or ``projection`` (Miyato & Koyama 2018: the logit plus the inner product
    of a learned class embedding with D's last features summed over space); ``auxiliary`` (AC-GAN):
    the image alone, and a class head beside the real / fake one (``scores``); ``class_bias`` adds
    what constant maps on the image add to D's first features, a per-class offset, as a bias
    outside the spectral norm. Constant maps on the image made even an unconditional DCGAN
    collapse where a plain first-layer bias did not (docs/experiment-dcgan-ct.md).
    """

    def __init__(self, image_size: int, ndf: int, n_classes: int = 0, norm: str = "batch",
                 condition: str = "image_maps", minibatch_std: int = 0):
        super().__init__()
        self.n_classes, self.condition = n_classes, condition
        n = _n_doublings(image_size)
        maps = n_classes if condition in ("image_maps", "feature_maps") else 0
        image_maps, feature_maps = (maps, 0) if condition == "image_maps" else (0, maps)
        layers: list[nn.Module] = [_conv(norm, 1 + image_maps, ndf, 4, 2, 1, bias=False), nn.LeakyReLU(0.2, True)]
        width = ndf
        for index in range(n - 1):
            extra = feature_maps if index == 0 else 0
            layers += [_conv(norm, width + extra, width * 2, 4, 2, 1, bias=norm in ("none", "spectral")),
                       _norm(norm, width * 2), nn.LeakyReLU(0.2, True)]
            width *= 2
        if minibatch_std:
            layers.append(MinibatchStd(minibatch_std))
            width += 1
        layers.append(_conv(norm, width, 1, 4, 1, 0, bias=False))
        self.net = nn.Sequential(*layers)
        if n_classes and condition == "class_bias":
            # what constant maps on the image add to the first layer (a per-class offset of each
            # feature), as a bias: outside the spectral norm, zero at start like the hidden biases
            self.class_bias = nn.Embedding(n_classes, ndf)
            nn.init.zeros_(self.class_bias.weight)
        if n_classes and condition == "projection":
            embed = nn.Embedding(n_classes, width)
            # Glorot init as Miyato & Koyama's code; spectrally normalised with the rest of a spectral D
            nn.init.xavier_uniform_(embed.weight)
            self.embed = nn.utils.parametrizations.spectral_norm(embed) if norm == "spectral" else embed
        if n_classes and condition == "auxiliary":
            self.classify = _conv(norm, width, n_classes, 4, 1, 0, bias=True)

    @staticmethod
    def _with_maps(x: torch.Tensor, labels: torch.Tensor, n_classes: int) -> torch.Tensor:
        maps = F.one_hot(labels, n_classes).to(x.dtype)[:, :, None, None]
        return torch.cat([x, maps.expand(-1, -1, *x.shape[-2:])], dim=1)

    def scores(self, images: torch.Tensor, labels: torch.Tensor | None = None
               ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(B,) real / fake logits and, with ``auxiliary``, (B, n_classes) class logits (else None)."""
        if self.n_classes and self.condition == "auxiliary":
            features = self.net[:-1](images)
            return self.net[-1](features).flatten(), self.classify(features).flatten(1)
        return self(images, labels), None

    def forward(self, images: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        if not self.n_classes or self.condition == "auxiliary":
            return self.net(images).flatten()
        if self.condition == "image_maps":
            return self.net(self._with_maps(images, labels, self.n_classes)).flatten()
        if self.condition == "class_bias":
            first = self.net[0](images) + self.class_bias(labels)[:, :, None, None]
            return self.net[1:](first).flatten()
        if self.condition == "feature_maps":
            features = self._with_maps(self.net[:2](images), labels, self.n_classes)
            return self.net[2:](features).flatten()
        features = self.net[:-1](images)
        projection = (self.embed(labels)[:, :, None, None] * features).sum(dim=(1, 2, 3))
        return self.net[-1](features).flatten() + projection


class DCGAN(GANModel):
    """Unconditional DCGAN: one generator G, one discriminator (critic) D."""

    name = "dcgan"
    task = "generation"
    inputs = (DataInput("images"),)
    loss_kinds = {"G": "generator", "D": "discriminator", "gp": "discriminator",
                  **{name: "discriminator_output" for name in ("d_real", "d_fake", "D_accuracy", "wasserstein")},
                  "instance_noise_std": "schedule"}
    knob_defaults: dict[str, Any] = DCGAN_KNOBS

    def __init__(self, config: Mapping[str, Any], weights_dir: Path | None, seed: int,
                 image_size: tuple[int, int] | None = None):
        """``image_size`` is the training size (height, width); it fixes the networks' depth."""
        super().__init__()
        cfg = self.config = self.resolve_config(config)
        if image_size is None or image_size[0] != image_size[1]:
            raise ConfigError(f"the DCGAN takes square images, got {image_size}: set train.image_size")
        self.image_size = int(image_size[0])
        self.n_classes = self._n_classes(cfg)
        self.G = DCGANGenerator(self.image_size, cfg["nz"], cfg["ngf"], self.n_classes, cfg["g_upsample"])
        self.D = DCGANDiscriminator(self.image_size, cfg["ndf"], self.n_classes, self._d_norm(cfg),
                                    cfg.get("d_condition", "image_maps"), cfg["d_minibatch_std"])
        _init_dcgan(self.G, cfg["init_std"])
        _init_dcgan(self.D, cfg["init_std"])
        self.network_names = ("G", "D")
        self.pretrained = {"G": f"random (DCGAN normal std {cfg['init_std']})",
                           "D": f"random (DCGAN normal std {cfg['init_std']})"}
        self.optimizers = {"D": _optimizer(cfg, self.D, cfg["lr_d"]), "G": _optimizer(cfg, self.G, cfg["lr_g"])}
        self.phases = {"D": 1, "G": cfg["n_critic"]}
        self.seed = seed
        self.rng = torch.Generator().manual_seed(seed)
        fixed_seed = int(np.random.SeedSequence([seed, 1]).generate_state(1)[0])
        self.fixed_noise = torch.randn(cfg["n_fixed_noise"], cfg["nz"], generator=torch.Generator().manual_seed(fixed_seed))
        self.noise_std = instance_noise_std(0, cfg["instance_noise_std"], cfg["instance_noise_epochs"])
        self.loss_names = self._loss_names()
        self.visual_names = (self._visual_columns(),)

    # -- configuration ---------------------------------------------------------------------------

    @classmethod
    def resolve_config(cls, overrides: Mapping[str, Any] | None) -> dict[str, Any]:
        """The knobs with their defaults, ``auto`` optimiser knobs replaced by the loss's recipe."""
        cfg = merge_knobs(cls.knob_defaults, overrides, "model")
        if cfg["adversarial_loss"] not in GENERATION_LOSSES:
            raise ConfigError(f"model.adversarial_loss must be one of {GENERATION_LOSSES} for the {cls.name}, "
                              f"got {cfg['adversarial_loss']!r}")
        recipe = RECIPES[cfg["adversarial_loss"]]
        cfg |= {key: recipe[key] for key in recipe if cfg[key] is None or cfg[key] == AUTO}
        if cfg["optimizer"] not in OPTIMIZERS:
            raise ConfigError(f"model.optimizer must be auto or one of {OPTIMIZERS}, got {cfg['optimizer']!r}")
        for key in ("lr_g", "lr_d"):
            if isinstance(cfg[key], bool) or not isinstance(cfg[key], (int, float)) or cfg[key] <= 0:
                raise ConfigError(f"model.{key} must be auto or a number > 0, got {cfg[key]!r}")
        if cfg["d_norm"] not in D_NORMS:
            raise ConfigError(f"model.d_norm must be one of {D_NORMS}, got {cfg['d_norm']!r}")
        if cfg["adversarial_loss"] == "wgan_gp" and cfg["d_norm"] == "batch":
            raise ConfigError("model.d_norm batch couples the images the gradient penalty differentiates: "
                              "use auto, layer or none with wgan_gp")
        minibatch_std = cfg["d_minibatch_std"]
        if minibatch_std < 0 or minibatch_std == 1:  # an int: merge_knobs checks the type
            raise ConfigError("model.d_minibatch_std must be 0 (off) or a group size >= 2, "
                              f"got {minibatch_std!r}")
        if minibatch_std and cfg["adversarial_loss"] == "wgan_gp":
            raise ConfigError("model.d_minibatch_std couples the images the gradient penalty differentiates "
                              "(as a BatchNorm D would): set it to 0 with wgan_gp")
        for key in ("nz", "ngf", "ndf", "n_critic", "n_fixed_noise"):
            if isinstance(cfg[key], bool) or not isinstance(cfg[key], int) or cfg[key] < 1:
                raise ConfigError(f"model.{key} must be >= 1, got {cfg[key]}")
        if cfg["instance_noise_std"] < 0 or cfg["instance_noise_epochs"] < 0 or cfg["clip_value"] <= 0:
            raise ConfigError("model.instance_noise_std and instance_noise_epochs must be >= 0, clip_value > 0")
        if cfg["augment"] not in DCGAN_AUGMENTS:
            raise ConfigError(f"model.augment must be one of {DCGAN_AUGMENTS}, got {cfg['augment']!r}")
        if not 0 <= cfg["translate_fraction"] < 0.5 or not 0 <= cfg["cutout_fraction"] < 1:
            raise ConfigError("model.translate_fraction must be in [0, 0.5) and cutout_fraction in [0, 1), got "
                              f"{cfg['translate_fraction']} and {cfg['cutout_fraction']}")
        if cfg["g_upsample"] not in G_UPSAMPLES:
            raise ConfigError(f"model.g_upsample must be one of {G_UPSAMPLES}, got {cfg['g_upsample']!r}")
        if not isinstance(cfg["adam_betas"], (list, tuple)) or len(cfg["adam_betas"]) != 2:
            raise ConfigError(f"model.adam_betas needs two values, got {cfg['adam_betas']}")
        return cfg

    @staticmethod
    def _n_classes(cfg: Mapping[str, Any]) -> int:
        return 0

    @staticmethod
    def _d_norm(cfg: Mapping[str, Any]) -> str:
        if cfg["d_norm"] != "auto":
            return cfg["d_norm"]
        return "layer" if cfg["adversarial_loss"] == "wgan_gp" else "batch"

    def required_image_size(self) -> tuple[int, int]:
        return (self.image_size, self.image_size)

    def _loss_names(self) -> tuple[str, ...]:
        kind = self.config["adversarial_loss"]
        names = ["D", "G", "d_real", "d_fake"]
        names += ["D_accuracy"] if kind == "bce" else ["wasserstein"]
        if kind == "wgan_gp":
            names.append("gp")
        if self.config["instance_noise_std"] > 0 and self.config["instance_noise_epochs"] > 0:
            names.append("instance_noise_std")
        return tuple(names)

    def _visual_columns(self) -> tuple[str, ...]:
        return ("real", *(f"generated_{i + 1}" for i in range(_GRID_COLUMNS)))

    # -- training --------------------------------------------------------------------------------

    def start_epoch(self, epoch: int) -> None:
        self.noise_std = instance_noise_std(epoch, self.config["instance_noise_std"],
                                            self.config["instance_noise_epochs"])

    def _use_rng_on(self, device: torch.device) -> None:
        """Move the noise generator to the training device on first use (restarting from the seed
        there), so its draws need no host round trip; on CPU nothing changes."""
        if self.rng.device != device:
            self.rng = torch.Generator(device).manual_seed(self.seed)

    def _noise(self, n: int, device: torch.device) -> torch.Tensor:
        return torch.randn(n, self.config["nz"], generator=self.rng, device=self.rng.device).to(device)

    def _noisy(self, images: torch.Tensor) -> torch.Tensor:
        """``images`` plus this epoch's instance noise (unchanged when it is 0)."""
        if self.noise_std <= 0:
            return images
        noise = torch.randn(images.shape, generator=self.rng, device=self.rng.device).to(images.device)
        return images + self.noise_std * noise.to(images.dtype)

    def _seen_by_d(self, images: torch.Tensor) -> torch.Tensor:
        """What D is shown of ``images``: this epoch's instance noise, then DiffAugment when on (the
        same kind of draw for real and generated images, in D's and G's phases, so G learns the
        un-augmented images; the draws come from ``self.rng``, so a resumed run repeats them)."""
        images = self._noisy(images)
        if self.config["augment"] == "diffaugment":
            images = diff_augment(images, self.config, self.rng)
        return images

    def _labels(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor | None:
        return None

    def _score(self, kind: str, out: torch.Tensor) -> torch.Tensor:
        """D's mean output as history reports it: a probability for bce, the raw critic value otherwise."""
        return torch.sigmoid(out).mean() if kind == "bce" else out.mean()

    def train_phase(self, phase: str, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        real = batch["images"]
        self._use_rng_on(real.device)
        labels = self._labels(batch)
        if phase == "D":
            return self._discriminator_step(real, labels)
        if phase == "G":
            return self._generator_step(len(real), labels, real.device)
        raise ConfigError(f"{self.name} has phases D and G, not {phase!r}")

    def _discriminator_step(self, real: torch.Tensor, labels: torch.Tensor | None) -> dict[str, torch.Tensor]:
        cfg, kind = self.config, self.config["adversarial_loss"]
        with torch.no_grad(), self.autocast():
            fake = self.G(self._noise(len(real), real.device), labels).float()
        real_in, fake_in = self._seen_by_d(real), self._seen_by_d(fake)
        with self.autocast():
            real_out, real_classes = self.D.scores(real_in, labels)
            real_out, fake_out = real_out.float(), self.D(fake_in, labels).float()
        if kind == "bce":
            loss = adversarial_loss(kind, real_out, True) + adversarial_loss(kind, fake_out, False)
        else:
            loss = fake_out.mean() - real_out.mean()
        losses = {"d_real": self._score(kind, real_out.detach()), "d_fake": self._score(kind, fake_out.detach())}
        if real_classes is not None:  # AC-GAN: D's class head learns the real slices' labels
            losses["D_class"] = F.cross_entropy(real_classes.float(), labels)
            losses["D_class_accuracy"] = (real_classes.argmax(1) == labels).float().mean()
            loss = loss + cfg["aux_class_weight"] * losses["D_class"]
        if kind == "bce":
            losses["D_accuracy"] = 0.5 * ((real_out > 0).float().mean() + (fake_out < 0).float().mean())
        else:
            losses["wasserstein"] = (real_out.mean() - fake_out.mean()).detach()
        if kind == "wgan_gp":
            losses["gp"] = gp = gradient_penalty(lambda x: self.D(x, labels), real_in, fake_in, self.rng)
            loss = loss + cfg["gp_weight"] * gp
        self.optimizer_step("D", loss)
        if kind == "wgan_clip":
            clip_weights(self.D, cfg["clip_value"])
        losses["D"] = loss
        if "instance_noise_std" in self.loss_names:
            losses["instance_noise_std"] = real.new_tensor(self.noise_std, dtype=torch.float32)
        return {name: value.detach() for name, value in losses.items()}

    def _generator_step(self, n: int, labels: torch.Tensor | None, device: torch.device) -> dict[str, torch.Tensor]:
        kind = self.config["adversarial_loss"]
        with frozen(self.D), self.autocast():
            fake = self.G(self._noise(n, device), labels)
            out, classes = self.D.scores(self._seen_by_d(fake), labels)
            # bce: the non-saturating loss (maximise log D(G(z))); Wasserstein: -mean critic(fake).
            loss = adversarial_loss(kind, out.float(), target_is_real=True)
            losses = {}
            if classes is not None:  # AC-GAN: G's images should be called the class asked
                losses["G_class"] = F.cross_entropy(classes.float(), labels)
                loss = loss + self.config["aux_class_weight"] * losses["G_class"]
        self.optimizer_step("G", loss)
        return {name: value.detach() for name, value in {"G": loss, **losses}.items()}

    # -- sample grids, state, export -------------------------------------------------------------

    @torch.no_grad()
    def compute_visuals(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        real = batch["images"]
        n = len(real)
        columns = self.visual_names[0][1:]
        z = self.fixed_noise[: n * len(columns)].to(real.device)
        if len(z) < n * len(columns):
            raise ConfigError(f"model.n_fixed_noise {len(self.fixed_noise)} is too few for {n} rows x "
                              f"{len(columns)} columns of the sample grid: raise it or lower train.n_samples")
        fakes = self.G(z).float()
        return {"real": real, **{name: fakes[i * n:(i + 1) * n] for i, name in enumerate(columns)}}

    def extra_state(self) -> dict[str, Any]:
        return {"rng": self.rng.get_state(), "rng_device": self.rng.device.type, "fixed_noise": self.fixed_noise}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        device = next(self.parameters()).device
        self._use_rng_on(device)
        if state.get("rng_device", "cpu") == device.type:
            self.rng.set_state(state["rng"])
        else:
            log.warning("checkpoint's noise generator ran on %s, this run on %s: noise draws restart from the seed",
                        state.get("rng_device", "cpu"), device.type)
        self.fixed_noise = state["fixed_noise"].cpu()

    def export(self) -> dict[str, Any]:
        return {"format": EXPORT_FORMAT, "model": self.name, "config": self.config, "n_classes": self.n_classes,
                "fixed_noise": self.fixed_noise.clone(),
                "networks": {"G": {k: v.detach().cpu() for k, v in self.G.state_dict().items()}}}

    @classmethod
    def load_export(cls, payload: dict[str, Any], device: str | torch.device) -> "GANSampler":
        cfg = cls.resolve_config(payload["config"])
        height, width = (int(v) for v in payload["image_size"])
        generator = DCGANGenerator(height, cfg["nz"], cfg["ngf"], cls._n_classes(cfg), cfg["g_upsample"])
        generator.load_state_dict(payload["networks"]["G"])
        names = list(cfg.get("class_names", []))
        return GANSampler(generator.to(device).eval(), (height, width), names, torch.device(device))


class ConditionalDCGAN(DCGAN):
    """DCGAN conditioned on a class (healthy / haemorrhage): G(z, y), D(x, y) (with ``auxiliary``,
    D(x) and a class head)."""

    name = "cgan"
    inputs = (DataInput("images", labels=True),)
    knob_defaults = CGAN_KNOBS
    loss_kinds = {**DCGAN.loss_kinds, "D_class": "discriminator", "G_class": "generator",
                  "D_class_accuracy": "discriminator_output"}

    def __init__(self, config: Mapping[str, Any], weights_dir: Path | None, seed: int,
                 image_size: tuple[int, int] | None = None):
        super().__init__(config, weights_dir, seed, image_size)
        if self.config["class_balanced"]:
            self.class_balanced_inputs = ("images",)

    @classmethod
    def resolve_config(cls, overrides: Mapping[str, Any] | None) -> dict[str, Any]:
        cfg = super().resolve_config(overrides)
        names = cfg["class_names"]
        if len(names) < 2 or len(set(names)) != len(names) or not all(isinstance(n, str) and n for n in names):
            raise ConfigError(f"model.class_names needs two or more distinct names, got {names}")
        if cfg["d_condition"] not in D_CONDITIONS:
            raise ConfigError(f"model.d_condition must be one of {D_CONDITIONS}, got {cfg['d_condition']!r}")
        weight = cfg["aux_class_weight"]
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not 0 <= weight < math.inf:
            raise ConfigError(f"model.aux_class_weight must be a finite number >= 0, got {weight!r}")
        return cfg

    def _loss_names(self) -> tuple[str, ...]:
        auxiliary = self.config["d_condition"] == "auxiliary"
        return (*super()._loss_names(), *(("D_class", "G_class", "D_class_accuracy") if auxiliary else ()))

    @staticmethod
    def _n_classes(cfg: Mapping[str, Any]) -> int:
        return len(cfg["class_names"])

    def _visual_columns(self) -> tuple[str, ...]:
        return ("real", *self.config["class_names"])

    def check_labels(self, path: Path, labels: np.ndarray) -> None:
        if len(labels) and labels.max() >= self.n_classes:
            raise InputDataError(path, f"'labels' holds class {int(labels.max())}, but model.class_names names "
                                       f"{self.n_classes} classes {self.config['class_names']}")
        absent = sorted(set(range(self.n_classes)) - set(np.unique(labels).tolist()))
        if absent:
            log.warning("%s: no image of class %s", path, ", ".join(self.config["class_names"][i] for i in absent))

    def _labels(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        return batch["images_labels"]

    @torch.no_grad()
    def compute_visuals(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Each row one fixed z, each column one class: what the label alone changes."""
        real = batch["images"]
        n = len(real)
        z = self.fixed_noise[:n].to(real.device)
        visuals = {"real": real}
        for index, name in enumerate(self.config["class_names"]):
            labels = torch.full((n,), index, dtype=torch.long, device=real.device)
            visuals[name] = self.G(z, labels).float()
        return visuals


class GANSampler:
    """Inference with a trained (conditional) DCGAN generator: ``sample(n, labels, seed)``."""

    task = "generation"

    def __init__(self, generator: DCGANGenerator, image_size: tuple[int, int], class_names: list[str],
                 device: torch.device):
        self.generator, self.image_size, self.device = generator, image_size, device
        self.n_classes = generator.n_classes
        self.class_names = class_names
        self.nz = generator.nz

    def noise(self, n: int, seed: int = 0) -> torch.Tensor:
        """The (n, nz) noise ``sample`` uses for ``seed``, drawn on the CPU (device-independent)."""
        return torch.randn(n, self.nz, generator=torch.Generator().manual_seed(seed))

    @torch.no_grad()
    def generate(self, z: torch.Tensor, labels: np.ndarray | None = None, batch_size: int = 64) -> np.ndarray:
        """Images for given noise vectors (e.g. a walk between two of them): (n, H, W) float32 in [0, 1]."""
        labels_t = self._check_labels(len(z), labels)
        out = []
        for start in range(0, len(z), batch_size):
            zz = z[start:start + batch_size].to(self.device)
            yy = None if labels_t is None else labels_t[start:start + batch_size].to(self.device)
            out.append(((self.generator(zz, yy).float() + 1) / 2).clamp(0, 1)[:, 0].cpu().numpy())
        if not out:
            return np.zeros((0, *self.image_size), dtype=np.float32)
        return np.concatenate(out).astype(np.float32, copy=False)

    def sample(self, n: int, labels: np.ndarray | None = None, seed: int = 0, batch_size: int = 64) -> np.ndarray:
        """``n`` generated images (n, H, W) float32 in [0, 1]; ``labels`` (n,) class indices when
        the generator is conditional (None otherwise). The same seed gives the same images."""
        if n < 0:
            raise ValueError(f"n must be >= 0, got {n}")
        return self.generate(self.noise(n, seed), labels, batch_size)

    def _check_labels(self, n: int, labels: np.ndarray | None) -> torch.Tensor | None:
        if self.n_classes == 0:
            if labels is not None:
                raise ValueError("this generator is unconditional: labels must be None")
            return None
        if labels is None:
            raise ValueError(f"this generator is conditional ({self.n_classes} classes {self.class_names}): "
                             "pass labels, one class index per image")
        labels = np.asarray(labels)
        if labels.shape != (n,) or not np.issubdtype(labels.dtype, np.integer):
            raise ValueError(f"labels must be {n} integer class indices, got {labels.dtype} {labels.shape}")
        if n and (labels.min() < 0 or labels.max() >= self.n_classes):
            raise ValueError(f"labels must be in [0, {self.n_classes}), got {labels.min()}..{labels.max()}")
        return torch.from_numpy(labels.astype(np.int64))
