"""StyleGAN2 networks (Karras et al. 2020, "Analyzing and improving the image quality of
StyleGAN") in plain torch, one image channel natively: no custom CUDA ops to build.

- Equalised learning rate everywhere: weights are stored N(0, 1) and scaled at run time by
  ``lr_multiplier / sqrt(fan_in)``, so Adam moves every layer at the same relative speed.
- Bias + leaky ReLU (slope 0.2) with gain sqrt(2), which keeps unit variance through the layers.
- Mapping: z normalised to unit second moment, ``n_layers`` fully connected layers with a
  learning-rate multiplier (0.01), w broadcast to ``num_ws`` copies; ``w_avg`` is a running
  mean of w (decay ``w_avg_beta``) for the truncation trick.
- Synthesis: a learned constant 4x4 input, then per resolution two modulated 3x3 convolutions
  (the first one after a 2x bilinear upsampling), per-layer noise with a learned strength,
  and a skip architecture: every resolution's 1x1 toRGB (to one channel) is added to the
  upsampled image of the resolution below.
- Modulated convolution: the style s (an affine map of w, bias initialised to 1) scales the
  weight's input channels per sample; demodulation divides each output channel by the norm of
  its scaled weights, so unit-variance input gives unit-variance output without normalising
  the activations. Implemented as one grouped convolution (groups = batch).
- Residual discriminator: fromRGB 1x1, per resolution two 3x3 convolutions (the second followed
  by 2x average pooling) plus a 1x1 pooled skip, summed and scaled by sqrt(1/2); at 4x4 the
  minibatch standard deviation (one extra feature map per group of images), a 3x3
  convolution, a fully connected layer and a one-logit output.

Simplifications against the NVIDIA code (stated, not hidden): bilinear up- and average-pool
downsampling instead of FIR-filtered (transposed) convolutions, no fp16 layers and no
clamping of activations. Channel widths follow ``channel_base / resolution`` capped at
``channel_max`` (stylegan2-ada's small-resolution config: 16384 and 512: 512 channels at
4-32 px, 256 at 64, 128 at 128).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

#: Leaky ReLU slope and the gain that restores unit variance after it (He et al.).
LRELU_SLOPE = 0.2
LRELU_GAIN = math.sqrt(2.0)
#: Added under square roots (demodulation, minibatch std) against division by zero.
EPSILON = 1e-8


def bias_lrelu(x: torch.Tensor, bias: torch.Tensor | None = None, gain: float = LRELU_GAIN) -> torch.Tensor:
    """Add a per-channel bias, leaky ReLU, multiply by ``gain``."""
    if bias is not None:
        x = x + bias.reshape(1, -1, *([1] * (x.ndim - 2)))
    return F.leaky_relu(x, LRELU_SLOPE) * gain


def channels_at(resolution: int, channel_base: int, channel_max: int) -> int:
    """Feature maps at ``resolution``: channel_base / resolution, capped at channel_max."""
    return max(1, min(channel_base // resolution, channel_max))


class EqualLinear(nn.Module):
    """Fully connected layer with equalised learning rate (and an optional lrelu activation)."""

    def __init__(self, in_features: int, out_features: int, activation: bool = False, lr_multiplier: float = 1.0,
                 bias_init: float = 0.0):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_features, in_features) / lr_multiplier)
        self.bias = nn.Parameter(torch.full((out_features,), float(bias_init)))
        self.weight_gain = lr_multiplier / math.sqrt(in_features)
        self.bias_gain = lr_multiplier
        self.activation = activation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.linear(x, self.weight * self.weight_gain)
        bias = self.bias * self.bias_gain
        return bias_lrelu(x, bias) if self.activation else x + bias


class EqualConv2d(nn.Module):
    """Convolution with equalised learning rate, optional bias + lrelu, optional 2x average-pool after."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, bias: bool = True,
                 activation: bool = True, down: bool = False):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None
        self.weight_gain = 1.0 / math.sqrt(in_channels * kernel_size ** 2)
        self.padding, self.activation, self.down = kernel_size // 2, activation, down

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.conv2d(x, self.weight * self.weight_gain, padding=self.padding)
        if self.down:
            x = F.avg_pool2d(x, 2)
        if self.activation:
            return bias_lrelu(x, self.bias)
        return x if self.bias is None else x + self.bias.reshape(1, -1, 1, 1)


