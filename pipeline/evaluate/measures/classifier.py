"""Domain classifier: trained on real slices of domain a vs domain b, then asked about translations.

Report 002 scores generated images with a classifier trained on real data: if translations of
a into b are taken for b by a network that tells real a from real b, they carry b's features.
The classifier is a small CNN trained from random initialisation (no download), selected on the
validation slices, with its held-out test accuracy reported beside the share, so a reader can
tell a weak classifier from a weak translator. Its own Snakemake rule keeps it out of the
evaluation's reruns: changing an evaluation knob does not retrain it.

The same network serves labelled data (report 002: healthy vs any haemorrhage, label 0 / 1 from
the slices' ``labels`` array), and the generation evaluator retrains it on synthetic slices
(train-on-synthetic / test-on-real) with the settings stored in its checkpoint.

CLI: python -m pipeline.evaluate.measures.classifier --train-a A --train-b B --val-a ... --out-model classifier.pt
     python -m pipeline.evaluate.measures.classifier --train T --val V --test H --class-names healthy haemorrhage ...
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
import time
from pathlib import Path

import numpy as np

from pipeline.atomic import atomic_path, write_json
from pipeline.errors import InputDataError, PipelineError
from pipeline.evaluate.measures.slices import load_labelled_slices, load_test_slices
from pipeline.evaluate.measures.summary import summarise

log = logging.getLogger("pipeline.evaluate.measures.classifier")


POOLINGS = ("average", "max")
ACTIVATIONS = ("relu", "leaky_relu")
CALL_CUT_OFF = 0.5
"""P(class) above which an image is called that class: the cut-off of every share of generated or
translated images called a class, and of the recalls the real-test check asks for."""
MIN_RECALL_AT_CUT_OFF = 0.5
"""Each class's real-test recall at CALL_CUT_OFF must beat a coin (real_test_check)."""


def build_network(width: int = 16, n_blocks: int = 3, pooling: str = "average", activation: str = "relu"):
    """n_blocks of conv-activation-maxpool (width doubling), global pooling, 2 logits (any input size).

    ``pooling`` over space: ``average`` (the whole image's evidence) or ``max`` (the strongest
    local response: a lesion a few pixels wide, as a haemorrhage at 64 px, is not averaged away
    by the rest of the head). ``activation``: ``relu``, or ``leaky_relu`` (slope 0.2 below 0):
    on a weak, local signal (a bleed among heads) a ReLU network can sit at ln 2 for every epoch,
    a lottery of the seed (on the proof profile's haemorrhage slices with shifts: ReLU seed 0
    never left ln 2; with leaky ReLU seeds 0-2 all learned; docs/experiment-dcgan-ct.md). No
    batch normalisation: with a few dozen training slices its running statistics never settle,
    and the network would score differently in eval mode than it trained (group normalisation,
    tried on the haemorrhage slices, learned less: validation AUC 0.52-0.58).
    """
    import torch.nn as nn

    if pooling not in POOLINGS:
        raise ValueError(f"classifier pooling must be one of {POOLINGS}, got {pooling!r}")
    if activation not in ACTIVATIONS:
        raise ValueError(f"classifier activation must be one of {ACTIVATIONS}, got {activation!r}")
    layers: list[nn.Module] = []
    channels_in = 1
    for block in range(n_blocks):
        channels_out = width * 2**block
        layers += [
            nn.Conv2d(channels_in, channels_out, 3, padding=1),
            nn.ReLU(inplace=True) if activation == "relu" else nn.LeakyReLU(0.2, inplace=True),
            nn.MaxPool2d(2),
        ]
        channels_in = channels_out
    pool = nn.AdaptiveAvgPool2d(1) if pooling == "average" else nn.AdaptiveMaxPool2d(1)
    layers += [pool, nn.Flatten(), nn.Linear(channels_in, 2)]
    return nn.Sequential(*layers)


def random_shift(images, max_shift: int, generator):
    """Each image of an (N, C, H, W) batch moved by its own whole-pixel offset, uniform in
    [-max_shift, max_shift] along each axis, the uncovered border filled with 0 (the slices'
    background). Offsets are drawn on the CPU ``generator`` (the same draws on any device).
    A head's place in the field of view says nothing about its class; without this the
    haemorrhage classifier's training loss fell while its validation AUC did not rise (probably
    learning where each training patient's head lay). ``max_shift`` is in pixels of the images
    as given (the classifier's ``image_size``)."""
    import torch

    if max_shift <= 0:
        return images
    n, _, height, width = images.shape
    offsets = torch.randint(-max_shift, max_shift + 1, (n, 2), generator=generator).to(images.device)
    padded = torch.nn.functional.pad(images, (max_shift,) * 4)
    rows = torch.arange(height, device=images.device)[None] + max_shift - offsets[:, :1]  # (N, H)
    cols = torch.arange(width, device=images.device)[None] + max_shift - offsets[:, 1:]  # (N, W)
    batch = torch.arange(n, device=images.device)[:, None, None]
    return padded.permute(0, 2, 3, 1)[batch, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)


