"""The reader study on tiny models trained through the real engine: a key no reader can
recompute, one encoding for every image, fair-coin truths, a fair draw from the test sets, a
rebuild from the key byte for byte, and the CLI and Snakemake target."""
from __future__ import annotations

import base64
import csv
import hashlib
import json
import random
import re
import stat
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch
from PIL import Image
from scipy.stats import binomtest

from pipeline.errors import ConfigError, InputDataError, PipelineError
from pipeline.models import load_trained
from pipeline.models.dcgan import ConditionalDCGAN
from pipeline.reader_study import ANSWER_COLUMNS
from pipeline.reader_study.__main__ import main
from pipeline.reader_study.draw import draw_truths, model_task, spread_over_subjects
from pipeline.reader_study.make import StudySettings, make_study
from pipeline.reader_study.render import lattice_levels
from pipeline.reader_study.score import read_answers, read_key, score_study
from reader_study_support import SIZE, train_cgan, train_cyclegan

N = 24
SETTINGS = StudySettings(n_images=N, pick="random", candidates_per_image=1, display_window=(0.0, 1.0),
                         confidence=True, direction="a_to_b", window_presets={"narrow": (0.25, 0.75)})
#: Secrets the tests choose (a real study draws its own): fixed so a failure can be replayed.
SECRETS = [hashlib.sha256(f"reader-study-test-{i}".encode()).hexdigest() for i in range(400)]
#: The attack test's family-wise false-alarm rate over all its recipes (Bonferroni).
ATTACK_ALPHA = 0.001


def with_settings(**changes) -> StudySettings:
    return StudySettings(**{**SETTINGS.__dict__, **changes})


def secret_with(n: int, predicate) -> str:
    """The first test secret whose coins for ``n`` images satisfy ``predicate(truths)``."""
    return next(s for s in SECRETS if predicate(draw_truths(n, s)))


@pytest.fixture(scope="module")
def cyclegan(tmp_path_factory, store):
    return train_cyclegan(tmp_path_factory.mktemp("cyclegan"), store)


@pytest.fixture(scope="module")
def cgan(tmp_path_factory, store):
    return train_cgan(tmp_path_factory.mktemp("cgan"), store)


def make_translation(cyclegan, out: Path, settings: StudySettings = SETTINGS, secret: str | None = None) -> Path:
    make_study("rs_cyclegan", cyclegan["model"], out, settings, test_a=cyclegan["test_a"], test_b=cyclegan["test_b"],
               checkpoint=cyclegan["checkpoint"], secret=secret)
    return out


@pytest.fixture(scope="module")
def translation_study(cyclegan, tmp_path_factory):
    """A fresh study (the secret drawn by make, as in use) with both classes shown."""
    return make_translation(cyclegan, tmp_path_factory.mktemp("study") / "reader_study",
                            secret=secret_with(N, lambda t: 8 <= t.count("real") <= 16))


