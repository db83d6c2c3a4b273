"""A small U-Net that segments CT slices into the experiment's organ classes (image -> label map).

Report 003's claim is anatomical: the generated image follows the map it was generated from. The
segmenter, trained on real slices only, reads a map back from a generated image, and the Dice
per organ between that map and the one the generator was given measures the claim (as SPADE-style
papers report mIoU with a pretrained segmenter). Its own Dice on real held-out slices is written
beside it (models/<experiment>/segmenter.json), so a low Dice on generated images can be blamed
on the generator and not on the segmenter. Its own Snakemake rule keeps it out of the GAN's
reruns: a new style weight retrains the GAN, never the segmenter.

Network: a U-Net of ``depth`` levels (two 3x3 conv-BatchNorm-ReLU per level, width doubling,
max-pool down, transposed conv up, skip concatenation), 1x1 conv to one logit per class. Input
[0, 1] slices mapped to [-1, 1]; random initialisation (no download).

Augmentations (train time only, each a knob; drawn from a seeded torch generator):
- intensity: x -> a * x + b with a ~ U(1 - j, 1 + j), b ~ U(-j, j) (j = ``intensity_jitter``),
  and Gaussian noise of std ``noise_std``: generated textures differ from the training
  patients' in brightness and grain, and the segmenter must find organs by shape and context,
  not by one scanner's exact grey values;
- translation: image and map shifted together by up to ``shift_px`` pixels (zero / background
  filled), so position within the field of view is not learnt by heart from ~20 slices;
- left-right flip with probability ``flip_probability`` (default 0: the heart lies left, a
  mirrored thorax is not an anatomy the generator is asked for).
Loss: cross-entropy + ``dice_weight`` x (1 - soft Dice averaged over the organ classes 1..
present in the batch), as nnU-Net: with cross-entropy alone the spinal canal (~0.1% of the
pixels at 64 px) is never predicted (measured: Dice 0 on held-out phantom slices). Selection:
the epoch with the best mean organ Dice (classes 1..) on the validation slices. Deterministic
on CPU (seeded, torch deterministic algorithms).

CLI: python -m pipeline.evaluate.measures.segmenter --train T --val V --test H --organ-names ... --out-model M --out-json J
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

import numpy as np

from pipeline.atomic import atomic_path, write_json
from pipeline.errors import InputDataError, PipelineError
from pipeline.evaluate.measures.dice import DEFINITION as DICE_DEFINITION, dice_per_class, dice_summary
from pipeline.evaluate.measures.slices import load_map_slices
from pipeline.hashing import file_sha256
from pipeline.preprocess.thorax_labels import CLASS_NAMES

log = logging.getLogger("pipeline.evaluate.measures.segmenter")

DEFAULT_SETTINGS = {
    "epochs": 80,
    "batch_size": 8,
    "lr": 2.0e-3,
    "width": 16,
    "depth": 3,
    "intensity_jitter": 0.1,
    "noise_std": 0.02,
    "shift_px": 4,
    "flip_probability": 0.0,
    "dice_weight": 1.0,
    "threads": 0,
}


def build_unet(n_classes: int, width: int = 16, depth: int = 3):
    """The U-Net of the module docstring (any input side divisible by 2**(depth - 1))."""
    import torch
    import torch.nn as nn

    def block(c_in: int, c_out: int) -> nn.Sequential:
        return nn.Sequential(
            nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True),
            nn.Conv2d(c_out, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True),
        )

    class UNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            widths = [width * 2**level for level in range(depth)]
            self.down = nn.ModuleList([block(1 if i == 0 else widths[i - 1], w) for i, w in enumerate(widths)])
            self.up = nn.ModuleList([nn.ConvTranspose2d(widths[i + 1], widths[i], 2, stride=2)
                                     for i in reversed(range(depth - 1))])
            self.merge = nn.ModuleList([block(2 * widths[i], widths[i]) for i in reversed(range(depth - 1))])
            self.head = nn.Conv2d(widths[0], n_classes, 1)

        def forward(self, x):
            skips = []
            for i, level in enumerate(self.down):
                x = level(x if i == 0 else nn.functional.max_pool2d(x, 2))
                skips.append(x)
            for up, merge, skip in zip(self.up, self.merge, reversed(skips[:-1])):
                x = merge(torch.cat([up(x), skip], dim=1))
            return self.head(x)

    return UNet()


def _augment(images, maps, settings: dict, generator):
    """The module docstring's augmentations of a batch ((B, 1, H, W) in [0, 1], (B, H, W) long)."""
    import torch

    n = len(images)
    jitter = settings["intensity_jitter"]
    gain = 1.0 + (torch.rand(n, 1, 1, 1, generator=generator) * 2 - 1) * jitter
    offset = (torch.rand(n, 1, 1, 1, generator=generator) * 2 - 1) * jitter
    images = images * gain + offset + torch.randn(images.shape, generator=generator) * settings["noise_std"]
    shift = settings["shift_px"]
    if shift:
        moved_images, moved_maps = torch.zeros_like(images), torch.zeros_like(maps)
        dy, dx = (torch.randint(-shift, shift + 1, (2, n), generator=generator)).tolist()
        height, width = maps.shape[-2:]
        for i in range(n):
            src_y, dst_y = slice(max(0, -dy[i]), height - max(0, dy[i])), slice(max(0, dy[i]), height - max(0, -dy[i]))
            src_x, dst_x = slice(max(0, -dx[i]), width - max(0, dx[i])), slice(max(0, dx[i]), width - max(0, -dx[i]))
            moved_images[i, :, dst_y, dst_x] = images[i, :, src_y, src_x]
            moved_maps[i, dst_y, dst_x] = maps[i, src_y, src_x]
        images, maps = moved_images, moved_maps
    flip = torch.rand(n, generator=generator) < settings["flip_probability"]
    images = torch.where(flip[:, None, None, None], images.flip(-1), images)
    maps = torch.where(flip[:, None, None], maps.flip(-1), maps)
    return images, maps


