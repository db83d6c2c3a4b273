"""Which images a reader study shows, drawn from a secret: truths, real and generated images.

The design (docs/reader-study.md gives the statistics behind it):
- **A secret** (``new_secret``: 256 bits of operating-system randomness, ``secrets``) drives every
  random choice of the study through independent streams (``STREAMS``): the truths, the real draw,
  the source draw, the sampler's seed, the class donors and the image ids. Nothing public (not
  params.yaml's ``seed``) enters, so a reader who has the page and the workflow cannot recompute
  the key; the secret is written to key.json only, and the same secret and inputs rebuild the same
  study byte for byte (``make --from-key``).
- **One fair coin per image** (``draw_truths``): each of the ``n_images`` positions is real or
  generated with probability 1/2, independently. The count of each is not fixed and not stated
  (only key.json holds it), so no answer says anything about another, and under "no reader can
  tell" every reader's number of correct answers is exactly Binomial(n_images, 1/2).
- **No patient twice** (``one_per_patient``): every image shown, real or translated, is of a
  different patient, and no patient is on both sides. Two slices of one head (the slices stage
  keeps slabs of neighbouring slices) look alike: a reader who pairs them learns that both share
  one truth, and where one side repeats patients and the other does not, which truth. Any coin
  outcome must be servable, so each side must hold ``n_images`` usable patients
  (``require_supply``): fewer is a clear error, never a draw that works for some secrets only.

Real images are the held-out test slices of the domain the fakes claim to be (a translation
experiment: the target domain of the study's direction; a generator: its dataset). Generated
images come from the trained model through the export the evaluator uses
(``pipeline.models.load_trained``): a translator's ``translate(direction, images)`` applied to
held-out test slices of the source domain, or a sampler's ``sample(n, labels, seed)``.

- Both sides are drawn the same way: ``n`` patients at random, one slice of each at random.
- A translation study shows one direction (``direction``: a_to_b or b_to_a): readers judge one
  kind of image against its real counterpart. Patients in both test sets (paired data, one id)
  are split once by the secret, half to each side (``split_shared_patients``), so no image is
  shown beside its own translation and each side's supply is the same for every secret.
- A conditional generator is asked for the classes of "class donors": real test slices drawn
  like the real images, one per generated image, so both sides have the test set's class mix in
  expectation (prevalence gives nothing away).

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

import re
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from pipeline.errors import ConfigError, InputDataError, PipelineError
from pipeline.evaluate.measures.slices import load_test_slices
from pipeline.reader_study import FAKE, REAL, REAL_PROBABILITY

#: Translation directions a study can show, and which test set is the source / the real one.
DIRECTION_DOMAINS = {"a_to_b": ("a", "b"), "b_to_a": ("b", "a")}
#: Per model (model.pt's ``model``): the network in checkpoint.pt that judges the fakes of a
#: study (per direction for translators). A model missing here cannot use best_by_discriminator.
SCORING_NETWORK: dict[str, str | dict[str, str]] = {
    "cyclegan": {"a_to_b": "D_b", "b_to_a": "D_a"},
    "dcgan": "D",
    "cgan": "D",
}
#: Independent random streams of one study secret, one per use (so changing one draw never
#: shifts another).
STREAMS = {"truth": 1, "real": 2, "source": 3, "sampler": 4, "class_donors": 5, "tokens": 6,
           "shared_patients": 7}
#: Bytes of operating-system randomness in a study secret (256 bits: beyond any brute force).
SECRET_BYTES = 32
#: Images a discriminator scores per forward pass.
SCORE_BATCH = 32


def new_secret() -> str:
    """A fresh study secret (hex) from the operating system's random source."""
    return secrets.token_hex(SECRET_BYTES)


def check_secret(secret: str, where: str = "the study secret") -> str:
    if not isinstance(secret, str) or not re.fullmatch(f"[0-9a-f]{{{2 * SECRET_BYTES}}}", secret):
        raise ConfigError(f"{where} must be {2 * SECRET_BYTES} lower-case hex digits (as make writes it into key.json)")
    return secret


def stream(secret: str, name: str) -> np.random.Generator:
    """The study's independent random stream ``name``, seeded by the whole secret."""
    return np.random.default_rng(np.random.SeedSequence(int(check_secret(secret), 16), spawn_key=(STREAMS[name],)))


def draw_truths(n_images: int, secret: str) -> list[str]:
    """The truth at each position shown: real or generated by its own fair coin."""
    return [REAL if coin else FAKE for coin in stream(secret, "truth").random(n_images) < REAL_PROBABILITY]


