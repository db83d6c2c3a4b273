"""The training loop: ``TrainingRun`` sets a run up (data, model, schedule, resume) and trains
it epoch by epoch; ``train`` is the engine's one entry point.

Schedules in images (StyleGAN's kimg): with ``train.kimg`` set, the run is counted in
thousands of images shown instead of epochs: an "epoch" becomes a tick of ``steps_per_epoch``
steps (history row, sample grid and checkpoint cadence as before, in ticks) and the run stops at
the first tick end at or past ``kimg`` * 1000 images. history.csv gains a ``kimg`` column,
run.json says ``kimg``, MLflow's step is the number of images shown, and the model reads the
images shown before each step (``GANModel.images_shown``) for its own schedules (EMA ramp-up,
augmentation strength). The counter is the step count times the batch, so it resumes exactly.

All randomness comes from generators seeded from ``seed``: on CPU (deterministic algorithms,
fixed thread count) the same seed, config and data give bit-identical weights, and a run
resumed from its checkpoint equals an uninterrupted one. CUDA kernels are not all
deterministic, so GPU runs are only close.

Interruptions: SIGTERM (Snakemake, SLURM pre-emption) makes the loop write a checkpoint at the
next step boundary and stop with ``TrainingInterrupted`` (the CLI exits with status 143);
rerunning the same command resumes mid-epoch into the same MLflow run.
"""
from __future__ import annotations

import contextlib
import logging
import math
import signal
import threading
import time
from pathlib import Path
from typing import Any, Iterator, Mapping

import torch

from pipeline.distributed import DataParallel
from pipeline.engine.artefacts import RunArtefacts, RunIdentity
from pipeline.engine.checkpoint import Checkpoint, EpochInProgress, Progress, resume_fingerprint
from pipeline.engine.data import load_training_data
from pipeline.engine.knobs import numerics, resolve_config, select_device, split_seed
from pipeline.engine.step import lr_schedulers, prepare_model, train_step, uses_cuda_graphs
from pipeline.errors import ConfigError, PipelineError
from pipeline.progress import progress_counter
from pipeline.tracking import data_version

log = logging.getLogger(__name__)


class TrainingInterrupted(PipelineError):
    """Training stopped on a signal after writing a checkpoint; rerunning resumes it."""


