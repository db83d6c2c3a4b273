import pytest

from pipeline.compare_runs import differing, main, runs_table
from pipeline.errors import PipelineError
from pipeline.tracking import Tracker


@pytest.fixture()
def store(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    for name, lr, ssim in (("run-a", "0.0001", 0.71), ("run-b", "0.0005", 0.78)):
        run = Tracker.start(uri, "cyclegan_ct_mri", name)
        run.log_params({"model.lr_g": lr, "train.epochs": "10"})
        run.set_tags({"git_commit": "abc123", "device": "cpu"})
        run.log_metrics({"ct_to_mri/ssim/mean": ssim, "train_seconds": 200.0})
        run.finish()
    return uri


def test_table_keeps_only_what_differs(store):
    table = runs_table(store, "cyclegan_ct_mri")
    assert list(table.columns) == ["run-b", "run-a"]  # newest first
    diff = differing(table)
    assert set(diff.index) == {"param model.lr_g", "metric ct_to_mri/ssim/mean"}
    assert diff.loc["param model.lr_g", "run-a"] == "0.0001"
    assert diff.loc["metric ct_to_mri/ssim/mean", "run-b"] == pytest.approx(0.78)


def test_cli_prints_the_differences(store, capsys):
    assert main(["cyclegan_ct_mri", "--tracking-uri", store]) == 0
    out = capsys.readouterr().out
    assert "model.lr_g" in out and "0.0005" in out
    assert "train.epochs" not in out and "git_commit" not in out


def test_unknown_experiment_names_the_known_ones(store, capsys):
    with pytest.raises(PipelineError, match="no experiment 'cyclegan_cxr'; known: .*cyclegan_ct_mri"):
        runs_table(store, "cyclegan_cxr")
    assert main(["cyclegan_cxr", "--tracking-uri", store]) == 1
    assert "no experiment" in capsys.readouterr().err
