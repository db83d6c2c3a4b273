"""Verdicts from claims: the decision rule on hand-made metrics, errors, the CLI and the table."""
from __future__ import annotations

import json

import pytest

from pipeline.errors import ConfigError, InputDataError
from pipeline.verdict import FAIL, NOT_MEASURED, PASS, UNDECIDED, build_verdict, judge_all, main

METRICS = {
    "ct_to_mri": {
        "ssim_gain": {"mean": 0.30, "std": 0.1, "ci95": [0.21, 0.38], "ci95_reason": None},
        "ssim_cycle": {"mean": 0.82, "ci95": [0.78, 0.86], "ci95_reason": None},
        "ssim_low": {"mean": 0.40, "ci95": [0.35, 0.45], "ci95_reason": None},
        "share": {"mean": None, "ci95": None, "ci95_reason": "no subjects"},
        "point_only": {"mean": 0.95, "ci95": None, "ci95_reason": "fewer subjects (3) than evaluate.min_subjects (8)"},
    },
    "distribution": {
        "frd": {"value": 5.0, "ci95": [4.0, 6.0], "ci95_reason": None, "reason": None},
        "frd_floor": {"value": 2.8, "ci95": [2.5, 3.2], "ci95_reason": None, "reason": None},
        "fid": {"value": None, "ci95": None, "ci95_reason": None, "reason": "Inception weights not on disk"},
        "n": 12,
    },
}


def claim(name, metric, compare, threshold, **extra):
    return {"name": name, "says": f"{name} says", "metric": metric, "compare": compare, "threshold": threshold, **extra}


def verdicts(claims, metrics=METRICS):
    return {r["name"]: r for r in judge_all(claims, metrics, "metrics.json")}


def test_pass_fail_undecided_by_where_the_interval_lies():
    out = verdicts([
        claim("gain", "ct_to_mri/ssim_gain", ">=", 0.15),           # [0.21, 0.38] all above
        claim("cycle_high", "ct_to_mri/ssim_cycle", ">=", 0.9),     # [0.78, 0.86] all below
        claim("cycle_mid", "ct_to_mri/ssim_cycle", ">=", 0.8),      # straddles
        claim("low_below", "ct_to_mri/ssim_low", "<", 0.5),         # [0.35, 0.45] all below 0.5
        claim("low_above", "ct_to_mri/ssim_low", "<=", 0.3),        # all above 0.3: fails
        claim("edge", "ct_to_mri/ssim_low", ">=", 0.35),            # lower bound on the threshold counts for >=
        claim("edge_strict", "ct_to_mri/ssim_low", ">", 0.35),      # ... but not for >
    ])
    assert out["gain"]["verdict"] == PASS and out["gain"]["ci95"] == [0.21, 0.38]
    assert out["cycle_high"]["verdict"] == FAIL
    assert out["cycle_mid"]["verdict"] == UNDECIDED and "straddles" in out["cycle_mid"]["reason"]
    assert out["low_below"]["verdict"] == PASS
    assert out["low_above"]["verdict"] == FAIL
    assert out["edge"]["verdict"] == PASS
    assert out["edge_strict"]["verdict"] == UNDECIDED


def test_null_is_not_measured_with_its_reason_and_a_point_estimate_never_passes():
    out = verdicts([
        claim("share", "ct_to_mri/share", ">=", 0.9),
        claim("fid", "distribution/fid", "<=", 100.0),
        claim("point", "ct_to_mri/point_only", ">=", 0.5),
        claim("bare", "distribution/n", ">=", 1),
    ])
    assert out["share"]["verdict"] == NOT_MEASURED and out["share"]["reason"] == "no subjects"
    assert out["fid"]["verdict"] == NOT_MEASURED and "Inception" in out["fid"]["reason"]
    assert out["point"]["verdict"] == UNDECIDED and "min_subjects" in out["point"]["reason"]
    assert out["bare"]["verdict"] == UNDECIDED and out["bare"]["value"] == 12


def test_relative_threshold_counts_the_floor_interval_conservatively():
    # frd [4, 6] against 2 x floor [5.0, 6.4]: neither wholly below nor wholly above
    mid = verdicts([claim("near", "distribution/frd", "<=", {"metric": "distribution/frd_floor", "times": 2})])["near"]
    assert mid["verdict"] == UNDECIDED and mid["threshold_interval"] == pytest.approx([5.0, 6.4])
    # against 3 x floor [7.5, 9.6]: the claim's upper bound 6 is below the threshold's lower bound
    assert verdicts([claim("near", "distribution/frd", "<=",
                           {"metric": "distribution/frd_floor", "times": 3})])["near"]["verdict"] == PASS
    # against 1 x floor + 0.1 [2.6, 3.3]: the claim's lower bound 4 is above the threshold's upper bound
    assert verdicts([claim("near", "distribution/frd", "<=",
                           {"metric": "distribution/frd_floor", "plus": 0.1})])["near"]["verdict"] == FAIL
    unmeasured = verdicts([claim("near", "distribution/frd", "<=", {"metric": "distribution/fid"})])["near"]
    assert unmeasured["verdict"] == NOT_MEASURED and "distribution/fid" in unmeasured["reason"]


