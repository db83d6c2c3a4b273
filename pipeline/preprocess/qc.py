"""Preprocessing QC: one registration table and one contact sheet per stage, for a dataset.

The registration table gathers every subject's ``<subject>.qc.json`` (written by
``pipeline.preprocess.register``) into one CSV, failed subjects first, so a reader sees at a glance
which subjects were dropped and why, and how much the registration improved the similarity to the
reference. The contact sheet shows every subject of one stage side by side (mid-axial slice, display
convention: anterior at the top, the patient's left on the right), the quickest way to spot a
subject that is flipped, shifted or empty.
"""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import nibabel as nib
import numpy as np
import pandas as pd

from pipeline.atomic import atomic_path
from pipeline.errors import InputDataError
from pipeline import figures
from pipeline.figures import axial_display
from pipeline.preprocess import run_commands_cli, stage_parser
from pipeline.preprocess.extract_slices import subject_id

_log = logging.getLogger(__name__)

REGISTRATION_COLUMNS = (
    "subject_id",
    "is_reference",
    "status",
    "reason",
    "ncc_identity",
    "ncc_rigid",
    "ncc_final",
    "jacobian_min",
    "jacobian_max",
    "reference_score",
)
# Keys of a register QC JSON copied verbatim into the table.
_QC_KEYS = ("status", "reason", "ncc_identity", "ncc_rigid", "ncc_final", "jacobian_min", "jacobian_max")


def _read_json(path: Path, required: Sequence[str], writer: str) -> dict:
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise InputDataError(path, f"unreadable JSON ({exc})") from exc
    missing = [key for key in required if not isinstance(record, dict) or key not in record]
    if missing:
        raise InputDataError(path, f"not a JSON written by {writer}: missing {missing}")
    return record


def registration_table(qc_jsons: Sequence[Path], reference_json: Path, out_csv: Path) -> pd.DataFrame:
    """Write the dataset's registration QC as CSV (failed subjects first, then by id); returns it.

    Similarities are NCC to the reference before registration (identity, i.e. plain resampling),
    after the rigid stage and at the end; the Jacobian determinant range is taken inside the
    reference head. ``reference_score`` is the reference-selection score (NCC of a subject to the
    mean of the others after rigid alignment) from ``reference.json``; empty for subjects that were
    not candidates (held-out paired subjects).
    """
    reference = _read_json(Path(reference_json), ("reference", "scores"), "'register choose'")
    rows = []
    for path in map(Path, qc_jsons):
        qc = _read_json(path, ("subject", *_QC_KEYS), "'register register'")
        sid = str(qc["subject"])
        rows.append(
            {
                "subject_id": sid,
                "is_reference": sid == reference["reference"],
                **{key: qc[key] for key in _QC_KEYS},
                "reference_score": reference["scores"].get(sid),
            }
        )
    ids = [row["subject_id"] for row in rows]
    duplicated = sorted({sid for sid in ids if ids.count(sid) > 1})
    if duplicated:
        raise InputDataError(Path(qc_jsons[0]).parent, f"several QC files for subject(s) {duplicated}")
    table = pd.DataFrame(rows, columns=list(REGISTRATION_COLUMNS))
    table = table.sort_values(
        ["status", "subject_id"], key=lambda col: col.ne("failed") if col.name == "status" else col
    ).reset_index(drop=True)
    with atomic_path(out_csv) as tmp:
        table.to_csv(tmp, index=False)
    _log.info("%s: %d subjects, %d failed", out_csv, len(table), int((table["status"] == "failed").sum()))
    return table


def _load_volume(path: Path) -> np.ndarray:
    if not path.is_file():
        raise InputDataError(path, "file not found")
    try:
        image = nib.as_closest_canonical(nib.load(path))
        volume = np.asanyarray(image.dataobj, dtype=np.float32)
    except Exception as exc:  # nibabel raises many types for a corrupt file
        raise InputDataError(path, f"not a readable NIfTI volume ({exc})") from exc
    if volume.ndim != 3:
        raise InputDataError(path, f"expected a 3-D volume, got shape {volume.shape}")
    return volume


def contact_sheet(volumes: Sequence[Path], out_png: Path, title: str) -> None:
    """One mid-axial thumbnail per subject, labelled by subject id, in display convention.

    Volumes are stage outputs in [0, 1], shown on that fixed range so that an intensity problem
    stands out instead of being rescaled away.
    """
    if not volumes:
        raise InputDataError(Path(out_png).parent, "contact sheet: no volume given")
    paths = sorted(map(Path, volumes), key=subject_id)
    tiles = [(subject_id(path), axial_display(_load_volume(path)), False) for path in paths]
    figures.contact_sheet(tiles, out_png, title)


def _parser() -> argparse.ArgumentParser:
    parser = stage_parser("pipeline.preprocess.qc", __doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    table = commands.add_parser("registration-table", help="gather the registration QC JSONs into one CSV")
    table.add_argument("--qc", required=True, type=Path, nargs="+", help="<subject>.qc.json files")
    table.add_argument("--reference-json", dest="reference_json", required=True, type=Path)
    table.add_argument("--out", required=True, type=Path)
    sheet = commands.add_parser("contact-sheet", help="mid-axial thumbnails of every subject of a stage")
    sheet.add_argument("--volumes", required=True, type=Path, nargs="+")
    sheet.add_argument("--out", required=True, type=Path)
    sheet.add_argument("--title", required=True)
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    commands = {
        "registration-table": lambda qc, reference_json, out: registration_table(qc, reference_json, out),
        "contact-sheet": lambda volumes, out, title: contact_sheet(volumes, out, title),
    }
    run_commands_cli(_parser(), commands, argv)


if __name__ == "__main__":
    main()
