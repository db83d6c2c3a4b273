"""Inversion of images into a StyleGAN2 generator's latent space: by the encoder and by latent
optimisation (report 004, Fig. 2B), for synthetic images (true w known) and real test images.
It is also the evaluator of task "encoding" (``python -m pipeline.evaluate --model encoder.pt``).

Latent optimisation (the projectors' recipe, REFERENCE.md): Adam on w (one w repeated over the
layers, ``latent_space: w``, or one per layer, ``w_plus``), started at G's mean w (``start:
w_avg``) or at the encoder's code (``start: encoder``); learning rate ``lr`` ramped up linearly
over the first ``lr_rampup`` of the run and down by a half cosine over the last
``lr_rampdown``; Gaussian noise added to w of std ``w_std * noise_start * max(0, 1 - t /
noise_ramp)^2`` (t the fraction of the run done, ``w_std`` the RMS distance of mapped w from
the mean over ``n_w_std_samples`` draws), which shakes the code out of poor minima early and
vanishes before the end. G's noise inputs stay constant (``noise_mode="const"``).

Loss: with ``pretrained: imagenet`` the VGG-19 ImageNet file must be on disk (else an
InputDataError naming it) and the loss is the L1 distance of VGG-19 features at
``perceptual_layers`` (a perceptual loss; LPIPS is not shipped here); with ``pretrained: none``
(the offline default) it is MSE + ``ssim_weight`` * (1 - SSIM) on the [-1, 1] images. The
section says which. Each image's loss is independent of the others' (summed over the batch),
so inverting images together equals inverting them one at a time.

Measures (images in [0, 1], data range 1, skimage SSIM with Wang et al.'s 11x11 Gaussian
window): synthetic images: w RMS error per dimension (sqrt(mean((w_hat - w)^2)) over all
num_ws x w_dim entries) of the starting code, of the encoder and of the optimisation, and image
SSIM / PSNR of the reconstructions; real held-out images (validation and test splits, never
G's training images; their codes also feed the separation and edit stages): SSIM / PSNR of the
encoder's and of the optimisation's reconstructions, with subject-bootstrap 95% intervals (each synthetic image is
its own subject).
"""
from __future__ import annotations

import argparse
import logging
import math
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F

from pipeline.atomic import atomic_path, write_json
from pipeline.errors import ConfigError, InputDataError, PipelineError

log = logging.getLogger("pipeline.latent.invert")

DEFAULT_SETTINGS: dict[str, Any] = {
    "steps": 200,                  # Adam steps (projectors: ~1000)
    "lr": 0.1,
    "lr_rampup": 0.05,             # fraction of the run with a linear LR ramp-up
    "lr_rampdown": 0.25,           # fraction of the run with a cosine LR ramp-down
    "noise_start": 0.05,           # noise on w at the start, in units of w_std
    "noise_ramp": 0.75,            # fraction of the run after which the noise is 0
    "n_w_std_samples": 2000,       # mapped z draws for w_avg's spread
    "latent_space": "w",           # w | w_plus
    "start": "w_avg",              # w_avg | encoder
    "ssim_weight": 1.0,            # MSE + ssim_weight * (1 - SSIM) (pretrained: none)
    "ssim_kernel_size": 7,
    "perceptual_layers": ["relu1_2", "relu2_2", "relu3_2"],
    "batch_size": 64,              # images optimised together (independent losses)
    "n_synthetic": 16,             # synthetic images with a known w
    "max_real_images": 200,        # test images inverted (evenly spaced; all when fewer)
}
LATENT_SPACES = ("w", "w_plus")
STARTS = ("w_avg", "encoder")


def lr_at(t: float, lr: float, rampup: float, rampdown: float) -> float:
    """Learning rate at run fraction ``t`` in [0, 1): linear ramp-up, cosine ramp-down."""
    down = min(1.0, (1.0 - t) / rampdown) if rampdown > 0 else 1.0
    factor = 0.5 - 0.5 * math.cos(down * math.pi)
    up = min(1.0, t / rampup) if rampup > 0 else 1.0
    return lr * factor * up


def noise_at(t: float, w_std: float, noise_start: float, noise_ramp: float) -> float:
    """Std of the noise added to w at run fraction ``t`` (0 from ``noise_ramp`` on)."""
    if noise_ramp <= 0:
        return 0.0
    return w_std * noise_start * max(0.0, 1.0 - t / noise_ramp) ** 2


