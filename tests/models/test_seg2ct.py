"""Report 003's map -> CT generator (seg2ct) in the one engine: G's shape and range, the style image
always from another patient, the map travelling with its image through flips and crops, a tiny run
that learns, exact resume on CPU, and the exported generator the map_to_image evaluator loads."""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.errors import ConfigError
from pipeline.models import MODELS, TASKS, load_trained, trained_task
from pipeline.models.seg2ct import Seg2CT, Seg2CTGenerator
from pipeline.engine.data import BatchSampler
from pipeline.train import train

N_LABELS = 6
TRAIN = {"batch_size": 1, "steps_per_epoch": 3, "sample_every": 2, "checkpoint_every": 1, "n_samples": 2,
         "lr_constant_epochs": 4, "lr_decay_epochs": 0, "threads": 1, "device": "cpu", "progress_interval_s": 0,
         "flip_probability": 0.5}
TINY = {"name": "seg2ct", "ngf": 4, "ndf": 4, "nz": 8, "pretrained": "none", "content_weight": 500.0,
        "style_weight": 100.0}


def thorax_like_slices(root: Path, size: int = 16, patients=(("train", 5), ("val", 2)), per_patient: int = 2,
                       seed: int = 0) -> dict[str, Path]:
    """<root>/ct_thorax/<split>.npz as the slices stage writes them: a body ellipse with two lungs,
    a heart, a vertebra and its canal (classes 0-5), each class its own grey level plus noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size] / size
    folder = root / "ct_thorax"
    folder.mkdir(parents=True, exist_ok=True)
    files = {}
    for split, n_patients in patients:
        images, maps, subjects = [], [], []
        for patient in range(n_patients):
            for _ in range(per_patient):
                cx, cy = 0.5 + rng.normal(0, 0.03, 2)
                m = np.zeros((size, size), np.uint8)
                m[((xx - cx) / 0.45) ** 2 + ((yy - cy) / 0.35) ** 2 < 1] = 1
                for side in (-0.2, 0.2):
                    m[((xx - cx - side) / 0.13) ** 2 + ((yy - cy) / 0.22) ** 2 < 1] = 2
                m[((xx - cx) / 0.1) ** 2 + ((yy - cy + 0.08) / 0.1) ** 2 < 1] = 3
                m[((xx - cx) / 0.09) ** 2 + ((yy - cy - 0.24) / 0.09) ** 2 < 1] = 4
                m[((xx - cx) / 0.04) ** 2 + ((yy - cy - 0.24) / 0.04) ** 2 < 1] = 5
                grey = np.array([0.0, 0.5, 0.1, 0.6, 0.9, 0.55])[m] + rng.normal(0, 0.03, m.shape)
                images.append(np.clip(grey, 0, 1).astype(np.float32))
                maps.append(m)
                subjects.append(f"{split}-{patient:02d}")
        files[split] = folder / f"{split}.npz"
        np.savez(files[split], images=np.stack(images), label_maps=np.stack(maps), subject_ids=np.array(subjects),
                 slice_index=np.arange(len(images)))
    return files


@pytest.fixture(scope="module")
def slices(tmp_path_factory):
    return thorax_like_slices(tmp_path_factory.mktemp("slices"))


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"


def fit(slices, out, store, epochs, model=None, seed=3, **train_knobs):
    cfg = {"model": {**TINY, **(model or {})}, "train": {**TRAIN, "epochs": epochs, **train_knobs}}
    return train({"images": slices["train"]}, {"images": slices["val"]}, out, cfg, "seg2ct_test", store, None, seed)


def bound_model(slices, **knobs) -> Seg2CT:
    """A Seg2CT given the training slices as the engine gives them."""
    data = np.load(slices["train"])
    torch.manual_seed(0)
    model = Seg2CT({**{k: v for k, v in TINY.items() if k != "name"}, **knobs}, None, 1, (16, 16))
    codes = np.unique(data["subject_ids"], return_inverse=True)[1].reshape(-1)
    model.bind_training_data({"images": torch.from_numpy(data["images"])[:, None] * 2 - 1,
                              "images_maps": torch.from_numpy(data["label_maps"].astype(np.int64))[:, None],
                              "images_subjects": torch.from_numpy(codes)},
                             {"images": {"subject_ids": data["subject_ids"], "label_maps": data["label_maps"]}})
    return model


def test_registered_with_its_task():
    assert MODELS["seg2ct"] == "pipeline.models.seg2ct:Seg2CT" and "map_to_image" in TASKS
    assert Seg2CT.task == "map_to_image"


@pytest.mark.parametrize("z_entry,skips", [("first", True), ("bottleneck", False)])
def test_generator_output_shape_and_range_and_z_matters(z_entry, skips):
    torch.manual_seed(0)
    g = Seg2CTGenerator(32, N_LABELS, 8, 4, 8, 3, z_entry, 1, skips, 0.2)
    maps = torch.randint(0, N_LABELS, (3, 1, 32, 32))
    z = torch.randn(3, 8)
    out = g(maps, z)
    assert out.shape == (3, 1, 32, 32) and out.min() >= -1 and out.max() <= 1
    assert not torch.allclose(g(maps, torch.randn(3, 8)), out)
    assert not torch.allclose(g(torch.randint(0, N_LABELS, (3, 1, 32, 32)), z), out)


def test_discriminator_gives_one_logit_per_pair_and_its_sigmoid():
    from pipeline.models.seg2ct import Seg2CTDiscriminator
    torch.manual_seed(0)
    d = Seg2CTDiscriminator(32, N_LABELS, 4, 8, 0.2).eval()
    images, maps = torch.rand(3, 1, 32, 32) * 2 - 1, torch.randint(0, N_LABELS, (3, 1, 32, 32))
    logits = d(images, maps)
    assert logits.shape == (3,)
    assert torch.allclose(d.probability(images, maps), 1 / (1 + torch.exp(-logits)))
    assert not torch.allclose(d(images, torch.randint(0, N_LABELS, (3, 1, 32, 32))), logits)  # the map enters D


def test_sizes_that_are_not_powers_of_two_are_refused():
    with pytest.raises(ConfigError, match="power-of-two"):
        Seg2CT({"pretrained": "none"}, None, 0, (48, 48))


def test_fixed_style_is_another_patient_and_content_is_drawn_from_the_others(slices):
    model = bound_model(slices)
    style_subject = model.train_subjects[model.style_index]
    subset = model.training_subsets["images"]
    assert len(subset) == len(model.train_subjects) - int((model.train_subjects == style_subject).sum())
    assert (model.train_subjects[subset] != style_subject).all()
    sampler = BatchSampler({"images": model.train_images}, 2, None, 0.5, subsets=model.training_subsets)
    indices = sampler.plan_epoch(50, torch.Generator().manual_seed(0))["images"][0]
    assert (model.train_subjects[indices] != style_subject).all()
    assert set(indices.flatten().tolist()) == set(subset.tolist())


def test_style_subject_param_picks_the_patient_and_an_unknown_one_is_an_error(slices):
    assert bound_model(slices, style_subject="train-03").style_subject == "train-03"
    with pytest.raises(ConfigError, match="nobody"):
        bound_model(slices, style_subject="nobody")


def test_per_step_style_is_always_another_patient(slices):
    model = bound_model(slices, style_mode="per_step")
    assert model.training_subsets == {}
    content = model.train_subjects.repeat(20)
    picks = model._style_indices(content)
    assert (model.train_subjects[picks] != content).all()
    assert len(set(picks.tolist())) > 3  # drawn, not one fixed slice


def test_map_and_image_get_the_same_flip_and_crop():
    """Engine: each class has its own grey level, so the cropped, flipped map must equal the
    cropped, flipped image's grey levels turned back into classes, pixel for pixel."""
    maps = torch.randint(0, N_LABELS, (5, 1, 12, 12))
    images = maps.float() / 5 * 2 - 1
    subjects = torch.arange(5)
    sampler = BatchSampler({"images": images}, 3, 8, 0.5,
                           aligned={"images": {"images_maps": maps, "images_subjects": subjects}},
                           subsets={"images": torch.tensor([0, 2, 4])})
    plan = sampler.plan_epoch(20, torch.Generator().manual_seed(1))
    flipped_some = False
    for step in range(20):
        batch = sampler.batch(plan, step)
        assert batch["images_maps"].shape == (3, 1, 8, 8)
        assert torch.equal(((batch["images"] + 1) / 2 * 5).round().long(), batch["images_maps"])
        assert set(batch["images_subjects"].tolist()) <= {0, 2, 4}
        indices, rows, cols = (t[step] for t in plan["images"])
        for i, index in enumerate(indices.tolist()):
            window = maps[index, 0][rows[i][:, None], cols[i][None, :]]
            flipped_some |= bool(cols[i][0] > cols[i][-1])
            assert torch.equal(window, batch["images_maps"][i, 0])
    assert flipped_some


