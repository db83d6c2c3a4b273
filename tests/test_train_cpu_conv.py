"""The CPU's unfold weight gradient (pipeline/engine/cpu_conv.py) against torch's own convolution."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from pipeline.engine import cpu_conv
from pipeline.engine.cpu_conv import UnfoldGradConv2d, use_unfold_weight_grads
from pipeline.engine.knobs import resolve_config
from pipeline.engine.step import prepare_model

GEOMETRIES = [  # in, out, kernel, stride, padding, dilation, bias, input size
    (8, 6, 3, 1, 1, 1, True, (5, 5)),
    (8, 6, 3, 2, 1, 1, False, (7, 6)),
    (4, 5, (3, 1), 1, (2, 0), 1, True, (4, 4)),
    (4, 3, 3, 1, 2, 2, True, (5, 5)),
    (3, 4, 4, 2, 1, 1, False, (8, 8)),
    (6, 6, 3, 1, 1, 1, True, (1, 1)),  # a map smaller than the kernel (ResNet's last stage at 32 px)
]


@pytest.fixture
def any_width(monkeypatch):
    """Let narrow test layers take the unfold path (the width rule has its own test)."""
    monkeypatch.setattr(cpu_conv, "MIN_PATCH_SIZE", 0)


def _grads(conv: nn.Conv2d, x: torch.Tensor, upstream: torch.Tensor) -> list[torch.Tensor]:
    x = x.clone().requires_grad_(True)
    conv.zero_grad()
    (conv(x) * upstream).sum().backward()
    return [x.grad, conv.weight.grad] + ([conv.bias.grad] if conv.bias is not None else [])


@pytest.mark.parametrize("geometry", GEOMETRIES)
def test_gradients_equal_torch_convolutions(geometry, any_width):
    cin, cout, kernel, stride, padding, dilation, bias, size = geometry
    torch.manual_seed(0)
    reference = nn.Conv2d(cin, cout, kernel, stride, padding, dilation, bias=bias).double()
    changed = copy.deepcopy(reference)
    assert use_unfold_weight_grads([changed], max_positions=10_000) == 1
    x = torch.randn(3, cin, *size, dtype=torch.float64)
    out = changed(x.requires_grad_(True))
    assert out.grad_fn.name().startswith("_UnfoldWeightGradConv")  # the new path was taken
    upstream = torch.randn_like(out)
    for ours, theirs in zip(_grads(changed, x.detach(), upstream), _grads(reference, x.detach(), upstream)):
        torch.testing.assert_close(ours, theirs, rtol=1e-10, atol=1e-10)


def test_double_backward_for_gradient_penalties(any_width):
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 4, 3, padding=1).double()
    use_unfold_weight_grads([conv], max_positions=10_000)
    x = torch.randn(2, 3, 3, 3, dtype=torch.float64, requires_grad=True)
    torch.autograd.gradgradcheck(lambda x, w, b: conv._conv_forward(x, w, b), (x, conv.weight, conv.bias))


def test_only_small_sums_with_a_weight_gradient_take_the_new_path(any_width):
    conv = nn.Conv2d(4, 4, 3, padding=1)
    use_unfold_weight_grads([conv], max_positions=2 * 4 * 4)
    assert conv(torch.randn(2, 4, 4, 4)).grad_fn.name().startswith("_UnfoldWeightGradConv")
    assert conv(torch.randn(2, 4, 5, 5)).grad_fn.name() == "ConvolutionBackward0"  # 50 positions > 32
    unbatched = conv(torch.randn(4, 4, 4))  # (C, H, W): torch's own path, which batches it itself
    assert unbatched.shape == (4, 4, 4) and "Unfold" not in unbatched.grad_fn.name()
    conv.requires_grad_(False)  # a frozen network (a D during the G step) needs no weight gradient
    assert conv(torch.randn(2, 4, 4, 4, requires_grad=True)).grad_fn.name() == "ConvolutionBackward0"
    with torch.no_grad():
        assert conv.requires_grad_(True)(torch.randn(2, 4, 4, 4)).grad_fn is None


def test_narrow_layers_keep_onednn():
    wide, narrow = nn.Conv2d(128, 8, 3, padding=1), nn.Conv2d(64, 128, 3, padding=1)  # 1152 vs 576 weights per output
    use_unfold_weight_grads([wide, narrow], max_positions=64)
    assert wide(torch.randn(1, 128, 2, 2)).grad_fn.name().startswith("_UnfoldWeightGradConv")
    assert narrow(torch.randn(1, 64, 2, 2)).grad_fn.name() == "ConvolutionBackward0"


def test_bf16_autocast_steps_like_torch():
    torch.manual_seed(0)
    reference = nn.Conv2d(128, 16, 3, padding=1)
    changed = copy.deepcopy(reference)
    use_unfold_weight_grads([changed], max_positions=64)
    x, upstream = torch.randn(2, 128, 3, 3), torch.randn(2, 16, 3, 3)
    grads = []
    for conv in (changed, reference):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = conv(x)
        (out.float() * upstream).sum().backward()
        grads.append(conv.weight.grad)
    torch.testing.assert_close(grads[0], grads[1], rtol=0, atol=0)


def test_weight_gradients_are_bit_identical_run_to_run():
    torch.manual_seed(0)
    conv = nn.Conv2d(256, 64, 3, padding=1)
    use_unfold_weight_grads([conv], max_positions=64)
    x, upstream = torch.randn(4, 256, 2, 2), torch.randn(4, 64, 2, 2)
    runs = []
    for offset in (0, 1, 7):  # inputs at different storage offsets, as a slice of a larger batch lands
        storage = torch.cat([torch.zeros(offset), x.flatten()])
        conv.zero_grad()
        (conv(storage[offset:].view_as(x)) * upstream).sum().backward()
        runs.append(conv.weight.grad.clone())
    assert all(torch.equal(runs[0], run) for run in runs[1:])


def test_only_plain_convolutions_change_and_state_and_copies_survive(any_width):
    net = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1, groups=2),
                        nn.ConvTranspose2d(4, 2, 2, stride=2), nn.Conv2d(2, 2, 3, padding="same"),
                        nn.Conv2d(2, 2, 3, padding=1, padding_mode="reflect"),
                        nn.utils.spectral_norm(nn.Conv2d(2, 2, 3, padding=1)),
                        nn.utils.parametrizations.spectral_norm(nn.Conv2d(2, 2, 3, padding=1)))
    keys = list(net.state_dict())
    assert use_unfold_weight_grads([net], max_positions=64) == 2  # the first and the hook-based spectral one
    assert [type(m) is UnfoldGradConv2d for m in net] == [True, False, False, False, False, True, False]
    assert list(net.state_dict()) == keys
    twin = copy.deepcopy(net)
    twin(torch.randn(1, 2, 4, 4)).sum().backward()
    assert twin[0].weight.grad is not None and net[0].weight.grad is None  # its own weights, not the original's
    assert use_unfold_weight_grads([nn.Conv2d(1, 1, 1)], max_positions=0) == 0


@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_the_engine_applies_the_knob_on_the_cpu_only(device):
    def built(positions):
        cls, model_cfg, train_cfg = resolve_config({
            "model": {"variant": "unet_resnet18", "pretrained": "none"},
            "train": {"cpu_unfold_weight_grad_positions": positions}})
        model = cls(model_cfg, None, 0)
        prepare_model(model, train_cfg, torch.device(device))  # nothing is moved: the model stays built on the CPU
        return sum(type(m) is UnfoldGradConv2d for net in model.networks().values() for m in net.modules())

    assert built(0) == 0
    assert (built(64) > 0) == (device == "cpu")
