"""The device check of every experiment's full profile: each network it trains, one training
step at full size; the exported model rebuilt from model.pt and run on one batch; and the
latent-space stages (truncation sweep, inversion) on their batch, all on one device.

On ``simulated`` (``pipeline.device_check.simulate``: fake CUDA tensors on a CPU-only machine)
a tensor left on the CPU raises where it meets a CUDA one, a training step that reads a device
value on the host raises, and sizes cost nothing; on ``cuda`` the same code runs on a real GPU
with small stand-in data (``make gpu-check``).
"""
from __future__ import annotations

import contextlib
import logging
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import numpy as np
import torch

from pipeline.device_check import simulate
from pipeline.device_check.profiles import Experiment, TrainedNetworks, experiments
from pipeline.device_check.steps import (DeviceCheckError, build_model, check_visuals, expect, export_model,
                                         step_model)
from pipeline.models import load_trained

log = logging.getLogger("pipeline.device_check")

DEVICES = ("simulated", "cuda", "cpu")

#: StyleGAN2 (and any model with lazy regularisers): make them due in the checked step.
LAZY_EVERY_STEP = {"stylegan2": {"r1_interval": 1, "pl_interval": 1}}


@contextlib.contextmanager
def on_device(device: str) -> Iterator[torch.device]:
    """The torch device the checks run on, inside whatever makes it (the CUDA simulation)."""
    if device not in DEVICES:
        raise ValueError(f"device must be one of {DEVICES}, got {device!r}")
    if device == "simulated":
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*data pointer of FakeTensor.*")
            with simulate.simulated_cuda():
                yield simulate.CUDA
        return
    if device == "cuda" and not torch.cuda.is_available():
        raise DeviceCheckError("--device cuda but no CUDA device is available")
    yield torch.device(device)


def _step_context(device: str) -> Callable[[], contextlib.AbstractContextManager]:
    return simulate.training_step if device == "simulated" else contextlib.nullcontext


def _check_outputs(run: TrainedNetworks, result: Mapping[str, Any]) -> None:
    """bf16 autocast where the profile enables it, float32 elsewhere; G's images at the training size."""
    dtypes = {dtype for outputs in result["outputs"].values() for dtype, _ in outputs}
    if run.train.get("bf16"):
        expect("bfloat16" in dtypes, f"{run.experiment} {run.role}: train.bf16 is on but no network ran in bfloat16 "
                                     f"({dtypes})")
    else:
        expect("bfloat16" not in dtypes, f"{run.experiment} {run.role}: bfloat16 outputs with train.bf16 off")
    for name, outputs in result["outputs"].items():
        if name.startswith("G"):
            sizes = {shape[-2:] for _, shape in outputs if len(shape) == 4}
            expect((run.train_size, run.train_size) in sizes,
                   f"{run.experiment} {run.role}: {name} made {sizes}, not {run.train_size}x{run.train_size} images")


def check_training(run: TrainedNetworks, device: torch.device, step_context, workdir: Path,
                   overrides: Mapping[str, Any] | None = None) -> tuple[dict[str, Any], Path]:
    """One full update period, the sample grid and model.pt of ``run``; returns the record and
    the model.pt path."""
    name = run.config["model"].get("name", "cyclegan")
    model, train_cfg = build_model(run, device, {**LAZY_EVERY_STEP.get(name, {}), **(overrides or {})})
    expect(all(p.device.type == device.type for p in model.parameters()),
           f"{run.experiment} {run.role}: parameters left off {device} by .to()")
    result = step_model(model, run, train_cfg, device, step_context)
    _check_outputs(run, result)
    for optimizer in model.optimizers.values():
        for state in optimizer.state.values():
            for key, value in state.items():
                if isinstance(value, torch.Tensor) and value.ndim:
                    expect(value.device.type == device.type,
                           f"{run.experiment} {run.role}: optimiser state {key} on {value.device}, not {device}")
    rows = int(train_cfg["n_samples"])
    visuals = check_visuals(model, {k: v[:rows] for k, v in result.pop("validation").items()}, device)
    path = export_model(model, run, workdir)
    record = {"what": f"train {run.role} ({name}): {result['steps']} step(s) of batch {run.batch_size} at "
                      f"{run.train_size} px", **result, "sample_grid": visuals}
    return record, path


def _images(n: int, size: int) -> np.ndarray:
    return np.linspace(0, 1, n * size * size, dtype=np.float32).reshape(n, size, size)


