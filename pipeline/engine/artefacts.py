"""What a training run leaves behind, in ``out_dir`` and in its MLflow run.

Files (each written atomically, by process 0 only): ``samples/epoch_XXXX.png`` (the sample
grids), ``history.csv`` (one row per epoch or kimg tick), ``model.pt`` (the export a task
loads) and ``run.json`` (what ran, where, how fast, how reproducible). The MLflow run gets the
knobs as params, the provenance as tags, the losses per epoch, and the same files.
"""
from __future__ import annotations

import csv
import io
import os
import platform
import resource
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import torch

from pipeline.atomic import atomic_path, write_json, write_text
from pipeline.engine.checkpoint import Progress
from pipeline.models import GANModel
from pipeline.tracking import Tracker, git_state, params_hash


@dataclass(frozen=True)
class RunIdentity:
    """What names and describes a run, the same in run.json, MLflow and the checkpoint."""

    experiment: str
    #: {"model": {"name": ..., ...}, "train": {...}, "seed": seed}: every knob, as MLflow's params
    knobs: dict[str, Any]
    #: sha256 of the training and validation files' contents
    data_version: str
    #: input name -> dataset name (the folder of its training npz)
    datasets: dict[str, str]

    @property
    def params_hash(self) -> str:
        return params_hash(self.knobs)

    @property
    def run_name(self) -> str:
        model = self.knobs["model"]
        return f"{self.experiment}-{model.get('variant', model['name'])}-{self.params_hash[:8]}"


def throughput_unit(input_names: tuple[str, ...]) -> str:
    """What one element of a batch is, to name throughput by: an image for a model of one input
    (DCGAN, StyleGAN2, seg2ct's image with its map), an image pair for two (CycleGAN's a and b)."""
    return {1: "images", 2: "image_pairs"}.get(len(input_names), "image_tuples")


def save_sample_grid(target: Path, visuals: dict[str, torch.Tensor], rows: tuple[tuple[str, ...], ...],
                     labels: Mapping[str, str], title: str) -> None:
    """One row per sample and visual group (e.g. original / translated / cycle-reconstructed).

    Column titles spell the model's visual names with dataset names: "a->b" reads "ct_head->mri_t2".
    """
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(next(iter(visuals.values())))
    n_cols = max(len(group) for group in rows)
    fig, axes = plt.subplots(len(rows) * n, n_cols, figsize=(2.2 * n_cols, 2.2 * len(rows) * n + 0.4),
                             squeeze=False, layout="constrained")
    for g, group in enumerate(rows):
        for i in range(n):
            for c in range(n_cols):
                ax = axes[g * n + i, c]
                ax.axis("off")
                if c < len(group):
                    ax.imshow(visuals[group[c]][i, 0].float().cpu().numpy(), cmap="gray", vmin=-1, vmax=1)
                    if i == 0:
                        ax.set_title("->".join(labels.get(part, part) for part in group[c].split("->")), fontsize=8)
    fig.suptitle(title, fontsize=10)
    with atomic_path(target) as tmp:
        fig.savefig(tmp, format="png", dpi=80)
    plt.close(fig)