def test_a_relative_threshold_without_an_interval_never_makes_a_pass():
    metrics = METRICS | {"floor": {"frd": {"value": 9.0, "ci95": None, "ci95_reason": "3 subjects"}}}
    # frd [4, 6] wholly below the point floor 9: would pass, but the floor's uncertainty is not known
    point = verdicts([claim("near", "distribution/frd", "<=", {"metric": "floor/frd"})], metrics)["near"]
    assert point["verdict"] == UNDECIDED and "no interval" in point["reason"] and "floor/frd" in point["reason"]
    # wholly above half the point floor (4.5): the claim's own interval misses even the floor's estimate
    assert verdicts([claim("near", "distribution/frd", "<=", {"metric": "floor/frd", "times": 0.3})],
                    metrics)["near"]["verdict"] == FAIL


def test_a_floor_that_is_not_size_matched_leaves_its_claims_not_measured():
    floor = {"n_floor": 28, "n_compared": 100, "size_matched": False,
             "frd": {"value": 9.0, "ci95": [8.0, 10.0], "ci95_reason": None}}
    metrics = METRICS | {"floor": floor, "organ_floor": {"value": 9.0, "ci95": [8.0, 10.0], "n_generated": 28,
                                                         "n_compared": 100, "size_matched": False}}
    for path in ("floor/frd", "organ_floor"):
        out = verdicts([claim("near", "distribution/frd", "<=", {"metric": path})], metrics)["near"]
        assert out["verdict"] == NOT_MEASURED and out["reason"].startswith("floor not size-matched"), out
        assert "28 real images beside 100" in out["reason"]
    matched = metrics | {"floor": floor | {"size_matched": True}}
    assert verdicts([claim("near", "distribution/frd", "<=", {"metric": "floor/frd"})], matched)["near"]["verdict"] == PASS


def test_a_zero_width_interval_at_the_bound_decides_nothing_unless_its_method_says_so():
    metrics = {"auc": {"value": 1.0, "ci95": [1.0, 1.0], "ci_method": "subject_bootstrap"},
               "bare_auc": {"value": 1.0, "ci95": [1.0, 1.0]},
               "zero": {"value": 0.0, "ci95": [0.0, 0.0], "ci_method": "subject_bootstrap"},
               "ssim": {"mean": 1.0, "ci95": [1.0, 1.0], "ci_method": "subject_t"},
               "wilson": {"value": 1.0, "ci95": [0.59, 1.0], "ci_method": "wilson_at_bound"}}
    out = verdicts([claim("auc", "auc", ">=", 0.95), claim("bare", "bare_auc", ">=", 0.95),
                    claim("zero", "zero", "<=", 0.05), claim("ssim", "ssim", ">=", 0.8),
                    claim("wilson", "wilson", ">=", 0.95)], metrics)
    for name in ("auc", "bare", "zero"):
        assert out[name]["verdict"] == UNDECIDED and "zero-width interval" in out[name]["reason"], out[name]
    assert out["ssim"]["verdict"] == PASS  # every image scored exactly 1 (identical images): a measured fact
    assert out["wilson"]["verdict"] == UNDECIDED and "straddles" in out["wilson"]["reason"]


@pytest.mark.parametrize("interval, problem", [
    ([0.2, float("nan")], "not two finite numbers"), ([0.2, None], "not two finite numbers"),
    ([0.4, 0.2], "reversed"), ([0.31, 0.38], "does not contain the estimate 0.3"), ([0.2], "not two finite numbers"),
])
def test_an_interval_that_does_not_hold_is_an_error_naming_the_file_and_path(interval, problem):
    metrics = {"ct_to_mri": {"ssim_gain": {"mean": 0.3, "ci95": interval}}}
    with pytest.raises(InputDataError, match=rf"metrics.json: claim path 'ct_to_mri/ssim_gain': ci95 .* {problem}"):
        judge_all([claim("gain", "ct_to_mri/ssim_gain", ">=", 0.15)], metrics, "metrics.json")
    with pytest.raises(InputDataError, match=problem):  # also as a relative threshold's interval
        judge_all([claim("gain", "distribution/frd", ">=", {"metric": "ct_to_mri/ssim_gain"})],
                  METRICS | metrics, "metrics.json")


def test_a_verdict_refuses_a_metrics_file_with_an_interval_that_does_not_hold(tmp_path):
    metrics = tmp_path / "metrics.json"
    metrics.write_text(json.dumps(METRICS | {"elsewhere": {"value": 2.0, "ci95": [0.0, 1.0]}}))
    with pytest.raises(InputDataError, match=r"metrics.json: intervals that do not hold: /elsewhere/ci95"):
        build_verdict("demo", [claim("gain", "ct_to_mri/ssim_gain", ">=", 0.15)], metrics, None, "default")


