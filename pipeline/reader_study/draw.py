"""Which images a reader study shows: held-out real ones and the experiment's generated ones.

Real images are the held-out test slices of the domain the fakes claim to be (a translation
experiment: the target domain of the study's direction; a generator: its dataset). Generated
images come from the trained model through the export the evaluator uses
(``pipeline.models.load_trained``): a translator's ``translate(direction, images)`` applied to
held-out test slices of the source domain, or a sampler's ``sample(n, labels, seed)``.

Drawing, with the study's seed:
- Both sets are drawn at random, spread over patients: patients in random order, each
  patient's slices in random order, then one slice per patient per round. A study of 12 from
  8 test patients therefore shows every patient once before any twice, and never two
  neighbouring slices of one patient while another patient is unused.
- A translation study shows one direction (``direction``: a_to_b or b_to_a, default a_to_b):
  readers judge one kind of image against its real counterpart, and a pooled score never mixes
  two tasks. Study the other direction as a second study.
- When source and target test sets share a patient id, the real images avoid the patients whose
  slices were translated, so a reader never sees an image beside its own translation.
- A conditional generator is asked for the classes of the real images drawn (the same class mix
  on both sides, so prevalence gives nothing away).

``pick`` (recorded in study.json and key.json):
- ``random``: each fake shown is one random draw: the study estimates how well readers tell the
  generator's typical output from real images.
- ``best_by_discriminator``: each fake shown is, of ``candidates_per_image`` random candidates,
  the one the trained discriminator scores most real (highest logit / critic value / LSGAN
  output). This is report 002's hand-picking of its most realistic fakes, done reproducibly;
  it answers a different, weaker question (can the best of k fool a reader) and biases the
  result towards "indistinguishable". Real images are always drawn at random.
  model.pt carries no discriminator (the export keeps only what inference needs), so the
  discriminator is read from the training ``checkpoint.pt`` beside it, after checking that the
  checkpoint holds the very generator model.pt exports.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from pipeline.errors import ConfigError, InputDataError, PipelineError
from pipeline.evaluate.measures.slices import load_test_slices

#: Translation directions a study can show, and which test set is the source / the real one.
DIRECTION_DOMAINS = {"a_to_b": ("a", "b"), "b_to_a": ("b", "a")}
#: Per model (model.pt's ``model``): the network in checkpoint.pt that judges the fakes of a
#: study (per direction for translators). A model missing here cannot use best_by_discriminator.
SCORING_NETWORK: dict[str, str | dict[str, str]] = {
    "cyclegan": {"a_to_b": "D_b", "b_to_a": "D_a"},
    "dcgan": "D",
    "cgan": "D",
}
#: Independent random streams of one study seed, one per use (so changing one draw never
#: shifts another).
STREAMS = {"real": 1, "source": 2, "sampler": 3, "order": 4, "tokens": 5, "bootstrap": 6}
#: Images a discriminator scores per forward pass.
SCORE_BATCH = 32


def stream(seed: int, name: str) -> np.random.Generator:
    return np.random.default_rng([seed, STREAMS[name]])


@dataclass
class Drawn:
    """Images of one side of the study (n, H, W) in [0, 1], with where each came from."""

    images: np.ndarray
    provenance: list[dict[str, Any]]
    labels: np.ndarray | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def spread_over_subjects(subject_ids: np.ndarray, n: int, rng: np.random.Generator, path: Path,
                         exclude: frozenset[str] = frozenset(), what: str = "images") -> np.ndarray:
    """Indices of ``n`` images drawn at random, one per patient per round (see the module doc)."""
    subject_ids = np.asarray(subject_ids).astype(str)
    subjects = sorted(set(subject_ids.tolist()) - set(exclude))
    available = int(np.isin(subject_ids, subjects).sum())
    if available < n:
        excluded = f" ({len(exclude)} patients left out as sources of translated images)" if exclude else ""
        raise InputDataError(path, f"holds {available} usable {what}{excluded}; the study needs {n}: "
                                   "lower reader_study.n_per_class (or candidates_per_image)")
    order = rng.permutation(len(subjects))
    queues = [rng.permutation(np.flatnonzero(subject_ids == subjects[i])) for i in order]
    picked: list[int] = []
    depth = 0
    while len(picked) < n:
        for queue in queues:
            if depth < len(queue) and len(picked) < n:
                picked.append(int(queue[depth]))
        depth += 1
    return np.asarray(picked, dtype=np.int64)


def _slice_provenance(path: Path, data: dict[str, np.ndarray], index: int) -> dict[str, Any]:
    return {"file": str(path), "index": int(index), "subject_id": str(data["subject_ids"][index]),
            "slice_index": int(data["slice_index"][index])}


def draw_real(path: Path, n: int, seed: int, exclude: frozenset[str] = frozenset()) -> Drawn:
    """``n`` held-out real images spread over patients."""
    path = Path(path)
    data = load_test_slices(path)
    picked = spread_over_subjects(data["subject_ids"], n, stream(seed, "real"), path, exclude, "real images")
    labels = data["labels"][picked].astype(np.int64) if "labels" in data else None
    return Drawn(data["images"][picked].astype(np.float32), [_slice_provenance(path, data, i) for i in picked], labels)


def checked(images: np.ndarray, n: int, what: str) -> np.ndarray:
    """A model's output held to the export contract: (n, H, W) float in [0, 1], finite."""
    images = np.asarray(images, dtype=np.float32)
    if images.ndim != 3 or len(images) != n:
        raise PipelineError(f"{what} returned shape {images.shape}, expected ({n}, H, W)")
    if n and (not np.all(np.isfinite(images)) or images.min() < 0.0 or images.max() > 1.0):
        raise PipelineError(f"{what} returned values outside [0, 1] or not finite")
    return images


