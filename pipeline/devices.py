"""Where a stage's networks run, decided once: ``auto`` resolved to CUDA when present, the
device a module's weights are on, and determinism that CUDA can honour.

Every rule that runs a network passes its experiment's ``device`` knob (``auto`` by default,
``cuda`` in configs/full.yaml); code that holds a network sends its inputs to the network's own
device (``module_device``), never to a device it remembered, so a network moved after it was
built (e.g. StyleGAN2's frozen G inside the encoder) is followed.
"""
from __future__ import annotations

import os

import torch


def resolve_device(device: str) -> str:
    """``auto`` -> "cuda" when a CUDA device is present, else "cpu"; anything else unchanged."""
    if device != "auto":
        return device
    return "cuda" if torch.cuda.is_available() else "cpu"


def module_device(module: torch.nn.Module) -> torch.device:
    """The device of ``module``'s first parameter (or buffer)."""
    for tensor in (*module.parameters(), *module.buffers()):
        return tensor.device
    return torch.device("cpu")


def deterministic(device: str | torch.device) -> None:
    """Deterministic algorithms for a stage on ``device``: bit-identical on the CPU; on CUDA the
    same request where kernels allow it (cuBLAS's workspace setting), a warning where a kernel
    has no deterministic version (adaptive pooling, interpolation backward) instead of an error."""
    on_cuda = torch.device(device).type == "cuda"
    if on_cuda:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True, warn_only=on_cuda)
