"""Claims -> verdicts: does each report's method do what the report says, on this run?

An experiment declares its claims in params.yaml (``experiments.<name>.claims``): the report's
claim in our words, the metrics.json path of the number that decides it, a comparison and a
threshold. A verdict reads metrics.json (and run.json for where it ran) and nothing else:

- **PASS**: the number's whole 95% interval lies on the claimed side of the threshold;
- **FAIL**: the whole interval lies on the other side;
- **UNDECIDED**: the interval straddles the threshold, or the number has no interval (a point
  estimate alone never passes);
- **NOT MEASURED**: the number is null (its reason is carried over), or a claim it requires did
  not pass.

A threshold is a number, or relative to another number of the same metrics.json (e.g. a
distance "within 2x of the real-vs-real floor": ``{metric: distribution/floor/frd, times: 2}``).
A relative threshold counts with its own interval, conservatively: a claim ``<=`` passes only
when its upper bound is below the threshold's lower bound (and fails only when its lower bound
is above the threshold's upper bound). A relative threshold with no interval (too few subjects)
gives at most UNDECIDED: a point floor has no uncertainty to count, so it never makes a PASS
(a FAIL stays: the claim's whole interval is then on the wrong side of the floor's own estimate).
A floor block that says ``size_matched: false`` (fewer real images than the compared set: FID and
FRD err high at small n, which would lower the bar) makes its claims NOT MEASURED with the
reason "floor not size-matched"; it is not rescaled, since the small-n bias depends on the
features' spectrum and no factor corrects it in general.

A zero-width interval at 0 or 1 (e.g. AUC [1, 1], a percentile bootstrap whose every replicate
sits at the bound) says nothing about the population: it is UNDECIDED unless the block's
``ci_method`` is one for which no spread is a measured fact (``ZERO_WIDTH_METHODS``: ``subject_t``,
whose [1, 1] means every image scored exactly 1, as SSIM of identical images; ``subject_jackknife``,
a set statistic that no left-out subject moves). The measures give such statistics Wilson's
interval at the bound instead (pipeline/evaluate/measures/intervals.py ``wilson_at_bound``); this
rule is the second line of defence.

A path that is not in metrics.json is an error naming the file and the path: a claim that
silently reads nothing would be a pass without a measured number. So is an interval that is not
two finite numbers in order containing its value, and any interval of metrics.json that does not
hold (pipeline/evaluate/measures/intervals.py ``interval_problems``, checked once a verdict).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import sys
from pathlib import Path
from typing import Any, Mapping, Sequence

from pipeline.atomic import write_json, write_text
from pipeline.errors import ConfigError, InputDataError, PipelineError

PASS, FAIL, UNDECIDED, NOT_MEASURED = "PASS", "FAIL", "UNDECIDED", "NOT MEASURED"
VERDICTS = (PASS, FAIL, UNDECIDED, NOT_MEASURED)
COMPARISONS = (">=", ">", "<=", "<")
MEASURE_BOUNDS = (0.0, 1.0)
"""Where shares, AUCs, accuracies, SSIM and Dice end: a zero-width interval there is suspect."""
ZERO_WIDTH_METHODS = ("subject_t", "subject_jackknife")
"""ci_methods whose zero-width interval at a bound is a measured fact, not a degenerate resample (module docstring)."""


class Estimate:
    """A number of metrics.json with its 95% interval (or None), how the interval was computed,
    and why either is missing."""

    def __init__(self, value: float | None, ci95: tuple[float, float] | None, reason: str | None,
                 method: str | None = None):
        self.value, self.ci95, self.reason, self.method = value, ci95, reason, method


def lookup(metrics: Mapping[str, Any], path: str, source: Path | str) -> Any:
    """The node at ``path`` ("block/key/key", '/'-separated) of ``metrics``; an InputDataError
    naming ``source``, the path and the keys that do exist where it broke off."""
    node: Any = metrics
    walked: list[str] = []
    for key in path.split("/"):
        if isinstance(node, Mapping) and key in node:
            node = node[key]
        elif isinstance(node, list) and key.isdigit() and int(key) < len(node):
            node = node[int(key)]
        else:
            here = "/".join(walked) or "(top level)"
            keys = sorted(node) if isinstance(node, Mapping) else type(node).__name__
            raise InputDataError(source, f"claim path {path!r} not found: {here} has no {key!r} (it has: {keys})")
        walked.append(key)
    return node


def _finite(x: Any) -> float | None:
    if isinstance(x, bool) or not isinstance(x, (int, float)) or not math.isfinite(x):
        return None
    return float(x)


def estimate_at(metrics: Mapping[str, Any], path: str, source: Path | str) -> Estimate:
    """Read a number and its interval: a bare number, or a block holding ``mean`` or ``value``
    beside ``ci95`` (and ``ci95_reason`` / ``reason`` when either is null)."""
    node = lookup(metrics, path, source)
    if not isinstance(node, Mapping):
        if node is not None and _finite(node) is None:
            raise InputDataError(source, f"claim path {path!r} is {type(node).__name__}, not a number or an estimate block")
        return Estimate(_finite(node), None, None if node is None else "a bare number, no interval")
    key = "mean" if "mean" in node else "value" if "value" in node else None
    if key is None:
        raise InputDataError(source, f"claim path {path!r} is a block without 'mean' or 'value' (keys: {sorted(node)})")
    value = _finite(node[key])
    ci = _interval(node.get("ci95"), value, path, source)
    reason = node.get("reason") if value is None else node.get("ci95_reason") if ci is None else None
    if value is None and not reason:
        reason = node.get("ci95_reason") or "null in metrics.json"
    if value is not None and ci is None and not reason:
        reason = "no interval given"
    return Estimate(value, ci, reason, node.get("ci_method"))


def _interval(interval: Any, value: float | None, path: str, source: Path | str) -> tuple[float, float] | None:
    """The (low, high) of a ``ci95`` entry, None when it is null; an InputDataError naming
    ``source`` and ``path`` when it is not two finite numbers in order around ``value``."""
    from pipeline.evaluate.measures.intervals import interval_problem

    if interval is None:
        return None
    problem = interval_problem(interval, value)
    if problem is not None:
        raise InputDataError(source, f"claim path {path!r}: ci95 {problem}")
    return float(interval[0]), float(interval[1])


def _threshold(claim: Mapping[str, Any], metrics: Mapping[str, Any], source: Path | str
               ) -> tuple[tuple[float, float] | None, str | None]:
    """(low, high) of the threshold (equal for a number), or (None, why) when it is not measured."""
    threshold = claim["threshold"]
    if not isinstance(threshold, Mapping):
        return (float(threshold), float(threshold)), None
    ref = estimate_at(metrics, threshold["metric"], source)
    if ref.value is None:
        return None, f"threshold {threshold['metric']} is not measured ({ref.reason})"
    unmatched = _not_size_matched(metrics, threshold["metric"])
    if unmatched:
        return None, f"floor not size-matched: {unmatched} (threshold {threshold['metric']})"
    times, plus = float(threshold.get("times", 1.0)), float(threshold.get("plus", 0.0))
    low, high = ref.ci95 if ref.ci95 is not None else (ref.value, ref.value)
    ends = sorted((times * low + plus, times * high + plus))
    return (ends[0], ends[1]), None if ref.ci95 is not None else POINT_THRESHOLD.format(metric=threshold["metric"])


POINT_THRESHOLD = "threshold {metric} has no interval: a point threshold never makes a pass"


def _not_size_matched(metrics: Mapping[str, Any], path: str) -> str | None:
    """Why the floor block holding ``path`` (the node itself or its parent) is not comparable, or None:
    ``size_matched: false`` there (fewer real images than the compared set)."""
    parts = path.split("/")
    for depth in (len(parts), len(parts) - 1):
        node: Any = metrics
        for key in parts[:depth]:
            node = node.get(key) if isinstance(node, Mapping) else None
        if isinstance(node, Mapping) and node.get("size_matched") is False:
            return (f"{'/'.join(parts[:depth])} holds {node.get('n_floor', node.get('n_generated', '?'))} real images "
                    f"beside {node.get('n_compared', '?')} compared ones")
    return None


def _at_bound_without_spread(found: Estimate) -> str | None:
    """Why a zero-width interval at 0 or 1 cannot decide (module docstring), or None."""
    low, high = found.ci95
    if low == high and low in MEASURE_BOUNDS and found.method not in ZERO_WIDTH_METHODS:
        return (f"a zero-width interval [{low:g}, {high:g}] at the measure's bound ({found.method or 'no ci_method'}) "
                "does not show the population is there")
    return None


def judge(claim: Mapping[str, Any], metrics: Mapping[str, Any], source: Path | str,
          earlier: Mapping[str, str] | None = None) -> dict[str, Any]:
    """One claim's verdict record. ``earlier`` maps the names of claims already judged to their
    verdicts (for ``requires``)."""
    compare = claim["compare"]
    if compare not in COMPARISONS:
        raise ConfigError(f"claim {claim['name']!r}: compare {compare!r} is not one of {COMPARISONS}")
    record: dict[str, Any] = {
        "name": claim["name"], "says": claim["says"], "metric": claim["metric"], "compare": compare,
        "threshold": claim["threshold"], "threshold_interval": None, "value": None, "ci95": None,
        "verdict": NOT_MEASURED, "reason": None,
    }
    found = estimate_at(metrics, claim["metric"], source)
    record["value"], record["ci95"] = found.value, list(found.ci95) if found.ci95 else None
    bounds, threshold_note = _threshold(claim, metrics, source)
    record["threshold_interval"] = list(bounds) if bounds else None
    missing = [(name, (earlier or {}).get(name)) for name in claim.get("requires", [])
               if (earlier or {}).get(name) != PASS]
    if missing:
        record["reason"] = "needs " + ", ".join(f"{name} to pass (it is {verdict or 'not judged'})" for name, verdict in missing)
        return record
    if found.value is None:
        record["reason"] = found.reason
        return record
    if bounds is None:
        record["reason"] = threshold_note
        return record
    if found.ci95 is None:
        record["verdict"], record["reason"] = UNDECIDED, f"a point estimate alone cannot pass ({found.reason})"
        return record
    degenerate = _at_bound_without_spread(found)
    if degenerate:
        record["verdict"], record["reason"] = UNDECIDED, degenerate
        return record
    (low, high), (t_low, t_high) = found.ci95, bounds
    above = compare in (">=", ">")
    strict = compare in (">", "<")

    def beyond(x: float, t: float) -> bool:  # x on the claimed side of t
        if above:
            return x > t if strict else x >= t
        return x < t if strict else x <= t

    if beyond(low if above else high, t_high if above else t_low):
        record["verdict"] = PASS if not threshold_note else UNDECIDED
    elif not beyond(high if above else low, t_low if above else t_high):
        record["verdict"] = FAIL
    else:
        record["verdict"] = UNDECIDED
        record["reason"] = "the interval straddles the threshold"
    if threshold_note and record["reason"] is None:
        record["reason"] = threshold_note
    return record


def _ordered(claims: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """Claims with every required claim before the claims that require it (declared order kept)."""
    names = [c["name"] for c in claims]
    if len(set(names)) != len(names):
        raise ConfigError(f"claim names repeat: {sorted({n for n in names if names.count(n) > 1})}")
    by_name = {c["name"]: c for c in claims}
    done: list[Mapping[str, Any]] = []
    seen: set[str] = set()

    def visit(claim: Mapping[str, Any], path: tuple[str, ...]) -> None:
        if claim["name"] in seen:
            return
        for needed in claim.get("requires", []):
            if needed not in by_name:
                raise ConfigError(f"claim {claim['name']!r} requires {needed!r}, which is not a claim of this experiment")
            if needed in path:
                raise ConfigError(f"claims require each other in a circle: {' -> '.join(path + (needed,))}")
            visit(by_name[needed], path + (needed,))
        seen.add(claim["name"])
        done.append(claim)

    for claim in claims:
        visit(claim, (claim["name"],))
    return done


def judge_all(claims: Sequence[Mapping[str, Any]], metrics: Mapping[str, Any], source: Path | str) -> list[dict[str, Any]]:
    """Every claim's record, in declared order."""
    verdicts: dict[str, str] = {}
    records: dict[str, dict[str, Any]] = {}
    for claim in _ordered(claims):
        records[claim["name"]] = judge(claim, metrics, source, verdicts)
        verdicts[claim["name"]] = records[claim["name"]]["verdict"]
    return [records[c["name"]] for c in claims]


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise InputDataError(path, "does not exist") from None
    except (OSError, ValueError) as err:
        raise InputDataError(path, f"is not readable JSON ({err})") from None
    if not isinstance(data, dict):
        raise InputDataError(path, "must hold a JSON object")
    return data


