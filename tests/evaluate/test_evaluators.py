"""`python -m pipeline.evaluate` picks the evaluator by the trained model's task (the registry
pipeline.evaluate.EVALUATORS), not by the flags it is given."""
from __future__ import annotations

import logging

import pytest
import torch

from pipeline.errors import ConfigError
from pipeline.evaluate import EVALUATORS, evaluator_for_task
from pipeline.evaluate.__main__ import main
from pipeline.models import TASKS, trained_task
from pipeline.models.cyclegan import CycleGAN
from pipeline.models.dcgan import ConditionalDCGAN, DCGAN


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    """model.pt of a CycleGAN, a DCGAN and a conditional DCGAN, as the engine writes them."""
    root = tmp_path_factory.mktemp("exports")
    models = {
        "cyclegan": CycleGAN({"variant": "resnet9_patchgan", "ngf": 4, "ndf": 4, "n_res_blocks": 1}, None, 0),
        "dcgan": DCGAN({"ngf": 4, "ndf": 1, "nz": 4}, None, 0, image_size=(16, 16)),
        "cgan": ConditionalDCGAN({"ngf": 4, "ndf": 1, "nz": 4}, None, 0, image_size=(16, 16)),
    }
    paths = {}
    for name, model in models.items():
        paths[name] = root / f"{name}.pt"
        torch.save({**model.export(), "image_size": [16, 16]}, paths[name])
    return paths


def test_every_task_has_an_evaluator():
    assert set(EVALUATORS) == set(TASKS)
    assert evaluator_for_task("generation").__module__ == "pipeline.evaluate.tasks.generation"
    assert evaluator_for_task("translation").__module__ == "pipeline.evaluate.tasks.translation"
    with pytest.raises(ConfigError, match="no evaluator for task 'segmentation'"):
        evaluator_for_task("segmentation")


@pytest.mark.parametrize("name, task, own_flag", [
    ("cyclegan", "translation", "--test-a"), ("dcgan", "generation", "--nearest-pairs"),
    ("cgan", "generation", "--nearest-pairs"),
])
def test_the_cli_hands_each_model_to_its_tasks_evaluator(exports, capsys, name, task, own_flag):
    assert trained_task(exports[name]) == task
    with pytest.raises(SystemExit) as exit_info:
        main(["--model", str(exports[name]), "--help"])
    assert exit_info.value.code == 0
    usage = capsys.readouterr().out
    assert own_flag in usage
    other = "--nearest-pairs" if task == "translation" else "--test-a"
    assert other not in usage


def test_a_file_that_is_no_model_is_named(tmp_path, caplog):
    not_a_model = tmp_path / "model.pt"
    not_a_model.write_bytes(b"not a torch file")
    with caplog.at_level(logging.ERROR):
        assert main(["--model", str(not_a_model), "--out", str(tmp_path / "m.json")]) == 1
    assert f"{not_a_model}: cannot be read as a model file" in caplog.text
    assert not (tmp_path / "m.json").exists()


@pytest.mark.parametrize("name, wanted", [("dcgan", "translation"), ("cyclegan", "generation")])
def test_an_evaluator_refuses_a_model_of_another_task(exports, name, wanted):
    """Every evaluator loads its model through pipeline.evaluate.load_for_evaluation: a model of
    another task is an error naming the file, before any data is read."""
    from pipeline.errors import InputDataError
    from pipeline.evaluate.cli import load_for_evaluation

    actual = trained_task(exports[name])
    with pytest.raises(InputDataError, match=f"{exports[name]}: is a {actual} model, not an evaluable thing"):
        load_for_evaluation(exports[name], "auto", wanted, "an evaluable thing")
    assert load_for_evaluation(exports[name], "auto", actual, "x").task == actual
