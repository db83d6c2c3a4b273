"""Segmentation map -> chest CT slice with the texture of another patient, organ by organ (report 003).

G(map, z): the map enters as the one-hot of its ``n_labels`` (6) classes; z (``nz``, 200 in the
report) is fully connected to a ``z_channels``-channel feature map and reshaped. Where it enters
(``z_entry``): ``first`` (default, the report's "fully connected to the first layer, which is then
reshaped") concatenates that map to the output of G's first encoder layer (H/2 x W/2), so noise
reaches every later layer and the decoder cannot drop it through the skips; ``bottleneck``
concatenates it at the innermost grid instead (cheaper at 512 px, but a U-Net tends to ignore it).
The encoder-decoder has kernel 4 stride 2 blocks, Conv-BatchNorm-LeakyReLU down (no BatchNorm on
the first layer, as DCGAN / pix2pix) to ``bottleneck_size`` px (``depth`` null) and
ConvTranspose-BatchNorm-LeakyReLU back up, widths ``ngf`` doubling per level up to ``ngf *
max_width_factor``; the last layer goes to one channel and tanh. ``skips`` (default true)
concatenates each encoder level's output to the decoder input of the same size: the report takes
its encoder-decoder from Mao et al., "with symmetric skip connections".

D(image, map): the image and the map's one-hot concatenated, the same Conv-BatchNorm-LeakyReLU
blocks (``ndf`` doubling, capped as G) down to 4x4 and a 4x4 conv to one logit; the sigmoid of
the report is applied inside BCE-with-logits in training (numerically stable) and by
``Seg2CTDiscriminator.probability`` outside it.
Losses: non-saturating adversarial (G maximises log D(G(map, z), map)), plus ``content_weight`` *
VGG-19 content loss at relu4_2 against the map's own image, ``style_weight`` * masked Gram style
loss against the style image (``style_layer_weights`` per layer), ``tv_weight`` * total variation
(``pipeline.models.style_losses``). Adam for both.

BatchNorm at the report's batch 1: in training BatchNorm normalises each channel over the batch's
pixels, which at batch 1 is one image's instance normalisation. G's BatchNorm layers therefore keep
no running averages (``track_running_stats`` off) and every inference call (sample grids, the
exported ``generate``) runs one image at a time: generation sees exactly the normalisation training
saw at batch 1, and an image never depends on the others of its call. With a larger training batch
the statistics of training and generation differ (batch vs one image); D is only used in training.

The style image: another patient's training slice with its map. ``style_mode: fixed`` (default; the
report learns G "for a style image") uses one slice throughout: of patient ``style_subject`` if set,
else of a patient drawn from the seed, the slice drawn from the seed; the engine then draws content
images only from the other patients (``training_subsets``). ``per_step`` draws, for every content
image of every step, a slice of a different patient (the model's own seeded generator). The style
image is used uncropped and unflipped (its Gram matrices do not depend on the position).

Randomness: z for training and the per-step style draws come from the model's CPU generator, kept
in the checkpoint with the fixed noise of the sample grids, so a resumed run equals an
uninterrupted one on CPU. The exported generator draws z from a CPU generator seeded per call.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
from torch import nn

from pipeline.errors import ConfigError
from pipeline.models import EXPORT_FORMAT, DataInput, GANModel, frozen, merge_knobs
from pipeline.models.losses import VGG19_LAYERS, adversarial_loss
from pipeline.models.networks import VGG19_WEIGHTS_FILE, imagenet_weight_file
from pipeline.models.style_losses import (
    CONTENT_LAYER, STYLE_LAYERS, MaskedVGGFeatures, content_loss, masked_gram, one_hot_masks, present_segments,
    style_loss, total_variation)

STYLE_MODES = ("fixed", "per_step")
Z_ENTRIES = ("first", "bottleneck")
#: Smallest image side: two stride-2 levels down to a 4x4 grid.
MIN_IMAGE_SIZE = 16

SEG2CT_KNOBS: dict[str, Any] = {
    "n_labels": 6,                 # classes of the map (report: six grey values)
    "nz": 200,                     # length of z (report: 200)
    "z_entry": "first",            # first | bottleneck: where z's reshaped map joins G
    "z_channels": 1,               # channels of the map z is reshaped into
    "ngf": 64,                     # G's width after its first layer, doubling per level
    "ndf": 64,                     # D's width after its first layer, doubling per level
    "max_width_factor": 8,         # widths stop growing at 8 x ngf / ndf (pix2pix)
    "depth": None,                 # G's stride-2 levels; null: down to bottleneck_size
    "bottleneck_size": 4,          # innermost grid side when depth is null
    "skips": True,                 # U-Net skips between encoder and decoder levels of one size
    "leaky_slope": 0.2,            # LeakyReLU negative slope
    "init_std": 0.02,              # N(0, std) init of convs and the z layer (DCGAN)
    "lr_g": 2e-4,
    "lr_d": 2e-4,
    "adam_betas": [0.5, 0.999],
    "adversarial_weight": 1.0,     # weight of the non-saturating adversarial loss in G's loss
    "content_weight": 1.0,         # w_c (report: no value); ImageNet-VGG scale; params' CPU profile (random VGG): 2000
    "style_weight": 1.0,           # w_s (report: no value); params' CPU profile: 1000
    "tv_weight": 1e-4,             # w_tv (report: no value)
    "content_layer": CONTENT_LAYER,
    "style_layers": list(STYLE_LAYERS),
    "style_layer_weights": [1.0, 1.0, 1.0, 1.0, 1.0],
    "style_mode": "fixed",         # fixed | per_step
    "style_subject": None,         # fixed mode: the style patient's (pseudonymous) id; null: drawn from the seed
    "pretrained": "imagenet",      # the perceptual losses' VGG-19: imagenet (file required) | none (random)
    "n_fixed_noise": 2,            # fixed z per validation map in the sample grids
}


def _levels(size: int, depth: int | None, bottleneck: int) -> int:
    if depth is None:
        if bottleneck < 2 or size % bottleneck or (size // bottleneck) & (size // bottleneck - 1):
            raise ConfigError(f"seg2ct: image side {size} is not bottleneck_size {bottleneck} times a power of two: "
                              "set train.image_size (e.g. 64 or 512) or model.depth")
        depth = int(math.log2(size // bottleneck))
    if depth < 2 or size % 2 ** depth or size // 2 ** depth < 2:
        raise ConfigError(f"seg2ct: {depth} stride-2 levels do not fit a {size}-px image (need >= 2 levels and "
                          "an innermost grid of >= 2 px)")
    return depth


def _init_normal(net: nn.Module, std: float) -> None:
    """DCGAN init: convs and linear layers N(0, std), BatchNorm scales N(1, std), shifts 0."""
    for module in net.modules():
        if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            nn.init.normal_(module.weight, 0.0, std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.BatchNorm2d) and module.affine:
            nn.init.normal_(module.weight, 1.0, std)
            nn.init.zeros_(module.bias)


class Seg2CTGenerator(nn.Module):
    """(B, 1, S, S) integer map + (B, nz) z -> (B, 1, S, S) in [-1, 1]."""

    def __init__(self, image_size: int, n_labels: int, nz: int, ngf: int, max_width_factor: int, depth: int,
                 z_entry: str, z_channels: int, skips: bool, slope: float):
        super().__init__()
        self.image_size, self.n_labels, self.nz = image_size, n_labels, nz
        self.z_entry, self.skips = z_entry, skips
        widths = [ngf * min(2 ** level, max_width_factor) for level in range(depth)]
        z_level = 0 if z_entry == "first" else depth - 1
        self.z_side = image_size // 2 ** (z_level + 1)
        self.z_channels, self.z_level = z_channels, z_level
        self.to_z_map = nn.Linear(nz, z_channels * self.z_side ** 2)
        self.down = nn.ModuleList()
        channels = n_labels
        for level, width in enumerate(widths):
            layers: list[nn.Module] = [nn.Conv2d(channels, width, 4, 2, 1, bias=level == 0)]
            if level:
                layers.append(nn.BatchNorm2d(width, track_running_stats=False))
            layers.append(nn.LeakyReLU(slope, True))
            self.down.append(nn.Sequential(*layers))
            channels = width + (z_channels if level == z_level else 0)
        self.up = nn.ModuleList()
        for level in reversed(range(depth)):
            out = 1 if level == 0 else widths[level - 1]
            layers = [nn.ConvTranspose2d(channels, out, 4, 2, 1, bias=level == 0)]
            layers += [nn.Tanh()] if level == 0 else [nn.BatchNorm2d(out, track_running_stats=False),
                                                       nn.LeakyReLU(slope, True)]
            self.up.append(nn.Sequential(*layers))
            if level:
                skip = widths[level - 1] + (z_channels if level - 1 == z_level else 0)
                channels = out + (skip if skips else 0)

    def forward(self, label_maps: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        x = one_hot_masks(label_maps, self.n_labels).to(z.dtype)
        z_map = self.to_z_map(z).view(len(z), self.z_channels, self.z_side, self.z_side)
        encoded = []
        for level, block in enumerate(self.down):
            x = block(x)
            if level == self.z_level:
                x = torch.cat([x, z_map.to(x.dtype)], 1)
            encoded.append(x)
        for step, block in enumerate(self.up):
            x = block(x)
            level = len(self.up) - 1 - step
            if level and self.skips:
                x = torch.cat([x, encoded[level - 1]], 1)
        return x


class Seg2CTDiscriminator(nn.Module):
    """(B, 1, S, S) image + (B, 1, S, S) map -> (B,) logits of "real"."""

    def __init__(self, image_size: int, n_labels: int, ndf: int, max_width_factor: int, slope: float):
        super().__init__()
        self.n_labels = n_labels
        levels = int(math.log2(image_size)) - 2
        layers: list[nn.Module] = []
        channels = 1 + n_labels
        for level in range(levels):
            width = ndf * min(2 ** level, max_width_factor)
            layers.append(nn.Conv2d(channels, width, 4, 2, 1, bias=level == 0))
            if level:
                layers.append(nn.BatchNorm2d(width))
            layers.append(nn.LeakyReLU(slope, True))
            channels = width
        layers.append(nn.Conv2d(channels, 1, 4, 1, 0))
        self.net = nn.Sequential(*layers)

    def forward(self, images: torch.Tensor, label_maps: torch.Tensor) -> torch.Tensor:
        maps = one_hot_masks(label_maps, self.n_labels).to(images.dtype)
        return self.net(torch.cat([images, maps], 1)).flatten()

    def probability(self, images: torch.Tensor, label_maps: torch.Tensor) -> torch.Tensor:
        """D's sigmoid output, the report's: the probability that (image, map) is a real pair."""
        return torch.sigmoid(self(images, label_maps))


class Seg2CT(GANModel):
    """Report 003's conditional GAN with per-organ style: G(map, z), D(image, map)."""

    name = "seg2ct"
    task = "map_to_image"
    inputs = (DataInput("images", label_maps=True, subjects=True),)

    def __init__(self, config: Mapping[str, Any], weights_dir: Path | None, seed: int,
                 image_size: tuple[int, int] | None = None):
        super().__init__()
        cfg = self.config = self.resolve_config(config)
        if image_size is None or image_size[0] != image_size[1] or image_size[0] & (image_size[0] - 1) \
                or image_size[0] < MIN_IMAGE_SIZE:
            raise ConfigError(f"seg2ct takes square power-of-two images of at least {MIN_IMAGE_SIZE} px, got "
                              f"{image_size}: set train.image_size (e.g. 64 or 512)")
        self.image_size = int(image_size[0])
        depth = _levels(self.image_size, cfg["depth"], cfg["bottleneck_size"])
        self.G = build_generator(cfg, self.image_size)
        self.D = Seg2CTDiscriminator(self.image_size, cfg["n_labels"], cfg["ndf"], cfg["max_width_factor"],
                                     cfg["leaky_slope"])
        _init_normal(self.G, cfg["init_std"])
        _init_normal(self.D, cfg["init_std"])
        self.depth = depth
        self.network_names = ("G", "D")
        vgg_file, vgg_status = imagenet_weight_file(weights_dir, VGG19_WEIGHTS_FILE, cfg["pretrained"])
        self.perceptual_weights = "imagenet" if vgg_file is not None else "random"
        self.pretrained = {"G": f"random (normal std {cfg['init_std']})", "D": f"random (normal std {cfg['init_std']})",
                           "vgg19_perceptual": vgg_status}
        self.vgg = MaskedVGGFeatures([*cfg["style_layers"], cfg["content_layer"]], vgg_file)
        self.style_weights = dict(zip(cfg["style_layers"], (float(w) for w in cfg["style_layer_weights"])))
        betas = tuple(cfg["adam_betas"])
        self.optimizers = {"D": torch.optim.Adam(self.D.parameters(), lr=cfg["lr_d"], betas=betas),
                           "G": torch.optim.Adam(self.G.parameters(), lr=cfg["lr_g"], betas=betas)}
        self.phases = {"D": 1, "G": 1}
        self.rng = torch.Generator().manual_seed(seed)
        fixed_seed = int(np.random.SeedSequence([seed, 1]).generate_state(1)[0])
        self.fixed_noise = torch.randn(cfg["n_fixed_noise"], cfg["nz"], generator=torch.Generator().manual_seed(fixed_seed))
        self.style_seed = int(np.random.SeedSequence([seed, 2]).generate_state(1)[0])
        self.loss_names = ("D", "G", "adversarial", "content", "style", "tv", "d_real", "d_fake",
                           "style_segments_skipped")
        self.visual_names = (("map", "real", "style", *(f"generated_{i + 1}" for i in range(cfg["n_fixed_noise"]))),)
        # Set by bind_training_data: the training set (for style images) and the chosen style slice.
        self.train_images: torch.Tensor | None = None
        self.train_maps: torch.Tensor | None = None
        self.train_subjects: torch.Tensor | None = None       # patient codes, on the CPU
        self.train_subject_codes: torch.Tensor | None = None  # the same, on the training device
        self.subject_names: np.ndarray | None = None
        self.style_index: int | None = None
        self._style_grams: dict[str, torch.Tensor] | None = None
        self._fake: torch.Tensor | None = None

    # -- configuration ---------------------------------------------------------------------------

    @classmethod
    def resolve_config(cls, overrides: Mapping[str, Any] | None) -> dict[str, Any]:
        cfg = merge_knobs(SEG2CT_KNOBS, overrides, "model")
        if cfg["style_mode"] not in STYLE_MODES:
            raise ConfigError(f"model.style_mode must be one of {STYLE_MODES}, got {cfg['style_mode']!r}")
        if cfg["z_entry"] not in Z_ENTRIES:
            raise ConfigError(f"model.z_entry must be one of {Z_ENTRIES}, got {cfg['z_entry']!r}")
        for key in ("n_labels", "nz", "z_channels", "ngf", "ndf", "max_width_factor", "n_fixed_noise"):
            if cfg[key] < 1:
                raise ConfigError(f"model.{key} must be >= 1, got {cfg[key]}")
        if cfg["n_labels"] < 2:
            raise ConfigError(f"model.n_labels must be >= 2, got {cfg['n_labels']}")
        for key in ("adversarial_weight", "content_weight", "style_weight", "tv_weight"):
            if cfg[key] < 0:
                raise ConfigError(f"model.{key} must be >= 0, got {cfg[key]}")
        if cfg["content_layer"] not in VGG19_LAYERS:
            raise ConfigError(f"model.content_layer must be one of {VGG19_LAYERS}, got {cfg['content_layer']!r}")
        unknown = [name for name in cfg["style_layers"] if name not in VGG19_LAYERS]
        if unknown or not cfg["style_layers"] or len(cfg["style_layer_weights"]) != len(cfg["style_layers"]):
            raise ConfigError(f"model.style_layers must be names of {VGG19_LAYERS} with one style_layer_weights "
                              f"entry each, got {cfg['style_layers']} / {cfg['style_layer_weights']}")
        if cfg["style_subject"] is not None and cfg["style_mode"] != "fixed":
            raise ConfigError("model.style_subject applies to style_mode fixed only")
        if len(cfg["adam_betas"]) != 2:
            raise ConfigError(f"model.adam_betas needs two values, got {cfg['adam_betas']}")
        return cfg

    def required_image_size(self) -> tuple[int, int]:
        return (self.image_size, self.image_size)

    def loss_networks(self) -> dict[str, nn.Module]:
        return {"vgg19_perceptual": self.vgg}

    def bind_training_data(self, tensors: Mapping[str, torch.Tensor],
                           arrays: Mapping[str, Mapping[str, np.ndarray]]) -> None:
        """Keep the training slices for style images and choose the fixed style slice; in fixed
        mode the engine draws content images from the other patients only."""
        spec = self.inputs[0]
        self.train_images, self.train_maps = tensors[spec.name], tensors[spec.maps_key]
        # Decisions from the host arrays (the engine's subject codes are np.unique's), not from the
        # device copies: no device value is read back.
        host = arrays[spec.name]
        self.subject_names = np.asarray(host["subject_ids"])
        codes = np.unique(self.subject_names, return_inverse=True)[1].reshape(-1)
        self.train_subjects = torch.from_numpy(codes.astype(np.int64))
        self.train_subject_codes = tensors[spec.subjects_key]
        largest = int(np.max(host["label_maps"]))
        if largest >= self.config["n_labels"]:
            raise ConfigError(f"the training slices' label_maps hold class {largest}, but "
                              f"model.n_labels is {self.config['n_labels']} (classes 0..{self.config['n_labels'] - 1})")
        if len(np.unique(codes)) < 2:
            raise ConfigError("seg2ct needs training slices of at least two patients: the style image must come "
                              "from another patient than the content image")
        chooser = torch.Generator().manual_seed(self.style_seed)
        wanted = self.config["style_subject"]
        if wanted is not None:
            candidates = np.flatnonzero(self.subject_names == wanted)
            if len(candidates) == 0:
                raise ConfigError(f"model.style_subject {wanted!r} is not a patient of the training slices")
        else:
            subjects = np.unique(codes)
            subject = subjects[int(torch.randint(len(subjects), (1,), generator=chooser))]
            candidates = np.flatnonzero(codes == subject)
        self.style_index = int(candidates[int(torch.randint(len(candidates), (1,), generator=chooser))])
        if self.config["style_mode"] == "fixed":
            others = np.flatnonzero(codes != codes[self.style_index])
            self.training_subsets = {spec.name: torch.from_numpy(others)}
        self._style_grams = None

    @property
    def style_subject(self) -> str | None:
        return None if self.style_index is None else str(self.subject_names[self.style_index])

    # -- training --------------------------------------------------------------------------------

    def _noise(self, n: int, device: torch.device) -> torch.Tensor:
        return torch.randn(n, self.config["nz"], generator=self.rng).to(device)

    def _style_batch(self, content_subjects: torch.Tensor) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """Gram matrices (layer -> (B or 1, K, C, C)) and maps (B or 1, 1, H, W) of the style images."""
        if self.config["style_mode"] == "fixed":
            index = torch.tensor([self.style_index])
            if self._style_grams is None:
                self._style_grams = self._grams(self.train_images[index], self.train_maps[index])
            return self._style_grams, self.train_maps[index]
        index = self._style_indices(content_subjects)
        return self._grams(self.train_images[index], self.train_maps[index]), self.train_maps[index]

    def _style_indices(self, content_subjects: torch.Tensor) -> torch.Tensor:
        """per_step mode: for each content image a training slice of another patient, drawn uniformly
        (on the device, with a uniform number from the model's generator: no host read)."""
        others = self.train_subject_codes[None, :] != content_subjects[:, None]  # (B, N)
        u = torch.rand(len(content_subjects), generator=self.rng).to(others.device)
        k = (u * others.sum(1)).long()  # the k-th other slice, 0-based
        return ((others.cumsum(1) == (k + 1)[:, None]) & others).int().argmax(1)

    @torch.no_grad()
    def _grams(self, images: torch.Tensor, maps: torch.Tensor) -> dict[str, torch.Tensor]:
        layers = self.config["style_layers"]
        features = self.vgg(images, layers)
        masks = self.vgg.carry_masks(one_hot_masks(maps, self.config["n_labels"]), layers)
        return {name: masked_gram(features[name], masks[name]) for name in layers}

    def train_phase(self, phase: str, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        real, maps = batch["images"], batch["images_maps"]
        if phase == "D":
            return self._discriminator_step(real, maps)
        if phase == "G":
            return self._generator_step(real, maps, batch["images_subjects"])
        raise ConfigError(f"{self.name} has phases D and G, not {phase!r}")

    def _discriminator_step(self, real: torch.Tensor, maps: torch.Tensor) -> dict[str, torch.Tensor]:
        with self.autocast():
            # G's forward once per step (as pix2pix): D learns from it detached, G's step reuses it.
            self._fake = self.G(maps, self._noise(len(real), real.device))
            real_out = self.D(real, maps).float()
            fake_out = self.D(self._fake.detach(), maps).float()
        loss = adversarial_loss("bce", real_out, True) + adversarial_loss("bce", fake_out, False)
        self.optimizer_step("D", loss)
        return {"D": loss.detach(), "d_real": torch.sigmoid(real_out).mean().detach(),
                "d_fake": torch.sigmoid(fake_out).mean().detach()}

    def _generator_step(self, real: torch.Tensor, maps: torch.Tensor, subjects: torch.Tensor) -> dict[str, torch.Tensor]:
        cfg = self.config
        fake, self._fake = self._fake, None
        if fake is None:
            raise ConfigError("seg2ct's G phase runs after its D phase within a step")
        style_grams, style_maps = self._style_batch(subjects)
        layers = list(dict.fromkeys([*cfg["style_layers"], cfg["content_layer"]]))
        with frozen(self.D), self.autocast():
            adversarial = adversarial_loss("bce", self.D(fake, maps).float(), target_is_real=True)
            features = self.vgg(fake, layers)
            with torch.no_grad():
                target = self.vgg(real, [cfg["content_layer"]])[cfg["content_layer"]]
        content = content_loss(features[cfg["content_layer"]], target)
        masks = self.vgg.carry_masks(one_hot_masks(maps, cfg["n_labels"]), cfg["style_layers"])
        used = present_segments(maps, cfg["n_labels"]) & present_segments(style_maps, cfg["n_labels"])
        style = style_loss(features, masks, style_grams, used, self.style_weights)
        tv = total_variation(fake)
        loss = (cfg["adversarial_weight"] * adversarial + cfg["content_weight"] * content
                + cfg["style_weight"] * style + cfg["tv_weight"] * tv)
        self.optimizer_step("G", loss)
        skipped = (~used).float().sum(1).mean()
        return {"G": loss.detach(), "adversarial": adversarial.detach(), "content": content.detach(),
                "style": style.detach(), "tv": tv.detach(), "style_segments_skipped": skipped}

    # -- sample grids, state, export -------------------------------------------------------------

    @torch.no_grad()
    def compute_visuals(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Per validation map: the map, its real image, the style image, G's output for each fixed z."""
        real, maps = batch["images"], batch["images_maps"]
        n = len(real)
        visuals = {"map": maps.float() / (self.config["n_labels"] - 1) * 2 - 1, "real": real}
        style = self.train_images[self.style_index] if self.train_images is not None else torch.zeros_like(real[0])
        visuals["style"] = style.expand(n, -1, -1, -1)
        for i, z in enumerate(self.fixed_noise):
            visuals[f"generated_{i + 1}"] = one_at_a_time(self.G, maps, z.expand(n, -1).to(real.device)).float()
        return visuals

    def extra_state(self) -> dict[str, Any]:
        return {"rng": self.rng.get_state(), "fixed_noise": self.fixed_noise,
                "style_index": torch.tensor(-1 if self.style_index is None else self.style_index)}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        saved = int(state["style_index"])
        if self.style_index is not None and saved != self.style_index:
            raise ConfigError(f"the checkpoint's style slice ({saved}) is not this run's ({self.style_index})")
        self.rng.set_state(state["rng"])
        self.fixed_noise = state["fixed_noise"].cpu()

    def export(self) -> dict[str, Any]:
        fixed = self.config["style_mode"] == "fixed"
        style_image = style_map = None
        if fixed:
            style_image = ((self.train_images[self.style_index, 0].float() + 1) / 2).clamp(0, 1).cpu()
            style_map = self.train_maps[self.style_index, 0].to(torch.uint8).cpu()
        return {"format": EXPORT_FORMAT, "model": self.name, "config": self.config,
                "networks": {"G": {k: v.detach().cpu() for k, v in self.G.state_dict().items()}},
                "style_image": style_image, "style_map": style_map,
                "style_subject": self.style_subject if fixed else None,
                "perceptual_weights": self.perceptual_weights}

    @classmethod
    def load_export(cls, payload: dict[str, Any], device: str | torch.device) -> "MapToImageGenerator":
        cfg = cls.resolve_config(payload["config"])
        height, width = (int(v) for v in payload["image_size"])
        generator = build_generator(cfg, height)
        generator.load_state_dict(payload["networks"]["G"])
        return MapToImageGenerator(generator.to(device).eval(), (height, width), payload, torch.device(device))


def build_generator(cfg: Mapping[str, Any], image_size: int) -> Seg2CTGenerator:
    depth = _levels(image_size, cfg["depth"], cfg["bottleneck_size"])
    return Seg2CTGenerator(image_size, cfg["n_labels"], cfg["nz"], cfg["ngf"], cfg["max_width_factor"], depth,
                           cfg["z_entry"], cfg["z_channels"], cfg["skips"], cfg["leaky_slope"])


def one_at_a_time(generator: Seg2CTGenerator, maps: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """G on each (map, z) alone: its BatchNorm then normalises by one image, as training at batch 1 did."""
    return torch.cat([generator(maps[i:i + 1], z[i:i + 1]) for i in range(len(maps))])


class MapToImageGenerator:
    """Inference with a trained seg2ct generator (task "map_to_image"): ``generate(maps, seed, z)``."""

    task = "map_to_image"

    def __init__(self, generator: Seg2CTGenerator, image_size: tuple[int, int], payload: Mapping[str, Any],
                 device: torch.device):
        self.generator, self.image_size, self.device = generator, image_size, device
        self.n_labels, self.nz = generator.n_labels, generator.nz
        self.style_image = None if payload["style_image"] is None else payload["style_image"].cpu().numpy().astype(np.float32)
        self.style_map = None if payload["style_map"] is None else payload["style_map"].cpu().numpy().astype(np.uint8)
        self.style_subject = payload["style_subject"]
        self.perceptual_weights = payload["perceptual_weights"]

    def noise(self, n: int, seed: int = 0) -> np.ndarray:
        """The (n, nz) z ``generate`` uses for ``seed``, drawn on the CPU (device-independent)."""
        return torch.randn(n, self.nz, generator=torch.Generator().manual_seed(seed)).numpy()

    @torch.no_grad()
    def generate(self, maps: np.ndarray, seed: int = 0, z: np.ndarray | None = None) -> np.ndarray:
        """(n, H, W) integer class maps -> (n, H, W) float32 images in [0, 1]; z (n, nz) or drawn from
        ``seed`` (the same seed gives the same images)."""
        maps = np.asarray(maps)
        if maps.ndim != 3 or tuple(maps.shape[1:]) != self.image_size or not np.issubdtype(maps.dtype, np.integer):
            raise ValueError(f"maps must be (n, {self.image_size[0]}, {self.image_size[1]}) integer classes, "
                             f"got {maps.dtype} {maps.shape}")
        if len(maps) and (maps.min() < 0 or maps.max() >= self.n_labels):
            raise ValueError(f"maps must hold classes 0..{self.n_labels - 1}, got {maps.min()}..{maps.max()}")
        z = self.noise(len(maps), seed) if z is None else np.asarray(z, dtype=np.float32)
        if z.shape != (len(maps), self.nz):
            raise ValueError(f"z must be ({len(maps)}, {self.nz}), got {z.shape}")
        if not len(maps):
            return np.zeros((0, *self.image_size), dtype=np.float32)
        maps_t = torch.from_numpy(maps.astype(np.int64))[:, None].to(self.device)
        out = one_at_a_time(self.generator, maps_t, torch.from_numpy(z).to(self.device)).float()
        return ((out[:, 0] + 1) / 2).clamp(0, 1).cpu().numpy().astype(np.float32)
