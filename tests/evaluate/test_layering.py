"""The evaluation's two layers hold, read from the source's imports (``ast``, nothing imported).

- a measure (pipeline/evaluate/measures/) imports no task, nor the task-side glue (cli,
  metrics_json, the registry): measures are the bottom layer;
- a task evaluator (pipeline/evaluate/tasks/) imports no other task (its own figures module,
  ``<task>_figures``, belongs to it);
- pipeline/evaluate holds no flat module besides the registry, the dispatching CLI, the shared
  CLI helper and metrics.json's module: every measure and task lives in its layer;
- no two modules of pipeline/ import each other, directly or round a longer circle;
- data flows sources -> preprocess -> models / engine -> evaluate: no source imports a later stage
  (what both sides need, label tables, kernel words, the pydicom log guard, lives below both:
  pipeline/labels.py, pipeline/privacy.py).

Every import counts, at module level or inside a function: a function-level import only defers
the loading (for start-up time, or to keep torch out of a light CLI), the arrow between the two
modules is the same, so a circle through one is still a circle in the design.
"""
from __future__ import annotations

import ast
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
EVALUATE = "pipeline.evaluate"
MEASURES = f"{EVALUATE}.measures"
TASKS = f"{EVALUATE}.tasks"
EVALUATE_TOP = {EVALUATE, f"{EVALUATE}.__main__", f"{EVALUATE}.cli", f"{EVALUATE}.metrics_json", MEASURES, TASKS}
"""The only modules of pipeline/evaluate outside the two layers (the packages themselves included)."""
SOURCES = "pipeline.sources"
LATER_STAGES = ("pipeline.preprocess", "pipeline.models", "pipeline.engine", "pipeline.train", "pipeline.evaluate",
                "pipeline.latent")
"""Stages downstream of the sources, packages and their modules alike."""


@dataclass(frozen=True)
class Import:
    source: str
    target: str
    line: int

    def where(self, root: Path) -> str:
        return f"{module_path(root, self.source)}:{self.line} imports {self.target}"


def module_path(root: Path, module: str) -> str:
    path = root / Path(*module.split("."))
    return str((path / "__init__.py" if path.is_dir() else path.with_suffix(".py")).relative_to(root))


def modules(root: Path, package: str = "pipeline") -> dict[str, Path]:
    """Dotted name -> file of every module in ``package`` (a package is named by its __init__.py)."""
    found = {}
    for path in sorted((root / package).rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def imports(root: Path) -> list[Import]:
    """Every import of one pipeline module by another, at any depth of the source file."""
    known = modules(root)
    edges = []
    for name, path in known.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in import_nodes(path.read_text()):
            targets = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(anchor + ([base] if base else []))
                targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base for alias in node.names]
            for target in targets:
                if target in known and target != name:
                    edges.append(Import(name, target, node.lineno))
    return edges


@lru_cache(maxsize=None)
def import_nodes(source: str) -> tuple[ast.Import | ast.ImportFrom, ...]:
    """The import statements of a source text, at any depth (cached: the checks' copies share most files)."""
    return tuple(node for node in ast.walk(ast.parse(source)) if isinstance(node, (ast.Import, ast.ImportFrom)))


def layer_problems(root: Path) -> list[str]:
    """Each import or module that breaks the evaluation's layering (module docstring), located."""
    problems = []
    for edge in imports(root):
        if edge.source.startswith(f"{MEASURES}.") and (edge.target in EVALUATE_TOP - {MEASURES}
                                                      or edge.target.startswith(f"{TASKS}.")):
            problems.append(f"a measure imports the task side: {edge.where(root)}")
        if edge.source.startswith(f"{TASKS}.") and edge.target.startswith(f"{TASKS}.") \
                and task_of(edge.source) != task_of(edge.target):
            problems.append(f"a task imports another task: {edge.where(root)}")
    for name in modules(root):
        if name.startswith(EVALUATE) and name not in EVALUATE_TOP \
                and not name.startswith((f"{MEASURES}.", f"{TASKS}.")):
            problems.append(f"{module_path(root, name)} is neither a measure nor a task (pipeline/evaluate/measures/, "
                            "pipeline/evaluate/tasks/)")
    return problems


def stage_problems(root: Path) -> list[str]:
    """Each import by which a source reaches a later stage, located."""
    return [f"a source imports a later stage: {edge.where(root)}" for edge in imports(root)
            if edge.source.startswith(f"{SOURCES}.")
            and any(edge.target == stage or edge.target.startswith(f"{stage}.") for stage in LATER_STAGES)]


