"""The reader study on tiny models trained through the real engine: a fair draw, one rendering,
a page without the key, the same study for the same seed, and scores checked against
independent computations (scipy's beta quantiles and Mann-Whitney U)."""
from __future__ import annotations

import base64
import csv
import json
import re
import struct
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch
from PIL import Image
from scipy.stats import beta, mannwhitneyu

from pipeline.errors import ConfigError, InputDataError, PipelineError
from pipeline.models import load_trained
from pipeline.models.dcgan import ConditionalDCGAN
from pipeline.reader_study import ANSWER_COLUMNS
from pipeline.reader_study.__main__ import main
from pipeline.reader_study.draw import model_task, spread_over_subjects
from pipeline.reader_study.make import StudySettings, make_study
from pipeline.reader_study.render import render_png
from pipeline.reader_study.score import read_answers, read_key, score_study
from reader_study_support import N_SUBJECTS, SIZE, train_cgan, train_cyclegan

N = 12
SETTINGS = StudySettings(n_per_class=N, pick="random", candidates_per_image=3, display_size=96,
                         display_window=(0.0, 1.0), confidence=True, direction="a_to_b", n_boot=500, seed=987654)


def with_settings(**changes) -> StudySettings:
    return StudySettings(**{**SETTINGS.__dict__, **changes})


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"


@pytest.fixture(scope="module")
def cyclegan(tmp_path_factory, store):
    return train_cyclegan(tmp_path_factory.mktemp("cyclegan"), store)


@pytest.fixture(scope="module")
def cgan(tmp_path_factory, store):
    return train_cgan(tmp_path_factory.mktemp("cgan"), store)


def make_translation(cyclegan, out: Path, settings: StudySettings = SETTINGS) -> Path:
    make_study("rs_cyclegan", cyclegan["model"], out, settings, test_a=cyclegan["test_a"], test_b=cyclegan["test_b"],
               checkpoint=cyclegan["checkpoint"])
    return out


@pytest.fixture(scope="module")
def translation_study(cyclegan, tmp_path_factory):
    return make_translation(cyclegan, tmp_path_factory.mktemp("study") / "reader_study")


