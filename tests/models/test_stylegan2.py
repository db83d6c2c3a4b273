"""StyleGAN2 of report 004: the modulated convolution against an explicit per-sample
convolution, demodulation's unit variance, R1 on discriminators with known gradients, the EMA
update by hand, network shapes and w layout, and the exported sampler."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pipeline.errors import ConfigError
from pipeline.models import EXPORT_FORMAT, model_class
from pipeline.models.stylegan2 import StyleGAN2, StyleGAN2Sampler, ema_beta, lazy_adam, r1_penalty, update_ema
from pipeline.models.stylegan2_networks import (
    Discriminator, Generator, channels_at, minibatch_stddev, modulated_conv2d)

SMALL = {"z_dim": 16, "w_dim": 16, "channel_base": 256, "channel_max": 32, "n_fixed_noise": 12}


def explicit_modulated_conv(x, weight, styles, demodulate, padding):
    """One F.conv2d per sample with that sample's scaled (and demodulated) weights."""
    outputs = []
    for i in range(len(x)):
        w = weight * styles[i][None, :, None, None]
        if demodulate:
            norms = torch.sqrt((w ** 2).sum(dim=(1, 2, 3)) + 1e-8)
            w = w / norms[:, None, None, None]
        outputs.append(F.conv2d(x[i:i + 1], w, padding=padding))
    return torch.cat(outputs)


@pytest.mark.parametrize("demodulate", [True, False])
@pytest.mark.parametrize("kernel, padding", [(3, 1), (1, 0)])
def test_modulated_conv_equals_per_sample_convolution_with_scaled_weights(demodulate, kernel, padding):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 5, 7, 7, generator=g, dtype=torch.float64)
    weight = torch.randn(4, 5, kernel, kernel, generator=g, dtype=torch.float64)
    styles = torch.rand(3, 5, generator=g, dtype=torch.float64) * 2 + 0.1  # a different style per sample
    ours = modulated_conv2d(x, weight, styles, demodulate=demodulate, padding=padding)
    expected = explicit_modulated_conv(x, weight, styles, demodulate, padding)
    assert ours.shape == expected.shape == (3, 4, 7, 7)
    torch.testing.assert_close(ours, expected, rtol=1e-10, atol=1e-10)
    # the styles matter per sample: one sample's style applied to all would differ
    shared = explicit_modulated_conv(x, weight, styles[:1].expand(3, -1), demodulate, padding)
    assert not torch.allclose(ours[1:], shared[1:], atol=1e-3)


def test_demodulation_gives_unit_output_variance_for_unit_input():
    """Each output is a weighted sum of independent unit-variance inputs whose squared weights
    sum to 1 after demodulation: variance 1 whatever the weights and styles. With 4 x 30 x 30 =
    3,600 outputs per channel the sample variance has a standard error of sqrt(2/3600) = 0.024:
    every channel within 0.12 (5 standard errors), their mean within 0.03. Without demodulation
    the same styles (scale up to 3) give a variance far from 1."""
    g = torch.Generator().manual_seed(1)
    x = torch.randn(4, 64, 32, 32, generator=g, dtype=torch.float64)
    weight = torch.randn(16, 64, 3, 3, generator=g, dtype=torch.float64)
    styles = torch.rand(4, 64, generator=g, dtype=torch.float64) * 3
    out = modulated_conv2d(x, weight, styles, demodulate=True, padding=0)  # no zero padding at the borders
    per_channel = out.transpose(0, 1).reshape(16, -1).var(dim=1)
    assert (per_channel - 1).abs().max() < 0.12
    assert abs(per_channel.mean().item() - 1) < 0.03
    raw = modulated_conv2d(x, weight, styles, demodulate=False, padding=0)
    assert abs(raw.var().item() - 1) > 1


def test_r1_of_a_linear_discriminator_is_gamma_half_the_squared_weight_norm():
    """D(x) = <v, x> + b has gradient v everywhere: E||grad||^2 = ||v||^2, R1 = gamma/2 ||v||^2."""
    torch.manual_seed(0)
    linear = nn.Linear(1 * 4 * 4, 1)
    d = lambda x: linear(x.flatten(1)).flatten()  # noqa: E731
    real = torch.randn(6, 1, 4, 4)
    penalty = r1_penalty(d, real)
    by_hand = float((linear.weight.detach() ** 2).sum())
    assert penalty.item() == pytest.approx(by_hand, rel=1e-6)
    gamma = 0.1024
    assert (gamma / 2 * penalty).item() == pytest.approx(gamma / 2 * by_hand, rel=1e-6)
    # differentiable for D's update: d/dv of ||v||^2 is 2v
    (grad,) = torch.autograd.grad(penalty, linear.weight)
    torch.testing.assert_close(grad, 2 * linear.weight.detach())