class StopRequest:
    """SIGTERM only sets a flag while ``listening``; the loop asks at step boundaries, and under
    data parallelism every process agrees, so all stop at the same step."""

    def __init__(self, parallel: DataParallel | None = None):
        self.parallel = parallel
        self.signal: int | None = None

    @contextlib.contextmanager
    def listening(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():  # signals reach the main thread only
            yield
            return

        def request_stop(signum: int, frame: Any) -> None:
            self.signal = signum

        previous = signal.signal(signal.SIGTERM, request_stop)
        try:
            yield
        finally:
            signal.signal(signal.SIGTERM, previous)

    def requested(self) -> bool:
        """Whether a stop signal arrived (on any process)."""
        if self.parallel is not None and self.parallel.world_size > 1:
            if self.parallel.any(self.signal is not None):
                self.signal = self.signal or signal.SIGTERM
                return True
            return False
        return self.signal is not None


def out_of_memory_advice(batch_size: int, world_size: int, image_size: str, bf16: bool) -> str:
    """One line: what ran out of memory and which batch size to try instead."""
    share = batch_size // world_size
    where = f"train.batch_size {batch_size} ({share} per GPU, {image_size} images, bf16 {bf16})"
    if share > 1:
        smaller = max(world_size, (share // 2) * world_size)
        return f"CUDA out of memory at {where}: try train.batch_size: {smaller}"
    return (f"CUDA out of memory at {where}: the batch cannot shrink further; try bf16: true, "
            "a smaller train.crop_size or image_size, narrower networks, or a GPU with more memory")


class TrainingRun:
    """One training run: set up, and resumed from its checkpoint when it has one, in
    ``__init__``; trained by ``run``.

    Where it stands (``progress``) and every stateful part the checkpoint captures are held
    here, so that resuming, even mid-epoch, is exact.
    """

    def __init__(self, train_files: Mapping[str, Path], val_files: Mapping[str, Path], out_dir: Path,
                 cfg: Mapping[str, Any] | None, experiment: str, weights_dir: Path | None, seed: int,
                 parallel: DataParallel | None = None):
        cls, model_cfg, self.cfg = resolve_config(cfg)
        names = cls.input_names()
        if set(train_files) != set(names) or set(val_files) != set(names):
            raise ConfigError(f"{cls.name} trains on the inputs {list(names)}, "
                              f"got {sorted(train_files)} (training) / {sorted(val_files)} (validation)")
        self.parallel = parallel
        self.is_main = parallel is None or parallel.is_main
        self.world_size = 1 if parallel is None else parallel.world_size
        self.device = select_device(self.cfg["device"], 0 if parallel is None else parallel.local_rank)
        self.identity = RunIdentity(
            experiment, {"model": {"name": cls.name, **model_cfg}, "train": self.cfg, "seed": seed},
            data_version([Path(train_files[d]) for d in names] + [Path(val_files[d]) for d in names]),
            {d: Path(train_files[d]).parent.name for d in names})

        self.data = load_training_data(cls.inputs, train_files, val_files, self.cfg["image_size"],
                                       self.cfg["n_samples"], self.device)
        init_seed, data_seed, model_seed = split_seed(seed)
        torch.manual_seed(init_seed)
        self.model = cls(model_cfg, weights_dir, model_seed,
                         image_size=self.data.train_size(self.cfg["crop_size"])).to(self.device)
        self.data.fit_to(self.model, self.cfg["crop_size"])
        share = None if parallel is None else parallel.share_of(self.cfg["batch_size"])
        memory_format = torch.channels_last if self.cfg["channels_last"] else torch.contiguous_format
        self.sampler = self.data.sampler(self.model, self.cfg["batch_size"], self.cfg["crop_size"],
                                         self.cfg["flip_probability"], share, memory_format)
        self.schedulers = lr_schedulers(self.model.optimizers, self.cfg["lr_constant_epochs"],
                                        self.cfg["lr_decay_epochs"])
        self.data_rng = torch.Generator().manual_seed(data_seed)
        self.steps = self.cfg["steps_per_epoch"] or math.ceil(self.data.largest_input / self.cfg["batch_size"])
        self.total_epochs = self._total_epochs()

        self.checkpoint = Checkpoint(Path(out_dir) / "checkpoint.pt",
                                     resume_fingerprint(self.identity.knobs, self.identity.data_version),
                                     self.model, self.schedulers, self.data_rng, self.device)
        resumed = self.checkpoint.load(self.total_epochs)
        self.progress = resumed or Progress()
        self.resumed_from = None if resumed is None else resumed.epoch
        self.artefacts = RunArtefacts(out_dir, self.identity, self.model, self.data.samples, self.device,
                                      self.world_size)
        self.stop = StopRequest(parallel)
        if parallel is not None and parallel.world_size > 1:
            parallel.broadcast_modules(self.model.networks().values())
        prepare_model(self.model, self.cfg, self.device, parallel)

    def _total_epochs(self) -> int:
        """Epochs (ticks) to run: train.epochs, or with train.kimg enough ticks to show that many
        thousand images (rounded up to whole ticks, as StyleGAN's loop ends at a tick)."""
        if self.cfg["kimg"] is None:
            return self.cfg["epochs"]
        return max(1, math.ceil(self.cfg["kimg"] * 1000 / (self.steps * self.cfg["batch_size"])))

    @property
    def images_shown(self) -> int:
        """Images (global batch) shown to the model so far."""
        return self.progress.step * self.cfg["batch_size"]

    def _metric_step(self) -> int:
        """MLflow's step: images shown on a kimg schedule, else the epoch."""
        return self.images_shown if self.cfg["kimg"] is not None else self.progress.epoch

    def run(self, tracking_uri: str) -> dict[str, Any] | None:
        """Train up to ``epochs`` (or ``kimg``), logging to MLflow; returns run.json's content
        (None on data-parallel processes other than 0). The MLflow run ends FINISHED, KILLED
        (a stop signal, Ctrl-C) or FAILED."""
        self.artefacts.open(tracking_uri, self.progress.run_id, fresh=self.resumed_from is None,
                            is_main=self.is_main)
        if self.is_main:
            self.progress.run_id = self.artefacts.tracker.run_id
        tracker = self.artefacts.tracker
        steps_left = (self.total_epochs - self.progress.epoch) * self.steps - self.progress.current.step_in_epoch
        counter = progress_counter(f"train {self.identity.experiment}", steps_left, unit="step",
                                   interval_s=self.cfg["progress_interval_s"]) if self.is_main else None
        try:
            with self.stop.listening():
                try:
                    run = self._train(counter, tracking_uri)
                except torch.cuda.OutOfMemoryError as err:
                    size = str(self.cfg["crop_size"] or "x".join(map(str, self.data.image_size)))
                    raise ConfigError(out_of_memory_advice(self.cfg["batch_size"], self.world_size, size,
                                                           self.cfg["bf16"])) from err
        except (TrainingInterrupted, KeyboardInterrupt):
            tracker.finish("KILLED")
            raise
        except BaseException:
            tracker.finish("FAILED")
            raise
        finally:
            if counter is not None:
                counter.close()
        tracker.finish("FINISHED")
        return run

    def _train(self, counter: Any, tracking_uri: str) -> dict[str, Any] | None:
        """The epochs left, each followed by its grid, history and checkpoint at their cadence;
        then the outputs."""
        started = time.perf_counter()
        train_seconds, images = 0.0, 0
        while self.progress.epoch < self.total_epochs:
            first_step = self.progress.step
            finished, seconds = self._run_epoch(counter)
            train_seconds += seconds
            images += (self.progress.step - first_step) * self.cfg["batch_size"]
            if finished and self.is_main:
                self._after_epoch(started)
            if self.stop.signal is not None and self.progress.epoch < self.total_epochs:
                self._checkpoint_and_stop(started)
        if not self.is_main:
            return None
        epoch = self.progress.epoch
        if not self.artefacts.sample_grid_path(epoch).is_file():
            # resumed at the last epoch after the outputs were removed (DVC does so before a stage)
            self.artefacts.save_samples(epoch)
        run = self.artefacts.finish(self.progress, self._seconds_so_far(started),
                                    images / train_seconds if train_seconds else None, self.data.image_size,
                                    self.resumed_from, tracking_uri, self._metric_step())
        log.info("done: run %s, %.1f s, %s %s/s", run["run_id"], run["seconds"], run[self.artefacts.throughput_key],
                 self.artefacts.throughput_unit.replace("_", " "))
        return run

    def _seconds_so_far(self, started: float) -> float:
        """The run's seconds, earlier processes included."""
        return self.progress.seconds_before + time.perf_counter() - started

    def _after_epoch(self, started: float) -> None:
        """Sample grid, history.csv and checkpoint at their cadence (and always after the last epoch)."""
        epoch = self.progress.epoch
        last = epoch == self.total_epochs
        if epoch % self.cfg["sample_every"] == 0 or last:
            self.artefacts.save_samples(epoch)
        self.artefacts.write_history(self.progress.history)
        if epoch % self.cfg["checkpoint_every"] == 0 or last:
            self.checkpoint.save(self.progress, self._seconds_so_far(started))

    def _checkpoint_and_stop(self, started: float) -> None:
        """Checkpoint where the loop stands (process 0), then end the run as interrupted."""
        if self.is_main:
            self.checkpoint.save(self.progress, self._seconds_so_far(started))
        if self.parallel is not None:
            self.parallel.barrier()  # no process exits (and makes torchrun stop the rest) before the write
        name = signal.Signals(self.stop.signal).name
        raise TrainingInterrupted(f"stopped by {name} at epoch {self.progress.epoch + 1}, step "
                                  f"{self.progress.current.step_in_epoch} of {self.steps}; checkpoint "
                                  f"{self.checkpoint.path} written: rerun the same command to resume")

    def _run_epoch(self, counter: Any) -> tuple[bool, float]:
        """Run the rest of the current epoch; returns (finished, seconds spent now). An epoch stopped
        by a signal is left unfinished (position and partial sums kept for the checkpoint)."""
        current = self.progress.current
        if current.step_in_epoch == 0:
            current.rng_at_start = self.data_rng.get_state()
        else:  # resumed mid-epoch: draw the same plan again
            self.data_rng.set_state(current.rng_at_start)
        plan = self.sampler.plan_epoch(self.steps, self.data_rng)
        self.model.start_epoch(self.progress.epoch)
        cuda_graphs = uses_cuda_graphs(self.cfg, self.device)
        self.model.train()
        t0 = time.perf_counter()
        for index in range(current.step_in_epoch, self.steps):
            if cuda_graphs:
                torch.compiler.cudagraph_mark_step_begin()
            self.progress.step += 1
            self.model.images_shown = self.images_shown - self.cfg["batch_size"]
            train_step(self.model, self.sampler.batch(plan, index), self.progress.step, current.sums, current.counts)
            current.step_in_epoch = index + 1
            if counter is not None:
                counter.update(1)
            if current.step_in_epoch < self.steps and self.stop.requested():
                if self.device.type == "cuda":
                    torch.cuda.synchronize(self.device)
                seconds = time.perf_counter() - t0
                current.seconds += seconds
                return False, seconds
        self.stop.requested()
        means = self._mean_losses(current)
        seconds = time.perf_counter() - t0
        self._close_epoch(means, current.seconds + seconds)
        return True, seconds

    def _mean_losses(self, current: EpochInProgress) -> dict[str, float]:
        """The epoch's mean of each loss (over all processes): its one host synchronisation."""
        names = list(current.sums)
        totals = torch.stack([current.sums[name] for name in names])
        if self.parallel is not None and self.parallel.world_size > 1:
            totals = self.parallel.average(totals)
        counts = torch.tensor([current.counts[name] for name in names], device=totals.device)
        return dict(zip(names, (totals / counts).tolist()))

    def _close_epoch(self, means: Mapping[str, float], epoch_seconds: float) -> None:
        """The epoch's losses into the history and MLflow; one LR schedule step."""
        lrs = {f"lr_{name}": opt.param_groups[0]["lr"] for name, opt in self.model.optimizers.items()}
        for scheduler in self.schedulers.values():
            scheduler.step()
        self.progress.epoch += 1
        self.progress.current = EpochInProgress()
        losses = {name: means.get(name, math.nan) for name in self.model.loss_names}
        self.progress.history.append({"epoch": self.progress.epoch, "step": self.progress.step,
                                      "kimg": self.images_shown / 1000, **losses})
        if self.is_main:
            log.info("epoch %d/%d (%.1f s, %.3f kimg): %s", self.progress.epoch, self.total_epochs, epoch_seconds,
                     self.images_shown / 1000, ", ".join(f"{k} {v:.4g}" for k, v in losses.items()))
        self.artefacts.log_epoch(losses, lrs, epoch_seconds, self.steps * self.cfg["batch_size"] / epoch_seconds,
                                 self._metric_step())


def train(train_files: Mapping[str, Path], val_files: Mapping[str, Path], out_dir: Path,
          cfg: Mapping[str, Any] | None, experiment: str, tracking_uri: str, weights_dir: Path | None,
          seed: int) -> dict[str, Any] | None:
    """Train the configured model on one slices npz per named input; returns run.json's content
    (None on data-parallel processes other than 0).

    ``cfg`` = {"model": {"name": ..., ...}, "train": {...}} (see ``TRAIN_DEFAULTS`` and the
    model's knobs). ``train_files`` / ``val_files`` map each of the model's inputs (CycleGAN:
    "a", "b"; DCGAN / cGAN: "images") to a slices npz; the validation files feed the sample
    grids. The MLflow run goes to ``experiment`` in ``tracking_uri``; ImageNet weight files
    are looked up in ``weights_dir``. A ``checkpoint.pt`` in
    ``out_dir`` written under the same config, seed and data is resumed. Bad input fails
    before an MLflow run is created. With ``train.distributed`` the process joins the group
    torchrun started. Raises TrainingInterrupted after a SIGTERM-triggered checkpoint.
    """
    _, _, train_cfg = resolve_config(cfg)
    device = select_device(train_cfg["device"])
    parallel = DataParallel.from_environment(device.type) if train_cfg["distributed"] else None
    try:
        with numerics(train_cfg["deterministic"], train_cfg["threads"], device):
            return TrainingRun(train_files, val_files, out_dir, cfg, experiment, weights_dir, seed,
                               parallel).run(tracking_uri)
    finally:
        if parallel is not None:
            parallel.close()
