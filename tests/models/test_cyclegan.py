"""CycleGAN model, its losses, the image pool and the inference wrapper."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from pipeline.errors import ConfigError, InputDataError
from pipeline.models import load_trained
from pipeline.models.cyclegan import CycleGAN, ImagePool
from pipeline.models.losses import (
    VGG19_LAYERS,
    VGGPerceptualLoss,
    _vgg19_features_up_to,
    adversarial_loss,
    gradient_penalty,
    ssim_loss,
)
from pipeline.models.networks import VGG19_WEIGHTS_FILE

@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny tensors run fastest on one thread, which also keeps parallel test runs from thrashing."""
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)


UNET_SMALL = {"decoder_channels": [16, 16, 8, 8, 8], "pretrained": "none"}
CLASSIC_SMALL = {"variant": "resnet9_patchgan", "ngf": 4, "ndf": 4, "n_res_blocks": 1}


def images(n=2, size=32, seed=0):
    return torch.rand(n, 1, size, size, generator=torch.Generator().manual_seed(seed)) * 2 - 1


# --- losses -----------------------------------------------------------------------------------


def test_ssim_loss_zero_for_identical_and_positive_otherwise():
    x, y = images(seed=1), images(seed=2)
    assert ssim_loss(x, x).item() == pytest.approx(0.0, abs=1e-6)
    assert ssim_loss(x, y).item() > 0.5  # independent noise is structurally unrelated
    x.requires_grad_(True)
    ssim_loss(x, y).backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_perceptual_loss_zero_for_identical_and_positive_otherwise():
    torch.manual_seed(0)
    loss = VGGPerceptualLoss(["relu1_2", "relu2_1"], [1.0, 0.5])
    x, y = images(seed=1), images(seed=2)
    assert loss(x, x).item() == 0.0
    assert loss(x, y).item() > 0.0


def test_perceptual_layer_table_and_bad_layers():
    assert VGG19_LAYERS[3] == "relu1_2" and VGG19_LAYERS[17] == "relu3_4" and VGG19_LAYERS[35] == "relu5_4"
    with pytest.raises(ConfigError, match="perceptual_layers"):
        VGGPerceptualLoss(["relu9_9"], [1.0])
    with pytest.raises(ConfigError, match="one weight per layer"):
        VGGPerceptualLoss(["relu1_1", "relu2_1"], [1.0])


def test_perceptual_loss_loads_vgg19_file(tmp_path):
    torch.manual_seed(5)
    state = {
        f"features.{k}": v
        for k, v in _vgg19_features_up_to(VGG19_LAYERS.index("relu2_2")).state_dict().items()
    }
    state["classifier.0.weight"] = torch.zeros(2, 2)  # deeper layers and the classifier are ignored
    torch.save(state, tmp_path / VGG19_WEIGHTS_FILE)
    loss = VGGPerceptualLoss(["relu1_2"], [1.0], tmp_path / VGG19_WEIGHTS_FILE)
    assert torch.equal(loss.features[2].weight, state["features.2.weight"])
    assert not any(p.requires_grad for p in loss.parameters())
    torch.save({"features.0.weight": torch.zeros(3)}, tmp_path / "bad.pth")
    with pytest.raises(InputDataError, match="bad.pth"):
        VGGPerceptualLoss(["relu1_2"], [1.0], tmp_path / "bad.pth")


def test_adversarial_losses_on_known_values():
    zeros, ones = torch.zeros(4, 1), torch.ones(4, 1)
    assert adversarial_loss("bce", zeros, True).item() == pytest.approx(math.log(2))
    assert adversarial_loss("bce", zeros, False).item() == pytest.approx(math.log(2))
    assert adversarial_loss("bce", torch.full((4, 1), 3.0), True).item() == pytest.approx(
        math.log1p(math.exp(-3))
    )
    assert adversarial_loss("lsgan", ones, True).item() == 0.0
    assert adversarial_loss("lsgan", torch.full((4, 1), 0.5), False).item() == pytest.approx(0.25)
    scores = torch.tensor([[1.0], [3.0]])
    assert adversarial_loss("wgan_gp", scores, True).item() == -2.0
    assert adversarial_loss("wgan_gp", scores, False).item() == 2.0
    with pytest.raises(ConfigError):
        adversarial_loss("hinge", zeros, True)