def to_tensor(images: np.ndarray, image_size: int | None):
    """(N, H, W) in [0, 1] -> (N, 1, S, S) float tensor, area-resized when ``image_size`` differs."""
    import torch

    tensor = torch.from_numpy(np.asarray(images, np.float32))[:, None]
    if image_size is not None and tuple(tensor.shape[-2:]) != (image_size, image_size):
        tensor = torch.nn.functional.interpolate(tensor, size=(image_size, image_size), mode="area")
    return tensor


def predict_logits(network, tensor, batch_size: int):
    """Logits of an (N, 1, S, S) tensor in eval mode, ``batch_size`` images at a time, without
    gradients, on the network's device (the batches are sent there)."""
    import torch

    from pipeline.devices import module_device

    device = module_device(network)
    network.eval()
    with torch.inference_mode():
        return torch.cat([network(tensor[i : i + batch_size].to(device)) for i in range(0, len(tensor), batch_size)])


def _scores(logits, labels) -> tuple[float, float, list[float]]:
    """Accuracy, balanced accuracy (mean of per-class recall) and per-class accuracy."""
    predicted, labels = logits.argmax(dim=1), labels.to(logits.device)
    # recall of class c as counts (no boolean indexing: no data-dependent shapes on the device)
    per_class = [float(((predicted == c) & (labels == c)).sum().float() / (labels == c).sum().float()) for c in (0, 1)]
    return float((predicted == labels).float().mean()), float(np.mean(per_class)), per_class


def _auc(logits, labels) -> float:
    """ROC AUC of P(class 1) (0.5 when a class is absent: nothing to rank)."""
    from sklearn.metrics import roc_auc_score

    labels = np.asarray(labels.cpu() if hasattr(labels, "cpu") else labels)
    if len(np.unique(labels)) < 2:
        return 0.5
    return float(roc_auc_score(labels, (logits[:, 1] - logits[:, 0]).double().cpu().numpy()))


DEFAULT_SETTINGS = {
    "epochs": 60, "min_epochs": 20, "batch_size": 32, "lr": 3e-3, "weight_decay": 1e-4, "width": 16, "n_blocks": 3,
    "image_size": 64, "flip_probability": 0.5, "patience": 15, "min_auc": 0.7, "min_confidence": 0.6,
    "pooling": "average", "activation": "relu", "shift_pixels": 0, "restarts": 0,
}
"""The CLI's defaults; the experiments set their own in params.yaml (``classifier:``). ``min_auc`` and
``min_confidence`` are not training knobs: they travel in the checkpoint and decide whether the
classifier's scores are reported (``real_test_check``)."""


STALLED_LOSS = 0.95 * math.log(2)
"""A training whose training loss (class-weighted cross-entropy, each epoch's mean) never fell
below this did not leave the constant answer's ln 2 = 0.693 even on its own training data: it
stalled (restarted when ``restarts`` allows). The training loss, not the validation loss: a
classifier trained on generated slices can fit them and still score poorly on real validation
slices (train-on-synthetic), which is a finding, not a stall. The haemorrhage judges that learned
reached 0.10-0.18; the stalled ones stayed at 0.691-0.696 after a first epoch at ~0.70, for 60-74
epochs."""


