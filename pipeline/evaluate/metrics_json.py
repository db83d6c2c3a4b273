"""metrics.json: validated against pipeline/schemas/metrics.schema.json before it is written, and flattened for MLflow.

A downstream reader (DVC metrics, the report, MLflow, a claim's verdict) can rely on its shape:
every number is finite or null, every image metric states its data range and normalisation, and
no interval excludes its own estimate. The schema picks its definition by ``task``: translation
(the whole schema), generation, map_to_image and stylegan_editing ($defs/<task>_metrics).
"""

from __future__ import annotations

import json
import math
from functools import lru_cache
from pathlib import Path

from pipeline.atomic import write_json

METRICS_SCHEMA_PATH = Path(__file__).resolve().parents[1] / "schemas" / "metrics.schema.json"
SETTING_KEYS = {"data_range", "window_center", "window_width", "sigma", "max_drop"}
"""Numbers inside the direction blocks that are settings, not measurements (kept out of MLflow)."""


GENERATION_BLOCKS = ("distribution", "per_class", "discriminator", "classifier", "tstr", "memorisation")
"""Blocks of a generator's metrics.json whose numbers go to MLflow."""
GENERATION_SETTING_KEYS = {"k", "quantile", "last_epochs", "seed", "n_epochs", "epochs", "threshold", "max_shift",
                           "max_shift_pixels", "candidates", "candidate_spectrum_cycles", "copy_ratio"}
"""Numbers of a generator's blocks that are settings (memorisation's search among them), kept out of MLflow."""


MAP_TO_IMAGE_BLOCKS = ("distribution", "frd_per_organ", "anatomy", "style_per_organ", "diversity", "memorisation")
"""Blocks of a map-to-image generator's metrics.json (report 003) whose numbers go to MLflow."""
MAP_TO_IMAGE_SETTING_KEYS = GENERATION_SETTING_KEYS | {"n_real_max", "n_generated_max", "draws_per_map", "n_maps"}


@lru_cache(maxsize=4)
def _metrics_validator(task: str = "translation"):
    """The whole schema for translation; for another task its $defs/<task>_metrics (same $defs)."""
    import jsonschema

    schema = json.loads(METRICS_SCHEMA_PATH.read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    if task in ("generation", "map_to_image", "stylegan_editing"):
        schema = {"$schema": schema["$schema"], "$ref": f"#/$defs/{task}_metrics", "$defs": schema["$defs"]}
    return jsonschema.Draft202012Validator(schema)


def validate_metrics(metrics: dict) -> None:
    """Raise jsonschema.ValidationError when ``metrics`` does not match metrics.schema.json
    (a generator's, ``task`` "generation", its $defs/generation_metrics)."""
    import jsonschema

    generation = metrics.get("task") in ("generation", "map_to_image", "stylegan_editing")
    _metrics_validator(metrics["task"] if generation else "translation").validate(metrics)
    from pipeline.evaluate.measures.intervals import interval_problems

    min_subjects = (metrics.get("settings", {}).get("intervals") or {}).get("min_subjects")
    problems = interval_problems(metrics, min_subjects)
    if problems:
        raise jsonschema.ValidationError("intervals that do not hold: " + "; ".join(problems))
    if generation:
        return
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

    if metrics.get("task") == "map_to_image":
        for name in MAP_TO_IMAGE_BLOCKS:
            if metrics.get(name):
                walk(metrics[name], name)
        return {key: value for key, value in flat.items() if key.rsplit("/", 1)[-1] not in MAP_TO_IMAGE_SETTING_KEYS}
    if metrics.get("task") == "generation":
        for name in GENERATION_BLOCKS:
            if metrics.get(name):
                walk(metrics[name], name)
        return {key: value for key, value in flat.items() if key.rsplit("/", 1)[-1] not in GENERATION_SETTING_KEYS}
    for name in metrics["direction_names"]:
        walk(metrics[name], name)
    if metrics.get("classifier"):
        walk(metrics["classifier"], "classifier")
    return flat