def check_inference(exp: Experiment, model_path: Path, device: torch.device) -> dict[str, Any]:
    """The exported model rebuilt on ``device`` (load_trained) and run on one evaluation batch."""
    run = exp.networks[0]
    trained = load_trained(model_path, device)
    batch = int(exp.section.get("evaluate", {}).get("batch_size", run.batch_size))
    size = int(run.train.get("image_size") or run.stored_size)
    out: dict[str, Any] = {}
    if exp.kind == "translation":
        for direction in ("a_to_b", "b_to_a"):
            out[direction] = trained.translate(direction, _images(batch, size)).shape
    elif exp.kind == "map_to_image":
        maps = (np.arange(batch * size * size) % trained.n_labels).reshape(batch, size, size) \
            if hasattr(trained, "n_labels") else np.zeros((batch, size, size), np.int64)
        out["generate"] = trained.generate(maps, seed=0).shape
    else:
        labels = np.arange(batch) % trained.n_classes if trained.n_classes else None
        out["sample"] = trained.sample(batch, labels, seed=0).shape
    for what, shape in out.items():
        expect(tuple(shape[1:]) == (size, size), f"{exp.name}: {what} gave {shape}, not (n, {size}, {size})")
    return {"what": f"model.pt on {device}: one batch of {batch}", **{k: list(v) for k, v in out.items()}}


