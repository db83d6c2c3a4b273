"""checkpoint.pt: all that a resumed run needs to go on exactly as if it had never stopped,
written so that a kill or a full disk at any moment leaves the previous one loadable.

A checkpoint holds the networks, optimisers and LR schedulers, the model's own extra state
(pools, fixed noise, EMA weights, ADA, its generators), every RNG state (torch's, the data
generator's, CUDA's), where the run stands (``Progress``, the epoch under way included) and
the fingerprint of the config, seed and data it was written under: a checkpoint of another run
is not resumed. It is serialised in memory, written under a temporary name beside the target
and renamed into place.
"""
from __future__ import annotations

import errno
import io
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import torch

from pipeline.atomic import atomic_path
from pipeline.errors import InputDataError, PipelineError
from pipeline.models import GANModel
from pipeline.tracking import params_hash

log = logging.getLogger(__name__)

#: Train knobs that change neither the numbers nor the schedule: a checkpoint written under
#: other values of these still resumes.
RESUME_NEUTRAL_KNOBS = ("epochs", "kimg", "checkpoint_every", "sample_every", "n_samples", "device", "compile",
                        "compile_mode", "distributed", "gpus", "progress_interval_s")


def resume_fingerprint(knobs: Mapping[str, Any], data_version: str) -> str:
    """What a checkpoint must have been written under to be resumed: the model knobs, the seed,
    the data, and the train knobs that change the numbers or the schedule.

    ``knobs`` = {"model": {...}, "train": {...}, "seed": seed}, as the run logs them."""
    return params_hash({"model": knobs["model"], "seed": knobs["seed"], "data": data_version,
                        "train": {k: v for k, v in knobs["train"].items() if k not in RESUME_NEUTRAL_KNOBS}})


@dataclass
class EpochInProgress:
    """The epoch under way: steps done, the data generator's state at its start (so that a
    resumed run draws the same plan again), its seconds and its loss sums so far (on the device)."""

    step_in_epoch: int = 0
    rng_at_start: torch.Tensor | None = None
    seconds: float = 0.0
    sums: dict[str, torch.Tensor] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)


@dataclass
class Progress:
    """Where a run stands: finished epochs (ticks) and steps, the history rows, its MLflow run,
    the seconds spent by earlier processes, and the epoch under way."""

    epoch: int = 0
    step: int = 0
    history: list[dict[str, float]] = field(default_factory=list)
    run_id: str | None = None
    seconds_before: float = 0.0
    current: EpochInProgress = field(default_factory=EpochInProgress)


def write_checkpoint(path: Path, state: Mapping[str, Any]) -> None:
    """Serialise ``state`` in memory, then write it under a temporary name and rename it onto
    ``path``: a full disk or a kill at any moment leaves the previous checkpoint as it was.

    (torch.save straight to a file reports a full disk as an opaque RuntimeError; a plain file
    write reports it as OSError ENOSPC.)
    """
    buffer = io.BytesIO()
    torch.save(dict(state), buffer)
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        fh.write(buffer.getbuffer())


class Checkpoint:
    """One run's checkpoint file and the stateful parts it captures and restores: the model (its
    networks, optimisers and extra state), the LR schedulers, the data generator and the RNGs
    of torch and of ``device``."""

    def __init__(self, path: Path, fingerprint: str, model: GANModel,
                 schedulers: Mapping[str, torch.optim.lr_scheduler.LRScheduler], data_rng: torch.Generator,
                 device: torch.device):
        self.path, self.fingerprint, self.model = Path(path), fingerprint, model
        self.schedulers, self.data_rng, self.device = schedulers, data_rng, device

    def state(self, progress: Progress, seconds: float) -> dict[str, Any]:
        """What the file holds, ``seconds`` being the run's time so far (earlier processes included)."""
        current = progress.current
        partial = None
        if current.step_in_epoch:
            partial = {"step_in_epoch": current.step_in_epoch, "rng_at_start": current.rng_at_start,
                       "seconds": current.seconds, "counts": dict(current.counts),
                       "sums": {name: value.detach().cpu() for name, value in current.sums.items()}}
        return {
            "fingerprint": self.fingerprint, "epoch": progress.epoch, "step": progress.step,
            "history": progress.history, "run_id": progress.run_id, "seconds": seconds, "partial_epoch": partial,
            "networks": {name: net.state_dict() for name, net in self.model.networks().items()},
            "optimizers": {name: opt.state_dict() for name, opt in self.model.optimizers.items()},
            "schedulers": {name: scheduler.state_dict() for name, scheduler in self.schedulers.items()},
            "model_state": self.model.extra_state(),
            "rng": {"torch": torch.get_rng_state(), "data": self.data_rng.get_state(),
                    "cuda": [torch.cuda.get_rng_state(self.device)] if self.device.type == "cuda" else []},
        }

    def restore(self, state: Mapping[str, Any]) -> Progress:
        """Put every stateful part back as ``state`` holds it; returns where the run stood."""
        for name, net in self.model.networks().items():
            net.load_state_dict(state["networks"][name])
        for name, opt in self.model.optimizers.items():
            opt.load_state_dict(state["optimizers"][name])
        for name, scheduler in self.schedulers.items():
            scheduler.load_state_dict(state["schedulers"][name])
        self.model.load_extra_state(state["model_state"])
        torch.set_rng_state(state["rng"]["torch"])
        self.data_rng.set_state(state["rng"]["data"])
        if self.device.type == "cuda" and state["rng"]["cuda"]:
            torch.cuda.set_rng_state(state["rng"]["cuda"][0], self.device)
        current = EpochInProgress()
        partial = state.get("partial_epoch")
        if partial is not None:
            current = EpochInProgress(partial["step_in_epoch"], partial["rng_at_start"], partial["seconds"],
                                      {name: value.to(self.device) for name, value in partial["sums"].items()},
                                      partial["counts"])
        return Progress(state["epoch"], state["step"], state["history"], state["run_id"], state["seconds"], current)

    def save(self, progress: Progress, seconds: float) -> None:
        """Write the checkpoint atomically; a failed write is a PipelineError saying what is left."""
        try:
            write_checkpoint(self.path, self.state(progress, seconds))
        except OSError as err:
            reason = "the disk is full" if err.errno in (errno.ENOSPC, errno.EDQUOT) else f"{err.strerror or err}"
            kept = "the previous checkpoint is untouched" if self.path.is_file() else "no checkpoint yet"
            raise PipelineError(f"{self.path}: cannot write the checkpoint of epoch {progress.epoch} "
                                f"({reason}); {kept}: free space and rerun to resume") from err

    def load(self, total_epochs: int) -> Progress | None:
        """Restore from the file if it belongs to this run and is not past ``total_epochs``;
        None (start afresh) otherwise."""
        if not self.path.is_file():
            return None
        try:
            state = torch.load(self.path, map_location="cpu", weights_only=True)
        except Exception as err:
            raise InputDataError(self.path, f"cannot be read as a checkpoint ({err}); delete it to start afresh") from err
        if state.get("fingerprint") != self.fingerprint:
            log.warning("%s was written under another config, seed or data: starting afresh", self.path)
            return None
        if state["epoch"] > total_epochs:
            log.warning("%s is at epoch %d, past the %d asked for: starting afresh", self.path, state["epoch"],
                        total_epochs)
            return None
        progress = self.restore(state)
        log.info("resuming from %s at epoch %d, step %d of the next", self.path, progress.epoch,
                 progress.current.step_in_epoch)
        return progress
