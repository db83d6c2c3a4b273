"""Every history column a model can write has a declared kind, so the training-curve figure can
place it in its panel (generator / discriminator / D on real and generated / schedules ...)."""
from __future__ import annotations

import pytest

from pipeline.errors import ConfigError
from pipeline.models import LOSS_KINDS, MODELS, history_panels, model_class
from stylegan_standin import TinyStyleGAN

CYCLEGAN_SMALL = {"variant": "resnet9_patchgan", "ngf": 4, "ndf": 4, "n_res_blocks": 1}
DCGAN_SMALL = {"ngf": 8, "ndf": 2, "nz": 10}


def built_models():
    """(label, model) under the configurations that change loss_names."""
    cyclegan, dcgan = model_class("cyclegan"), model_class("dcgan")
    yield "cyclegan classic wgan_gp", cyclegan({**CYCLEGAN_SMALL, "adversarial_loss": "wgan_gp"}, None, seed=0)
    yield "cyclegan report 001", cyclegan({"decoder_channels": [16, 16, 8, 8, 8], "pretrained": "none"}, None, seed=0)
    yield "dcgan bce + instance noise", dcgan({**DCGAN_SMALL, "instance_noise_std": 0.5, "instance_noise_epochs": 2},
                                              None, 0, image_size=(16, 16))
    yield "dcgan wgan_gp", dcgan({**DCGAN_SMALL, "adversarial_loss": "wgan_gp"}, None, 0, image_size=(32, 32))
    yield "cgan", model_class("cgan")(DCGAN_SMALL, None, 0, image_size=(32, 32))
    yield "seg2ct", model_class("seg2ct")({"ngf": 4, "ndf": 4, "nz": 8, "pretrained": "none"}, None, 1, (16, 16))
    yield "stylegan2", model_class("stylegan2")({"z_dim": 16, "w_dim": 16, "channel_base": 256, "channel_max": 32},
                                                None, 0, (32, 32))
    yield "stylegan2_encoder", model_class("stylegan2_encoder")({"n_stages": 2, "width": 8}, None, seed=3,
                                                                image_size=(16, 16), generator=TinyStyleGAN(size=16))


@pytest.mark.parametrize("label, model", list(built_models()), ids=lambda value: value if isinstance(value, str) else "")
def test_every_loss_name_has_a_known_kind(label, model):
    kinds = type(model).loss_kinds
    assert set(model.loss_names) <= set(kinds), f"{label}: no kind for {set(model.loss_names) - set(kinds)}"
    assert set(kinds.values()) <= set(LOSS_KINDS)
    panels = history_panels(type(model).name, ["epoch", "step", *model.loss_names,
                                               *(f"lr_{name}" for name in model.optimizers)])
    assert sorted(c for columns in panels.values() for c in columns) == sorted(
        [*model.loss_names, *(f"lr_{name}" for name in model.optimizers)])  # every column in exactly one panel
    assert panels["learning rate"] == [f"lr_{name}" for name in model.optimizers]


def test_panels_follow_the_declared_kinds_and_an_undeclared_column_is_named():
    panels = history_panels("dcgan", ["epoch", "step", "kimg", "G", "D", "d_real", "d_fake", "D_accuracy", "lr_G"])
    assert panels == {"generator losses": ["G"], "discriminator losses": ["D"],
                      "discriminator on real and generated images": ["d_real", "d_fake", "D_accuracy"],
                      "learning rate": ["lr_G"]}
    with pytest.raises(ConfigError, match="'mystery'"):
        history_panels("dcgan", ["epoch", "G", "mystery"])
    assert set(MODELS) == {"cyclegan", "dcgan", "cgan", "seg2ct", "stylegan2", "stylegan2_encoder"}  # all built above