def _history(path: Path) -> list[dict[str, float]]:
    with open(path) as fh:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(fh)]


@pytest.mark.slow
def test_a_tiny_run_learns_the_content_and_exports_the_generator(slices, store, tmp_path):
    """Same seed, data and steps: with G's learning rate the content loss falls well below the run
    whose G cannot learn (lr 0). The exported generator is what the map_to_image evaluator loads."""
    knobs = {"steps_per_epoch": 10, "lr_constant_epochs": 3}
    fit(slices, tmp_path / "learns", store, 3, model={"lr_g": 1e-3}, **knobs)
    fit(slices, tmp_path / "frozen", store, 3, model={"lr_g": 0.0}, **knobs)
    learns, frozen = _history(tmp_path / "learns" / "history.csv"), _history(tmp_path / "frozen" / "history.csv")
    assert learns[-1]["content"] < 0.7 * frozen[-1]["content"]
    assert learns[-1]["content"] < 0.7 * learns[0]["content"]
    assert learns[-1]["style"] < frozen[-1]["style"]
    assert all(np.isfinite(list(row.values())).all() for row in learns)

    model_pt = tmp_path / "learns" / "model.pt"
    assert trained_task(model_pt) == "map_to_image"
    g = load_trained(model_pt)
    data = np.load(slices["train"])
    assert g.task == "map_to_image" and g.image_size == (16, 16) and g.n_labels == N_LABELS and g.nz == TINY["nz"]
    assert g.perceptual_weights == "random"
    style = np.flatnonzero(data["subject_ids"] == g.style_subject)
    assert any(np.array_equal(g.style_map, data["label_maps"][i]) for i in style)
    assert any(np.allclose(g.style_image, data["images"][i], atol=1e-6) for i in style)
    assert g.style_image.dtype == np.float32 and g.style_map.dtype == np.uint8
    val = np.load(slices["val"])["label_maps"]
    out = g.generate(val, seed=4)
    assert out.shape == val.shape and out.dtype == np.float32 and 0 <= out.min() and out.max() <= 1
    assert np.array_equal(out, g.generate(val, seed=4))
    assert not np.array_equal(out, g.generate(val, seed=5))
    assert np.array_equal(g.generate(val[:1], z=g.noise(2, 4)[:1]), out[:1])  # one image never depends on the others
    with pytest.raises(ValueError, match="classes"):
        g.generate(np.full_like(val, N_LABELS))