def build_verdict(experiment: str, claims: Sequence[Mapping[str, Any]], metrics_path: Path,
                  run_json: Path | None, profile: str) -> dict[str, Any]:
    """verdict.json's content for one experiment."""
    from pipeline.evaluate.measures.intervals import interval_problems

    metrics = _read_json(metrics_path)
    min_subjects = ((metrics.get("settings") or {}).get("intervals") or {}).get("min_subjects")
    problems = interval_problems(metrics, min_subjects if isinstance(min_subjects, int) else None)
    if problems:
        raise InputDataError(metrics_path, "intervals that do not hold: " + "; ".join(problems))
    run = _read_json(run_json) if run_json else {}
    records = judge_all(claims, metrics, metrics_path)
    return {
        "experiment": experiment,
        "profile": profile,
        "metrics_file": str(metrics_path),
        "metrics_sha256": hashlib.sha256(Path(metrics_path).read_bytes()).hexdigest(),
        "machine": run.get("device_name"),
        "device": run.get("device"),
        "training_seconds": run.get("seconds"),
        "git_commit": run.get("git_commit"),
        "claims": records,
        "counts": {v: sum(r["verdict"] == v for r in records) for v in VERDICTS},
    }


def _number(x: float | None) -> str:
    if x is None:
        return "null"
    return f"{x:.3g}" if abs(x) < 1000 else f"{x:.0f}"