def fit_classifier(x_train, y_train, x_val, y_val, settings: dict, seed: int = 0, device: str = "cpu"):
    """``fit_once`` from ``seed``, then, while the training stalled (its training loss never below
    STALLED_LOSS) and ``settings["restarts"]`` allows, again from seed + 1, seed + 2, ...; an
    attempt that learned is kept over any that stalled, then the lowest validation loss decides
    (selection on validation only, never on test). A classifier that learned the generated slices
    and transfers poorly to real validation slices can have a higher validation loss than a stalled
    one's ln 2: it is still the one kept, its poor transfer being what train-on-synthetic measures.

    Why: from random initialisation this network can sit at ln 2 for every epoch, a lottery of the
    seed and the data (docs/experiment-dcgan-ct.md "The judge's start is a lottery": the proof
    recipe learned at 300 patients and stalled for 74 epochs at 600; at batch 8 the other way
    round). ``restarts: 0`` (the default) is one attempt, as before. Returns fit_once's triple, the
    summary with ``seed`` (the kept attempt's) and ``attempts`` (seed, lowest training and
    validation losses, epochs run, stalled) added.
    """
    attempts, kept = [], None
    for attempt in range(int(settings.get("restarts", 0)) + 1):
        network, best, history = fit_once(x_train, y_train, x_val, y_val, settings, seed + attempt, device)
        train_loss = min(row["train_loss"] for row in history)
        stalled = train_loss > STALLED_LOSS
        attempts.append({"seed": seed + attempt, "train_loss": train_loss, "val_loss": best["loss"],
                         "selected_epoch": best["epoch"], "epochs_run": len(history), "stalled": stalled})
        if kept is None or (stalled, best["loss"]) < (kept[3], kept[1]["loss"]):
            kept = (network, best | {"seed": seed + attempt}, history, stalled)
        if not stalled:
            break
    network, best, history, _ = kept
    return network, best | {"attempts": attempts}, history


def fit_once(x_train, y_train, x_val, y_val, settings: dict, seed: int = 0, device: str = "cpu"):
    """Train a fresh network on (x_train, y_train) and keep the epoch with the best validation score.

    x_*: (N, 1, S, S) tensors in [0, 1]; y_*: (N,) long labels 0 / 1. ``settings`` holds the keys
    of DEFAULT_SETTINGS. The loss weighs the classes by inverse frequency, so an unbalanced pair
    (NORMAL vs PNEUMONIA, healthy vs haemorrhage) cannot be won by always answering the larger
    class. Selection: the epoch with the lowest validation loss (weighted cross-entropy, a proper
    scoring rule: it rewards probabilities that are right and confident). Not AUC or accuracy:
    the first epochs of a network from random initialisation output ~0.5 for everything, yet
    rank the validation slices perfectly by differences in the fourth decimal (AUC 1.0 at epoch 2,
    balanced accuracy 0.5, measured) or hit a lucky balanced accuracy, and nothing later beats
    that score, so training stopped there (it did: loss still ln 2, every real slice called one
    class, every translation P = 0.50x). Training stops after ``patience`` epochs without a lower
    validation loss, never before ``min_epochs``.
    Shared by the real-data classifier and the train-on-synthetic ones, so that they differ only
    in their data. Returns (network with the best weights, {auc, balanced_accuracy, loss, epoch,
    state}, history).
    The network and the data live on ``device``; the shuffles and flips are drawn on the CPU
    (the same draws on any device) and copied over.
    """
    import torch

    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    counts = [int((y_train == c).sum()) for c in (0, 1)]
    network = build_network(settings["width"], settings["n_blocks"], settings["pooling"],
                            settings["activation"]).to(device)
    x_train, y_train, x_val, y_val = (t.to(device) for t in (x_train, y_train, x_val, y_val))
    optimiser = torch.optim.Adam(network.parameters(), lr=settings["lr"], weight_decay=settings["weight_decay"])
    class_weights = torch.tensor([len(y_train) / (2.0 * n) for n in counts], dtype=torch.float32, device=device)
    loss_fn = torch.nn.CrossEntropyLoss(weight=class_weights)
    batch_size = settings["batch_size"]
    best = {"auc": -1.0, "balanced_accuracy": -1.0, "loss": float("inf"), "epoch": 0, "state": None}
    history = []
    for epoch in range(1, settings["epochs"] + 1):
        network.train()
        order = torch.randperm(len(x_train), generator=generator)
        losses = []
        for start in range(0, len(order), batch_size):
            batch = order[start : start + batch_size].to(device)
            images = x_train[batch]
            flip = (torch.rand(len(batch), generator=generator) < settings["flip_probability"]).to(device)
            images = torch.where(flip[:, None, None, None], images.flip(-1), images)
            images = random_shift(images, settings["shift_pixels"], generator)
            optimiser.zero_grad()
            loss = loss_fn(network(images), y_train[batch])
            loss.backward()
            optimiser.step()
            losses.append(loss.detach())  # no per-batch sync with the device
        val_logits = predict_logits(network, x_val, batch_size)
        val_loss = float(loss_fn(val_logits, y_val))
        _, val_balanced, _ = _scores(val_logits, y_val)
        val_auc = _auc(val_logits, y_val)
        history.append({"epoch": epoch, "train_loss": float(torch.stack(losses).mean()), "val_loss": val_loss,
                        "val_auc": val_auc, "val_balanced_accuracy": val_balanced})
        if val_loss < best["loss"]:
            state = {k: v.detach().clone() for k, v in network.state_dict().items()}
            best = {"auc": val_auc, "balanced_accuracy": val_balanced, "loss": val_loss, "epoch": epoch,
                    "state": state}
        elif epoch - best["epoch"] >= settings["patience"] and epoch >= settings.get("min_epochs", 0):
            break
    network.load_state_dict(best["state"])
    return network, best, history


