"""python -m pipeline.device_check: the device check, the H100 projection, the full-smoke helpers.

  check          every experiment of a profile, one step per network at full size, on a simulated
                 GPU (default) or a real one (--device cuda); exit 1 naming the fault
  project        FLOPs and memory per step, steps per profile, projected H100 hours (markdown;
                 --json for the rows); --smoke DIR adds the preprocessing measured by a full smoke run
  overlay        a config overlay putting every device knob of a profile on DEVICE (stdout, YAML)
  smoke-summary  a full smoke run's wall time, CPU time and peak memory per experiment
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import yaml

from pipeline.config import load_params
from pipeline.errors import PipelineError

log = logging.getLogger("pipeline.device_check")


def _profile(args: argparse.Namespace) -> dict:
    return load_params(args.params, config_files=args.configfile)


def cmd_check(args: argparse.Namespace) -> int:
    from pipeline.device_check.checks import run_checks
    from pipeline.device_check.steps import DeviceCheckError

    try:
        results = run_checks(_profile(args), args.experiments, args.device)
    except DeviceCheckError as err:
        log.error("device check failed: %s", err)
        return 1
    for name, records in results.items():
        for record in records:
            print(f"{name}: {record['what']}" + (f" ({record['seconds']} s)" if "seconds" in record else ""))
    print(f"device check on {args.device}: {len(results)} experiment(s) passed")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1, default=str))
    return 0


def cmd_project(args: argparse.Namespace) -> int:
    from pipeline.device_check.report import projection_rows, projection_table, smoke_preprocessing

    cfg = _profile(args)
    per_subject = smoke_preprocessing(args.smoke) if args.smoke else {}
    rows, notes = projection_rows(cfg, args.experiments, per_subject)
    print(projection_table(rows, notes))
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "notes": notes}, indent=1))
    return 0


def cmd_overlay(args: argparse.Namespace) -> int:
    from pipeline.device_check.report import device_overlay

    print(yaml.safe_dump(device_overlay(_profile(args), args.to), sort_keys=False), end="")
    return 0


def cmd_smoke_summary(args: argparse.Namespace) -> int:
    from pipeline.device_check.report import smoke_summary, smoke_table

    summary = smoke_summary(args.workdir)
    print(smoke_table(summary))
    if args.json:
        args.json.write_text(json.dumps(summary, indent=1))
    return 0


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m pipeline.device_check", description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    for name, handler in (("check", cmd_check), ("project", cmd_project), ("overlay", cmd_overlay),
                          ("smoke-summary", cmd_smoke_summary)):
        sub = commands.add_parser(name)
        sub.set_defaults(handler=handler)
        if name != "smoke-summary":
            sub.add_argument("--params", type=Path, default=Path("params.yaml"))
            sub.add_argument("--configfile", type=Path, nargs="*", default=[Path("configs/full.yaml")],
                             help="merged over params.yaml in order (default: configs/full.yaml)")
            sub.add_argument("--experiments", nargs="*", default=None, help="default: all of the profile")
        if name in ("check", "project", "smoke-summary"):
            sub.add_argument("--json", type=Path, default=None, help="also write the results as JSON here")
    commands.choices["check"].add_argument("--device", choices=("simulated", "cuda", "cpu"), default="simulated")
    commands.choices["project"].add_argument("--smoke", type=Path, default=None,
                                             help="a full smoke run's folder: its per-subject preprocessing times")
    commands.choices["overlay"].add_argument("to", choices=("cpu", "cuda", "auto"))
    commands.choices["smoke-summary"].add_argument("workdir", type=Path, help="scripts/full_smoke.sh's folder")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    try:
        return args.handler(args)
    except PipelineError as err:
        log.error("%s", err)
        return 2


if __name__ == "__main__":
    sys.exit(main())
