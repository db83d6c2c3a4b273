"""Networks: shapes, output ranges, and ImageNet weights loaded from a local state-dict file."""

from __future__ import annotations

import pytest
import torch
import torchvision

from pipeline.errors import ConfigError, InputDataError
from pipeline.models.networks import (
    RESNET18_WEIGHTS_FILE,
    VGG19_WEIGHTS_FILE,
    PatchGANDiscriminator,
    ResNet18Discriminator,
    ResnetGenerator,
    UNetResNet18Generator,
    build_discriminator,
    build_generator,
    imagenet_weight_file,
)

@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny tensors run fastest on one thread, which also keeps parallel test runs from thrashing."""
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)


KNOBS = dict(decoder_channels=[16, 16, 8, 8, 8], ngf=8, n_res_blocks=2, init_std=0.02)


@pytest.fixture(scope="module")
def fake_resnet18_file(tmp_path_factory):
    """A random torchvision ResNet-18 state dict saved under ImageNet's file name."""
    torch.manual_seed(123)
    state = torchvision.models.resnet18(weights=None).state_dict()
    folder = tmp_path_factory.mktemp("weights")
    torch.save(state, folder / RESNET18_WEIGHTS_FILE)
    return folder, state


def test_forward_shapes_at_64():
    torch.manual_seed(0)
    x = torch.rand(2, 1, 64, 64) * 2 - 1
    for generator in (UNetResNet18Generator([16, 16, 8, 8, 8]), ResnetGenerator(ngf=8, n_blocks=2)):
        y = generator(x)
        assert y.shape == (2, 1, 64, 64)
        assert y.abs().max() <= 1.0
    assert ResNet18Discriminator()(x).shape == (2, 1)
    # 64 -> 32 -> 16 -> 8 (stride 2) -> 7 -> 6 (stride 1, 4x4 kernels): a 6x6 grid of patch logits
    assert PatchGANDiscriminator(ndf=8, n_layers=3)(x).shape == (2, 1, 6, 6)


def test_unet_needs_five_decoder_widths():
    with pytest.raises(ConfigError, match="decoder_channels"):
        UNetResNet18Generator([32, 16])


def test_classic_init_has_requested_std():
    torch.manual_seed(0)
    net, status = build_generator("resnet9", **KNOBS | {"ngf": 64}, pretrained="none", weights_dir=None)
    weights = torch.cat([m.weight.flatten() for m in net.modules() if isinstance(m, torch.nn.Conv2d)])
    assert weights.std().item() == pytest.approx(0.02, rel=0.05)
    assert status == "random (normal std 0.02)"


def test_imagenet_weights_loaded_with_rgb_filters_summed(fake_resnet18_file):
    folder, state = fake_resnet18_file
    generator, g_status = build_generator("unet_resnet18", **KNOBS, pretrained="imagenet", weights_dir=folder)
    discriminator, d_status = build_discriminator(
        "resnet18", ndf=8, n_patch_layers=3, init_std=0.02, pretrained="imagenet", weights_dir=folder
    )
    assert g_status == d_status == f"imagenet ({RESNET18_WEIGHTS_FILE})"
    summed = state["conv1.weight"].sum(dim=1, keepdim=True)
    assert torch.equal(generator.encoder.conv1.weight, summed)
    assert torch.equal(discriminator.body.conv1.weight, summed)
    for key in ("layer1.0.conv1.weight", "layer4.1.conv2.weight", "layer3.0.bn1.running_mean"):
        assert torch.equal(generator.encoder.state_dict()[key], state[key])
        assert torch.equal(discriminator.body.state_dict()[key], state[key])
    assert discriminator.body.fc.weight.shape == (1, 512)  # the ImageNet classifier is not used


def test_a_missing_weight_file_is_an_error_and_random_init_is_explicit(tmp_path, fake_resnet18_file):
    with pytest.raises(InputDataError, match=r"ImageNet weights not found.*weights\.fetch: true.*weights\.local_dir.*"
                       r"weights\.pretrained: none") as error:
        build_generator("unet_resnet18", **KNOBS, pretrained="imagenet", weights_dir=tmp_path)
    assert str(tmp_path / RESNET18_WEIGHTS_FILE) in str(error.value)
    with pytest.raises(InputDataError, match=VGG19_WEIGHTS_FILE):
        imagenet_weight_file(tmp_path, VGG19_WEIGHTS_FILE, "imagenet")
    folder, state = fake_resnet18_file
    net, declined = build_generator("unet_resnet18", **KNOBS, pretrained="none", weights_dir=folder)
    assert declined == "random (pretrained: none)"
    assert not torch.equal(net.encoder.layer1[0].conv1.weight, state["layer1.0.conv1.weight"])


def test_bad_weight_files_name_the_file(tmp_path):
    path = tmp_path / RESNET18_WEIGHTS_FILE
    path.write_bytes(b"not a torch file")
    with pytest.raises(InputDataError, match=RESNET18_WEIGHTS_FILE):
        build_discriminator(
            "resnet18", ndf=8, n_patch_layers=3, init_std=0.02, pretrained="imagenet", weights_dir=tmp_path
        )
    torch.save({"conv1.weight": torch.zeros(64, 3, 7, 7), "layer9.weight": torch.zeros(1)}, path)
    with pytest.raises(InputDataError, match="does not match ResNet-18"):
        build_generator("unet_resnet18", **KNOBS, pretrained="imagenet", weights_dir=tmp_path)


def test_unknown_names_are_config_errors():
    with pytest.raises(ConfigError, match="generator"):
        build_generator("vit", **KNOBS, pretrained="none", weights_dir=None)
    with pytest.raises(ConfigError, match="discriminator"):
        build_discriminator(
            "mlp", ndf=8, n_patch_layers=3, init_std=0.02, pretrained="none", weights_dir=None
        )
    with pytest.raises(ConfigError, match="pretrained"):
        build_generator("unet_resnet18", **KNOBS, pretrained="yes", weights_dir=None)