def test_r1_of_a_quadratic_discriminator_is_the_mean_squared_norm_of_the_images():
    """D(x) = ||x||^2 / 2 has gradient x: E||grad||^2 = mean over images of ||x||^2."""
    real = torch.randn(5, 1, 3, 3, generator=torch.Generator().manual_seed(2))
    penalty = r1_penalty(lambda x: 0.5 * x.square().sum(dim=(1, 2, 3)), real)
    assert penalty.item() == pytest.approx(float(real.square().sum(dim=(1, 2, 3)).mean()), rel=1e-6)


def test_ema_beta_by_hand():
    assert ema_beta(32, 10**9, 10.0, None) == pytest.approx(0.5 ** (32 / 10_000))
    assert ema_beta(32, 10**9, 10.0, 0.05) == pytest.approx(0.5 ** (32 / 10_000))  # ramp-up long over
    assert ema_beta(32, 1_000, 10.0, 0.05) == pytest.approx(0.5 ** (32 / 50))  # half-life 0.05 * 1000 images
    assert ema_beta(32, 0, 10.0, 0.05) == 0.0  # first step: G_ema = G


def test_ema_update_equals_the_formula_by_hand():
    torch.manual_seed(0)
    net, ema = nn.Linear(3, 2), nn.Linear(3, 2)
    net.register_buffer("counter", torch.tensor([7.0]))
    ema.register_buffer("counter", torch.tensor([0.0]))
    before = {k: v.clone() for k, v in ema.state_dict().items()}
    update_ema(ema, net, 0.9)
    for name in ("weight", "bias"):
        expected = 0.9 * before[name] + 0.1 * getattr(net, name).detach()
        torch.testing.assert_close(getattr(ema, name), expected)
    assert ema.counter.item() == 7.0  # buffers copied, not averaged


def test_model_g_step_updates_g_ema_with_the_beta_of_the_images_shown():
    torch.manual_seed(0)
    model = StyleGAN2({**SMALL, "pl_weight": 0.0, "augment": "none", "ema_kimg": 0.1, "ema_rampup": None},
                      None, 0, (8, 8))
    batch = {"images": torch.rand(4, 1, 8, 8) * 2 - 1}
    model.train_phase("D", batch)
    model.train_phase("G", batch)
    before = {k: v.clone() for k, v in model.G_ema.named_parameters()}
    model.images_shown = 4
    model.train_phase("D", batch)
    model.train_phase("G", batch)
    beta = 0.5 ** (4 / 100)  # batch 4, half-life 0.1 kimg = 100 images, no ramp-up
    for name, p in model.G.named_parameters():
        torch.testing.assert_close(dict(model.G_ema.named_parameters())[name], beta * before[name] + (1 - beta) * p)


def test_lazy_regularisation_scales_adam_lr_and_betas():
    opt = lazy_adam([nn.Parameter(torch.zeros(1))], 0.0025, (0.0, 0.99), 16)
    c = 16 / 17
    assert opt.param_groups[0]["lr"] == pytest.approx(0.0025 * c)
    assert opt.param_groups[0]["betas"] == pytest.approx((0.0, 0.99 ** c))


def test_networks_at_128_follow_the_small_resolution_config():
    """stylegan2-ada 'auto' at 128: 12 ws, 512 channels at 4-32 px, 256 at 64, 128 at 128; one
    output channel natively."""
    assert [channels_at(r, 16384, 512) for r in (4, 8, 16, 32, 64, 128)] == [512, 512, 512, 512, 256, 128]
    g = Generator(128, 512, 512, 2, 0.01, 16384, 512)
    assert g.num_ws == 12 and len(g.mapping.layers) == 2
    assert [b.convs[-1].weight.shape[0] for b in g.synthesis.blocks] == [512, 512, 512, 512, 256, 128]
    assert all(b.to_image.weight.shape[0] == 1 for b in g.synthesis.blocks)  # one channel natively
    d = Discriminator(128, 16384, 512, 4)
    assert d.from_image.weight.shape[:2] == (128, 1)
    assert [b.conv1.weight.shape[0] for b in d.blocks] == [256, 512, 512, 512, 512]
    # forward at 128 with narrow channels (the full widths cost seconds on CPU)
    g, d = Generator(128, 32, 32, 2, 0.01, 512, 16), Discriminator(128, 512, 16, 4)
    ws = g.mapping(torch.randn(2, 32))
    assert ws.shape == (2, 12, 32)
    image = g.synthesis(ws, noise_mode="const")
    assert image.shape == (2, 1, 128, 128)
    assert d(image).shape == (2,)


