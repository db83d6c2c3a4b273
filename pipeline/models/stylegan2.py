"""StyleGAN2 with adaptive augmentation for one-channel images: report 004, frontal chest
X-rays (CheXpert, 128x128) generated from noise, to be inverted and edited later.

Networks: ``pipeline.models.stylegan2_networks`` (mapping, modulated / demodulated
convolutions, noise, skip generator, residual discriminator, minibatch std). Defaults are
stylegan2-ada's small-resolution ("auto") config at 128x128: z = w = 512, 2 mapping layers
(lr multiplier 0.01), channel base 16384 / max 512, Adam lr 0.0025 betas (0, 0.99), R1 gamma
0.1024 (= 0.0002 * 128^2 / 32) every 16 D steps, path length weight 2 every 4 G steps, style
mixing 0.9, G EMA half-life 10 kimg with ramp-up 0.05, minibatch-std groups of 4, ADA target
0.6 adjusted every 4 steps. The CPU profile in params.yaml shrinks all of it.

Losses, per engine step (one D update, then one G update, on the same real batch):
  - D: non-saturating logistic, softplus(D(G(z))) + softplus(-D(x)); every ``r1_interval``-th
    D step also the lazy R1 penalty gamma/2 * E||grad_x D(x)||^2 on real images, multiplied by
    the interval (so its average weight is gamma/2).
  - G: softplus(-D(G(z))); every ``pl_interval``-th G step (``pl_weight`` > 0) also the path
    length penalty (|J^T y| - a)^2, a its running mean (decay ``pl_decay``), times the interval.
  - Lazy regularisation changes Adam as the paper does: lr * c and betas ** c with
    c = interval / (interval + 1).
Style mixing: with probability ``style_mixing_prob`` a batch's ws switch to those of a second
z from a random layer on. G_ema: after every G step each G_ema parameter becomes
beta * ema + (1 - beta) * G with beta = 0.5 ** (batch / half-life in images), the half-life
ramped up as ``ema_rampup`` times the images shown so far (buffers copied).
Augmentation (``augment``): ``ada`` (p adapted by ``AdaptiveStrength``), ``diffaugment`` or
``none``, on every image D sees (``pipeline.models.augment``); no x-flip unless ``xflip``.

Progress-dependent parts (EMA ramp-up) read ``images_shown``, which the engine sets before
every step; everything else that a resume needs (the noise generator, p and its
accumulators, the path-length mean, step counters, the fixed grid noise) is extra state; G,
D and G_ema are checkpointed as networks.

History columns: ``D``, ``G``, ``d_real`` / ``d_fake`` (sigmoid of D's logits, the generation
evaluator's measure), ``r1`` (E||grad||^2 on the steps it is computed), ``pl`` (path-length
penalty), ``augment_p`` and ``ada_rt`` (the overfitting heuristic of the last adjustment).
The exported sampler is G_ema (``StyleGAN2Sampler``).
"""
from __future__ import annotations

import copy
import logging
import math
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pipeline.errors import ConfigError
from pipeline.models import EXPORT_FORMAT, DataInput, GANModel, frozen, merge_knobs
from pipeline.models.augment import AUGMENT_KINDS, AdaptiveStrength, ada_augment, diff_augment
from pipeline.models.stylegan2_networks import Discriminator, Generator

log = logging.getLogger(__name__)

