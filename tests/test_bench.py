"""The benchmark runs the engine's own step and a reference step file, and prints finite figures."""
from __future__ import annotations

import json
import math
import textwrap

import pytest

from pipeline.bench import main
from pipeline.errors import InputDataError
from pipeline.bench import load_reference

# A stand-in with the reference file's interface (make / step), tiny enough for a CPU test.
REFERENCE = textwrap.dedent("""
    import torch
    def make(device, channels_last, compile_):
        net = torch.nn.Conv2d(1, 1, 3, padding=1).to(device)
        return net, torch.optim.SGD(net.parameters(), lr=0.1)
    def step(net, optimizer, a, b, amp):
        optimizer.zero_grad()
        ((net(a) - b) ** 2).mean().backward()
        optimizer.step()
""")


def test_bench_prints_a_table_and_json_for_both_variants_and_the_reference(tmp_path, capsys):
    reference = tmp_path / "reference_step.py"
    reference.write_text(REFERENCE)
    overrides = {"ngf": 4, "ndf": 4, "n_res_blocks": 1, "decoder_channels": [8, 8, 8, 8, 8],
                 "perceptual_layers": ["relu1_1"], "perceptual_layer_weights": [1.0], "g_steps_per_d_step": 2}
    assert main(["--device", "cpu", "--sizes", "64", "--batches", "2", "--steps", "1", "--warmup", "0",
                 "--images", "4", "--threads", "1", "--model-json", json.dumps(overrides),
                 "--reference", str(reference), "--json", str(tmp_path / "bench.json")]) == 0
    table = capsys.readouterr().out
    assert table.startswith("device: ") and "| resnet9_patchgan | 64 | 2 |" in table
    assert "| unet_resnet18 | 64 | 2 |" in table and "| reference (reference_step.py) | 64 | 2 |" in table
    saved = json.loads((tmp_path / "bench.json").read_text())
    rows = {row["name"]: row for row in saved["rows"]}
    assert set(rows) == {"resnet9_patchgan", "unet_resnet18", "reference (reference_step.py)"}
    for row in rows.values():
        for key in ("image_pairs_per_s", "step_ms", "peak_memory_mb", "gflop_per_pair", "achieved_tflops"):
            assert math.isfinite(row[key]) and row[key] > 0, (row["name"], key)
    # FLOPs: a 3x3 conv on 64x64 images, forward + backward (~3x forward), per image pair.
    assert rows["reference (reference_step.py)"]["gflop_per_pair"] == pytest.approx(3 * 2 * 9 * 64 * 64 / 1e9,
                                                                                    rel=0.5)
    assert rows["resnet9_patchgan"]["vs_reference"] == pytest.approx(
        rows["resnet9_patchgan"]["image_pairs_per_s"] / rows["reference (reference_step.py)"]["image_pairs_per_s"])
    assert "vs_reference" not in rows["unet_resnet18"]  # another architecture: no ratio


def test_reference_file_must_have_make_and_step(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("def make(*args):\n    return ()\n")
    with pytest.raises(InputDataError, match="bad.py: has no make"):
        load_reference(bad)
    with pytest.raises(InputDataError, match="not found"):
        load_reference(tmp_path / "missing.py")


def test_recipe_timing_runs_the_engine_and_extrapolates(tmp_path, repo_root, capsys):
    from pipeline.bench import format_recipe, time_recipe

    result = time_recipe("cyclegan_cxr_pneumonia", [repo_root / "configs" / "tiny.yaml"], tmp_path, images=(6, 4),
                         size=40, epochs=2, train_overrides={"threads": 1, "epochs": 10},
                         params_file=repo_root / "params.yaml")
    # The tiny profile: batch 2, 3 steps per epoch, random 32 crops of the 40x40 images.
    assert (result["batch_size"], result["steps_per_epoch"], result["recipe_epochs"]) == (2, 3, 10)
    assert result["first_epoch_s"] > 0 and result["steady_epoch_s"] > 0 and result["checkpoint_and_grid_s"] >= 0
    # 10 epochs: the first as measured, 9 steady ones, 10 checkpoints and 10 grids (each every epoch).
    expected = result["first_epoch_s"] + 9 * result["steady_epoch_s"] + 10 * result["checkpoint_and_grid_s"]
    assert result["estimated_recipe_s"] == pytest.approx(expected)
    assert result["image_pairs_per_s"] == pytest.approx(6 / result["steady_epoch_s"])
    assert (tmp_path / "model" / "samples" / "epoch_0002.png").is_file()  # the real engine wrote its outputs
    assert "estimated recipe time:" in format_recipe(result)


def test_recipe_timing_refuses_bad_input(tmp_path, repo_root):
    from pipeline.bench import time_recipe
    from pipeline.errors import ConfigError

    with pytest.raises(ConfigError, match="unknown experiment 'nope'"):
        time_recipe("nope", [], tmp_path, params_file=repo_root / "params.yaml")
    with pytest.raises(ConfigError, match="missing.yaml: no such parameter file"):
        time_recipe("cyclegan_ct_mri", [tmp_path / "missing.yaml"], tmp_path, params_file=repo_root / "params.yaml")
    (tmp_path / "model").mkdir()  # a folder with an earlier measurement would be resumed, not timed
    with pytest.raises(ConfigError, match="needs an empty --work-dir"):
        time_recipe("cyclegan_ct_mri", [], tmp_path, params_file=repo_root / "params.yaml")


def test_bench_times_the_stylegan2_step_beside_the_published_figures(tmp_path, capsys):
    overrides = {"z_dim": 8, "w_dim": 8, "channel_base": 64, "channel_max": 8, "r1_interval": 2, "pl_interval": 2}
    assert main(["--stylegan2", "--device", "cpu", "--sizes", "16", "--batches", "2", "--steps", "2", "--warmup", "0",
                 "--images", "4", "--threads", "1", "--model-json", json.dumps(overrides),
                 "--json", str(tmp_path / "bench.json")]) == 0
    table = capsys.readouterr().out
    assert "V100 13 s/kimg, A100 6.79 s/kimg" in table and "| stylegan2 | 16 | 2 |" in table
    (row,) = json.loads((tmp_path / "bench.json").read_text())["rows"]
    assert row["s_per_kimg"] == pytest.approx(1000 / row["images_per_s"])
    assert row["step_ms"] == pytest.approx(1000 * 2 / row["images_per_s"])  # 2 images a step
    assert all(math.isfinite(row[k]) and row[k] > 0 for k in ("images_per_s", "s_per_kimg", "peak_memory_mb"))