def _settings_text(settings: dict, seed: int) -> dict:
    return {
        "architecture": f"{settings['n_blocks']} x (conv3x3-{settings['activation']}-maxpool), "
        f"width {settings['width']} doubling, global {settings['pooling']} pool, linear; "
        "random initialisation",
        **settings,
        "seed": seed, "loss": "cross-entropy weighted by inverse class frequency",
        "selection": "epoch with the lowest validation loss; stop after `patience` epochs without a lower one, "
        "never before `min_epochs`; a training whose training loss never fell below "
        f"{STALLED_LOSS:.3f} (0.95 ln 2) stalled and is restarted from the next seed, at most `restarts` "
        "times, keeping an attempt that learned over one that stalled, then the lowest validation loss",
        "scores_reported_when": f"real-test AUC >= {settings['min_auc']} with its interval above 0.5, the "
        f"balanced mean probability of the true class >= {settings['min_confidence']}, and each class's recall "
        f"at P > {CALL_CUT_OFF:g} above {MIN_RECALL_AT_CUT_OFF:g} (real_test_check)",
    }


def _finish(network, best, history, x_test, y_test, class_names, labels_text, counts, settings, seed,
            out_model: Path, out_json: Path, started: float, extra_checkpoint: dict) -> dict:
    """Score the selected network on test, write classifier.pt and classifier.json atomically."""
    import torch

    test_logits = predict_logits(network, x_test, settings["batch_size"])
    test_accuracy, test_balanced, test_per_class = _scores(test_logits, y_test)
    checkpoint = {
        "state_dict": {k: v.cpu() for k, v in best["state"].items()},
        "width": settings["width"],
        "n_blocks": settings["n_blocks"],
        "pooling": settings["pooling"],
        "activation": settings["activation"],
        "image_size": settings["image_size"],
        "class_names": list(class_names),
        "settings": dict(settings),
        **extra_checkpoint,
    }
    with atomic_path(out_model) as tmp:
        torch.save(checkpoint, tmp)
    summary = {
        **({"domain_names": list(class_names)} if "domain_names" in extra_checkpoint else {}),
        "class_names": list(class_names),
        "labels": labels_text,
        "n_train": counts["train"],
        "n_val": counts["val"],
        "n_test": counts["test"],
        "selected_epoch": best["epoch"],
        "epochs_run": len(history),
        "kept_seed": best["seed"],
        "attempts": best["attempts"],
        "val_auc": best["auc"],
        "val_balanced_accuracy": best["balanced_accuracy"],
        "test_auc": _auc(test_logits, y_test),
        "test_accuracy": test_accuracy,
        "test_balanced_accuracy": test_balanced,
        "test_accuracy_per_class": dict(zip(class_names, test_per_class)),
        "history": history,
        "settings": _settings_text(settings, seed),
        "seconds": round(time.monotonic() - started, 2),
    }
    write_json(out_json, summary)
    return summary


def _prepare(threads: int, device: str) -> float:
    import torch

    from pipeline.devices import deterministic

    started = time.monotonic()
    if threads > 0:
        torch.set_num_threads(threads)
    deterministic(device)
    return started


def _settings(knobs: dict) -> dict:
    unknown = set(knobs) - set(DEFAULT_SETTINGS)
    if unknown:
        raise ValueError(f"unknown classifier settings {sorted(unknown)}")
    settings = DEFAULT_SETTINGS | knobs
    restarts = settings["restarts"]
    if not isinstance(restarts, int) or isinstance(restarts, bool) or restarts < 0:
        raise ValueError(f"classifier restarts must be a whole number >= 0, got {restarts!r}")
    shift, side = settings["shift_pixels"], settings["image_size"]
    if not isinstance(shift, int) or shift < 0 or (side and 2 * shift >= side):
        raise ValueError(f"classifier shift_pixels must be a whole number of pixels from 0 to below half the "
                         f"image side ({side}), got {shift!r}")
    return settings