def soft_dice_loss(logits, maps):
    """1 - mean soft Dice over the organ classes (1..) present in the batch's maps."""
    import torch

    probabilities = torch.softmax(logits, dim=1)[:, 1:]
    truth = torch.nn.functional.one_hot(maps, logits.shape[1]).permute(0, 3, 1, 2)[:, 1:].to(probabilities.dtype)
    overlap = (probabilities * truth).sum(dim=(0, 2, 3))
    total = probabilities.sum(dim=(0, 2, 3)) + truth.sum(dim=(0, 2, 3))
    present = truth.sum(dim=(0, 2, 3)) > 0
    if not present.any():
        return logits.sum() * 0.0
    return 1.0 - (2.0 * overlap[present] / total[present]).mean()


def predict_maps(network, images: np.ndarray, batch_size: int = 16) -> np.ndarray:
    """(N, H, W) uint8 predicted classes of (N, H, W) slices in [0, 1] (run on the network's device)."""
    import torch

    from pipeline.devices import module_device

    device = module_device(network)
    network.eval()
    out = []
    with torch.inference_mode():
        for start in range(0, len(images), batch_size):
            batch = torch.from_numpy(np.ascontiguousarray(images[start : start + batch_size], np.float32))[:, None]
            out.append(network(batch.to(device) * 2.0 - 1.0).argmax(dim=1).to(torch.uint8).cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, *images.shape[1:]), np.uint8)


def fit_segmenter(train: dict[str, np.ndarray], val: dict[str, np.ndarray], n_classes: int, settings: dict,
                  seed: int = 0, device: str = "cpu"):
    """Train a fresh U-Net on ``device``; keep the epoch with the best mean organ Dice on ``val``.
    Batches are drawn and augmented on the CPU (the same draws on any device) and copied over.

    Returns (network with the best weights, {"epoch", "val_mean_organ_dice"}, history rows).
    """
    import torch

    from pipeline.devices import deterministic

    side = 2 ** (settings["depth"] - 1)
    if any(s % side for s in train["images"].shape[1:]):
        raise PipelineError(f"slice size {train['images'].shape[1:]} is not divisible by {side} "
                            f"(segmenter depth {settings['depth']})")
    if settings["threads"]:
        torch.set_num_threads(settings["threads"])
    deterministic(device)
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    network = build_unet(n_classes, settings["width"], settings["depth"]).to(device)
    optimiser = torch.optim.Adam(network.parameters(), lr=settings["lr"])
    x = torch.from_numpy(train["images"])[:, None]
    y = torch.from_numpy(train["label_maps"])
    loss_fn = torch.nn.CrossEntropyLoss()
    best = {"epoch": 0, "val_mean_organ_dice": -1.0, "state": None}
    history = []
    for epoch in range(1, settings["epochs"] + 1):
        network.train()
        order = torch.randperm(len(x), generator=generator)
        losses = []
        for start in range(0, len(order), settings["batch_size"]):
            rows = order[start : start + settings["batch_size"]]
            if len(rows) < 2:  # BatchNorm needs two images; the leftover one comes again next epoch
                continue
            images, maps = (t.to(device) for t in _augment(x[rows], y[rows], settings, generator))
            optimiser.zero_grad()
            logits = network(images * 2.0 - 1.0)
            loss = loss_fn(logits, maps) + settings["dice_weight"] * soft_dice_loss(logits, maps)
            loss.backward()
            optimiser.step()
            losses.append(loss.detach())
        val_dice = dice_per_class(predict_maps(network, val["images"]), val["label_maps"], n_classes)
        score = float(np.nanmean(val_dice[:, 1:])) if np.isfinite(val_dice[:, 1:]).any() else 0.0
        history.append({"epoch": epoch, "train_loss": float(torch.stack(losses).mean()) if losses else None,
                        "val_mean_organ_dice": score})
        if score > best["val_mean_organ_dice"]:
            best = {"epoch": epoch, "val_mean_organ_dice": score,
                    "state": {k: v.detach().clone() for k, v in network.state_dict().items()}}
    network.load_state_dict(best["state"])
    network.eval()
    return network, {k: v for k, v in best.items() if k != "state"}, history


