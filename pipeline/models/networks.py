"""Generators and discriminators for 1-channel images in [-1, 1].

Two families: the U-Net with a ResNet-18 encoder and the ResNet-18 discriminator of the
CT <-> MRI report (ImageNet initialisation when the torchvision weight file is on disk), and
the classic CycleGAN pair (ResNet 9-block generator, 70x70 PatchGAN, instance norm).
Nothing here touches the network: torchvision builds every net with ``weights=None`` and
ImageNet weights come only from a local state-dict file.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from pipeline.errors import ConfigError, InputDataError

#: torchvision's ImageNet file names; the hash suffix pins the exact release.
RESNET18_WEIGHTS_FILE = "resnet18-f37072fd.pth"
VGG19_WEIGHTS_FILE = "vgg19-dcbb9e9d.pth"
PRETRAINED_CHOICES = ("imagenet", "none")


def imagenet_weight_file(weights_dir: Path | None, file_name: str, pretrained: str) -> tuple[Path | None, str]:
    """Return (the ImageNet weight file to load or None, status) for one network.

    The status string is what run.json and MLflow record, so a reader knows whether a run
    started from ImageNet or from random weights, and why. A missing file is an error, never a
    silent start from random weights: running without ImageNet is the explicit ``pretrained: none``.
    """
    if pretrained not in PRETRAINED_CHOICES:
        raise ConfigError(f"pretrained must be one of {PRETRAINED_CHOICES}, got {pretrained!r}")
    if pretrained == "none":
        return None, "random (pretrained: none)"
    path = Path(weights_dir) / file_name if weights_dir is not None else None
    if path is None or not path.is_file():
        raise InputDataError(
            path if path is not None else Path(file_name),
            "ImageNet weights not found (weights.pretrained: imagenet). Get them with weights.fetch: true "
            "(downloads torchvision's file), or weights.local_dir: a folder holding it (verified and copied in), "
            "or `python -m pipeline.sources.download weights --out data/weights`; or train from random "
            "initialisation with weights.pretrained: none",
        )
    return path, f"imagenet ({file_name})"


def load_state_file(path: Path) -> dict[str, torch.Tensor]:
    """Read a torch state-dict file without unpickling arbitrary objects."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # a truncated or foreign file: say which
        raise InputDataError(path, f"cannot be read as a torch state dict ({err})") from err
    if not isinstance(state, dict):
        raise InputDataError(path, "is not a state dict")
    return state


def _resnet18_single_channel(weights: Path | None) -> torchvision.models.ResNet:
    """torchvision ResNet-18 taking one channel; ImageNet RGB filters summed into one.

    Summing the first conv's RGB filters makes a grey image x respond exactly as the RGB image
    (x, x, x) would, so the pretrained features stay meaningful. The classifier is not loaded.
    """
    net = torchvision.models.resnet18(weights=None)
    net.conv1 = nn.Conv2d(1, 64, kernel_size=7, stride=2, padding=3, bias=False)
    if weights is not None:
        state = {k: v for k, v in load_state_file(weights).items() if not k.startswith("fc.")}
        if state.get("conv1.weight", torch.empty(0)).shape != (64, 3, 7, 7):
            raise InputDataError(weights, "is not a torchvision ResNet-18 state dict (conv1.weight missing or misshaped)")
        state["conv1.weight"] = state["conv1.weight"].sum(dim=1, keepdim=True)
        try:
            missing, unexpected = net.load_state_dict(state, strict=False)
        except RuntimeError as err:
            raise InputDataError(weights, f"does not fit ResNet-18 ({err})") from err
        if unexpected or any(not k.startswith("fc.") for k in missing):
            raise InputDataError(weights, f"does not match ResNet-18 (missing {missing}, unexpected {unexpected})")
    return net


