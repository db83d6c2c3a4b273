"""Build a reader study: draw, render, shuffle, and write the page, the key and the record.

Everything random comes from one study seed (params.yaml ``seed`` + ``reader_study.seed_offset``)
split into independent streams (pipeline/reader_study/draw.py ``STREAMS``), so the same seed
gives the same study byte for byte and another seed another study. The output folder is built
aside and swapped into place whole (nothing half-written).
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from pipeline.atomic import atomic_dir
from pipeline.errors import ConfigError, PipelineError
from pipeline.evaluate.measures.slices import load_test_slices
from pipeline.hashing import file_sha256
from pipeline.reader_study import FAKE, KEY_FORMAT, PICKS, REAL
from pipeline.reader_study.draw import (
    DIRECTION_DOMAINS, Drawn, draw_real, generated_by_sampling, generated_by_translation, load_discriminator,
    model_task, stream)
from pipeline.reader_study.render import display_shape, render_page, render_png

#: Random image ids: this many hex digits (ids reveal nothing; they only have to be unique).
TOKEN_HEX_DIGITS = 10
STUDY_ID_HEX_DIGITS = 12


@dataclass(frozen=True)
class StudySettings:
    """The knobs of one study (params.yaml ``reader_study``; see the schema)."""

    n_per_class: int
    pick: str
    candidates_per_image: int
    display_size: int
    display_window: tuple[float, float]
    confidence: bool
    direction: str
    n_boot: int
    seed: int

    def check(self) -> None:
        if self.n_per_class < 1:
            raise ConfigError(f"reader_study.n_per_class must be >= 1, got {self.n_per_class}")
        if self.pick not in PICKS:
            raise ConfigError(f"reader_study.pick must be one of {PICKS}, got {self.pick!r}")
        if self.candidates_per_image < 1:
            raise ConfigError(f"reader_study.candidates_per_image must be >= 1, got {self.candidates_per_image}")
        if self.display_size < 1:
            raise ConfigError(f"reader_study.display_size must be >= 1, got {self.display_size}")
        if len(self.display_window) != 2 or not self.display_window[1] > self.display_window[0]:
            raise ConfigError(f"reader_study.display_window must be [low, high] with low < high, "
                              f"got {list(self.display_window)}")
        if self.direction not in DIRECTION_DOMAINS:
            raise ConfigError(f"reader_study.direction must be one of {sorted(DIRECTION_DOMAINS)}, got {self.direction!r}")
        if self.n_boot < 1:
            raise ConfigError(f"reader_study.n_boot must be >= 1, got {self.n_boot}")


def _tokens(n: int, seed: int) -> list[str]:
    rng = stream(seed, "tokens")
    tokens: list[str] = []
    while len(tokens) < n:
        token = "img-" + "".join(f"{d:x}" for d in rng.integers(16, size=TOKEN_HEX_DIGITS))
        if token not in tokens:
            tokens.append(token)
    return tokens


def _file_record(path: Path) -> dict[str, str]:
    return {"file": str(path), "sha256": file_sha256(path)}


def make_study(experiment: str, model_path: Path, out_dir: Path, settings: StudySettings, *,
               test_a: Path | None = None, test_b: Path | None = None, real: Path | None = None,
               checkpoint: Path | None = None, device: str = "cpu") -> dict[str, Any]:
    """Write the study into ``out_dir``; returns study.json's content.

    A translator needs ``test_a`` and ``test_b`` (the experiment's two test sets); a generator
    needs ``real`` (its dataset's test set). ``checkpoint`` (training's checkpoint.pt) is needed
    only for pick best_by_discriminator.
    """
    from pipeline.models import load_trained

    settings.check()
    model_path, out_dir = Path(model_path), Path(out_dir)
    model = load_trained(model_path, device)
    task = model_task(model, model_path)
    best = settings.pick == "best_by_discriminator"
    k = settings.candidates_per_image if best else 1
    n, seed = settings.n_per_class, settings.seed
    scorer = None
    if best:
        if checkpoint is None:
            raise ConfigError("reader_study.pick best_by_discriminator needs the training checkpoint (--checkpoint)")
        scorer = load_discriminator(model_path, Path(checkpoint), settings.direction if task == "translation" else None)
    if task == "translation":
        if test_a is None or test_b is None:
            raise ConfigError(f"{model_path} is a translator: the study needs both test sets (--test-a, --test-b)")
        tests = {"a": Path(test_a), "b": Path(test_b)}
        source_key, real_key = DIRECTION_DOMAINS[settings.direction]
        fakes = generated_by_translation(model, tests[source_key], settings.direction, n, k, seed, scorer)
        real_subjects = set(load_test_slices(tests[real_key])["subject_ids"].astype(str).tolist())
        shared = frozenset(set(fakes.extra["source_subjects"]) & real_subjects)
        reals = draw_real(tests[real_key], n, seed, exclude=shared)
        inputs = {"real": _file_record(tests[real_key]), "translated_from": _file_record(tests[source_key])}
        generated = {"how": f"translations {settings.direction} of held-out {source_key} test slices",
                     "direction": settings.direction, "patients_left_out_of_real_draw": len(shared)}
    else:
        if real is None:
            raise ConfigError(f"{model_path} is a generator: the study needs the real test set (--real)")
        reals = draw_real(Path(real), n, seed)
        fakes = generated_by_sampling(model, n, k, seed, reals.labels, scorer)
        inputs = {"real": _file_record(Path(real))}
        generated = {"how": "samples of the generator (load_trained(...).sample)", "sampler_seed": fakes.extra["sampler_seed"],
                     "conditional": fakes.labels is not None}
    native = _common_shape(reals, fakes)
    shown = display_shape(native, settings.display_size)
    window = tuple(float(v) for v in settings.display_window)
    pngs = [render_png(image, settings.display_size, window) for image in (*reals.images, *fakes.images)]
    truths = [REAL] * n + [FAKE] * n
    provenance = [*reals.provenance, *fakes.provenance]
    tokens = _tokens(2 * n, seed)
    order = stream(seed, "order").permutation(2 * n)
    digest = hashlib.sha256()
    for i in order:
        digest.update(tokens[i].encode() + hashlib.sha256(pngs[i]).digest())
    study_id = digest.hexdigest()[:STUDY_ID_HEX_DIGITS]
    page = render_page(study_id, [(tokens[i], pngs[i]) for i in order], n, n, shown, window, settings.confidence)
    key = {
        "format": KEY_FORMAT, "study_id": study_id, "experiment": experiment, "task": task, "pick": settings.pick,
        "candidates_per_image": k, "n_real": n, "n_fake": n, "confidence": settings.confidence,
        "seed": seed, "n_boot": settings.n_boot,
        "images": [{"image_id": tokens[i], "position": position, "truth": truths[i], "file": f"images/{tokens[i]}.png",
                    "source": provenance[i]} for position, i in enumerate(order, start=1)],
    }
    page_bytes = page.encode("utf-8")
    study = {
        "study_id": study_id, "experiment": experiment, "task": task,
        "model": _file_record(model_path), "settings": {**asdict(settings), "display_window": list(window),
                                                         "candidates_per_image": k},
        "inputs": inputs, "generated": generated,
        "real": {"how": "held-out test slices drawn at random, spread over patients",
                 "n_patients": len({p["subject_id"] for p in reals.provenance})},
        "display": {"native_size": list(native), "shown_size": list(shown), "window": list(window),
                    "resampling": "bilinear (Pillow), window applied first",
                    "encoding": "PNG, 8-bit grey, zlib level 9, no ancillary chunks; the same for every image"},
        "page": {"file": "study.html", "sha256": hashlib.sha256(page_bytes).hexdigest(), "n_images": 2 * n},
        "files": {"for_readers": ["study.html"], "kept_by_the_organiser": ["key.json", "study.json", "images/"]},
    }
    if best:
        study["generated"]["discriminator"] = {
            "checkpoint": _file_record(Path(checkpoint)),
            "rule": f"each fake shown is the best of {k} random candidates by the discriminator's mean output",
        }
    with atomic_dir(out_dir) as tmp:
        (tmp / "images").mkdir()
        for token, png in zip(tokens, pngs):
            (tmp / "images" / f"{token}.png").write_bytes(png)
        (tmp / "study.html").write_bytes(page_bytes)
        (tmp / "key.json").write_text(json.dumps(key, indent=2, sort_keys=True, allow_nan=False) + "\n")
        (tmp / "study.json").write_text(json.dumps(study, indent=2, sort_keys=True, allow_nan=False) + "\n")
    return study


def _common_shape(reals: Drawn, fakes: Drawn) -> tuple[int, int]:
    """The one native (H, W) of both sides: different sizes would show as different sharpness."""
    real_shape, fake_shape = tuple(reals.images.shape[1:]), tuple(fakes.images.shape[1:])
    if real_shape != fake_shape:
        raise PipelineError(f"real images are {real_shape[0]}x{real_shape[1]}, generated {fake_shape[0]}x"
                            f"{fake_shape[1]}: resampled to one display size they would differ in sharpness; "
                            "make the study from test slices of the generator's size")
    return int(real_shape[0]), int(real_shape[1])
