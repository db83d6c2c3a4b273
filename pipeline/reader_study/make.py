"""Build a reader study: secret, coins, draw, encode, and write the page, the key and the record.

Every random choice comes from one secret (pipeline/reader_study/draw.py: 256 bits of
operating-system randomness, split into independent streams) that is written to key.json and
nowhere else; nothing public (params.yaml's ``seed``) enters. A fresh ``make`` therefore gives a
fresh study, and ``make --from-key key.json`` (``rebuild_study``) gives the same study byte for
byte from the key's secret and settings, after checking that the model and test sets are the
ones the key was drawn from. The output folder is built aside and swapped into place whole
(nothing half-written).
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from pipeline.atomic import atomic_dir, atomic_path
from pipeline.errors import ConfigError, InputDataError, PipelineError
from pipeline.hashing import file_sha256
from pipeline.reader_study import FAKE, KEY_FORMAT, PICKS, REAL, REAL_PROBABILITY
from pipeline.reader_study.draw import (
    DIRECTION_DOMAINS, N_IMAGES_KNOB, REAL_PATIENTS, SOURCE_PATIENTS, Drawn, TestSet, check_secret,
    class_donor_labels, draw_real, draw_truths, generated_by_sampling, generated_by_translation, load_discriminator,
    model_task, new_secret, require_supply, split_shared_patients, stream)
from pipeline.reader_study.render import check_window, encode_pixels, lattice_levels, pixels_png, render_page

#: Random image ids: "img-" and this many hex digits (ids reveal nothing; they only have to be unique).
TOKEN_BYTES = 5
STUDY_ID_HEX_DIGITS = 12
#: key.json holds the secret: readable by its owner only.
KEY_FILE_MODE = 0o600
DESIGN = {
    "truths": f"each image real with probability {REAL_PROBABILITY}, by its own coin, independently of the others; "
              "the counts are in key.json only, and the page states neither the counts nor a ratio",
    "secret": "256 bits of operating-system randomness (Python secrets), in key.json only; every random choice "
              "(truths, real and source draws, sampler seed, class donors, image ids) comes from it, nothing from "
              "params.yaml's seed; make --from-key key.json rebuilds this study byte for byte",
    "draw": "one image per patient: no patient is shown twice, on one side or on both (patients in both test sets "
            "are split once by the secret, half to each side); each side holds n_images (x candidates_per_image) "
            "usable patients, so every coin outcome is served",
    "shown": "one image at a time, in position order; readers may go back and change an answer",
}


@dataclass(frozen=True)
class StudySettings:
    """The knobs of one study (params.yaml ``reader_study``; see the schema)."""

    n_images: int
    pick: str
    candidates_per_image: int
    display_window: tuple[float, float]
    confidence: bool
    direction: str
    window_presets: dict[str, tuple[float, float]] = field(default_factory=dict)

    def check(self) -> None:
        if self.n_images < 1:
            raise ConfigError(f"reader_study.n_images must be >= 1, got {self.n_images}")
        if self.pick not in PICKS:
            raise ConfigError(f"reader_study.pick must be one of {PICKS}, got {self.pick!r}")
        if self.candidates_per_image < 1:
            raise ConfigError(f"reader_study.candidates_per_image must be >= 1, got {self.candidates_per_image}")
        check_window(self.display_window, "reader_study.display_window")
        for name, window in self.window_presets.items():
            check_window(window, f"reader_study.window_presets.{name}")
        if self.direction not in DIRECTION_DOMAINS:
            raise ConfigError(f"reader_study.direction must be one of {sorted(DIRECTION_DOMAINS)}, got {self.direction!r}")

    def record(self) -> dict[str, Any]:
        return {**asdict(self), "display_window": list(self.display_window),
                "window_presets": {name: list(window) for name, window in self.window_presets.items()}}

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> "StudySettings":
        return cls(**{**record, "display_window": tuple(record["display_window"]),
                      "window_presets": {name: tuple(w) for name, w in record["window_presets"].items()}})


def _tokens(n: int, secret: str) -> list[str]:
    rng = stream(secret, "tokens")
    tokens: list[str] = []
    while len(tokens) < n:
        token = "img-" + rng.bytes(TOKEN_BYTES).hex()
        if token not in tokens:
            tokens.append(token)
    return tokens


def _file_record(path: Path) -> dict[str, str]:
    return {"file": str(path), "sha256": file_sha256(path)}


def _check_inputs(inputs: dict[str, dict[str, str]], expected: dict[str, dict[str, str]]) -> None:
    """A rebuild must use the very files the key was drawn from."""
    for role, record in expected.items():
        given = inputs.get(role)
        if given is None:
            raise ConfigError(f"the key was drawn with a {role} input ({record['file']}); none was given")
        if given["sha256"] != record["sha256"]:
            raise InputDataError(given["file"], f"is not the {role} the key was drawn from ({record['file']}, sha256 "
                                                f"{record['sha256'][:12]}...): the rebuild would not be the same study")


def make_study(experiment: str, model_path: Path, out_dir: Path, settings: StudySettings, *,
               test_a: Path | None = None, test_b: Path | None = None, real: Path | None = None,
               checkpoint: Path | None = None, device: str = "cpu", secret: str | None = None,
               expected_inputs: dict[str, dict[str, str]] | None = None) -> dict[str, Any]:
    """Write the study into ``out_dir``; returns study.json's content.

    A translator needs ``test_a`` and ``test_b`` (the experiment's two test sets); a generator
    needs ``real`` (its dataset's test set). ``checkpoint`` (training's checkpoint.pt) is needed
    only for pick best_by_discriminator. ``secret``: None draws a fresh one (a new study);
    a key's secret with ``expected_inputs`` (the key's ``inputs``) rebuilds that study.
    """
    from pipeline.models import load_trained

    settings.check()
    secret = new_secret() if secret is None else check_secret(secret)
    model_path, out_dir = Path(model_path), Path(out_dir)
    best = settings.pick == "best_by_discriminator"
    k = settings.candidates_per_image if best else 1
    if best and checkpoint is None:
        raise ConfigError("reader_study.pick best_by_discriminator needs the training checkpoint (--checkpoint)")
    model = load_trained(model_path, device)
    task = model_task(model, model_path)
    n = settings.n_images
    inputs = {"model": _file_record(model_path)}
    scorer = None
    if best:
        scorer = load_discriminator(model_path, Path(checkpoint), settings.direction if task == "translation" else None)
        inputs["checkpoint"] = _file_record(Path(checkpoint))
    if task == "translation":
        if test_a is None or test_b is None:
            raise ConfigError(f"{model_path} is a translator: the study needs both test sets (--test-a, --test-b)")
        source_key, real_key = DIRECTION_DOMAINS[settings.direction]
        source_set, real_set = (TestSet.load({"a": test_a, "b": test_b}[side]) for side in (source_key, real_key))
        inputs.update(real=_file_record(real_set.path), translated_from=_file_record(source_set.path))
        source_patients, real_patients, shared = split_shared_patients(source_set, real_set, secret)
        require_supply(source_set, source_patients, n * k, SOURCE_PATIENTS, f"{N_IMAGES_KNOB} (or candidates_per_image)")
        generated = {"how": f"translations {settings.direction} of held-out {source_key} test slices",
                     "direction": settings.direction}
    else:
        if real is None:
            raise ConfigError(f"{model_path} is a generator: the study needs the real test set (--real)")
        real_set = TestSet.load(real)
        inputs["real"] = _file_record(real_set.path)
        real_patients, shared = None, 0
        conditional = int(getattr(model, "n_classes", 0) or 0) > 0
        generated = {"how": "samples of the generator (load_trained(...).sample)", "conditional": conditional}
        if conditional:
            generated["classes"] = "of class donors: real test slices drawn at random over patients, one per sample"
    require_supply(real_set, real_patients, n, REAL_PATIENTS, N_IMAGES_KNOB)
    if expected_inputs is not None:
        _check_inputs(inputs, expected_inputs)

    truths = draw_truths(n, secret)
    n_real = truths.count(REAL)
    reals = draw_real(real_set, n_real, secret, real_patients)
    if task == "translation":
        fakes = generated_by_translation(model, source_set, settings.direction, n - n_real, k, secret, scorer,
                                         source_patients)
    else:
        labels = class_donor_labels(real_set, n - n_real, secret) if generated["conditional"] else None
        fakes = generated_by_sampling(model, n - n_real, k, secret, labels, scorer)
    shape = _common_shape(reals, fakes)
    sides = {REAL: iter(zip(reals.images, reals.provenance)), FAKE: iter(zip(fakes.images, fakes.provenance))}
    shown = [next(sides[truth]) for truth in truths]
    levels = lattice_levels(real_set.data["images"])
    pixels = [encode_pixels(image, levels) for image, _ in shown]
    tokens = _tokens(n, secret)
    digest = hashlib.sha256()
    for token, data in zip(tokens, pixels):
        digest.update(token.encode() + hashlib.sha256(data).digest())
    study_id = digest.hexdigest()[:STUDY_ID_HEX_DIGITS]
    window = check_window(settings.display_window, "reader_study.display_window")
    page_bytes = render_page(study_id, list(zip(tokens, pixels)), shape, window, settings.window_presets,
                             settings.confidence).encode("utf-8")
    key = {
        "format": KEY_FORMAT, "study_id": study_id, "secret": secret, "experiment": experiment, "task": task,
        "pick": settings.pick, "candidates_per_image": k, "confidence": settings.confidence,
        "settings": settings.record(), "inputs": inputs, "design": DESIGN,
        "n_images": n, "n_real": n_real, "n_fake": n - n_real,
        "patients_in_both_test_sets": shared,
        "images": [{"image_id": token, "position": position, "truth": truth, "file": f"images/{token}.png",
                    "source": provenance}
                   for position, (token, truth, (_, provenance)) in enumerate(zip(tokens, truths, shown), start=1)],
    }
    study = {
        "study_id": study_id, "experiment": experiment, "task": task, "model": inputs["model"],
        "settings": settings.record(), "inputs": inputs, "generated": generated, "design": DESIGN,
        "real": {"how": "held-out test slices drawn at random without replacement, spread over patients"},
        "display": {"native_size": list(shape),
                    "shown": "one image at a time, fitted to the reader's window and zoomable; the browser scales "
                             "every image alike",
                    "initial_window": list(window), "window_presets": settings.record()["window_presets"],
                    "encoding": "16-bit little-endian raw pixels (stored [0, 1] values x 65535, rounded), base64; "
                                "the same number of bytes for every image; window / level applied in the page",
                    "stored_levels": levels,
                    "levels": "null: the real test set's values are continuous; a number L: they sit on the grid "
                              "k / L (e.g. 8-bit films, L = 255), and every image shown, generated ones included, "
                              "is rounded to that grid first, so precision tells nothing"},
        "page": {"file": "study.html", "sha256": hashlib.sha256(page_bytes).hexdigest(), "n_images": n},
        "files": {"for_readers": ["study.html"], "kept_by_the_organiser": ["key.json", "study.json", "images/"]},
        "not_here": "the secret and the real / generated counts are in key.json only",
    }
    if best:
        study["generated"]["discriminator"] = {
            "checkpoint": inputs["checkpoint"],
            "rule": f"each fake shown is the best of {k} random candidates by the discriminator's mean output",
        }
    with atomic_dir(out_dir) as tmp:
        (tmp / "images").mkdir()
        for token, data in zip(tokens, pixels):
            (tmp / "images" / f"{token}.png").write_bytes(pixels_png(data, shape))
        (tmp / "study.html").write_bytes(page_bytes)
        key_path = tmp / "key.json"
        key_path.touch()
        key_path.chmod(KEY_FILE_MODE)
        key_path.write_text(json.dumps(key, indent=2, sort_keys=True, allow_nan=False) + "\n")
        (tmp / "study.json").write_text(json.dumps(study, indent=2, sort_keys=True, allow_nan=False) + "\n")
    _archive_key(out_dir, study_id, (out_dir / "key.json").read_bytes())
    return study


def key_archive(out_dir: Path) -> Path:
    """Where every key a study folder ever held is kept: beside it, never replaced."""
    return Path(out_dir).with_name(Path(out_dir).name + "_keys")


def _archive_key(out_dir: Path, study_id: str, key_bytes: bytes) -> None:
    """A new make (or a Snakemake rerun, which deletes the folder first) draws a new study; the
    key of one that readers already answer must survive it, or their answers cannot be scored."""
    archive = key_archive(out_dir)
    archive.mkdir(parents=True, exist_ok=True)
    target = archive / f"{study_id}.json"
    if not target.exists():
        with atomic_path(target) as tmp:
            tmp.chmod(KEY_FILE_MODE)
            tmp.write_bytes(key_bytes)


def rebuild_study(key_path: Path, model_path: Path, out_dir: Path, *, test_a: Path | None = None,
                  test_b: Path | None = None, real: Path | None = None, checkpoint: Path | None = None,
                  device: str = "cpu") -> dict[str, Any]:
    """The study of ``key_path`` again, byte for byte: its secret and settings, the same inputs."""
    from pipeline.reader_study.score import read_key

    key = read_key(key_path)
    if key["format"] != KEY_FORMAT:
        raise InputDataError(key_path, f"is a key of format {key['format']}, drawn by an earlier version (slices spread "
                                       f"over patients, no value grid); this version (format {KEY_FORMAT}) would draw "
                                       "other images from its secret. Score its answers with this version; rebuild "
                                       "its page with the version that made it")
    try:
        settings = StudySettings.from_record(key["settings"])
        secret = check_secret(key["secret"], f"{key_path}: 'secret'")
    except (KeyError, TypeError) as err:
        raise InputDataError(key_path, f"holds no complete settings and secret to rebuild from ({err})") from err
    return make_study(key["experiment"], model_path, out_dir, settings, test_a=test_a, test_b=test_b, real=real,
                      checkpoint=checkpoint, device=device, secret=secret, expected_inputs=key["inputs"])


def _common_shape(reals: Drawn, fakes: Drawn) -> tuple[int, int]:
    """The one native (H, W) of both sides: different sizes would show as different sharpness."""
    if reals.shape != fakes.shape:
        raise PipelineError(f"real images are {reals.shape[0]}x{reals.shape[1]}, generated {fakes.shape[0]}x"
                            f"{fakes.shape[1]}: scaled to one display size they would differ in sharpness; "
                            "make the study from test slices of the generator's size")
    return reals.shape