@pytest.mark.slow
@pytest.mark.parametrize("style_mode", ["fixed", "per_step"])
def test_resumed_run_equals_uninterrupted_bit_for_bit(slices, store, tmp_path, style_mode):
    resumed, straight = tmp_path / "resumed", tmp_path / "straight"
    model = {"style_mode": style_mode}
    fit(slices, resumed, store, 1, model=model)
    run = fit(slices, resumed, store, 2, model=model)
    assert run["resumed_from_epoch"] == 1
    fit(slices, straight, store, 2, model=model)
    ours, theirs = (torch.load(p / "model.pt", weights_only=True) for p in (resumed, straight))
    assert all(torch.equal(ours["networks"]["G"][k], theirs["networks"]["G"][k]) for k in ours["networks"]["G"])
    ours_ckpt, theirs_ckpt = (torch.load(p / "checkpoint.pt", weights_only=True) for p in (resumed, straight))
    assert all(torch.equal(ours_ckpt["networks"]["D"][k], theirs_ckpt["networks"]["D"][k])
               for k in ours_ckpt["networks"]["D"])
    assert (resumed / "history.csv").read_text() == (straight / "history.csv").read_text()
    assert (ours["style_subject"] is None) == (style_mode == "per_step")


def test_slices_without_subject_ids_are_an_error_naming_the_file(tmp_path):
    """The engine cannot guarantee "another patient" without the patients: a clear error, not a guess."""
    from pipeline.errors import InputDataError
    from pipeline.engine.data import load_input
    path = tmp_path / "train.npz"
    np.savez(path, images=np.zeros((2, 16, 16), np.float32), label_maps=np.zeros((2, 16, 16), np.uint8))
    with pytest.raises(InputDataError, match="subject_ids") as err:
        load_input(path, Seg2CT.inputs[0])
    assert str(path) in str(err.value)
    np.savez(path, images=np.zeros((2, 16, 16), np.float32), label_maps=np.zeros((2, 16, 16), np.uint8),
             subject_ids=np.array(["a"]))
    with pytest.raises(InputDataError, match="one per image"):
        load_input(path, Seg2CT.inputs[0])
