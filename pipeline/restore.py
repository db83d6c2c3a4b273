"""Bring a built workflow back from the DVC remote so that Snakemake sees it as up to date.

    python -m pipeline.restore                       # dvc pull, check, snakemake --touch (headline target)
    python -m pipeline.restore --targets a b --remote store

`dvc pull` restores every output DVC caches, but neither the order of their modification times
(DVC writes them in whatever order it checks them out) nor Snakemake's record of how each was
made (`.snakemake/`, not in git). Snakemake would then rerun the whole chain. Making Snakemake
ignore mtimes instead (`--rerun-triggers` without `mtime`) would be wrong: an input edited in
place would no longer rerun anything. So after pulling:

1. `dvc status` must report nothing: DVC then vouches that the pulled outputs were made from
   exactly the data, code and params of this checkout (dvc.lock). Otherwise they are stale here
   and must be rebuilt, never touched, and this stops naming the stages.
2. `snakemake --touch <targets>` sets the mtimes in DAG order and records Snakemake's metadata
   for the current params and code, so the next run does nothing while any later change of
   params, code or an input file still reruns what depends on it.
"""
from __future__ import annotations

import argparse
import json
import logging
import subprocess
import sys
from pathlib import Path
from typing import Sequence

from pipeline.errors import PipelineError

log = logging.getLogger(__name__)

HEADLINE_TARGET = "results/cyclegan_ct_mri/metrics.json"


def _tool(name: str) -> str:
    """The tool from this interpreter's environment (the project venv), else from PATH."""
    beside = Path(sys.executable).parent / name
    return str(beside) if beside.exists() else name


def _run(cmd: list[str], repo: Path) -> str:
    log.info("$ %s", " ".join(cmd))
    proc = subprocess.run(cmd, cwd=repo, capture_output=True, text=True)
    if proc.returncode != 0:
        raise PipelineError(f"`{' '.join(cmd)}` failed ({proc.returncode}):\n{proc.stdout[-3000:]}{proc.stderr[-3000:]}")
    return proc.stdout


def stale_stages(repo: Path) -> dict[str, object]:
    """DVC stages whose outputs do not match this checkout's data, code and params ({} = none)."""
    out = _run([_tool("dvc"), "status", "--json"], repo)
    return json.loads(out or "{}")


def restore(repo: Path = Path("."), targets: Sequence[str] = (HEADLINE_TARGET,), remote: str | None = None,
            cores: int = 1, pull: bool = True) -> None:
    """`dvc pull` (from ``remote``, default: the repository's default remote), check that DVC
    finds every stage up to date, then `snakemake --touch` the ``targets`` with ``cores``."""
    repo = Path(repo)
    if pull:
        _run([_tool("dvc"), "pull", *(["--remote", remote] if remote else [])], repo)
    stale = stale_stages(repo)
    if stale:
        raise PipelineError(
            f"the outputs of DVC stages {', '.join(sorted(stale))} do not match this checkout's data, code "
            "or params (dvc status); rebuild them with `dvc repro` (or snakemake) instead of touching them")
    # --forceall: every job of the targets, also those that no mtime would rerun (the download
    # checkpoint), gets its metadata recorded, so a later change of its params reruns it too.
    _run([_tool("snakemake"), *targets, "--touch", "--forceall", "--cores", str(cores), "--quiet", "rules"], repo)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--targets", nargs="+", default=[HEADLINE_TARGET], help="Snakemake targets to mark up to date")
    parser.add_argument("--remote", default=None, help="DVC remote to pull from (default: the default remote)")
    parser.add_argument("--cores", type=int, default=1, help="cores for the snakemake --touch run")
    parser.add_argument("--no-pull", action="store_true", help="outputs already checked out: check and touch only")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    restore(Path("."), args.targets, args.remote, args.cores, pull=not args.no_pull)
    log.info("restored: `snakemake -n %s` plans nothing", " ".join(args.targets))


if __name__ == "__main__":
    main()