Scorer = Callable[[np.ndarray, np.ndarray | None], np.ndarray]


def best_of(candidates: np.ndarray, k: int, scorer: Scorer | None, labels: np.ndarray | None) -> tuple[np.ndarray, np.ndarray | None]:
    """Per slot of ``k`` consecutive candidates, the index of the one ``scorer`` rates most real
    (the first candidate of each slot when there is no scorer, i.e. pick random), and all scores."""
    n = len(candidates) // k
    if scorer is None:
        return np.arange(n) * k, None
    scores = np.asarray(scorer(candidates, labels), dtype=np.float64)
    if scores.shape != (len(candidates),) or not np.all(np.isfinite(scores)):
        raise PipelineError(f"the discriminator returned scores of shape {scores.shape} (or not finite) "
                            f"for {len(candidates)} candidates")
    return np.arange(n) * k + scores.reshape(n, k).argmax(axis=1), scores


def generated_by_translation(translator: Any, source_path: Path, direction: str, n: int, k: int, seed: int,
                             scorer: Scorer | None) -> Drawn:
    """``n`` translations of held-out source images (each the best of ``k`` by ``scorer``)."""
    source_path = Path(source_path)
    data = load_test_slices(source_path)
    picked = spread_over_subjects(data["subject_ids"], n * k, stream(seed, "source"), source_path,
                                  what="source images to translate")
    translated = checked(translator.translate(direction, data["images"][picked]), len(picked),
                         f"the translator ({direction})")
    chosen, scores = best_of(translated, k, scorer, None)
    provenance = []
    for slot, candidate in enumerate(chosen):
        record = {"translated_from": _slice_provenance(source_path, data, picked[candidate]), "direction": direction}
        if scores is not None:
            record["d_score"] = float(scores[candidate])
            record["candidate_d_scores"] = [float(s) for s in scores[slot * k:(slot + 1) * k]]
        provenance.append(record)
    return Drawn(translated[chosen], provenance,
                 extra={"source_subjects": sorted(set(data["subject_ids"][picked].astype(str).tolist()))})


def generated_by_sampling(sampler: Any, n: int, k: int, seed: int, labels: np.ndarray | None,
                          scorer: Scorer | None) -> Drawn:
    """``n`` samples (each the best of ``k``), of the given classes when the generator is conditional."""
    sample_seed = int(stream(seed, "sampler").integers(2**31 - 1))
    n_classes = int(getattr(sampler, "n_classes", 0))
    candidate_labels = None
    if n_classes:
        if labels is None:
            raise ConfigError("the generator is conditional, but the real test slices carry no 'labels' to match")
        if labels.min() < 0 or labels.max() >= n_classes:
            raise ConfigError(f"the real slices hold classes {sorted(set(labels.tolist()))}; the generator knows "
                              f"{n_classes}")
        candidate_labels = np.repeat(labels.astype(np.int64), k)
    images = checked(sampler.sample(n * k, labels=candidate_labels, seed=sample_seed), n * k, "the generator")
    chosen, scores = best_of(images, k, scorer, candidate_labels)
    provenance = []
    for slot, candidate in enumerate(chosen):
        record: dict[str, Any] = {"sampler_seed": sample_seed, "sample_index": int(candidate)}
        if candidate_labels is not None:
            record["label"] = int(candidate_labels[candidate])
        if scores is not None:
            record["d_score"] = float(scores[candidate])
            record["candidate_d_scores"] = [float(s) for s in scores[slot * k:(slot + 1) * k]]
        provenance.append(record)
    return Drawn(images[chosen], provenance, None if candidate_labels is None else candidate_labels[chosen],
                 extra={"sampler_seed": sample_seed})