def files_of(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def page_data(page: str) -> dict:
    return json.loads(re.search(r'<script id="study-data" type="application/json">(.*?)</script>', page, re.S).group(1))


def write_answers(path: Path, key: dict, reader: str, answer_of, confidence_of=lambda entry: 5, rows=None) -> Path:
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(ANSWER_COLUMNS)
        for entry in rows if rows is not None else key["images"]:
            writer.writerow([key["study_id"], reader, entry["image_id"], entry["position"], answer_of(entry),
                             confidence_of(entry)])
    return path


# ---- the key: secret, rebuild ----

def test_a_fresh_study_draws_its_own_secret_and_its_key_rebuilds_it_byte_for_byte(cyclegan, tmp_path):
    first, second = make_translation(cyclegan, tmp_path / "first"), make_translation(cyclegan, tmp_path / "second")
    keys = [json.loads((d / "key.json").read_text()) for d in (first, second)]
    assert all(re.fullmatch(r"[0-9a-f]{64}", k["secret"]) for k in keys) and keys[0]["secret"] != keys[1]["secret"]
    assert {e["image_id"] for e in keys[0]["images"]}.isdisjoint(e["image_id"] for e in keys[1]["images"])
    assert stat.S_IMODE((first / "key.json").stat().st_mode) == 0o600  # the secret: its owner only
    # The same key, the same inputs: the same study, every file byte for byte (page, key, record, images).
    again = tmp_path / "again"
    assert main(["make", "rs_cyclegan", "--from-key", str(first / "key.json"), "--model", str(cyclegan["model"]),
                 "--test-a", str(cyclegan["test_a"]), "--test-b", str(cyclegan["test_b"]), "--out", str(again)]) == 0
    rebuilt, original = files_of(again), files_of(first)
    assert rebuilt.keys() == original.keys() and all(rebuilt[name] == original[name] for name in original)
    # A new study in the same folder (a rerun) replaces it; every key issued stays in <folder>_keys/.
    make_translation(cyclegan, first)
    archive = tmp_path / "first_keys"
    assert sorted(p.name for p in archive.iterdir()) == sorted(
        f"{k['study_id']}.json" for k in (keys[0], json.loads((first / "key.json").read_text())))
    assert json.loads((archive / f"{keys[0]['study_id']}.json").read_text()) == keys[0]
    assert stat.S_IMODE((archive / f"{keys[0]['study_id']}.json").stat().st_mode) == 0o600
    # Neither the secret nor the counts leave key.json.
    for name in ("study.html", "study.json"):
        text = (first / name).read_text()
        assert keys[0]["secret"] not in text and "n_real" not in text and "n_fake" not in text


def test_a_rebuild_refuses_inputs_the_key_was_not_drawn_from(cyclegan, translation_study, tmp_path):
    key = translation_study / "key.json"
    with pytest.raises(InputDataError, match=r"dom_a/test.npz: is not the real the key was drawn from"):
        from pipeline.reader_study.make import rebuild_study

        rebuild_study(key, cyclegan["model"], tmp_path / "swapped", test_a=cyclegan["test_b"],
                      test_b=cyclegan["test_a"])
    assert not (tmp_path / "swapped").exists()
    broken = json.loads(key.read_text())
    broken["secret"] = "not-hex"
    (tmp_path / "key.json").write_text(json.dumps(broken))
    assert main(["make", "x", "--from-key", str(tmp_path / "key.json"), "--model", str(cyclegan["model"]),
                 "--test-a", str(cyclegan["test_a"]), "--test-b", str(cyclegan["test_b"]),
                 "--out", str(tmp_path / "s")]) == 1


# ---- the reader's attack: nothing in the page but the pixels says real or generated ----

def _old_tokens(n: int, seed: int, stream_id: int) -> list[str]:
    """Image ids as the seeded version drew them: numpy default_rng([seed, stream]) hex digits."""
    rng = np.random.default_rng([seed, stream_id])
    tokens: list[str] = []
    while len(tokens) < n:
        token = "img-" + "".join(f"{d:x}" for d in rng.integers(16, size=10))
        if token not in tokens:
            tokens.append(token)
    return tokens


def attack_recipes(ids: list[str], seeds: list[int]) -> dict[str, list[str]]:
    """A reader's guesses of every image's truth from the page's ids and positions and the
    public seed, by every recipe the seeded design (or a careless variant) would fall to."""
    n = len(ids)
    half = lambda ranks: ["real" if r < n / 2 else "fake" for r in ranks]
    recipes = {"ids in sorted order, first half real": half(np.argsort(np.argsort(ids)))}
    for seed in seeds:
        for stream_id in range(1, 9):
            rng_ids = _old_tokens(n, seed, stream_id)
            recipes[f"seed {seed}, stream {stream_id}: the first ids drawn are the real images"] = [
                "real" if i in rng_ids[:n // 2] else "fake" for i in ids]
            order = np.random.default_rng([seed, stream_id]).permutation(n)
            recipes[f"seed {seed}, stream {stream_id}: order permutation, first half real"] = half(order)
            coins = np.random.default_rng([seed, stream_id]).random(n) < 0.5
            recipes[f"seed {seed}, stream {stream_id}: coins"] = ["real" if c else "fake" for c in coins]
        recipes[f"seed {seed}: default_rng(seed) permutation"] = half(np.random.default_rng(seed).permutation(n))
        recipes[f"seed {seed}: RandomState(seed) permutation"] = half(np.random.RandomState(seed).permutation(n))
        shuffled = list(range(n))
        random.Random(seed).shuffle(shuffled)
        recipes[f"seed {seed}: random.Random shuffle"] = half(shuffled)
        for secret in (f"{seed:064x}", hashlib.sha256(str(seed).encode()).hexdigest()):
            recipes[f"seed {seed}: this design's coins from a seed-made secret {secret[:8]}"] = draw_truths(n, secret)
    return recipes


def worst_recipe(studies: list[tuple[list[str], list[str]]], seeds: list[int]) -> tuple[str, int, int, float]:
    """(recipe, right, guesses, p) of the recipe that guessed the truths of all ``studies`` (ids,
    truths) best; p: exact binomial test against 1/2, one-sided."""
    right: dict[str, int] = {}
    total = 0
    for ids, truths in studies:
        for name, guesses in attack_recipes(ids, seeds).items():
            right[name] = right.get(name, 0) + sum(g == t for g, t in zip(guesses, truths))
        total += len(ids)
    name = max(right, key=right.get)
    return name, right[name], total, binomtest(right[name], total, 0.5, alternative="greater").pvalue


def test_the_readers_attack_recovers_no_more_than_chance(cyclegan, tmp_path, repo_root):
    """A reader holds the page and params.yaml. Recomputing ids, order or coins from the public
    seed (and seeds near it, by the seeded design's recipe and careless variants) must guess the
    truths no better than coin tosses over several fresh studies; the seeded design's own page
    must fall to the same attack (it has teeth)."""
    import yaml

    seed = yaml.safe_load((repo_root / "params.yaml").read_text())["seed"]
    seeds = [seed, seed + 1700, 0, 1700, 42]
    recipes_count = len(attack_recipes([f"img-{i:010x}" for i in range(N)], seeds))
    threshold = ATTACK_ALPHA / recipes_count
    # The seeded design (ids of default_rng([seed + 1700, 5]), the first half real): broken at once.
    old = _old_tokens(N, seed + 1700, 5)
    order = np.random.default_rng([seed + 1700, 4]).permutation(N)
    old_study = ([old[i] for i in order], ["real" if i < N // 2 else "fake" for i in order])
    name, right, total, p = worst_recipe([old_study], seeds)
    assert right == total == N and p < threshold, (name, right, p)
    # Fresh studies, secrets drawn by make from the operating system: chance.
    studies = []
    for i in range(4):
        folder = make_translation(cyclegan, tmp_path / f"s{i}")
        ids = [image["id"] for image in page_data((folder / "study.html").read_text())["images"]]
        key = json.loads((folder / "key.json").read_text())
        assert ids == [e["image_id"] for e in key["images"]]
        studies.append((ids, [e["truth"] for e in key["images"]]))
    name, right, total, p = worst_recipe(studies, seeds)
    assert p > threshold, f"{name!r} guessed {right} of {total} (p = {p:.2g})"
    # Brute force over 10,000 seeds: no page id is in any seed's id stream.
    page_ids = {i for ids, _ in studies for i in ids}
    for candidate in range(10_000):
        assert page_ids.isdisjoint(_old_tokens(N, candidate, 5)), f"seed {candidate} draws a page id"


def test_every_image_is_encoded_alike_and_bytes_tell_nothing(cyclegan, translation_study, tmp_path):
    page = (translation_study / "study.html").read_text()
    key = json.loads((translation_study / "key.json").read_text())
    images = page_data(page)["images"]
    assert key["n_real"] + key["n_fake"] == N
    # Every per-image byte feature a reader could measure is one value for every image: the
    # entry's keys and layout, its id length, the base64 length, the decoded length.
    features = {(tuple(image), len(image["id"]), len(image["pixels"]), len(base64.b64decode(image["pixels"])))
                for image in images}
    assert features == {(("id", "pixels"), 14, len(base64.b64encode(bytes(SIZE * SIZE * 2))), SIZE * SIZE * 2)}
    entries = re.findall(r'\{"id":"img-[0-9a-f]{10}","pixels":"[A-Za-z0-9+/=]+"\}', page)
    assert len(entries) == N and len({len(e) for e in entries}) == 1
    assert "data:image/png" not in page and "iVBORw0KGgo" not in page  # no PNG (sizes, filters, chunks) at all
    # The pixels are the stored values x 65535, rounded: real ones computed here from the test set.
    with np.load(cyclegan["test_b"]) as npz:
        stored = npz["images"]
    for image, entry in zip(images, key["images"]):
        pixels = np.frombuffer(base64.b64decode(image["pixels"]), dtype="<u2").reshape(SIZE, SIZE)
        assert (np.asarray(Image.open(translation_study / entry["file"])) == pixels).all()  # the organiser's copy
        if entry["truth"] == "real":
            assert (pixels == np.rint(stored[entry["source"]["index"]].astype(np.float64) * 65535)).all()
    # Nothing else in the page depends on the draw: two studies with other coins (other counts)
    # give the same page once ids, pixels and the study id are blanked.
    other = make_translation(cyclegan, tmp_path / "other",
                             secret=secret_with(N, lambda t: t.count("real") != key["n_real"]))
    blank = lambda text: re.sub(r'"pixels":"[^"]*"|img-[0-9a-f]{10}|\b[0-9a-f]{12}\b', "X", text)
    assert blank(page) == blank((other / "study.html").read_text())


def test_the_organisers_images_folder_tells_nothing_by_its_file_sizes(translation_study):
    """images/ is not for readers, but a folder sent by mistake must not give the key away as the
    first version's PNGs did: a compressed PNG's size follows the content (a noisy generated image
    compresses worse), so every copy is stored uncompressed and has one size."""
    files = sorted((translation_study / "images").glob("*.png"))
    assert len(files) == N
    assert len({path.stat().st_size for path in files}) == 1
    assert files[0].stat().st_size >= SIZE * SIZE * 2  # the pixels are all there, not compressed


def decoded_pixels(folder: Path) -> list[np.ndarray]:
    """Every image of a study's page as the reader's computer decodes it (16-bit codes)."""
    images = page_data((folder / "study.html").read_text())["images"]
    return [np.frombuffer(base64.b64decode(image["pixels"]), dtype="<u2") for image in images]


def stored_at(path: Path, out: Path, levels: int) -> Path:
    """A copy of a test set whose values sit on the grid k / ``levels``, as the X-ray stage stores
    8-bit films (k / 255) or a CT window of integer HU without resampling stores k / width."""
    with np.load(path) as npz:
        data = {name: npz[name] for name in npz.files}
    data["images"] = (np.rint(data["images"].astype(np.float64) * levels) / levels).astype(np.float32)
    np.savez(out, **data)
    return out


def test_real_images_stored_at_8_bit_lend_their_grid_to_every_image(cyclegan, tmp_path):
    """The X-ray test sets hold 8-bit values (k / 255: every 16-bit code a multiple of 257); a
    translator's output is continuous. A reader who calls an image real when all its codes are
    multiples of 257 (or when it has at most 256 distinct values) would be right every time, and a
    narrow window would show the real images banded and the generated ones smooth. Every image is
    therefore shown on the real images' grid: the attack finds the same for every image."""
    test_b = stored_at(cyclegan["test_b"], tmp_path / "test_b.npz", 255)
    folder = tmp_path / "study"
    make_study("rs_cyclegan", cyclegan["model"], folder, SETTINGS, test_a=cyclegan["test_a"], test_b=test_b,
               secret=secret_with(N, lambda t: 8 <= t.count("real") <= 16))
    key = json.loads((folder / "key.json").read_text())
    pixels = decoded_pixels(folder)
    assert {bool((codes % 257 == 0).all()) for codes in pixels} == {True}
    assert max(len(np.unique(codes)) for codes in pixels) <= 256
    # The real images are shown exactly as stored; the generated ones were moved to that grid.
    with np.load(test_b) as npz:
        stored = npz["images"]
    for codes, entry in zip(pixels, key["images"]):
        if entry["truth"] == "real":
            assert (codes.reshape(SIZE, SIZE) == np.rint(stored[entry["source"]["index"]] * 255).astype(int) * 257).all()
    assert json.loads((folder / "study.json").read_text())["display"]["stored_levels"] == 255


@pytest.mark.parametrize("levels", [1, 2, 255, 256, 2000, 4095, 65534])
def test_the_grid_of_the_real_images_is_found(levels, tmp_path):
    rng = np.random.default_rng(levels)
    values = np.clip(rng.normal(0.4, 0.3, (5, 16, 16)), 0, 1)
    on_grid = (np.rint(values * levels) / levels).astype(np.float32)
    assert lattice_levels(on_grid) == levels
    assert lattice_levels(values.astype(np.float32)) is None  # continuous values: no grid
    assert lattice_levels((np.rint(values * 65535) / 65535).astype(np.float32)) is None  # the page's own 16 bits


def test_page_is_self_contained_and_holds_no_trace_of_the_key(translation_study):
    page = (translation_study / "study.html").read_text()
    key = json.loads((translation_study / "key.json").read_text())
    # Self-contained: no URL, no external script, style, font or frame, no request API; and a
    # Content-Security-Policy that forbids every fetch, so nothing can load even by mistake.
    assert not re.search(r"https?:|//[a-z0-9.-]+\.[a-z]{2,}|<link|@import|\burl\(|fetch\(|XMLHttpRequest|WebSocket|"
                         r"sendBeacon|<iframe|<img|src=", page, flags=re.I)
    assert "default-src 'none'" in page
    for entry in key["images"]:
        for secret in (entry["source"].get("subject_id"), (entry["source"].get("translated_from") or {}).get("subject_id"),
                       entry["file"]):
            assert secret is None or secret not in page
    for secret in ("dom_a", "dom_b", "d_score", "truth", "translated", key["secret"], "key.json"):
        assert secret not in page
    # No count or ratio is stated: the numbers of real and generated images appear nowhere.
    text = re.sub(r"<script.*?</script>|<style.*?</style>|<[^>]+>", " ", page, flags=re.S)
    assert not re.search(r"\b\d+\s+(of them\s+)?(are\s+)?(real|generated)", text)


# ---- the draw ----

def test_truths_are_independent_fair_coins():
    truths = np.array([[t == "real" for t in draw_truths(N, s)] for s in SECRETS])  # 400 studies x 24
    counts = truths.sum(axis=1)
    assert binomtest(int(truths.sum()), truths.size, 0.5).pvalue > 0.001
    assert len(set(counts.tolist())) > 5  # the count varies from study to study (not fixed at 12)
    for position in range(N):  # every position is real half of the time
        assert binomtest(int(truths[:, position].sum()), len(SECRETS), 0.5).pvalue > 0.001 / N
    agree = (truths[:, 1:] == truths[:, :-1]).sum()  # neighbours agree half of the time (no runs, no alternation)
    assert binomtest(int(agree), truths[:, 1:].size, 0.5).pvalue > 0.001
    assert draw_truths(N, SECRETS[0]) == draw_truths(N, SECRETS[0])
    with pytest.raises(ConfigError, match="64 lower-case hex digits"):
        draw_truths(N, "42")


def test_draw_is_random_one_image_per_patient_and_from_the_test_sets(translation_study, cyclegan, tmp_path):
    key = json.loads((translation_study / "key.json").read_text())
    real = [e["source"] for e in key["images"] if e["truth"] == "real"]
    fake = [e["source"]["translated_from"] for e in key["images"] if e["truth"] == "fake"]
    assert len(real) == key["n_real"] and len(fake) == key["n_fake"]
    assert {s["file"] for s in real} == {str(cyclegan["test_b"])} and {s["file"] for s in fake} == {str(cyclegan["test_a"])}
    for drawn in (real, fake):
        # No patient twice: two slices of one head look alike, and a reader who pairs them learns
        # that both share a truth (or, when one side repeats patients and the other does not, which).
        assert len({s["subject_id"] for s in drawn}) == len(drawn)
    # Which slice of a patient is random: over studies, both slices of the test patients appear.
    slices = set()
    for secret in SECRETS[:6]:
        draw = json.loads((make_translation(cyclegan, tmp_path / secret[:6], secret=secret) / "key.json").read_text())
        slices |= {e["source"]["index"] for e in draw["images"] if e["truth"] == "real"}
    with np.load(cyclegan["test_b"]) as npz:
        subjects = npz["subject_ids"][sorted(slices)]
    assert len(set(subjects.tolist())) < len(slices)  # some patient was shown by one slice here, another there
    # The shown fakes are the model's translations of the recorded source slices.
    translator = load_trained(cyclegan["model"])
    with np.load(cyclegan["test_a"]) as npz:
        sources = npz["images"][[s["index"] for s in fake]]
    translated = translator.translate("a_to_b", sources)
    for image, entry in zip(translated, [e for e in key["images"] if e["truth"] == "fake"]):
        shown = np.asarray(Image.open(translation_study / entry["file"]))
        assert (shown == np.rint(np.asarray(image, np.float64) * 65535)).all()


def test_spread_over_patients_balances_and_leaves_out_excluded_patients(tmp_path):
    subjects = np.array(["p1"] * 10 + ["p2"] * 3 + ["p3"] * 5 + ["p4"] * 4)
    for seed in range(5):
        picked = spread_over_subjects(subjects, 7, np.random.default_rng(seed), tmp_path / "t.npz", frozenset({"p4"}))
        counts = dict(zip(*np.unique(subjects[picked], return_counts=True)))
        assert len(set(picked.tolist())) == 7 and "p4" not in counts
        assert sorted(counts.values()) == [2, 2, 3]  # 3 patients, 7 images: nobody thrice before everyone twice
    with pytest.raises(InputDataError, match=r"t.npz: holds 18 usable images \(1 patients left out"):
        spread_over_subjects(subjects, 19, np.random.default_rng(0), tmp_path / "t.npz", frozenset({"p4"}))


def test_too_few_test_patients_is_a_clear_error_whatever_the_coins(cyclegan, cgan, tmp_path):
    for secret in SECRETS[:3]:
        with pytest.raises(InputDataError, match=r"dom_a/test.npz: holds 30 patients to translate from; the study "
                                                 r"may need 31 .*lower reader_study.n_images"):
            make_translation(cyclegan, tmp_path / "s", with_settings(n_images=31), secret)
        with pytest.raises(InputDataError, match=r"labelled/test.npz: holds 30 real patients; the study may need 31"):
            make_study("x", cgan["model"], tmp_path / "s", with_settings(n_images=31), real=cgan["real"], secret=secret)
    assert not (tmp_path / "s").exists()


def slab_test_set(path: Path, patients: int, slices: int, prefix: str, seed: int) -> Path:
    """A test set laid out as the slices stage writes slabs: several neighbouring, nearly
    identical slices of each patient."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:SIZE, :SIZE] / SIZE
    images, subjects = [], []
    for patient in range(patients):
        cy, cx, radius, level = *rng.uniform(0.3, 0.7, 2), rng.uniform(0.15, 0.35), rng.uniform(0.5, 1.0)
        for s in range(slices):
            disc = np.where((yy - cy) ** 2 + (xx - cx) ** 2 < (radius + 0.01 * s) ** 2, level, 0.1)
            images.append(np.clip(disc + rng.normal(0, 0.01, (SIZE, SIZE)), 0, 1))
            subjects.append(f"{prefix}{patient}")
    np.savez(path, images=np.asarray(images, np.float32), subject_ids=np.array(subjects),
             slice_index=np.arange(len(subjects)) % slices, labels=(np.arange(len(subjects)) % 2).astype(np.int64))
    return path


def test_a_test_set_of_few_patients_in_slabs_is_refused_not_shown_twice_per_patient(cyclegan, cgan, tmp_path):
    """The default profile's test sets hold 8 patients of 5 neighbouring slices each. The first
    version drew 24 images from them: every patient two or three times, near-identical images
    a reader pairs at a glance; when the other side's test set has more patients, a pair is
    always of the side with fewer (the truth at a glance), and even when not, paired answers
    make the binomial test too liberal. Now such a study is refused, whatever the coins; one
    image per patient builds."""
    slabs = slab_test_set(tmp_path / "slabs.npz", patients=6, slices=5, prefix="s", seed=4)  # 30 slices
    for secret in SECRETS[:3]:
        with pytest.raises(InputDataError, match=r"slabs.npz: holds 6 real patients; the study may need 24 "
                                                 r"\(one image per patient"):
            make_study("x", cyclegan["model"], tmp_path / "t", SETTINGS, test_a=cyclegan["test_a"], test_b=slabs,
                       secret=secret)
        with pytest.raises(InputDataError, match=r"slabs.npz: holds 6 real patients; the study may need 24"):
            make_study("x", cgan["model"], tmp_path / "g", SETTINGS, real=slabs, secret=secret)
    assert not (tmp_path / "t").exists() and not (tmp_path / "g").exists()
    make_study("x", cyclegan["model"], tmp_path / "t", with_settings(n_images=6), test_a=cyclegan["test_a"],
               test_b=slabs, secret=secret_with(6, lambda t: t.count("real") >= 4))
    real = [e["source"]["subject_id"] for e in read_key(tmp_path / "t" / "key.json")["images"] if e["truth"] == "real"]
    assert len(real) >= 4 and len(set(real)) == len(real)


def test_patients_in_both_test_sets_are_shown_on_one_side_only_whatever_the_coins(cyclegan, tmp_path):
    """Paired data (the same patients scanned in both modalities, under one id): a translation
    next to the real scan of its own patient would pair them. Such patients are split once,
    by the secret, between the two sides (half each), so the supply a study needs does not
    depend on the coins: it builds for every secret or for none."""
    with np.load(cyclegan["test_a"]) as npz:
        source_ids = npz["subject_ids"]
    with np.load(cyclegan["test_b"]) as npz:
        paired = {name: npz[name] for name in npz.files}
    paired["subject_ids"] = source_ids  # the same 30 patients as domain a
    np.savez(tmp_path / "paired_b.npz", **paired)
    for secret in SECRETS[:3]:  # 15 patients per side: 20 images may need 20 of one side
        with pytest.raises(InputDataError, match=r"dom_a/test.npz: holds 15 patients to translate from \(15 of the "
                                                 r"30 patients in both test sets are kept for the real images\)"):
            make_study("x", cyclegan["model"], tmp_path / "s", with_settings(n_images=20), test_a=cyclegan["test_a"],
                       test_b=tmp_path / "paired_b.npz", secret=secret)
    for secret in SECRETS[:5]:
        make_study("x", cyclegan["model"], tmp_path / "s", with_settings(n_images=12), test_a=cyclegan["test_a"],
                   test_b=tmp_path / "paired_b.npz", secret=secret)
        key = read_key(tmp_path / "s" / "key.json")
        real = {e["source"]["subject_id"] for e in key["images"] if e["truth"] == "real"}
        translated = {e["source"]["translated_from"]["subject_id"] for e in key["images"] if e["truth"] == "fake"}
        assert real.isdisjoint(translated) and key["patients_in_both_test_sets"] == 30


@pytest.mark.parametrize("side", ["real", "fake"])
def test_a_class_the_coins_leave_empty_builds_and_scores(cyclegan, cgan, tmp_path, side):
    secret = secret_with(3, lambda t: t == [side] * 3)
    key_paths = [make_translation(cyclegan, tmp_path / "t", with_settings(n_images=3), secret) / "key.json"]
    make_study("rs_cgan", cgan["model"], tmp_path / "g", with_settings(n_images=3), real=cgan["real"], secret=secret)
    key_paths.append(tmp_path / "g" / "key.json")
    for key_path in key_paths:
        key = read_key(key_path)
        assert [e["truth"] for e in key["images"]] == [side] * 3
        answers = read_answers(write_answers(tmp_path / "a.csv", key, "a", lambda e: "real"), key)
        scores = score_study(key, [answers])
        reader = scores["readers"]["a"]
        assert reader["accuracy"]["value"] == (1.0 if side == "real" else 0.0)
        empty = "sensitivity_fake" if side == "real" else "specificity_fake"
        assert reader[empty]["value"] is None and reader["auc"]["value"] is None


def test_conditional_generator_takes_classes_of_class_donors_and_picks_by_its_discriminator(cgan, tmp_path):
    settings = with_settings(n_images=8, pick="best_by_discriminator", candidates_per_image=3)
    secret = secret_with(8, lambda t: t.count("fake") >= 3)
    study = make_study("rs_cgan", cgan["model"], tmp_path / "study", settings, real=cgan["real"],
                       checkpoint=cgan["checkpoint"], secret=secret)
    key = json.loads((tmp_path / "study" / "key.json").read_text())
    assert study["task"] == "generation" and key["pick"] == "best_by_discriminator" and key["candidates_per_image"] == 3
    fakes = [e["source"] for e in key["images"] if e["truth"] == "fake"]
    with np.load(cgan["real"]) as npz:
        test_labels = set(npz["labels"].tolist())
    assert {f["label"] for f in fakes} <= test_labels
    # Independently: rebuild D from the checkpoint, score every candidate, take the best of each 3.
    export = torch.load(cgan["model"], weights_only=True)
    state = torch.load(cgan["checkpoint"], weights_only=True)
    model = ConditionalDCGAN(export["config"], None, 0, image_size=(SIZE, SIZE))
    model.D.load_state_dict(state["networks"]["D"])
    model.D.eval()
    sampler = load_trained(cgan["model"])
    slots = sorted(fakes, key=lambda f: f["sample_index"])
    labels = np.repeat([f["label"] for f in slots], 3)
    candidates = sampler.sample(len(labels), labels=labels, seed=fakes[0]["sampler_seed"])
    with torch.no_grad():
        scores = model.D(torch.from_numpy(candidates)[:, None] * 2 - 1, torch.from_numpy(labels)).numpy()
    best = np.arange(len(slots)) * 3 + scores.reshape(-1, 3).argmax(axis=1)
    assert sorted(f["sample_index"] for f in fakes) == sorted(best.tolist())
    for f in fakes:
        assert f["d_score"] == pytest.approx(float(scores[f["sample_index"]]), abs=1e-5)


def test_best_by_discriminator_needs_the_matching_checkpoint(cyclegan, tmp_path):
    settings = with_settings(n_images=8, pick="best_by_discriminator", candidates_per_image=2)
    missing = tmp_path / "checkpoint.pt"
    with pytest.raises(InputDataError, match="checkpoint.pt: not found"):
        make_study("x", cyclegan["model"], tmp_path / "s", settings, test_a=cyclegan["test_a"],
                   test_b=cyclegan["test_b"], checkpoint=missing)
    state = torch.load(cyclegan["checkpoint"], weights_only=True)
    state["networks"]["G_ab"] = {k: v + 1 if v.is_floating_point() else v for k, v in state["networks"]["G_ab"].items()}
    torch.save(state, missing)
    with pytest.raises(InputDataError, match="its G_ab differs from the one in"):
        make_study("x", cyclegan["model"], tmp_path / "s", settings, test_a=cyclegan["test_a"],
                   test_b=cyclegan["test_b"], checkpoint=missing)
    assert not (tmp_path / "s").exists()
    study = make_study("x", cyclegan["model"], tmp_path / "ok", with_settings(n_images=8, pick="best_by_discriminator",
                       candidates_per_image=2, direction="b_to_a"), test_a=cyclegan["test_a"],
                       test_b=cyclegan["test_b"], checkpoint=cyclegan["checkpoint"],
                       secret=secret_with(8, lambda t: t.count("fake") >= 2))
    fakes = [e["source"] for e in json.loads((tmp_path / "ok" / "key.json").read_text())["images"] if e["truth"] == "fake"]
    assert study["generated"]["direction"] == "b_to_a"
    assert all(f["d_score"] == max(f["candidate_d_scores"]) and len(f["candidate_d_scores"]) == 2 for f in fakes)
    assert {f["translated_from"]["file"] for f in fakes} == {str(cyclegan["test_b"])}


def test_a_model_is_taken_by_its_task_and_nothing_else():
    class OldTranslator:
        def translate(self, direction, images):
            return images

    class Sampler:
        task = "generation"

    assert model_task(OldTranslator(), Path("m.pt")) == "translation"
    with pytest.raises(PipelineError, match="m.pt: the model declares no task and has no translate"):
        model_task(object(), Path("m.pt"))
    with pytest.raises(PipelineError, match="task 'generation' without the matching"):
        model_task(Sampler(), Path("m.pt"))


# ---- answers files ----

@pytest.mark.parametrize("problem, match", [
    ("missing", r"b\.csv: answers 23 of 24 images; missing: img-[0-9a-f]{10} \(position 24\)"),
    ("unknown", r"b\.csv: row 3: unknown image id 'img-0000000000'"),
    ("duplicate", r"b\.csv: row 26: image 'img-[0-9a-f]{10}' is answered twice \(first in row 2\)"),
    ("answer", r"b\.csv: row 5: answer 'maybe' must be real or fake"),
    ("confidence", r"b\.csv: row 4: confidence '7' must be one of 1, 2, 3, 4, 5"),
    ("study", r"b\.csv: row 2: study_id 'other' is not this key's study"),
    ("header", r"b\.csv: row 1 \(header\) lacks column\(s\) \['confidence'\]"),
    ("fields", r"b\.csv: row 6: 5 fields, the header has 6"),
    ("reader", r"b\.csv: row 7: reader 'someone' differs from 'b'"),
    ("position", r"b\.csv: row 8: image 'img-[0-9a-f]{10}' was shown at position 7, the row says '99'"),
])
def test_malformed_answers_name_the_file_and_row(translation_study, tmp_path, problem, match):
    key = read_key(translation_study / "key.json")
    path = write_answers(tmp_path / "b.csv", key, "b", lambda e: e["truth"])
    lines = path.read_text().splitlines()
    if problem == "missing":
        lines = lines[:-1]
    elif problem == "unknown":
        lines[2] = re.sub(r"img-[0-9a-f]{10}", "img-0000000000", lines[2])
    elif problem == "duplicate":
        lines.append(lines[1])
    elif problem == "answer":
        lines[4] = re.sub(r",(real|fake),", ",maybe,", lines[4])
    elif problem == "confidence":
        lines[3] = lines[3][:-1] + "7"
    elif problem == "study":
        lines[1] = "other" + lines[1][len(key["study_id"]):]
    elif problem == "header":
        lines[0] = lines[0].replace(",confidence", "")
    elif problem == "fields":
        lines[5] = lines[5].rsplit(",", 1)[0]
    elif problem == "reader":
        lines[6] = lines[6].replace(",b,", ",someone,", 1)
    elif problem == "position":
        lines[7] = re.sub(r",7,", ",99,", lines[7])
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(InputDataError, match=match):
        read_answers(path, key)


def test_a_key_of_the_seeded_format_is_refused(translation_study, tmp_path):
    key = json.loads((translation_study / "key.json").read_text())
    key["format"] = 1
    (tmp_path / "key.json").write_text(json.dumps(key))
    with pytest.raises(InputDataError, match=r"key.json: is a key of format 1; this version reads formats 2, 3"):
        read_key(tmp_path / "key.json")


def test_a_key_of_the_previous_draw_is_scored_but_not_rebuilt(cyclegan, translation_study, tmp_path):
    """Format 2 keys (slices spread over patients, no value grid) belong to pages readers may be
    answering: their answers are scored; a rebuild would draw other images, so it is refused."""
    from pipeline.reader_study.make import rebuild_study

    key = json.loads((translation_study / "key.json").read_text())
    key["format"] = 2
    (tmp_path / "key.json").write_text(json.dumps(key))
    old = read_key(tmp_path / "key.json")
    answers = read_answers(write_answers(tmp_path / "a.csv", old, "a", lambda e: e["truth"]), old)
    assert score_study(old, [answers])["readers"]["a"]["accuracy"]["value"] == 1.0
    with pytest.raises(InputDataError, match=r"key.json: is a key of format 2, drawn by an earlier version"):
        rebuild_study(tmp_path / "key.json", cyclegan["model"], tmp_path / "again", test_a=cyclegan["test_a"],
                      test_b=cyclegan["test_b"])
    assert not (tmp_path / "again").exists()


# ---- CLI and Snakemake ----

def test_cli_scores_writes_the_figure_and_logs_into_the_mlflow_run(translation_study, cyclegan, tmp_path):
    key = read_key(translation_study / "key.json")
    right = write_answers(tmp_path / "answers_right.csv", key, "right", lambda e: e["truth"])
    real = write_answers(tmp_path / "answers_real.csv", key, "all_real", lambda e: "real")
    out, figure = tmp_path / "scores.json", tmp_path / "grid.png"
    assert main(["score", str(translation_study / "key.json"), str(right), str(real), "--out", str(out),
                 "--figure", str(figure), "--run-json", str(cyclegan["run"])]) == 0
    scores = json.loads(out.read_text())
    share_real = key["n_real"] / N
    assert scores["readers"]["all_real"]["accuracy"]["value"] == pytest.approx(share_real)
    assert scores["readers"]["all_real"]["specificity_fake"]["value"] == 1
    assert scores["readers"]["all_real"]["sensitivity_fake"]["value"] == 0
    assert Image.open(figure).size[0] > 600
    run = json.loads(cyclegan["run"].read_text())
    metrics = mlflow.MlflowClient(run["tracking_uri"]).get_run(run["run_id"]).data.metrics
    assert metrics["reader_study/right/accuracy"] == 1.0
    assert metrics["reader_study/pooled/accuracy"] == pytest.approx((1 + share_real) / 2)
    assert metrics["reader_study/all_real/fakes_taken_for_real"] == 1.0
    assert "reader_study/pooled/accuracy_ci95_low" in metrics and "reader_study/pooled/p_value_vs_chance" in metrics
    # The same reader twice is an error naming the second file.
    assert main(["score", str(translation_study / "key.json"), str(right), str(right)]) == 1


def test_cli_make_takes_missing_values_from_params(cyclegan, tmp_path, repo_root):
    import yaml

    params = yaml.safe_load((repo_root / "params.yaml").read_text())
    params["reader_study"]["n_images"] = 10
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    out = tmp_path / "study"
    args = ["make", "cyclegan_ct_mri", "--params", str(tmp_path / "params.yaml"), "--model", str(cyclegan["model"]),
            "--test-a", str(cyclegan["test_a"]), "--test-b", str(cyclegan["test_b"]), "--out", str(out),
            "--window-preset", "soft:0.1:0.9"]
    assert main(args) == 0
    study = json.loads((out / "study.json").read_text())
    section = params["reader_study"]
    assert study["settings"]["n_images"] == 10 and study["page"]["n_images"] == 10
    assert study["settings"]["display_window"] == section["display_window"]
    assert study["display"]["window_presets"] == {"soft": [0.1, 0.9]}
    assert page_data((out / "study.html").read_text())["presets"] == [["soft", 0.1, 0.9]]
    assert main(["make", "no_such_experiment", "--params", str(tmp_path / "params.yaml")]) == 1
    assert main([*args[:-2], "--window-preset", "soft"]) == 1


@pytest.mark.slow
def test_the_tiny_profile_builds_a_study_and_a_changed_knob_draws_a_new_one(built_tiny_repo, tmp_path):
    """configs/tiny.yaml end to end: the session's tiny chain (its one-patient test sets, its
    CycleGAN) gives a study through the Snakemake rule; a changed knob reruns it, and the first key is kept.
    Leaves the built repository as it found it."""
    import shutil

    import yaml
    from workflow_support import run

    work = built_tiny_repo
    target = "results/cyclegan_ct_mri/reader_study"
    made = [work / target, work / "results/cyclegan_ct_mri/reader_study_keys", work / "logs/reader_study"]
    assert not any(path.exists() for path in made)
    command = ["snakemake", "--cores", "1", "--allowed-rules", "reader_study"]
    try:
        run([*command, "--", target], work)
        params = yaml.safe_load((work / "params.yaml").read_text())
        study = json.loads((work / target / "study.json").read_text())
        key = json.loads((work / target / "key.json").read_text())
        assert study["page"]["n_images"] == params["reader_study"]["n_images"] == len(key["images"])
        assert study["generated"]["direction"] == params["reader_study"]["direction"]
        assert {p.name for p in (work / target).iterdir() if p.name != ".snakemake_timestamp"} == {
            "study.html", "key.json", "study.json", "images"}
        other_knobs = tmp_path / "other.yaml"
        other_knobs.write_text(yaml.safe_dump({"reader_study": {"display_window": [0.1, 0.9]}}))
        run([*command, "--configfile", str(other_knobs), "--", target], work)
        other = json.loads((work / target / "key.json").read_text())
        assert other["settings"]["display_window"] == [0.1, 0.9] and other["secret"] != key["secret"]
        kept = {p.name for p in made[1].iterdir()}
        assert kept == {f"{key['study_id']}.json", f"{other['study_id']}.json"}
    finally:
        run(["snakemake", "--cleanup-metadata", target], work, check=False)
        for path in made:
            shutil.rmtree(path, ignore_errors=True)


def test_a_discriminator_that_scores_an_image_by_its_batchmates_is_refused_as_the_judge(cgan, tmp_path):
    """With model.d_minibatch_std D's score of one candidate depends on the others scored with it."""
    from pipeline.reader_study.draw import load_discriminator

    export = torch.load(cgan["model"], weights_only=True)
    export["config"] = {**export["config"], "d_minibatch_std": 4}
    torch.save(export, tmp_path / "model.pt")
    with pytest.raises(ConfigError, match=r"model.pt's D sees the spread of each group of 4 images"):
        load_discriminator(tmp_path / "model.pt", cgan["checkpoint"], None)
    load_discriminator(cgan["model"], cgan["checkpoint"], None)  # the same run without the option is a judge