def _threshold_text(record: Mapping[str, Any]) -> str:
    threshold = record["threshold"]
    if isinstance(threshold, Mapping):
        parts = f"{threshold.get('times', 1)} x {threshold['metric']}"
        if threshold.get("plus"):
            parts += f" + {threshold['plus']}"
        bounds = record.get("threshold_interval")
        return f"{record['compare']} {parts}" + (f" ([{_number(bounds[0])}, {_number(bounds[1])}])" if bounds else "")
    return f"{record['compare']} {_number(float(threshold))}"


def measured_text(record: Mapping[str, Any]) -> str:
    ci = record.get("ci95")
    interval = f" [{_number(ci[0])}, {_number(ci[1])}]" if ci else ""
    return _number(record.get("value")) + interval


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "not timed"
    minutes, secs = divmod(int(round(seconds)), 60)
    return f"{minutes} min {secs:02d} s" if minutes else f"{secs} s"


def table_rows(verdict: Mapping[str, Any], wall_seconds: float | None = None) -> list[list[str]]:
    """One row a claim: experiment, claim, threshold, measured [interval], verdict (+ reason),
    profile, machine, wall time."""
    rows = []
    for record in verdict["claims"]:
        outcome = record["verdict"] + (f" ({record['reason']})" if record.get("reason") and record["verdict"] != PASS else "")
        rows.append([verdict["experiment"], f"{record['name']}: {record['says']}", _threshold_text(record),
                     measured_text(record), outcome, str(verdict.get("profile")), str(verdict.get("machine")),
                     _duration(wall_seconds)])
    return rows