def model_task(model: Any, path: Path) -> str:
    """The model's ``task``; a model without one counts as a translator only if it can translate."""
    task = getattr(model, "task", None)
    if task is None:
        if callable(getattr(model, "translate", None)):
            return "translation"
        raise PipelineError(f"{path}: the model declares no task and has no translate(): "
                            "a reader study needs a translator or a sampler")
    if task == "translation" and callable(getattr(model, "translate", None)):
        return task
    if task == "generation" and callable(getattr(model, "sample", None)):
        return task
    raise PipelineError(f"{path}: task {task!r} without the matching translate() / sample(): "
                        "a reader study handles translation and generation")


def _read(path: Path, what: str) -> dict[str, Any]:
    if not path.is_file():
        raise InputDataError(path, f"{what} not found")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise InputDataError(path, f"cannot be read as {what} ({err})") from err
    if not isinstance(payload, dict) or "networks" not in payload:
        raise InputDataError(path, f"is not {what} (no 'networks')")
    return payload


def load_discriminator(model_path: Path, checkpoint_path: Path, direction: str | None) -> Scorer:
    """The trained discriminator that judges this study's fakes, as ``scorer(images, labels)`` ->
    one realism score per image (D's output averaged over its patch map; higher = more real)."""
    from pipeline.models import model_class

    model_path, checkpoint_path = Path(model_path), Path(checkpoint_path)
    export = _read(model_path, "a model.pt")
    name = export.get("model")
    if name not in SCORING_NETWORK:
        raise ConfigError(f"reader_study.pick best_by_discriminator: no discriminator is known for model {name!r} "
                          f"(known: {sorted(SCORING_NETWORK)}; pipeline/reader_study/draw.py SCORING_NETWORK)")
    network = SCORING_NETWORK[name]
    if isinstance(network, dict):
        if direction not in network:
            raise ConfigError(f"direction must be one of {sorted(network)}, got {direction!r}")
        network = network[direction]
    if not checkpoint_path.is_file():
        raise InputDataError(checkpoint_path, "not found: pick best_by_discriminator needs the trained discriminator, "
                                              "which model.pt does not carry; training writes it into checkpoint.pt "
                                              "beside model.pt (use pick: random without it)")
    state = _read(checkpoint_path, "a training checkpoint")
    for net_name, weights in export["networks"].items():
        saved = state["networks"].get(net_name)
        if saved is None or saved.keys() != weights.keys() or any(
                not torch.equal(saved[key].cpu(), value.cpu()) for key, value in weights.items()):
            raise InputDataError(checkpoint_path, f"its {net_name} differs from the one in {model_path} (a checkpoint "
                                                  "of another run or epoch): its discriminator did not judge this generator")
    if network not in state["networks"]:
        raise InputDataError(checkpoint_path, f"holds no network {network!r}")
    config = dict(export["config"])
    if "pretrained" in config:
        config["pretrained"] = "none"  # the weights come from the checkpoint; no ImageNet file is needed
    with torch.random.fork_rng(devices=[]):
        model = model_class(name)(config, None, 0, image_size=tuple(int(v) for v in export["image_size"]))
    discriminator = model.networks()[network]
    try:
        discriminator.load_state_dict({k: v.cpu() for k, v in state["networks"][network].items()})
    except RuntimeError as err:
        raise InputDataError(checkpoint_path, f"its {network} does not fit the model in {model_path} ({err})") from err
    discriminator.eval()
    conditional = int(getattr(discriminator, "n_classes", 0) or 0) > 0

    @torch.no_grad()
    def score(images: np.ndarray, labels: np.ndarray | None) -> np.ndarray:
        if conditional and labels is None:
            raise PipelineError(f"{network} is conditional: scoring needs the class of every image")
        out = []
        for start in range(0, len(images), SCORE_BATCH):
            x = torch.from_numpy(np.ascontiguousarray(images[start:start + SCORE_BATCH])).unsqueeze(1) * 2 - 1
            if conditional:
                y = torch.from_numpy(np.asarray(labels[start:start + SCORE_BATCH], dtype=np.int64))
                logits = discriminator(x, y)
            else:
                logits = discriminator(x)
            out.append(logits.float().reshape(len(x), -1).mean(dim=1).numpy())
        return np.concatenate(out) if out else np.zeros(0)

    return score
