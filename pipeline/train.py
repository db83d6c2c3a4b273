"""The one training engine: epochs, steps, update ratios, LR schedule, checkpoints, history,
sample grids and MLflow logging, for any model in ``pipeline.models``.

Data: each domain's ``images`` (N, H, W) in [0, 1] become one [-1, 1] tensor on the device;
every step draws an unpaired batch per domain from seeded shuffled passes and flips it on the
device, so the hot loop does no per-image Python work. All randomness comes from generators
seeded from ``seed``: on CPU (deterministic algorithms, fixed thread count) the same seed,
config and data give bit-identical weights, and a run resumed from its checkpoint equals an
uninterrupted one. CUDA kernels are not all deterministic, so GPU runs are only close.

Outputs in ``out_dir`` (each written atomically): model.pt, checkpoint.pt, history.csv,
run.json, samples/epoch_XXXX.png.
"""
from __future__ import annotations

import argparse
import contextlib
import csv
import functools
import io
import json
import logging
import math
import os
import platform
import resource
import time
import zipfile
from pathlib import Path
from typing import Any, Iterator, Mapping

import numpy as np
import torch
import torch.nn.functional as F

from pipeline.atomic import atomic_path, write_json, write_text
from pipeline.errors import ConfigError, InputDataError
from pipeline.models import GANModel, merge_knobs, model_class
from pipeline.models.networks import PRETRAINED_CHOICES
from pipeline.tracking import Tracker, data_version, git_state, params_hash

log = logging.getLogger(__name__)

#: Engine knobs (the ``train`` section of the config) with their defaults: the full GPU
#: profile of report 001 / the classic CycleGAN. The CPU profile overrides them in params.yaml.
TRAIN_DEFAULTS: dict[str, Any] = {
    "epochs": 200,              # epochs to train in total (a resumed run continues up to this)
    "steps_per_epoch": None,    # None: ceil(largest domain size / batch_size)
    "batch_size": 1,            # images per domain per step
    "image_size": None,         # resize every image to image_size x image_size once at load; None keeps the data's size
    "flip_probability": 0.5,    # chance of a left-right flip per image per step
    "lr_constant_epochs": 100,  # epochs at the initial learning rates ...
    "lr_decay_epochs": 100,     # ... then linear decay to 0 over this many (0: constant forever)
    "checkpoint_every": 5,      # epochs between checkpoints (and always after the last)
    "sample_every": 5,          # epochs between sample grids (and always after the last)
    "n_samples": 4,             # validation images per domain in each sample grid
    "device": "auto",           # auto (CUDA when available), cpu or cuda
    "bf16": False,              # bfloat16 autocast for forward passes
    "channels_last": False,     # channels-last memory format (faster convolutions on GPU)
    "deterministic": True,      # deterministic algorithms (bit-identical on CPU; CUDA: best effort)
    "threads": 0,               # CPU threads for torch (0: torch's default); part of the numerics
}
#: Knobs that change neither the numbers nor the schedule: a checkpoint written under other
#: values of these still resumes.
_RESUME_NEUTRAL = ("epochs", "checkpoint_every", "sample_every", "n_samples", "device")
DEVICES = ("auto", "cpu", "cuda")


def resolve_config(cfg: Mapping[str, Any] | None) -> tuple[type[GANModel], dict[str, Any], dict[str, Any]]:
    """Split ``{"model": {"name": ..., ...}, "train": {...}}`` into (model class, model knobs, train
    knobs), defaults filled; the model name (default cyclegan) picks the class."""
    cfg = dict(cfg or {})
    unknown = set(cfg) - {"model", "train"}
    if unknown:
        raise ConfigError(f"config sections are 'model' and 'train', got {sorted(unknown)}")
    model_cfg = dict(cfg.get("model") or {})
    name = model_cfg.pop("name", "cyclegan")
    cls = model_class(name)
    model_knobs = cls.resolve_config(model_cfg)
    train_knobs = merge_knobs(TRAIN_DEFAULTS, cfg.get("train"), "train")
    if train_knobs["device"] not in DEVICES:
        raise ConfigError(f"train.device must be one of {DEVICES}, got {train_knobs['device']!r}")
    for key in ("epochs", "batch_size", "checkpoint_every", "sample_every"):
        if train_knobs[key] < 1:
            raise ConfigError(f"train.{key} must be >= 1, got {train_knobs[key]}")
    if train_knobs["steps_per_epoch"] is not None and train_knobs["steps_per_epoch"] < 1:
        raise ConfigError(f"train.steps_per_epoch must be >= 1 or null, got {train_knobs['steps_per_epoch']}")
    if train_knobs["image_size"] is not None and (
            isinstance(train_knobs["image_size"], bool) or not isinstance(train_knobs["image_size"], int)
            or train_knobs["image_size"] < 8):
        raise ConfigError(f"train.image_size must be an integer >= 8 or null, got {train_knobs['image_size']!r}")
    if not 0.0 <= train_knobs["flip_probability"] <= 1.0:
        raise ConfigError(f"train.flip_probability must be in [0, 1], got {train_knobs['flip_probability']}")
    return cls, model_knobs, train_knobs


