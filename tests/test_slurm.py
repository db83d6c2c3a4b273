"""An experiment's whole chain through a real Slurm cluster (tests/slurm_support.py: Debian's Slurm 22.05
on this machine, one node) with ``--profile profiles/slurm``, logging into a group MLflow server
on a real PostgreSQL (tests/postgres_support.py).

One run of the tiny profile proves, against the scheduler's own job-completion records:
every job Snakemake ran was a Slurm job (job ids per rule from the plugin's logs, each
COMPLETED in Slurm's log, in the partition the profile names); the training job, cancelled by
the scheduler midway (``scancel``), was resubmitted by the profile's ``retries`` and finished;
metrics.json equals that of the local run on CPU with the same seed (conftest's
``built_tiny_repo``); the MLflow runs are in PostgreSQL with their params, metrics and artefacts.
A second invocation then has nothing to do. Everything started here is stopped by pid.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import time
from pathlib import Path

import psycopg2
import pytest
import torch
import yaml
from postgres_support import MlflowServer, PostgresServer
from slurm_support import PARTITION, SlurmCluster, require_slurm
from workflow_support import BIN, planned_jobs, tiny_copy

pytestmark = pytest.mark.slow

#: Limit on the whole Slurm run (Snakemake runs under `timeout -k`): ~50 jobs at ~7 s overhead each.
SNAKEMAKE_TIMEOUT_S = 1500
#: The plugin's first wait before a status check, shortened for a test (the profile's is 40 s).
STATUS_CHECK_S = 5
CANCEL_RULE = "train"
#: The chest X-ray experiment: download -> prepare -> train / classifier -> evaluate, the same
#: rules and profile as the headline but without its ~40 per-subject jobs, which under Slurm
#: cost minutes of scheduling in CI and prove nothing more about the profile.
EXPERIMENT = "cyclegan_cxr_pneumonia"
TARGET = f"results/{EXPERIMENT}/metrics.json"
CANCEL_TIMEOUT_S = 900


def _slurm_profile(work: Path) -> None:
    """The copied profile with the one SITE setting this cluster needs: its partition."""
    path = work / "profiles" / "slurm" / "config.yaml"
    profile = yaml.safe_load(path.read_text())
    profile["default-resources"]["slurm_partition"] = PARTITION
    path.write_text(yaml.safe_dump(profile, sort_keys=False))


def _job_ids_per_rule(work: Path) -> dict[str, set[str]]:
    """Rule -> Slurm job ids, from the plugin's per-job logs (.snakemake/slurm_logs/rule_<rule>/.../<id>.log)."""
    ids: dict[str, set[str]] = {}
    for log in (work / ".snakemake" / "slurm_logs").rglob("*.log"):
        rule = next(part.removeprefix("rule_") for part in log.relative_to(work).parts if part.startswith("rule_"))
        ids.setdefault(rule, set()).add(log.stem)
    return ids


def _comparable(work: Path) -> tuple[dict, dict]:
    """metrics.json without the sha256 of the torch files it names (torch.save stamps a random id
    into every file), and those files' tensors, compared by value instead."""
    metrics = json.loads((work / TARGET).read_text())
    tensors = {}

    def strip(node):
        if isinstance(node, dict):
            if str(node.get("path", "")).endswith(".pt"):
                node.pop("sha256", None)
                state = torch.load(work / node["path"], map_location="cpu", weights_only=False)
                tensors[node["path"]] = state
            for value in node.values():
                strip(value)

    strip(metrics)
    return metrics, tensors


def _same(a, b) -> bool:
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return isinstance(b, (list, tuple)) and len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and torch.equal(a, b)
    return a == b


def _cancel_when_running(cluster: SlurmCluster, proc: subprocess.Popen, work: Path) -> str:
    """scancel the training job midway: Slurm shows it RUNNING and its command has started
    (the rule's log exists); its job id."""
    deadline = time.monotonic() + CANCEL_TIMEOUT_S
    started = work / "logs" / CANCEL_RULE / f"{EXPERIMENT}.log"
    while time.monotonic() < deadline:
        assert proc.poll() is None, "snakemake ended before the training job ran"
        for job in cluster.queue():
            # The plugin's comment is rule_<rule>_wildcards_<...>: match the rule exactly (not train_classifier).
            is_training = job["comment"].split("_wildcards_")[0] == f"rule_{CANCEL_RULE}"
            if job["state"] == "RUNNING" and is_training and started.exists():
                subprocess.run(["scancel", job["id"]], env=cluster.env, check=True, timeout=30)
                return job["id"]
        time.sleep(0.5)
    raise AssertionError(f"no {CANCEL_RULE} job ran within {CANCEL_TIMEOUT_S} s")


