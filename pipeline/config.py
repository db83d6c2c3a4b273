"""params.yaml: loading, schema validation and the few derived values every stage agrees on.

params.yaml is the single source of knobs. Snakemake loads it as ``config`` and calls
:func:`validate_params` before building the DAG; stage CLIs receive the values they need as
flags from their rule, so a rule reruns exactly when a value it uses changes.
"""
from __future__ import annotations

import copy
from functools import lru_cache
from pathlib import Path
from typing import Any, Mapping, Sequence

import jsonschema
import yaml

from pipeline.errors import ConfigError

SCHEMA_PATH = Path(__file__).parent / "schemas" / "params.schema.yaml"

#: VOI window presets (center, width) in HU. "file" uses the series' own WindowCenter/Width.
CT_WINDOW_PRESETS: dict[str, tuple[float, float]] = {
    "brain": (40.0, 80.0),
    "subdural": (80.0, 200.0),
    "bone": (600.0, 2800.0),
}


@lru_cache(maxsize=1)
def params_schema() -> dict:
    return yaml.safe_load(SCHEMA_PATH.read_text())


def _key_path(error: jsonschema.ValidationError) -> str:
    return ".".join(str(p) for p in error.absolute_path) or "(top level)"


def _describe(error: jsonschema.ValidationError) -> str:
    if error.validator == "enum":
        allowed = ", ".join(repr(v) for v in error.validator_value)
        return f"{error.instance!r} is not allowed; allowed values: {allowed}"
    if error.validator == "not" and error.validator_value == {}:
        return "not a knob of this model"
    if error.validator == "additionalProperties":
        allowed = sorted(error.schema.get("properties", {}))
        return f"{error.message}; allowed keys: {', '.join(allowed)}"
    return error.message


def validate_params(cfg: Mapping[str, Any], source: str = "params.yaml") -> None:
    """Raise ConfigError naming every offending key and what is allowed there."""
    validator = jsonschema.Draft202012Validator(params_schema())
    errors = sorted(validator.iter_errors(cfg), key=lambda e: list(e.absolute_path))
    problems = [f"{source}: {_key_path(e)}: {_describe(e)}" for e in errors]
    for name, exp in (cfg.get("experiments") or {}).items():
        if not isinstance(exp, Mapping):
            continue
        inputs = exp.get("inputs") if isinstance(exp.get("inputs"), Mapping) else {}
        bound = {**{side: exp.get(side) for side in ("domain_a", "domain_b")},
                 **{f"inputs.{key}": value for key, value in inputs.items()}}
        for side, ds in bound.items():
            if ds is not None and ds not in (cfg.get("datasets") or {}):
                known = ", ".join(sorted(cfg.get("datasets") or {}))
                problems.append(f"{source}: experiments.{name}.{side}: unknown dataset {ds!r}; known: {known}")
    if problems:
        raise ConfigError("invalid parameters:\n  " + "\n  ".join(problems))


def read_yaml_mapping(path: str | Path) -> dict:
    """A YAML file holding a mapping (params.yaml, a profile such as configs/full.yaml)."""
    path = Path(path)
    try:
        cfg = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such parameter file") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(cfg, dict):
        raise ConfigError(f"{path}: must be a mapping of keys to values")
    return cfg


def load_params(path: str | Path = "params.yaml", overrides: Mapping[str, Any] | None = None,
                config_files: Sequence[str | Path] = ()) -> dict:
    """Load params.yaml, deep-merge ``config_files`` in order (as ``snakemake --configfile``
    does) and then ``overrides`` on top, validate, return."""
    cfg = read_yaml_mapping(path)
    for config_file in config_files:
        cfg = deep_merge(cfg, read_yaml_mapping(config_file))
    if overrides:
        cfg = deep_merge(cfg, overrides)
    validate_params(cfg, source=str(path))
    return cfg


def deep_merge(base: Mapping[str, Any], update: Mapping[str, Any]) -> dict:
    out = copy.deepcopy(dict(base))
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def ct_window(cfg: Mapping[str, Any]) -> tuple[float, float] | None:
    """(center, width) in HU from ``preprocess.ct_window``; None means "the file's own window"."""
    window = cfg["preprocess"]["ct_window"]
    preset = window["preset"]
    if preset == "file":
        return None
    if preset == "custom":
        if "center" not in window or "width" not in window:
            raise ConfigError("params.yaml: preprocess.ct_window: preset 'custom' needs center and width")
        return float(window["center"]), float(window["width"])
    return CT_WINDOW_PRESETS[preset]


def main(argv: list[str] | None = None) -> int:
    """`python -m pipeline.config [params.yaml]`: validate and say so."""
    import argparse

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("params", nargs="?", default="params.yaml")
    args = parser.parse_args(argv)
    try:
        load_params(args.params)
    except ConfigError as exc:
        print(exc)
        return 2
    print(f"{args.params}: valid")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