def load_images(path: Path) -> np.ndarray:
    """The ``images`` array of a slices npz: (N, H, W) float32 in [0, 1], checked."""
    path = Path(path)
    if not path.is_file():
        raise InputDataError(path, "file not found")
    try:
        with np.load(path, allow_pickle=False) as npz:
            if "images" not in npz.files:
                raise InputDataError(path, f"has no 'images' array (arrays: {npz.files})")
            images = npz["images"]
    except (OSError, ValueError, zipfile.BadZipFile) as err:
        raise InputDataError(path, f"cannot be read as npz ({err})") from err
    if images.ndim != 3 or len(images) == 0 or not np.issubdtype(images.dtype, np.floating):
        raise InputDataError(path, f"'images' must be a non-empty float (N, H, W) array, got {images.dtype} {images.shape}")
    if not np.isfinite(images).all() or images.min() < 0 or images.max() > 1:
        raise InputDataError(path, "'images' must be finite and within [0, 1]")
    return images.astype(np.float32, copy=False)


def _as_tensor(images: np.ndarray, image_size: int | None, device: torch.device) -> torch.Tensor:
    """(N, H, W) [0, 1] -> (N, 1, S, S) [-1, 1] on ``device`` (resized once, antialiased, if asked)."""
    x = torch.from_numpy(images).unsqueeze(1)
    if image_size is not None and tuple(x.shape[-2:]) != (image_size, image_size):
        x = F.interpolate(x, size=(image_size, image_size), mode="bilinear", antialias=True, align_corners=False)
    return (x * 2 - 1).to(device)


def _select_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("train.device is cuda but no CUDA device is available")
    return torch.device("cuda" if name == "cuda" or (name == "auto" and torch.cuda.is_available()) else "cpu")


@contextlib.contextmanager
def _numerics(deterministic: bool, threads: int, device: torch.device) -> Iterator[None]:
    """Process-wide determinism and thread settings for the run, restored afterwards."""
    saved = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
             torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark, torch.get_num_threads())
    if deterministic and device.type == "cuda":
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    # Some CUDA kernels (e.g. reflection-pad backward) have no deterministic version: warn, don't fail.
    torch.use_deterministic_algorithms(deterministic, warn_only=device.type == "cuda")
    torch.backends.cudnn.deterministic = deterministic
    torch.backends.cudnn.benchmark = not deterministic
    if threads > 0:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(saved[0], warn_only=saved[1])
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = saved[2], saved[3]
        torch.set_num_threads(saved[4])


def _lr_factor(epoch: int, constant: int, decay: int) -> float:
    """LR multiplier after ``epoch`` finished epochs: 1 for ``constant`` epochs, then linear to 0 over ``decay``."""
    if decay == 0 or epoch < constant:
        return 1.0
    return max(0.0, 1.0 - (epoch - constant + 1) / (decay + 1))


def _shuffled_draws(n_items: int, n_draws: int, generator: torch.Generator) -> torch.Tensor:
    """``n_draws`` indices from back-to-back random permutations of range(n_items)."""
    passes = math.ceil(n_draws / n_items)
    return torch.cat([torch.randperm(n_items, generator=generator) for _ in range(passes)])[:n_draws]


def _seeds(seed: int) -> tuple[int, int, int]:
    """Independent seeds for network init, data sampling and the model's own randomness."""
    init, data, model = np.random.SeedSequence(seed).generate_state(3)
    return int(init), int(data), int(model)