@pytest.fixture(scope="module")
def slurm_run(tmp_path_factory, repo_root):
    """The tiny chain through Slurm with one training job cancelled; (work, cluster, db uri, artifacts, cancelled id, seconds)."""
    require_slurm()
    root = tmp_path_factory.mktemp("slurm")
    with PostgresServer() as postgres, \
            MlflowServer(postgres, root / "mlartifacts", repo_root) as server, \
            SlurmCluster(root / "cluster") as cluster:
        work = tiny_copy(repo_root, root / "repo", overrides={"tracking": {"uri": server.uri}})
        _slurm_profile(work)
        env = {**cluster.env, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "DVC_NO_ANALYTICS": "1"}
        command = ["timeout", "-k", "30", str(SNAKEMAKE_TIMEOUT_S), "snakemake", "--profile", "profiles/slurm",
                   "--slurm-init-seconds-before-status-checks", str(STATUS_CHECK_S), TARGET]
        started = time.monotonic()
        with open(root / "snakemake.out", "w") as out:
            proc = subprocess.Popen(command, cwd=work, env=env, stdout=out, stderr=subprocess.STDOUT,
                                    start_new_session=True)
            try:
                cancelled = _cancel_when_running(cluster, proc, work)
                proc.wait(timeout=SNAKEMAKE_TIMEOUT_S + 60)
            finally:
                if proc.poll() is None:
                    os.killpg(proc.pid, 9)
                    proc.wait()
        seconds = time.monotonic() - started
        output = (root / "snakemake.out").read_text()
        assert proc.returncode == 0, f"snakemake through Slurm failed:\n{output[-6000:]}\n{cluster.logs()}"
        print(f"Slurm run: {seconds:.0f} s for {sum(len(v) for v in _job_ids_per_rule(work).values())} jobs")
        yield work, cluster, postgres.uri, server.artifacts, cancelled, output, seconds
        assert planned_jobs(work, TARGET) == {}, "a second invocation has nothing left to do"


def test_every_job_ran_as_a_slurm_job(slurm_run):
    work, cluster, _, _, cancelled, output, _ = slurm_run
    per_rule = _job_ids_per_rule(work)
    records = cluster.completed_jobs()
    # Every rule of the chain ran under Slurm, the training twice (cancelled, then retried).
    for rule in ("download", "prepare_xray", "train", "train_classifier", "evaluate"):
        assert per_rule.get(rule), f"no Slurm job for rule {rule}: {sorted(per_rule)}"
    assert cancelled in per_rule[CANCEL_RULE] and len(per_rule[CANCEL_RULE]) == 2
    all_ids = set().union(*per_rule.values())
    assert all_ids <= set(records), f"jobs Slurm has no record of: {sorted(all_ids - set(records))}"
    for job_id in all_ids:
        expected = "CANCELLED" if job_id == cancelled else "COMPLETED"
        assert records[job_id]["JobState"] == expected, (job_id, records[job_id])
        assert records[job_id]["Partition"] == PARTITION
    # Every job Snakemake submitted is one of those (none ran outside Slurm's knowledge).
    submitted = set(re.findall(r"submitted with SLURM jobid (\d+)", output))
    assert submitted == all_ids, (sorted(submitted ^ all_ids))
    # A local rule would have no Slurm log: the job stats list no rule without one.
    stats = dict(re.findall(r"^(\w+)\s+(\d+)$", output.split("Job stats:")[1].split("total")[0], re.MULTILINE))
    assert {rule for rule in stats if rule != "all"} <= set(per_rule), (stats, sorted(per_rule))
    assert f"{cancelled}" in output and "CANCELLED" in output, "the cancellation is reported"


def test_metrics_equal_the_local_run(slurm_run, built_tiny_repo):
    work = slurm_run[0]
    slurm_metrics, slurm_tensors = _comparable(work)
    local_metrics, local_tensors = _comparable(built_tiny_repo)
    assert slurm_metrics == local_metrics
    assert slurm_tensors.keys() == local_tensors.keys() and _same(slurm_tensors, local_tensors)


def test_runs_are_in_the_group_server(slurm_run):
    work, _, db_uri, artifacts, _, _, _ = slurm_run
    run = json.loads((work / "models" / EXPERIMENT / "run.json").read_text())
    with psycopg2.connect(db_uri) as db, db.cursor() as cur:
        cur.execute("SELECT r.run_uuid, r.status FROM runs r JOIN experiments e ON r.experiment_id = e.experiment_id "
                    "WHERE e.name = %s", (EXPERIMENT,))
        runs = dict(cur.fetchall())
        assert run["run_id"] in runs and runs[run["run_id"]] == "FINISHED", runs
        cur.execute("SELECT key, value FROM params WHERE run_uuid = %s", (run["run_id"],))
        params = dict(cur.fetchall())
        assert params["train.epochs"] == "2" and params["train.device"] == "cpu"
        cur.execute("SELECT key, value FROM tags WHERE run_uuid = %s", (run["run_id"],))
        tags = dict(cur.fetchall())
        assert tags.get("git_commit") and tags.get("params_hash"), tags
        cur.execute("SELECT DISTINCT key FROM metrics WHERE run_uuid = %s", (run["run_id"],))
        assert any(key.startswith("normal_to_pneumonia") for (key,) in cur.fetchall())
    names = {path.name for path in artifacts.rglob(f"{run['run_id']}/artifacts/**/*") if path.is_file()}
    assert {"metrics.json", "triplets.png"} <= names, names


def test_each_job_asked_for_its_params_resources(slurm_run):
    """Slurm's record of what each job was given (Tres) matches params.yaml `resources` for the
    sized rules and the profile's default for the rest; no CPU job was given a GPU."""
    work, cluster, *_ = slurm_run
    sized = yaml.safe_load((work / "params.yaml").read_text())["resources"]
    default = yaml.safe_load((work / "profiles" / "slurm" / "config.yaml").read_text())["default-resources"]
    records = cluster.completed_jobs()
    for rule, ids in _job_ids_per_rule(work).items():
        want = sized.get(rule, {"mem_mb": default["mem_mb"], "runtime": default["runtime"]})
        for job_id in ids:
            tres = dict(item.split("=", 1) for item in records[job_id]["Tres"].split(","))
            assert tres["mem"] == f"{want['mem_mb']}M", (rule, tres)
            assert "cpus_per_task" not in want or tres["cpu"] == str(want["cpus_per_task"]), (rule, tres)
            assert not any("gpu" in key for key in tres), (rule, tres)
            assert records[job_id]["TimeLimit"] == str(want["runtime"]), (rule, records[job_id])  # minutes
