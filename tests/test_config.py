from pathlib import Path

import pytest
import yaml

from pipeline.config import ct_window, deep_merge, load_params, validate_params
from pipeline.errors import ConfigError


@pytest.fixture()
def params(repo_root):
    return load_params(repo_root / "params.yaml")


def test_shipped_params_and_profiles_are_valid(repo_root, params):
    for profile in sorted((repo_root / "configs").glob("*.yaml")):
        validate_params(deep_merge(params, yaml.safe_load(profile.read_text())), str(profile))


def test_bad_enum_names_key_and_allowed_values(params):
    params["datasets"]["ct_head"]["source"] = "phantom"
    with pytest.raises(ConfigError) as err:
        validate_params(params)
    message = str(err.value)
    assert "datasets.ct_head.source" in message
    assert "'phantom_head'" in message and "'cq500'" in message


def test_unknown_key_is_named(params):
    params["experiments"]["cyclegan_ct_mri"]["train"]["learning_rate"] = 0.1
    with pytest.raises(ConfigError, match=r"experiments\.cyclegan_ct_mri\.train.*learning_rate"):
        validate_params(params)


def test_experiment_must_name_known_datasets(params):
    params["experiments"]["cyclegan_ct_mri"]["domain_b"] = "mri_t1"
    with pytest.raises(ConfigError, match="domain_b: unknown dataset 'mri_t1'"):
        validate_params(params)


def test_load_params_reports_missing_and_malformed_files(tmp_path: Path):
    with pytest.raises(ConfigError, match="no such parameter file"):
        load_params(tmp_path / "absent.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("seed: [1\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_params(bad)


def test_ct_window_presets(params):
    assert ct_window(params) == (40.0, 80.0)
    params["preprocess"]["ct_window"] = {"preset": "custom", "center": 50, "width": 120}
    assert ct_window(params) == (50.0, 120.0)
    params["preprocess"]["ct_window"] = {"preset": "file"}
    assert ct_window(params) is None


def test_deep_merge_overrides_leaves_only():
    base = {"a": {"b": 1, "c": 2}, "d": [1]}
    merged = deep_merge(base, {"a": {"c": 3}, "d": [2]})
    assert merged == {"a": {"b": 1, "c": 3}, "d": [2]}
    assert base == {"a": {"b": 1, "c": 2}, "d": [1]}
