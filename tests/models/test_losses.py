"""GAN loss helpers against values computed by hand: the gradient penalty on critics whose
gradient is known, weight clipping, and the instance-noise schedule."""
from __future__ import annotations

import pytest
import torch

from pipeline.models.losses import adversarial_loss, clip_weights, gradient_penalty, instance_noise_std


def test_gradient_penalty_of_a_linear_critic_is_its_weight_norm_minus_one_squared():
    """critic(x) = <w, x> + b has gradient w at every interpolate: the penalty is (|w| - 1)^2
    whatever the mixing weights, e.g. |w| = 3 -> 4."""
    shape = (1, 4, 4)
    w = torch.zeros(shape)
    w[0, 0, 0], w[0, 1, 2] = 2.0, 1.0
    w[0, 3, 3] = 2.0  # |w| = sqrt(4 + 1 + 4) = 3
    critic = lambda x: (x * w).flatten(1).sum(1) + 0.7  # noqa: E731
    real, fake = torch.rand(5, *shape), torch.rand(5, *shape)
    penalty = gradient_penalty(critic, real, fake, torch.Generator().manual_seed(0))
    assert penalty.item() == pytest.approx(4.0, rel=1e-6)
    unit = w / 3.0
    assert gradient_penalty(lambda x: (x * unit).flatten(1).sum(1), real, fake).item() == pytest.approx(0.0, abs=1e-10)


def test_gradient_penalty_is_the_mean_over_images_of_the_per_image_term():
    """critic(x) = |x|^2 / 2 has gradient x; with real == fake every interpolate is the image
    itself, so the penalty is mean_i (|x_i| - 1)^2."""
    images = torch.zeros(3, 1, 2, 2)
    images[0, 0, 0, 0] = 3.0                    # |x| = 3 -> 4
    images[1, 0] = torch.tensor([[0.6, 0.8], [0.0, 0.0]])  # |x| = 1 -> 0
    images[2, 0, 1, 1] = -0.5                   # |x| = 0.5 -> 0.25
    critic = lambda x: 0.5 * (x ** 2).flatten(1).sum(1)  # noqa: E731
    penalty = gradient_penalty(critic, images, images.clone(), torch.Generator().manual_seed(1))
    assert penalty.item() == pytest.approx((4.0 + 0.0 + 0.25) / 3, rel=1e-6)


def test_gradient_penalty_backpropagates_into_the_critic():
    """The penalty is a loss of the critic: its gradient w.r.t. w of <w, x> is 2 (|w| - 1) w / |w|."""
    w = torch.tensor([[[[3.0, 4.0]]]], requires_grad=True)  # |w| = 5
    penalty = gradient_penalty(lambda x: (x * w).flatten(1).sum(1), torch.rand(2, 1, 1, 2), torch.rand(2, 1, 1, 2))
    penalty.backward()
    expected = 2 * (5.0 - 1.0) * torch.tensor([3.0, 4.0]) / 5.0
    assert torch.allclose(w.grad.flatten(), expected)


def test_wasserstein_losses_score_the_critic_mean():
    scores = torch.tensor([1.0, 2.0, 6.0])
    for kind in ("wgan_gp", "wgan_clip"):
        assert adversarial_loss(kind, scores, True).item() == -3.0
        assert adversarial_loss(kind, scores, False).item() == 3.0


def test_clip_weights_bounds_every_parameter():
    net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 1))
    with torch.no_grad():
        net[0].weight.fill_(0.5)
        net[1].bias.fill_(-0.2)
        net[1].weight[0, 0] = 0.003
    clip_weights(net, 0.01)
    assert all(p.abs().max() <= 0.01 for p in net.parameters())
    assert net[0].weight.eq(0.01).all() and net[1].bias.eq(-0.01).all() and net[1].weight[0, 0].item() == pytest.approx(0.003)


def test_instance_noise_anneals_linearly_to_zero():
    """std 0.2 over 4 epochs: 0.2, 0.15, 0.1, 0.05, then 0 for good."""
    assert [instance_noise_std(e, 0.2, 4) for e in range(7)] == pytest.approx([0.2, 0.15, 0.1, 0.05, 0, 0, 0])
    assert instance_noise_std(0, 0.2, 0) == 0.0  # no annealing epochs: off
    assert instance_noise_std(0, 0.0, 5) == 0.0
