"""A CUDA device without a GPU: fake CUDA tensors on which a tensor left on the CPU raises.

``simulated_cuda()`` runs code as if on a CUDA machine, on a CPU-only torch build:

- ``FakeTensorMode`` (torch._subclasses.fake_tensor): tensors carry shape, dtype and device
  but no data, so full-size networks cost nothing; an op mixing a CUDA tensor with a CPU one
  (other than a 0-dim CPU scalar, which CUDA accepts too) raises
  ``FakeTensorDeviceMismatchError``, as a real GPU would raise at that point.
- CUDA autocast is enabled (torch disables it without a driver), so bf16 autocast runs and its
  dtypes can be checked. ``torch.cuda.is_available()`` still answers False (FakeTensorMode reads
  it to avoid initialising the device): code under check is given ``cuda`` explicitly.
- ``torch.Generator("cuda")`` gives a generator that reports the CUDA device (it cannot be
  created without a driver); a random draw whose generator's device differs from the
  tensor's raises, as it does on CUDA (fake tensors ignore the generator).
- Module ``.to("cuda")`` keeps parameter identity (swap_tensors), so optimisers built before
  the move step the moved parameters, as on a real GPU.
- Autograd: the engine cannot run backward on fake CUDA tensors (it asks the CUDA driver for a
  primary context), so ``backward`` gives every leaf the loss depends on a zero gradient of its
  shape, dtype and device, and ``torch.autograd.grad`` returns zeros of its inputs' shapes. The
  optimiser steps then run for real on the fake tensors (state placement is checked); the
  backward itself (its shapes and FLOPs) is run by ``pipeline.device_check.cost`` on fake CPU
  tensors, where autograd works.

Host reads. Fake tensors hold no values, so reading one on the host (``.item()``, ``float(t)``,
``int(t)``, ``if t:``, ``.tolist()``, ``.numpy()``) cannot give the real value. Inside
``training_step()`` such a read raises ``HostReadInStepError``: in a training step it is a host
synchronisation, which the engine forbids. Elsewhere (setup, evaluation, inversion) a scalar read
gives 1 (so counts and norms divide), a condition False (checks that raise on bad input test for
True) and an array read zeros of the right shape and type, and is
counted (``host_reads``): a device check then follows the device paths of the host code with
stand-in values (not every value-dependent branch), and the count shows where a loop waits for
the GPU. ``.numpy()`` of a CUDA tensor raises, as on a GPU.
"""
from __future__ import annotations

import contextlib
from collections import Counter
from typing import Any, Iterator
from unittest import mock

import numpy as np
import torch
from torch._subclasses import fake_tensor
from torch._subclasses.fake_tensor import FakeTensor, FakeTensorMode
from torch.overrides import TorchFunctionMode

#: The device the checks run on.
CUDA = torch.device("cuda", 0)


class GeneratorDeviceMismatchError(RuntimeError):
    """A random draw used a generator of another device than its output's (CUDA raises)."""


class HostReadInStepError(RuntimeError):
    """A training step read a device value on the host (a synchronisation with the GPU)."""


class _HostReads:
    """Host reads of fake values: raise inside a training step, else zeros (and count them)."""

    def __init__(self) -> None:
        self.in_step = False
        self.reads: Counter[str] = Counter()

    def read(self, tensor: FakeTensor, how: str) -> None:
        if self.in_step:
            raise HostReadInStepError(f"{how} of a {tensor.device} tensor of shape {tuple(tensor.shape)} inside a "
                                      "training step: the step waits for the device (a host synchronisation)")
        self.reads[how] += 1


_HOST_READS = _HostReads()


def _stand_in(tensor: torch.Tensor) -> Any:
    """A read number is 1 (not 0, so counts and norms divide); a read condition is False (the
    checks that raise on bad input test for True)."""
    return False if tensor.dtype == torch.bool else 1.0 if tensor.dtype.is_floating_point else 1