@torch.no_grad()
def w_spread(sampler, n: int, seed: int) -> float:
    """RMS distance of mapped w from ``w_avg`` (per dimension): the scale of the noise on w."""
    z = torch.randn(n, int(sampler.z_dim), generator=torch.Generator().manual_seed(seed))
    w = sampler.mapping(z.to(_device(sampler)))[:, 0].float().cpu()
    return float(((w - torch.as_tensor(sampler.w_avg).cpu().float()) ** 2).sum(1).mean().sqrt())


def _device(sampler) -> torch.device:
    return next(sampler.generator.parameters()).device


def image_loss(kind: str, ssim_weight: float, ssim_kernel_size: int,
               perceptual: torch.nn.Module | None = None) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """Sum over images of each image's loss (so images do not interact)."""
    from pipeline.models.losses import ssim_loss

    def mse_ssim(x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        n = len(x)
        return n * (F.mse_loss(x, target) + ssim_weight * ssim_loss(x, target, ssim_kernel_size, 1.5))

    def vgg(x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return len(x) * perceptual(x, target)

    if kind == "perceptual":
        if perceptual is None:
            raise ConfigError("the perceptual inversion loss needs its VGG-19 network")
        return vgg
    return mse_ssim


def optimise_latent(sampler, targets: torch.Tensor, start: torch.Tensor, settings: dict[str, Any],
                    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], w_std: float,
                    seed: int) -> tuple[torch.Tensor, list[float]]:
    """Codes (n, num_ws, w_dim) whose images match ``targets`` ((n, 1, S, S) in [-1, 1]).

    ``start`` (n, num_ws, w_dim) is the first code; in W mode its first layer's w is used and
    repeated. Returns the final codes (without noise) and the loss per step (mean per image).
    """
    num_ws = int(sampler.num_ws)
    per_layer = settings["latent_space"] == "w_plus"
    w = (start.clone() if per_layer else start[:, :1].clone()).float().requires_grad_(True)
    optimizer = torch.optim.Adam([w], lr=settings["lr"], betas=(0.9, 0.999))
    # The noise on w is drawn on the CPU (the same codes on any device) and copied over: a copy,
    # not a wait. The losses stay on the device until the end: one read, not one per step.
    noise_rng = torch.Generator().manual_seed(seed)
    steps, history = int(settings["steps"]), []
    for step in range(steps):
        t = step / steps
        for group in optimizer.param_groups:
            group["lr"] = lr_at(t, settings["lr"], settings["lr_rampup"], settings["lr_rampdown"])
        sigma = noise_at(t, w_std, settings["noise_start"], settings["noise_ramp"])
        noise = torch.randn(w.shape, generator=noise_rng).to(w.device) * sigma
        ws = (w + noise).expand(len(w), num_ws, w.shape[-1])
        loss = loss_fn(sampler.synthesis(ws, noise_mode="const"), targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        history.append(loss.detach())
    per_image = (torch.stack(history).float().cpu() / max(1, len(w))).tolist() if history else []
    return w.detach().expand(len(w), num_ws, w.shape[-1]).clone(), per_image


@torch.no_grad()
def render(sampler, ws: torch.Tensor, batch_size: int = 64) -> np.ndarray:
    """Images of codes, (n, S, S) float32 in [0, 1]."""
    out = [((sampler.synthesis(ws[i:i + batch_size].to(_device(sampler)), noise_mode="const").float() + 1) / 2)
           .clamp(0, 1)[:, 0].cpu().numpy() for i in range(0, len(ws), batch_size)]
    return np.concatenate(out).astype(np.float32) if out else np.zeros((0, *sampler.image_size), np.float32)


def invert_batches(sampler, images: np.ndarray, start: torch.Tensor, settings: dict[str, Any],
                   loss_fn, w_std: float, seed: int) -> torch.Tensor:
    """``optimise_latent`` over ``images`` ((n, S, S) in [0, 1]) in batches of ``batch_size``."""
    device, size = _device(sampler), settings["batch_size"]
    codes = []
    for i in range(0, len(images), size):
        targets = torch.from_numpy(np.ascontiguousarray(images[i:i + size], np.float32))[:, None].to(device) * 2 - 1
        w, _ = optimise_latent(sampler, targets, start[i:i + size].to(device), settings, loss_fn, w_std, seed + i)
        codes.append(w.cpu())
    return torch.cat(codes) if codes else torch.zeros(0, int(sampler.num_ws), int(sampler.w_dim))


def w_rms_error(estimate: torch.Tensor, truth: torch.Tensor) -> np.ndarray:
    """Per image: sqrt(mean((w_hat - w)^2)) over all num_ws x w_dim entries."""
    return ((estimate.float() - truth.float()) ** 2).flatten(1).mean(1).sqrt().numpy().astype(np.float64)


def evenly_spaced(n_total: int, n_max: int) -> np.ndarray:
    """Indices of at most ``n_max`` evenly spaced items (all when fewer)."""
    if n_total <= n_max:
        return np.arange(n_total)
    return np.unique(np.linspace(0, n_total - 1, n_max).round().astype(int))


def load_test_images(path: Path, image_size: tuple[int, int]) -> dict[str, np.ndarray]:
    """A slices npz with images (N, S, S) in [0, 1], labels and subject_ids, checked against G's size."""
    path = Path(path)
    if not path.is_file():
        raise InputDataError(path, "slices file not found")
    with np.load(path, allow_pickle=False) as data:
        missing = [k for k in ("images", "subject_ids") if k not in data.files]
        if missing:
            raise InputDataError(path, f"no array {missing}")
        out = {k: data[k] for k in data.files}
    images = out["images"]
    if images.ndim != 3 or tuple(images.shape[1:]) != tuple(image_size):
        raise InputDataError(path, f"images are {images.shape[1:]}, the generator makes {tuple(image_size)}: "
                                   "prepare the slices at the generator's size")
    if not np.all(np.isfinite(images)) or images.min() < 0 or images.max() > 1:
        raise InputDataError(path, "images must be finite and in [0, 1]")
    out["images"] = images.astype(np.float32)
    out["subject_ids"] = out["subject_ids"].astype(str)
    return out


def held_out_images(paths: list[Path], image_size: tuple[int, int]) -> dict[str, np.ndarray]:
    """The held-out slices (validation then test: never G's training images), concatenated, with
    each image's split name; labels -1 and ctr NaN where a file has none."""
    parts = []
    for path in paths:
        data = load_test_images(path, image_size)
        n = len(data["images"])
        parts.append({"images": data["images"], "subject_ids": data["subject_ids"],
                      "labels": data.get("labels", np.full(n, -1)).astype(np.int64),
                      "ctr": data.get("ctr", np.full(n, np.nan)).astype(np.float32),
                      "split": np.full(n, Path(path).stem)})
    return {key: np.concatenate([part[key] for part in parts]) for key in parts[0]}


def reconstruction_loss_for(pretrained: str, weights_dir: Path, settings: dict[str, Any], device) -> tuple[Any, dict]:
    """The loss function and what the section records about it."""
    from pipeline.models.networks import imagenet_weight_file
    from pipeline.sources.weights import WEIGHT_FILES

    path, status = imagenet_weight_file(weights_dir, WEIGHT_FILES["vgg19"][1], pretrained)
    if path is None:
        return (image_loss("mse_ssim", settings["ssim_weight"], settings["ssim_kernel_size"]),
                {"kind": "mse_ssim", "definition": f"MSE + {settings['ssim_weight']:g} x (1 - SSIM) on [-1, 1] images",
                 "why": f"VGG-19 {status}: no perceptual loss without its ImageNet weights"})
    from pipeline.models.losses import VGGPerceptualLoss

    layers = list(settings["perceptual_layers"])
    vgg = VGGPerceptualLoss(layers, [1.0] * len(layers), weights=path).to(device)
    return (image_loss("perceptual", 0.0, settings["ssim_kernel_size"], vgg),
            {"kind": "perceptual", "definition": f"L1 of VGG-19 features at {layers}", "weights": status})


def _summary(values: np.ndarray, subjects: np.ndarray, policy) -> dict:
    from pipeline.evaluate.measures.summary import summarise

    return summarise(np.asarray(values, np.float64), subjects, policy)


def run_inversion(generator_path: Path, encoder_path: Path, test_path: Path, settings: dict[str, Any], seed: int,
                  pretrained: str, weights_dir: Path, policy, device: str = "cpu",
                  ladder_path: Path | None = None, val_path: Path | None = None) -> tuple[dict, dict[str, np.ndarray]]:
    """The inversion section and the codes / images npz content (with ``ladder_path``, the phantom's
    CTR ladder, also the optimised codes of each ladder patient's own healthy render, for the edit
    stage's check against the true renders)."""
    from pipeline.evaluate.measures.image_metrics import SSIM_SETTINGS, psnr_per_image, ssim_per_image
    from pipeline.models import load_trained
    from pipeline.models.stylegan2_encoder import load_frozen_generator

    if settings["latent_space"] not in LATENT_SPACES:
        raise ConfigError(f"inversion.latent_space must be one of {LATENT_SPACES}, got {settings['latent_space']!r}")
    if settings["start"] not in STARTS:
        raise ConfigError(f"inversion.start must be one of {STARTS}, got {settings['start']!r}")
    started = time.perf_counter()
    sampler = load_frozen_generator(generator_path, device)
    encoder = load_trained(encoder_path, device)
    if getattr(encoder, "task", None) != "encoding":
        raise InputDataError(Path(encoder_path), "is not a trained encoder (task encoding)")
    test = held_out_images([p for p in (val_path, test_path) if p is not None], sampler.image_size)
    loss_fn, loss_info = reconstruction_loss_for(pretrained, weights_dir, settings, _device(sampler))
    w_std = w_spread(sampler, settings["n_w_std_samples"], seed)
    w_avg = torch.as_tensor(sampler.w_avg).float().cpu().view(1, 1, -1)

    def starts(images: np.ndarray, encoded: torch.Tensor) -> torch.Tensor:
        if settings["start"] == "encoder":
            return encoded
        return w_avg.expand(len(images), int(sampler.num_ws), int(sampler.w_dim)).clone()

    # Synthetic images: their true w is known.
    z = torch.randn(settings["n_synthetic"], int(sampler.z_dim), generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        w_true = sampler.mapping(z.to(_device(sampler))).float().cpu()
    syn_images = render(sampler, w_true)
    syn_enc = encoder.encode(syn_images).float()
    syn_start = starts(syn_images, syn_enc)
    syn_opt = invert_batches(sampler, syn_images, syn_start, settings, loss_fn, w_std, seed)
    syn_subjects = np.array([f"synthetic{i}" for i in range(len(syn_images))])
    syn_rec = {"encoder": render(sampler, syn_enc), "optimisation": render(sampler, syn_opt)}

    # Real test images.
    keep = evenly_spaced(len(test["images"]), settings["max_real_images"])
    real = test["images"][keep]
    splits = test["split"][keep]
    subjects = test["subject_ids"][keep]
    real_enc = encoder.encode(real).float()
    real_opt = invert_batches(sampler, real, starts(real, real_enc), settings, loss_fn, w_std, seed + 1_000_003)
    real_rec = {"encoder": render(sampler, real_enc), "optimisation": render(sampler, real_opt)}

    section = {
        "what": "inversion of images into G's latent space by the encoder and by latent optimisation",
        "loss": loss_info,
        "settings": {**settings, "seed": seed, "w_std": w_std},
        "image_metrics": {"data_range": 1.0, "images": "[0, 1]", "ssim": SSIM_SETTINGS},
        "synthetic": {
            "n_images": len(syn_images),
            "w_rms_error": {"start": _summary(w_rms_error(syn_start, w_true), syn_subjects, policy),
                            "encoder": _summary(w_rms_error(syn_enc, w_true), syn_subjects, policy),
                            "optimisation": _summary(w_rms_error(syn_opt, w_true), syn_subjects, policy)},
            **{method: {"ssim": _summary(ssim_per_image(syn_images, rec), syn_subjects, policy),
                        "psnr": _summary(psnr_per_image(syn_images, rec), syn_subjects, policy)}
               for method, rec in syn_rec.items()},
        },
        "real": {
            "n_images": int(len(real)), "n_subjects": int(len(np.unique(subjects))),
            "splits": {str(name): int((splits == name).sum()) for name in np.unique(splits)},
            **{method: {"ssim": _summary(ssim_per_image(real, rec), subjects, policy),
                        "psnr": _summary(psnr_per_image(real, rec), subjects, policy)}
               for method, rec in real_rec.items()},
        },
        "seconds": round(time.perf_counter() - started, 2),
        "device": str(device),
    }
    labels = test["labels"][keep]
    codes = {
        "real_codes_optimisation": real_opt.numpy(), "real_codes_encoder": real_enc.numpy(),
        "real_images": real, "real_reconstruction_encoder": real_rec["encoder"],
        "real_reconstruction_optimisation": real_rec["optimisation"], "real_labels": labels.astype(np.int64),
        "real_subject_ids": subjects, "real_index": keep.astype(np.int64), "real_split": splits,
        "synthetic_w_true": w_true.numpy(), "synthetic_codes_encoder": syn_enc.numpy(),
        "synthetic_codes_optimisation": syn_opt.numpy(), "synthetic_images": syn_images,
        "synthetic_reconstruction_encoder": syn_rec["encoder"],
        "synthetic_reconstruction_optimisation": syn_rec["optimisation"],
    }
    codes["real_ctr"] = test["ctr"][keep]
    if ladder_path is not None:
        with np.load(ladder_path, allow_pickle=False) as data:
            ladder_images, base_index = data["images"], data["base_index"].astype(int)
        if ladder_images.ndim != 4 or tuple(ladder_images.shape[2:]) != tuple(sampler.image_size):
            raise InputDataError(Path(ladder_path), f"images {ladder_images.shape} are not (P, K, "
                                                    f"{sampler.image_size[0]}, {sampler.image_size[1]})")
        bases = np.stack([ladder_images[p, base_index[p]] for p in range(len(ladder_images))]).astype(np.float32)
        ladder_enc = encoder.encode(bases).float()
        codes["ladder_codes_optimisation"] = invert_batches(sampler, bases, starts(bases, ladder_enc), settings,
                                                            loss_fn, w_std, seed + 2_000_003).numpy()
        section["ladder"] = {"n_patients": int(len(bases)),
                             "what": "each ladder patient's own healthy render inverted (for the edit check)"}
    return section, codes


def reconstructions_figure(codes: dict[str, np.ndarray], out_png: Path, n_show: int = 6) -> None:
    """Source / encoder / optimisation rows for synthetic and for real images."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [("synthetic", "synthetic_images"), ("G(E(x))", "synthetic_reconstruction_encoder"),
            ("G(w optimised)", "synthetic_reconstruction_optimisation"), ("real", "real_images"),
            ("G(E(I))", "real_reconstruction_encoder"), ("G(w optimised)", "real_reconstruction_optimisation")]
    n = min(n_show, len(codes["synthetic_images"]), len(codes["real_images"]))
    fig, axes = plt.subplots(len(rows), n, figsize=(1.6 * n, 1.7 * len(rows)), squeeze=False)
    for r, (title, key) in enumerate(rows):
        for c in range(n):
            ax = axes[r][c]
            ax.imshow(codes[key][c], cmap="gray", vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
            if c == 0:
                ax.set_ylabel(title, fontsize=7)
    fig.suptitle("Reconstructions: synthetic (rows 1-3) and real test images (rows 4-6)", fontsize=8)
    fig.tight_layout()
    with atomic_path(out_png) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m pipeline.latent.invert", description=__doc__.splitlines()[0])
    parser.add_argument("--generator", type=Path, required=True, help="G's model.pt")
    parser.add_argument("--encoder", "--model", dest="encoder", type=Path, required=True,
                        help="the encoder's model.pt (--model: as `python -m pipeline.evaluate` passes it)")
    parser.add_argument("--test", type=Path, required=True, help="real test slices npz")
    parser.add_argument("--val", type=Path, default=None, help="real validation slices npz (held out from G too)")
    parser.add_argument("--ladder", type=Path, default=None, help="the phantom's ctr_ladder.npz (optional)")
    for key, value in DEFAULT_SETTINGS.items():
        flag = f"--{key.replace('_', '-')}"
        if isinstance(value, list):
            parser.add_argument(flag, nargs="+", default=value)
        else:
            parser.add_argument(flag, type=type(value), default=value)
    parser.add_argument("--pretrained", choices=("imagenet", "none"), default="none")
    parser.add_argument("--weights-dir", type=Path, default=Path("data/weights"))
    parser.add_argument("--min-subjects", type=int, default=8)
    parser.add_argument("--n-boot", type=int, default=1000)
    parser.add_argument("--device", default="auto", help="auto (CUDA when present), cpu or cuda: where G, the "
                                                          "encoder and the loss run")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out-json", type=Path, required=True)
    parser.add_argument("--codes-out", type=Path, required=True)
    parser.add_argument("--figure", type=Path, required=True)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    from pipeline.devices import resolve_device
    from pipeline.evaluate.measures.intervals import IntervalPolicy

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    settings = {key: getattr(args, key) for key in DEFAULT_SETTINGS}
    torch.manual_seed(args.seed)
    try:
        policy = IntervalPolicy(min_subjects=args.min_subjects, n_boot=args.n_boot, seed=args.seed)
        section, codes = run_inversion(args.generator, args.encoder, args.test, settings, args.seed, args.pretrained,
                                       args.weights_dir, policy, resolve_device(args.device), args.ladder, args.val)
    except PipelineError as err:
        log.error("%s", err)
        return 1
    with atomic_path(args.codes_out) as tmp:
        with open(tmp, "wb") as fh:
            np.savez_compressed(fh, **codes)
    reconstructions_figure(codes, args.figure)
    write_json(args.out_json, section)
    log.info("inversion: real SSIM encoder %.3f, optimisation %.3f; synthetic w error start %.3f -> %.3f",
             section["real"]["encoder"]["ssim"]["mean"], section["real"]["optimisation"]["ssim"]["mean"],
             section["synthetic"]["w_rms_error"]["start"]["mean"],
             section["synthetic"]["w_rms_error"]["optimisation"]["mean"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
