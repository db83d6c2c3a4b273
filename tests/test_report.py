"""`snakemake --report` on the built tiny chain: one self-contained HTML file with the figures and
metrics.json under a category per stage, each with its caption from report/."""
from __future__ import annotations

import html
from pathlib import Path

import pytest

from workflow_support import TARGET, run

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def report_html(built_tiny_repo: Path, tmp_path_factory) -> str:
    out = tmp_path_factory.mktemp("report") / "report.html"
    run(["snakemake", "--report", str(out), TARGET], built_tiny_repo)
    return html.unescape(out.read_text())


def test_report_has_every_category_and_captioned_result(report_html: str):
    for category in ("Preprocessing", "Slices", "Training", "Evaluation"):
        assert category in report_html, category
    for name in ("metrics.json", "triplets.png", "loss_curves.png", "preprocessing_ct_head.png",
                 "contact_sheet.png", "qc.csv"):
        assert name in report_html, name


def test_report_renders_the_captions_with_their_wildcards(report_html: str):
    assert "Metrics of experiment" in report_html and "held-out test slices" in report_html
    assert "translation into the other" in report_html  # triplets caption
    assert "Every" in report_html and "mid-axial thumbnail" in report_html  # contact sheets
    assert "{{" not in report_html.split("Metrics of experiment", 1)[1][:400]  # wildcard filled in


def test_every_caption_file_is_used_by_a_rule():
    rules = "".join(p.read_text() for p in (REPO / "pipeline" / "rules").glob("*.smk"))
    for caption in (REPO / "report").glob("*.rst"):
        if caption.name != "workflow.rst":
            assert f"report/{caption.name}" in rules, caption.name
