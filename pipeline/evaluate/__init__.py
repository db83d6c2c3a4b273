"""Evaluation of trained models: image metrics, FID/KID/FRD, classifier, intervals, and metrics.json.

metrics.json is validated against pipeline/schemas/metrics.schema.json before it is written, so
a downstream reader (DVC metrics, the report, MLflow) can rely on its shape: every number is
finite or null, and every image metric states its data range and normalisation.
"""

from __future__ import annotations

import json
import math
from functools import lru_cache
from pathlib import Path

from pipeline.atomic import write_json

METRICS_SCHEMA_PATH = Path(__file__).resolve().parents[1] / "schemas" / "metrics.schema.json"
SETTING_KEYS = {"data_range", "window_center", "window_width", "subsets", "subset_size", "sigma", "max_drop"}
"""Numbers inside the direction blocks that are settings, not measurements (kept out of MLflow)."""


@lru_cache(maxsize=1)
def _metrics_validator():
    import jsonschema

    schema = json.loads(METRICS_SCHEMA_PATH.read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def validate_metrics(metrics: dict) -> None:
    """Raise jsonschema.ValidationError when ``metrics`` does not match metrics.schema.json."""
    import jsonschema

    _metrics_validator().validate(metrics)
    missing = [name for name in metrics["direction_names"] if name not in metrics]
    if missing:
        raise jsonschema.ValidationError(f"direction_names lists {missing}, which have no block")


def write_metrics(target: Path, metrics: dict) -> None:
    """Validate, then write atomically (NaN or infinity anywhere makes the write fail, not the file)."""
    validate_metrics(metrics)
    write_json(target, metrics)


def flatten_metrics(metrics: dict) -> dict[str, float]:
    """Finite numbers of the direction blocks (and the classifier's) as {"ct_to_mri/ssim_cycle/mean": 0.93, ...} for MLflow."""
    flat: dict[str, float] = {}

    def walk(node, prefix: str) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key not in SETTING_KEYS:
                    walk(value, f"{prefix}/{key}")
        elif isinstance(node, (int, float)) and not isinstance(node, bool) and math.isfinite(node):
            flat[prefix] = float(node)

    for name in metrics["direction_names"]:
        walk(metrics[name], name)
    if metrics.get("classifier"):
        walk(metrics["classifier"], "classifier")
    return flat