def train_classifier(
    train: dict[str, Path],
    val: dict[str, Path],
    test: dict[str, Path],
    out_model: Path,
    out_json: Path,
    domain_names: tuple[str, str] = ("a", "b"),
    threads: int = 0,
    seed: int = 0,
    device: str = "cpu",
    **knobs,
) -> dict:
    """Train on real train slices (label 0 = domain a, 1 = b), keep the epoch best on val, score on test.

    train / val / test: {"a": npz, "b": npz} slice files (contracts: ``images`` in [0, 1], ``subject_ids``).
    knobs: the keys of DEFAULT_SETTINGS (their defaults there): epochs, min_epochs, patience,
    batch_size, lr (Adam), weight_decay: training (``fit_classifier``); width, n_blocks, pooling:
    network size and global pooling; image_size: side the slices are area-resized to (None keeps theirs); flip_probability:
    random left-right flips; min_auc, min_confidence: when its scores count (``real_test_check``).
    threads: torch CPU threads (0 = torch's default). seed: initialisation, shuffling, flips.
    Deterministic on CPU for a given seed and thread count. Returns the summary written to ``out_json``.
    """
    import torch

    started = _prepare(threads, device)
    settings = _settings(knobs)
    image_size = settings["image_size"]

    def load(split: dict[str, Path]):
        sets = [load_test_slices(split[d]) for d in ("a", "b")]
        images = to_tensor(np.concatenate([s["images"] for s in sets]), image_size)
        labels = torch.cat([torch.full((len(s["images"]),), c, dtype=torch.long) for c, s in enumerate(sets)])
        return images, labels, [len(s["images"]) for s in sets]

    (x_train, y_train, n_train), (x_val, y_val, n_val), (x_test, y_test, n_test) = map(load, (train, val, test))
    if min(n_train) == 0 or min(n_val) == 0:
        raise PipelineError("the classifier needs train and val slices of both domains")
    network, best, history = fit_classifier(x_train, y_train, x_val, y_val, settings, seed, device)
    labels_text = {"0": f"domain a ({domain_names[0]})", "1": f"domain b ({domain_names[1]})"}
    return _finish(network, best, history, x_test, y_test, domain_names, labels_text,
                   {"train": n_train, "val": n_val, "test": n_test}, settings, seed, out_model, out_json, started,
                   {"domain_names": list(domain_names)})


def train_label_classifier(
    train: Path,
    val: Path,
    test: Path,
    out_model: Path,
    out_json: Path,
    class_names: tuple[str, str] = ("healthy", "haemorrhage"),
    label_key: str = "labels",
    threads: int = 0,
    seed: int = 0,
    device: str = "cpu",
    **knobs,
) -> dict:
    """The same classifier on one labelled dataset: label 0 vs 1 of each slice (e.g. healthy vs any haemorrhage).

    train / val / test: slices npz files carrying ``label_key``; knobs: the keys of DEFAULT_SETTINGS.
    The checkpoint keeps every training setting, so the generation evaluator can train the same
    classifier on synthetic slices (train-on-synthetic / test-on-real).
    """
    import torch

    started = _prepare(threads, device)
    settings = _settings(knobs)
    tensors, counts = {}, {}
    for split, path in (("train", train), ("val", val), ("test", test)):
        data = load_labelled_slices(path, label_key)
        labels = torch.from_numpy(data[label_key])
        tensors[split] = (to_tensor(data["images"], settings["image_size"]), labels)
        counts[split] = [int((labels == c).sum()) for c in (0, 1)]
        if split != "test" and min(counts[split]) == 0:
            raise InputDataError(path, f"the classifier needs {split} slices of both classes, got {counts[split]}")
    network, best, history = fit_classifier(*tensors["train"], *tensors["val"], settings, seed, device)
    labels_text = {"0": class_names[0], "1": class_names[1]}
    return _finish(network, best, history, *tensors["test"], class_names, labels_text, counts, settings, seed,
                   out_model, out_json, started, {"label_key": label_key})


def load_classifier(path: Path, device: str = "cpu") -> tuple[object, dict]:
    """The trained network (eval mode, on ``device``) and its checkpoint metadata."""
    import torch

    path = Path(path)
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    network = build_network(checkpoint["width"], checkpoint["n_blocks"], checkpoint.get("pooling", "average"),
                            checkpoint.get("activation", "relu"))
    network.load_state_dict(checkpoint["state_dict"])
    network.to(device).eval()
    return network, checkpoint


