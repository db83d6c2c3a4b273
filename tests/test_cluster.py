"""What each job asks the scheduler for, as Snakemake itself plans it with ``--profile
profiles/slurm`` (a dry run: no cluster needed): params.yaml ``resources`` per rule, the
profile's defaults elsewhere, GPUs only for a CUDA training. The real submission through Slurm
is tests/test_slurm.py."""
from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
import yaml
from workflow_support import TARGET, run

from pipeline.cluster import job_resources

COPIED = ("Snakefile", "params.yaml", "pipeline", "configs", "envs", "report", "profiles")


@pytest.fixture(scope="module")
def workflow_copy(tmp_path_factory, repo_root) -> Path:
    work = tmp_path_factory.mktemp("cluster")
    for name in COPIED:
        source = repo_root / name
        if source.is_dir():
            shutil.copytree(source, work / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(source, work / name)
    return work


def _planned_resources(work: Path, train: dict) -> dict[str, dict[str, str]]:
    """Rule -> the resources Snakemake's dry run prints for its (first) job."""
    (work / "train.yaml").write_text(yaml.safe_dump({"experiments": {"cyclegan_ct_mri": {"train": train}}}))
    out = run(["snakemake", TARGET, "-n", "--profile", "profiles/slurm", "--configfile", "train.yaml"], work).stdout
    planned: dict[str, dict[str, str]] = {}
    for rule, block in re.findall(r"^(?:rule|checkpoint) (\w+):\n((?:    .*\n)+)", out, re.MULTILINE):
        line = re.search(r"^    resources: (.*)$", block, re.MULTILINE)
        if line and rule not in planned:
            planned[rule] = dict(item.split("=", 1) for item in line.group(1).split(", "))
    return planned


def test_job_resources_reads_params(repo_root):
    cfg = yaml.safe_load((repo_root / "params.yaml").read_text())
    assert job_resources(cfg, "train") == cfg["resources"]["train"]
    assert job_resources(cfg, "window") == {} and job_resources({}, "train") == {}


def test_each_rule_asks_for_its_params_and_only_cuda_training_for_gpus(workflow_copy):
    params = yaml.safe_load((workflow_copy / "params.yaml").read_text())["resources"]
    profile = yaml.safe_load((workflow_copy / "profiles" / "slurm" / "config.yaml").read_text())["default-resources"]
    cpu = _planned_resources(workflow_copy, {"device": "cpu"})
    for rule in ("train", "train_classifier", "evaluate"):
        for key in ("mem_mb", "runtime", "cpus_per_task"):
            assert cpu[rule][key] == str(params[rule][key]), (rule, key, cpu[rule])
    assert cpu["download"]["mem_mb"] == str(profile["mem_mb"]) and cpu["download"]["runtime"] == str(profile["runtime"])
    assert all(resources.get("gpu", "0") == "0" for resources in cpu.values()), cpu
    one = _planned_resources(workflow_copy, {"device": "cuda"})
    assert one["train"]["gpu"] == "1" and one["evaluate"].get("gpu", "0") == "0"
    several = _planned_resources(workflow_copy, {"device": "cuda", "distributed": True, "gpus": 3})
    assert several["train"]["gpu"] == "3"