def write_history(target: Path, rows: list[dict[str, float]], loss_names: tuple[str, ...],
                  with_kimg: bool = False) -> None:
    """history.csv: epoch, step, (kimg: thousands of images shown, on a kimg schedule), the losses."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["epoch", "step", *(["kimg"] if with_kimg else []), *loss_names])
    for row in rows:
        kimg = [format(row["kimg"], ".10g")] if with_kimg else []
        writer.writerow([row["epoch"], row["step"], *kimg, *(format(row[name], ".10g") for name in loss_names)])
    write_text(target, buffer.getvalue())


def peak_memory_mb(device: torch.device) -> dict[str, float]:
    """The process's peak resident set, and on CUDA the peak GPU allocation, in MB."""
    peak = {"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    if device.type == "cuda":
        peak["peak_gpu_allocated_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
    return peak


def remove_stale_temporaries(out_dir: Path) -> None:
    """Temporaries of writes that a kill -9 interrupted (atomic_path names them ``.<name>.*.tmp*``)."""
    for folder in (out_dir, out_dir / "samples"):
        for stale in folder.glob(".*.tmp*"):
            if stale.is_file():
                stale.unlink()


class NoTracking:
    """Stands in for the MLflow tracker on data-parallel processes other than 0."""

    run_id = None

    def __getattr__(self, name: str):
        return lambda *args, **kwargs: None


class RunArtefacts:
    """The outputs of one run: its files in ``out_dir`` and its MLflow run (``tracker``, a
    stand-in that records nothing until ``open`` starts the run on process 0)."""

    def __init__(self, out_dir: Path, identity: RunIdentity, model: GANModel, samples: Mapping[str, torch.Tensor],
                 device: torch.device, world_size: int):
        self.out_dir, self.identity, self.model, self.samples = Path(out_dir), identity, model, samples
        self.device, self.world_size = device, world_size
        self.tracker: Tracker | NoTracking = NoTracking()
        self.commit, self.dirty = "unknown", None
        self.throughput_unit = throughput_unit(model.input_names())
        #: run.json's and MLflow's name of the training throughput, e.g. images_per_s
        self.throughput_key = f"{self.throughput_unit}_per_s"

    @property
    def train_knobs(self) -> dict[str, Any]:
        return self.identity.knobs["train"]

    def sample_grid_path(self, epoch: int) -> Path:
        return self.out_dir / "samples" / f"epoch_{epoch:04d}.png"

    def open(self, tracking_uri: str, resume_run_id: str | None, fresh: bool, is_main: bool) -> None:
        """On process 0: clear what killed writes left (and, starting afresh, an earlier run's
        grids), then start the MLflow run or reopen ``resume_run_id``. Params and tags are logged
        from every process (a no-op but on process 0)."""
        if is_main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            remove_stale_temporaries(self.out_dir)
            if fresh:
                for stale in (self.out_dir / "samples").glob("epoch_*.png"):
                    stale.unlink()
            self.tracker = Tracker.start(tracking_uri, self.identity.experiment, self.identity.run_name,
                                         resume_run_id=resume_run_id)
        self.commit, self.dirty = git_state()
        self.tracker.log_params(self.identity.knobs)
        self.tracker.set_tags({"git_commit": self.commit, "git_dirty": self.dirty,
                               "mlflow.source.git.commit": self.commit,
                               "data_version": self.identity.data_version, "params_hash": self.identity.params_hash,
                               "device": self.device.type, "world_size": self.world_size, "model": self.model.name,
                               **{f"pretrained.{k}": v for k, v in self.model.pretrained.items()},
                               **{f"domain.{d}": label for d, label in self.identity.datasets.items()}})

    def save_samples(self, epoch: int) -> None:
        """The sample grid of ``epoch`` from the fixed validation images, into the MLflow run too."""
        target = self.sample_grid_path(epoch)
        self.model.eval()
        visuals = self.model.compute_visuals(self.samples)
        self.model.train()
        save_sample_grid(target, visuals, self.model.visual_names, self.identity.datasets,
                         f"{self.identity.experiment}, epoch {epoch}")
        self.tracker.log_artifact(target, "samples")

    def log_epoch(self, losses: Mapping[str, float], lrs: Mapping[str, float], seconds: float, per_s: float,
                  step: int) -> None:
        """One finished epoch's (tick's) metrics into MLflow."""
        self.tracker.log_metrics({**losses, **lrs, "epoch_seconds": seconds, self.throughput_key: per_s}, step=step)

    def write_history(self, rows: list[dict[str, float]]) -> None:
        write_history(self.out_dir / "history.csv", rows, self.model.loss_names,
                      with_kimg=self.train_knobs["kimg"] is not None)

    def finish(self, progress: Progress, seconds: float, per_s: float | None, image_size: tuple[int, int],
               resumed_from: int | None, tracking_uri: str, metric_step: int) -> dict[str, Any]:
        """model.pt, the final history.csv and run.json, logged to MLflow; returns run.json's content."""
        self.write_history(progress.history)
        crop_size, seed = self.train_knobs["crop_size"], self.identity.knobs["seed"]
        payload = {**self.model.export(), "image_size": list(image_size), "crop_size": crop_size,
                   "domains": self.identity.datasets, "task": self.model.task, "pretrained": self.model.pretrained,
                   "seed": seed}
        with atomic_path(self.out_dir / "model.pt") as tmp:
            torch.save(payload, tmp)
        cpu, deterministic = self.device.type == "cpu", self.train_knobs["deterministic"]
        bit_identical = cpu and deterministic and self.world_size == 1
        run = {
            "run_id": self.tracker.run_id, "run_name": self.identity.run_name, "experiment": self.identity.experiment,
            "tracking_uri": tracking_uri, "model": self.model.name,
            "variant": self.identity.knobs["model"].get("variant"), "device": self.device.type,
            "device_name": (torch.cuda.get_device_name(self.device) if self.device.type == "cuda"
                            else f"{platform.machine()} CPU, {os.cpu_count()} logical cores"),
            "world_size": self.world_size,
            "threads": torch.get_num_threads(), "pretrained": self.model.pretrained, "seconds": round(seconds, 3),
            "epochs": progress.epoch, "steps": progress.step,
            "kimg": progress.step * self.train_knobs["batch_size"] / 1000, "seed": seed,
            "params_hash": self.identity.params_hash, "data_version": self.identity.data_version,
            "domains": self.identity.datasets, "image_size": list(image_size), "crop_size": crop_size,
            "resumed_from_epoch": resumed_from,
            self.throughput_key: None if per_s is None else round(per_s, 3),
            **{k: round(v, 1) for k, v in peak_memory_mb(self.device).items()},
            "bit_identical": bit_identical,
            "determinism": ("same seed, config, data and thread count give bit-identical weights on CPU"
                            if bit_identical else
                            "not bit-identical: CUDA kernels, data-parallel reductions, or deterministic mode off"),
            "git_commit": self.commit, "git_dirty": self.dirty, "torch": torch.__version__,
        }
        write_json(self.out_dir / "run.json", run)
        self.tracker.log_metrics({"run_seconds": run["seconds"], f"run_{self.throughput_key}": run[self.throughput_key],
                                  "peak_rss_mb": run["peak_rss_mb"]}, step=metric_step)
        self.tracker.log_artifact(self.out_dir / "history.csv")
        self.tracker.log_artifact(self.out_dir / "run.json")
        return run