def probability_of_b(network, checkpoint: dict, images: np.ndarray, batch_size: int = 64) -> np.ndarray:
    """P(domain b) of each (N, H, W) slice in [0, 1]."""
    import torch

    logits = predict_logits(network, to_tensor(images, checkpoint["image_size"]), batch_size)
    return torch.softmax(logits, dim=1)[:, 1].double().cpu().numpy()


def auc_with_interval(p_positive: np.ndarray, labels: np.ndarray, subject_ids: np.ndarray, policy) -> dict:
    """ROC AUC of ``p_positive`` for labels 1 vs 0, with the subject-bootstrap 95% interval.

    AUC = P(a class-1 image scores above a class-0 image), ties counting one half. The interval
    resamples subjects (a subject may hold images of both classes, as a patient's slices with and
    without haemorrhage): each replicate weighs every image by how often its subject was drawn,
    so the replicate AUC is sum_ij w_i w_j [s_i > s_j] / (sum w_pos x sum w_neg), computed from
    the per-subject pair counts (subjects, not images, size the work); the percentile interval is
    widened to the estimate in the rare case it misses it. At AUC 1 (or 0), where every replicate
    is too and the percentile interval would be [1, 1], Wilson's interval with n = the subjects
    (intervals.bounded_bootstrap_ci: 8 subjects give [0.59, 1]). Null with the reason when a
    class is absent; no interval when the subjects are fewer than the policy's minimum.
    """
    from pipeline.evaluate.measures import intervals

    scores, labels = np.asarray(p_positive, np.float64), np.asarray(labels).astype(int)
    subjects, image_subject = np.unique(np.asarray(subject_ids).astype(str), return_inverse=True)
    block = {"value": None, "n_positive": int((labels == 1).sum()), "n_negative": int((labels == 0).sum()),
             "n_subjects": int(len(subjects)), "ci95": None, "ci95_reason": None, "ci_method": "subject_bootstrap"}
    if block["n_positive"] == 0 or block["n_negative"] == 0:
        reason = "the real test slices hold one class only: no AUC"
        return block | {"ci95_reason": reason, "reason": reason}
    positive, negative = labels == 1, labels == 0
    wins = (scores[positive][:, None] > scores[negative][None, :]) + 0.5 * (
        scores[positive][:, None] == scores[negative][None, :])
    pair_counts = np.zeros((len(subjects), len(subjects)))
    np.add.at(pair_counts, (image_subject[positive][:, None], image_subject[negative][None, :]), wins)
    n_pos = np.bincount(image_subject[positive], minlength=len(subjects)).astype(np.float64)
    n_neg = np.bincount(image_subject[negative], minlength=len(subjects)).astype(np.float64)
    block["value"] = float(pair_counts.sum() / (n_pos.sum() * n_neg.sum()))
    block["reason"] = None
    reason = intervals.too_few_subjects(policy, subject_ids)
    if reason:
        return block | {"ci95_reason": reason}
    counts, _ = intervals.subject_draws(subject_ids, policy.n_boot, np.random.default_rng(policy.seed))
    with np.errstate(divide="ignore", invalid="ignore"):
        replicates = np.einsum("bi,ij,bj->b", counts, pair_counts, counts) / ((counts @ n_pos) * (counts @ n_neg))
    return block | intervals.bounded_bootstrap_ci(replicates, block["value"], len(subjects))


