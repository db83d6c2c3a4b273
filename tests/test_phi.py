"""No patient identity enters the workflow: a slow end-to-end run of the headline chain on inputs
whose headers, metadata and names carry marker strings (phi_support), then the user's closing
steps (`dvc commit`, `dvc push` to a remote, `snakemake --report`), then a search of everything:
the whole work tree (data/raw included), .dvc/cache, the remote, .snakemake/ and the report.

De-identification happens at the door (pipeline.sources.deidentify), so data/raw itself must be
clean; with it switched off this test fails on data/raw, the DVC cache and the remote."""

from __future__ import annotations

import csv
import re
from pathlib import Path

import pytest

from phi_support import FILE_MARKER, FOLDER_MARKER, MARKERS, scanned_paths, shared_inputs, uninterrupted_build
from pipeline.privacy import find_markers
from workflow_support import TARGET, run

#: The project's own code, which holds the markers as test constants, is not searched.
NOT_SEARCHED = ("tests", ".git")
#: The DVC stages the headline target (and the X-ray image set's download) built.
BUILT_STAGES = (
    "raw_ct_head", "raw_mri_t2", "raw_chest_xray", "preprocess_ct_head", "preprocess_mri_t2",
    "train_cyclegan_ct_mri", "classifier_cyclegan_ct_mri", "evaluate_cyclegan_ct_mri",
)  # fmt: skip


@pytest.fixture(scope="module")
def build(tmp_path_factory, repo_root):
    return uninterrupted_build(tmp_path_factory, repo_root)


@pytest.fixture(scope="module")
def shared(build, tmp_path_factory) -> dict[str, Path]:
    """The build after the marked X-ray set's download, `dvc commit` + `dvc push` to a new
    local remote, and a Snakemake report: every place a copy of the data can end up."""
    run(["snakemake", "--cores", "2", "data/raw/chest_xray"], build)
    remote = tmp_path_factory.mktemp("phi_remote")
    run(["dvc", "remote", "add", "phi_remote", str(remote)], build)
    run(["dvc", "commit", "--force", "--quiet", *BUILT_STAGES], build)
    run(["dvc", "push", "--quiet", "-r", "phi_remote"], build)
    report = tmp_path_factory.mktemp("phi_report") / "report.html"
    run(["snakemake", "--report", str(report), TARGET], build)
    return {"work": build, "remote": remote, "report": report}


def _named(paths, markers) -> list[Path]:
    """Files and folders whose name holds a marker."""
    return [p for p in paths if any(m.lower() in p.name.lower() for m in markers)]


def _listed(hits, root: Path) -> str:
    return "\n".join(f"{p.relative_to(root) if root in p.parents else p}: {m} ({w})" for p, m, w in hits[:20])


@pytest.mark.slow
def test_no_marker_in_any_output_log_or_mlflow_record(build):
    scanned = scanned_paths(build)
    assert {p.name for p in scanned} >= {"slices", "models", "results", "logs", "mlflow.db", "mlartifacts"}
    hits = find_markers(scanned, MARKERS)
    assert hits == [], _listed(hits, build)


@pytest.mark.slow
def test_no_marker_in_raw_data_dvc_cache_remote_snakemake_or_report(shared):
    work, remote, report = shared["work"], shared["remote"], shared["report"]
    cached = [p for p in (work / ".dvc" / "cache").rglob("*") if p.is_file()]
    pushed = [p for p in remote.rglob("*") if p.is_file()]
    raw_files = [p for p in (work / "data" / "raw").rglob("*") if p.is_file()]
    assert len(pushed) >= len(raw_files) > 20 and cached, "the raw data did reach the cache and the remote"
    assert (work / ".snakemake").is_dir() and report.stat().st_size > 0
    searched = [p for p in work.iterdir() if p.name not in NOT_SEARCHED]  # .dvc/cache, .snakemake, data...
    hits = find_markers([*searched, remote, report], MARKERS)
    assert hits == [], _listed(hits, work)
    every_path = [p for root in (*searched, remote) for p in (root.rglob("*") if root.is_dir() else [root])]
    assert _named(every_path, MARKERS) == []


@pytest.mark.slow
def test_the_markers_were_there_to_find_and_subjects_are_pseudonyms(build, tmp_path_factory, repo_root):
    """The scans are only worth something if the inputs did carry every marker."""
    inputs = shared_inputs(tmp_path_factory, repo_root)
    in_names = {FILE_MARKER, FOLDER_MARKER}
    assert {m for _, m, _ in find_markers([inputs], MARKERS)} >= set(MARKERS) - in_names
    assert {m for m in in_names if _named(inputs.rglob("*"), [m])} == in_names
    with open(build / "data" / "slices" / "ct_head" / "manifest.csv", newline="") as handle:
        ids = {row["subject_id"] for row in csv.DictReader(handle)}
    assert len(ids) == 5 and all(re.fullmatch(r"sub-[0-9a-f]{12}", i) for i in ids), ids
