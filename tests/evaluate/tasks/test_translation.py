from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import jsonschema
import numpy as np
import pytest
from scipy.ndimage import gaussian_filter

from classifier_support import brightness_classifier, constant_classifier
from pipeline.errors import InputDataError, PipelineError
from pipeline.evaluate.measures import fid as fid_module
from pipeline.evaluate.measures import frd as frd_module
from pipeline.evaluate.metrics_json import flatten_metrics, validate_metrics, write_metrics
from pipeline.evaluate.measures.image_metrics import mae_per_image, psnr_per_image, ssim_per_image
from pipeline.evaluate.measures.intervals import IntervalPolicy
from pipeline.evaluate.tasks.translation import evaluate_translation

SIZE = 32


@pytest.fixture(autouse=True)
def cheap_radiomics(monkeypatch):
    """Coarse block means stand in for PyRadiomics (~0.4 s an image); tests/evaluate/measures/test_frd.py runs the real one."""

    def block_means(images, desc="", **_):
        blocks = images.reshape(len(images), 4, SIZE // 4, 4, SIZE // 4).mean(axis=(2, 4))
        return blocks.reshape(len(images), 16).astype(np.float64), [f"block{i}" for i in range(16)]

    monkeypatch.setattr(frd_module, "radiomic_features", block_means)


class IdentityTranslator:
    def translate(self, direction: str, images: np.ndarray) -> np.ndarray:
        assert direction in ("a_to_b", "b_to_a")
        return images.copy()


class BlurTranslator:
    task = "translation"

    def translate(self, direction: str, images: np.ndarray) -> np.ndarray:
        return gaussian_filter(images, sigma=(0, 1.5, 1.5)).astype(np.float32)


def blobs(rng: np.random.Generator, n: int) -> np.ndarray:
    images = gaussian_filter(rng.random((n, SIZE, SIZE)), sigma=(0, 2, 2))
    return ((images - images.min()) / (images.max() - images.min())).astype(np.float32)


@pytest.fixture
def test_sets(tmp_path) -> tuple[Path, Path]:
    """CT test set: 6 slices of 2 subjects, subject ph1 with MR partners; MR test set without partners."""
    rng = np.random.default_rng(0)
    ct, partner = blobs(rng, 6), blobs(rng, 6)
    has_partner = np.array([False, False, False, True, True, True])
    partner[~has_partner] = 0.0
    path_a, path_b = tmp_path / "ct" / "test.npz", tmp_path / "mri" / "test.npz"
    path_a.parent.mkdir()
    path_b.parent.mkdir()
    np.savez(
        path_a,
        images=ct,
        subject_ids=np.array(["cq1"] * 3 + ["ph1"] * 3),
        slice_index=np.array([0, 1, 2] * 2),
        partner=partner,
        has_partner=has_partner,
    )
    np.savez(path_b, images=blobs(rng, 5), subject_ids=np.array(["ixi1"] * 5), slice_index=np.arange(5))
    return path_a, path_b


def test_identity_translator_metrics(test_sets, tmp_path):
    path_a, path_b = test_sets
    weights = tmp_path / "weights" / "pt_inception-2015-12-05-6726825d.pth"
    metrics = evaluate_translation(
        IdentityTranslator(),
        path_a,
        path_b,
        inception_weights=weights,
        ct_window=(40, 80),
        samples_out=tmp_path / "samples.npz",
        per_image_out=tmp_path / "per_image.npz",
        n_figure_examples=2,
        intervals_policy=IntervalPolicy(min_subjects=2),
    )
    validate_metrics(metrics)
    ct_to_mri, mri_to_ct = metrics["ct_to_mri"], metrics["mri_to_ct"]
    assert (ct_to_mri["n_source"], ct_to_mri["n_source_subjects"], ct_to_mri["n_target"]) == (6, 2, 5)
    assert (mri_to_ct["n_source"], mri_to_ct["n_target"]) == (5, 6)
    for block in (ct_to_mri, mri_to_ct):
        assert block["ssim"]["mean"] == pytest.approx(1.0)
        assert block["ssim_cycle"]["mean"] == pytest.approx(1.0)
        assert block["fid"]["value"] is None and block["kid"]["value"] is None
        assert str(weights) in block["fid"]["reason"] and block["kid"]["reason"] == block["fid"]["reason"]
    assert "window 40/80 HU" in ct_to_mri["ssim_cycle"]["normalisation"]
    assert "percentile 0.5-99.5" in mri_to_ct["ssim_cycle"]["normalisation"]
    assert ct_to_mri["classifier"] == {"reason": "no classifier given"} and "classifier" not in metrics
    assert ct_to_mri["regions"] is None and "no 'region_mask'" in ct_to_mri["regions_reason"]
    assert ct_to_mri["steganography"]["flagged"] is False  # identity: F(perturbed) is the perturbed image
    assert ct_to_mri["ssim_cycle"]["ci95"] == [pytest.approx(1.0), pytest.approx(1.0)]
    assert mri_to_ct["ssim_cycle"]["ci95"] is None  # one subject: nothing to resample
    assert mri_to_ct["ssim_cycle"]["ci95_reason"].startswith("1 subjects, fewer than evaluate.min_subjects = 2")
    assert ct_to_mri["ssim_cycle"]["ci_method"] == "subject_t"
    broken = json.loads(json.dumps(metrics))
    broken["ct_to_mri"]["ssim_cycle"]["ci95"] = [0.0, 0.5]  # excludes its mean, 1.0
    with pytest.raises(jsonschema.ValidationError, match="ct_to_mri/ssim_cycle/ci95: .* does not contain the estimate"):
        validate_metrics(broken)

    # Paired metrics only where partners exist: CT slices of ph1 -> their MR partners.
    assert mri_to_ct["paired"] is None and "no partner images" in mri_to_ct["paired_reason"]
    paired = ct_to_mri["paired"]
    assert (paired["n"], paired["n_subjects"], paired["data_range"]) == (3, 1, 1.0)
    with np.load(path_a) as npz:
        source, partner = npz["images"][3:], npz["partner"][3:]
    assert paired["ssim"]["mean"] == pytest.approx(ssim_per_image(partner, source).mean())
    assert paired["psnr"]["mean"] == pytest.approx(psnr_per_image(partner, source).mean())
    assert paired["mae"]["mean"] == pytest.approx(mae_per_image(partner, source).mean())
    assert paired["mae_window_hu"] is None and paired["ct_body"] is None  # the target (MR) is not CT
    assert "percentile" in paired["normalisation"]

    with np.load(tmp_path / "samples.npz") as samples:
        assert samples["a_to_b_source"].shape == (2, SIZE, SIZE)
        np.testing.assert_array_equal(samples["a_to_b_source"], samples["a_to_b_reconstructed"])
        assert samples["b_to_a_subject_ids"].tolist() == ["ixi1", "ixi1"]
        assert samples["a_to_b_slice_index"].tolist() == [0, 2]  # first and last test image
    with np.load(tmp_path / "per_image.npz") as per_image:
        assert per_image["ct_to_mri_paired_ssim"].shape == (3,)
        assert per_image["ct_to_mri_paired_index"].tolist() == [3, 4, 5]
        assert per_image["mri_to_ct_ssim_cycle"].shape == (5,)


def test_frd_classifier_regions_steganography_and_intervals(test_sets, tmp_path):
    from pipeline.evaluate.measures import classifier as classifier_module

    path_a, path_b = test_sets
    with np.load(path_a) as npz:
        arrays = dict(npz)
    mask = np.zeros(arrays["images"].shape, bool)
    mask[:, : SIZE // 2] = True
    # a CT subject a slice: on 3 subjects even a perfect classifier's AUC interval (Wilson on the
    # subjects, [0.14, 1]) reaches chance and its scores would not count; on 7 it clears 0.5
    arrays["subject_ids"] = np.array([f"ct{i}" for i in range(len(arrays["images"]))])
    np.savez(path_a, **arrays, region_mask=mask)
    with np.load(path_b) as npz:
        brighter = dict(npz)
    brighter["images"] = (0.6 + 0.4 * brighter["images"]).astype(np.float32)  # MR brighter than CT: a usable classifier
    np.savez(path_b, **brighter)
    brightness_classifier(tmp_path / "classifier.pt", SIZE, threshold=0.76, names=("CT", "MR"))
    metrics = evaluate_translation(
        BlurTranslator(), path_a, path_b, inception_weights=tmp_path / "absent.pth",
        classifier=tmp_path / "classifier.pt", stego_max_drop=0.0,
        intervals_policy=IntervalPolicy(min_subjects=2, n_boot=200),
    )
    validate_metrics(metrics)
    block = metrics["ct_to_mri"]
    source = arrays["images"]
    translated = BlurTranslator().translate("a_to_b", source)
    with np.load(path_b) as npz:
        real_b = npz["images"]

    expected_frd = frd_module.frd_from_features(
        frd_module.radiomic_features(real_b)[0], frd_module.radiomic_features(translated)[0]
    )[0]
    assert block["frd"]["value"] == pytest.approx(expected_frd) and block["frd"]["reason"] is None
    assert block["frd"]["ci95"] is None and "1 subjects" in block["frd"]["ci95_reason"]  # the real MR set has one
    assert block["frd"]["ci_method"] == "subject_jackknife"

    network, loaded = classifier_module.load_classifier(tmp_path / "classifier.pt")
    p_b = classifier_module.probability_of_b(network, loaded, translated)
    assert block["classifier"]["share_intended"]["mean"] == pytest.approx(np.mean(p_b > 0.5))
    assert block["classifier"]["mean_probability_intended"]["mean"] == pytest.approx(p_b.mean())
    assert metrics["mri_to_ct"]["classifier"]["intended_domain"] == "a"
    assert metrics["classifier"]["real_test"]["usable"] and block["classifier"]["classifier_auc"]["value"] == 1.0
    assert block["classifier"]["classifier_balanced_accuracy"] == 1.0 and block["classifier"]["reason"] is None
    assert metrics["classifier"]["test_accuracy"]["n"] == 11 and metrics["classifier"]["domain_names"] == ["CT", "MR"]

    change = np.abs(translated.astype(np.float64) - source)
    assert block["regions"]["share_inside"] == pytest.approx(change[:, : SIZE // 2].sum() / change.sum())
    assert block["regions"]["mask_area_fraction"] == 0.5
    low, high = block["regions"]["ci95_inside"]
    assert low <= block["regions"]["share_inside"] <= high
    assert metrics["mri_to_ct"]["regions"] is None  # the MR test set carries no mask

    assert block["steganography"]["flagged"] is True  # any drop exceeds a threshold of 0
    assert block["steganography"]["blur"]["drop"] > 0
    low, high = block["ssim"]["ci95"]
    assert low <= block["ssim"]["mean"] <= high
    flat = flatten_metrics(metrics)
    assert flat["classifier/test_accuracy/mean"] == metrics["classifier"]["test_accuracy"]["mean"]
    assert "ct_to_mri/steganography/blur/sigma" not in flat


def test_mae_in_hu_when_the_target_is_ct(test_sets, tmp_path):
    path_a, _ = test_sets
    # Domain b (MR) carries CT partners here, so mri_to_ct has paired metrics with a CT target; the
    # partner CT also in full HU: a 20x20 head (bone ring 1400 HU around brain 40 HU) in air.
    rng = np.random.default_rng(1)
    mr = blobs(rng, 4)
    ct_partner = blobs(rng, 4)
    partner_hu = np.full((4, SIZE, SIZE), -1024.0, np.float32)
    partner_hu[:, 6:26, 6:26] = 1400.0
    partner_hu[:, 7:25, 7:25] = 40.0
    mr_path = tmp_path / "mr_paired.npz"
    np.savez(
        mr_path,
        images=mr,
        subject_ids=np.array(["ph2"] * 4),
        slice_index=np.arange(4),
        partner=ct_partner,
        has_partner=np.ones(4, bool),
        partner_hu=partner_hu,
        partner_hu_range=np.array([-1024.0, 3000.0], np.float32),
    )
    metrics = evaluate_translation(
        BlurTranslator(),
        path_a,
        mr_path,
        inception_weights=tmp_path / "absent.pth",
        modalities={"a": "CT", "b": "MR"},  # params.yaml spells them so
        ct_window=(40, 80),
    )
    validate_metrics(metrics)
    paired = metrics["mri_to_ct"]["paired"]
    translated = BlurTranslator().translate("b_to_a", mr).astype(np.float64)
    expected_mae = mae_per_image(ct_partner, translated).mean()
    assert paired["mae"]["mean"] == pytest.approx(expected_mae)
    # DICOM's linear window 40/80 spans 0..79 HU: [0,1] differences are 79 HU wide
    assert paired["mae_window_hu"]["mean"] == pytest.approx(79.0 * expected_mae)
    assert paired["mae_window_hu"]["hu_range"] == [0.0, 79.0]
    assert "window 40/80 HU" in paired["normalisation"]
    assert metrics["ct_to_mri"]["paired"]["mae_window_hu_reason"] == "target is not CT"

    body = paired["ct_body"]
    synthetic_hu = 39.5 + (translated - 0.5) * 79.0  # the window inverted by hand
    error = np.abs(partner_hu - synthetic_hu)[:, 6:26, 6:26]  # the body: the head, 400 pixels
    assert body["mae_hu_body"]["mean"] == pytest.approx(error.mean(axis=(1, 2)).mean())
    assert body["psnr_hu_body"]["mean"] == pytest.approx(
        np.mean(10 * np.log10(4024.0**2 / (error**2).mean(axis=(1, 2)))))
    ring = 20 * 20 - 18 * 18
    assert body["mae_hu_body_floor"]["mean"] == pytest.approx(ring * (1400.0 - 79.0) / 400)
    assert body["body_fraction"] == pytest.approx(400 / SIZE**2) and body["hu_clip"] == [-1024.0, 3000.0]
    assert body["mae_hu_body"]["mean"] > 10 * paired["mae_window_hu"]["mean"]  # the window hides the bone

    per_series_window = evaluate_translation(
        BlurTranslator(), path_a, mr_path, inception_weights=tmp_path / "absent.pth", ct_window=None
    )
    validate_metrics(per_series_window)
    paired = per_series_window["mri_to_ct"]["paired"]
    assert paired["mae_window_hu"] is None and "no single CT window" in paired["mae_window_hu_reason"]
    assert paired["ct_body"] is None and "no single CT window" in paired["ct_body_reason"]
    assert paired["mae"]["mean"] == pytest.approx(expected_mae)
    cycle = metrics["ct_to_mri"]["ssim_cycle"]["mean"]
    assert 0.3 < cycle < 0.99  # blurring twice loses detail


def test_a_partner_without_full_hu_says_so_and_bad_full_hu_is_refused(test_sets, tmp_path):
    path_a, _ = test_sets
    rng = np.random.default_rng(2)
    arrays = {"images": blobs(rng, 2), "subject_ids": np.array(["ph3"] * 2), "slice_index": np.arange(2),
              "partner": blobs(rng, 2), "has_partner": np.ones(2, bool)}
    mr_path = tmp_path / "mr.npz"
    np.savez(mr_path, **arrays)
    metrics = evaluate_translation(IdentityTranslator(), path_a, mr_path, inception_weights=tmp_path / "absent.pth",
                                   modalities={"a": "CT", "b": "MR"})
    paired = metrics["mri_to_ct"]["paired"]
    assert paired["mae_window_hu"] is not None and paired["ct_body"] is None
    assert "partner_hu" in paired["ct_body_reason"]
    np.savez(mr_path, **arrays, partner_hu=np.full((2, SIZE, SIZE), 3500.0, np.float32),
             partner_hu_range=np.array([-1024.0, 3000.0]))
    with pytest.raises(InputDataError, match="inside partner_hu_range"):
        evaluate_translation(IdentityTranslator(), path_a, mr_path, inception_weights=tmp_path / "absent.pth")
    np.savez(mr_path, **arrays, partner_hu=np.zeros((2, SIZE, SIZE), np.float32))
    with pytest.raises(InputDataError, match="partner_hu_range"):
        evaluate_translation(IdentityTranslator(), path_a, mr_path, inception_weights=tmp_path / "absent.pth")


def test_fid_and_kid_when_features_exist(test_sets, tmp_path, monkeypatch):
    """The FID branch, with the Inception stand-in being a coarse image downsampling (16-d)."""
    path_a, path_b = test_sets
    monkeypatch.setattr(fid_module, "inception_weights_problem", lambda path: None)
    monkeypatch.setattr(fid_module, "load_inception", lambda path, device: "stand-in")

    def coarse_features(extractor, images, batch_size, device):
        return (
            images.reshape(len(images), 4, 8, 4, 8)
            .mean(axis=(2, 4))
            .reshape(len(images), 16)
            .astype(np.float64)
        )

    monkeypatch.setattr(fid_module, "inception_features", coarse_features)
    with np.load(path_b) as npz:  # five MR subjects: KID leaves out pairs of one subject's images
        np.savez(path_b, **(dict(npz) | {"subject_ids": np.array([f"ixi{i}" for i in range(5)])}))
    with pytest.warns(UserWarning, match="rank-deficient"):
        metrics = evaluate_translation(
            BlurTranslator(),
            path_a,
            path_b,
            inception_weights=tmp_path / "w.pth",
        )
    validate_metrics(metrics)
    fid, kid = metrics["ct_to_mri"]["fid"], metrics["ct_to_mri"]["kid"]
    assert fid["value"] > 0 and fid["reason"] is None and fid["rank_deficient"] is True
    assert (kid["n_real"], kid["n_generated"]) == (5, 6) and kid["value"] is not None and kid["reason"] is None
    assert fid["ci95"] is None and "fewer than evaluate.min_subjects = 8" in fid["ci95_reason"]  # default minimum
    assert fid["compares"] == "6 translations vs 5 real b images"
    flat = flatten_metrics(metrics)
    assert flat["ct_to_mri/fid/value"] == fid["value"]
    assert flat["mri_to_ct/kid/value"] == metrics["mri_to_ct"]["kid"]["value"]
    assert all(np.isfinite(v) for v in flat.values())


def test_weights_that_do_not_fit_the_network_give_null_fid(test_sets, tmp_path, monkeypatch):
    import torch

    path_a, path_b = test_sets
    weights = tmp_path / "pt_inception-2015-12-05-6726825d.pth"
    torch.save({"fc.weight": torch.zeros(2, 2)}, weights)
    monkeypatch.setattr(fid_module, "inception_weights_problem", lambda path: None)  # pretend the hash fits
    metrics = evaluate_translation(IdentityTranslator(), path_a, path_b, inception_weights=weights)
    validate_metrics(metrics)
    assert metrics["ct_to_mri"]["fid"]["value"] is None
    assert "do not load into torch-fidelity's network" in metrics["ct_to_mri"]["fid"]["reason"]


def test_schema_refuses_nan_and_missing_reasons(test_sets, tmp_path):
    path_a, path_b = test_sets
    metrics = evaluate_translation(
        IdentityTranslator(), path_a, path_b, inception_weights=tmp_path / "absent.pth"
    )
    broken = json.loads(json.dumps(metrics))
    broken["ct_to_mri"]["fid"]["reason"] = None
    with pytest.raises(jsonschema.ValidationError):
        validate_metrics(broken)
    broken = json.loads(json.dumps(metrics))
    del broken["ct_to_mri"]["ssim_cycle"]["data_range"]
    with pytest.raises(jsonschema.ValidationError):
        validate_metrics(broken)
    broken = json.loads(json.dumps(metrics))
    broken["direction_names"].append("ct_to_pet")
    with pytest.raises(jsonschema.ValidationError, match="no block"):
        validate_metrics(broken)
    metrics["ct_to_mri"]["ssim_cycle"]["mean"] = float("nan")
    with pytest.raises(ValueError):
        write_metrics(tmp_path / "metrics.json", metrics)
    assert not (tmp_path / "metrics.json").exists()


def test_bad_inputs_name_the_file(test_sets, tmp_path):
    path_a, path_b = test_sets
    bad = tmp_path / "bad.npz"
    np.savez(bad, pictures=np.zeros((2, SIZE, SIZE), np.float32))
    with pytest.raises(InputDataError, match="missing array 'images'") as err:
        evaluate_translation(IdentityTranslator(), bad, path_b, inception_weights=tmp_path / "w.pth")
    assert err.value.path == bad
    np.savez(
        bad,
        images=np.full((2, SIZE, SIZE), 2.0, np.float32),
        subject_ids=np.array(["x", "x"]),
        slice_index=np.arange(2),
    )
    with pytest.raises(InputDataError, match=r"in \[0, 1\]"):
        evaluate_translation(IdentityTranslator(), path_a, bad, inception_weights=tmp_path / "w.pth")

    class Shrinking:
        def translate(self, direction, images):
            return images[:, :-1]

    with pytest.raises(PipelineError, match="a_to_b.*shape"):
        evaluate_translation(Shrinking(), path_a, path_b, inception_weights=tmp_path / "w.pth")


def test_cli_writes_valid_metrics_and_logs_to_the_run(test_sets, tmp_path, monkeypatch):
    """The CLI end to end with stand-ins for the model loader and the MLflow logger."""
    from pipeline.evaluate.__main__ import main

    path_a, path_b = test_sets
    model_file = tmp_path / "model.pt"
    model_file.write_bytes(b"stand-in model")
    logged = {}
    monkeypatch.setitem(
        sys.modules,
        "pipeline.models",
        types.SimpleNamespace(load_trained=lambda path, device="cpu": BlurTranslator(),
                              trained_task=lambda path: "translation"),
    )
    monkeypatch.setitem(
        sys.modules,
        "pipeline.tracking",
        types.SimpleNamespace(
            log_evaluation=lambda run, metrics, artifacts, tracking_uri=None: logged.update(
                run=run, metrics=metrics, artifacts=artifacts
            )
        ),
    )
    out = tmp_path / "results" / "metrics.json"
    code = main(
        [
            "--model",
            str(model_file),
            "--test-a",
            str(path_a),
            "--test-b",
            str(path_b),
            "--out",
            str(out),
            "--samples-out",
            str(tmp_path / "results" / "samples.npz"),
            "--triplets",
            str(tmp_path / "results" / "triplets.png"),
            "--inception-weights",
            str(tmp_path / "absent.pth"),
            "--ct-window",
            "40",
            "80",
            "--run-json",
            str(tmp_path / "run.json"),
            "--n-boot",
            "50",
            "--metrics-table",
            str(tmp_path / "results" / "metrics_table.png"),
            "--difference-maps",
            str(tmp_path / "results" / "difference_maps.png"),
            "--diff-upscale-size",
            "64",
        ]
    )
    assert code == 0
    written = json.loads(out.read_text())
    validate_metrics(written)
    assert written["model"]["path"] == str(model_file) and len(written["model"]["sha256"]) == 64
    assert logged["run"] == tmp_path / "run.json"
    assert logged["metrics"]["ct_to_mri/ssim_cycle/mean"] == written["ct_to_mri"]["ssim_cycle"]["mean"]
    assert out in logged["artifacts"] and (tmp_path / "results" / "triplets.png").stat().st_size > 10_000
    for figure in ("metrics_table.png", "difference_maps.png"):
        assert tmp_path / "results" / figure in logged["artifacts"]
        assert (tmp_path / "results" / figure).stat().st_size > 10_000
    assert written["settings"]["intervals"]["n_boot"] == 50 and written["settings"]["intervals"]["min_subjects"] == 8


def test_a_classifier_that_did_not_learn_gives_no_share(test_sets, tmp_path):
    """The issue's symptom: every image P(b) = 0.5025, so every translation into b was "called b"
    (share 1.0). Its real-test AUC is 0.5: the share and mean probability are null with the reason."""
    path_a, path_b = test_sets
    metrics = evaluate_translation(
        IdentityTranslator(), path_a, path_b, inception_weights=tmp_path / "absent.pth", frd=False,
        classifier=constant_classifier(tmp_path / "classifier.pt", SIZE), intervals_policy=IntervalPolicy(min_subjects=2),
    )
    validate_metrics(metrics)
    check = metrics["classifier"]["real_test"]
    assert check["auc"]["value"] == 0.5 and check["balanced_accuracy"] == 0.5 and not check["usable"]
    for name in ("ct_to_mri", "mri_to_ct"):
        block = metrics[name]["classifier"]
        assert block["share_intended"]["mean"] is None and block["mean_probability_intended"]["mean"] is None
        assert "AUC 0.500" in block["reason"] and block["share_intended"]["ci95_reason"] == block["reason"]
        assert block["classifier_auc"]["value"] == 0.5


class PartnerOrShiftTranslator:
    """a_to_b returns each CT slice's MR partner exactly; b_to_a lightens by 0.2 inside ``band`` columns and 0.05
    elsewhere (a change concentrated in a known region)."""

    def __init__(self, sources: np.ndarray, partners: np.ndarray, bands: np.ndarray):
        self.partner_of = {image.tobytes(): partner for image, partner in zip(sources, partners)}
        self.band_of = bands

    def translate(self, direction: str, images: np.ndarray) -> np.ndarray:
        if direction == "a_to_b":
            return np.stack([self.partner_of.get(image.tobytes(), image) for image in images])
        shift = np.where(self.band_of[: len(images)], 0.2, 0.05) if len(images) == len(self.band_of) else 0.0
        return np.clip(images + shift, 0.0, 1.0).astype(np.float32)


def test_paired_gain_and_change_inside_the_mask_against_hand_computations(tmp_path):
    from skimage.metrics import structural_similarity

    rng = np.random.default_rng(3)
    ct, partner, mr = blobs(rng, 8), blobs(rng, 8), 0.7 * blobs(rng, 8)  # MR kept below 0.8: no clipping
    columns = np.arange(SIZE)[None, None, :]
    widths = np.array([4, 8, 12, 16, 20, 24, 6, 10])[:, None, None]
    bands = np.broadcast_to(columns < widths, mr.shape).copy()  # each image its own region
    subjects = np.array([f"s{i}" for i in range(8)])  # the default minimum: one slice per subject
    np.savez(tmp_path / "ct.npz", images=ct, subject_ids=subjects, slice_index=np.zeros(8, int), partner=partner,
             has_partner=np.ones(8, bool))
    np.savez(tmp_path / "mr.npz", images=mr, subject_ids=np.char.add("m", subjects), slice_index=np.zeros(8, int),
             region_mask=bands)
    metrics = evaluate_translation(
        PartnerOrShiftTranslator(ct, partner, bands), tmp_path / "ct.npz", tmp_path / "mr.npz",
        inception_weights=tmp_path / "absent.pth", frd=False, intervals_policy=IntervalPolicy(min_subjects=8, n_boot=200),
    )
    validate_metrics(metrics)
    ssim = lambda a, b: structural_similarity(a.astype(np.float64), b.astype(np.float64), data_range=1.0,
                                              gaussian_weights=True, sigma=1.5, use_sample_covariance=False)
    # a translator returning the partner itself gains 1 - SSIM(x, partner) on every image
    gain = metrics["ct_to_mri"]["paired"]["ssim_gain"]
    by_hand = np.mean([1.0 - ssim(p, x) for x, p in zip(ct, partner)])
    assert gain["mean"] == pytest.approx(by_hand, rel=1e-9) and gain["n_subjects"] == 8
    assert metrics["ct_to_mri"]["paired"]["ssim_input"]["mean"] == pytest.approx(1.0 - by_hand, rel=1e-9)
    assert gain["ci95"][0] <= gain["mean"] <= gain["ci95"][1]
    # change 0.2 inside each image's band, 0.05 outside: share inside = 0.2 a / (0.2 a + 0.05 (1 - a)), a the band's area
    area = bands.mean(axis=(1, 2))
    excess = metrics["mri_to_ct"]["regions"]["excess_share"]
    assert excess["mean"] == pytest.approx(np.mean(0.2 * area / (0.2 * area + 0.05 * (1 - area)) - area), rel=1e-6)
    assert excess["ci95"][0] > 0 and excess["n"] == 8
