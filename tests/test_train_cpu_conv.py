"""The CPU's unfold weight gradient (pipeline/engine/cpu_conv.py) against torch's own convolution."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

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


def _grads(conv: nn.Conv2d, x: torch.Tensor, upstream: torch.Tensor) -> list[torch.Tensor]:
    x = x.clone().requires_grad_(True)
    conv.zero_grad()
    (conv(x) * upstream).sum().backward()
    return [x.grad, conv.weight.grad] + ([conv.bias.grad] if conv.bias is not None else [])


@pytest.mark.parametrize("geometry", GEOMETRIES)
def test_gradients_equal_torch_convolutions(geometry):
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


def test_double_backward_for_gradient_penalties():
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 4, 3, padding=1).double()
    use_unfold_weight_grads([conv], max_positions=10_000)
    x = torch.randn(2, 3, 3, 3, dtype=torch.float64, requires_grad=True)
    torch.autograd.gradgradcheck(lambda x, w, b: conv._conv_forward(x, w, b), (x, conv.weight, conv.bias))


def test_only_small_sums_with_a_weight_gradient_take_the_new_path():
    conv = nn.Conv2d(4, 4, 3, padding=1)
    use_unfold_weight_grads([conv], max_positions=2 * 4 * 4)
    assert conv(torch.randn(2, 4, 4, 4)).grad_fn.name().startswith("_UnfoldWeightGradConv")
    assert conv(torch.randn(2, 4, 5, 5)).grad_fn.name() == "ConvolutionBackward0"  # 50 positions > 32
    conv.requires_grad_(False)  # a frozen network (a D during the G step) needs no weight gradient
    assert conv(torch.randn(2, 4, 4, 4, requires_grad=True)).grad_fn.name() == "ConvolutionBackward0"
    with torch.no_grad():
        assert conv.requires_grad_(True)(torch.randn(2, 4, 4, 4)).grad_fn is None


def test_only_plain_convolutions_change_and_state_and_copies_survive():
    net = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1, groups=2),
                        nn.ConvTranspose2d(4, 2, 2, stride=2), nn.Conv2d(2, 2, 3, padding="same"),
                        nn.Conv2d(2, 2, 3, padding=1, padding_mode="reflect"),
                        nn.utils.spectral_norm(nn.Conv2d(2, 2, 3, padding=1)))
    keys = list(net.state_dict())
    assert use_unfold_weight_grads([net], max_positions=64) == 2  # the first and the spectral one
    assert [type(m) is UnfoldGradConv2d for m in net] == [True, False, False, False, False, True]
    assert list(net.state_dict()) == keys
    twin = copy.deepcopy(net)
    twin(torch.randn(1, 2, 4, 4)).sum().backward()
    assert twin[0].weight.grad is not None and net[0].weight.grad is None  # its own weights, not the original's
    assert use_unfold_weight_grads([nn.Conv2d(1, 1, 1)], max_positions=0) == 0


def test_the_engine_applies_the_knob_on_the_cpu_only():
    def built(positions):
        cls, model_cfg, train_cfg = resolve_config({
            "model": {"variant": "unet_resnet18", "pretrained": "none"},
            "train": {"cpu_unfold_weight_grad_positions": positions}})
        model = cls(model_cfg, None, 0)
        prepare_model(model, train_cfg, torch.device("cpu"))
        return sum(type(m) is UnfoldGradConv2d for net in model.networks().values() for m in net.modules())

    assert built(64) > 0 and built(0) == 0
