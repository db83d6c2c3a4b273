"""The CRG-style encoder: two optimiser updates per engine step, each moving E, none moving G."""
from __future__ import annotations

import torch

from pipeline.models import model_class
from pipeline.models.stylegan2_encoder import SynthesisFeatures, content_loss
from pipeline.engine.step import train_step
from stylegan_standin import TinyStyleGAN


def _encoder(**knobs):
    generator = TinyStyleGAN(size=16)
    cls = model_class("stylegan2_encoder")
    return cls({"n_stages": 2, "width": 8, "lr": 1e-2, **knobs}, None, seed=3, image_size=(16, 16),
               generator=generator), generator


def _flat(module: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().flatten().clone() for p in module.parameters()])


def test_two_updates_per_step_synthetic_then_real():
    model, generator = _encoder()
    steps: list[str] = []
    optimizer = model.optimizers["E"]
    original_step = optimizer.step

    snapshots = [_flat(model.E)]

    def counting_step(*args, **kwargs):
        result = original_step(*args, **kwargs)
        steps.append("step")
        snapshots.append(_flat(model.E))
        return result

    optimizer.step = counting_step
    g_before = _flat(generator.generator)
    batch = {"images": torch.rand(4, 1, 16, 16) * 2 - 1}
    sums, counts = {}, {}
    train_step(model, batch, global_step=0, sums=sums, counts=counts)
    assert len(steps) == 2, "one engine step makes exactly two encoder updates"
    assert not torch.equal(snapshots[0], snapshots[1]), "the synthetic cycle moved E"
    assert not torch.equal(snapshots[1], snapshots[2]), "the real cycle moved E"
    assert torch.equal(g_before, _flat(generator.generator)), "G stays frozen"
    assert counts["syn_total"] == 1 and counts["real_total"] == 1
    assert set(model.loss_names) == set(sums)


def test_each_phase_uses_its_own_loss_terms():
    model, _ = _encoder(lambda_w_l1=0.0, lambda_image_l2=0.0, lambda_ssim=0.0, lambda_content_g=0.0)
    before = _flat(model.E)
    model.train_phase("synthetic", {"images": torch.zeros(2, 1, 16, 16)})
    assert torch.equal(before, _flat(model.E)), "every synthetic weight zero: the synthetic update changes nothing"
    model.train_phase("real", {"images": torch.rand(2, 1, 16, 16) * 2 - 1})
    assert not torch.equal(before, _flat(model.E)), "the real cycle's content term on E's features still trains E"


def test_g_features_are_recorded_per_block_and_content_loss_is_mean_squared_error():
    generator = TinyStyleGAN(size=16)
    taps = SynthesisFeatures(generator.generator)
    ws = generator.mapping(torch.randn(2, generator.z_dim))
    _, feats = taps(generator.synthesis, ws)
    # The seed Linear gives no 4-D output; each upsampling block and the 1x1 to-image conv do.
    assert [tuple(f.shape[1:]) for f in feats] == [(8, 8, 8), (8, 16, 16), (1, 16, 16)]
    a = [torch.zeros(1, 2, 3, 3), torch.ones(1, 1, 2, 2)]
    b = [torch.full((1, 2, 3, 3), 2.0), torch.ones(1, 1, 2, 2) * 4]
    assert float(content_loss(a, b)) == 4.0 + 9.0


def test_untrained_encoder_starts_at_the_mean_code_and_w_mode_repeats_one_w():
    model, generator = _encoder()
    codes = model.E(torch.rand(3, 1, 16, 16))
    assert codes.shape == (3, generator.num_ws, generator.w_dim)
    assert torch.allclose(codes, generator.w_avg.expand_as(codes))
    plus, _ = _encoder(latent_space="w_plus")
    with torch.no_grad():
        plus.E.head.bias.copy_(torch.arange(plus.E.head.bias.numel(), dtype=torch.float32))
    out = plus.E(torch.rand(1, 1, 16, 16))
    assert not torch.allclose(out[:, 0], out[:, 1]), "W+ gives each layer its own w"


def test_the_frozen_generator_follows_the_encoder_to_another_device(tmp_path):
    """Issue 26: G is loaded from model.pt on the CPU and moved by the encoder's .to(); its
    sampler must then send z and w where G's weights are, not where G was loaded. The meta
    device stands in for a GPU (a CPU tensor meeting a meta one raises, as on CUDA). (The tests
    above use a stand-in G; tests/test_device_check.py runs the whole step on a simulated GPU.)"""
    small = {"z_dim": 16, "w_dim": 16, "channel_base": 128, "channel_max": 16}
    generator = model_class("stylegan2")(small, None, 0, image_size=(16, 16))
    torch.save({**generator.export(), "image_size": [16, 16]}, tmp_path / "model.pt")
    encoder = model_class("stylegan2_encoder")({"generator": str(tmp_path / "model.pt"), "n_stages": 2, "width": 8},
                                               None, seed=3, image_size=(16, 16))
    assert encoder.G.device.type == "cpu"
    encoder.to("meta")
    assert encoder.G.device.type == "meta" and encoder.G.w_avg.device.type == "meta"
    w = encoder._draw_w(4, torch.device("meta"))  # z drawn on the CPU, mapped where G is
    images = encoder.G.synthesis(w)
    reconstruction = encoder.G.synthesis(encoder.E(images))
    assert w.device.type == images.device.type == reconstruction.device.type == "meta"
    assert tuple(reconstruction.shape) == (4, 1, 16, 16)