def _conv_bn_relu(in_channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class _DecoderBlock(nn.Module):
    """Upsample x2, concatenate the encoder's skip features, two 3x3 conv-BN-ReLU."""

    def __init__(self, in_channels: int, skip_channels: int, out_channels: int):
        super().__init__()
        self.convs = nn.Sequential(
            _conv_bn_relu(in_channels + skip_channels, out_channels), _conv_bn_relu(out_channels, out_channels)
        )

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        if skip is not None:
            x = torch.cat([x, skip], dim=1)
        return self.convs(x)


class UNetResNet18Generator(nn.Module):
    """U-Net whose encoder is torchvision's ResNet-18, with a light decoder and tanh output.

    The encoder downsamples by 32, so height and width must be multiples of 32.
    ``decoder_channels`` are the five decoder widths, deepest first (report 001 used the
    segmentation-models default 256, 128, 64, 32, 16).
    """

    size_multiple = 32
    _SKIP_CHANNELS = (256, 128, 64, 64, 0)  # layer3, layer2, layer1, stem, none at full size

    def __init__(self, decoder_channels: Sequence[int] = (256, 128, 64, 32, 16), encoder_weights: Path | None = None):
        super().__init__()
        if len(decoder_channels) != 5:
            raise ConfigError(f"decoder_channels needs 5 widths (one per x2 upsampling), got {list(decoder_channels)}")
        self.encoder = _resnet18_single_channel(encoder_weights)
        self.encoder.fc = nn.Identity()  # unused; keeps the state dict free of a classifier
        blocks, in_channels = [], 512
        for skip_channels, out_channels in zip(self._SKIP_CHANNELS, decoder_channels):
            blocks.append(_DecoderBlock(in_channels, skip_channels, out_channels))
            in_channels = out_channels
        self.decoder = nn.ModuleList(blocks)
        self.head = nn.Conv2d(in_channels, 1, kernel_size=3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        enc = self.encoder
        stem = enc.relu(enc.bn1(enc.conv1(x)))
        f1 = enc.layer1(enc.maxpool(stem))
        f2 = enc.layer2(f1)
        f3 = enc.layer3(f2)
        y = enc.layer4(f3)
        for block, skip in zip(self.decoder, (f3, f2, f1, stem, None)):
            y = block(y, skip)
        return torch.tanh(self.head(y))


class ResNet18Discriminator(nn.Module):
    """torchvision ResNet-18 body, one input channel, one real/fake logit per image."""

    size_multiple = 1

    def __init__(self, encoder_weights: Path | None = None):
        super().__init__()
        self.body = _resnet18_single_channel(encoder_weights)
        self.body.fc = nn.Linear(512, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class _ResidualBlock(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.ReflectionPad2d(1), nn.Conv2d(channels, channels, 3), nn.InstanceNorm2d(channels), nn.ReLU(inplace=True),
            nn.ReflectionPad2d(1), nn.Conv2d(channels, channels, 3), nn.InstanceNorm2d(channels),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class ResnetGenerator(nn.Module):
    """Johnson-style generator of the original CycleGAN: 7x7 stem, two stride-2 downsamplings,
    ``n_blocks`` residual blocks, two transposed-conv upsamplings, tanh. Sizes: multiples of 4."""

    size_multiple = 4

    def __init__(self, ngf: int = 64, n_blocks: int = 9):
        super().__init__()
        layers: list[nn.Module] = [
            nn.ReflectionPad2d(3), nn.Conv2d(1, ngf, 7), nn.InstanceNorm2d(ngf), nn.ReLU(inplace=True)]
        channels = ngf
        for _ in range(2):
            layers += [nn.Conv2d(channels, channels * 2, 3, stride=2, padding=1), nn.InstanceNorm2d(channels * 2),
                       nn.ReLU(inplace=True)]
            channels *= 2
        layers += [_ResidualBlock(channels) for _ in range(n_blocks)]
        for _ in range(2):
            layers += [nn.ConvTranspose2d(channels, channels // 2, 3, stride=2, padding=1, output_padding=1),
                       nn.InstanceNorm2d(channels // 2), nn.ReLU(inplace=True)]
            channels //= 2
        layers += [nn.ReflectionPad2d(3), nn.Conv2d(channels, 1, 7), nn.Tanh()]
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class PatchGANDiscriminator(nn.Module):
    """PatchGAN: a grid of logits, each judging one overlapping patch (70x70 with 3 layers)."""

    size_multiple = 1

    def __init__(self, ndf: int = 64, n_layers: int = 3):
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(1, ndf, 4, stride=2, padding=1), nn.LeakyReLU(0.2, inplace=True)]
        channels = ndf
        for i in range(1, n_layers + 1):
            out_channels = ndf * min(2 ** i, 8)
            stride = 2 if i < n_layers else 1
            layers += [nn.Conv2d(channels, out_channels, 4, stride=stride, padding=1), nn.InstanceNorm2d(out_channels),
                       nn.LeakyReLU(0.2, inplace=True)]
            channels = out_channels
        layers.append(nn.Conv2d(channels, 1, 4, stride=1, padding=1))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def init_normal(net: nn.Module, std: float) -> None:
    """The classic CycleGAN init: conv weights ~ N(0, std), biases 0 (drawn from torch's global RNG)."""
    for module in net.modules():
        if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.normal_(module.weight, 0.0, std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)


GENERATORS = ("unet_resnet18", "resnet9")
DISCRIMINATORS = ("resnet18", "patchgan")


def build_generator(name: str, *, decoder_channels: Sequence[int], ngf: int, n_res_blocks: int, init_std: float,
                    pretrained: str, weights_dir: Path | None) -> tuple[nn.Module, str]:
    """Build a generator by name; return it with its initialisation status."""
    if name == "unet_resnet18":
        weights, status = imagenet_weight_file(weights_dir, RESNET18_WEIGHTS_FILE, pretrained)
        return UNetResNet18Generator(decoder_channels, weights), status
    if name == "resnet9":
        net = ResnetGenerator(ngf, n_res_blocks)
        init_normal(net, init_std)
        return net, f"random (normal std {init_std})"
    raise ConfigError(f"generator must be one of {GENERATORS}, got {name!r}")


def build_discriminator(name: str, *, ndf: int, n_patch_layers: int, init_std: float, pretrained: str,
                        weights_dir: Path | None) -> tuple[nn.Module, str]:
    """Build a discriminator by name; return it with its initialisation status."""
    if name == "resnet18":
        weights, status = imagenet_weight_file(weights_dir, RESNET18_WEIGHTS_FILE, pretrained)
        return ResNet18Discriminator(weights), status
    if name == "patchgan":
        net = PatchGANDiscriminator(ndf, n_patch_layers)
        init_normal(net, init_std)
        return net, f"random (normal std {init_std})"
    raise ConfigError(f"discriminator must be one of {DISCRIMINATORS}, got {name!r}")