def modulated_conv2d(x: torch.Tensor, weight: torch.Tensor, styles: torch.Tensor, demodulate: bool = True,
                     padding: int = 0) -> torch.Tensor:
    """Per-sample convolution of ``x`` (N, I, H, W) with ``weight`` (O, I, k, k) whose input
    channels are scaled by ``styles`` (N, I), each output channel divided by the norm of its
    scaled weights when ``demodulate``; computed as one grouped convolution."""
    n, in_channels, height, width = x.shape
    out_channels = weight.shape[0]
    w = weight.unsqueeze(0) * styles.reshape(n, 1, in_channels, 1, 1)  # (N, O, I, k, k)
    if demodulate:
        w = w * torch.rsqrt(w.square().sum(dim=(2, 3, 4), keepdim=True) + EPSILON)
    x = x.reshape(1, n * in_channels, height, width)
    out = F.conv2d(x, w.reshape(n * out_channels, in_channels, *weight.shape[2:]), padding=padding, groups=n)
    return out.reshape(n, out_channels, *out.shape[2:])


class MappingNetwork(nn.Module):
    """z (N, z_dim) -> w (N, num_ws, w_dim); keeps ``w_avg`` for truncation."""

    def __init__(self, z_dim: int, w_dim: int, num_ws: int, n_layers: int, lr_multiplier: float,
                 w_avg_beta: float):
        super().__init__()
        self.z_dim, self.w_dim, self.num_ws, self.w_avg_beta = z_dim, w_dim, num_ws, w_avg_beta
        features = [z_dim] + [w_dim] * n_layers
        self.layers = nn.ModuleList(EqualLinear(a, b, activation=True, lr_multiplier=lr_multiplier)
                                    for a, b in zip(features[:-1], features[1:]))
        self.register_buffer("w_avg", torch.zeros(w_dim))

    def forward(self, z: torch.Tensor, truncation_psi: float = 1.0, update_w_avg: bool = False) -> torch.Tensor:
        x = z * torch.rsqrt(z.square().mean(dim=1, keepdim=True) + EPSILON)
        for layer in self.layers:
            x = layer(x)
        if update_w_avg:
            self.w_avg.copy_(x.detach().mean(dim=0).lerp(self.w_avg, self.w_avg_beta))
        if truncation_psi != 1.0:
            x = self.w_avg.lerp(x, truncation_psi)
        return x.unsqueeze(1).repeat(1, self.num_ws, 1)


class SynthesisLayer(nn.Module):
    """Modulated 3x3 convolution (after a 2x upsampling when ``up``), noise, bias, lrelu."""

    def __init__(self, in_channels: int, out_channels: int, w_dim: int, resolution: int, up: bool = False):
        super().__init__()
        self.affine = EqualLinear(w_dim, in_channels, bias_init=1.0)
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, 3, 3))
        self.bias = nn.Parameter(torch.zeros(out_channels))
        self.noise_strength = nn.Parameter(torch.zeros([]))
        self.register_buffer("noise_const", torch.randn(resolution, resolution))
        self.weight_gain = 1.0 / math.sqrt(in_channels * 9)
        self.up, self.resolution = up, resolution

    def forward(self, x: torch.Tensor, w: torch.Tensor, noise_mode: str = "random",
                generator: torch.Generator | None = None) -> torch.Tensor:
        if self.up:
            x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
        styles = self.affine(w) * self.weight_gain
        x = modulated_conv2d(x, self.weight, styles, demodulate=True, padding=1)
        if noise_mode == "random":
            noise = torch.randn(len(x), 1, self.resolution, self.resolution, generator=generator,
                                device=x.device if generator is None else generator.device).to(x)
            x = x + noise * self.noise_strength
        elif noise_mode == "const":
            x = x + self.noise_const.to(x) * self.noise_strength
        elif noise_mode != "none":
            raise ValueError(f"noise_mode must be random, const or none, got {noise_mode!r}")
        return bias_lrelu(x, self.bias)


