"""Batches drawn on the device: random crops and flips gathered in one indexing operation,
reproducible from the generator; centre crops for samples; crop-trained models translate whole images."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from pipeline.errors import ConfigError
from pipeline.models import load_trained
from pipeline.engine.data import BatchSampler, centre_crop, label_maps_as_tensor
from pipeline.engine.knobs import resolve_config
from pipeline.train import train


def numbered_images(n=5, height=6, width=7):
    """Every pixel of every image distinct, so a crop's values reveal where it came from."""
    return torch.arange(n * height * width, dtype=torch.float32).view(n, 1, height, width)


def test_random_crops_and_flips_are_windows_of_the_drawn_images():
    data = {"a": numbered_images(), "b": numbered_images() + 1000}
    sampler = BatchSampler(data, batch_size=3, crop_size=4, flip_probability=0.5)
    plan = sampler.plan_epoch(steps=6, rng=torch.Generator().manual_seed(0))
    seen_flips = set()
    for step in range(6):
        batch = sampler.batch(plan, step)
        for domain, x in data.items():
            assert batch[domain].shape == (3, 1, 4, 4)
            for image in batch[domain][:, 0]:
                index = int(image[0].min() - (1000 if domain == "b" else 0)) // 42
                source = x[index, 0]
                top = int((image.min() - source.min()) // 7)
                flipped = bool(image[0, 0] > image[0, -1])
                seen_flips.add(flipped)
                left = int(image.min() - source.min()) % 7
                window = source[top:top + 4, left:left + 4]
                assert torch.equal(image, window.flip(-1) if flipped else window)
    assert seen_flips == {True, False}
    again = BatchSampler(data, 3, 4, 0.5).plan_epoch(6, torch.Generator().manual_seed(0))
    assert all(torch.equal(p, q) for d in plan for p, q in zip(plan[d], again[d]))


def test_no_crop_draws_every_image_once_per_pass_and_shares_split_the_global_batch():
    data = {"a": numbered_images(n=4, height=2, width=2)}
    whole = BatchSampler(data, batch_size=4, crop_size=None, flip_probability=0.0)
    plan = whole.plan_epoch(steps=2, rng=torch.Generator().manual_seed(1))
    first = whole.batch(plan, 0)["a"]
    assert sorted(int(img[0, 0, 0]) // 4 for img in first) == [0, 1, 2, 3]
    halves = [BatchSampler(data, 4, None, 0.0, share=slice(r * 2, r * 2 + 2)) for r in (0, 1)]
    parts = [h.batch(h.plan_epoch(2, torch.Generator().manual_seed(1)), 0)["a"] for h in halves]
    assert torch.equal(torch.cat(parts), first)


def test_labels_and_maps_travel_with_their_image_cropped_and_flipped_alike():
    """One index per input: each image's label is its own, and its map is the same window,
    flipped the same way (the map holds the image's pixel numbers as integers)."""
    images = numbered_images(n=6, height=6, width=7)
    labels = torch.tensor([3, 1, 4, 1, 5, 9])
    maps = images.long() * 10
    sampler = BatchSampler({"images": images}, batch_size=4, crop_size=4, flip_probability=0.5,
                           aligned={"images": {"images_labels": labels, "images_maps": maps}})
    plan = sampler.plan_epoch(steps=8, rng=torch.Generator().manual_seed(2))
    flips = set()
    for step in range(8):
        batch = sampler.batch(plan, step)
        assert batch["images_maps"].shape == (4, 1, 4, 4) and batch["images_maps"].dtype == torch.long
        assert torch.equal(batch["images_maps"], batch["images"].long() * 10)
        for image, label in zip(batch["images"][:, 0], batch["images_labels"]):
            assert label == labels[int(image.min()) // 42]
            flips.add(bool(image[0, 0] > image[0, -1]))
    assert flips == {True, False}


def test_misaligned_arrays_are_refused():
    with pytest.raises(ValueError, match="not aligned"):
        BatchSampler({"images": numbered_images(n=5)}, 2, None, 0.0, aligned={"images": {"images_labels": torch.zeros(4)}})


def test_class_balanced_draws_even_out_a_rare_class():
    """10% of the images are class 1: shuffled passes draw it 10% of the time, balanced draws half."""
    images = numbered_images(n=100, height=2, width=2)
    labels = (torch.arange(100) < 10).long()
    aligned = {"images": {"images_labels": labels}}
    rng = torch.Generator().manual_seed(3)
    balanced = BatchSampler({"images": images}, 50, None, 0.0, aligned=aligned, balance={"images": labels})
    plain = BatchSampler({"images": images}, 50, None, 0.0, aligned=aligned)
    share = {}
    for name, sampler in (("balanced", balanced), ("plain", plain)):
        plan = sampler.plan_epoch(steps=40, rng=rng)
        share[name] = torch.cat([sampler.batch(plan, s)["images_labels"] for s in range(40)]).float().mean().item()
    assert share["plain"] == pytest.approx(0.10, abs=1e-6)  # 20 whole passes
    assert share["balanced"] == pytest.approx(0.5, abs=0.03)


def test_label_maps_are_resized_by_nearest_neighbour():
    """Classes 0 and 3 resized 8 -> 12 and 8 -> 5 stay classes 0 and 3; bilinear would blend them."""
    maps = np.zeros((2, 8, 8), dtype=np.int64)
    maps[0, 2:6, 3:7] = 3
    maps[1, :, ::2] = 3
    for size in (12, 5):
        resized = label_maps_as_tensor(maps, size, torch.device("cpu"))
        assert resized.shape == (2, 1, size, size) and resized.dtype == torch.long
        assert set(resized.unique().tolist()) == {0, 3}
    up = label_maps_as_tensor(maps, 16, torch.device("cpu"))[0, 0]
    assert torch.equal(up, torch.from_numpy(maps[0]).repeat_interleave(2, 0).repeat_interleave(2, 1))


def test_centre_crop():
    x = numbered_images(n=1, height=6, width=6)
    assert torch.equal(centre_crop(x, 2), x[..., 2:4, 2:4])
    assert centre_crop(x, None) is x


def test_compile_mode_and_crop_size_are_checked():
    with pytest.raises(ConfigError, match="compile_mode"):
        resolve_config({"train": {"compile_mode": "fastest"}})
    with pytest.raises(ConfigError, match="crop_size"):
        resolve_config({"train": {"crop_size": 4}})


def test_training_on_crops_then_translating_whole_images(tmp_path):
    """Resize to 30 (not a multiple of the generator's 4), random 24x24 crops: the sample grid shows
    centre crops; translation pads 30 to 32 and crops back, keeping every image's shape."""
    rng = np.random.default_rng(0)
    files = {}
    for domain, dataset in (("a", "ct_head"), ("b", "mri_t2")):
        (tmp_path / dataset).mkdir()
        files[domain] = tmp_path / dataset / "train.npz"
        np.savez(files[domain], images=rng.random((4, 40, 40), dtype=np.float32))
    cfg = {"model": {"variant": "resnet9_patchgan", "ngf": 4, "ndf": 4, "n_res_blocks": 1},
           "train": {"epochs": 1, "batch_size": 2, "steps_per_epoch": 1, "image_size": 30, "crop_size": 24,
                     "n_samples": 1, "threads": 1}}
    out = tmp_path / "model"
    run = train(files, files, out, cfg, "crop_test",
                f"sqlite:///{tmp_path / 'mlflow.db'}", None, 1)
    assert run["image_size"] == [30, 30] and run["crop_size"] == 24
    assert json.loads((out / "run.json").read_text())["crop_size"] == 24
    translator = load_trained(out / "model.pt")
    result = translator.translate("a_to_b", rng.random((2, 40, 40), dtype=np.float32))
    assert result.shape == (2, 40, 40) and np.isfinite(result).all()


def test_translation_pads_to_the_generator_multiple_and_crops_back():
    from pipeline.models.cyclegan import _translate_padded
    from pipeline.models.networks import ResnetGenerator

    torch.manual_seed(0)
    generator = ResnetGenerator(ngf=4, n_blocks=1).eval()
    x = torch.rand(1, 1, 30, 30) * 2 - 1
    with torch.no_grad():
        result = _translate_padded(generator, x)
        expected = generator(torch.nn.functional.pad(x, (0, 2, 0, 2), mode="reflect"))[..., :30, :30]
    assert result.shape == (1, 1, 30, 30) and torch.equal(result, expected)


def test_an_epoch_plan_depends_only_on_the_generator_state():
    """What a resume relies on: the data generator's state at an epoch's start gives that
    epoch's plan again, whatever was drawn in between; the next epoch and another seed differ."""
    data = {"a": numbered_images(n=5), "b": numbered_images(n=3) + 1000}
    sampler = BatchSampler(data, batch_size=2, crop_size=4, flip_probability=0.5)
    rng = torch.Generator().manual_seed(4)
    at_start = rng.get_state()
    first = sampler.plan_epoch(steps=4, rng=rng)
    following = sampler.plan_epoch(steps=4, rng=rng)
    torch.randperm(10, generator=rng)
    rng.set_state(at_start)
    again = sampler.plan_epoch(steps=4, rng=rng)
    other_seed = sampler.plan_epoch(steps=4, rng=torch.Generator().manual_seed(5))

    def same(p, q):
        return all(torch.equal(x, y) for d in p for x, y in zip(p[d], q[d]))

    assert same(first, again) and not same(first, following) and not same(first, other_seed)
    assert torch.equal(sampler.batch(first, 3)["b"], sampler.batch(again, 3)["b"])