def files_of(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def png_chunks(data: bytes) -> list[str]:
    """Chunk types of a PNG, parsed by hand (signature, then length / type / data / CRC)."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    chunks, offset = [], 8
    while offset < len(data):
        (length,) = struct.unpack(">I", data[offset:offset + 4])
        chunks.append(data[offset + 4:offset + 8].decode("ascii"))
        offset += 12 + length
    return chunks


def write_answers(path: Path, key: dict, reader: str, answer_of, confidence_of=lambda entry: 5, rows=None) -> Path:
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(ANSWER_COLUMNS)
        for entry in rows if rows is not None else key["images"]:
            writer.writerow([key["study_id"], reader, entry["image_id"], entry["position"], answer_of(entry),
                             confidence_of(entry)])
    return path


def test_same_seed_same_study_byte_for_byte_other_seed_another(cyclegan, translation_study, tmp_path):
    again = make_translation(cyclegan, tmp_path / "again")
    first, second = files_of(translation_study), files_of(again)
    assert first.keys() == second.keys() and all(first[name] == second[name] for name in first)
    other = make_translation(cyclegan, tmp_path / "other", with_settings(seed=987655))
    key, other_key = (json.loads((d / "key.json").read_text()) for d in (translation_study, other))
    assert key["study_id"] != other_key["study_id"]
    drawn = lambda k, truth: {json.dumps(e["source"], sort_keys=True) for e in k["images"] if e["truth"] == truth}
    assert drawn(key, "real") != drawn(other_key, "real") and drawn(key, "fake") != drawn(other_key, "fake")
    assert [e["truth"] for e in key["images"]] != [e["truth"] for e in other_key["images"]]


def test_page_is_self_contained_and_holds_no_trace_of_the_key(translation_study):
    page = (translation_study / "study.html").read_text()
    key = json.loads((translation_study / "key.json").read_text())
    study = json.loads((translation_study / "study.json").read_text())
    # Self-contained: no URL, no external script, style or font, no request.
    assert not re.search(r"https?://|<link|@import|\burl\(|fetch\(|XMLHttpRequest|src=\"(?!data:image/png;base64,)", page)
    # Nothing per image but its random token and pixels: no truth, source, patient, score or seed.
    for entry in key["images"]:
        for secret in (entry["source"].get("subject_id"), (entry["source"].get("translated_from") or {}).get("subject_id"),
                       entry["file"]):
            assert secret is None or secret not in page
    for secret in ("dom_a", "dom_b", "d_score", "truth", "translated", str(key["seed"]), "key.json"):
        assert secret not in page
    # Every item is the same HTML once its token, position and pixels are blanked.
    items = re.findall(r'<section class="item".*?</section>', page, flags=re.S)
    assert len(items) == 2 * N
    blank = {re.sub(r"img-[0-9a-f]{10}|data:image/png;base64,[A-Za-z0-9+/=]+|\b\d+\b", "X", item) for item in items}
    assert len(blank) == 1
    # "real" / "fake" occur only as the radio values and labels of each item (and the instructions).
    outside = re.sub(r'<section class="item".*?</section>', "", page, flags=re.S)
    assert page.count('value="fake"') == 2 * N and "fake" not in outside
    # The page shows the key's images in the key's order, byte for byte.
    shown = re.findall(r'data-image-id="(img-[0-9a-f]{10})"', page)
    assert shown == [e["image_id"] for e in key["images"]]
    uris = re.findall(r"data:image/png;base64,([A-Za-z0-9+/=]+)", page)
    assert [base64.b64decode(u) for u in uris] == [(translation_study / e["file"]).read_bytes() for e in key["images"]]
    assert study["files"]["for_readers"] == ["study.html"]


def test_real_and_generated_images_pass_through_one_rendering(translation_study):
    key = json.loads((translation_study / "key.json").read_text())
    seen = {"real": set(), "fake": set()}
    for entry in key["images"]:
        data = (translation_study / entry["file"]).read_bytes()
        chunks = png_chunks(data)
        assert chunks[0] == "IHDR" and chunks[-1] == "IEND" and set(chunks[1:-1]) == {"IDAT"}  # no metadata chunk
        image = Image.open(translation_study / entry["file"])
        seen[entry["truth"]].add((image.size, image.mode, image.info.get("dpi"), tuple(sorted(image.info))))
        assert re.fullmatch(r"img-[0-9a-f]{10}", entry["image_id"]) and entry["file"] == f"images/{entry['image_id']}.png"
    assert seen["real"] == seen["fake"] == {((96, 96), "L", None, ())}


def test_rendering_windows_and_rounds_as_stated():
    ramp = np.array([[0.0, 0.25, 0.5, 0.75, 1.0]], dtype=np.float32).repeat(5, axis=0)
    shown = np.asarray(Image.open(__import__("io").BytesIO(render_png(ramp, 5, (0.25, 0.75)))))
    # (v - 0.25) / 0.5 clipped to [0, 1], times 255, rounded half to even: 0, 0, 128, 255, 255.
    assert shown.shape == (5, 5) and (shown == [0, 0, 128, 255, 255]).all()
    with pytest.raises(ConfigError, match="display_window"):
        render_png(ramp, 5, (0.5, 0.5))


def test_draw_is_random_spread_over_patients_and_from_the_test_sets(translation_study, cyclegan):
    key = json.loads((translation_study / "key.json").read_text())
    real = [e["source"] for e in key["images"] if e["truth"] == "real"]
    fake = [e["source"]["translated_from"] for e in key["images"] if e["truth"] == "fake"]
    assert {s["file"] for s in real} == {str(cyclegan["test_b"])} and {s["file"] for s in fake} == {str(cyclegan["test_a"])}
    for drawn in (real, fake):
        per_patient = np.unique([s["subject_id"] for s in drawn], return_counts=True)[1]
        assert len(per_patient) == N_SUBJECTS and set(per_patient) == {N // N_SUBJECTS}  # 12 from 6 patients: 2 each
        assert len({s["index"] for s in drawn}) == N
    # The shown fakes are the model's translations of the recorded source slices.
    translator = load_trained(cyclegan["model"])
    with np.load(cyclegan["test_a"]) as npz:
        sources = npz["images"][[s["index"] for s in fake]]
    translated = translator.translate("a_to_b", sources)
    fakes = [e for e in key["images"] if e["truth"] == "fake"]
    for image, entry in zip(translated, fakes):
        assert (translation_study / entry["file"]).read_bytes() == render_png(image, 96, (0.0, 1.0))


def test_spread_over_patients_balances_and_leaves_out_excluded_patients(tmp_path):
    subjects = np.array(["p1"] * 10 + ["p2"] * 3 + ["p3"] * 5 + ["p4"] * 4)
    for seed in range(5):
        picked = spread_over_subjects(subjects, 7, np.random.default_rng(seed), tmp_path / "t.npz", frozenset({"p4"}))
        counts = dict(zip(*np.unique(subjects[picked], return_counts=True)))
        assert len(set(picked.tolist())) == 7 and "p4" not in counts
        assert sorted(counts.values()) == [2, 2, 3]  # 3 patients, 7 images: nobody thrice before everyone twice
    with pytest.raises(InputDataError, match=r"t.npz: holds 18 usable images \(1 patients left out"):
        spread_over_subjects(subjects, 19, np.random.default_rng(0), tmp_path / "t.npz", frozenset({"p4"}))


def test_conditional_generator_study_matches_the_real_class_mix_and_picks_by_its_discriminator(cgan, tmp_path):
    settings = with_settings(pick="best_by_discriminator", candidates_per_image=3)
    study = make_study("rs_cgan", cgan["model"], tmp_path / "study", settings, real=cgan["real"],
                       checkpoint=cgan["checkpoint"])
    key = json.loads((tmp_path / "study" / "key.json").read_text())
    assert study["task"] == "generation" and key["pick"] == "best_by_discriminator" and key["candidates_per_image"] == 3
    with np.load(cgan["real"]) as npz:
        real_labels = sorted(int(npz["labels"][e["source"]["index"]]) for e in key["images"] if e["truth"] == "real")
    fakes = [e["source"] for e in key["images"] if e["truth"] == "fake"]
    assert sorted(f["label"] for f in fakes) == real_labels
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
    settings = with_settings(pick="best_by_discriminator", candidates_per_image=2)
    missing = tmp_path / "checkpoint.pt"
    with pytest.raises(InputDataError, match="checkpoint.pt: not found: pick best_by_discriminator needs"):
        make_study("x", cyclegan["model"], tmp_path / "s", settings, test_a=cyclegan["test_a"],
                   test_b=cyclegan["test_b"], checkpoint=missing)
    state = torch.load(cyclegan["checkpoint"], weights_only=True)
    state["networks"]["G_ab"] = {k: v + 1 if v.is_floating_point() else v for k, v in state["networks"]["G_ab"].items()}
    torch.save(state, missing)
    with pytest.raises(InputDataError, match="its G_ab differs from the one in"):
        make_study("x", cyclegan["model"], tmp_path / "s", settings, test_a=cyclegan["test_a"],
                   test_b=cyclegan["test_b"], checkpoint=missing)
    assert not (tmp_path / "s").exists()
    study = make_study("x", cyclegan["model"], tmp_path / "ok", with_settings(pick="best_by_discriminator",
                       candidates_per_image=2, direction="b_to_a"), test_a=cyclegan["test_a"],
                       test_b=cyclegan["test_b"], checkpoint=cyclegan["checkpoint"])
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


def test_too_few_test_images_is_a_clear_error(cyclegan, tmp_path):
    with pytest.raises(InputDataError, match=r"dom_a/test.npz: holds 30 usable source images to translate; the study needs 36"):
        make_study("x", cyclegan["model"], tmp_path / "s", with_settings(n_per_class=36), test_a=cyclegan["test_a"],
                   test_b=cyclegan["test_b"])


def test_answers_from_the_key_score_one_and_inverted_zero(translation_study, tmp_path):
    key = read_key(translation_study / "key.json")
    invert = {"real": "fake", "fake": "real"}
    right = write_answers(tmp_path / "a.csv", key, "right", lambda e: e["truth"])
    wrong = write_answers(tmp_path / "b.csv", key, "wrong", lambda e: invert[e["truth"]])
    scores = score_study(key, [read_answers(right, key), read_answers(wrong, key)], 500, key["seed"])
    r, w = scores["readers"]["right"], scores["readers"]["wrong"]
    assert r["accuracy"]["value"] == 1 and r["auc"]["value"] == 1 and r["fakes_taken_for_real"]["value"] == 0
    assert w["accuracy"]["value"] == 0 and w["auc"]["value"] == 0 and w["fakes_taken_for_real"]["value"] == 1
    # Clopper-Pearson from the beta distribution: 24/24 -> [0.025^(1/24), 1]; 0/24 -> [0, 1 - 0.025^(1/24)].
    assert r["accuracy"]["ci95"] == pytest.approx([0.025 ** (1 / 24), 1.0])
    assert w["accuracy"]["ci95"] == pytest.approx([0.0, 1 - 0.025 ** (1 / 24)])
    assert scores["pooled"]["accuracy"]["value"] == 0.5 and scores["pooled"]["auc"]["value"] == 0.5


def test_scores_match_independent_computations(translation_study, tmp_path):
    key = read_key(translation_study / "key.json")
    rng = np.random.default_rng(3)
    said = {e["image_id"]: rng.choice(["real", "fake"]) for e in key["images"]}
    conf = {e["image_id"]: int(rng.integers(1, 6)) for e in key["images"]}
    path = write_answers(tmp_path / "c.csv", key, "c", lambda e: said[e["image_id"]], lambda e: conf[e["image_id"]])
    block = score_study(key, [read_answers(path, key)], 500, key["seed"])["readers"]["c"]
    truth = np.array([e["truth"] == "fake" for e in key["images"]])
    answer = np.array([said[e["image_id"]] == "fake" for e in key["images"]])
    k = int((truth == answer).sum())
    low = beta.ppf(0.025, k, 24 - k + 1) if k else 0.0
    high = beta.ppf(0.975, k + 1, 24 - k) if k < 24 else 1.0
    assert block["accuracy"]["k"] == k and block["accuracy"]["ci95"] == pytest.approx([low, high])
    assert block["specificity_fake"]["value"] == pytest.approx(((~answer) & ~truth).sum() / 12)
    assert block["sensitivity_fake"]["value"] + block["fakes_taken_for_real"]["value"] == pytest.approx(1)
    # AUC: the answer and confidence as a signed rating; Mann-Whitney U / (n_fake x n_real) from scipy.
    signed = np.array([(1 if said[e["image_id"]] == "fake" else -1) * conf[e["image_id"]] for e in key["images"]])
    assert block["auc"]["value"] == pytest.approx(mannwhitneyu(signed[truth], signed[~truth]).statistic / (12 * 12))
    assert block["auc"]["ci95"][0] <= block["auc"]["value"] <= block["auc"]["ci95"][1]


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
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(InputDataError, match=match):
        read_answers(path, key)


def test_cli_scores_writes_the_figure_and_logs_into_the_mlflow_run(translation_study, cyclegan, tmp_path):
    key = read_key(translation_study / "key.json")
    right = write_answers(tmp_path / "answers_right.csv", key, "right", lambda e: e["truth"])
    half = write_answers(tmp_path / "answers_half.csv", key, "half", lambda e: "real")
    out, figure = tmp_path / "scores.json", tmp_path / "grid.png"
    assert main(["score", str(translation_study / "key.json"), str(right), str(half), "--out", str(out),
                 "--figure", str(figure), "--run-json", str(cyclegan["run"])]) == 0
    scores = json.loads(out.read_text())
    assert scores["readers"]["half"]["accuracy"]["value"] == 0.5
    assert scores["readers"]["half"]["specificity_fake"]["value"] == 1 and scores["readers"]["half"]["sensitivity_fake"]["value"] == 0
    assert Image.open(figure).size[0] > 600
    run = json.loads(cyclegan["run"].read_text())
    metrics = mlflow.MlflowClient(run["tracking_uri"]).get_run(run["run_id"]).data.metrics
    assert metrics["reader_study/right/accuracy"] == 1.0 and metrics["reader_study/pooled/accuracy"] == 0.75
    assert metrics["reader_study/half/fakes_taken_for_real"] == 1.0
    # The same reader twice is an error naming the second file.
    assert main(["score", str(translation_study / "key.json"), str(right), str(right)]) == 1


def test_cli_make_takes_missing_values_from_params(cyclegan, tmp_path, repo_root):
    params = (repo_root / "params.yaml").read_text()
    (tmp_path / "params.yaml").write_text(params)
    out = tmp_path / "study"
    args = ["make", "cyclegan_ct_mri", "--params", str(tmp_path / "params.yaml"), "--model", str(cyclegan["model"]),
            "--test-a", str(cyclegan["test_a"]), "--test-b", str(cyclegan["test_b"]), "--out", str(out),
            "--display-size", "64"]
    assert main(args) == 0
    study = json.loads((out / "study.json").read_text())
    import yaml

    cfg = yaml.safe_load(params)
    section = cfg["reader_study"]
    assert study["settings"]["seed"] == cfg["seed"] + section["seed_offset"]
    assert study["settings"]["n_per_class"] == section["n_per_class"] and study["display"]["shown_size"] == [64, 64]
    assert main(["make", "no_such_experiment", "--params", str(tmp_path / "params.yaml")]) == 1


@pytest.mark.slow
def test_snakemake_target_builds_the_study_and_reruns_on_a_changed_knob(cyclegan, repo_root, tmp_path):
    """The real rule, on the tiny profile, with the model and test sets in place (training and
    data preparation are other rules' tests: --allowed-rules keeps them out)."""
    import shutil

    import yaml
    from workflow_support import run, tiny_copy

    work = tiny_copy(repo_root, tmp_path / "repo", git=False)
    (work / "models" / "cyclegan_ct_mri").mkdir(parents=True)
    shutil.copy(cyclegan["model"], work / "models" / "cyclegan_ct_mri" / "model.pt")
    for dataset, test in (("ct_head", cyclegan["test_a"]), ("mri_t2", cyclegan["test_b"])):
        (work / "data" / "slices" / dataset).mkdir(parents=True)
        shutil.copy(test, work / "data" / "slices" / dataset / "test.npz")
    target = "results/cyclegan_ct_mri/reader_study"
    command = ["snakemake", "--cores", "1", "--allowed-rules", "reader_study"]
    run([*command, "--", target], work)
    params = yaml.safe_load((work / "params.yaml").read_text())
    study = json.loads((work / target / "study.json").read_text())
    assert study["settings"]["seed"] == params["seed"] + params["reader_study"]["seed_offset"]
    assert study["generated"]["direction"] == params["reader_study"]["direction"]
    shown = {p.name for p in (work / target).iterdir() if p.name != ".snakemake_timestamp"}  # Snakemake's marker
    assert shown == {"study.html", "key.json", "study.json", "images"}
    (tmp_path / "other.yaml").write_text(yaml.safe_dump({"reader_study": {"seed_offset": 1, "n_per_class": 4}}))
    run([*command, "--configfile", str(tmp_path / "other.yaml"), "--", target], work)
    other = json.loads((work / target / "study.json").read_text())
    assert other["study_id"] != study["study_id"] and other["page"]["n_images"] == 8