def task_of(module: str) -> str:
    """The task a module under tasks/ belongs to: its name, less the ``_figures`` of its figures module."""
    return module.rsplit(".", 1)[-1].removesuffix("_figures")


def cycles(root: Path) -> list[list[str]]:
    """Each set of pipeline modules that reach one another through imports (strongly connected
    components of more than one module, Tarjan's algorithm), sorted."""
    graph: dict[str, set[str]] = {name: set() for name in modules(root)}
    for edge in imports(root):
        graph[edge.source].add(edge.target)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in sorted(graph[node]):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return sorted(found)


def test_measures_know_no_task_and_tasks_know_no_other_task():
    assert layer_problems(REPO) == []


def test_no_import_cycle_in_pipeline():
    assert cycles(REPO) == []


def test_no_source_imports_a_later_stage():
    assert stage_problems(REPO) == []


def test_the_check_sees_a_source_reaching_a_later_stage(tmp_path):
    """A deferred import of a preprocessing stage by a phantom, as the thorax phantom once had
    for its label table, is an arrow the wrong way."""
    copy = copy_pipeline(tmp_path)
    phantom = copy / "pipeline/sources/phantom_tcia_thorax.py"
    phantom.write_text(phantom.read_text() + "\n\ndef _wrong():\n    from pipeline.preprocess import thorax_labels\n")
    assert any(p.startswith("a source imports a later stage: pipeline/sources/phantom_tcia_thorax.py")
               for p in stage_problems(copy)), stage_problems(copy)


def test_the_registry_names_task_evaluators():
    """``python -m pipeline.evaluate`` dispatches only to task evaluators (or to a stage outside
    pipeline/evaluate that evaluates its own models, such as the encoder's inversion)."""
    from pipeline.evaluate import EVALUATORS

    for task, entry in EVALUATORS.items():
        module = entry.split(":")[0]
        assert not module.startswith(EVALUATE) or module.startswith(f"{TASKS}."), (task, entry)


@pytest.mark.parametrize("source, line, problem", [
    ("pipeline/evaluate/measures/fid.py", "    from pipeline.evaluate.tasks import translation",
     "a measure imports the task side: pipeline/evaluate/measures/fid.py"),
    ("pipeline/evaluate/measures/prdc.py", "from pipeline.evaluate.metrics_json import write_metrics",
     "a measure imports the task side: pipeline/evaluate/measures/prdc.py"),
    ("pipeline/evaluate/tasks/map_to_image.py", "from pipeline.evaluate.tasks.generation import evaluate_generation",
     "a task imports another task: pipeline/evaluate/tasks/map_to_image.py"),
])
def test_the_check_sees_a_wrong_arrow(tmp_path, source, line, problem):
    """The same check on a copy of pipeline/ with one wrong import added (inside a function for
    the first: a deferred import is an arrow too)."""
    copy = copy_pipeline(tmp_path)
    target = copy / source
    text = target.read_text()
    if line.startswith(" "):
        text += f"\n\ndef _wrong():\n{line}\n"
    else:
        text = text.replace("from __future__ import annotations\n", f"from __future__ import annotations\n{line}\n", 1)
    target.write_text(text)
    assert any(p.startswith(problem) for p in layer_problems(copy)), layer_problems(copy)


def test_the_check_sees_a_cycle_and_a_flat_module(tmp_path):
    """A circle through a function-level import, and a measure left in the flat room, are both found."""
    copy = copy_pipeline(tmp_path)
    slices = copy / "pipeline/evaluate/measures/slices.py"
    slices.write_text(slices.read_text() + "\n\ndef _back():\n    from pipeline.evaluate.measures import summary\n")
    summary = copy / "pipeline/evaluate/measures/summary.py"
    summary.write_text(summary.read_text().replace(
        "from pipeline.evaluate.measures import intervals\n",
        "from pipeline.evaluate.measures import intervals\nfrom pipeline.evaluate.measures import slices\n"))
    (copy / "pipeline/evaluate/dice_again.py").write_text("import numpy as np\n")
    assert ["pipeline.evaluate.measures.slices", "pipeline.evaluate.measures.summary"] in cycles(copy)
    assert "pipeline/evaluate/dice_again.py is neither a measure nor a task" in " ".join(layer_problems(copy))


def copy_pipeline(tmp_path: Path) -> Path:
    import shutil

    shutil.copytree(REPO / "pipeline", tmp_path / "pipeline", ignore=shutil.ignore_patterns("__pycache__"))
    return tmp_path
