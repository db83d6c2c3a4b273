"""Differentiable augmentation of what the discriminator sees, for GANs on small data sets.

Both kinds are applied to real and generated images alike, in D's and G's passes, and are
differentiable, so G learns the un-augmented distribution (augmentations that "leak" would
need a probability near 1 to show up in G's output).

- ``ada`` (Karras et al. 2020, adaptive discriminator augmentation): each transform is applied
  to each image independently with probability p; p is adapted during training
  (``AdaptiveStrength``) so that the overfitting heuristic r_t = E[sign(D(real))] stays near a
  target (0.6). The pipeline here is a small subset of ADA's "bgc": integer translation
  (up to ``translate_fraction`` of the side), isotropic scaling (log2-normal), rotation
  (uniform angle), brightness (additive, normal) and contrast (multiplicative, log2-normal,
  around each image's mean). One affine resampling (bilinear, reflected borders) does the
  geometry. X-flip is off by default: in a chest X-ray the heart is on the left, and a
  flipped one (dextrocardia) must not leak into G.
- ``diffaugment`` (Zhao et al. 2020): always applied: colour (brightness, contrast), translation
  by up to 1/8 of the side (zero fill) and cutout of a square half the side; no learned p.

All random draws come from the caller's generator, so training stays reproducible.
"""
from __future__ import annotations

import math
from typing import Any, Mapping

import torch
import torch.nn.functional as F

AUGMENT_KINDS = ("ada", "diffaugment", "none")


def _uniform(n: int, generator: torch.Generator, device: torch.device) -> torch.Tensor:
    return torch.rand(n, generator=generator, device=generator.device).to(device)


def _normal(n: int, generator: torch.Generator, device: torch.device) -> torch.Tensor:
    return torch.randn(n, generator=generator, device=generator.device).to(device)