def load_segmenter(path: Path, device: str = "cpu"):
    """(network in eval mode on ``device``, checkpoint dict) from segmenter.pt."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise InputDataError(path, "segmenter checkpoint not found")
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    settings = checkpoint["settings"]
    network = build_unet(len(checkpoint["organ_names"]), settings["width"], settings["depth"])
    network.load_state_dict(checkpoint["state"])
    return network.to(device).eval(), checkpoint


def train_segmenter(train: Path, val: Path, test: Path, organ_names: list[str], settings: dict, seed: int,
                    out_model: Path, out_json: Path, min_subjects: int = 8, n_boot: int = 1000,
                    device: str = "cpu") -> dict:
    """Train, select on val, score val and test, write segmenter.pt and segmenter.json atomically."""
    import torch

    from pipeline.evaluate.measures.intervals import IntervalPolicy

    started = time.perf_counter()
    n_classes = len(organ_names)
    data = {name: load_map_slices(Path(p), n_classes) for name, p in (("train", train), ("val", val), ("test", test))}
    if data["train"]["images"].shape[1:] != data["test"]["images"].shape[1:]:
        raise InputDataError(test, f"slice size {data['test']['images'].shape[1:]} differs from the training slices'")
    network, best, history = fit_segmenter(data["train"], data["val"], n_classes, settings, seed, device)
    policy = IntervalPolicy(min_subjects=min_subjects, n_boot=n_boot, seed=seed)
    summary = {
        "what": "U-Net segmenter (image -> organ classes) trained on real slices; its Dice on real held-out "
        "slices bounds what the Dice of generated images can show",
        "organ_names": organ_names,
        "dice_definition": DICE_DEFINITION,
        "settings": settings | {"seed": seed, "loss": "cross-entropy + dice_weight x (1 - soft organ Dice)",
                                "selection": "epoch with the best mean organ Dice (classes 1..) on val"},
        "selected_epoch": best["epoch"],
        "history": history,
        "inputs": {name: {"path": str(p), "sha256": file_sha256(p), "n_images": len(data[name]["images"])}
                   for name, p in (("train", Path(train)), ("val", Path(val)), ("test", Path(test)))},
        **{split: dice_summary(predict_maps(network, data[split]["images"]), data[split]["label_maps"],
                               data[split]["subject_ids"].astype(str), organ_names, policy)[0]
           for split in ("val", "test")},
        "train_seconds": round(time.perf_counter() - started, 2),
    }
    with atomic_path(out_model) as tmp:
        torch.save({"state": {k: v.cpu() for k, v in network.state_dict().items()}, "settings": settings, "organ_names": organ_names,
                    "seed": seed, "selected_epoch": best["epoch"]}, tmp)
    write_json(out_json, summary)
    return summary


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m pipeline.evaluate.measures.segmenter", description=__doc__.splitlines()[0])
    for split in ("train", "val", "test"):
        parser.add_argument(f"--{split}", type=Path, required=True, help=f"real {split} slices npz with label_maps")
    parser.add_argument("--organ-names", nargs="+", default=list(CLASS_NAMES),
                        help="class 0..n-1 names (default: pipeline.preprocess.thorax_labels.CLASS_NAMES)")
    for key, value in DEFAULT_SETTINGS.items():
        parser.add_argument(f"--{key.replace('_', '-')}", type=type(value), default=value)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--min-subjects", type=int, default=8)
    parser.add_argument("--n-boot", type=int, default=1000)
    parser.add_argument("--device", default="auto", help="auto (CUDA when present), cpu or cuda")
    parser.add_argument("--out-model", type=Path, required=True)
    parser.add_argument("--out-json", type=Path, required=True)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    from pipeline.devices import resolve_device

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    settings = {key: getattr(args, key) for key in DEFAULT_SETTINGS}
    try:
        summary = train_segmenter(args.train, args.val, args.test, list(args.organ_names), settings, args.seed,
                                  args.out_model, args.out_json, args.min_subjects, args.n_boot,
                                  resolve_device(args.device))
    except PipelineError as err:
        log.error("%s", err)
        return 1
    log.info("segmenter: epoch %d, mean organ Dice val %.3f test %.3f", summary["selected_epoch"],
             summary["val"]["mean_organ_dice"]["mean"] or float("nan"),
             summary["test"]["mean_organ_dice"]["mean"] or float("nan"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
