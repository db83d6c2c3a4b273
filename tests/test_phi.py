"""No patient identity leaves the raw data: a slow end-to-end run of the headline chain on inputs
whose headers and names carry marker strings, then a search of everything the run wrote."""

from __future__ import annotations

import csv
import re

import pytest

from phi_support import FOLDER_MARKER, MARKERS, scanned_paths, uninterrupted_build
from pipeline.privacy import find_markers


@pytest.fixture(scope="module")
def build(tmp_path_factory, repo_root):
    return uninterrupted_build(tmp_path_factory, repo_root)


@pytest.mark.slow
def test_no_marker_in_any_output_log_or_mlflow_record(build):
    scanned = scanned_paths(build)
    assert {p.name for p in scanned} >= {"slices", "models", "results", "logs", "mlflow.db", "mlartifacts"}
    hits = find_markers(scanned, MARKERS)
    assert hits == [], "\n".join(f"{p.relative_to(build)}: {m} ({w})" for p, m, w in hits[:20])


@pytest.mark.slow
def test_the_markers_were_there_to_find_and_subjects_are_pseudonyms(build):
    """The scan is only worth something if the raw inputs did carry every marker."""
    raw_hits = {m for _, m, _ in find_markers([build / "data" / "raw"], MARKERS)}
    assert raw_hits == set(MARKERS) - {FOLDER_MARKER}  # names are pseudonymised even in data/raw
    with open(build / "data" / "slices" / "ct_head" / "manifest.csv", newline="") as handle:
        ids = {row["subject_id"] for row in csv.DictReader(handle)}
    assert len(ids) == 5 and all(re.fullmatch(r"sub-[0-9a-f]{12}", i) for i in ids), ids
