"""What each Snakemake job asks a cluster scheduler for (params.yaml ``resources``).

A rule spreads ``**job_resources(config, "<rule>")`` into its ``resources:``; Snakemake's
Slurm executor (profiles/slurm) turns ``mem_mb``, ``runtime`` (minutes) and ``cpus_per_task``
into ``sbatch --mem / -t / --cpus-per-task``. Rules not named in params.yaml take the
profile's ``default-resources``. GPUs are not a knob here: the training rule asks for
``train.gpus`` (or 1) exactly when its experiment trains on CUDA. A local run
(``--cores N``) ignores all of this except ``gpu``. How the values were sized is in
docs/scaling-out.md.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def job_resources(cfg: Mapping[str, Any], rule: str) -> dict[str, Any]:
    """The ``resources.<rule>`` knobs of ``cfg`` (empty when params.yaml names none)."""
    return dict((cfg.get("resources") or {}).get(rule) or {})
