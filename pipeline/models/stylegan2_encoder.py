"""Encoder for a trained StyleGAN2 generator, trained CRG-style (report 004): image -> w.

The generator G (``models/<experiment>/model.pt``, the path in the ``generator`` knob) is loaded
frozen, in eval mode, with its per-layer noise fixed (``synthesis(ws, noise_mode="const")``).
The encoder E is trained by the one engine with two optimiser updates per step (two phases on
one Adam optimiser, as the Cyclic Reverse Generator does):

1. ``synthetic``: z -> w = mapping(z) -> x = G(w) -> w' = E(x) -> x' = G(w'), loss
   ``lambda_w_l1 * L1(w, w') + lambda_image_l2 * L2(x, x') + lambda_ssim * (1 - SSIM(x, x'))
   + lambda_content_g * sum_i mean((G_i(w) - G_i(w'))^2)``, G_i the outputs of G's synthesis
   layers (each feature map's squared error divided by its size N_i, the report's definition).
2. ``real``: a training image I -> E(I) -> I' = G(E(I)), loss ``lambda_image_l2 * L2(I, I')
   + lambda_ssim * (1 - SSIM(I, I')) + lambda_content_e * sum_i mean((E_i(I) - E_i(I'))^2)``,
   E_i the encoder's stage outputs; E_i(I) is the target (no gradient through it), so the
   content term pulls the reconstruction's features toward the image's, not the reverse.

Network (default, documented in docs/experiment-stylegan-cxr.md): a small ResNet, not the
report's two-branch ResNet-101. A 3x3 stem of ``width`` channels, ``n_stages`` stages each
halving the size with a strided residual block (two 3x3 convolutions, LeakyReLU 0.2, a 1x1
strided shortcut) and doubling the width up to ``max_width``, global average pooling and a
linear head. No normalisation layers: the encoder gives the same code for an image whatever
the batch. The head predicts an offset from G's mean w (``w_avg``), so an untrained encoder
starts at the mean code. ``latent_space`` ``w`` predicts one w repeated over G's ``num_ws``
layers; ``w_plus`` one per layer (reconstructs better, edits worse: REFERENCE.md).

The exported object (``load_trained``, task "encoding") has ``encode(images) -> (n, num_ws,
w_dim)`` and the generator path / hash it was trained against.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pipeline.errors import ConfigError, InputDataError
from pipeline.models import EXPORT_FORMAT, DataInput, GANModel, load_trained, merge_knobs
from pipeline.models.losses import ssim_loss

log = logging.getLogger(__name__)

LATENT_SPACES = ("w", "w_plus")

ENCODER_KNOBS: dict[str, Any] = {
    "generator": "",               # path of G's model.pt (the rule passes models/<experiment>/model.pt)
    "generator_sha256": None,      # filled from the file: a retrained G never resumes an old encoder
    "latent_space": "w",           # w | w_plus
    "width": 16,                   # stem channels, doubling per stage
    "max_width": 256,
    "n_stages": 4,                 # strided residual stages (each halves the size)
    "lr": 1.0e-4,
    "adam_betas": [0.9, 0.999],
    "lambda_w_l1": 1.0,            # synthetic cycle: L1(w, w')
    "lambda_image_l2": 1.0,        # both cycles: L2 between image and reconstruction
    "lambda_ssim": 1.0,            # both cycles: 1 - SSIM
    "lambda_content_g": 1.0,       # synthetic cycle: content loss on G's synthesis-layer features
    "lambda_content_e": 1.0,       # real cycle: content loss on the encoder's stage features
    "ssim_kernel_size": 7,         # Gaussian SSIM window (odd; small images need a small window)
    "ssim_sigma": 1.5,
    "truncation_psi": 1.0,         # truncation of the synthetic cycle's w (1 = none)
}


class _ResidualDown(nn.Module):
    """Two 3x3 convolutions, the first strided, plus a strided 1x1 shortcut."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, 2, 1)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1)
        self.shortcut = nn.Conv2d(in_channels, out_channels, 1, 2, 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv2(F.leaky_relu(self.conv1(x), 0.2))
        return F.leaky_relu(y + self.shortcut(x), 0.2)


class ResNetEncoder(nn.Module):
    """(n, 1, S, S) image in [-1, 1] -> (n, num_ws, w_dim) codes as offsets from ``w_avg``."""

    def __init__(self, image_size: int, w_dim: int, num_ws: int, w_avg: torch.Tensor, latent_space: str = "w",
                 width: int = 16, max_width: int = 256, n_stages: int = 4):
        super().__init__()
        if image_size % (2 ** n_stages):
            raise ConfigError(f"model.n_stages {n_stages} halves {image_size} px to a fraction: use fewer stages")
        self.w_dim, self.num_ws, self.per_layer = w_dim, num_ws, latent_space == "w_plus"
        self.stem = nn.Conv2d(1, width, 3, 1, 1)
        stages, channels = [], width
        for _ in range(n_stages):
            out = min(channels * 2, max_width)
            stages.append(_ResidualDown(channels, out))
            channels = out
        self.stages = nn.ModuleList(stages)
        self.head = nn.Linear(channels, w_dim * (num_ws if self.per_layer else 1))
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)
        self.register_buffer("w_avg", w_avg.detach().clone().float().view(1, 1, w_dim))

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Outputs of the stem and of every stage (the real cycle's content features)."""
        found = [F.leaky_relu(self.stem(x), 0.2)]
        for stage in self.stages:
            found.append(stage(found[-1]))
        return found

    def forward(self, x: torch.Tensor, return_features: bool = False):
        feats = self.features(x)
        offset = self.head(feats[-1].mean(dim=(2, 3)))
        offset = offset.view(len(x), self.num_ws if self.per_layer else 1, self.w_dim)
        ws = (self.w_avg + offset).expand(len(x), self.num_ws, self.w_dim)
        return (ws, feats) if return_features else ws


class SynthesisFeatures:
    """Records the outputs of G's synthesis layers (the direct children of ``generator.synthesis``,
    or of the generator when it has no such part; members of a ModuleList / Sequential child
    instead of the container) while ``synthesis`` runs: G's content features.

    Tuple outputs contribute their first 4-D tensor (StyleGAN2 blocks return (x, img)).
    """

    def __init__(self, generator: nn.Module):
        root = getattr(generator, "synthesis", generator)
        modules: list[nn.Module] = []
        for child in root.children():
            # Containers are never called themselves: their members are the layers.
            modules += list(child.children()) if isinstance(child, (nn.ModuleList, nn.Sequential)) else [child]
        self.modules = modules or [root]
        self.found: list[torch.Tensor] = []
        self.recording = False
        for module in self.modules:
            module.register_forward_hook(self._hook)

    def _hook(self, module: nn.Module, inputs: Any, output: Any) -> None:
        if not self.recording:
            return
        candidates = output if isinstance(output, (tuple, list)) else (output,)
        for value in candidates:
            if isinstance(value, torch.Tensor) and value.ndim == 4:
                self.found.append(value)
                return

    def __call__(self, synthesis, ws: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        self.found, self.recording = [], True
        try:
            image = synthesis(ws)
        finally:
            self.recording = False
        return image, self.found


def content_loss(a: list[torch.Tensor], b: list[torch.Tensor]) -> torch.Tensor:
    """sum_i ||a_i - b_i||^2 / N_i over paired feature maps (the report's content loss)."""
    if len(a) != len(b) or not a:
        raise ValueError(f"content loss needs paired, non-empty feature lists, got {len(a)} and {len(b)}")
    return sum(F.mse_loss(x.float(), y.float()) for x, y in zip(a, b))


def load_frozen_generator(path: str | Path, device: str | torch.device):
    """The trained StyleGAN2 sampler at ``path``, its networks frozen (no gradients into G)."""
    path = Path(path)
    sampler = load_trained(path, device)
    needed = ("mapping", "synthesis", "w_avg", "num_ws", "w_dim", "z_dim", "generator")
    missing = [name for name in needed if not hasattr(sampler, name)]
    if missing:
        raise InputDataError(path, f"is not a StyleGAN2 generator export (lacks {missing})")
    sampler.generator.eval().requires_grad_(False)
    return sampler


class StyleGAN2Encoder(GANModel):
    """CRG-style encoder of a frozen StyleGAN2 generator: two updates per step (see the module)."""

    name = "stylegan2_encoder"
    task = "encoding"
    inputs = (DataInput("images"),)
    loss_kinds = {**{f"syn_{term}": "encoder_synthetic" for term in ("total", "w_l1", "l2", "ssim", "content")},
                  **{f"real_{term}": "encoder_real" for term in ("total", "l2", "ssim", "content")}}

    def __init__(self, config: Mapping[str, Any], weights_dir: Path | None, seed: int,
                 image_size: tuple[int, int] | None = None, generator: Any = None):
        """``generator``: an already loaded G (tests); otherwise ``config["generator"]`` is loaded."""
        super().__init__()
        cfg = self.config = self.resolve_config(config)
        if generator is None:
            if not cfg["generator"]:
                raise ConfigError("model.generator must name the trained StyleGAN2 model.pt")
            generator = load_frozen_generator(cfg["generator"], "cpu")
        self.G = generator
        size = tuple(image_size) if image_size is not None else tuple(generator.image_size)
        if tuple(size) != tuple(generator.image_size):
            raise ConfigError(f"the encoder trains on {size[0]}x{size[1]} images but G makes "
                              f"{generator.image_size[0]}x{generator.image_size[1]}: set train.image_size")
        self.image_size = int(size[0])
        self.E = ResNetEncoder(self.image_size, int(generator.w_dim), int(generator.num_ws),
                               torch.as_tensor(generator.w_avg).cpu(), cfg["latent_space"], cfg["width"],
                               cfg["max_width"], cfg["n_stages"])
        # G's parameters stay outside this module (not checkpointed, not moved by .to()): they are frozen.
        self._generator_module = [generator.generator]
        self.g_features = SynthesisFeatures(generator.generator)
        self.z_rng = torch.Generator().manual_seed(int(seed))
        self.pretrained = {"E": "random", "G": f"frozen: {cfg['generator'] or 'given'}"}
        self.network_names = ("E",)
        self.optimizers = {"E": torch.optim.Adam(self.E.parameters(), lr=cfg["lr"], betas=tuple(cfg["adam_betas"]))}
        # Two updates of the one optimiser per engine step: the synthetic cycle, then the real one.
        self.phases = {"synthetic": 1, "real": 1}
        self.loss_names = ("syn_total", "syn_w_l1", "syn_l2", "syn_ssim", "syn_content",
                           "real_total", "real_l2", "real_ssim", "real_content")
        self.visual_names = (("real", "real_reconstruction"), ("synthetic", "synthetic_reconstruction"))

    @classmethod
    def resolve_config(cls, overrides: Mapping[str, Any] | None) -> dict[str, Any]:
        cfg = merge_knobs(ENCODER_KNOBS, overrides, "model")
        if cfg["latent_space"] not in LATENT_SPACES:
            raise ConfigError(f"model.latent_space must be one of {LATENT_SPACES}, got {cfg['latent_space']!r}")
        for key in ("width", "max_width", "n_stages"):
            if cfg[key] < 1:
                raise ConfigError(f"model.{key} must be >= 1, got {cfg[key]}")
        if cfg["ssim_kernel_size"] < 3 or cfg["ssim_kernel_size"] % 2 == 0:
            raise ConfigError(f"model.ssim_kernel_size must be odd and >= 3, got {cfg['ssim_kernel_size']}")
        if cfg["generator"] and cfg["generator_sha256"] is None and Path(cfg["generator"]).is_file():
            from pipeline.tracking import file_sha256

            cfg["generator_sha256"] = file_sha256(Path(cfg["generator"]))
        return cfg

    @property
    def size_multiple(self) -> int:
        return 2 ** self.config["n_stages"]

    def required_image_size(self) -> tuple[int, int] | None:
        return (self.image_size, self.image_size)

    def _apply(self, fn, *args, **kwargs):
        # Move G with the encoder (device changes), without registering it as a submodule.
        result = super()._apply(fn, *args, **kwargs)
        for module in self._generator_module:
            module._apply(fn, *args, **kwargs)
        return result

    def _ssim(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return ssim_loss(x, y, self.config["ssim_kernel_size"], self.config["ssim_sigma"])

    def _draw_w(self, n: int, device: torch.device) -> torch.Tensor:
        z = torch.randn(n, int(self.G.z_dim), generator=self.z_rng).to(device)
        with torch.no_grad():
            return self.G.mapping(z, truncation_psi=self.config["truncation_psi"])

    def synthetic_cycle(self, n: int, device: torch.device) -> dict[str, torch.Tensor]:
        cfg = self.config
        w = self._draw_w(n, device)
        with torch.no_grad():
            x, feats = self.g_features(self.G.synthesis, w)
        w_rec = self.E(x)
        x_rec, feats_rec = self.g_features(self.G.synthesis, w_rec)
        terms = {"syn_w_l1": F.l1_loss(w_rec, w), "syn_l2": F.mse_loss(x_rec, x), "syn_ssim": self._ssim(x_rec, x),
                 "syn_content": content_loss(feats_rec, [f.detach() for f in feats])}
        total = (cfg["lambda_w_l1"] * terms["syn_w_l1"] + cfg["lambda_image_l2"] * terms["syn_l2"]
                 + cfg["lambda_ssim"] * terms["syn_ssim"] + cfg["lambda_content_g"] * terms["syn_content"])
        return {"syn_total": total, **terms}

    def real_cycle(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        cfg = self.config
        w_rec, feats = self.E(images, return_features=True)
        rec = self.G.synthesis(w_rec)
        feats_rec = self.E.features(rec)
        terms = {"real_l2": F.mse_loss(rec, images), "real_ssim": self._ssim(rec, images),
                 "real_content": content_loss(feats_rec, [f.detach() for f in feats])}
        total = (cfg["lambda_image_l2"] * terms["real_l2"] + cfg["lambda_ssim"] * terms["real_ssim"]
                 + cfg["lambda_content_e"] * terms["real_content"])
        return {"real_total": total, **terms}

    def train_phase(self, phase: str, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        images = batch["images"]
        with self.autocast():
            losses = (self.synthetic_cycle(len(images), images.device) if phase == "synthetic"
                      else self.real_cycle(images))
        total = losses["syn_total" if phase == "synthetic" else "real_total"]
        self.optimizer_step("E", total)
        return {k: v.detach() for k, v in losses.items()}

    @torch.no_grad()
    def compute_visuals(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        images = batch["images"]
        w = self.G.mapping(torch.randn(len(images), int(self.G.z_dim), generator=torch.Generator().manual_seed(0))
                           .to(images.device))
        synthetic = self.G.synthesis(w)
        return {"real": images, "real_reconstruction": self.G.synthesis(self.E(images)),
                "synthetic": synthetic, "synthetic_reconstruction": self.G.synthesis(self.E(synthetic))}

    def extra_state(self) -> dict[str, Any]:
        return {"z_rng": self.z_rng.get_state()}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        self.z_rng.set_state(state["z_rng"])

    def export(self) -> dict[str, Any]:
        return {"format": EXPORT_FORMAT, "model": self.name, "config": self.config,
                "w_dim": self.E.w_dim, "num_ws": self.E.num_ws,
                "networks": {"E": {k: v.detach().cpu() for k, v in self.E.state_dict().items()}}}

    @classmethod
    def load_export(cls, payload: dict[str, Any], device: str | torch.device) -> "TrainedEncoder":
        cfg = cls.resolve_config(payload["config"])
        size = int(payload["image_size"][0])
        state = payload["networks"]["E"]
        encoder = ResNetEncoder(size, int(payload["w_dim"]), int(payload["num_ws"]), state["w_avg"].view(-1),
                                cfg["latent_space"], cfg["width"], cfg["max_width"], cfg["n_stages"])
        encoder.load_state_dict(state)
        return TrainedEncoder(encoder.to(device).eval().requires_grad_(False), cfg, (size, size), torch.device(device))


class TrainedEncoder:
    """Inference with a trained encoder: ``encode`` images in [0, 1] to codes (n, num_ws, w_dim)."""

    task = "encoding"

    def __init__(self, encoder: ResNetEncoder, config: dict[str, Any], image_size: tuple[int, int],
                 device: torch.device):
        self.encoder, self.config, self.image_size, self.device = encoder, config, image_size, device
        self.generator_path, self.generator_sha256 = config["generator"], config["generator_sha256"]

    @torch.no_grad()
    def encode(self, images: np.ndarray, batch_size: int = 64) -> torch.Tensor:
        images = np.asarray(images, np.float32)
        if images.ndim != 3 or tuple(images.shape[1:]) != tuple(self.image_size):
            raise ValueError(f"the encoder takes (n, {self.image_size[0]}, {self.image_size[1]}) images, "
                             f"got {images.shape}")
        out = []
        for start in range(0, len(images), batch_size):
            x = torch.from_numpy(images[start:start + batch_size]).to(self.device)[:, None] * 2 - 1
            out.append(self.encoder(x).cpu())
        return torch.cat(out) if out else torch.zeros(0, self.encoder.num_ws, self.encoder.w_dim)