STYLEGAN2_KNOBS: dict[str, Any] = {
    "z_dim": 512,                  # length of z
    "w_dim": 512,                  # length of w
    "mapping_layers": 2,           # fully connected layers of the mapping (stylegan2-ada auto: 2; config F: 8)
    "mapping_lr_multiplier": 0.01,  # learning-rate multiplier of the mapping layers
    "w_avg_beta": 0.995,           # decay of the running mean of w (truncation)
    "channel_base": 16384,         # feature maps at resolution r: channel_base / r ...
    "channel_max": 512,            # ... capped at this
    "mbstd_group_size": 4,         # images per minibatch-std group
    "lr_g": 0.0025,
    "lr_d": 0.0025,
    "adam_betas": [0.0, 0.99],
    "r1_gamma": 0.1024,            # R1 weight gamma (stylegan2-ada: 0.0002 * resolution^2 / batch)
    "r1_interval": 16,             # R1 every this many D steps (lazy regularisation)
    "pl_weight": 2.0,              # path-length regularisation weight (0: off)
    "pl_interval": 4,              # path length every this many G steps
    "pl_decay": 0.01,              # decay of the running mean path length
    "pl_batch_shrink": 2,          # the path-length batch is the batch divided by this
    "style_mixing_prob": 0.9,      # probability that a batch mixes the ws of two z
    "ema_kimg": 10.0,              # half-life of G_ema in thousands of images
    "ema_rampup": 0.05,            # half-life at most this times the images shown (null: no ramp-up)
    "augment": "ada",              # ada | diffaugment | none
    "augment_p": 0.0,              # ada: initial p; none/diffaugment: unused
    "ada_target": 0.6,             # ada: target of r_t = E[sign(D(real))]
    "ada_interval": 4,             # ada: steps between adjustments of p
    "ada_kimg": 500.0,             # ada: thousands of images for p to move by 1
    "xflip": False,                # ada: mirror left-right (off: a chest X-ray's heart is on one side)
    "translate_fraction": 0.125,   # ada / diffaugment: largest translation, fraction of the side
    "scale_std": 0.2,              # ada: std of log2 of the isotropic scale
    "rotate": True,                # ada: rotation by a uniform angle
    "brightness_std": 0.2,         # ada: std of the added brightness (images in [-1, 1])
    "contrast_std": 0.5,           # ada: std of log2 of the contrast factor
    "cutout_fraction": 0.5,        # diffaugment: side of the cut-out square, fraction of the image side
    "n_fixed_noise": 64,           # fixed z kept for the sample grids
}
#: Generated columns of the sample grid.
_GRID_COLUMNS = 3


def ema_beta(batch_size: int, images_shown: int, half_life_kimg: float, rampup: float | None) -> float:
    """G_ema's decay for one step: 0.5 ** (batch / half-life in images); with ``rampup`` the
    half-life is at most ``rampup`` times the images shown before the step (0 at the start:
    G_ema = G)."""
    half_life = half_life_kimg * 1000
    if rampup is not None:
        half_life = min(half_life, images_shown * rampup)
    return 0.5 ** (batch_size / max(half_life, 1e-8))


@torch.no_grad()
def update_ema(ema: nn.Module, net: nn.Module, beta: float) -> None:
    """ema <- beta * ema + (1 - beta) * net for parameters; buffers copied."""
    for p_ema, p in zip(ema.parameters(), net.parameters()):
        p_ema.copy_(p.detach().lerp(p_ema, beta))
    for b_ema, b in zip(ema.buffers(), net.buffers()):
        b_ema.copy_(b)


def r1_penalty(discriminator: Callable[[torch.Tensor], torch.Tensor], real: torch.Tensor) -> torch.Tensor:
    """E ||grad_x D(x)||^2 over the real images (differentiable for D's update); the R1
    regulariser is gamma / 2 times this."""
    real = real.detach().requires_grad_(True)
    (grad,) = torch.autograd.grad(discriminator(real).sum(), real, create_graph=True)
    return grad.square().sum(dim=tuple(range(1, grad.ndim))).mean()


def lazy_adam(params: Any, lr: float, betas: tuple[float, float], interval: int) -> torch.optim.Adam:
    """Adam for a network regularised every ``interval`` steps: lr * c and betas ** c with
    c = interval / (interval + 1) (Karras et al. 2020, lazy regularisation)."""
    c = interval / (interval + 1) if interval > 0 else 1.0
    return torch.optim.Adam(params, lr=lr * c, betas=(betas[0] ** c, betas[1] ** c))