def test_gradient_penalty_of_linear_critics():
    real, fake = images(4, 8, seed=1), images(4, 8, seed=2)
    direction = torch.randn(64, generator=torch.Generator().manual_seed(3))
    unit = direction / direction.norm()

    def critic(w):
        return lambda x: x.flatten(1) @ w

    rng = torch.Generator().manual_seed(0)
    assert gradient_penalty(critic(unit), real, fake, rng).item() == pytest.approx(0.0, abs=1e-10)
    assert gradient_penalty(critic(2 * unit), real, fake, rng).item() == pytest.approx(1.0, abs=1e-5)


# --- configuration ----------------------------------------------------------------------------


def test_presets_and_overrides():
    report = CycleGAN.resolve_config({})
    assert (report["generator"], report["discriminator"], report["adversarial_loss"]) == (
        "unet_resnet18",
        "resnet18",
        "bce",
    )
    assert (report["g_steps_per_d_step"], report["lr_g"], report["lr_d"]) == (4, 1e-4, 1e-3)
    classic = CycleGAN.resolve_config({"variant": "resnet9_patchgan", "lambda_cycle_l1": 7})
    assert (classic["adversarial_loss"], classic["pool_size"], classic["lambda_cycle_l1"]) == ("lsgan", 50, 7)
    with pytest.raises(ConfigError, match="model.lr_gen is not a known knob"):
        CycleGAN.resolve_config({"lr_gen": 1e-4})
    with pytest.raises(ConfigError, match="model.lr_g must be float"):
        CycleGAN.resolve_config({"lr_g": "fast"})
    with pytest.raises(ConfigError, match="variant"):
        CycleGAN.resolve_config({"variant": "pix2pix"})


def test_loss_names_follow_the_enabled_terms():
    model = CycleGAN({**CLASSIC_SMALL, "adversarial_loss": "wgan_gp"}, None, seed=0)
    assert model.loss_names == (
        "G_ab_adv",
        "G_ba_adv",
        "cycle_l1_a",
        "cycle_l1_b",
        "identity_a",
        "identity_b",
        "G_total",
        "D_a",
        "D_b",
        "D_a_accuracy",
        "D_b_accuracy",
        "gp_a",
        "gp_b",
    )
    assert model.phases == {"G": 1, "D": 1}
    assert model.size_multiple == 4
    unet = CycleGAN(UNET_SMALL, None, seed=0)
    assert "cycle_ssim_a" in unet.loss_names and "cycle_perceptual_b" in unet.loss_names
    assert "cycle_l1_a" not in unet.loss_names and unet.phases == {"G": 1, "D": 4}
    assert unet.size_multiple == 32


# --- training steps ---------------------------------------------------------------------------


def _snapshot(net):
    return [p.detach().clone() for p in net.parameters()]


def _changed(before, net):
    return any(not torch.equal(b, p) for b, p in zip(before, net.parameters()))


@pytest.mark.parametrize(
    "overrides", [UNET_SMALL, {**CLASSIC_SMALL, "adversarial_loss": "wgan_gp", "pool_size": 0}]
)
def test_generator_phase_moves_only_generators_and_discriminator_phase_only_discriminators(overrides):
    torch.manual_seed(0)
    model = CycleGAN(overrides, None, seed=0)
    batch = {"a": images(2, 32, seed=1), "b": images(2, 32, seed=2)}
    g_before, d_before = _snapshot(model.G_ab), _snapshot(model.D_a)
    g_losses = model.train_phase("G", batch)
    assert _changed(g_before, model.G_ab) and not _changed(d_before, model.D_a)
    g_before = _snapshot(model.G_ab)
    d_losses = model.train_phase("D", batch)
    assert _changed(d_before, model.D_a) and not _changed(g_before, model.G_ab)
    values = {**g_losses, **d_losses}
    assert set(values) == set(model.loss_names)
    assert all(torch.isfinite(v) and v.dim() == 0 for v in values.values())
    assert all(p.requires_grad for p in model.D_b.parameters())  # unfrozen after the G phase