def _host_read_patches() -> list[Any]:
    """Patches of the Tensor methods that read values, for fake tensors without a constant."""
    def wrap(name: str, stand_in):
        original = getattr(torch.Tensor, name)

        def method(self, *args, **kwargs):
            if not isinstance(self, FakeTensor) or self.constant is not None:
                return original(self, *args, **kwargs)
            _HOST_READS.read(self, f"{name.strip('_')}()")
            return stand_in(self)

        return mock.patch.object(torch.Tensor, name, method)

    def numpy_of(tensor: torch.Tensor) -> np.ndarray:
        if tensor.device.type != "cpu":
            raise TypeError(f"can't convert {tensor.device} device type tensor to numpy. Use Tensor.cpu() to copy "
                            "the tensor to host memory first.")
        return np.zeros(tuple(tensor.shape), _numpy_dtype(tensor.dtype))

    return [wrap("item", _stand_in), wrap("__float__", lambda t: 1.0), wrap("__int__", lambda t: 1),
            wrap("__index__", lambda t: 1), wrap("__bool__", lambda t: False),
            wrap("tolist", lambda t: np.zeros(tuple(t.shape), _numpy_dtype(t.dtype)).tolist()),
            wrap("numpy", numpy_of)]


def _numpy_dtype(dtype: torch.dtype) -> np.dtype:
    """numpy's dtype for a torch dtype (bfloat16, which numpy lacks, as float32)."""
    names = {torch.bfloat16: "float32", torch.bool: "bool"}
    return np.dtype(names.get(dtype, str(dtype).removeprefix("torch.")))


@contextlib.contextmanager
def training_step() -> Iterator[None]:
    """Inside: a host read of a fake value raises (a training step must not wait for the GPU)."""
    before, _HOST_READS.in_step = _HOST_READS.in_step, True
    try:
        yield
    finally:
        _HOST_READS.in_step = before


def host_reads() -> Counter[str]:
    """Host reads of fake values outside training steps since ``simulated_cuda`` began, by kind."""
    return Counter(_HOST_READS.reads)


class _Generator(torch.Generator):
    """torch.Generator that may claim the CUDA device while drawing on the CPU (under fake
    tensors the draw itself produces no values; only the device matters)."""

    def __new__(cls, device: Any = "cpu"):
        return super().__new__(cls, "cpu")

    def __init__(self, device: Any = "cpu"):
        super().__init__()
        self._claimed = torch.device(device)
        if self._claimed.type == "cuda" and self._claimed.index is None:
            self._claimed = CUDA

    @property
    def device(self) -> torch.device:  # type: ignore[override]
        return self._claimed


class _GeneratorDeviceCheck(TorchFunctionMode):
    """Raise when a random op's generator lives on another device than the tensor it fills."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        result = func(*args, **kwargs)
        generator = kwargs.get("generator")
        if isinstance(generator, torch.Generator) and isinstance(result, torch.Tensor):
            if generator.device.type != result.device.type:
                raise GeneratorDeviceMismatchError(
                    f"{getattr(func, '__name__', func)}: a generator on {generator.device} fills a tensor on "
                    f"{result.device} (CUDA raises: Expected a '{result.device.type}' device type for generator)")
        return result


class _NoTracking:
    """Stands in for FakeTensorMode's weak set of live fake tensors (kept for non-strict
    export): its weak references forbid swap_tensors, which ``Module.to`` needs here."""

    def add(self, item: Any) -> None:
        pass

    def __iter__(self):
        return iter(())


def _forget(tensor: torch.Tensor) -> None:
    """Drop FakeTensorMode's weak references to ``tensor`` (its real -> fake memo, its tensor ids,
    its constants' aliases), which forbid swap_tensors; the memo then simply misses it."""
    mode = getattr(tensor, "fake_mode", None)
    if mode is None:
        return
    converter = mode.fake_tensor_converter
    memo = converter.meta_converter.tensor_memo
    for key in [k for k, ref in list(memo.data.items()) if ref() is tensor]:
        memo.data.pop(key, None)
    converter.meta_converter.describer.lookup_tensor.pop(tensor, None)
    for refs in converter.constant_storage_mapping.values():
        refs[:] = [ref for ref in refs if ref() is not tensor]


_swap_tensors = torch.utils.swap_tensors


def _swap_fake_tensors(t1: torch.Tensor, t2: torch.Tensor) -> None:
    """torch.utils.swap_tensors (what Module.to uses on fake parameters) after dropping the
    fake mode's weak references to both."""
    _forget(t1)
    _forget(t2)
    _swap_tensors(t1, t2)


