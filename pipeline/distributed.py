"""Data-parallel training over the processes that ``torchrun`` starts (one per GPU).

Every process holds the whole model and draws the same global batch plan from the same seeded
generator, then trains on its own share of it. After each backward pass the gradients of the
stepped optimiser are averaged over the processes in one flattened all-reduce, so all
processes make the same update and stay identical: the arithmetic of DistributedDataParallel,
done explicitly because a GAN step backpropagates through frozen networks (the discriminators
during the generator update), which DDP's per-module gradient hooks do not follow (StyleGAN2-ADA
averages its gradients the same way). BatchNorm layers become SyncBatchNorm on CUDA, so their
statistics are those of the global batch; SyncBatchNorm has no CPU kernel, so on CPU (gloo)
BatchNorm statistics stay per process and only batch-independent networks (instance norm, the
classic CycleGAN) match single-process training exactly.
"""
from __future__ import annotations

import datetime
import logging
import os
from typing import Iterable

import torch
import torch.distributed as dist
from torch import nn

from pipeline.errors import ConfigError

log = logging.getLogger(__name__)

#: Seconds a collective waits for the other processes before failing (a dead peer).
COLLECTIVE_TIMEOUT_S = 1800


class DataParallel:
    """This process's place in the group, and the collectives the engine and the models use."""

    def __init__(self, rank: int, world_size: int, local_rank: int, backend: str):
        self.rank, self.world_size, self.local_rank, self.backend = rank, world_size, local_rank, backend
        # Stop requests (SIGTERM) are agreed on every step through a CPU group, so NCCL runs
        # never wait on the GPU to read a flag.
        self._control = dist.new_group(backend="gloo") if backend != "gloo" else None

    @classmethod
    def from_environment(cls, device_type: str) -> "DataParallel":
        """Join the process group torchrun described in the environment (RANK, WORLD_SIZE,
        LOCAL_RANK, MASTER_ADDR/PORT): NCCL on CUDA, gloo on CPU."""
        missing = [name for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
                   if name not in os.environ]
        if missing:
            raise ConfigError(f"train.distributed is true but {', '.join(missing)} are not set: "
                              "start training with `torchrun --nproc_per_node N -m pipeline.train ...`")
        rank, world_size, local_rank = (int(os.environ[k]) for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"))
        backend = "nccl" if device_type == "cuda" else "gloo"
        if device_type == "cuda":
            torch.cuda.set_device(local_rank)
        if not dist.is_initialized():
            dist.init_process_group(backend, timeout=datetime.timedelta(seconds=COLLECTIVE_TIMEOUT_S))
        log.info("data-parallel process %d of %d (%s)", rank, world_size, backend)
        return cls(rank, world_size, local_rank, backend)

    @property
    def is_main(self) -> bool:
        """The process that writes checkpoints, outputs and MLflow."""
        return self.rank == 0

    def share_of(self, global_batch: int) -> slice:
        """This process's slice of a global batch (equal shares, in rank order)."""
        if global_batch % self.world_size:
            raise ConfigError(f"train.batch_size {global_batch} must be a multiple of the {self.world_size} "
                              "data-parallel processes")
        size = global_batch // self.world_size
        return slice(self.rank * size, (self.rank + 1) * size)

    def average_gradients(self, parameters: list[nn.Parameter]) -> None:
        """Replace each gradient by its mean over the processes (one all-reduce)."""
        grads = [p.grad for p in parameters if p.grad is not None]
        if not grads:
            return
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat)
        flat /= self.world_size
        for grad, chunk in zip(grads, flat.split([g.numel() for g in grads])):
            grad.copy_(chunk.view(grad.shape))

    def gather(self, local: torch.Tensor) -> torch.Tensor:
        """Every process's ``local`` batch, concatenated in rank order (no gradient)."""
        parts = [torch.empty_like(local) for _ in range(self.world_size)]
        dist.all_gather(parts, local.contiguous())
        return torch.cat(parts)

    def share(self, global_batch: torch.Tensor) -> torch.Tensor:
        """This process's share of a gathered global batch."""
        return global_batch[self.share_of(len(global_batch))]

    def average(self, values: torch.Tensor) -> torch.Tensor:
        """Mean of ``values`` over the processes."""
        values = values.clone()
        dist.all_reduce(values)
        return values / self.world_size

    def any(self, flag: bool) -> bool:
        """True on every process when ``flag`` is true on any of them."""
        value = torch.tensor([int(flag)], dtype=torch.int32)
        dist.all_reduce(value, op=dist.ReduceOp.MAX, group=self._control)
        return bool(value.item())

    def broadcast_modules(self, modules: Iterable[nn.Module]) -> None:
        """Copy process 0's parameters and buffers to every process."""
        for module in modules:
            for tensor in [*module.parameters(), *module.buffers()]:
                dist.broadcast(tensor.data, src=0)

    def barrier(self) -> None:
        dist.barrier(group=self._control)

    def close(self) -> None:
        if dist.is_initialized():
            dist.destroy_process_group()


def use_sync_batchnorm(module: nn.Module, names: Iterable[str]) -> None:
    """Turn the BatchNorm layers of ``module``'s networks ``names`` into SyncBatchNorm (CUDA only).

    The converted layers keep the same parameter and buffer objects, so optimisers built
    beforehand stay valid and state dicts keep their keys.
    """
    for name in names:
        setattr(module, name, nn.SyncBatchNorm.convert_sync_batchnorm(getattr(module, name)))
