"""CycleGAN (Zhu et al. 2017) for two unpaired image domains a and b.

Two presets, every knob of which can be overridden:
  - ``unet_resnet18`` (report 001, CT <-> T2 MRI): U-Net generators with a ResNet-18 encoder,
    ResNet-18 discriminators (ImageNet-initialised when the weight file exists), BCE
    adversarial loss, SSIM + VGG-19 cycle-perceptual cycle losses, four generator updates per
    discriminator update, lr 1e-4 (G) / 1e-3 (D).
  - ``resnet9_patchgan`` (the classic CycleGAN, report 000): ResNet 9-block generators,
    70x70 PatchGAN discriminators, LSGAN, L1 cycle loss x10, identity loss, a 50-image
    history pool, Adam 2e-4 (the engine's LR schedule: constant, then linear decay).
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
import torch.nn.functional as F

from pipeline.errors import ConfigError
from pipeline.models import EXPORT_FORMAT, DataInput, GANModel, frozen, merge_knobs
from pipeline.models.losses import (
    ADVERSARIAL_LOSSES, VGGPerceptualLoss, adversarial_loss, decision_threshold, gradient_penalty, ssim_loss)
from pipeline.models.networks import (
    VGG19_WEIGHTS_FILE, build_discriminator, build_generator, imagenet_weight_file)

#: Knobs shared by both presets (network widths, loss details).
COMMON_KNOBS: dict[str, Any] = {
    "variant": "unet_resnet18",       # preset the other defaults come from
    "decoder_channels": [256, 128, 64, 32, 16],  # U-Net decoder widths, deepest first
    "ngf": 64,                        # ResNet-9 generator base width
    "n_res_blocks": 9,                # residual blocks in the ResNet generator
    "ndf": 64,                        # PatchGAN base width
    "n_patch_layers": 3,              # PatchGAN strided layers (3 -> 70x70 receptive field)
    "init_std": 0.02,                 # N(0, std) init of ResNet-9 / PatchGAN convs
    "lambda_adv": 1.0,                # weight of each generator's adversarial loss
    "perceptual_layers": ["relu1_2", "relu2_2", "relu3_2"],  # VGG-19 layers of the cycle-perceptual loss
    "perceptual_layer_weights": [1.0, 1.0, 1.0],             # one weight per layer
    "ssim_kernel_size": 11,           # Gaussian SSIM window size
    "ssim_sigma": 1.5,                # Gaussian SSIM window sigma
    "gp_weight": 10.0,                # WGAN-GP penalty weight (wgan_gp only)
    "adam_betas": [0.5, 0.999],       # Adam betas of both optimisers
}

VARIANTS: dict[str, dict[str, Any]] = {
    "unet_resnet18": {
        "generator": "unet_resnet18", "discriminator": "resnet18", "pretrained": "imagenet",
        "adversarial_loss": "bce", "lambda_cycle_l1": 0.0, "lambda_cycle_ssim": 1.0,
        "lambda_cycle_perceptual": 1.0, "lambda_identity": 0.0, "pool_size": 0,
        "g_steps_per_d_step": 4, "lr_g": 1e-4, "lr_d": 1e-3,
    },
    "resnet9_patchgan": {
        "generator": "resnet9", "discriminator": "patchgan", "pretrained": "none",
        "adversarial_loss": "lsgan", "lambda_cycle_l1": 10.0, "lambda_cycle_ssim": 0.0,
        "lambda_cycle_perceptual": 0.0, "lambda_identity": 5.0, "pool_size": 50,
        "g_steps_per_d_step": 1, "lr_g": 2e-4, "lr_d": 2e-4,
    },
}
DIRECTIONS = {"a_to_b": "G_ab", "b_to_a": "G_ba"}
log = logging.getLogger(__name__)


class ImagePool:
    """History of generated images (Shrivastava et al. 2017) shown to the discriminator.

    Until full, new fakes are stored and passed through; then each fake is, with probability
    1/2, swapped for a stored one. Vectorised: the swapped slots of one batch are distinct.
    ``generator`` lives on the images' device, so a query never waits on a host transfer.
    """

    def __init__(self, size: int, generator: torch.Generator):
        self.size = size
        self.generator = generator
        self.images: torch.Tensor | None = None
        self.count = 0

    def query(self, fakes: torch.Tensor) -> torch.Tensor:
        if self.size == 0:
            return fakes
        if self.images is None:
            self.images = fakes.new_zeros((self.size, *fakes.shape[1:]))
        n_fill = min(self.size - self.count, len(fakes))
        self.images[self.count:self.count + n_fill] = fakes[:n_fill]
        self.count += n_fill
        rest = fakes[n_fill:]
        if len(rest) == 0:
            return fakes
        n_slots = min(len(rest), self.size)
        device = self.generator.device
        swap = torch.rand(len(rest), generator=self.generator, device=device) < 0.5
        swap[n_slots:] = False
        slots = torch.zeros(len(rest), dtype=torch.long, device=device)
        slots[:n_slots] = torch.randperm(self.size, generator=self.generator, device=device)[:n_slots]
        swap, slots = swap.to(fakes.device), slots.to(fakes.device)
        shown = torch.where(swap.view(-1, 1, 1, 1), self.images[slots], rest)
        # Only the first n_slots fakes may swap, and their slots are distinct: a masked write
        # without boolean indexing (which would make the host wait for the device).
        kept = slots[:n_slots]
        self.images[kept] = torch.where(swap[:n_slots].view(-1, 1, 1, 1), rest[:n_slots], self.images[kept])
        return torch.cat([fakes[:n_fill], shown])

    def state(self) -> dict[str, Any]:
        return {"images": self.images, "count": self.count}

    def load_state(self, state: dict[str, Any], device: torch.device) -> None:
        images = state["images"]
        self.images = None if images is None else images.to(device)
        self.count = int(state["count"])


class CycleGAN(GANModel):
    """Two generators (G_ab: a -> b, G_ba: b -> a) and two discriminators (D_a, D_b)."""

    name = "cyclegan"
    task = "translation"
    #: Two unpaired image sets, each drawn with its own index.
    inputs = (DataInput("a"), DataInput("b"))
    loss_kinds = {
        **{name: "generator" for name in ("G_ab_adv", "G_ba_adv", "G_total")},
        **{f"{term}_{d}": "generator" for term in ("cycle_l1", "cycle_ssim", "cycle_perceptual", "identity")
           for d in ("a", "b")},
        **{name: "discriminator" for name in ("D_a", "D_b", "gp_a", "gp_b")},
        "D_a_accuracy": "discriminator_output", "D_b_accuracy": "discriminator_output",
    }
    domains = ("a", "b")

    def __init__(self, config: Mapping[str, Any], weights_dir: Path | None, seed: int,
                 image_size: tuple[int, int] | None = None):
        """``image_size`` (the training size) is not needed: the networks take any multiple of
        ``size_multiple``."""
        super().__init__()
        cfg = self.config = self.resolve_config(config)
        self.seed = seed
        self.rng = torch.Generator().manual_seed(seed)
        nets = {}
        for name in ("G_ab", "G_ba"):
            nets[name], self.pretrained[name] = build_generator(
                cfg["generator"], decoder_channels=cfg["decoder_channels"], ngf=cfg["ngf"],
                n_res_blocks=cfg["n_res_blocks"], init_std=cfg["init_std"], pretrained=cfg["pretrained"],
                weights_dir=weights_dir)
        for name in ("D_a", "D_b"):
            nets[name], self.pretrained[name] = build_discriminator(
                cfg["discriminator"], ndf=cfg["ndf"], n_patch_layers=cfg["n_patch_layers"],
                init_std=cfg["init_std"], pretrained=cfg["pretrained"], weights_dir=weights_dir)
        self.G_ab, self.G_ba, self.D_a, self.D_b = nets["G_ab"], nets["G_ba"], nets["D_a"], nets["D_b"]
        self.network_names = ("G_ab", "G_ba", "D_a", "D_b")
        #: Whether one call may serve two batches: true when no network normalises over the batch
        #: (instance norm, the classic CycleGAN), so stacking images along the batch changes
        #: nothing but float rounding. Then each generator runs its translation and identity
        #: passes as one call and each discriminator scores real and fake images in one call:
        #: 4 generator and 2 discriminator calls per step instead of 6 and 4, which matters at
        #: small batches, where a GPU step is bound by kernel launches. BatchNorm networks
        #: (the U-Net/ResNet-18 variant) keep separate calls, as their statistics would mix.
        self.fused_calls = not any(_normalises_over_batch(net) for net in nets.values())
        self.perceptual = None
        if cfg["lambda_cycle_perceptual"] > 0:
            vgg_file, self.pretrained["vgg19_perceptual"] = imagenet_weight_file(
                weights_dir, VGG19_WEIGHTS_FILE, cfg["pretrained"])
            self.perceptual = VGGPerceptualLoss(cfg["perceptual_layers"], cfg["perceptual_layer_weights"], vgg_file)
        betas = tuple(cfg["adam_betas"])
        # fused: one vectorised pass over all parameters (CPU and CUDA); on the 2-core CPU a step
        # of the two U-Net generators' Adam takes 21 ms instead of 100 ms.
        self.optimizers = {
            "G": torch.optim.Adam([*self.G_ab.parameters(), *self.G_ba.parameters()], lr=cfg["lr_g"], betas=betas,
                                  fused=True),
            "D": torch.optim.Adam([*self.D_a.parameters(), *self.D_b.parameters()], lr=cfg["lr_d"], betas=betas,
                                  fused=True),
        }
        self.phases = {"G": 1, "D": cfg["g_steps_per_d_step"]}
        self.pools = {d: ImagePool(cfg["pool_size"], self.rng) for d in self.domains}
        self.loss_names = self._loss_names()
        self.visual_names = (("a", "a->b", "a->b->a"), ("b", "b->a", "b->a->b"))
        self._fakes: dict[str, torch.Tensor] = {}

    @classmethod
    def resolve_config(cls, overrides: Mapping[str, Any] | None) -> dict[str, Any]:
        """Preset of ``overrides['variant']`` (default unet_resnet18) updated by the other keys."""
        variant = (overrides or {}).get("variant", COMMON_KNOBS["variant"])
        if variant not in VARIANTS:
            raise ConfigError(f"model.variant must be one of {sorted(VARIANTS)}, got {variant!r}")
        cfg = merge_knobs({**COMMON_KNOBS, **VARIANTS[variant]}, overrides, "model")
        if cfg["adversarial_loss"] not in ADVERSARIAL_LOSSES:
            raise ConfigError(f"model.adversarial_loss must be one of {ADVERSARIAL_LOSSES}, "
                              f"got {cfg['adversarial_loss']!r}")
        if cfg["g_steps_per_d_step"] < 1 or cfg["pool_size"] < 0:
            raise ConfigError("model.g_steps_per_d_step must be >= 1 and model.pool_size >= 0")
        if len(cfg["adam_betas"]) != 2:
            raise ConfigError(f"model.adam_betas needs two values, got {cfg['adam_betas']}")
        return cfg

    def loss_networks(self) -> dict[str, torch.nn.Module]:
        return {} if self.perceptual is None else {"vgg19_perceptual": self.perceptual}

    @property
    def size_multiple(self) -> int:
        return int(np.lcm.reduce([net.size_multiple for net in self.networks().values()]))

    def _loss_names(self) -> tuple[str, ...]:
        cfg = self.config
        names = ["G_ab_adv", "G_ba_adv"]
        for term in ("l1", "ssim", "perceptual"):
            if cfg[f"lambda_cycle_{term}"] > 0:
                names += [f"cycle_{term}_a", f"cycle_{term}_b"]
        if cfg["lambda_identity"] > 0:
            names += ["identity_a", "identity_b"]
        names += ["G_total", "D_a", "D_b", "D_a_accuracy", "D_b_accuracy"]
        if cfg["adversarial_loss"] == "wgan_gp":
            names += ["gp_a", "gp_b"]
        return tuple(names)

    def _use_rng_on(self, device: torch.device) -> None:
        """Move the pool / penalty generator to the training device on first use (restarting from
        the seed there), so its draws need no host round trip; on CPU nothing changes."""
        if self.rng.device != device:
            self.rng = torch.Generator(device).manual_seed(self.seed)
            for pool in self.pools.values():
                pool.generator = self.rng

    def train_phase(self, phase: str, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        self._use_rng_on(batch["a"].device)
        if phase == "G":
            return self._generator_step(batch["a"], batch["b"])
        if phase == "D":
            return self._discriminator_step(batch["a"], batch["b"])
        raise ConfigError(f"CycleGAN has phases G and D, not {phase!r}")

    def _generator_step(self, real_a: torch.Tensor, real_b: torch.Tensor) -> dict[str, torch.Tensor]:
        cfg, kind = self.config, self.config["adversarial_loss"]
        losses: dict[str, torch.Tensor] = {}
        identity = cfg["lambda_identity"] > 0
        with frozen(self.D_a, self.D_b), self.autocast():
            if identity and self.fused_calls:
                # Each generator's translation and identity passes in one call (batch-independent nets).
                fake_b, idt_b = _split_call(self.G_ab, real_a, real_b)
                fake_a, idt_a = _split_call(self.G_ba, real_b, real_a)
            else:
                fake_b, fake_a = self.G_ab(real_a), self.G_ba(real_b)
                if identity:
                    idt_a, idt_b = self.G_ba(real_a), self.G_ab(real_b)
            rec_a, rec_b = self.G_ba(fake_b), self.G_ab(fake_a)
            losses["G_ab_adv"] = adversarial_loss(kind, self.D_b(fake_b), target_is_real=True)
            losses["G_ba_adv"] = adversarial_loss(kind, self.D_a(fake_a), target_is_real=True)
            total = cfg["lambda_adv"] * (losses["G_ab_adv"] + losses["G_ba_adv"])
            for domain, real, rec in (("a", real_a, rec_a), ("b", real_b, rec_b)):
                terms = {
                    "l1": lambda: F.l1_loss(rec.float(), real.float()),
                    "ssim": lambda: ssim_loss(rec, real, cfg["ssim_kernel_size"], cfg["ssim_sigma"]),
                    "perceptual": lambda: self.perceptual(rec, real),
                }
                for term, compute in terms.items():
                    if cfg[f"lambda_cycle_{term}"] > 0:
                        losses[f"cycle_{term}_{domain}"] = value = compute()
                        total = total + cfg[f"lambda_cycle_{term}"] * value
            if identity:
                losses["identity_a"] = F.l1_loss(idt_a.float(), real_a.float())
                losses["identity_b"] = F.l1_loss(idt_b.float(), real_b.float())
                total = total + cfg["lambda_identity"] * (losses["identity_a"] + losses["identity_b"])
        self.optimizer_step("G", total)
        self._fakes = {"a": fake_a.detach(), "b": fake_b.detach()}
        losses["G_total"] = total
        return {name: value.detach() for name, value in losses.items()}

    def _discriminator_step(self, real_a: torch.Tensor, real_b: torch.Tensor) -> dict[str, torch.Tensor]:
        if not self._fakes:
            raise RuntimeError("CycleGAN's D phase needs the fakes of a G phase in the same step")
        cfg, kind = self.config, self.config["adversarial_loss"]
        threshold = decision_threshold(kind)
        losses: dict[str, torch.Tensor] = {}
        total = real_a.new_zeros((), dtype=torch.float32)
        for domain, real, critic in (("a", real_a, self.D_a), ("b", real_b, self.D_b)):
            fake = self._query_pool(domain)
            with self.autocast():
                if self.fused_calls:
                    real_out, fake_out = (out.float() for out in _split_call(critic, real, fake))
                else:
                    real_out, fake_out = critic(real).float(), critic(fake).float()
                loss = 0.5 * (adversarial_loss(kind, real_out, True) + adversarial_loss(kind, fake_out, False))
            if kind == "wgan_gp":
                losses[f"gp_{domain}"] = gp = gradient_penalty(critic, real, fake, self.rng)
                loss = loss + cfg["gp_weight"] * gp
            losses[f"D_{domain}"] = loss
            losses[f"D_{domain}_accuracy"] = 0.5 * ((real_out > threshold).float().mean()
                                                    + (fake_out < threshold).float().mean())
            total = total + loss
        self.optimizer_step("D", total)
        return {name: value.detach() for name, value in losses.items()}

    def _query_pool(self, domain: str) -> torch.Tensor:
        """This process's fakes for the discriminator, through the history pool.

        Under data-parallel training every process queries the same pool with the gathered
        global batch (same generator, same draws) and keeps its own share, so the pool behaves
        exactly as in single-process training on the global batch.
        """
        pool, fakes = self.pools[domain], self._fakes[domain]
        if pool.size == 0 or self.parallel is None or self.parallel.world_size == 1:
            return pool.query(fakes)
        return self.parallel.share(pool.query(self.parallel.gather(fakes)))

    @torch.no_grad()
    def compute_visuals(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        real_a, real_b = batch["a"], batch["b"]
        fake_b, fake_a = self.G_ab(real_a), self.G_ba(real_b)
        return {"a": real_a, "a->b": fake_b, "a->b->a": self.G_ba(fake_b),
                "b": real_b, "b->a": fake_a, "b->a->b": self.G_ab(fake_a)}

    def extra_state(self) -> dict[str, Any]:
        return {"rng": self.rng.get_state(), "rng_device": self.rng.device.type,
                "pools": {d: pool.state() for d, pool in self.pools.items()}}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        device = next(self.parameters()).device
        self._use_rng_on(device)
        if state.get("rng_device", "cpu") == device.type:
            self.rng.set_state(state["rng"])
        else:  # a CPU generator state does not fit a CUDA generator: the pool draws restart from the seed
            log.warning("checkpoint's pool generator ran on %s, this run on %s: pool draws restart from the seed",
                        state.get("rng_device", "cpu"), device.type)
        for domain, pool in self.pools.items():
            pool.load_state(state["pools"][domain], device)

    def export(self) -> dict[str, Any]:
        return {"format": EXPORT_FORMAT, "model": self.name, "config": self.config,
                "networks": {name: {k: v.detach().cpu() for k, v in getattr(self, name).state_dict().items()}
                             for name in DIRECTIONS.values()}}

    @classmethod
    def load_export(cls, payload: dict[str, Any], device: str | torch.device) -> "CycleGANTranslator":
        cfg = cls.resolve_config(payload["config"])
        generators = {}
        for name in DIRECTIONS.values():
            net, _ = build_generator(cfg["generator"], decoder_channels=cfg["decoder_channels"], ngf=cfg["ngf"],
                                     n_res_blocks=cfg["n_res_blocks"], init_std=cfg["init_std"],
                                     pretrained="none", weights_dir=None)
            net.load_state_dict(payload["networks"][name])
            generators[name] = net.to(device).eval()
        return CycleGANTranslator(generators, tuple(payload["image_size"]), torch.device(device))


class CycleGANTranslator:
    """Inference with trained CycleGAN generators on [0, 1] image arrays."""

    task = "translation"

    def __init__(self, generators: dict[str, torch.nn.Module], image_size: tuple[int, int], device: torch.device):
        self.generators = generators
        self.image_size = image_size
        self.device = device

    @torch.no_grad()
    def translate(self, direction: str, images: np.ndarray, batch_size: int = 16) -> np.ndarray:
        """Translate (N, H, W) float images in [0, 1]; returns the same shape in [0, 1].

        Images of another size than the training size are resized to it (bilinear,
        antialiased) and the result resized back, so the networks see the scale they learned.
        A training size that the generator cannot take whole (trained on random crops of it)
        is reflection-padded to the next multiple and cropped back after translation.
        """
        if direction not in DIRECTIONS:
            raise ConfigError(f"direction must be one of {sorted(DIRECTIONS)}, got {direction!r}")
        images = np.asarray(images)
        if images.ndim != 3 or not np.issubdtype(images.dtype, np.floating):
            raise ValueError(f"images must be a float (N, H, W) array, got {images.dtype} {images.shape}")
        if images.size and (not np.isfinite(images).all() or images.min() < 0 or images.max() > 1):
            raise ValueError("images must be finite and within [0, 1]")
        generator = self.generators[DIRECTIONS[direction]]
        size = images.shape[1:]
        out = []
        for start in range(0, len(images), batch_size):
            x = torch.from_numpy(np.ascontiguousarray(images[start:start + batch_size], dtype=np.float32))
            x = x.to(self.device).unsqueeze(1) * 2 - 1
            if tuple(size) != self.image_size:
                x = F.interpolate(x, size=self.image_size, mode="bilinear", antialias=True, align_corners=False)
            y = _translate_padded(generator, x)
            if tuple(size) != self.image_size:
                y = F.interpolate(y, size=size, mode="bilinear", antialias=True, align_corners=False)
            out.append(((y + 1) / 2).clamp(0, 1).squeeze(1).float().cpu().numpy())
        return np.concatenate(out) if out else np.zeros_like(images, dtype=np.float32)


def _normalises_over_batch(net: torch.nn.Module) -> bool:
    """Whether ``net`` has a layer whose training output depends on the other images of the batch."""
    return any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in net.modules())


def _split_call(net: torch.nn.Module, first: torch.Tensor, second: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``net(first), net(second)`` computed as one call on the two batches stacked."""
    out = net(torch.cat([first, second]))
    return out[:len(first)], out[len(first):]


def _translate_padded(generator: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``generator(x)`` with x reflection-padded (right, bottom) to the generator's size multiple."""
    multiple = getattr(generator, "size_multiple", 1)
    height, width = x.shape[-2:]
    pad_h, pad_w = -height % multiple, -width % multiple
    if pad_h == 0 and pad_w == 0:
        return generator(x)
    padded = F.pad(x, (0, pad_w, 0, pad_h), mode="reflect" if max(pad_h, pad_w) < min(height, width) else "replicate")
    return generator(padded)[..., :height, :width]