def real_test_check(p_positive: np.ndarray, labels: np.ndarray, subject_ids: np.ndarray, policy,
                    min_auc: float, min_confidence: float, class_names: tuple[str, str] = ("0", "1")) -> dict:
    """How well the classifier does on real test slices, and whether its scores on other images count.

    Reported beside every classifier-based number: AUC with its interval over subjects, balanced
    accuracy (threshold 0.5), each class's recall at 0.5 with its Wilson interval over subjects
    (``recall_at_half``, keyed by ``class_names``) and the balanced mean probability it gives the
    true class. Its scores are null (``usable`` false, ``reason`` says why) when it is no better
    than chance (AUC below ``min_auc``, or an AUC interval reaching 0.5), when its outputs hover
    at 0.5 (mean probability of the true class below ``min_confidence``): a network that ranks
    real slices by differences in the fourth decimal would call every translation one class with
    P = 0.50x and a share of 1.0 would mean nothing; or when a class's recall at 0.5 is not above
    0.5: the shares of images "called" a class are counts at that cut-off, and a classifier that
    ranks well (AUC 0.9) yet calls most real slices of one class the other would report a share
    of 1.0 for whatever it leans to.
    """
    labels = np.asarray(labels).astype(int)
    p_positive = np.asarray(p_positive, np.float64)
    subject_ids = np.asarray(subject_ids)
    auc = auc_with_interval(p_positive, labels, subject_ids, policy)
    recalls, confidences, recall_blocks = [], [], {}
    for c in (0, 1):
        recall_blocks[class_names[c]] = None
        if (labels == c).any():
            p_true = p_positive[labels == c] if c == 1 else 1.0 - p_positive[labels == c]
            called_right = (p_true > CALL_CUT_OFF).astype(np.float64)
            recall_blocks[class_names[c]] = summarise(called_right, subject_ids[labels == c], policy, share=True)
            recalls.append(float(called_right.mean()))
            confidences.append(float(np.mean(p_true)))
    balanced = float(np.mean(recalls)) if len(recalls) == 2 else None
    confidence = float(np.mean(confidences)) if len(confidences) == 2 else None
    weak_class = next((name for name, block in recall_blocks.items()
                       if block is not None and block["mean"] <= MIN_RECALL_AT_CUT_OFF), None)
    reason = None
    if auc["value"] is None:
        reason = f"classifier's real-test AUC not measured ({auc['reason']})"
    elif auc["value"] < min_auc:
        reason = f"classifier's real-test AUC {auc['value']:.3f} is below classifier.min_auc = {min_auc:g}"
    elif auc["ci95"] is not None and auc["ci95"][0] <= 0.5:
        reason = (f"classifier's real-test AUC {auc['value']:.3f} has a 95% interval [{auc['ci95'][0]:.3f}, "
                  f"{auc['ci95'][1]:.3f}] reaching chance (0.5)")
    elif confidence < min_confidence:
        reason = (f"classifier's mean probability of the true class on real test slices is {confidence:.3f}, below "
                  f"classifier.min_confidence = {min_confidence:g}: its outputs hover at 0.5")
    elif weak_class is not None:
        reason = (f"classifier calls {recall_blocks[weak_class]['mean']:.3f} of the real test slices of class "
                  f"{weak_class} as {weak_class} at P > {CALL_CUT_OFF:g}, not above {MIN_RECALL_AT_CUT_OFF:g}: shares "
                  "called at that cut-off would say where it leans, not what the images are")
    return {"auc": auc, "balanced_accuracy": balanced, "recall_at_half": recall_blocks,
            "mean_probability_true_class": confidence, "min_auc": min_auc, "min_confidence": min_confidence,
            "usable": reason is None, "reason": reason}


def acceptance(checkpoint: dict) -> tuple[float, float]:
    """(min_auc, min_confidence) stored in a checkpoint (defaults for checkpoints that predate them)."""
    settings = checkpoint.get("settings", {})
    return (float(settings.get("min_auc", DEFAULT_SETTINGS["min_auc"])),
            float(settings.get("min_confidence", DEFAULT_SETTINGS["min_confidence"])))


def beside(check: dict) -> dict:
    """What goes beside every score of this classifier: its real-test AUC and balanced accuracy."""
    return {"classifier_auc": check["auc"], "classifier_balanced_accuracy": check["balanced_accuracy"]}


def null_summary(n: int, n_subjects: int, reason: str) -> dict:
    """A per-image summary block left null with the reason (the path stays for claims to read)."""
    return {"mean": None, "std": None, "n": int(n), "n_infinite": 0, "n_subjects": int(n_subjects), "ci95": None,
            "ci95_reason": reason, "ci_method": "subject_bootstrap"}