def test_steps_are_bit_identical_for_the_same_seed():
    """U-Net / ResNet-18 variant (batch norm, SSIM, VGG): same seed, same weights after G and D steps."""
    def train_once(seed):
        torch.manual_seed(seed)
        model = CycleGAN(UNET_SMALL, None, seed=seed)
        batch = {"a": images(2, 32, seed=1), "b": images(2, 32, seed=2)}
        for phase in ("G", "D"):
            model.train_phase(phase, batch)
        return [p.detach() for p in model.parameters()]

    first, again = train_once(0), train_once(0)
    assert all(torch.equal(a, b) for a, b in zip(first, again))


@pytest.mark.parametrize("adversarial_loss", ["lsgan", "wgan_gp"])
def test_fused_calls_equal_separate_calls_for_batch_independent_networks(adversarial_loss):
    """Instance-norm networks serve two batches in one call (translation + identity, real + fake):
    same losses and same updated weights as separate calls, up to float rounding. BatchNorm
    networks never fuse (their statistics would mix real and fake images)."""
    def train_once(fused):
        torch.manual_seed(0)
        model = CycleGAN({**CLASSIC_SMALL, "adversarial_loss": adversarial_loss}, None, seed=0)
        assert model.fused_calls
        model.fused_calls = fused
        batch = {"a": images(3, 32, seed=1), "b": images(3, 32, seed=2)}
        # One G and one D update: later ones amplify rounding (Adam makes +-lr steps of the
        # rounding-noise gradients of the conv biases in front of instance norm).
        losses = {**model.train_phase("G", batch), **model.train_phase("D", batch)}
        return losses, [p.detach() for p in model.parameters()]

    (fused_losses, fused_weights), (losses, weights) = train_once(True), train_once(False)
    assert set(fused_losses) == set(losses)
    for name in losses:
        torch.testing.assert_close(fused_losses[name], losses[name], rtol=1e-4, atol=1e-6, msg=lambda m: f"{name}: {m}")
    for ours, theirs in zip(fused_weights, weights, strict=True):
        # Pre-instance-norm conv biases get rounding-noise gradients that Adam turns into +-lr
        # steps: two runs may differ by up to 2 lr after one update (x2 margin).
        torch.testing.assert_close(ours, theirs, rtol=0, atol=2 * 2 * CycleGAN.resolve_config(CLASSIC_SMALL)["lr_g"])
    assert not CycleGAN(UNET_SMALL, None, seed=0).fused_calls


@pytest.mark.slow
def test_compiled_networks_step_like_eager_ones():
    """torch.compile (static shapes: b and 2b with fused calls; discriminators frozen in the G
    phase) gives the eager step's losses, on CPU as CI has it (~1 min of compilation)."""
    from pipeline.engine.knobs import resolve_config
    from pipeline.engine.step import prepare_model

    cls, model_cfg, train_cfg = resolve_config({"model": {**CLASSIC_SMALL, "pool_size": 2}, "train": {"compile": True}})
    batch = {"a": images(2, 32, seed=1), "b": images(2, 32, seed=2)}
    runs = []
    for compiled in (False, True):
        torch.manual_seed(0)
        model = cls(model_cfg, None, seed=0)
        if compiled:
            prepare_model(model, train_cfg, torch.device("cpu"))
        runs.append({**model.train_phase("G", batch), **model.train_phase("D", batch)})
    for name, value in runs[0].items():
        torch.testing.assert_close(runs[1][name], value, rtol=1e-4, atol=1e-6, msg=lambda m: f"{name}: {m}")