HEADER = ["experiment", "claim", "threshold", "measured [95% interval]", "verdict", "profile", "machine", "wall time"]


def markdown_table(rows: Sequence[Sequence[str]]) -> str:
    def cell(text: str) -> str:
        return text.replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    lines += ["| " + " | ".join(cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def tsv_table(rows: Sequence[Sequence[str]]) -> str:
    return "\n".join("\t".join(c.replace("\t", " ") for c in row) for row in [HEADER, *rows]) + "\n"


def log_to_run(verdict: Mapping[str, Any], run_json: Path, artifacts: Sequence[Path]) -> None:
    """The verdict on the experiment's MLflow run: a tag per claim (verdict/<claim>: PASS ...),
    the counts as metrics, and the verdict files as artifacts under evaluation/."""
    from pipeline.tracking import Tracker

    run = _read_json(run_json)
    try:
        tracker = Tracker.reopen(run["tracking_uri"], run["run_id"])
    except (KeyError, LookupError) as err:
        raise InputDataError(run_json, f"names no MLflow run to log the verdict to ({err})") from None
    try:
        tracker.set_tags({f"verdict/{r['name']}": r["verdict"] for r in verdict["claims"]}
                         | {"verdict/profile": verdict.get("profile")})
        tracker.log_metrics({f"verdict/{v.lower().replace(' ', '_')}": float(n) for v, n in verdict["counts"].items()})
        for path in artifacts:
            tracker.log_artifact(Path(path), "evaluation")
    finally:
        tracker.finish("FINISHED")


def _parse_claims(text: str, experiment: str) -> list[dict[str, Any]]:
    try:
        claims = json.loads(text)
    except ValueError as err:
        raise ConfigError(f"experiments.{experiment}.claims: not valid JSON ({err})") from None
    if not isinstance(claims, list) or not claims:
        raise ConfigError(f"experiments.{experiment}.claims: no claims to judge")
    return claims


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.verdict", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    judge_cmd = sub.add_parser("judge", help="results/<experiment>/verdict.json from metrics.json and the claims")
    judge_cmd.add_argument("--experiment", required=True)
    judge_cmd.add_argument("--metrics", type=Path, required=True)
    judge_cmd.add_argument("--run-json", type=Path, default=None, help="training run.json: machine, MLflow run")
    judge_cmd.add_argument("--claims", required=True,
                           help="the experiment's claims as JSON (params.yaml experiments.<name>.claims)")
    judge_cmd.add_argument("--profile", default="default", help="params.yaml `profile`: default | proof | full | tiny")
    judge_cmd.add_argument("--out", type=Path, required=True, help="verdict.json; verdict.tsv is written beside it")
    judge_cmd.add_argument("--no-tracking", action="store_true", help="do not log the verdict to MLflow")
    table_cmd = sub.add_parser("table", help="one markdown table over several verdict.json files")
    table_cmd.add_argument("verdicts", type=Path, nargs="+")
    table_cmd.add_argument("--timings", type=Path, default=None,
                           help="JSON {experiment: wall seconds} (written by scripts/run_profile.sh)")
    args = parser.parse_args(argv)
    try:
        if args.command == "judge":
            claims = _parse_claims(args.claims, args.experiment)
            verdict = build_verdict(args.experiment, claims, args.metrics, args.run_json, args.profile)
            tsv = args.out.with_suffix(".tsv")
            write_text(tsv, tsv_table(table_rows(verdict)))
            write_json(args.out, verdict)
            if args.run_json and not args.no_tracking:
                log_to_run(verdict, args.run_json, [args.out, tsv])
            for record in verdict["claims"]:
                print(f"{record['verdict']:<12} {record['name']}: {measured_text(record)} {_threshold_text(record)}")
        else:
            timings = _read_json(args.timings) if args.timings else {}
            rows = []
            for path in args.verdicts:
                verdict = _read_json(path)
                seconds = timings.get(verdict["experiment"])
                rows += table_rows(verdict, seconds.get("wall_seconds") if isinstance(seconds, Mapping) else seconds)
            sys.stdout.write(markdown_table(rows))
    except PipelineError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
