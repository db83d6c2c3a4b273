"""One training step of a model at its profile's full size, as the engine takes it, on a device.

``build_model`` and ``step_model`` follow ``pipeline.engine.loop.TrainingRun``: the model built on the
CPU and moved with ``.to(device)`` (optimisers are built before the move), the training data
held on the device (images, labels, maps, subject codes as the engine's batch keys, plus the
host arrays ``bind_training_data`` receives), batches drawn by the engine's ``BatchSampler``,
the speed knobs applied by ``prepare_model`` (torch.compile left out: it needs a real device),
and ``train_step`` run over one full update period (every optimiser phase once; StyleGAN2's
lazy regularisers are made due in the step by the caller's overrides). The values are stand-ins
(random images); devices, shapes and dtypes are what is checked.
"""
from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, Iterator, Mapping

import numpy as np
import torch
from torch import nn

from pipeline.device_check.profiles import TrainedNetworks
from pipeline.models import GANModel
from pipeline.engine.data import BatchSampler
from pipeline.engine.knobs import resolve_config
from pipeline.engine.step import prepare_model, train_step

#: Patients the stand-in training data is spread over (seg2ct takes its style slice from one
#: and its content from the others).
N_SUBJECTS = 4


class DeviceCheckError(AssertionError):
    """A device check found a tensor, shape or dtype other than the profile needs."""


