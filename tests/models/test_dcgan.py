"""The DCGAN and conditional DCGAN of report 002: network shapes and layout, the critic options,
instance noise on D's inputs, and the exported sampler."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from pipeline.errors import ConfigError
from pipeline.models import load_trained, model_class
from pipeline.models.dcgan import ConditionalDCGAN, DCGAN, DCGANDiscriminator, DCGANGenerator, GANSampler, _doubling

SMALL = {"ngf": 8, "ndf": 2, "nz": 10}


@pytest.mark.parametrize("size", [64, 128])
def test_dcgan_shapes_and_layout_at_64_and_128(size):
    model = DCGAN({}, None, 0, image_size=(size, size))
    z = torch.randn(2, 100)
    fake = model.G(z)
    assert fake.shape == (2, 1, size, size)
    assert fake.abs().max() <= 1  # tanh
    assert model.D(fake).shape == (2,)
    # z of 100; transposed convs k4: one s1 to 4x4, then s2 doublings up to the size
    deconvs = [m for m in model.G.modules() if isinstance(m, nn.ConvTranspose2d)]
    assert deconvs[0].in_channels == 100 and deconvs[0].stride == (1, 1)
    assert [d.stride for d in deconvs[1:]] == [(2, 2)] * (int(np.log2(size)) - 2)
    assert all(d.kernel_size == (4, 4) for d in deconvs)
    # BatchNorm + ReLU in G but not on its output; tanh last
    g_layers = list(model.G.net)
    assert isinstance(g_layers[-1], nn.Tanh) and isinstance(g_layers[-2], nn.ConvTranspose2d)
    assert sum(isinstance(m, nn.BatchNorm2d) for m in g_layers) == len(deconvs) - 1
    # D: no normalisation on its input layer, LeakyReLU(0.2), BatchNorm in the hidden layers
    d_layers = list(model.D.net)
    assert isinstance(d_layers[0], nn.Conv2d) and isinstance(d_layers[1], nn.LeakyReLU)
    assert d_layers[1].negative_slope == 0.2
    assert sum(isinstance(m, nn.BatchNorm2d) for m in d_layers) == int(np.log2(size)) - 3
    # D's base width a quarter of G's
    assert d_layers[0].out_channels * 4 == deconvs[-1].in_channels == 64


def test_dcgan_init_is_normal_0_02():
    torch.manual_seed(0)
    model = DCGAN({}, None, 0, image_size=(64, 64))
    weights = torch.cat([m.weight.flatten() for m in model.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))])
    assert abs(weights.mean().item()) < 1e-3 and weights.std().item() == pytest.approx(0.02, rel=0.02)
    scales = torch.cat([m.weight for m in model.modules() if isinstance(m, nn.BatchNorm2d)])
    assert scales.mean().item() == pytest.approx(1.0, abs=0.01)


@pytest.mark.parametrize("size", [12, 48, 100])
def test_sizes_other_than_powers_of_two_are_refused(size):
    with pytest.raises(ConfigError, match="power-of-two"):
        DCGAN({}, None, 0, image_size=(size, size))


def test_wgan_gp_critic_has_no_batchnorm():
    model = DCGAN({**SMALL, "adversarial_loss": "wgan_gp"}, None, 0, image_size=(32, 32))
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.D.modules())
    assert any(isinstance(m, nn.GroupNorm) for m in model.D.modules())
    with pytest.raises(ConfigError, match="gradient penalty"):
        DCGAN({"adversarial_loss": "wgan_gp", "d_norm": "batch"}, None, 0, image_size=(32, 32))
    with pytest.raises(ConfigError, match="adversarial_loss"):
        DCGAN({"adversarial_loss": "lsgan"}, None, 0, image_size=(32, 32))


@pytest.mark.parametrize("loss, optimiser, lr, betas, n_critic", [
    ("bce", torch.optim.Adam, 2e-4, (0.5, 0.999), 1),        # Radford et al. (report 002)
    ("wgan_gp", torch.optim.Adam, 1e-4, (0.0, 0.9), 5),      # Gulrajani et al., algorithm 1
    ("wgan_clip", torch.optim.RMSprop, 5e-5, None, 5),       # Arjovsky et al., algorithm 1
])
def test_each_loss_trains_with_its_papers_optimiser_unless_told_otherwise(loss, optimiser, lr, betas, n_critic):
    model = DCGAN({**SMALL, "adversarial_loss": loss}, None, 0, image_size=(16, 16))
    assert model.phases == {"D": 1, "G": n_critic}
    for name in ("D", "G"):
        opt = model.optimizers[name]
        assert type(opt) is optimiser and opt.param_groups[0]["lr"] == lr
        if betas is not None:
            assert opt.param_groups[0]["betas"] == betas
    told = DCGAN({**SMALL, "adversarial_loss": loss, "optimizer": "adam", "lr_d": 3e-3, "n_critic": 2,
                  "adam_betas": [0.5, 0.9]}, None, 0, image_size=(16, 16))
    assert type(told.optimizers["D"]) is torch.optim.Adam and told.optimizers["D"].param_groups[0]["lr"] == 3e-3
    assert told.optimizers["G"].param_groups[0]["lr"] == lr and told.phases == {"D": 1, "G": 2}
    with pytest.raises(ConfigError, match="optimizer"):
        DCGAN({"optimizer": "sgd"}, None, 0, image_size=(16, 16))


def test_spectral_norm_d_has_no_batch_coupling_and_unit_spectral_norm_layers():
    model = DCGAN({**SMALL, "d_norm": "spectral"}, None, 0, image_size=(32, 32))
    assert not any(isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)) for m in model.D.modules())
    convs = [m for m in model.D.modules() if isinstance(m, nn.Conv2d)]
    assert convs and all(nn.utils.parametrize.is_parametrized(m, "weight") for m in convs)
    model.D.train()
    for _ in range(20):  # power iterations converge on the largest singular value
        model.D(torch.randn(4, 1, 32, 32))
    for conv in convs:
        sigma = torch.linalg.matrix_norm(conv.weight.detach().flatten(1), ord=2)
        assert sigma.item() == pytest.approx(1.0, abs=0.05)
    # one image's score does not depend on the others in its batch (no batch statistics)
    model.D.eval()
    images = torch.randn(4, 1, 32, 32)
    assert torch.allclose(model.D(images)[:1], model.D(images[:1]), atol=1e-5)


def test_minibatch_std_lets_d_tell_a_batch_of_one_image_from_a_varied_one():
    """With d_minibatch_std D's score of an image depends on how much its group differs (the
    signal against a G that draws one image for every z); its spread feature is the standard
    deviation over the group, computed here by hand."""
    torch.manual_seed(0)
    model = DCGAN({**SMALL, "d_norm": "spectral", "d_minibatch_std": 4}, None, 0, image_size=(32, 32))
    model.D.eval()
    image, others = torch.randn(1, 1, 32, 32), torch.randn(3, 1, 32, 32)
    same, varied = image.expand(4, -1, -1, -1), torch.cat([image, others])
    assert not torch.allclose(model.D(same)[0], model.D(varied)[0], atol=1e-4)
    features = model.D.net[:-2](varied)
    spread = model.D.net[-2](features)[:, -1]            # the added map, constant over pixels
    by_hand = features.std(dim=0, unbiased=False).mean()
    assert torch.allclose(spread, by_hand.expand_as(spread), atol=1e-4)
    assert model.D.net[-2](model.D.net[:-2](same))[:, -1].abs().max() < 1e-3   # no spread: ~0
    # off (the default): an image's score does not depend on its batchmates
    plain = DCGAN({**SMALL, "d_norm": "spectral"}, None, 0, image_size=(32, 32))
    plain.D.eval()
    assert torch.allclose(plain.D(same)[0], plain.D(varied)[0], atol=1e-5)


def test_minibatch_std_groups_a_batch_of_eight_in_fours_and_every_conditional_d_takes_it():
    """Batch 8, groups of 4: image i shares its group with the images of its parity (the strided
    grouping of stylegan2-ada's layer), each group's spread computed here by hand; and each way
    the class enters a cGAN's D works with the extra map."""
    torch.manual_seed(0)
    model = DCGAN({**SMALL, "d_norm": "spectral", "d_minibatch_std": 4}, None, 0, image_size=(32, 32))
    features = model.D.net[:-2](torch.randn(8, 1, 32, 32))
    spread = model.D.net[-2](features)[:, -1, 0, 0]
    for members in ([0, 2, 4, 6], [1, 3, 5, 7]):   # reshape(4, 2, ...): group index runs slowest
        by_hand = features[members].std(dim=0, unbiased=False).mean()
        assert torch.allclose(spread[members], by_hand.expand(4), atol=1e-4)
    assert not torch.allclose(spread[0], spread[1], atol=1e-4)
    for condition in ("image_maps", "feature_maps", "class_bias", "projection", "auxiliary"):
        knobs = {**SMALL, "d_norm": "spectral", "d_minibatch_std": 4, "d_condition": condition}
        cgan = ConditionalDCGAN(knobs, None, 0, image_size=(32, 32))
        assert cgan.D(torch.randn(8, 1, 32, 32), torch.randint(0, 2, (8,))).shape == (8,)
        classes = cgan.D.scores(torch.randn(8, 1, 32, 32), torch.randint(0, 2, (8,)))[1]
        if condition == "auxiliary":
            assert classes.shape == (8, 2)
        else:
            assert classes is None


@pytest.mark.parametrize("overrides", [{"d_minibatch_std": 1}, {"d_minibatch_std": -2},
                                       {"d_minibatch_std": 4, "adversarial_loss": "wgan_gp"}])
def test_minibatch_std_settings_that_cannot_work_are_refused(overrides):
    with pytest.raises(ConfigError, match="d_minibatch_std"):
        DCGAN({**SMALL, **overrides}, None, 0, image_size=(32, 32))


def test_n_critic_steps_d_that_many_times_per_g_step_and_clipping_bounds_the_critic():
    model = DCGAN({**SMALL, "adversarial_loss": "wgan_clip", "n_critic": 5, "clip_value": 0.01}, None, 0,
                  image_size=(16, 16))
    assert model.phases == {"D": 1, "G": 5}
    model.train_phase("D", {"images": torch.rand(4, 1, 16, 16) * 2 - 1})
    assert max(p.abs().max().item() for p in model.D.parameters()) <= 0.01


def test_instance_noise_reaches_both_d_inputs_with_the_scheduled_std():
    """With std 0.5 at epoch 0 (annealed over 2 epochs), D sees real and fake images plus noise
    of std 0.5; at epoch 1, 0.25; from epoch 2 on, the images unchanged."""
    model = DCGAN({**SMALL, "instance_noise_std": 0.5, "instance_noise_epochs": 2}, None, 0, image_size=(16, 16))
    d_inputs, g_outputs = [], []
    model.D.register_forward_pre_hook(lambda module, args: d_inputs.append(args[0].detach().clone()))
    model.G.register_forward_hook(lambda module, args, out: g_outputs.append(out.detach().float().clone()))
    real = torch.zeros(64, 1, 16, 16)
    for epoch, expected in ((0, 0.5), (1, 0.25), (2, 0.0)):
        model.start_epoch(epoch)
        d_inputs.clear()
        g_outputs.clear()
        out = model.train_phase("D", {"images": real})
        assert out["instance_noise_std"].item() == pytest.approx(expected)
        real_noise, fake_noise = d_inputs[0] - real, d_inputs[1] - g_outputs[0]
        for noise in (real_noise, fake_noise):
            assert noise.mean().item() == pytest.approx(0.0, abs=0.02)
            assert noise.std().item() == pytest.approx(expected, abs=0.02)


def test_diffaugment_reaches_every_image_d_sees_in_both_phases_and_repeats_from_the_seed():
    """With augment: diffaugment, D is shown translated, cut-out, recoloured images: real and fake in
    D's phase and fake in G's, each image its own draw; with augment: none exactly the images. Two
    models of the same seed draw the same augmentations (a resumed run repeats them)."""
    real = torch.linspace(-1, 1, 8 * 16 * 16).reshape(8, 1, 16, 16)

    def seen(augment: str, seed: int = 0) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        torch.manual_seed(seed)  # the engine seeds the weights' draw so
        model = DCGAN({**SMALL, "augment": augment}, None, seed, image_size=(16, 16))
        d_inputs, g_outputs = [], []
        model.D.register_forward_pre_hook(lambda module, args: d_inputs.append(args[0].detach().clone()))
        model.G.register_forward_hook(lambda module, args, out: g_outputs.append(out.detach().float().clone()))
        model.train_phase("D", {"images": real})
        model.train_phase("G", {"images": real})
        return d_inputs, g_outputs

    plain, plain_g = seen("none")
    assert torch.equal(plain[0], real) and torch.equal(plain[1], plain_g[0]) and torch.equal(plain[2], plain_g[1])
    augmented, augmented_g = seen("diffaugment")
    for shown, original in ((augmented[0], real), (augmented[1], augmented_g[0]), (augmented[2], augmented_g[1])):
        changed = (shown - original).abs().flatten(1).amax(1) > 1e-3
        assert changed.all(), "every image D sees is augmented"
        zeros = (shown == 0).flatten(1).float().mean(1)
        assert (zeros >= 0.25 - 1e-6).all(), "a cut-out square of half the side (a quarter of the pixels) is 0"
    cut = [tuple(torch.nonzero(image[0] == 0).min(0).values.tolist()) for image in augmented[0]]
    assert len(set(cut)) > 1, "each image its own draw (its own cut-out place)"
    again, _ = seen("diffaugment")
    assert all(torch.equal(a, b) for a, b in zip(again, augmented))
    other_seed, _ = seen("diffaugment", seed=1)
    assert not torch.equal(other_seed[0], augmented[0])


def test_diffaugment_draws_continue_from_a_checkpoint_as_in_an_unbroken_run():
    """Two D steps in one run, and one step, the checkpoint's extra state into a fresh model, one
    more step: D sees the same augmented images at the second step (the draws come from the
    checkpointed generator, not restarted from the seed)."""
    real = torch.linspace(-1, 1, 8 * 16 * 16).reshape(8, 1, 16, 16)

    def model_with_hook() -> tuple[DCGAN, list[torch.Tensor]]:
        torch.manual_seed(0)
        model = DCGAN({**SMALL, "augment": "diffaugment"}, None, 0, image_size=(16, 16))
        seen: list[torch.Tensor] = []
        model.D.register_forward_pre_hook(lambda module, args: seen.append(args[0].detach().clone()))
        return model, seen

    unbroken, seen_unbroken = model_with_hook()
    unbroken.train_phase("D", {"images": real})
    unbroken.train_phase("D", {"images": real})
    first, _ = model_with_hook()
    first.train_phase("D", {"images": real})
    resumed, seen_resumed = model_with_hook()
    resumed.load_state_dict(first.state_dict())
    for name in ("D", "G"):
        resumed.optimizers[name].load_state_dict(first.optimizers[name].state_dict())
    resumed.load_extra_state(first.extra_state())
    resumed.train_phase("D", {"images": real})
    assert torch.equal(seen_resumed[0], seen_unbroken[2]), "the real half-batch of the second step"
    fresh, seen_fresh = model_with_hook()
    fresh.train_phase("D", {"images": real})
    assert not torch.equal(seen_fresh[0], seen_unbroken[2])
    with pytest.raises(ConfigError, match="model.augment"):
        DCGAN({**SMALL, "augment": "ada"}, None, 0, image_size=(16, 16))


def test_cgan_label_enters_g_and_d():
    model = ConditionalDCGAN({**SMALL}, None, 0, image_size=(32, 32)).eval()
    assert model.G.net[0].in_channels == SMALL["nz"] + 2       # z concatenated with the one-hot label
    assert model.D.net[0].in_channels == 1 + 2                 # image concatenated with one map per class
    z = torch.randn(3, SMALL["nz"])
    healthy, bleed = model.G(z, torch.zeros(3, dtype=torch.long)), model.G(z, torch.ones(3, dtype=torch.long))
    assert not torch.allclose(healthy, bleed)
    x = torch.rand(3, 1, 32, 32)
    assert not torch.allclose(model.D(x, torch.zeros(3, dtype=torch.long)), model.D(x, torch.ones(3, dtype=torch.long)))


@pytest.mark.parametrize("condition", ["class_bias", "feature_maps", "projection"])
def test_cgan_d_conditions_other_than_image_maps_leave_the_image_alone_and_use_the_label(condition):
    model = ConditionalDCGAN({**SMALL, "d_norm": "spectral", "d_condition": condition}, None, 0,
                             image_size=(32, 32)).eval()
    assert model.D.net[0].in_channels == 1  # no constant maps beside the image
    x, healthy, bleed = torch.rand(3, 1, 32, 32), torch.zeros(3, dtype=torch.long), torch.ones(3, dtype=torch.long)
    if condition == "class_bias":  # starts at zero like a bias: without it D is the unconditional one
        with torch.no_grad():
            assert torch.allclose(model.D(x, healthy), model.D.net(x).flatten())
            nn.init.normal_(model.D.class_bias.weight)
    with torch.no_grad():
        assert not torch.allclose(model.D(x, healthy), model.D(x, bleed))
        if condition == "projection":  # the classes differ by <e_1 - e_0, features summed over space>
            features = model.D.net[:-1](x).sum(dim=(2, 3))
            embedding = model.D.embed.weight
            expected = features @ (embedding[1] - embedding[0])
            assert torch.allclose(model.D(x, bleed) - model.D(x, healthy), expected, atol=1e-5)


def _square_slices(n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Dark 16 px slices; class 1 has a bright square in the middle (a bleed's stand-in)."""
    labels = torch.randint(0, 2, (n,), generator=generator)
    images = -torch.ones(n, 1, 16, 16) + 0.1 * torch.randn(n, 1, 16, 16, generator=generator)
    images[labels == 1, :, 5:11, 5:11] = 0.8
    return images.clamp(-1, 1), labels


def test_acgan_d_sees_no_label_and_its_class_head_makes_g_draw_the_class_asked():
    """d_condition auxiliary (AC-GAN): D's real / fake output ignores the label; its class head
    learns the real labels and G, pushed by it, draws the square when asked for class 1 and not for
    class 0. With aux_class_weight 0 (the control) G's label changes nothing in the square."""
    centre_gap = {}
    for weight in (1.0, 0.0):
        torch.manual_seed(0)
        knobs = {**SMALL, "ndf": 4, "d_condition": "auxiliary", "aux_class_weight": weight}
        model = ConditionalDCGAN(knobs, None, 0, image_size=(16, 16))
        assert {"D_class", "G_class", "D_class_accuracy"} <= set(model.loss_names)
        x = torch.rand(3, 1, 16, 16)
        healthy, bleed = torch.zeros(3, dtype=torch.long), torch.ones(3, dtype=torch.long)
        with torch.no_grad():
            model.eval()
            assert torch.equal(model.D(x, healthy), model.D(x, bleed))
            assert model.D.scores(x, healthy)[1].shape == (3, 2)
        model.train()
        data = torch.Generator().manual_seed(1)
        accuracy = []
        for _ in range(150):
            images, labels = _square_slices(16, data)
            losses = model.train_phase("D", {"images": images, "images_labels": labels})
            accuracy.append(float(losses["D_class_accuracy"]))
            g_losses = model.train_phase("G", {"images": images, "images_labels": labels})
            assert set(g_losses) == {"G", "G_class"}
        model.eval()
        z = torch.randn(64, SMALL["nz"], generator=torch.Generator().manual_seed(2))
        with torch.no_grad():
            asked = [model.G(z, torch.full((64,), c, dtype=torch.long))[:, :, 5:11, 5:11].mean()
                     for c in (0, 1)]
        centre_gap[weight] = float(asked[1] - asked[0])
        if weight:
            assert np.mean(accuracy[-20:]) > 0.95
    assert centre_gap[1.0] > 0.25, centre_gap  # measured 0.36-0.51 over four seeds
    assert abs(centre_gap[0.0]) < 0.1, centre_gap  # measured -0.02-0.03


def test_unknown_d_condition_is_refused():
    with pytest.raises(ConfigError, match="d_condition"):
        ConditionalDCGAN({**SMALL, "d_condition": "maps"}, None, 0, image_size=(32, 32))
    for weight in (-1, float("nan"), float("inf")):
        with pytest.raises(ConfigError, match="aux_class_weight"):
            ConditionalDCGAN({**SMALL, "d_condition": "auxiliary", "aux_class_weight": weight}, None, 0,
                             image_size=(32, 32))


def _label_only_sampler() -> GANSampler:
    """A conditional generator whose image depends on the class alone (z weights zeroed):
    class k's image is the same for any noise, and different from the other class's."""
    torch.manual_seed(0)
    generator = DCGANGenerator(16, 4, 4, n_classes=2)
    with torch.no_grad():
        generator.net[0].weight[:4] = 0
    return GANSampler(generator.eval(), (16, 16), ["healthy", "haemorrhage"], torch.device("cpu"))


def test_sampler_passes_the_asked_classes_through():
    sampler = _label_only_sampler()
    images = sampler.sample(4, labels=np.array([0, 1, 1, 0]), seed=3)
    assert images.shape == (4, 16, 16) and images.dtype == np.float32
    assert np.array_equal(images[0], images[3]) and np.array_equal(images[1], images[2])
    assert not np.allclose(images[0], images[1])
    swapped = sampler.sample(4, labels=np.array([1, 0, 0, 1]), seed=3)
    assert np.array_equal(swapped[0], images[1]) and np.array_equal(swapped[1], images[0])


def test_sampler_needs_valid_labels_when_conditional_and_none_otherwise():
    sampler = _label_only_sampler()
    with pytest.raises(ValueError, match="conditional"):
        sampler.sample(2)
    with pytest.raises(ValueError, match=r"\[0, 2\)"):
        sampler.sample(2, labels=np.array([0, 2]))
    with pytest.raises(ValueError, match="2 integer"):
        sampler.sample(2, labels=np.array([0]))
    unconditional = GANSampler(DCGANGenerator(16, 4, 4).eval(), (16, 16), [], torch.device("cpu"))
    with pytest.raises(ValueError, match="unconditional"):
        unconditional.sample(2, labels=np.array([0, 1]))


def test_export_round_trip_gives_a_seeded_sampler(tmp_path):
    model = ConditionalDCGAN({**SMALL, "class_names": ["healthy", "haemorrhage"]}, None, 1, image_size=(32, 32))
    payload = {**model.export(), "image_size": [32, 32]}
    torch.save(payload, tmp_path / "model.pt")
    sampler = load_trained(tmp_path / "model.pt")
    assert (sampler.task, sampler.n_classes, sampler.image_size) == ("generation", 2, (32, 32))
    labels = np.array([0, 1, 0])
    first, again = sampler.sample(3, labels, seed=7), sampler.sample(3, labels, seed=7)
    assert np.array_equal(first, again) and 0 <= first.min() and first.max() <= 1
    assert not np.array_equal(first, sampler.sample(3, labels, seed=8))
    model.G.eval()
    with torch.no_grad():
        direct = (model.G(sampler.noise(3, 7), torch.from_numpy(labels)) + 1) / 2
    np.testing.assert_allclose(first, direct.clamp(0, 1)[:, 0].numpy(), atol=1e-6)


def test_registry_finds_the_generators_by_name():
    assert model_class("dcgan") is DCGAN and model_class("cgan") is ConditionalDCGAN
    assert DCGAN.task == ConditionalDCGAN.task == "generation"
    assert [s.labels for s in ConditionalDCGAN.inputs] == [True] and [s.labels for s in DCGAN.inputs] == [False]
    with pytest.raises(ConfigError, match="class_names"):
        ConditionalDCGAN({"class_names": ["one"]}, None, 0, image_size=(16, 16))
    with pytest.raises(ConfigError, match="not a known knob"):
        DCGAN({"variant": "x"}, None, 0, image_size=(16, 16))


def test_discriminator_outputs_one_score_per_image_at_any_supported_size():
    for size in (16, 32):
        assert DCGANDiscriminator(size, 4, 0, "none")(torch.rand(5, 1, size, size)).shape == (5,)


def test_a_resize_doubling_keeps_a_flat_map_flat_where_the_transposed_convolution_draws_a_checkerboard():
    """g_upsample resize (Odena et al. 2016): whatever its weights, a doubling layer maps a flat input to a
    flat output away from the border; a k4 s2 transposed convolution with the same kind of weights gives
    each pixel parity its own value, a 2x2 pattern repeated over the image."""
    torch.manual_seed(0)
    flat = torch.ones(1, 1, 8, 8)
    for upsample in ("transposed", "resize"):
        layers = nn.Sequential(*_doubling(upsample, 1, 1))
        interior = layers(flat)[0, 0, 2:-2, 2:-2].detach()
        assert interior.shape == (12, 12)
        parities = {(i, j): interior[i::2, j::2] for i in (0, 1) for j in (0, 1)}
        assert all(torch.allclose(block, block[0, 0]) for block in parities.values())  # period 2 at most
        values = torch.stack([block[0, 0] for block in parities.values()])
        assert bool(torch.allclose(values, values[0])) is (upsample == "resize"), upsample


def test_resize_generator_builds_exports_and_is_refused_when_misspelt(tmp_path):
    model = DCGAN({**SMALL, "g_upsample": "resize"}, None, 1, image_size=(32, 32))
    assert not any(isinstance(m, nn.ConvTranspose2d) for m in list(model.G.net)[1:])
    assert sum(isinstance(m, nn.Upsample) for m in model.G.net) == 3  # 4 -> 8 -> 16 -> 32
    assert model.G(torch.randn(2, 10)).shape == (2, 1, 32, 32)
    torch.save({**model.export(), "image_size": [32, 32]}, tmp_path / "model.pt")
    sampler = load_trained(tmp_path / "model.pt")  # the export carries the knob: its G has the same layers
    model.G.eval()
    with torch.no_grad():
        direct = (model.G(sampler.noise(3, 7)) + 1) / 2
    np.testing.assert_allclose(sampler.sample(3, seed=7), direct.clamp(0, 1)[:, 0].numpy(), atol=1e-6)
    with pytest.raises(ConfigError, match="g_upsample"):
        DCGAN({**SMALL, "g_upsample": "bilinear"}, None, 1, image_size=(32, 32))


def test_an_export_from_before_the_upsampling_knob_loads_with_transposed_convolutions(tmp_path):
    model = DCGAN(SMALL, None, 1, image_size=(32, 32))
    payload = {**model.export(), "image_size": [32, 32]}
    payload["config"] = {k: v for k, v in payload["config"].items() if k != "g_upsample"}
    torch.save(payload, tmp_path / "model.pt")
    sampler = load_trained(tmp_path / "model.pt")  # a resize G could not take these weights (strict load)
    model.G.eval()
    with torch.no_grad():
        direct = (model.G(sampler.noise(2, 3)) + 1) / 2
    np.testing.assert_allclose(sampler.sample(2, seed=3), direct.clamp(0, 1)[:, 0].numpy(), atol=1e-6)
