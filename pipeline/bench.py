"""Training throughput of the engine's own step: image pairs per second, peak memory and
achieved TFLOP/s for each CycleGAN variant, batch size and image size asked for.

Each measurement builds the model as training does (``pipeline.engine.step.prepare_model``: bf16,
channels-last, torch.compile), keeps random images on the device, draws batches with the
training ``BatchSampler`` and times ``train_step`` after a warm-up (which pays any
compilation). FLOPs are counted once per configuration with
``torch.utils.flop_counter.FlopCounterMode`` over one full update period (G every step, D every
k-th) of the uncompiled model. ``--reference FILE`` times that file's ``make()`` / ``step()``
(e.g. a reference-style CycleGAN step) in the same process on the same inputs, for a
side-by-side ratio. Peak memory is the GPU's peak allocation per configuration, or on CPU the
process's peak resident set so far.

``--recipe EXPERIMENT`` times instead an experiment's whole training recipe (params.yaml with
``--configfile`` overrides, e.g. configs/full.yaml) through the real engine (sampler, MLflow,
checkpoints, sample grids) for a few epochs on random images of the recipe's size and number,
and extrapolates to the recipe's epoch count.

    python -m pipeline.bench                          # both variants, 256x256, batch 1 and 32
    python -m pipeline.bench --reference ../shared/bench/reference_cyclegan.py --json bench.json
    python -m pipeline.bench --recipe cyclegan_ct_mri --configfile configs/full.yaml

``--stylegan2`` times instead the StyleGAN2 G + D step (report 004; one D update with its lazy
R1 every 16th, one G update with path length every 4th, EMA, ADA) at the asked sizes and batch
sizes with stylegan2-ada's 128 px config unless ``--model-json`` overrides it: images/s, s/kimg
and peak memory, printed beside stylegan2-ada-pytorch's published 13 s/kimg on a V100 and
6.79 s/kimg on an A100 at 128x128, batch 32. Time a multiple of 16 steps to include R1 at its
real rate. torch.compile stays off unless asked (R1 and path length differentiate twice).

    python -m pipeline.bench --stylegan2 --sizes 128 --batches 32 --steps 16 --warmup 2
"""
from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import logging
import os
import platform
import resource
import tempfile
import time
from pathlib import Path
from types import ModuleType
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from pipeline.atomic import write_json
from pipeline.errors import ConfigError, InputDataError, PipelineError
from pipeline.engine.data import BatchSampler
from pipeline.engine.knobs import resolve_config
from pipeline.engine.step import prepare_model, train_step, uses_cuda_graphs

log = logging.getLogger(__name__)

VARIANTS = ("resnet9_patchgan", "unet_resnet18")
#: stylegan2-ada-pytorch's published training speed at 128x128 (its auto config, batch 32, one
#: GPU; README "Expected training time"): seconds per thousand images shown.
STYLEGAN2_ADA_PUBLISHED_S_PER_KIMG = {"V100": 13.0, "A100": 6.79}