def main(argv: list[str] | None = None) -> int:
    from pipeline.devices import resolve_device

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    parser = argparse.ArgumentParser(prog="python -m pipeline.evaluate.measures.classifier", description=__doc__.splitlines()[0])
    for split in ("train", "val", "test"):
        parser.add_argument(f"--{split}", type=Path, help=f"{split}.npz with a label per slice (labelled mode)")
        for domain in ("a", "b"):
            parser.add_argument(f"--{split}-{domain}", type=Path, help=f"{split}.npz of domain {domain} (domain mode)")
    parser.add_argument("--out-model", type=Path, required=True, help="classifier.pt to write")
    parser.add_argument("--out-json", type=Path, required=True, help="classifier.json (accuracies) to write")
    parser.add_argument("--domain-names", "--class-names", dest="names", nargs=2, metavar=("NAME0", "NAME1"),
                        help="names of label 0 and 1 (default: a b in domain mode, healthy haemorrhage labelled)")
    parser.add_argument("--label-key", default="labels", help="labelled mode: the npz array of 0 / 1 labels")
    parser.add_argument("--epochs", type=int, default=DEFAULT_SETTINGS["epochs"])
    parser.add_argument("--batch-size", type=int, default=DEFAULT_SETTINGS["batch_size"])
    parser.add_argument("--lr", type=float, default=DEFAULT_SETTINGS["lr"])
    parser.add_argument("--weight-decay", type=float, default=DEFAULT_SETTINGS["weight_decay"])
    parser.add_argument("--width", type=int, default=DEFAULT_SETTINGS["width"])
    parser.add_argument("--n-blocks", type=int, default=DEFAULT_SETTINGS["n_blocks"])
    parser.add_argument("--pooling", choices=POOLINGS, default=DEFAULT_SETTINGS["pooling"],
                        help="global pooling over space: average, or max (small lesions)")
    parser.add_argument("--activation", choices=ACTIVATIONS, default=DEFAULT_SETTINGS["activation"],
                        help="relu, or leaky_relu (slope 0.2: a gradient through every unit)")
    parser.add_argument("--shift-pixels", type=int, default=DEFAULT_SETTINGS["shift_pixels"],
                        help="training augmentation: each image moved by up to this many pixels each way")
    parser.add_argument("--image-size", type=int, default=DEFAULT_SETTINGS["image_size"], help="0 keeps the slices' size")
    parser.add_argument("--flip-probability", type=float, default=DEFAULT_SETTINGS["flip_probability"])
    parser.add_argument("--patience", type=int, default=DEFAULT_SETTINGS["patience"])
    parser.add_argument("--min-epochs", type=int, default=DEFAULT_SETTINGS["min_epochs"])
    parser.add_argument("--restarts", type=int, default=DEFAULT_SETTINGS["restarts"],
                        help="retry a stalled training (training loss never below 0.95 ln 2) from the next "
                        "seed, at most this often")
    parser.add_argument("--min-auc", type=float, default=DEFAULT_SETTINGS["min_auc"],
                        help="real-test AUC below this: the classifier's scores are null (stored in the checkpoint)")
    parser.add_argument("--min-confidence", type=float, default=DEFAULT_SETTINGS["min_confidence"],
                        help="balanced mean P(true class) on real test below this: scores null (stored)")
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto", help="auto (CUDA when present), cpu or cuda")
    args = parser.parse_args(argv)
    device = resolve_device(args.device)
    splits = ("train", "val", "test")
    labelled = [getattr(args, s) for s in splits]
    domains = [getattr(args, f"{s}_{d}") for s in splits for d in ("a", "b")]
    complete = lambda paths: all(p is not None for p in paths)
    absent = lambda paths: all(p is None for p in paths)
    if not ((complete(labelled) and absent(domains)) or (complete(domains) and absent(labelled))):
        parser.error("give either --train --val --test (labelled slices) or all six --{train,val,test}-{a,b}")
    knobs = {"epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr, "weight_decay": args.weight_decay,
             "width": args.width, "n_blocks": args.n_blocks, "pooling": args.pooling,
             "activation": args.activation, "shift_pixels": args.shift_pixels,
             "image_size": args.image_size or None,
             "flip_probability": args.flip_probability, "patience": args.patience, "min_epochs": args.min_epochs,
             "restarts": args.restarts,
             "min_auc": args.min_auc, "min_confidence": args.min_confidence}
    try:
        if complete(labelled):
            summary = train_label_classifier(
                args.train, args.val, args.test, args.out_model, args.out_json,
                class_names=tuple(args.names or ("healthy", "haemorrhage")), label_key=args.label_key,
                threads=args.threads, seed=args.seed, device=device, **knobs,
            )
        else:
            summary = train_classifier(
                {"a": args.train_a, "b": args.train_b},
                {"a": args.val_a, "b": args.val_b},
                {"a": args.test_a, "b": args.test_b},
                args.out_model,
                args.out_json,
                domain_names=tuple(args.names or ("a", "b")),
                threads=args.threads,
                seed=args.seed,
                device=device,
                **knobs,
            )
    except PipelineError as err:
        log.error("%s", err)
        return 1
    log.info(
        "classifier: test AUC %.3f, accuracy %.3f (balanced %.3f), epoch %d of %d, %.1f s",
        summary["test_auc"], summary["test_accuracy"], summary["test_balanced_accuracy"], summary["selected_epoch"],
        summary["epochs_run"], summary["seconds"],
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
