"""Data flows sources -> preprocess -> models -> evaluate: no source imports a later stage.

Definitions both sides need (label tables, kernel words, the pydicom log guard) live below both
(pipeline/labels.py, pipeline/privacy.py). Read from the source text with ``ast``, so a lazy
import inside a function counts too.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pipeline.sources

LATER_STAGES = ("pipeline.preprocess", "pipeline.models", "pipeline.evaluate", "pipeline.train", "pipeline.latent")


def _imported_modules(path: Path) -> set[str]:
    modules = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.ImportFrom) and node.module:
            modules.add(node.module)
        elif isinstance(node, ast.Import):
            modules.update(alias.name for alias in node.names)
    return modules


def test_no_source_imports_a_later_stage():
    folder = Path(pipeline.sources.__file__).parent
    wrong = {
        f"{path.name}: {module}"
        for path in sorted(folder.glob("*.py"))
        for module in _imported_modules(path)
        if module.startswith(LATER_STAGES)
    }
    assert not wrong, f"sources import later stages: {sorted(wrong)}"