class ToImage(nn.Module):
    """Modulated 1x1 convolution to one image channel, not demodulated, no activation."""

    def __init__(self, in_channels: int, w_dim: int, image_channels: int = 1):
        super().__init__()
        self.affine = EqualLinear(w_dim, in_channels, bias_init=1.0)
        self.weight = nn.Parameter(torch.randn(image_channels, in_channels, 1, 1))
        self.bias = nn.Parameter(torch.zeros(image_channels))
        self.weight_gain = 1.0 / math.sqrt(in_channels)

    def forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        styles = self.affine(w) * self.weight_gain
        return modulated_conv2d(x, self.weight, styles, demodulate=False) + self.bias.reshape(1, -1, 1, 1)


class SynthesisBlock(nn.Module):
    """One resolution: (constant input at 4x4 | upsampled features) -> convs -> toRGB, skip image."""

    def __init__(self, in_channels: int, out_channels: int, w_dim: int, resolution: int):
        super().__init__()
        self.resolution = resolution
        if resolution == 4:
            self.const = nn.Parameter(torch.randn(out_channels, 4, 4))
            self.convs = nn.ModuleList([SynthesisLayer(out_channels, out_channels, w_dim, 4)])
        else:
            self.convs = nn.ModuleList([SynthesisLayer(in_channels, out_channels, w_dim, resolution, up=True),
                                        SynthesisLayer(out_channels, out_channels, w_dim, resolution)])
        self.to_image = ToImage(out_channels, w_dim)

    @property
    def num_conv(self) -> int:
        return len(self.convs)

    def forward(self, x: torch.Tensor | None, image: torch.Tensor | None, ws: torch.Tensor, noise_mode: str,
                generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor]:
        """``ws`` (N, num_conv + 1, w_dim): one w per convolution and one for toRGB."""
        if self.resolution == 4:
            x = self.const.unsqueeze(0).expand(len(ws), -1, -1, -1)
        for i, conv in enumerate(self.convs):
            x = conv(x, ws[:, i], noise_mode, generator)
        y = self.to_image(x, ws[:, self.num_conv])
        if image is not None:
            y = y + F.interpolate(image, scale_factor=2, mode="bilinear", align_corners=False)
        return x, y