def stand_in_data(model_cls: type[GANModel], n_images: int, size: int, device: torch.device,
                  n_labels: int = 2, n_classes: int = 2) -> tuple[dict[str, torch.Tensor], dict[str, dict]]:
    """Training data as the engine holds it: batch key -> tensor on ``device`` (images (N, 1, S, S)
    in [-1, 1], labels (N,), maps (N, 1, S, S), subject codes (N,)), and per input the host arrays
    of its npz (``bind_training_data``'s second argument)."""
    tensors, arrays = {}, {}
    subject_codes = np.arange(n_images) % N_SUBJECTS
    for spec in model_cls.inputs:
        tensors[spec.name] = torch.rand(n_images, 1, size, size, device=device) * 2 - 1
        host = {"images": np.zeros((n_images, size, size), np.float32),
                "subject_ids": np.array([f"patient{c}" for c in subject_codes])}
        if spec.labels:
            host["labels"] = (np.arange(n_images) % n_classes).astype(np.int64)
            tensors[spec.labels_key] = torch.from_numpy(host["labels"]).to(device)
        if spec.label_maps:
            host["label_maps"] = (np.arange(size)[None, :, None] * n_labels // size).repeat(n_images, 0)
            host["label_maps"] = np.broadcast_to(host["label_maps"], (n_images, size, size)).astype(np.uint8)
            tensors[spec.maps_key] = torch.randint(0, n_labels, (n_images, 1, size, size), device=device)
        if spec.subjects:
            tensors[spec.subjects_key] = torch.from_numpy(subject_codes.astype(np.int64)).to(device)
        arrays[spec.name] = host
    return tensors, arrays


def build_model(run: TrainedNetworks, device: torch.device, model_overrides: Mapping[str, Any] | None = None,
                seed: int = 0) -> tuple[GANModel, dict[str, Any]]:
    """The model of ``run`` at full size on ``device`` (random weights: ImageNet files are not
    needed for shapes) and its resolved train knobs."""
    model_cfg = {**run.config["model"], **(model_overrides or {})}
    if "pretrained" in _model_knobs(model_cfg):
        model_cfg["pretrained"] = "none"
    cls, resolved, train_cfg = resolve_config({"model": model_cfg, "train": run.train})
    model = cls(resolved, None, seed, image_size=(run.train_size, run.train_size))
    return model.to(device), train_cfg


def _model_knobs(model_cfg: Mapping[str, Any]) -> Mapping[str, Any]:
    cls, resolved, _ = resolve_config({"model": dict(model_cfg)})
    return resolved


@contextlib.contextmanager
def output_dtypes(model: GANModel) -> Iterator[dict[str, set]]:
    """Records, per trained network, the (dtype, shape) of the forward outputs of it and of its
    direct parts while inside."""
    found: dict[str, set] = {}
    handles = []
    for name, net in model.networks().items():
        def hook(module: nn.Module, args: Any, output: Any, name: str = name) -> None:
            first = output[0] if isinstance(output, (tuple, list)) else output
            if isinstance(first, torch.Tensor):
                found.setdefault(name, set()).add((str(first.dtype).removeprefix("torch."), tuple(first.shape)))
        # The network and its direct parts (a model may call them one by one, e.g. StyleGAN2's
        # mapping and synthesis).
        for module in (net, *net.children()):
            handles.append(module.register_forward_hook(hook))
    try:
        yield found
    finally:
        for handle in handles:
            handle.remove()


def step_model(model: GANModel, run: TrainedNetworks, train_cfg: Mapping[str, Any], device: torch.device,
               step_context=contextlib.nullcontext, n_periods: int = 1) -> dict[str, Any]:
    """``n_periods`` full update periods of the engine's step on stand-in data; returns the
    losses' devices and dtypes and the networks' output dtypes and shapes."""
    n_classes = len(model.config.get("class_names") or ()) or 2
    n_images = max(2 * run.batch_size, 2 * N_SUBJECTS)
    loaded_size = int(train_cfg["image_size"] or run.stored_size)
    data, arrays = stand_in_data(type(model), n_images, loaded_size, device, model.config.get("n_labels", 2), n_classes)
    names = type(model).input_names()
    images = {name: data[name] for name in names}
    aligned = {name: {k: v for k, v in data.items() if k.startswith(f"{name}_")} for name in names}
    model.bind_training_data(data, arrays)
    memory_format = torch.channels_last if train_cfg["channels_last"] else torch.contiguous_format
    specs = {spec.name: spec for spec in type(model).inputs}
    balance = {d: aligned[d][specs[d].labels_key] for d in model.class_balanced_inputs}
    sampler = BatchSampler(images, run.batch_size, train_cfg["crop_size"], train_cfg["flip_probability"], None,
                           memory_format, {d: t for d, t in aligned.items() if t}, balance, model.training_subsets)
    # The CPU's unfold weight gradient off: this step stands for a GPU's (FLOPs and memory alike).
    prepare_model(model, {**train_cfg, "compile": False, "cpu_unfold_weight_grad_positions": 0}, device)
    model.train()
    period = max(model.phases.values())
    steps = period * n_periods
    plan = sampler.plan_epoch(steps, torch.Generator().manual_seed(0))
    sums: dict[str, torch.Tensor] = {}
    counts: dict[str, int] = {}
    model.start_epoch(0)
    with output_dtypes(model) as dtypes:
        for step in range(steps):
            model.images_shown = step * run.batch_size
            batch = sampler.batch(plan, step)
            with step_context():
                train_step(model, batch, step + 1, sums, counts)
    wrong = {k: str(v.device) for k, v in sums.items() if v.device.type != device.type or v.ndim}
    if wrong:
        raise DeviceCheckError(f"{run.experiment} {run.role}: losses not 0-dim on {device}: {wrong}")
    return {"steps": steps, "batch": {k: list(v.shape) for k, v in batch.items()},
            "losses": sorted(sums), "outputs": {k: sorted(v) for k, v in dtypes.items()},
            "validation": sampler_batch_for_visuals(sampler, plan)}


def sampler_batch_for_visuals(sampler: BatchSampler, plan) -> dict[str, torch.Tensor]:
    """A batch to draw the sample grid from (the engine uses ``n_samples`` validation images; the
    first rows of a training batch have their size and device)."""
    return sampler.batch(plan, 0)


def check_visuals(model: GANModel, batch: Mapping[str, torch.Tensor], device: torch.device) -> dict[str, list]:
    """The sample grid's images (``compute_visuals``): every one on ``device``, (n, 1, h, w)."""
    model.eval()
    with torch.no_grad():
        visuals = model.compute_visuals(dict(batch))
    model.train()
    wrong = {k: str(v.device) for k, v in visuals.items() if v.device.type != device.type or v.ndim != 4}
    if wrong:
        raise DeviceCheckError(f"{model.name}: sample-grid images not (n, 1, h, w) on {device}: {wrong}")
    return {k: list(v.shape) for k, v in visuals.items()}


def export_model(model: GANModel, run: TrainedNetworks, out_dir: Path) -> Path:
    """model.pt as the engine writes it (its export plus image size, crop, domains, task)."""
    size = int(run.train.get("image_size") or run.stored_size)
    payload = {**model.export(), "image_size": [size, size], "crop_size": run.train.get("crop_size"),
               "domains": dict(run.inputs), "task": model.task, "pretrained": model.pretrained, "seed": 0}
    path = Path(out_dir) / f"{run.experiment}_{run.role}.pt"
    torch.save(payload, path)
    return path


def expect(condition: bool, message: str) -> None:
    if not condition:
        raise DeviceCheckError(message)
