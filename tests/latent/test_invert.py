"""Latent optimisation recovers a known w of a (tiny) generator from its own image."""
from __future__ import annotations

import math

import numpy as np
import torch

from pipeline.latent.invert import DEFAULT_SETTINGS, image_loss, lr_at, noise_at, optimise_latent, w_rms_error, w_spread
from stylegan_standin import TinyStyleGAN


def _settings(**overrides):
    return {**DEFAULT_SETTINGS, "steps": 60, "lr": 0.1, **overrides}


def test_optimisation_recovers_a_known_w_better_than_the_start():
    g = TinyStyleGAN(size=16)
    z = torch.randn(6, g.z_dim, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        w_true = g.mapping(z)
        target = g.synthesis(w_true)
    start = g.w_avg.view(1, 1, -1).expand_as(w_true).clone()
    loss = image_loss("mse_ssim", 1.0, 7)
    w_hat, history = optimise_latent(g, target, start, _settings(), loss, w_spread(g, 500, 0), seed=1)
    before, after = w_rms_error(start, w_true), w_rms_error(w_hat, w_true)
    assert np.all(after < 0.5 * before), (before, after)
    assert history[-1] < 0.2 * history[0]
    with torch.no_grad():
        image_error = float(((g.synthesis(w_hat) - target) ** 2).mean())
        start_error = float(((g.synthesis(start) - target) ** 2).mean())
    assert image_error < 0.05 * start_error


def test_images_do_not_interact_when_inverted_together():
    g = TinyStyleGAN(size=16)
    z = torch.randn(3, g.z_dim, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        target = g.synthesis(g.mapping(z))
    start = g.w_avg.view(1, 1, -1).expand(3, g.num_ws, g.w_dim).clone()
    settings = _settings(steps=20, noise_start=0.0)
    loss = image_loss("mse_ssim", 1.0, 7)
    together, _ = optimise_latent(g, target, start, settings, loss, 1.0, seed=0)
    alone, _ = optimise_latent(g, target[1:2], start[1:2], settings, loss, 1.0, seed=0)
    assert torch.allclose(together[1:2], alone, atol=1e-5)


def test_w_plus_optimises_each_layer_and_w_mode_keeps_one_code():
    g = TinyStyleGAN(size=16)
    with torch.no_grad():
        target = g.synthesis(g.mapping(torch.randn(1, g.z_dim)))
    start = g.w_avg.view(1, 1, -1).expand(1, g.num_ws, g.w_dim).clone()
    loss = image_loss("mse_ssim", 1.0, 7)
    w_mode, _ = optimise_latent(g, target, start, _settings(steps=10), loss, 1.0, seed=0)
    assert torch.equal(w_mode[:, 0], w_mode[:, -1])
    plus, _ = optimise_latent(g, target, start, _settings(steps=10, latent_space="w_plus"), loss, 1.0, seed=0)
    assert not torch.equal(plus[:, 0], plus[:, -1])


def test_schedules_ramp_and_decay():
    assert lr_at(0.0, 0.1, 0.05, 0.25) == 0.0
    assert math.isclose(lr_at(0.5, 0.1, 0.05, 0.25), 0.1)
    assert math.isclose(lr_at(0.875, 0.1, 0.05, 0.25), 0.1 * (0.5 - 0.5 * math.cos(0.5 * math.pi)))
    assert math.isclose(noise_at(0.0, 2.0, 0.05, 0.75), 0.1)
    assert noise_at(0.75, 2.0, 0.05, 0.75) == 0.0 and noise_at(0.9, 2.0, 0.05, 0.75) == 0.0