def device_name(device: torch.device) -> str:
    """What the figures were measured on, in words."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{model} ({os.cpu_count()} logical cores, {torch.get_num_threads()} torch threads)"


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def _time_steps(run_step: Callable[[int], None], warmup: int, steps: int, device: torch.device) -> float:
    """Seconds for ``steps`` calls of ``run_step`` after ``warmup`` untimed ones."""
    for i in range(warmup):
        run_step(i)
    _synchronize(device)
    start = time.perf_counter()
    for i in range(warmup, warmup + steps):
        run_step(i)
    _synchronize(device)
    return time.perf_counter() - start


def _result(name: str, size: int, batch: int, flags: Mapping[str, Any], seconds: float, steps: int,
            flops_per_step: float, device: torch.device) -> dict[str, Any]:
    steps_per_s = steps / seconds
    return {"name": name, "size": size, "batch": batch, **flags,
            "image_pairs_per_s": steps_per_s * batch, "step_ms": 1000 / steps_per_s,
            "peak_memory_mb": _peak_memory_mb(device), "gflop_per_pair": flops_per_step / batch / 1e9,
            "achieved_tflops": flops_per_step * steps_per_s / 1e12}


def bench_variant(variant: str, size: int, batch: int, steps: int, warmup: int, device: torch.device, bf16: bool,
                  channels_last: bool, compile_: bool, compile_mode: str = "default",
                  model_overrides: Mapping[str, Any] | None = None, n_images: int = 64,
                  seed: int = 0) -> dict[str, Any]:
    """Time the engine's training step for one CycleGAN ``variant`` on random ``size`` x ``size``
    images, ``batch`` pairs per step (randomly initialised networks)."""
    cfg = {"model": {"variant": variant, "pretrained": "none", **(model_overrides or {})},
           "train": {"batch_size": batch, "bf16": bf16, "channels_last": channels_last, "compile": compile_,
                     "compile_mode": compile_mode, "deterministic": False}}
    cls, model_cfg, train_cfg = resolve_config(cfg)
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = cls(model_cfg, None, seed).to(device)
    data = {d: (torch.rand(n_images, 1, size, size, generator=generator) * 2 - 1).to(device) for d in cls.domains}
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    sampler = BatchSampler(data, batch, None, 0.5, memory_format=memory_format)
    period = max(model.phases.values())
    plan = sampler.plan_epoch(period + warmup + steps, generator)
    sums: dict[str, torch.Tensor] = {}
    counts: dict[str, int] = {}
    model.train()
    with FlopCounterMode(display=False) as counter:
        for step in range(period):
            train_step(model, sampler.batch(plan, step), step + 1, sums, counts)
    flops_per_step = counter.get_total_flops() / period
    prepare_model(model, train_cfg, device)
    _reset_peak_memory(device)
    cuda_graphs = uses_cuda_graphs(train_cfg, device)

    def run_step(i: int) -> None:
        if cuda_graphs:
            torch.compiler.cudagraph_mark_step_begin()
        train_step(model, sampler.batch(plan, period + i), period + i + 1, sums, counts)

    seconds = _time_steps(run_step, warmup, steps, device)
    flags = {"bf16": bf16, "channels_last": channels_last, "compile": compile_}
    return _result(variant, size, batch, flags, seconds, steps, flops_per_step, device)


def bench_stylegan2(size: int, batch: int, steps: int, warmup: int, device: torch.device, bf16: bool,
                    channels_last: bool, compile_: bool, compile_mode: str = "default",
                    model_overrides: Mapping[str, Any] | None = None, n_images: int = 64,
                    seed: int = 0) -> dict[str, Any]:
    """Time the engine's StyleGAN2 step (D then G, lazy R1 / path length at their intervals) on
    random ``size`` x ``size`` images, ``batch`` images per step."""
    cfg = {"model": {"name": "stylegan2", **(model_overrides or {})},
           "train": {"batch_size": batch, "bf16": bf16, "channels_last": channels_last, "compile": compile_,
                     "compile_mode": compile_mode, "deterministic": False}}
    cls, model_cfg, train_cfg = resolve_config(cfg)
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = cls(model_cfg, None, seed, image_size=(size, size)).to(device)
    data = {"images": (torch.rand(n_images, 1, size, size, generator=generator) * 2 - 1).to(device)}
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    sampler = BatchSampler(data, batch, None, 0.0, memory_format=memory_format)
    plan = sampler.plan_epoch(warmup + steps, generator)
    sums: dict[str, torch.Tensor] = {}
    counts: dict[str, int] = {}
    prepare_model(model, train_cfg, device)
    model.train()
    _reset_peak_memory(device)

    def run_step(i: int) -> None:
        model.images_shown = i * batch
        train_step(model, sampler.batch(plan, i), i + 1, sums, counts)

    seconds = _time_steps(run_step, warmup, steps, device)
    images_per_s = steps * batch / seconds
    return {"name": "stylegan2", "size": size, "batch": batch, "bf16": bf16, "channels_last": channels_last,
            "compile": compile_, "images_per_s": images_per_s, "s_per_kimg": 1000 / images_per_s,
            "step_ms": 1000 * seconds / steps, "peak_memory_mb": _peak_memory_mb(device),
            "threads": torch.get_num_threads(), "steps": steps,
            "model": {k: model_cfg[k] for k in ("z_dim", "w_dim", "channel_base", "channel_max", "r1_interval",
                                                 "pl_weight", "augment")}}


def format_stylegan2_table(rows: Sequence[Mapping[str, Any]], device: str) -> str:
    """The StyleGAN2 rows beside stylegan2-ada-pytorch's published s/kimg at 128x128."""
    published = ", ".join(f"{gpu} {value:g} s/kimg" for gpu, value in STYLEGAN2_ADA_PUBLISHED_S_PER_KIMG.items())
    header = ["configuration", "size", "batch", "bf16", "ch-last", "compile", "images/s", "s/kimg", "step ms",
              "peak MB", "vs V100 published"]
    lines = [f"device: {device}; torch {torch.__version__}",
             f"stylegan2-ada-pytorch published at 128x128, batch 32: {published}", "",
             "| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for row in rows:
        if "error" in row:
            cells = [row["name"], row["size"], row["batch"], *["" for _ in header[3:-1]], row["error"]]
        else:
            ratio = STYLEGAN2_ADA_PUBLISHED_S_PER_KIMG["V100"] / row["s_per_kimg"] if row["size"] == 128 else None
            cells = [row["name"], row["size"], row["batch"], row["bf16"], row["channels_last"], row["compile"],
                     f"{row['images_per_s']:.3g}", f"{row['s_per_kimg']:.4g}", f"{row['step_ms']:.1f}",
                     f"{row['peak_memory_mb']:.0f}", "" if ratio is None else f"{ratio:.3g}x"]
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    return "\n".join(lines)


def load_reference(path: Path) -> ModuleType:
    """Import a reference step file: it must define ``make(device, channels_last, compile)``
    returning its networks and optimisers, and ``step(*those, a, b, bf16)``."""
    path = Path(path)
    if not path.is_file():
        raise InputDataError(path, "reference file not found")
    spec = importlib.util.spec_from_file_location(f"bench_reference_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not callable(getattr(module, "make", None)) or not callable(getattr(module, "step", None)):
        raise InputDataError(path, "has no make(device, channels_last, compile) and step(*nets, a, b, bf16)")
    return module


def bench_reference(reference: ModuleType, size: int, batch: int, steps: int, warmup: int, device: torch.device,
                    bf16: bool, channels_last: bool, compile_: bool, seed: int = 0) -> dict[str, Any]:
    """Time the reference file's step on random inputs of the same shape."""
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    a, b = ((torch.rand(batch, 1, size, size, generator=generator) * 2 - 1).to(device) for _ in range(2))
    with FlopCounterMode(display=False) as counter:
        reference.step(*reference.make(device, False, False), a, b, False)
    flops_per_step = counter.get_total_flops()
    nets = reference.make(device, channels_last, compile_)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    a, b = a.contiguous(memory_format=memory_format), b.contiguous(memory_format=memory_format)
    _reset_peak_memory(device)
    seconds = _time_steps(lambda i: reference.step(*nets, a, b, bf16), warmup, steps, device)
    flags = {"bf16": bf16, "channels_last": channels_last, "compile": compile_}
    return _result(f"reference ({Path(reference.__file__).name})", size, batch, flags, seconds, steps,
                   flops_per_step, device)


def run_bench(variants: Sequence[str], sizes: Sequence[int], batches: Sequence[int], steps: int, warmup: int,
              device: torch.device, bf16: bool, channels_last: bool, compile_: bool, compile_mode: str = "default",
              model_overrides: Mapping[str, Any] | None = None, reference: Path | None = None,
              n_images: int = 64) -> list[dict[str, Any]]:
    """One row per (size, batch, variant), plus the reference's row per (size, batch) and, on
    the rows of the same architecture (resnet9_patchgan), the ratio to it."""
    unknown = sorted(set(variants) - set(VARIANTS))
    if unknown:
        raise ConfigError(f"--variants must be among {VARIANTS}, got {unknown}")
    if steps < 1 or warmup < 0:
        raise ConfigError(f"--steps must be >= 1 and --warmup >= 0, got {steps} and {warmup}")
    module = load_reference(reference) if reference is not None else None
    rows = []
    for size in sizes:
        for batch in batches:
            group = []
            for variant in variants:
                group.append(_guarded(lambda: bench_variant(
                    variant, size, batch, steps, warmup, device, bf16, channels_last, compile_, compile_mode,
                    model_overrides, n_images), variant, size, batch))
            if module is not None:
                ref = _guarded(lambda: bench_reference(module, size, batch, steps, warmup, device, bf16,
                                                       channels_last, compile_), "reference", size, batch)
                for row in group:
                    if row["name"] == "resnet9_patchgan" and "error" not in row and "error" not in ref:
                        row["vs_reference"] = row["image_pairs_per_s"] / ref["image_pairs_per_s"]
                group.append(ref)
            rows += group
    return rows


def _guarded(measure: Callable[[], dict[str, Any]], name: str, size: int, batch: int) -> dict[str, Any]:
    """A measurement, or a row naming the error when the configuration does not fit in memory."""
    log.info("measuring %s at %dx%d, batch %d", name, size, size, batch)
    try:
        row = measure()
        log.info("%s", json.dumps(row))  # each row as it comes: a long run killed midway keeps its figures
        return row
    except torch.cuda.OutOfMemoryError:
        torch.cuda.empty_cache()
        return {"name": name, "size": size, "batch": batch, "error": "CUDA out of memory"}


#: Report 001's training set sizes (CT, T2), one slice per subject: CQ500's 491 studies less its
#: 111 test images and IXI's 578 T2 volumes less its 85 test images.
REPORT_001_TRAIN_IMAGES = (380, 493)


def time_recipe(experiment: str, config_files: Sequence[Path], work_dir: Path, images: Sequence[int] = REPORT_001_TRAIN_IMAGES,
                size: int = 256, epochs: int = 3, train_overrides: Mapping[str, Any] | None = None,
                params_file: Path = Path("params.yaml"), seed: int = 0) -> dict[str, Any]:
    """Train ``experiment``'s recipe for ``epochs`` epochs on random ``size`` x ``size`` images
    (``images`` per domain) in ``work_dir`` and extrapolate its full length.

    Every epoch of the measurement writes a checkpoint and a sample grid, so their cost is
    measured too; the estimate is first epoch (compilation included) + the median later epoch
    for each remaining epoch + a checkpoint every ``checkpoint_every`` and a grid every
    ``sample_every`` epochs of the recipe, each counted as half the measured checkpoint-and-grid
    time (the two are not timed apart).
    """
    import mlflow

    from pipeline.config import load_params
    from pipeline.engine.loop import train

    if epochs < 2:
        raise ConfigError(f"--recipe-epochs must be >= 2 (the first pays compilation), got {epochs}")
    if (work_dir / "model").exists():
        raise ConfigError(f"{work_dir / 'model'} exists: a measurement needs an empty --work-dir "
                          "(the engine would resume from its checkpoint)")
    params = load_params(params_file, config_files=config_files)
    if experiment not in params["experiments"]:
        raise ConfigError(f"unknown experiment {experiment!r}; params have {sorted(params['experiments'])}")
    exp = params["experiments"][experiment]
    cfg = {"model": dict(exp.get("model") or {}), "train": {**(exp.get("train") or {}), **(train_overrides or {})}}
    _, _, recipe = resolve_config(cfg)
    cfg["train"] = {**cfg["train"], "epochs": epochs, "checkpoint_every": 1, "sample_every": 1}
    rng = np.random.default_rng(seed)
    files = {}
    for domain, n in zip(("a", "b"), images):
        for split, count in (("train", n), ("val", recipe["n_samples"])):
            target = work_dir / "slices" / domain / f"{split}.npz"
            target.parent.mkdir(parents=True, exist_ok=True)
            np.savez(target, images=rng.random((count, size, size), dtype=np.float32))
            files[f"{split}_{domain}"] = target
    uri = f"sqlite:///{work_dir / 'mlflow.db'}"
    run = train({d: files[f"train_{d}"] for d in "ab"}, {d: files[f"val_{d}"] for d in "ab"},
                         work_dir / "model", cfg, f"recipe-{experiment}", uri, None, seed)
    history = mlflow.MlflowClient(uri).get_metric_history(run["run_id"], "epoch_seconds")
    epoch_seconds = [m.value for m in sorted(history, key=lambda m: m.step)]
    first, steady = epoch_seconds[0], float(np.median(epoch_seconds[1:]))
    per_write = max(0.0, (run["seconds"] - sum(epoch_seconds)) / epochs)  # one checkpoint + one grid
    total_epochs = recipe["epochs"]
    writes = total_epochs / recipe["checkpoint_every"] + total_epochs / recipe["sample_every"]
    estimate = first + (total_epochs - 1) * steady + writes * per_write / 2
    steps = run["steps"] / epochs
    return {"experiment": experiment, "config_files": [str(p) for p in config_files], "size": size,
            "images": list(images), "batch_size": recipe["batch_size"], "steps_per_epoch": steps,
            "recipe_epochs": total_epochs, "measured_epochs": epochs, "first_epoch_s": first,
            "steady_epoch_s": steady, "checkpoint_and_grid_s": per_write,
            "image_pairs_per_s": steps * recipe["batch_size"] / steady, "estimated_recipe_s": estimate,
            "peak_memory_mb": run.get("peak_gpu_allocated_mb", run["peak_rss_mb"]), "device": run["device_name"]}


def format_recipe(result: Mapping[str, Any]) -> str:
    minutes = result["estimated_recipe_s"] / 60
    return (f"device: {result['device']}; torch {torch.__version__}\n"
            f"recipe {result['experiment']} ({', '.join(result['config_files']) or 'params.yaml'}): "
            f"{result['recipe_epochs']} epochs x {result['steps_per_epoch']:.0f} steps of batch {result['batch_size']} "
            f"at {result['size']}x{result['size']} ({result['images'][0]} + {result['images'][1]} training images)\n"
            f"measured {result['measured_epochs']} epochs: first {result['first_epoch_s']:.1f} s (compilation included), "
            f"then {result['steady_epoch_s']:.2f} s per epoch ({result['image_pairs_per_s']:.1f} image pairs/s), "
            f"{result['checkpoint_and_grid_s']:.2f} s per checkpoint + sample grid, "
            f"peak memory {result['peak_memory_mb']:.0f} MB\n"
            f"estimated recipe time: {minutes:.1f} min")


def format_table(rows: Sequence[Mapping[str, Any]], device: str) -> str:
    """A fixed-width table (Markdown-compatible) of the rows, titled with the device."""
    header = ["configuration", "size", "batch", "bf16", "ch-last", "compile", "pairs/s", "step ms", "peak MB",
              "GFLOP/pair", "TFLOP/s", "vs reference"]
    lines = [f"device: {device}; torch {torch.__version__}", "",
             "| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for row in rows:
        if "error" in row:
            cells = [row["name"], row["size"], row["batch"], *["" for _ in header[3:-1]], row["error"]]
        else:
            cells = [row["name"], row["size"], row["batch"], row["bf16"], row["channels_last"], row["compile"],
                     f"{row['image_pairs_per_s']:.3g}", f"{row['step_ms']:.1f}", f"{row['peak_memory_mb']:.0f}",
                     f"{row['gflop_per_pair']:.3g}", f"{row['achieved_tflops']:.3g}",
                     f"{row['vs_reference']:.2f}x" if "vs_reference" in row else ""]
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), help="CycleGAN variants to time")
    parser.add_argument("--sizes", nargs="+", type=int, default=[256], help="image sizes (square)")
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 32], help="image pairs per step")
    parser.add_argument("--steps", type=int, default=20, help="timed steps per configuration")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps first (compilation, autotuning)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=None,
                        help="bf16 autocast (default: on for CUDA)")
    parser.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None,
                        help="channels-last memory format (default: on for CUDA)")
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                        help="torch.compile the networks (default: on for CUDA)")
    parser.add_argument("--compile-mode", default="default",
                        help="torch.compile mode: default | reduce-overhead (CUDA graphs) | max-autotune")
    parser.add_argument("--model-json", default="{}", help="model knob overrides as JSON, e.g. '{\"ngf\": 8}'")
    parser.add_argument("--images", type=int, default=64, help="random images per domain held on the device")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--reference", type=Path, default=None,
                        help="a reference step file (make(), step()) to time beside, e.g. reference_cyclegan.py")
    parser.add_argument("--json", type=Path, default=None, help="also write the rows as JSON here")
    parser.add_argument("--stylegan2", action="store_true",
                        help="time the StyleGAN2 G + D step (report 004) instead of the CycleGAN variants")
    recipe = parser.add_argument_group("recipe timing (instead of the step benchmark)")
    recipe.add_argument("--recipe", metavar="EXPERIMENT", default=None,
                        help="time this experiment's training recipe through the engine and extrapolate")
    recipe.add_argument("--configfile", type=Path, nargs="*", default=[],
                        help="config files merged over params.yaml, as snakemake --configfile (e.g. configs/full.yaml)")
    recipe.add_argument("--recipe-images", type=int, nargs=2, default=list(REPORT_001_TRAIN_IMAGES),
                        metavar=("A", "B"), help="training images of domain a and b (default: report 001's)")
    recipe.add_argument("--recipe-size", type=int, default=256, help="image side of the recipe's slices")
    recipe.add_argument("--recipe-epochs", type=int, default=3, help="epochs to measure (>= 2)")
    recipe.add_argument("--recipe-train-json", default="{}",
                        help='train knob overrides as JSON, e.g. \'{"batch_size": 16}\'')
    recipe.add_argument("--work-dir", type=Path, default=None, help="folder for the measurement (default: a temporary one)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.recipe is not None:
        return _recipe_main(args)
    try:
        if args.device == "cuda" and not torch.cuda.is_available():
            raise ConfigError("--device cuda but no CUDA device is available")
        device = torch.device("cuda" if args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
                              else "cpu")
        on_gpu = device.type == "cuda"
        if args.threads > 0:
            torch.set_num_threads(args.threads)
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
        try:
            overrides = json.loads(args.model_json)
        except json.JSONDecodeError as err:
            raise ConfigError(f"--model-json is not valid JSON ({err})") from err
        flags = {name: on_gpu if getattr(args, name) is None else getattr(args, name)
                 for name in ("bf16", "channels_last", "compile")}
        if args.stylegan2:
            return _stylegan2_main(args, device, flags, overrides)
        rows = run_bench(args.variants, args.sizes, args.batches, args.steps, args.warmup, device, flags["bf16"],
                         flags["channels_last"], flags["compile"], args.compile_mode, overrides, args.reference,
                         args.images)
    except PipelineError as err:
        log.error("%s", err)
        return 1
    name = device_name(device)
    print(format_table(rows, name), flush=True)
    if args.json is not None:
        write_json(args.json, {"device": name, "torch": torch.__version__, "steps": args.steps,
                               "warmup": args.warmup, "model_overrides": overrides, "rows": rows})
    return 0


def _stylegan2_main(args: argparse.Namespace, device: torch.device, flags: Mapping[str, bool],
                    overrides: Mapping[str, Any]) -> int:
    if args.steps < 1 or args.warmup < 0:
        log.error("--steps must be >= 1 and --warmup >= 0, got %d and %d", args.steps, args.warmup)
        return 1
    compile_ = bool(args.compile)  # off unless asked: R1 and path length differentiate twice
    rows = []
    for size in args.sizes:
        for batch in args.batches:
            rows.append(_guarded(lambda: bench_stylegan2(
                size, batch, args.steps, args.warmup, device, flags["bf16"], flags["channels_last"], compile_,
                args.compile_mode, overrides, args.images), "stylegan2", size, batch))
    name = device_name(device)
    print(format_stylegan2_table(rows, name), flush=True)
    if args.json is not None:
        write_json(args.json, {"device": name, "torch": torch.__version__, "steps": args.steps,
                               "warmup": args.warmup, "model_overrides": dict(overrides), "rows": rows,
                               "published_s_per_kimg_128": STYLEGAN2_ADA_PUBLISHED_S_PER_KIMG})
    return 0


def _recipe_main(args: argparse.Namespace) -> int:
    try:
        try:
            train_overrides = json.loads(args.recipe_train_json)
        except json.JSONDecodeError as err:
            raise ConfigError(f"--recipe-train-json is not valid JSON ({err})") from err
        if args.threads > 0:
            torch.set_num_threads(args.threads)
        with contextlib.ExitStack() as stack:
            work_dir = args.work_dir or Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="recipe-")))
            result = time_recipe(args.recipe, args.configfile, work_dir, args.recipe_images, args.recipe_size,
                                 args.recipe_epochs, train_overrides)
    except PipelineError as err:
        log.error("%s", err)
        return 1
    print(format_recipe(result), flush=True)
    if args.json is not None:
        write_json(args.json, {"torch": torch.__version__, "recipe": result})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