class StyleGAN2(GANModel):
    """Unconditional StyleGAN2: G, D and G's moving average G_ema."""

    name = "stylegan2"
    task = "generation"
    inputs = (DataInput("images"),)

    def __init__(self, config: Mapping[str, Any], weights_dir: Path | None, seed: int,
                 image_size: tuple[int, int] | None = None):
        super().__init__()
        cfg = self.config = self.resolve_config(config)
        side = None if image_size is None else int(image_size[0])
        if side is None or image_size[1] != side or side < 8 or side & (side - 1):
            raise ConfigError(f"StyleGAN2 takes square power-of-two images of at least 8 px, got {image_size}: "
                              "set train.image_size (e.g. 32 or 128)")
        self.image_size = int(image_size[0])
        self.G = Generator(self.image_size, cfg["z_dim"], cfg["w_dim"], cfg["mapping_layers"],
                           cfg["mapping_lr_multiplier"], cfg["channel_base"], cfg["channel_max"], cfg["w_avg_beta"])
        self.D = Discriminator(self.image_size, cfg["channel_base"], cfg["channel_max"], cfg["mbstd_group_size"])
        self.G_ema = copy.deepcopy(self.G).requires_grad_(False)
        self.network_names = ("G", "D", "G_ema")
        self.pretrained = {"G": "random (equalised N(0, 1))", "D": "random (equalised N(0, 1))"}
        betas = tuple(cfg["adam_betas"])
        g_interval = cfg["pl_interval"] if cfg["pl_weight"] > 0 else 0
        d_interval = cfg["r1_interval"] if cfg["r1_gamma"] > 0 else 0
        self.optimizers = {"D": lazy_adam(self.D.parameters(), cfg["lr_d"], betas, d_interval),
                           "G": lazy_adam(self.G.parameters(), cfg["lr_g"], betas, g_interval)}
        self.phases = {"D": 1, "G": 1}
        self.seed = seed
        self.rng = torch.Generator().manual_seed(seed)
        fixed_seed = int(np.random.SeedSequence([seed, 1]).generate_state(1)[0])
        self.fixed_noise = torch.randn(cfg["n_fixed_noise"], cfg["z_dim"],
                                       generator=torch.Generator().manual_seed(fixed_seed))
        self.ada = AdaptiveStrength(cfg["ada_target"], cfg["ada_interval"], cfg["ada_kimg"], cfg["augment_p"])
        self.pl_mean = torch.zeros([])
        self.d_steps = self.g_steps = 0
        self.loss_names = ("D", "G", "d_real", "d_fake", "r1", "pl", "augment_p", "ada_rt")
        self.visual_names = (("real", *(f"generated_{i + 1}" for i in range(_GRID_COLUMNS))),)

    # -- configuration ---------------------------------------------------------------------------

    @classmethod
    def resolve_config(cls, overrides: Mapping[str, Any] | None) -> dict[str, Any]:
        cfg = merge_knobs(STYLEGAN2_KNOBS, overrides, "model")
        if cfg["augment"] not in AUGMENT_KINDS:
            raise ConfigError(f"model.augment must be one of {AUGMENT_KINDS}, got {cfg['augment']!r}")
        for key in ("z_dim", "w_dim", "mapping_layers", "channel_base", "channel_max", "mbstd_group_size",
                    "r1_interval", "pl_interval", "pl_batch_shrink", "ada_interval", "n_fixed_noise"):
            if cfg[key] < 1:
                raise ConfigError(f"model.{key} must be >= 1, got {cfg[key]}")
        for key in ("r1_gamma", "pl_weight", "ema_kimg", "scale_std", "brightness_std", "contrast_std",
                    "mapping_lr_multiplier", "lr_g", "lr_d"):
            if cfg[key] < 0:
                raise ConfigError(f"model.{key} must be >= 0, got {cfg[key]}")
        for key in ("style_mixing_prob", "augment_p", "ada_target", "w_avg_beta", "pl_decay",
                    "translate_fraction", "cutout_fraction"):
            if not 0 <= cfg[key] <= 1:
                raise ConfigError(f"model.{key} must be in [0, 1], got {cfg[key]}")
        if cfg["ada_kimg"] <= 0 or (cfg["ema_rampup"] is not None and cfg["ema_rampup"] <= 0):
            raise ConfigError("model.ada_kimg must be > 0 and model.ema_rampup > 0 or null")
        if len(cfg["adam_betas"]) != 2:
            raise ConfigError(f"model.adam_betas needs two values, got {cfg['adam_betas']}")
        return cfg

    def required_image_size(self) -> tuple[int, int]:
        return (self.image_size, self.image_size)

    # -- training --------------------------------------------------------------------------------

    def _use_rng_on(self, device: torch.device) -> None:
        """Move the noise generator to the training device on first use (restarting from the seed
        there), so its draws need no host round trip; on CPU nothing changes."""
        if self.rng.device != device:
            self.rng = torch.Generator(device).manual_seed(self.seed)

    def _randn(self, *shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=self.rng, device=self.rng.device)

    def _rand(self) -> torch.Tensor:
        return torch.rand([], generator=self.rng, device=self.rng.device)

    def _batch_size(self, n: int) -> int:
        return n * (self.parallel.world_size if self.parallel is not None else 1)

    def _generate(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(images, ws) of ``n`` fresh z, style-mixed with probability style_mixing_prob."""
        ws = self.G.mapping(self._randn(n, self.config["z_dim"]), update_w_avg=True)
        if self.config["style_mixing_prob"] > 0:
            num_ws = self.G.num_ws
            cutoff = torch.randint(1, num_ws, [], generator=self.rng, device=self.rng.device)
            cutoff = torch.where(self._rand() < self.config["style_mixing_prob"], cutoff, num_ws).to(ws.device)
            mixed = self.G.mapping(self._randn(n, self.config["z_dim"]), update_w_avg=False)
            later = (torch.arange(num_ws, device=ws.device) >= cutoff)[None, :, None]
            ws = torch.where(later, mixed, ws)
        return self.G.synthesis(ws, "random", self.rng), ws

    def augment(self, images: torch.Tensor) -> torch.Tensor:
        """What D sees of ``images``: augmented as ``augment`` says (ADA at the current p)."""
        kind = self.config["augment"]
        if kind == "ada":
            return ada_augment(images, self.ada.p, self.config, self.rng)
        if kind == "diffaugment":
            return diff_augment(images, self.config, self.rng)
        return images

    def train_phase(self, phase: str, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        real = batch["images"]
        self._use_rng_on(real.device)
        if phase == "D":
            return self._discriminator_step(real)
        if phase == "G":
            return self._generator_step(real)
        raise ConfigError(f"{self.name} has phases D and G, not {phase!r}")

    def _discriminator_step(self, real: torch.Tensor) -> dict[str, torch.Tensor]:
        cfg = self.config
        with torch.no_grad(), self.autocast():
            fake, _ = self._generate(len(real))
        with self.autocast():
            fake_logits = self.D(self.augment(fake.float())).float()
            real_logits = self.D(self.augment(real)).float()
        loss = F.softplus(fake_logits).mean() + F.softplus(-real_logits).mean()
        if cfg["augment"] == "ada":
            self.ada.observe(real_logits)
        self.d_steps += 1
        losses = {"d_real": torch.sigmoid(real_logits.detach()).mean(),
                  "d_fake": torch.sigmoid(fake_logits.detach()).mean()}
        if cfg["r1_gamma"] > 0 and self.d_steps % cfg["r1_interval"] == 0:
            r1 = r1_penalty(lambda x: self.D(self.augment(x)).float(), real)
            loss = loss + cfg["r1_gamma"] / 2 * r1 * cfg["r1_interval"]
            losses["r1"] = r1.detach()
        self.optimizer_step("D", loss)
        losses["D"] = loss.detach()
        return losses

    def _generator_step(self, real: torch.Tensor) -> dict[str, torch.Tensor]:
        cfg = self.config
        n = len(real)
        with frozen(self.D), self.autocast():
            fake, _ = self._generate(n)
            loss = F.softplus(-self.D(self.augment(fake)).float()).mean()
            self.g_steps += 1
            losses = {"G": loss.detach()}
            if cfg["pl_weight"] > 0 and self.g_steps % cfg["pl_interval"] == 0:
                penalty = self._path_length_penalty(max(1, n // cfg["pl_batch_shrink"]))
                loss = loss + penalty * cfg["pl_weight"] * cfg["pl_interval"]
                losses["pl"] = penalty.detach()
        self.optimizer_step("G", loss)
        update_ema(self.G_ema, self.G, ema_beta(self._batch_size(n), self.images_shown, cfg["ema_kimg"],
                                                cfg["ema_rampup"]))
        if cfg["augment"] == "ada":
            self.ada.step(self._batch_size(n))
        if cfg["augment"] == "ada":
            losses["augment_p"] = self.ada.p.float()
            if self.ada.adjusted:
                losses["ada_rt"] = self.ada.last_rt.float()
        else:
            losses["augment_p"] = torch.zeros([], device=real.device)
        return losses

    def _path_length_penalty(self, n: int) -> torch.Tensor:
        """(|J_w^T y| - a)^2 for y ~ N(0, I) / sqrt(pixels); a is the running mean of the lengths."""
        images, ws = self._generate(n)
        noise = self._randn(*images.shape).to(images) / math.sqrt(images.shape[2] * images.shape[3])
        (grad,) = torch.autograd.grad((images * noise).sum(), ws, create_graph=True)
        lengths = grad.float().square().sum(dim=2).mean(dim=1).sqrt()
        self.pl_mean = self.pl_mean.to(lengths.device).lerp(lengths.mean().detach(), self.config["pl_decay"])
        return (lengths - self.pl_mean).square().mean()

    # -- sample grids, state, export -------------------------------------------------------------

    @torch.no_grad()
    def compute_visuals(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        real = batch["images"]
        n = len(real)
        columns = self.visual_names[0][1:]
        if len(self.fixed_noise) < n * len(columns):
            raise ConfigError(f"model.n_fixed_noise {len(self.fixed_noise)} is too few for {n} rows x "
                              f"{len(columns)} columns of the sample grid: raise it or lower train.n_samples")
        z = self.fixed_noise[: n * len(columns)].to(real.device)
        fakes = self.G_ema(z, noise_mode="const").float().clamp(-1, 1)
        return {"real": real, **{name: fakes[i * n:(i + 1) * n] for i, name in enumerate(columns)}}

    def extra_state(self) -> dict[str, Any]:
        return {"rng": self.rng.get_state(), "rng_device": self.rng.device.type, "fixed_noise": self.fixed_noise,
                "ada": self.ada.state_dict(), "pl_mean": self.pl_mean.detach().cpu(),
                "d_steps": self.d_steps, "g_steps": self.g_steps}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        device = next(self.parameters()).device
        self._use_rng_on(device)
        if state.get("rng_device", "cpu") == device.type:
            self.rng.set_state(state["rng"])
        else:
            log.warning("checkpoint's noise generator ran on %s, this run on %s: noise draws restart from the seed",
                        state.get("rng_device", "cpu"), device.type)
        self.fixed_noise = state["fixed_noise"].cpu()
        self.ada.load_state_dict(state["ada"])
        self.pl_mean = state["pl_mean"].to(device)
        self.d_steps, self.g_steps = int(state["d_steps"]), int(state["g_steps"])

    def export(self) -> dict[str, Any]:
        return {"format": EXPORT_FORMAT, "model": self.name, "config": self.config, "n_classes": 0,
                "fixed_noise": self.fixed_noise.clone(),
                "networks": {"G_ema": {k: v.detach().cpu() for k, v in self.G_ema.state_dict().items()}}}

    @classmethod
    def load_export(cls, payload: dict[str, Any], device: str | torch.device) -> "StyleGAN2Sampler":
        cfg = cls.resolve_config(payload["config"])
        height, width = (int(v) for v in payload["image_size"])
        generator = Generator(height, cfg["z_dim"], cfg["w_dim"], cfg["mapping_layers"], cfg["mapping_lr_multiplier"],
                              cfg["channel_base"], cfg["channel_max"], cfg["w_avg_beta"])
        generator.load_state_dict(payload["networks"]["G_ema"])
        return StyleGAN2Sampler(generator.to(device).eval().requires_grad_(False), (height, width))


class StyleGAN2Sampler:
    """Inference with a trained StyleGAN2 (its G_ema): the Sampler protocol plus the latent
    spaces that inversion and editing work in.

    ``mapping(z, truncation_psi)`` -> ws (n, num_ws, w_dim); ``synthesis(ws, noise_mode)`` ->
    (n, 1, S, S) in about [-1, 1], differentiable with respect to ``ws`` (the weights are
    frozen); ``synthesis_features(ws)`` also returns each resolution's feature maps (content
    losses on G's features); ``sample`` gives (n, S, S) float32 in [0, 1], the same images for
    the same seed (z drawn on the CPU, constant noise).

    Inputs go to wherever G's weights are now (``device``), not where G was loaded: an encoder
    holding G moves it with itself (``StyleGAN2Encoder._apply``).
    """

    task = "generation"
    n_classes = 0

    def __init__(self, generator: Generator, image_size: tuple[int, int]):
        self.generator, self.image_size = generator, image_size
        self.z_dim, self.w_dim, self.num_ws = generator.z_dim, generator.w_dim, generator.num_ws

    @property
    def device(self) -> torch.device:
        """The device of G's weights."""
        return self.generator.mapping.w_avg.device

    @property
    def w_avg(self) -> torch.Tensor:
        """The running mean of w seen in training (w_dim,)."""
        return self.generator.mapping.w_avg

    def noise(self, n: int, seed: int = 0) -> torch.Tensor:
        """The (n, z_dim) z ``sample`` uses for ``seed``, drawn on the CPU (device-independent)."""
        return torch.randn(n, self.z_dim, generator=torch.Generator().manual_seed(seed))

    def mapping(self, z: torch.Tensor, truncation_psi: float = 1.0) -> torch.Tensor:
        return self.generator.mapping(z.to(self.device), truncation_psi)

    def synthesis(self, ws: torch.Tensor, noise_mode: str = "const") -> torch.Tensor:
        return self.generator.synthesis(ws.to(self.device), noise_mode)

    def synthesis_features(self, ws: torch.Tensor,
                           noise_mode: str = "const") -> tuple[torch.Tensor, list[torch.Tensor]]:
        """(images, [features at 4x4, 8x8, ..., S x S]) for ``ws``, differentiable."""
        return self.generator.synthesis(ws.to(self.device), noise_mode, return_features=True)

    @torch.no_grad()
    def generate(self, z: torch.Tensor, labels: np.ndarray | None = None, batch_size: int = 64) -> np.ndarray:
        """Images of given z (e.g. the generation evaluator's noise walk): (n, H, W) float32 in [0, 1]."""
        if labels is not None:
            raise ValueError("this generator is unconditional: labels must be None")
        out = [((self.synthesis(self.mapping(z[i:i + batch_size])).float() + 1) / 2).clamp(0, 1)[:, 0].cpu().numpy()
               for i in range(0, len(z), batch_size)]
        return np.concatenate(out).astype(np.float32, copy=False) if out else np.zeros((0, *self.image_size), np.float32)

    @torch.no_grad()
    def sample(self, n: int, labels: np.ndarray | None = None, seed: int = 0, truncation_psi: float = 1.0,
               batch_size: int = 64) -> np.ndarray:
        """``n`` generated images (n, H, W) float32 in [0, 1]; unconditional (labels must be None)."""
        if labels is not None:
            raise ValueError("this generator is unconditional: labels must be None")
        if n < 0:
            raise ValueError(f"n must be >= 0, got {n}")
        z = self.noise(n, seed)
        out = []
        for start in range(0, n, batch_size):
            images = self.synthesis(self.mapping(z[start:start + batch_size], truncation_psi)).float()
            out.append(((images + 1) / 2).clamp(0, 1)[:, 0].cpu().numpy())
        if not out:
            return np.zeros((0, *self.image_size), dtype=np.float32)
        return np.concatenate(out).astype(np.float32, copy=False)
