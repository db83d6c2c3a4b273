"""A faster weight gradient for the CPU's small convolutions (``train.cpu_unfold_weight_grad_positions``).

On the CPU, oneDNN's weight gradient of a wide 3x3 convolution costs a near-constant ~12 ms
whatever its input when the input is tiny: the 512 -> 512 convolutions of a ResNet-18's last stage
at 64 px (2 x 2 maps, batch 4) took 12-16 ms for their weight gradient against 2-3 ms for the
same sum written as unfold + one matrix product (measured on the 2-core AMD EPYC this project is
timed on; docs/engine.md). That one layer type was a quarter of the headline CycleGAN's training
step (U-Net ResNet-18 generators and ResNet-18 discriminators at 64 px). The weight gradient is

    dL/dW[o, k] = sum over images b and output positions l of  dL/dY[b, o, l] * unfold(X)[b, k, l],

a matrix product whose inner size is batch x output height x width. When that inner size is at
most ``max_positions`` this module computes it so; the input gradient and the forward pass stay
oneDNN's. Measured crossover: at <= 64 positions unfold wins for every ResNet-18 / U-Net layer
shape seen (256 -> 256 at 4 x 4: 0.94 vs 1.01 ms); at 256 (128 -> 128 at 8 x 8) oneDNN wins.

The result is the same sum in another order: it agrees with oneDNN's to float rounding
(tests/test_train_cpu_conv.py), is bit-identical run to run on the CPU, and supports double
backward (R1, gradient penalty; the weight's term is then computed even when only the input's
is asked for). Only plain ``nn.Conv2d`` layers (one group, zero padding) are changed, by class
(``UnfoldGradConv2d``), so state-dict keys, ``deepcopy`` and hook-based spectral norm keep
working; layers under ``torch.nn.utils.parametrize`` (the DCGAN's spectral norm) have another
class and keep oneDNN. Narrow layers keep oneDNN too (fewer than ``MIN_PATCH_SIZE`` weights per
output channel: 64 -> 32 at 4 x 4 took 0.67 ms by unfold vs 0.45, a 1x1 256 -> 512 1.31 vs
1.02), as do inputs under CPU autocast (bf16 gradients would meet float32 weights) and
unbatched 3-D inputs. CUDA is left alone: cuDNN has no such cliff. Not supported on the
changed layers: forward-mode AD, torch.func transforms and TorchScript (none used here).
"""
from __future__ import annotations

from typing import Iterable

import torch
import torch.nn.functional as F
from torch import nn


def _output_positions(x: torch.Tensor, conv: nn.Conv2d) -> int:
    """Batch x output height x width of ``conv`` on ``x``."""
    sizes = [
        (x.shape[2 + i] + 2 * conv.padding[i] - conv.dilation[i] * (conv.kernel_size[i] - 1) - 1) // conv.stride[i] + 1
        for i in range(2)
    ]
    return x.shape[0] * sizes[0] * sizes[1]


class _UnfoldWeightGradConv(torch.autograd.Function):
    """conv2d whose weight gradient is one matrix product over unfolded input patches."""

    @staticmethod
    def forward(ctx, x, weight, bias, stride, padding, dilation):  # type: ignore[override]
        ctx.save_for_backward(x, weight)
        ctx.geometry = (stride, padding, dilation)
        return F.conv2d(x, weight, bias, stride, padding, dilation)

    @staticmethod
    def backward(ctx, grad_out):  # type: ignore[override]
        x, weight = ctx.saved_tensors
        stride, padding, dilation = ctx.geometry
        grad_x = grad_weight = grad_bias = None
        if ctx.needs_input_grad[0]:
            grad_x = torch.nn.grad.conv2d_input(x.shape, weight, grad_out, stride, padding, dilation)
        if ctx.needs_input_grad[1]:
            patches = F.unfold(x, weight.shape[2:], dilation=dilation, padding=padding, stride=stride)
            grad_weight = torch.einsum("bol,bkl->ok", grad_out.flatten(2), patches).view_as(weight)
        if ctx.needs_input_grad[2]:
            grad_bias = grad_out.sum((0, 2, 3))
        return grad_x, grad_weight, grad_bias, None, None, None


#: Weights per output channel (in channels x kernel height x width) below which oneDNN stays faster.
MIN_PATCH_SIZE = 1024


class UnfoldGradConv2d(nn.Conv2d):
    """``nn.Conv2d`` that takes the unfold weight gradient when a step needs the weight's gradient
    and sums over at most ``max_positions`` output positions; otherwise exactly nn.Conv2d."""

    max_positions: int = 0

    def _conv_forward(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        patch_size = self.in_channels * self.kernel_size[0] * self.kernel_size[1]
        if (torch.is_grad_enabled() and weight.requires_grad and x.device.type == "cpu" and x.dim() == 4
                and patch_size >= MIN_PATCH_SIZE and not torch.is_autocast_enabled("cpu")
                and _output_positions(x, self) <= self.max_positions):
            return _UnfoldWeightGradConv.apply(x, weight, bias, self.stride, self.padding, self.dilation)
        return super()._conv_forward(x, weight, bias)


def use_unfold_weight_grads(nets: Iterable[nn.Module], max_positions: int) -> int:
    """Give every plain ``nn.Conv2d`` (one group, zero padding) in ``nets`` the unfold weight
    gradient up to ``max_positions`` output positions; the number of layers changed. 0: none."""
    if max_positions <= 0:
        return 0
    changed = 0
    for net in nets:
        for module in net.modules():
            if type(module) is nn.Conv2d and module.groups == 1 and module.padding_mode == "zeros" \
                    and isinstance(module.padding, tuple):
                module.__class__ = UnfoldGradConv2d
                module.max_positions = max_positions
                changed += 1
    return changed