def _leaves(roots: list[torch.Tensor]) -> list[torch.Tensor]:
    """The leaf tensors requiring grad that ``roots`` depend on (walking the autograd graph)."""
    seen, found, stack = set(), {}, [r.grad_fn for r in roots if r.grad_fn is not None]
    for root in roots:
        if root.grad_fn is None and root.requires_grad:
            found[id(root)] = root
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        variable = getattr(node, "variable", None)
        if variable is not None:
            found[id(variable)] = variable
        stack.extend(next_node for next_node, _ in node.next_functions)
    return list(found.values())


def _zero_backward(tensors, grad_tensors=None, retain_graph=None, create_graph=False, inputs=None, **_):
    roots = [tensors] if isinstance(tensors, torch.Tensor) else list(tensors)
    targets = list(inputs) if inputs is not None else _leaves(roots)
    with torch.no_grad():
        for leaf in targets:
            zeros = torch.zeros_like(leaf)
            leaf.grad = zeros if leaf.grad is None else leaf.grad + zeros


def _tensor_backward(self, gradient=None, retain_graph=None, create_graph=False, inputs=None):
    _zero_backward(self, inputs=inputs)


def _zero_grad(outputs, inputs, grad_outputs=None, retain_graph=None, create_graph=False, only_inputs=True,
               allow_unused=None, is_grads_batched=False, materialize_grads=False):
    single = isinstance(inputs, torch.Tensor)
    wanted = [inputs] if single else list(inputs)
    grads = tuple(torch.zeros_like(x) for x in wanted)
    return grads


@contextlib.contextmanager
def fake_tensors() -> Iterator[FakeTensorMode]:
    """A FakeTensorMode (real tensors met inside become fake) in which ``Module.to`` works on fake
    parameters, keeping their identity (swap_tensors, which FakeTensorMode's weak references
    would forbid), torch.save / torch.load skip tensor data (a model.pt of fake tensors), and
    host reads give stand-ins (raising inside ``training_step``)."""
    # Module._apply always swaps fake parameters (swap_tensors keeps their identity); that needs
    # no weak references to them: the tracker of live fakes is set aside, the memos forget them.
    tracker = fake_tensor.fake_tensor_tls.non_strict_export_fake_tensor_tracker
    fake_tensor.fake_tensor_tls.non_strict_export_fake_tensor_tracker = _NoTracking()
    try:
        mode = FakeTensorMode(allow_non_fake_inputs=True)
        with contextlib.ExitStack() as stack:
            for patch in _host_read_patches():
                stack.enter_context(patch)
            stack.enter_context(mock.patch("torch.utils.swap_tensors", _swap_fake_tensors))
            # A deep copy of a module (StyleGAN2's G_ema) copies its fake tensors, and with them
            # their mode: share the one mode instead (it is the context, not data).
            stack.enter_context(mock.patch.object(FakeTensorMode, "__deepcopy__", lambda self, memo: self,
                                                  create=True))
            stack.enter_context(mode)
            stack.enter_context(torch.serialization.skip_data(materialize_fake_tensors=True))
            _HOST_READS.reads.clear()
            yield mode
    finally:
        fake_tensor.fake_tensor_tls.non_strict_export_fake_tensor_tracker = tracker


@contextlib.contextmanager
def simulated_cuda() -> Iterator[FakeTensorMode]:
    """Run the block as on a CUDA machine, with fake tensors (see the module docstring)."""
    with contextlib.ExitStack() as stack:
        stack.enter_context(mock.patch("torch.cuda.is_bf16_supported", return_value=True))
        stack.enter_context(mock.patch("torch.cuda.amp.common.amp_definitely_not_available", return_value=False))
        stack.enter_context(mock.patch("torch.Generator", _Generator))
        stack.enter_context(mock.patch("torch.Tensor.backward", _tensor_backward))
        stack.enter_context(mock.patch("torch.autograd.backward", _zero_backward))
        stack.enter_context(mock.patch("torch.autograd.grad", _zero_grad))
        mode = stack.enter_context(fake_tensors())
        stack.enter_context(_GeneratorDeviceCheck())
        yield mode