def test_each_w_reaches_the_layers_it_should():
    """Changing ws[k] alone changes the image for every k (no w unused), and the first ws alone
    feed the 4x4 features."""
    torch.manual_seed(0)
    g = Generator(16, 8, 8, 1, 0.01, 64, 16)
    ws = g.mapping(torch.randn(1, 8))
    base, features = g.synthesis(ws, "const", return_features=True)
    for k in range(g.num_ws):
        changed = ws.clone()
        changed[:, k] += 1.0
        image, changed_features = g.synthesis(changed, "const", return_features=True)
        assert not torch.allclose(image, base)
        assert torch.equal(changed_features[0], features[0]) == (k >= 1)


def test_minibatch_stddev_appends_the_group_std_by_hand():
    x = torch.randn(4, 3, 2, 2, generator=torch.Generator().manual_seed(3))
    out = minibatch_stddev(x, group_size=2)
    assert out.shape == (4, 4, 2, 2)
    torch.testing.assert_close(out[:, :3], x)
    # groups are images {0, 2} and {1, 3} (strided, as StyleGAN2 reshapes)
    for members in ((0, 2), (1, 3)):
        std = x[list(members)].std(dim=0, unbiased=False).mean()
        for i in members:
            torch.testing.assert_close(out[i, 3], torch.full((2, 2), float(std)), atol=1e-6, rtol=1e-5)


def test_knobs_are_checked():
    with pytest.raises(ConfigError, match="model.augment must be one of"):
        StyleGAN2.resolve_config({"augment": "mixup"})
    with pytest.raises(ConfigError, match="style_mixing_prob must be in"):
        StyleGAN2.resolve_config({"style_mixing_prob": 1.5})
    with pytest.raises(ConfigError, match="power-of-two"):
        StyleGAN2(SMALL, None, 0, (24, 24))
    assert StyleGAN2.resolve_config({})["xflip"] is False  # chest X-rays: the heart is on one side
    assert model_class("stylegan2") is StyleGAN2


def test_export_loads_a_sampler_with_the_latent_interface(tmp_path):
    torch.manual_seed(0)
    model = StyleGAN2(SMALL, None, 0, (16, 16))
    payload = {**model.export(), "image_size": [16, 16], "task": "generation"}
    assert payload["format"] == EXPORT_FORMAT and set(payload["networks"]) == {"G_ema"}
    sampler = StyleGAN2.load_export(payload, "cpu")
    assert isinstance(sampler, StyleGAN2Sampler)
    assert (sampler.task, sampler.n_classes, sampler.image_size) == ("generation", 0, (16, 16))
    assert (sampler.z_dim, sampler.w_dim, sampler.num_ws) == (16, 16, 6) and sampler.w_avg.shape == (16,)
    images = sampler.sample(5, seed=3)
    assert images.shape == (5, 16, 16) and images.dtype == np.float32 and 0 <= images.min() <= images.max() <= 1
    np.testing.assert_array_equal(images, sampler.sample(5, seed=3))
    assert not np.array_equal(images, sampler.sample(5, seed=4))
    # same images as G_ema with the same z and constant noise
    z = sampler.noise(5, 3)
    expected = ((model.G_ema(z, noise_mode="const") + 1) / 2).clamp(0, 1)[:, 0].detach().numpy()
    np.testing.assert_allclose(images, expected, atol=1e-6)
    # synthesis is differentiable with respect to ws (for inversion); truncation pulls toward w_avg
    ws = sampler.mapping(z, truncation_psi=0.0).requires_grad_(True)
    torch.testing.assert_close(ws, sampler.w_avg.expand(5, sampler.num_ws, -1))
    image, features = sampler.synthesis_features(ws)
    assert [f.shape[-1] for f in features] == [4, 8, 16]
    (grad,) = torch.autograd.grad(image.square().sum(), ws)
    assert grad.abs().sum() > 0
    with pytest.raises(ValueError, match="unconditional"):
        sampler.sample(2, labels=np.zeros(2, dtype=np.int64))