def ada_augment(images: torch.Tensor, p: float | torch.Tensor, knobs: Mapping[str, Any],
                generator: torch.Generator) -> torch.Tensor:
    """ADA's pipeline on (N, C, H, W) images in [-1, 1]: each transform applied to each image with
    probability ``p`` (``knobs``: xflip, translate_fraction, scale_std, rotate, brightness_std,
    contrast_std). ``p`` may be a 0-dim tensor on the images' device (``AdaptiveStrength.p``):
    nothing is then read back to the host, every draw is made, and an image no transform was
    chosen for comes back unchanged, bit for bit."""
    if not isinstance(p, torch.Tensor) and p <= 0:
        return images
    n, _, height, width = images.shape
    device, dtype = images.device, images.dtype

    def chosen() -> torch.Tensor:
        return _uniform(n, generator, device) < p

    # Geometry as one 2x3 affine map of normalised coordinates (output -> input).
    eye = torch.eye(2, device=device).expand(n, 2, 2)
    flip = torch.ones(n, device=device)
    if knobs["xflip"]:
        flip = torch.where(chosen() & (_uniform(n, generator, device) < 0.5), -flip, flip)
    scale = torch.ones(n, device=device)
    if knobs["scale_std"] > 0:
        scale = torch.where(chosen(), torch.exp2(_normal(n, generator, device) * knobs["scale_std"]), scale)
    angle = torch.zeros(n, device=device)
    if knobs["rotate"]:
        angle = torch.where(chosen(), (_uniform(n, generator, device) * 2 - 1) * math.pi, angle)
    shift = torch.zeros(n, 2, device=device)
    if knobs["translate_fraction"] > 0:
        pixels = torch.stack([((_uniform(n, generator, device) * 2 - 1) * knobs["translate_fraction"] * size).round()
                              for size in (width, height)], dim=1)
        shift = torch.where(chosen()[:, None], pixels * 2 / torch.tensor([width, height], device=device), shift)
    cos, sin = torch.cos(angle), torch.sin(angle)
    rotation = torch.stack([torch.stack([cos, -sin], 1), torch.stack([sin, cos], 1)], 1)
    linear = rotation / scale[:, None, None] @ torch.diag_embed(torch.stack([flip, torch.ones_like(flip)], 1))
    geometric = (angle != 0) | (scale != 1) | (shift != 0).any(1) | (flip != 1)
    if knobs["xflip"] or knobs["scale_std"] > 0 or knobs["rotate"] or knobs["translate_fraction"] > 0:
        # Resampled whether or not an image was chosen (no host read of the draws); the others keep their pixels.
        theta = torch.cat([torch.where(geometric[:, None, None], linear, eye), shift[..., None]], dim=2)
        grid = F.affine_grid(theta.to(dtype), list(images.shape), align_corners=False)
        moved = F.grid_sample(images, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
        images = torch.where(geometric[:, None, None, None], moved, images)
    # Colour.
    if knobs["brightness_std"] > 0:
        offset = torch.where(chosen(), _normal(n, generator, device) * knobs["brightness_std"], 0.0)
        images = images + offset.to(dtype).reshape(n, 1, 1, 1)
    if knobs["contrast_std"] > 0:
        picked = chosen()
        factor = torch.where(picked, torch.exp2(_normal(n, generator, device) * knobs["contrast_std"]), 1.0)
        mean = images.mean(dim=(1, 2, 3), keepdim=True)
        contrasted = (images - mean) * factor.to(dtype).reshape(n, 1, 1, 1) + mean
        images = torch.where(picked.reshape(n, 1, 1, 1), contrasted, images)
    return images


def diff_augment(images: torch.Tensor, knobs: Mapping[str, Any], generator: torch.Generator) -> torch.Tensor:
    """DiffAugment's colour, translation and cutout on (N, C, H, W) images in [-1, 1]."""
    n, _, height, width = images.shape
    device, dtype = images.device, images.dtype
    # colour as Zhao et al.'s rand_brightness / rand_contrast on [-1, 1] images: brightness uniform +-0.5,
    # contrast x0.5..1.5 around each image's mean
    images = images + (_uniform(n, generator, device) - 0.5).to(dtype).reshape(n, 1, 1, 1)
    mean = images.mean(dim=(1, 2, 3), keepdim=True)
    images = (images - mean) * (_uniform(n, generator, device) + 0.5).to(dtype).reshape(n, 1, 1, 1) + mean
    # translation by up to translate_fraction of the side, zero (mid-grey 0) fill
    fraction = knobs["translate_fraction"]
    shift_y = ((_uniform(n, generator, device) * 2 - 1) * fraction * height).round().long()
    shift_x = ((_uniform(n, generator, device) * 2 - 1) * fraction * width).round().long()
    rows = torch.arange(height, device=device)[None, :] - shift_y[:, None]  # (N, H)
    cols = torch.arange(width, device=device)[None, :] - shift_x[:, None]
    valid = ((rows >= 0) & (rows < height))[:, :, None] & ((cols >= 0) & (cols < width))[:, None, :]
    gathered = images[torch.arange(n, device=device)[:, None, None], :, rows.clamp(0, height - 1)[:, :, None],
                      cols.clamp(0, width - 1)[:, None, :]]  # (N, H, W, C)
    images = gathered.permute(0, 3, 1, 2) * valid[:, None].to(dtype)
    # cutout: a square of cutout_fraction of the side set to 0
    cut_h, cut_w = int(height * knobs["cutout_fraction"] + 0.5), int(width * knobs["cutout_fraction"] + 0.5)
    if cut_h and cut_w:
        top = (_uniform(n, generator, device) * (height - cut_h + 1)).long().clamp(max=height - cut_h)
        left = (_uniform(n, generator, device) * (width - cut_w + 1)).long().clamp(max=width - cut_w)
        ys, xs = torch.arange(height, device=device), torch.arange(width, device=device)
        inside = (((ys[None] >= top[:, None]) & (ys[None] < (top + cut_h)[:, None]))[:, :, None]
                  & ((xs[None] >= left[:, None]) & (xs[None] < (left + cut_w)[:, None]))[:, None, :])
        images = images * (~inside)[:, None].to(dtype)
    return images


class AdaptiveStrength:
    """ADA's controller of the augmentation probability p.

    D's raw outputs on real images are accumulated (sum of signs and count); every
    ``interval`` steps p moves by sign(r_t - target) * (images seen in the interval) /
    (``speed_kimg`` * 1000), so p can go from 0 to 1 in ``speed_kimg`` thousand images, and is
    kept in [0, 1]. D overfitting (confident on real images: r_t above the target) raises p.

    ``p``, the sign sum and ``last_rt`` are 0-dim tensors that follow D's outputs to their
    device, and the adjustment is tensor arithmetic, so a training step never waits for the GPU
    (stylegan2-ada keeps p on the device too); ``state_dict`` reads them back as numbers.
    """

    def __init__(self, target: float, interval: int, speed_kimg: float, initial_p: float = 0.0):
        self.target, self.interval, self.speed_kimg = target, interval, speed_kimg
        self.p = torch.tensor(float(initial_p))
        self.sign_sum, self.count, self.steps = torch.zeros([]), 0, 0
        self.last_rt = torch.tensor(float("nan"))
        #: True right after a step that adjusted p (its r_t is ``last_rt``).
        self.adjusted = False

    def _follow(self, device: torch.device) -> None:
        if self.p.device != device:
            self.p, self.sign_sum, self.last_rt = (t.to(device) for t in (self.p, self.sign_sum, self.last_rt))

    def observe(self, real_logits: torch.Tensor) -> None:
        self._follow(real_logits.device)
        self.sign_sum = self.sign_sum + torch.sign(real_logits.detach()).float().sum()
        self.count += real_logits.numel()

    def step(self, batch_size: int) -> None:
        """Called once per training step: adjust p every ``interval`` steps."""
        self.steps += 1
        self.adjusted = False
        if self.steps % self.interval or self.count == 0:
            return
        self.last_rt = self.sign_sum / self.count
        move = torch.sign(self.last_rt - self.target) * (batch_size * self.interval / (self.speed_kimg * 1000))
        self.p = (self.p + move).clamp(0.0, 1.0)
        self.sign_sum, self.count, self.adjusted = torch.zeros_like(self.sign_sum), 0, True

    def state_dict(self) -> dict[str, Any]:
        return {"p": float(self.p), "sign_sum": float(self.sign_sum), "count": self.count, "steps": self.steps,
                "last_rt": float(self.last_rt)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        device = self.p.device
        self.p, self.sign_sum = torch.tensor(float(state["p"])), torch.tensor(float(state["sign_sum"]))
        self.last_rt = torch.tensor(float(state["last_rt"]))
        self.count, self.steps = int(state["count"]), int(state["steps"])
        self._follow(device)