def test_a_claim_that_needs_another_is_not_measured_unless_that_one_passes():
    out = verdicts([
        claim("share", "ct_to_mri/ssim_gain", ">=", 0.1, requires=["classifier_ok"]),   # declared first
        claim("classifier_ok", "ct_to_mri/ssim_cycle", ">=", 0.9),                     # FAIL
    ])
    assert out["classifier_ok"]["verdict"] == FAIL
    assert out["share"]["verdict"] == NOT_MEASURED and "classifier_ok" in out["share"]["reason"]
    out = verdicts([
        claim("classifier_ok", "ct_to_mri/ssim_cycle", ">=", 0.7),
        claim("share", "ct_to_mri/ssim_gain", ">=", 0.1, requires=["classifier_ok"]),
    ])
    assert out["share"]["verdict"] == PASS


def test_a_path_that_is_not_in_metrics_json_is_an_error_naming_it():
    with pytest.raises(InputDataError, match=r"metrics.json: claim path 'ct_to_mri/ssim_paired/mean' not found: "
                                              r"ct_to_mri has no 'ssim_paired'"):
        judge_all([claim("x", "ct_to_mri/ssim_paired/mean", ">=", 0.1)], METRICS, "metrics.json")
    with pytest.raises(InputDataError, match="threshold|not found"):
        judge_all([claim("x", "distribution/frd", "<=", {"metric": "distribution/nope"})], METRICS, "metrics.json")


def test_bad_claim_declarations_are_config_errors():
    with pytest.raises(ConfigError, match="requires 'nope'"):
        judge_all([claim("a", "distribution/frd", "<=", 1.0, requires=["nope"])], METRICS, "m.json")
    with pytest.raises(ConfigError, match="circle"):
        judge_all([claim("a", "distribution/frd", "<=", 1.0, requires=["b"]),
                   claim("b", "distribution/frd", "<=", 1.0, requires=["a"])], METRICS, "m.json")
    with pytest.raises(ConfigError, match="repeat"):
        judge_all([claim("a", "distribution/frd", "<=", 1.0), claim("a", "distribution/frd", "<=", 2.0)], METRICS, "m.json")


def test_cli_writes_verdict_and_table_and_the_table_command_renders_markdown(tmp_path, capsys):
    metrics = tmp_path / "metrics.json"
    metrics.write_text(json.dumps(METRICS))
    run = tmp_path / "run.json"
    run.write_text(json.dumps({"device_name": "x86_64 CPU, 2 logical cores", "device": "cpu", "seconds": 12.5}))
    claims = [claim("gain", "ct_to_mri/ssim_gain", ">=", 0.15), claim("share", "ct_to_mri/share", ">=", 0.9)]
    out = tmp_path / "verdict.json"
    assert main(["judge", "--experiment", "demo", "--metrics", str(metrics), "--run-json", str(run),
                 "--claims", json.dumps(claims), "--profile", "proof", "--out", str(out), "--no-tracking"]) == 0
    verdict = json.loads(out.read_text())
    assert verdict["profile"] == "proof" and verdict["machine"].startswith("x86_64")
    assert verdict["counts"] == {PASS: 1, FAIL: 0, UNDECIDED: 0, NOT_MEASURED: 1}
    assert (tmp_path / "verdict.tsv").read_text().splitlines()[1].split("\t")[4] == PASS
    timings = tmp_path / "timings.json"
    timings.write_text(json.dumps({"demo": {"wall_seconds": 754}}))
    capsys.readouterr()
    assert main(["table", str(out), "--timings", str(timings)]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].startswith("| experiment | claim |") and len(table) == 4
    assert "| 0.3 [0.21, 0.38] | PASS | proof |" in table[2] and table[2].endswith("| 12 min 34 s |")
    assert "NOT MEASURED (no subjects)" in table[3]
    # a missing path fails the command with the file and path named, and writes nothing
    bad = tmp_path / "bad.json"
    assert main(["judge", "--experiment", "demo", "--metrics", str(metrics), "--claims",
                 json.dumps([claim("x", "nope/value", ">=", 1)]), "--out", str(bad), "--no-tracking"]) == 2
    assert "claim path 'nope/value' not found" in capsys.readouterr().err and not bad.exists()


def test_verdict_records_where_it_ran(tmp_path):
    metrics = tmp_path / "metrics.json"
    metrics.write_text(json.dumps(METRICS))
    verdict = build_verdict("demo", [claim("gain", "ct_to_mri/ssim_gain", ">=", 0.15)], metrics, None, "default")
    assert verdict["machine"] is None and verdict["claims"][0]["verdict"] == PASS and len(verdict["metrics_sha256"]) == 64
