"""Augmentation for StyleGAN2 on small data: ADA's p follows D's overfitting, no x-flip unless
asked, each transform does what it says, and DiffAugment keeps shapes and gradients."""
from __future__ import annotations

import pytest
import torch

from pipeline.models.augment import AdaptiveStrength, ada_augment, diff_augment
from pipeline.models.stylegan2 import STYLEGAN2_KNOBS

OFF = {**STYLEGAN2_KNOBS, "xflip": False, "translate_fraction": 0.0, "scale_std": 0.0, "rotate": False,
       "brightness_std": 0.0, "contrast_std": 0.0}


def test_ada_p_rises_when_d_overfits_and_falls_otherwise():
    """Adjusted every 4 steps by sign(r_t - 0.6) * batch * 4 / (speed_kimg * 1000)."""
    ada = AdaptiveStrength(target=0.6, interval=4, speed_kimg=0.1, initial_p=0.5)
    step = 8 * 4 / 100  # batch 8, 4 steps, 100 images for p to move by 1
    for _ in range(4):  # D confident on every real image: r_t = 1 > 0.6
        ada.observe(torch.full((8,), 3.0))
        ada.step(8)
    assert float(ada.p) == pytest.approx(0.5 + step) and float(ada.last_rt) == 1.0
    for _ in range(4):  # half the outputs positive: r_t = 0, below the target
        ada.observe(torch.tensor([1.0, -1.0] * 4))
        ada.step(8)
    assert float(ada.last_rt) == 0.0 and float(ada.p) == pytest.approx(0.5)
    for _ in range(3):  # no adjustment between intervals
        ada.observe(torch.full((8,), 3.0))
        ada.step(8)
    assert float(ada.p) == pytest.approx(0.5)
    state = ada.state_dict()
    restored = AdaptiveStrength(0.6, 4, 0.1)
    restored.load_state_dict(state)
    assert restored.state_dict() == state  # p and its accumulators cross a resume
    for _ in range(100):  # p stays within [0, 1]
        ada.observe(torch.full((8,), -1.0))
        ada.step(8)
    assert float(ada.p) == 0.0


def test_ada_with_nothing_switched_on_is_the_identity_and_never_flips_by_default():
    g = torch.Generator().manual_seed(0)
    images = torch.rand(16, 1, 8, 8, generator=g) * 2 - 1
    assert torch.equal(ada_augment(images, 1.0, OFF, g), images)
    assert STYLEGAN2_KNOBS["xflip"] is False
    flipped = ada_augment(images, 1.0, {**OFF, "xflip": True}, torch.Generator().manual_seed(1))
    mirrored = [torch.allclose(out, img.flip(-1), atol=1e-5) for out, img in zip(flipped, images)]
    same = [torch.allclose(out, img, atol=1e-5) for out, img in zip(flipped, images)]
    assert all(m or s for m, s in zip(mirrored, same)) and 3 <= sum(mirrored) <= 13  # about half


def test_ada_integer_translation_moves_whole_pixels():
    images = torch.zeros(1, 1, 8, 8)
    images[0, 0, 4, 4] = 1.0
    out = ada_augment(images, 1.0, {**OFF, "translate_fraction": 0.25}, torch.Generator().manual_seed(2))
    assert out.max() == pytest.approx(1.0, abs=1e-5)  # moved, not blurred
    assert (out > 0.5).sum() == 1


def test_ada_p_zero_changes_nothing_and_brightness_shifts_the_mean():
    g = torch.Generator().manual_seed(0)
    images = torch.rand(64, 1, 8, 8, generator=g) * 2 - 1
    assert torch.equal(ada_augment(images, 0.0, STYLEGAN2_KNOBS, g), images)
    bright = ada_augment(images, 1.0, {**OFF, "brightness_std": 0.2}, g)
    shifts = (bright - images).mean(dim=(1, 2, 3))
    torch.testing.assert_close(bright - images, shifts[:, None, None, None].expand_as(images))
    assert 0.1 < shifts.std().item() < 0.3


def test_diffaugment_keeps_shape_and_lets_gradients_through():
    images = (torch.rand(4, 1, 16, 16) * 2 - 1).requires_grad_(True)
    out = diff_augment(images, STYLEGAN2_KNOBS, torch.Generator().manual_seed(0))
    assert out.shape == images.shape
    (grad,) = torch.autograd.grad(out.sum(), images)
    assert grad.abs().sum() > 0
    # cutout: a square of half the side is zeroed in every image
    assert all(int((o == 0).sum()) >= 8 * 8 for o in out.detach())


def test_diffaugment_brightness_is_zhaos_uniform_half_on_minus_one_to_one_images():
    """With translation and cut-out off and constant images, the contrast step leaves each image at
    its mean, so the output minus the input is the brightness draw: uniform over [-0.5, 0.5] (Zhao et
    al.'s rand_brightness on [-1, 1] images), a different draw per image."""
    images = torch.zeros(4000, 1, 4, 4)
    out = diff_augment(images, {"translate_fraction": 0.0, "cutout_fraction": 0.0}, torch.Generator().manual_seed(1))
    shifts = (out - images)[:, 0, 0, 0]
    assert torch.allclose(out - images, shifts[:, None, None, None].expand_as(out))
    assert -0.5 <= shifts.min().item() < -0.48 and 0.48 < shifts.max().item() <= 0.5
    assert shifts.std().item() == pytest.approx(1 / 12 ** 0.5, abs=0.01)


def test_ada_with_p_as_a_device_tensor_keeps_unchosen_images_bit_for_bit():
    """The controller's p is a 0-dim tensor (no host read in a step): at p 0 every transform is
    drawn but no image changes; at any p it augments as the float p does with the same draws."""
    images = torch.rand(32, 1, 16, 16, generator=torch.Generator().manual_seed(3)) * 2 - 1
    assert torch.equal(ada_augment(images, torch.tensor(0.0), STYLEGAN2_KNOBS, torch.Generator().manual_seed(4)),
                       images)
    as_tensor = ada_augment(images, torch.tensor(0.4), STYLEGAN2_KNOBS, torch.Generator().manual_seed(5))
    as_float = ada_augment(images, 0.4, STYLEGAN2_KNOBS, torch.Generator().manual_seed(5))
    assert torch.equal(as_tensor, as_float)
    unchanged = [torch.equal(a, b) for a, b in zip(as_tensor, images)]
    assert 0 < sum(unchanged) < len(images)  # some images had no transform drawn, some had