class SynthesisNetwork(nn.Module):
    """ws (N, num_ws, w_dim) -> image (N, 1, R, R), skip architecture.

    w indices: block i (resolution 4 * 2^i) uses ws[2i-1], ws[2i] for its convolutions (ws[0]
    alone at 4x4) and ws[2i+1] for toRGB, which the next block's first convolution shares, so
    num_ws = 2 log2(R) - 2 (12 at 128x128), as in StyleGAN2.
    """

    def __init__(self, w_dim: int, resolution: int, channel_base: int, channel_max: int):
        super().__init__()
        if resolution < 8 or resolution & (resolution - 1):
            raise ValueError(f"StyleGAN2 takes square power-of-two images of at least 8 px, got {resolution}")
        self.resolution = resolution
        self.resolutions = [2 ** i for i in range(2, int(math.log2(resolution)) + 1)]
        blocks = []
        for res in self.resolutions:
            in_ch = channels_at(res // 2, channel_base, channel_max) if res > 4 else 0
            blocks.append(SynthesisBlock(in_ch, channels_at(res, channel_base, channel_max), w_dim, res))
        self.blocks = nn.ModuleList(blocks)
        self.num_ws = 2 * len(self.resolutions)

    def _block_ws(self, ws: torch.Tensor, index: int) -> torch.Tensor:
        start = max(0, 2 * index - 1)
        return ws[:, start:start + self.blocks[index].num_conv + 1]

    def forward(self, ws: torch.Tensor, noise_mode: str = "random", generator: torch.Generator | None = None,
                return_features: bool = False) -> torch.Tensor | tuple[torch.Tensor, list[torch.Tensor]]:
        x = image = None
        features = []
        for index, block in enumerate(self.blocks):
            x, image = block(x, image, self._block_ws(ws, index), noise_mode, generator)
            features.append(x)
        return (image, features) if return_features else image


class Generator(nn.Module):
    """StyleGAN2 generator: mapping + synthesis, one output channel in about [-1, 1]."""

    def __init__(self, resolution: int, z_dim: int, w_dim: int, mapping_layers: int, mapping_lr_multiplier: float,
                 channel_base: int, channel_max: int, w_avg_beta: float = 0.995):
        super().__init__()
        self.synthesis = SynthesisNetwork(w_dim, resolution, channel_base, channel_max)
        self.num_ws = self.synthesis.num_ws
        self.z_dim, self.w_dim, self.resolution = z_dim, w_dim, resolution
        self.mapping = MappingNetwork(z_dim, w_dim, self.num_ws, mapping_layers, mapping_lr_multiplier, w_avg_beta)

    def forward(self, z: torch.Tensor, truncation_psi: float = 1.0, noise_mode: str = "random",
                generator: torch.Generator | None = None) -> torch.Tensor:
        return self.synthesis(self.mapping(z, truncation_psi), noise_mode, generator)


def minibatch_stddev(x: torch.Tensor, group_size: int) -> torch.Tensor:
    """Append one feature map: the standard deviation of each feature over a group of images,
    averaged over features and pixels (the largest group size <= ``group_size`` dividing N)."""
    n, c, h, w = x.shape
    group = min(group_size, n)
    while n % group:
        group -= 1
    y = x.reshape(group, n // group, c, h, w).float()
    y = (y - y.mean(dim=0)).square().mean(dim=0).add(EPSILON).sqrt()  # (N/G, C, H, W)
    y = y.mean(dim=(1, 2, 3)).to(x.dtype)  # (N/G,)
    y = y.reshape(1, n // group, 1, 1, 1).expand(group, -1, 1, h, w).reshape(n, 1, h, w)
    return torch.cat([x, y], dim=1)


class DiscriminatorBlock(nn.Module):
    """Residual block: two 3x3 convs (the second pooled 2x) plus a pooled 1x1 skip, times sqrt(1/2)."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.conv0 = EqualConv2d(in_channels, in_channels, 3)
        self.conv1 = EqualConv2d(in_channels, out_channels, 3, down=True)
        self.skip = EqualConv2d(in_channels, out_channels, 1, bias=False, activation=False, down=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (self.skip(x) + self.conv1(self.conv0(x))) * math.sqrt(0.5)


class Discriminator(nn.Module):
    """Residual StyleGAN2 discriminator: (N, 1, R, R) -> (N,) logits."""

    def __init__(self, resolution: int, channel_base: int, channel_max: int, mbstd_group_size: int):
        super().__init__()
        if resolution < 8 or resolution & (resolution - 1):
            raise ValueError(f"StyleGAN2 takes square power-of-two images of at least 8 px, got {resolution}")
        self.mbstd_group_size = mbstd_group_size
        self.from_image = EqualConv2d(1, channels_at(resolution, channel_base, channel_max), 1)
        blocks, res = [], resolution
        while res > 4:
            blocks.append(DiscriminatorBlock(channels_at(res, channel_base, channel_max),
                                             channels_at(res // 2, channel_base, channel_max)))
            res //= 2
        self.blocks = nn.ModuleList(blocks)
        ch = channels_at(4, channel_base, channel_max)
        self.conv = EqualConv2d(ch + 1, ch, 3)
        self.fc = EqualLinear(ch * 16, ch, activation=True)
        self.out = EqualLinear(ch, 1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.from_image(images)
        for block in self.blocks:
            x = block(x)
        x = self.conv(minibatch_stddev(x, self.mbstd_group_size))
        return self.out(self.fc(x.flatten(1))).flatten()
