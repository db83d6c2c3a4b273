"""The pieces every preprocessing stage shares: its command line (pipeline/preprocess/__init__.py)
and its patient split (extract_slices: fractions, numbering within a patient, items by split)."""
from __future__ import annotations

from types import SimpleNamespace

import pytest

from pipeline.errors import ConfigError, InputDataError
from pipeline.preprocess import add_knob_options, run_commands_cli, stage_parser
from pipeline.preprocess.extract_slices import assign_splits, check_split_fractions, number_within_patient


def _stage(raw_dir, size: int = 64, val_fraction: float = 0.15, policy: str = "ignore"):
    return raw_dir, size, val_fraction, policy


def test_knob_flags_parse_as_their_default_and_absent_ones_are_left_to_the_stage():
    parser = stage_parser("pipeline.preprocess.example", "Example stage.\nMore text.")
    parser.add_argument("--raw", dest="raw_dir", required=True)
    add_knob_options(parser, _stage, ["size", "val_fraction"], {"policy": {"choices": ["ignore", "zeros"]}})
    assert parser.prog == "python -m pipeline.preprocess.example" and parser.description == "Example stage."
    args = vars(parser.parse_args(["--raw", "r", "--size", "32", "--policy", "zeros"]))
    assert args == {"raw_dir": "r", "size": 32, "policy": "zeros"} and type(args["size"]) is int
    assert vars(parser.parse_args(["--raw", "r", "--val-fraction", "0.3"]))["val_fraction"] == 0.3
    with pytest.raises(SystemExit):
        parser.parse_args(["--raw", "r", "--policy", "ones"])


def test_a_command_gets_its_arguments_as_keywords_and_a_pipeline_error_exits_1(capsys):
    calls = []

    def broken(path):
        raise InputDataError(path, "not readable")

    parser = stage_parser("pipeline.preprocess.example", None)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("good").add_argument("--out", required=True)
    commands.add_parser("bad").add_argument("--path", required=True)
    table = {"good": lambda out: calls.append(out), "bad": broken}
    run_commands_cli(parser, table, ["good", "--out", "o"])
    assert calls == ["o"]
    with pytest.raises(SystemExit) as exit_info:
        run_commands_cli(parser, table, ["bad", "--path", "p.nii.gz"])
    assert exit_info.value.code == 1 and capsys.readouterr().err == "error: p.nii.gz: not readable\n"


def test_split_fractions_must_leave_subjects_for_training():
    check_split_fractions("preprocess.example", 0.15, 0.2)
    check_split_fractions("preprocess.example", 0.0, 0.0)
    for val, test in [(0.5, 0.5), (-0.1, 0.2), (0.2, 1.0), (1.0, 0.0)]:
        with pytest.raises(ConfigError, match=r"^preprocess\.example: val_fraction \+ test_fraction"):
            check_split_fractions("preprocess.example", val, test)


def test_items_are_numbered_within_their_patient_and_grouped_by_split():
    items = [SimpleNamespace(patient=p, name=n) for p, n in [("a", 1), ("b", 2), ("a", 3), ("c", 4)]]
    assert number_within_patient(items) == {"a": 2, "b": 1, "c": 1}
    assert [item.slice_index for item in items] == [0, 0, 1, 0]
    groups = assign_splits(items, {"a": "test", "b": "train", "c": "val"}, lambda item: item.patient)
    assert list(groups) == ["train", "val", "test"]
    assert {split: [item.name for item in members] for split, members in groups.items()} == {
        "train": [2], "val": [4], "test": [1, 3]}  # fmt: skip
    assert [item.split for item in items] == ["test", "train", "test", "val"]