@dataclass
class TestSet:
    """A held-out test.npz (the slices stage's contract), loaded once."""

    path: Path
    data: dict[str, np.ndarray]

    @classmethod
    def load(cls, path: Path) -> "TestSet":
        return cls(Path(path), load_test_slices(Path(path)))

    @property
    def subject_ids(self) -> np.ndarray:
        return np.asarray(self.data["subject_ids"]).astype(str)

    def provenance(self, index: int) -> dict[str, Any]:
        return {"file": str(self.path), "index": int(index), "subject_id": str(self.subject_ids[index]),
                "slice_index": int(self.data["slice_index"][index])}


@dataclass(frozen=True)
class Patients:
    """The patients of a test set one side of a study may show, and why any are kept back."""

    allowed: frozenset[str]
    kept_back: str = ""


def split_shared_patients(source: TestSet, real: TestSet, secret: str) -> tuple[Patients, Patients, int]:
    """Patients in both test sets (paired data under one id) go to one side only: half of them,
    drawn by the secret, may be translated, the others shown as real images. The sizes of both
    halves are fixed, so whether a study can be served does not depend on the secret or the coins."""
    source_ids, real_ids = set(source.subject_ids.tolist()), set(real.subject_ids.tolist())
    shared = sorted(source_ids & real_ids)
    order = stream(secret, "shared_patients").permutation(len(shared))
    to_source = {shared[i] for i in order[:len(shared) // 2]}
    to_real = set(shared) - to_source

    def note(kept: set[str], side: str) -> str:
        return f" ({len(kept)} of the {len(shared)} patients in both test sets are kept for {side})" if shared else ""

    return (Patients(frozenset(source_ids - to_real), note(to_real, "the real images")),
            Patients(frozenset(real_ids - to_source), note(to_source, "the translations")), len(shared))


def require_supply(test_set: TestSet, patients: Patients | None, needed: int, what: str, knob: str) -> None:
    """Any coin outcome must be servable with one image per patient: a clear error otherwise."""
    allowed = set(test_set.subject_ids.tolist()) if patients is None else patients.allowed
    if len(allowed) < needed:
        kept_back = "" if patients is None else patients.kept_back
        raise InputDataError(test_set.path, f"holds {len(allowed)} {what}{kept_back}; the study may need {needed} "
                                            "(one image per patient, and every coin can fall on one side): "
                                            f"lower {knob}")


@dataclass
class Drawn:
    """Images of one side of the study (n, H, W) in [0, 1], with where each came from. ``shape``
    is the side's image size even when no image of it was drawn (the coins may leave a side empty)."""

    images: np.ndarray
    provenance: list[dict[str, Any]]
    shape: tuple[int, int]
    labels: np.ndarray | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def one_per_patient(test_set: TestSet, patients: Patients | None, n: int, rng: np.random.Generator,
                    what: str, knob: str) -> np.ndarray:
    """Indices of ``n`` images of ``n`` different patients: the patients at random, then one of
    each patient's slices at random."""
    require_supply(test_set, patients, n, what, knob)
    subject_ids = test_set.subject_ids
    subjects = sorted(set(subject_ids.tolist()) if patients is None else patients.allowed)
    chosen = [subjects[i] for i in rng.permutation(len(subjects))[:n]]
    return np.asarray([rng.choice(np.flatnonzero(subject_ids == subject)) for subject in chosen], dtype=np.int64)


def spread_over_subjects(subject_ids: np.ndarray, n: int, rng: np.random.Generator, path: Path,
                         exclude: frozenset[str] = frozenset(), what: str = "images") -> np.ndarray:
    """Indices of ``n`` images drawn at random without replacement, one per patient per round."""
    subject_ids = np.asarray(subject_ids).astype(str)
    subjects = sorted(set(subject_ids.tolist()) - set(exclude))
    available = int(np.isin(subject_ids, subjects).sum())
    if available < n:
        excluded = f" ({len(exclude)} patients left out as sources of translated images)" if exclude else ""
        raise InputDataError(path, f"holds {available} usable {what}{excluded}; the study needs {n}: "
                                   "lower reader_study.n_images (or candidates_per_image)")
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


#: What ``require_supply`` names when a study cannot be served.
REAL_PATIENTS, SOURCE_PATIENTS = "real patients", "patients to translate from"
N_IMAGES_KNOB = "reader_study.n_images"


def draw_real(test_set: TestSet, n: int, secret: str, patients: Patients | None = None) -> Drawn:
    """``n`` held-out real images, each of another patient (of ``patients``' allowed ones)."""
    picked = one_per_patient(test_set, patients, n, stream(secret, "real"), REAL_PATIENTS, N_IMAGES_KNOB)
    images = test_set.data["images"]
    return Drawn(images[picked].astype(np.float32), [test_set.provenance(i) for i in picked],
                 tuple(int(v) for v in images.shape[1:]))


def class_donor_labels(test_set: TestSet, n: int, secret: str) -> np.ndarray:
    """Classes for ``n`` conditional samples: the labels of real test slices drawn like the real images."""
    if "labels" not in test_set.data:
        raise ConfigError(f"the generator is conditional, but {test_set.path} carries no 'labels' to match")
    donors = spread_over_subjects(test_set.subject_ids, n, stream(secret, "class_donors"), test_set.path,
                                  what="class donors")
    return np.asarray(test_set.data["labels"])[donors].astype(np.int64)


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
    if scorer is None or n == 0:
        return np.arange(n) * k, None
    scores = np.asarray(scorer(candidates, labels), dtype=np.float64)
    if scores.shape != (len(candidates),) or not np.all(np.isfinite(scores)):
        raise PipelineError(f"the discriminator returned scores of shape {scores.shape} (or not finite) "
                            f"for {len(candidates)} candidates")
    return np.arange(n) * k + scores.reshape(n, k).argmax(axis=1), scores


def _candidate_record(record: dict[str, Any], scores: np.ndarray | None, slot: int, candidate: int,
                      k: int) -> dict[str, Any]:
    if scores is not None:
        record["d_score"] = float(scores[candidate])
        record["candidate_d_scores"] = [float(s) for s in scores[slot * k:(slot + 1) * k]]
    return record


def generated_by_translation(translator: Any, source: TestSet, direction: str, n: int, k: int, secret: str,
                             scorer: Scorer | None, patients: Patients | None = None) -> Drawn:
    """``n`` translations of held-out source images, every candidate of another patient (each
    image shown the best of ``k`` by ``scorer``). With ``n`` = 0 one source slice is still
    translated, unshown, to learn the output size."""
    picked = one_per_patient(source, patients, max(n * k, 1), stream(secret, "source"), SOURCE_PATIENTS,
                             f"{N_IMAGES_KNOB} (or candidates_per_image)")
    translated = checked(translator.translate(direction, source.data["images"][picked]), len(picked),
                         f"the translator ({direction})")
    shape = tuple(int(v) for v in translated.shape[1:])
    picked, translated = picked[:n * k], translated[:n * k]
    chosen, scores = best_of(translated, k, scorer, None)
    provenance = [_candidate_record({"translated_from": source.provenance(picked[candidate]), "direction": direction},
                                    scores, slot, candidate, k) for slot, candidate in enumerate(chosen)]
    return Drawn(translated[chosen], provenance, shape)


def generated_by_sampling(sampler: Any, n: int, k: int, secret: str, labels: np.ndarray | None,
                          scorer: Scorer | None) -> Drawn:
    """``n`` samples (each the best of ``k``), of the given classes when the generator is
    conditional. With ``n`` = 0 one sample is still drawn, unshown, to learn the output size."""
    sample_seed = int(stream(secret, "sampler").integers(2**31 - 1))
    n_classes = int(getattr(sampler, "n_classes", 0))
    candidate_labels = None
    if n_classes:
        if labels is None:
            raise ConfigError("the generator is conditional: it needs the classes of the images to generate")
        if len(labels) and (labels.min() < 0 or labels.max() >= n_classes):
            raise ConfigError(f"the real slices hold classes {sorted(set(labels.tolist()))}; the generator knows "
                              f"{n_classes}")
        candidate_labels = np.repeat(labels.astype(np.int64), k) if n else np.zeros(1, np.int64)
    count = max(n * k, 1)
    images = checked(sampler.sample(count, labels=candidate_labels, seed=sample_seed), count, "the generator")
    shape = tuple(int(v) for v in images.shape[1:])
    images = images[:n * k]
    if candidate_labels is not None:
        candidate_labels = candidate_labels[:n * k]
    chosen, scores = best_of(images, k, scorer, candidate_labels)
    provenance = []
    for slot, candidate in enumerate(chosen):
        record: dict[str, Any] = {"sampler_seed": sample_seed, "sample_index": int(candidate)}
        if candidate_labels is not None:
            record["label"] = int(candidate_labels[candidate])
        provenance.append(_candidate_record(record, scores, slot, candidate, k))
    return Drawn(images[chosen], provenance, shape, None if candidate_labels is None else candidate_labels[chosen],
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
    if config.get("d_minibatch_std"):
        group = config["d_minibatch_std"]
        raise ConfigError(f"reader_study.pick best_by_discriminator: {model_path}'s D sees the spread of "
                          f"each group of {group} images (model.d_minibatch_std), so its score of one "
                          "image depends on the others scored with it; use pick: random")
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