def test_bf16_autocast_and_channels_last_steps_run():
    model = CycleGAN({**UNET_SMALL, "g_steps_per_d_step": 1}, None, seed=0).to(memory_format=torch.channels_last)
    model.mixed_precision = torch.bfloat16
    batch = {d: x.contiguous(memory_format=torch.channels_last) for d, x in (("a", images(seed=1)), ("b", images(seed=2)))}
    values = {**model.train_phase("G", batch), **model.train_phase("D", batch)}
    assert all(torch.isfinite(v) and v.dtype == torch.float32 for v in values.values())
    assert 0.0 < values["cycle_ssim_a"].item() < 2.0


def test_discriminator_phase_needs_a_generator_phase_first():
    model = CycleGAN(CLASSIC_SMALL, None, seed=0)
    with pytest.raises(RuntimeError, match="G phase"):
        model.train_phase("D", {"a": images(), "b": images()})


def test_image_pool_fills_then_mixes_history():
    pool = ImagePool(3, torch.Generator().manual_seed(0))
    first = torch.arange(2.0).view(2, 1, 1, 1)
    assert torch.equal(pool.query(first), first) and pool.count == 2
    shown = pool.query(torch.tensor([2.0, 10.0, 11.0, 12.0]).view(4, 1, 1, 1))
    assert shown[0].item() == 2.0 and pool.count == 3  # the slot still free takes the first new image
    assert {0.0, 1.0} & set(shown.flatten().tolist())  # with this seed some history is shown
    # every new image went either out (shown) or into the pool in exchange for an old one:
    # nothing is lost or duplicated
    assert sorted(shown.flatten().tolist() + pool.images.flatten().tolist()) == [
        0.0,
        1.0,
        2.0,
        2.0,
        10.0,
        11.0,
        12.0,
    ]
    assert ImagePool(0, torch.Generator()).query(first) is first


# --- inference --------------------------------------------------------------------------------


def test_export_and_translate(tmp_path):
    torch.manual_seed(0)
    model = CycleGAN(UNET_SMALL, None, seed=0)
    with torch.no_grad():
        model.G_ab.head.bias.fill_(0.3)  # make the two directions differ visibly
    torch.save({**model.export(), "image_size": [32, 32]}, tmp_path / "model.pt")
    translator = load_trained(tmp_path / "model.pt")
    x = np.random.default_rng(0).random((3, 32, 32), dtype=np.float32)
    a_to_b = translator.translate("a_to_b", x)
    b_to_a = translator.translate("b_to_a", x)
    assert a_to_b.shape == x.shape and a_to_b.dtype == np.float32
    assert 0.0 <= a_to_b.min() and a_to_b.max() <= 1.0
    assert not np.allclose(a_to_b, b_to_a)
    model.eval()
    with torch.no_grad():
        expected = (model.G_ab(torch.from_numpy(x).unsqueeze(1) * 2 - 1) + 1) / 2
    np.testing.assert_allclose(a_to_b, expected.squeeze(1).numpy(), atol=1e-6)
    larger = translator.translate("a_to_b", np.full((2, 48, 48), 0.5, dtype=np.float32))
    assert larger.shape == (2, 48, 48) and 0.0 <= larger.min() and larger.max() <= 1.0
    with pytest.raises(ConfigError, match="direction"):
        translator.translate("sideways", x)
    with pytest.raises(ValueError, match="within"):
        translator.translate("a_to_b", x + 1)


def test_load_trained_rejects_foreign_files(tmp_path):
    torch.save({"weights": torch.zeros(1)}, tmp_path / "other.pt")
    with pytest.raises(InputDataError, match="other.pt"):
        load_trained(tmp_path / "other.pt")
    with pytest.raises(InputDataError, match="not found"):
        load_trained(tmp_path / "absent.pt")