def check_evaluation(exp: Experiment, device: torch.device) -> dict[str, Any]:
    """The evaluation's own networks on one batch at the profile's size on ``device``: the
    real-data classifier (one epoch of training on a batch, then scoring: the train_classifier
    rules, the classifier and train-on-synthetic measures, the edits' probability), the
    memorisation embedding, and for label maps the segmenter (one epoch, then predicting: the
    segmenter rules, the anatomy measure, the edits' CTR) and the per-organ style features.
    (Inception needs its weight file, which the machines running this check may lack: its
    extractor is torch-fidelity's, moved to the device with its inputs by fid.py.)"""
    from pipeline.evaluate.measures import embedding
    from pipeline.evaluate.measures.classifier import DEFAULT_SETTINGS as CLASSIFIER, fit_classifier
    from pipeline.evaluate.measures.classifier import probability_of_b, to_tensor

    section, run = exp.section, exp.networks[0]
    size = int(run.train.get("image_size") or run.stored_size)
    batch = int(section.get("evaluate", {}).get("batch_size", 16))
    images = _images(batch, size)
    out: dict[str, Any] = {}
    settings = {**CLASSIFIER, **{k: v for k, v in section.get("classifier", {}).items() if k in CLASSIFIER},
                "epochs": 1, "restarts": 0}  # one epoch on random images always "stalls": no retries
    settings["image_size"] = settings["image_size"] or None
    labels = torch.arange(batch) % 2
    x = to_tensor(images, settings["image_size"])
    network, _, _ = fit_classifier(x, labels, x, labels, settings, 0, str(device))
    expect(next(network.parameters()).device.type == device.type, f"{exp.name}: classifier trained off {device}")
    out["classifier_probability"] = list(probability_of_b(network, {"image_size": settings["image_size"]},
                                                          images).shape)
    out["embedding"] = list(embedding.embed(images, batch, None, str(device)).shape)
    segmenter_section = section.get("segmenter") or section.get("ctr_segmenter")
    if segmenter_section is not None:
        from pipeline.evaluate.measures import organ_style
        from pipeline.evaluate.measures.segmenter import DEFAULT_SETTINGS as SEGMENTER, fit_segmenter, predict_maps

        seg = {**SEGMENTER, **{k: v for k, v in segmenter_section.items() if k in SEGMENTER}, "epochs": 1}
        n_labels = int(section["model"].get("n_labels", 6)) if exp.kind == "map_to_image" else 3
        maps = (np.arange(size)[None, :, None] * n_labels // size).repeat(batch, 0).repeat(size, 2).astype(np.int64)
        data = {"images": images, "label_maps": maps, "subject_ids": np.array([f"p{i % 8}" for i in range(batch)])}
        seg_network, _, _ = fit_segmenter(data, data, n_labels, seg, 0, str(device))
        out["segmenter_maps"] = list(predict_maps(seg_network, images, batch).shape)
        if exp.kind == "map_to_image":
            # The per-organ style features on the device (the VGG there, as the evaluator's after
            # embed() moved it); their masked Grams are host work in float64 (organ_style.masked_grams).
            vgg = embedding.build_random_vgg().to(device)
            out["organ_style_features"] = [list(f.shape) for f in organ_style.organ_features(images[:1], vgg)]
    return {"what": f"evaluation networks on {device}: one batch of {batch} at {size} px", **out}


def _write_slices(path: Path, n: int, size: int, labels: bool = True, ladder: bool = False) -> Path:
    subjects = np.array([f"patient{i % 8}" for i in range(n)])
    if ladder:
        images = np.stack([_images(3, size)] * n)
        np.savez(path, images=images, base_index=np.zeros(n, np.int64), ctr=np.tile([0.42, 0.5, 0.6], (n, 1)),
                 subject_ids=subjects)
    else:
        extra = {"labels": (np.arange(n) % 2).astype(np.int64)} if labels else {}
        np.savez(path, images=_images(n, size), subject_ids=subjects, **extra)
    return path


def check_latent(exp: Experiment, generator: Path, encoder: Path, device: torch.device, workdir: Path) -> dict:
    """StyleGAN2's latent stages on ``device``: the truncation sweep and the inversion (latent
    optimisation for 2 steps on one batch of the profile's inversion batch size, the encoder's
    codes, the renders)."""
    from pipeline.evaluate.measures.intervals import IntervalPolicy
    from pipeline.latent.invert import DEFAULT_SETTINGS, run_inversion
    from pipeline.latent.truncation import truncation_sweep
    from pipeline.models.stylegan2_encoder import load_frozen_generator

    section = exp.section
    size = exp.networks[0].stored_size
    psis = [float(p) for p in section["evaluate"]["truncation_psis"]]
    sweep = truncation_sweep(load_frozen_generator(generator, device), psis, 2, 0)
    settings = {**DEFAULT_SETTINGS, **section["inversion"]}
    settings.pop("device", None)
    n_real = min(int(settings["batch_size"]), int(settings["max_real_images"]))
    settings.update(steps=2, n_synthetic=2, max_real_images=n_real, n_w_std_samples=8)
    test = _write_slices(workdir / "test.npz", n_real, size)
    ladder = _write_slices(workdir / "ladder.npz", 2, size, ladder=True)
    policy = IntervalPolicy(min_subjects=2, n_boot=10, seed=0)
    inversion, codes = run_inversion(generator, encoder, test, settings, 0, "none", workdir, policy, str(device),
                                     ladder)
    expect(codes["real_codes_optimisation"].shape[0] == n_real, "inversion: codes of every real image")
    return {"what": f"truncation sweep ({len(psis)} psi) and inversion of {n_real} real + 2 synthetic images "
                    f"(2 steps) on {device}", "sweep": list(sweep.shape),
            "codes": list(codes["real_codes_optimisation"].shape)}


def check_experiment(exp: Experiment, device: str, workdir: Path) -> list[dict[str, Any]]:
    """Every network of ``exp`` on ``device``; a fault raises DeviceCheckError naming the
    experiment and the stage (the original error chained)."""
    records: list[dict[str, Any]] = []
    stage = "setup"

    def timed(what: str, check: Callable[[], Any]) -> Any:
        nonlocal stage
        stage, started = what, time.perf_counter()
        result = check()
        record = result[0] if isinstance(result, tuple) else result
        records.append({**record, "seconds": round(time.perf_counter() - started, 1)})
        return result

    try:
        with on_device(device) as torch_device:
            step_context = _step_context(device)
            paths: dict[str, Path] = {}
            for run in exp.networks:
                overrides = {"generator": str(paths["model"])} if run.role == "encoder" else None
                _, paths[run.role] = timed(f"training {run.role}", lambda: check_training(
                    run, torch_device, step_context, workdir, overrides))
            timed("model.pt inference", lambda: check_inference(exp, paths["model"], torch_device))
            timed("evaluation networks", lambda: check_evaluation(exp, torch_device))
            if exp.kind == "stylegan":
                timed("latent stages", lambda: check_latent(exp, paths["model"], paths["encoder"], torch_device,
                                                            workdir))
            if device == "simulated":
                records.append({"what": "host reads of device values outside training steps (each waits for the "
                                        "GPU)", "reads": dict(simulate.host_reads())})
    except DeviceCheckError:
        raise
    except Exception as err:
        raise DeviceCheckError(f"{exp.name}: {stage} on {device}: {type(err).__name__}: {err}") from err
    return records


def run_checks(cfg: Mapping[str, Any], names: list[str] | None = None, device: str = "simulated",
               workdir: Path | None = None) -> dict[str, list[dict[str, Any]]]:
    """The device check of ``cfg``'s experiments (all or ``names``): experiment -> records.
    Raises on the first fault (the exception names the experiment, the tensor and where)."""
    results = {}
    with contextlib.ExitStack() as stack:
        folder = Path(workdir) if workdir else Path(stack.enter_context(tempfile.TemporaryDirectory()))
        for exp in experiments(cfg, names):
            log.info("device check (%s): %s", device, exp.name)
            results[exp.name] = check_experiment(exp, device, folder)
    return results