def _save_sample_grid(target: Path, visuals: dict[str, torch.Tensor], rows: tuple[tuple[str, ...], ...],
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


def _write_history(target: Path, rows: list[dict[str, float]], loss_names: tuple[str, ...]) -> None:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["epoch", "step", *loss_names])
    for row in rows:
        writer.writerow([row["epoch"], row["step"], *(format(row[name], ".10g") for name in loss_names)])
    write_text(target, buffer.getvalue())


def _peak_memory_mb(device: torch.device) -> dict[str, float]:
    peak = {"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    if device.type == "cuda":
        peak["peak_gpu_allocated_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
    return peak


class TrainingRun:
    """One training run: setup and resume in ``__init__``, the epoch loop in ``run``.

    Holds everything a checkpoint must capture (model, optimisers via the model, LR
    schedulers, the data generator, history, epoch and step) so resuming is exact.
    """

    def __init__(self, train_files: Mapping[str, Path], val_files: Mapping[str, Path], out_dir: Path,
                 cfg: Mapping[str, Any] | None, experiment: str, weights_dir: Path | None, seed: int):
        cls, model_cfg, self.cfg = resolve_config(cfg)
        if set(train_files) != set(cls.domains) or set(val_files) != set(cls.domains):
            raise ConfigError(f"{cls.name} trains on domains {cls.domains}, "
                              f"got {sorted(train_files)} / {sorted(val_files)}")
        self.out_dir, self.experiment, self.seed = Path(out_dir), experiment, seed
        self.device = _select_device(self.cfg["device"])
        self.labels = {d: Path(train_files[d]).parent.name for d in cls.domains}
        self.data_version = data_version([Path(train_files[d]) for d in cls.domains]
                                         + [Path(val_files[d]) for d in cls.domains])
        self.knobs = {"model": {"name": cls.name, **model_cfg}, "train": self.cfg, "seed": seed}
        self.params_hash = params_hash(self.knobs)
        self.run_name = f"{experiment}-{model_cfg.get('variant', cls.name)}-{self.params_hash[:8]}"
        self.fingerprint = params_hash({"model": self.knobs["model"], "seed": seed, "data": self.data_version,
                                        "train": {k: v for k, v in self.cfg.items() if k not in _RESUME_NEUTRAL}})

        self.data = {d: _as_tensor(load_images(train_files[d]), self.cfg["image_size"], self.device)
                     for d in cls.domains}
        self.val = self._sample_images(val_files)
        init_seed, data_seed, model_seed = _seeds(seed)
        torch.manual_seed(init_seed)
        self.model = cls(model_cfg, weights_dir, model_seed).to(self.device)
        _check_sizes(self.data, self.val, train_files, val_files, self.model.size_multiple)
        if self.cfg["channels_last"]:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.model.mixed_precision = torch.bfloat16 if self.cfg["bf16"] else None
        lr_factor = functools.partial(_lr_factor, constant=self.cfg["lr_constant_epochs"],
                                      decay=self.cfg["lr_decay_epochs"])
        self.schedulers = {name: torch.optim.lr_scheduler.LambdaLR(opt, lr_factor)
                           for name, opt in self.model.optimizers.items()}
        self.data_rng = torch.Generator().manual_seed(data_seed)
        self.steps = self.cfg["steps_per_epoch"] or math.ceil(
            max(len(x) for x in self.data.values()) / self.cfg["batch_size"])
        self.epoch, self.step, self.history, self.run_id, self.seconds_before = 0, 0, [], None, 0.0
        self.resumed_from: int | None = None
        self._resume()

    def _sample_images(self, val_files: Mapping[str, Path]) -> dict[str, torch.Tensor]:
        """The fixed validation images of the sample grids: evenly spread, as many per domain."""
        images = {d: load_images(path) for d, path in val_files.items()}
        picks = {d: np.unique(np.linspace(0, len(x) - 1, self.cfg["n_samples"]).round().astype(int))
                 for d, x in images.items()}
        n_show = min(len(p) for p in picks.values())
        return {d: _as_tensor(images[d][picks[d][:n_show]], self.cfg["image_size"], self.device) for d in images}

    @property
    def checkpoint_path(self) -> Path:
        return self.out_dir / "checkpoint.pt"

    def _resume(self) -> None:
        """Restore everything from the checkpoint if it belongs to this run; else start afresh."""
        path = self.checkpoint_path
        if not path.is_file():
            return
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:
            raise InputDataError(path, f"cannot be read as a checkpoint ({err}); delete it to start afresh") from err
        if state.get("fingerprint") != self.fingerprint:
            log.warning("%s was written under another config, seed or data: starting afresh", path)
            return
        if state["epoch"] > self.cfg["epochs"]:
            log.warning("%s is at epoch %d, past the %d asked for: starting afresh", path, state["epoch"],
                        self.cfg["epochs"])
            return
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
            torch.cuda.set_rng_state_all(state["rng"]["cuda"])
        self.epoch, self.step, self.history = state["epoch"], state["step"], state["history"]
        self.run_id, self.seconds_before, self.resumed_from = state["run_id"], state["seconds"], state["epoch"]
        log.info("resuming from %s at epoch %d", path, self.epoch)

    def _save_checkpoint(self, seconds: float) -> None:
        state = {
            "fingerprint": self.fingerprint, "epoch": self.epoch, "step": self.step, "history": self.history,
            "run_id": self.run_id, "seconds": seconds,
            "networks": {name: net.state_dict() for name, net in self.model.networks().items()},
            "optimizers": {name: opt.state_dict() for name, opt in self.model.optimizers.items()},
            "schedulers": {name: scheduler.state_dict() for name, scheduler in self.schedulers.items()},
            "model_state": self.model.extra_state(),
            "rng": {"torch": torch.get_rng_state(), "data": self.data_rng.get_state(),
                    "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []},
        }
        with atomic_path(self.checkpoint_path) as tmp:
            torch.save(state, tmp)

    def run(self, tracking_uri: str) -> dict[str, Any]:
        """Train up to ``epochs``, logging to MLflow; returns run.json's content."""
        if self.resumed_from is None:
            for stale in (self.out_dir / "samples").glob("epoch_*.png"):
                stale.unlink()
        tracker = Tracker.start(tracking_uri, self.experiment, self.run_name, resume_run_id=self.run_id)
        self.run_id = tracker.run_id
        commit, dirty = git_state()
        tracker.log_params(self.knobs)
        tracker.set_tags({"git_commit": commit, "git_dirty": dirty, "mlflow.source.git.commit": commit,
                          "data_version": self.data_version, "params_hash": self.params_hash,
                          "device": self.device.type, "model": self.model.name,
                          **{f"pretrained.{k}": v for k, v in self.model.pretrained.items()},
                          **{f"domain.{d}": label for d, label in self.labels.items()}})
        started = time.perf_counter()
        try:
            train_seconds, pairs = 0.0, 0
            while self.epoch < self.cfg["epochs"]:
                seconds = self._run_epoch(tracker)
                train_seconds += seconds
                pairs += self.steps * self.cfg["batch_size"]
                last = self.epoch == self.cfg["epochs"]
                if self.epoch % self.cfg["sample_every"] == 0 or last:
                    tracker.log_artifact(self._save_samples(), "samples")
                _write_history(self.out_dir / "history.csv", self.history, self.model.loss_names)
                if self.epoch % self.cfg["checkpoint_every"] == 0 or last:
                    self._save_checkpoint(self.seconds_before + time.perf_counter() - started)
            run = self._write_outputs(tracking_uri, self.seconds_before + time.perf_counter() - started,
                                      pairs / train_seconds if train_seconds else None, commit, dirty)
            tracker.log_metrics({"run_seconds": run["seconds"], "run_image_pairs_per_s": run["image_pairs_per_s"],
                                 "peak_rss_mb": run["peak_rss_mb"]}, step=self.epoch)
            tracker.log_artifact(self.out_dir / "history.csv")
            tracker.log_artifact(self.out_dir / "run.json")
        except KeyboardInterrupt:
            tracker.finish("KILLED")
            raise
        except BaseException:
            tracker.finish("FAILED")
            raise
        tracker.finish("FINISHED")
        return run

    def _run_epoch(self, tracker: Tracker) -> float:
        """One epoch, its history row and its MLflow metrics; returns its training seconds."""
        self.epoch += 1
        lrs = {f"lr_{name}": opt.param_groups[0]["lr"] for name, opt in self.model.optimizers.items()}
        t0 = time.perf_counter()
        means, self.step = _train_epoch(self.model, self.data, self.steps, self.cfg["batch_size"],
                                        self.cfg["flip_probability"], self.cfg["channels_last"], self.data_rng,
                                        self.step, self.device)
        for scheduler in self.schedulers.values():
            scheduler.step()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        seconds = time.perf_counter() - t0
        losses = {name: means.get(name, math.nan) for name in self.model.loss_names}
        self.history.append({"epoch": self.epoch, "step": self.step, **losses})
        log.info("epoch %d/%d (%.1f s): %s", self.epoch, self.cfg["epochs"], seconds,
                 ", ".join(f"{k} {v:.4g}" for k, v in losses.items()))
        tracker.log_metrics({**losses, **lrs, "epoch_seconds": seconds,
                             "image_pairs_per_s": self.steps * self.cfg["batch_size"] / seconds}, step=self.epoch)
        return seconds

    def _save_samples(self) -> Path:
        target = self.out_dir / "samples" / f"epoch_{self.epoch:04d}.png"
        self.model.eval()
        visuals = self.model.compute_visuals(self.val)
        self.model.train()
        _save_sample_grid(target, visuals, self.model.visual_names, self.labels,
                          f"{self.experiment}, epoch {self.epoch}")
        return target

    def _write_outputs(self, tracking_uri: str, seconds: float, pairs_per_s: float | None, commit: str,
                       dirty: bool | None) -> dict[str, Any]:
        """model.pt, the final history.csv and run.json."""
        _write_history(self.out_dir / "history.csv", self.history, self.model.loss_names)
        image_size = list(next(iter(self.data.values())).shape[-2:])
        payload = {**self.model.export(), "image_size": image_size, "domains": self.labels,
                   "pretrained": self.model.pretrained, "seed": self.seed}
        with atomic_path(self.out_dir / "model.pt") as tmp:
            torch.save(payload, tmp)
        cpu, deterministic = self.device.type == "cpu", self.cfg["deterministic"]
        run = {
            "run_id": self.run_id, "run_name": self.run_name, "experiment": self.experiment,
            "tracking_uri": tracking_uri, "model": self.model.name, "variant": self.knobs["model"].get("variant"),
            "device": self.device.type,
            "device_name": (torch.cuda.get_device_name(self.device) if self.device.type == "cuda"
                            else f"{platform.machine()} CPU, {os.cpu_count()} logical cores"),
            "threads": torch.get_num_threads(), "pretrained": self.model.pretrained, "seconds": round(seconds, 3),
            "epochs": self.epoch, "steps": self.step, "seed": self.seed, "params_hash": self.params_hash,
            "data_version": self.data_version, "domains": self.labels, "image_size": image_size,
            "resumed_from_epoch": self.resumed_from,
            "image_pairs_per_s": None if pairs_per_s is None else round(pairs_per_s, 3),
            **{k: round(v, 1) for k, v in _peak_memory_mb(self.device).items()},
            "bit_identical": cpu and deterministic,
            "determinism": ("same seed, config, data and thread count give bit-identical weights on CPU"
                            if cpu and deterministic else
                            "not bit-identical: CUDA kernels, or deterministic mode off"),
            "git_commit": commit, "git_dirty": dirty, "torch": torch.__version__,
        }
        write_json(self.out_dir / "run.json", run)
        return run


def run_experiment(train_files: Mapping[str, Path], val_files: Mapping[str, Path], out_dir: Path,
                   cfg: Mapping[str, Any] | None, experiment: str, tracking_uri: str, weights_dir: Path | None,
                   seed: int) -> dict[str, Any]:
    """Train the configured model on one data file per model domain; returns run.json's content.

    ``train_files`` / ``val_files`` map each of the model's domains (e.g. "a", "b") to a
    slices npz; the validation files feed the sample grids. A ``checkpoint.pt`` in
    ``out_dir`` written under the same config, seed and data is resumed. Bad input fails
    before an MLflow run is created.
    """
    _, _, train_cfg = resolve_config(cfg)
    with _numerics(train_cfg["deterministic"], train_cfg["threads"], _select_device(train_cfg["device"])):
        return TrainingRun(train_files, val_files, out_dir, cfg, experiment, weights_dir, seed).run(tracking_uri)


def _check_sizes(data: dict[str, torch.Tensor], val: dict[str, torch.Tensor], train_files: Mapping[str, Path],
                 val_files: Mapping[str, Path], multiple: int) -> None:
    """All domains share one image size that the networks accept."""
    sizes = {**{Path(train_files[d]): tuple(x.shape[-2:]) for d, x in data.items()},
             **{Path(val_files[d]): tuple(x.shape[-2:]) for d, x in val.items()}}
    reference = next(iter(sizes.values()))
    for path, size in sizes.items():
        if size != reference:
            raise InputDataError(path, f"images are {size[0]}x{size[1]}, others {reference[0]}x{reference[1]}; "
                                       "set train.image_size to train on one size")
        if size[0] % multiple or size[1] % multiple:
            raise InputDataError(path, f"images are {size[0]}x{size[1]}; these networks need multiples of {multiple} "
                                       "(set train.image_size)")


def _train_epoch(model: GANModel, data: dict[str, torch.Tensor], steps: int, batch_size: int, flip_probability: float,
                 channels_last: bool, rng: torch.Generator, global_step: int,
                 device: torch.device) -> tuple[dict[str, float], int]:
    """One epoch of unpaired steps; returns the epoch means of the model's losses and the new step count.

    Each optimiser phase runs on the steps its period divides (G every step, D every k-th).
    """
    plan = {d: (_shuffled_draws(len(x), steps * batch_size, rng).view(steps, batch_size).to(device),
                (torch.rand(steps, batch_size, generator=rng) < flip_probability).view(steps, batch_size, 1, 1, 1)
                .to(device)) for d, x in data.items()}
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    sums: dict[str, torch.Tensor] = {}
    counts: dict[str, int] = {}
    model.train()
    for step in range(steps):
        batch = {}
        for d, x in data.items():
            indices, flips = plan[d]
            images = x[indices[step]]
            batch[d] = torch.where(flips[step], images.flip(-1), images).contiguous(memory_format=memory_format)
        global_step += 1
        for phase, every in model.phases.items():
            if global_step % every:
                continue
            for name, value in model.train_phase(phase, batch).items():
                sums[name] = sums[name] + value if name in sums else value.float()
                counts[name] = counts.get(name, 0) + 1
    return {name: (sums[name] / counts[name]).item() for name in sums}, global_step


def train(train_a: Path, train_b: Path, val_a: Path, val_b: Path, out_dir: Path, cfg: Mapping[str, Any] | None,
          experiment: str, tracking_uri: str, weights_dir: Path | None, seed: int) -> dict[str, Any]:
    """Train an image-to-image model between domain a (``train_a``) and domain b (``train_b``).

    ``cfg`` = {"model": {...}, "train": {...}} (see ``TRAIN_DEFAULTS`` and the model's knobs);
    the MLflow run goes to ``experiment`` in ``tracking_uri``; ImageNet weight files are
    looked up in ``weights_dir``. Returns what run.json holds.
    """
    return run_experiment({"a": train_a, "b": train_b}, {"a": val_a, "b": val_b}, out_dir, cfg, experiment,
                          tracking_uri, weights_dir, seed)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--train-a", type=Path, required=True, help="slices npz of domain a (training)")
    parser.add_argument("--train-b", type=Path, required=True, help="slices npz of domain b (training)")
    parser.add_argument("--val-a", type=Path, required=True, help="slices npz of domain a (sample grids)")
    parser.add_argument("--val-b", type=Path, required=True, help="slices npz of domain b (sample grids)")
    parser.add_argument("--out", type=Path, required=True, help="output folder (models/<experiment>)")
    parser.add_argument("--experiment", required=True, help="MLflow experiment name")
    parser.add_argument("--config-json", default="{}", help='{"model": {...}, "train": {...}} knobs as JSON')
    parser.add_argument("--tracking-uri", default="sqlite:///mlflow.db", help="MLflow tracking URI")
    parser.add_argument("--pretrained", choices=PRETRAINED_CHOICES, default=None,
                        help="overrides model.pretrained (imagenet: use the weight files when present)")
    parser.add_argument("--weights-dir", type=Path, default=Path("data/weights"),
                        help="folder of torchvision ImageNet weight files (optional)")
    parser.add_argument("--seed", type=int, required=True)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        cfg = json.loads(args.config_json)
    except json.JSONDecodeError as err:
        raise ConfigError(f"--config-json is not valid JSON ({err})") from err
    if args.pretrained is not None:
        cfg["model"] = {**cfg.get("model", {}), "pretrained": args.pretrained}
    run = train(args.train_a, args.train_b, args.val_a, args.val_b, args.out, cfg, args.experiment, args.tracking_uri,
                args.weights_dir, args.seed)
    log.info("done: run %s, %.1f s, %s image pairs/s", run["run_id"], run["seconds"], run["image_pairs_per_s"])


if __name__ == "__main__":
    main()
