"""A tiny stand-in of the trained StyleGAN2 sampler (the iface's shapes), for tests only.

mapping: z (n, z_dim) -> w (n, num_ws, w_dim) by a fixed random linear map + LeakyReLU;
synthesis: ws -> (n, 1, S, S) in [-1, 1] by per-layer linear maps of w to a 4x4 seed,
two upsampling convolutions, tanh. Deterministic from its seed; smooth and close to
injective in w, so a known w can be recovered from its image.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


class _Block(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, 1, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = F.leaky_relu(self.conv(F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)), 0.2)
        return x, x.mean(dim=1, keepdim=True)


class _Synthesis(nn.Module):
    def __init__(self, w_dim: int, num_ws: int, size: int, channels: int):
        super().__init__()
        self.num_ws, self.channels = num_ws, channels
        self.seed = nn.Linear(w_dim * num_ws, channels * 16)
        n_up = int(np.log2(size // 4))
        self.blocks = nn.ModuleList(_Block(channels) for _ in range(n_up))
        self.to_image = nn.Conv2d(channels, 1, 1)

    def forward(self, ws: torch.Tensor) -> torch.Tensor:
        x = torch.tanh(self.seed(ws.flatten(1))).view(len(ws), self.channels, 4, 4)
        for block in self.blocks:
            x, _ = block(x)
        return torch.tanh(self.to_image(x))


class _Generator(nn.Module):
    def __init__(self, z_dim: int, w_dim: int, num_ws: int, size: int, channels: int):
        super().__init__()
        self.mapping_layer = nn.Linear(z_dim, w_dim)
        self.synthesis = _Synthesis(w_dim, num_ws, size, channels)


class TinyStyleGAN:
    """The Sampler-with-latents protocol of iface.md, on a tiny random network."""

    task = "generation"
    n_classes = 0

    def __init__(self, size: int = 16, z_dim: int = 8, w_dim: int = 8, num_ws: int = 4, channels: int = 8,
                 seed: int = 0):
        torch.manual_seed(seed)
        self.generator = _Generator(z_dim, w_dim, num_ws, size, channels).eval().requires_grad_(False)
        self.z_dim, self.w_dim, self.num_ws, self.image_size = z_dim, w_dim, num_ws, (size, size)
        with torch.no_grad():
            z = torch.randn(4096, z_dim, generator=torch.Generator().manual_seed(seed + 1))
            self.w_avg = self.mapping(z)[:, 0].mean(0)

    def mapping(self, z: torch.Tensor, truncation_psi: float = 1.0) -> torch.Tensor:
        w = F.leaky_relu(self.generator.mapping_layer(z), 0.2)
        if truncation_psi != 1.0:
            w = self.w_avg + truncation_psi * (w - self.w_avg)
        return w[:, None].repeat(1, self.num_ws, 1)

    def synthesis(self, ws: torch.Tensor, noise_mode: str = "const") -> torch.Tensor:
        return self.generator.synthesis(ws)

    @torch.no_grad()
    def sample(self, n: int, labels=None, seed: int = 0) -> np.ndarray:
        z = torch.randn(n, self.z_dim, generator=torch.Generator().manual_seed(seed))
        return ((self.synthesis(self.mapping(z)) + 1) / 2).clamp(0, 1)[:, 0].numpy()
