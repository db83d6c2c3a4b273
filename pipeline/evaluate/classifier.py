"""Domain classifier: trained on real slices of domain a vs domain b, then asked about translations.

Report 002 scores generated images with a classifier trained on real data: if translations of
a into b are taken for b by a network that tells real a from real b, they carry b's features.
The classifier is a small CNN trained from random initialisation (no download), selected on the
validation slices, with its held-out test accuracy reported beside the share, so a reader can
tell a weak classifier from a weak translator. Its own Snakemake rule keeps it out of the
evaluation's reruns: changing an evaluation knob does not retrain it.

CLI: python -m pipeline.evaluate.classifier --train-a A --train-b B --val-a ... --out-model classifier.pt
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

import numpy as np

from pipeline.atomic import atomic_path, write_json
from pipeline.errors import PipelineError

log = logging.getLogger("pipeline.evaluate.classifier")


def build_network(width: int = 16, n_blocks: int = 3):
    """n_blocks of conv-ReLU-maxpool (width doubling), global average pool, 2 logits (any input size).

    No batch normalisation: with a few dozen training slices its running statistics never settle,
    and the network would score differently in eval mode than it trained.
    """
    import torch.nn as nn

    layers: list[nn.Module] = []
    channels_in = 1
    for block in range(n_blocks):
        channels_out = width * 2**block
        layers += [
            nn.Conv2d(channels_in, channels_out, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
        ]
        channels_in = channels_out
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels_in, 2)]
    return nn.Sequential(*layers)


def to_tensor(images: np.ndarray, image_size: int | None):
    """(N, H, W) in [0, 1] -> (N, 1, S, S) float tensor, area-resized when ``image_size`` differs."""
    import torch

    tensor = torch.from_numpy(np.asarray(images, np.float32))[:, None]
    if image_size is not None and tuple(tensor.shape[-2:]) != (image_size, image_size):
        tensor = torch.nn.functional.interpolate(tensor, size=(image_size, image_size), mode="area")
    return tensor


def _logits(network, tensor, batch_size: int):
    import torch

    network.eval()
    with torch.inference_mode():
        return torch.cat([network(tensor[i : i + batch_size]) for i in range(0, len(tensor), batch_size)])


def _scores(logits, labels) -> tuple[float, float, list[float]]:
    """Accuracy, balanced accuracy (mean of per-class recall) and per-class accuracy."""
    predicted = logits.argmax(dim=1)
    per_class = [float((predicted[labels == c] == c).float().mean()) for c in (0, 1)]
    return float((predicted == labels).float().mean()), float(np.mean(per_class)), per_class


def train_classifier(
    train: dict[str, Path],
    val: dict[str, Path],
    test: dict[str, Path],
    out_model: Path,
    out_json: Path,
    domain_names: tuple[str, str] = ("a", "b"),
    epochs: int = 15,
    batch_size: int = 32,
    lr: float = 1e-3,
    weight_decay: float = 1e-4,
    width: int = 16,
    n_blocks: int = 3,
    image_size: int | None = 64,
    flip_probability: float = 0.5,
    patience: int = 5,
    threads: int = 0,
    seed: int = 0,
) -> dict:
    """Train on real train slices (label 0 = domain a, 1 = b), keep the epoch best on val, score on test.

    train / val / test: {"a": npz, "b": npz} slice files (contracts: ``images`` in [0, 1], ``subject_ids``).
    epochs (default 15), batch_size (32), lr (1e-3, Adam), weight_decay (1e-4): training.
    width (16), n_blocks (3): network size; image_size: side the slices are area-resized to
    (default 64; None keeps theirs). flip_probability: random left-right flips (default 0.5).
    patience: stop after this many epochs without a better validation score (default 5).
    threads: torch CPU threads (0 = torch's default). seed: initialisation, shuffling, flips.
    The loss weighs the classes by inverse frequency and selection uses balanced accuracy, so an
    unbalanced pair (e.g. NORMAL vs PNEUMONIA) cannot be won by always answering the larger class.
    Deterministic on CPU for a given seed and thread count. Returns the summary written to ``out_json``.
    """
    import torch

    from pipeline.evaluate.translation import load_test_slices

    started = time.monotonic()
    if threads > 0:
        torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True)
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)

    def load(split: dict[str, Path]):
        sets = [load_test_slices(split[d]) for d in ("a", "b")]
        images = to_tensor(np.concatenate([s["images"] for s in sets]), image_size)
        labels = torch.cat([torch.full((len(s["images"]),), c, dtype=torch.long) for c, s in enumerate(sets)])
        return images, labels, [len(s["images"]) for s in sets]

    (x_train, y_train, n_train), (x_val, y_val, n_val), (x_test, y_test, n_test) = map(load, (train, val, test))
    if min(n_train) == 0 or min(n_val) == 0:
        raise PipelineError("the classifier needs train and val slices of both domains")
    network = build_network(width, n_blocks)
    optimiser = torch.optim.Adam(network.parameters(), lr=lr, weight_decay=weight_decay)
    class_weights = torch.tensor([len(y_train) / (2.0 * n) for n in n_train], dtype=torch.float32)
    loss_fn = torch.nn.CrossEntropyLoss(weight=class_weights)
    best = {"balanced_accuracy": -1.0, "loss": float("inf"), "epoch": 0, "state": None}
    history = []
    for epoch in range(1, epochs + 1):
        network.train()
        order = torch.randperm(len(x_train), generator=generator)
        for start in range(0, len(order), batch_size):
            batch = order[start : start + batch_size]
            images = x_train[batch]
            flip = torch.rand(len(batch), generator=generator) < flip_probability
            images = torch.where(flip[:, None, None, None], images.flip(-1), images)
            optimiser.zero_grad()
            loss = loss_fn(network(images), y_train[batch])
            loss.backward()
            optimiser.step()
        val_logits = _logits(network, x_val, batch_size)
        val_loss = float(loss_fn(val_logits, y_val))
        _, val_balanced, _ = _scores(val_logits, y_val)
        history.append({"epoch": epoch, "train_loss": loss.item(), "val_loss": val_loss, "val_balanced_accuracy": val_balanced})
        if (val_balanced, -val_loss) > (best["balanced_accuracy"], -best["loss"]):
            state = {k: v.detach().clone() for k, v in network.state_dict().items()}
            best = {"balanced_accuracy": val_balanced, "loss": val_loss, "epoch": epoch, "state": state}
        elif epoch - best["epoch"] >= patience:
            break
    network.load_state_dict(best["state"])
    test_accuracy, test_balanced, test_per_class = _scores(_logits(network, x_test, batch_size), y_test)
    checkpoint = {
        "state_dict": best["state"],
        "width": width,
        "n_blocks": n_blocks,
        "image_size": image_size,
        "domain_names": list(domain_names),
    }
    with atomic_path(out_model) as tmp:
        torch.save(checkpoint, tmp)
    summary = {
        "domain_names": list(domain_names),
        "labels": {"0": f"domain a ({domain_names[0]})", "1": f"domain b ({domain_names[1]})"},
        "n_train": n_train,
        "n_val": n_val,
        "n_test": n_test,
        "selected_epoch": best["epoch"],
        "epochs_run": len(history),
        "val_balanced_accuracy": best["balanced_accuracy"],
        "test_accuracy": test_accuracy,
        "test_balanced_accuracy": test_balanced,
        "test_accuracy_per_class": dict(zip(domain_names, test_per_class)),
        "history": history,
        "settings": {
            "architecture": f"{n_blocks} x (conv3x3-ReLU-maxpool), width {width} doubling, global average pool, "
            "linear; random initialisation",
            "epochs": epochs, "batch_size": batch_size, "lr": lr, "weight_decay": weight_decay,
            "image_size": image_size, "flip_probability": flip_probability, "patience": patience,
            "seed": seed, "loss": "cross-entropy weighted by inverse class frequency",
            "selection": "epoch with the best validation balanced accuracy (ties: lower validation loss)",
        },
        "seconds": round(time.monotonic() - started, 2),
    }
    write_json(out_json, summary)
    return summary


def load_classifier(path: Path) -> tuple[object, dict]:
    """The trained network (eval mode, CPU) and its checkpoint metadata."""
    import torch

    path = Path(path)
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    network = build_network(checkpoint["width"], checkpoint["n_blocks"])
    network.load_state_dict(checkpoint["state_dict"])
    network.eval()
    return network, checkpoint


def probability_of_b(network, checkpoint: dict, images: np.ndarray, batch_size: int = 64) -> np.ndarray:
    """P(domain b) of each (N, H, W) slice in [0, 1]."""
    import torch

    logits = _logits(network, to_tensor(images, checkpoint["image_size"]), batch_size)
    return torch.softmax(logits, dim=1)[:, 1].double().numpy()


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    parser = argparse.ArgumentParser(prog="python -m pipeline.evaluate.classifier", description=__doc__.splitlines()[0])
    for split in ("train", "val", "test"):
        for domain in ("a", "b"):
            parser.add_argument(f"--{split}-{domain}", type=Path, required=True, help=f"{split}.npz of domain {domain}")
    parser.add_argument("--out-model", type=Path, required=True, help="classifier.pt to write")
    parser.add_argument("--out-json", type=Path, required=True, help="classifier.json (accuracies) to write")
    parser.add_argument("--domain-names", nargs=2, default=["a", "b"], metavar=("A", "B"))
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--weight-decay", type=float, default=1e-4)
    parser.add_argument("--width", type=int, default=16)
    parser.add_argument("--n-blocks", type=int, default=3)
    parser.add_argument("--image-size", type=int, default=64, help="0 keeps the slices' size")
    parser.add_argument("--flip-probability", type=float, default=0.5)
    parser.add_argument("--patience", type=int, default=5)
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    try:
        summary = train_classifier(
            {"a": args.train_a, "b": args.train_b},
            {"a": args.val_a, "b": args.val_b},
            {"a": args.test_a, "b": args.test_b},
            args.out_model,
            args.out_json,
            domain_names=tuple(args.domain_names),
            epochs=args.epochs,
            batch_size=args.batch_size,
            lr=args.lr,
            weight_decay=args.weight_decay,
            width=args.width,
            n_blocks=args.n_blocks,
            image_size=args.image_size or None,
            flip_probability=args.flip_probability,
            patience=args.patience,
            threads=args.threads,
            seed=args.seed,
        )
    except PipelineError as err:
        log.error("%s", err)
        return 1
    log.info(
        "classifier: test accuracy %.3f (balanced %.3f), epoch %d of %d, %.1f s",
        summary["test_accuracy"], summary["test_balanced_accuracy"], summary["selected_epoch"],
        summary["epochs_run"], summary["seconds"],
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
