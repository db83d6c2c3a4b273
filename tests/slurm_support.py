"""A real single-node Slurm cluster for the tests: Debian's munged, slurmctld and slurmd (Slurm
22.05), configured in a temporary folder and started in the foreground as this process's
children, so they are stopped by pid and reaped here (the machine's PID 1 reaps late).

What the configuration must say on a machine like CI's (measured, ../shared/REFERENCE.md):
no cgroups (proctrack/linuxproc, task/none: there is no systemd and no cgroup delegation);
a RealMemory below what ``slurmd -C`` measures (Snakemake always asks for memory, and a node
claiming more than it has is drained); more CPUs advertised than cores
(``SlurmdParameters=config_overrides``) so the tiny chain's jobs overlap on 2 cores; and a
``MinJobAge`` long enough for Snakemake's plugin to read finished jobs from ``squeue`` (there is
no accounting database, and the plugin's default, ``sacct``, then waits forever). The
scheduler's own record of every job is the job-completion log (``jobcomp/filetxt``), read by
``completed_jobs``.

Slurm's clients find this configuration through ``SLURM_CONF``, except one: the Snakemake
jobstep plugin strips every ``SLURM_*`` variable but the job's identity from the environment
of the ``srun`` it starts inside each job, so that ``srun`` reads the compiled-in default
path. The cluster therefore also links ``/etc/slurm/slurm.conf`` to its configuration while it
runs, and refuses to start if a slurm.conf is already there (a real cluster's is never touched).
"""
from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from server_support import ManagedServer, free_port

#: Where Debian's Slurm looks for its configuration without SLURM_CONF.
DEFAULT_CONF = Path("/etc/slurm/slurm.conf")
#: Debian's packages that .ci/run installs (``apt-get install --no-install-recommends``).
PACKAGES = ("slurmctld", "slurmd", "slurm-client", "slurm-wlm-basic-plugins", "munge")
DAEMONS = ("munged", "slurmctld", "slurmd")
CLIENTS = ("sbatch", "squeue", "scancel", "sinfo", "scontrol")
PARTITION = "debug"
#: CPUs the node advertises: twice the cores of a CI machine, so short jobs overlap.
NODE_CPUS = 4
#: Share of the memory ``slurmd -C`` measures that the node advertises.
MEMORY_SHARE = 0.5
#: Seconds Slurm keeps a finished job visible to squeue: >= 3x the plugin's wait before its
#: first status check (profiles/slurm/config.yaml), or the plugin falls back to sacct.
MIN_JOB_AGE_S = 600
START_TIMEOUT_S = 60
STOP_TIMEOUT_S = 20


def require_slurm() -> None:
    """Skip without Debian's Slurm packages locally; in CI (``CI`` set) that is a failure."""
    missing = [name for name in (*DAEMONS, *CLIENTS) if shutil.which(name) is None
               and not Path("/usr/sbin", name).exists()]
    if not missing:
        return
    reason = (f"Slurm is not installed ({', '.join(missing)} missing): "
              f"apt-get install --no-install-recommends {' '.join(PACKAGES)}")
    if os.environ.get("CI"):
        pytest.fail(f"{reason}; .ci/run must install them")
    pytest.skip(reason)


def _binary(name: str) -> str:
    return shutil.which(name) or str(Path("/usr/sbin", name))


def _node_memory_mb() -> int:
    out = subprocess.run([_binary("slurmd"), "-C"], capture_output=True, text=True, check=True, timeout=30).stdout
    return int(int(re.search(r"RealMemory=(\d+)", out).group(1)) * MEMORY_SHARE)


class SlurmCluster(ManagedServer):
    """munged + slurmctld + slurmd under ``root``; ``env`` points Slurm's clients (and so
    Snakemake's plugin and the jobs' own srun) at this cluster through ``SLURM_CONF``."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.node = socket.gethostname().split(".")[0]
        self.conf = self.root / "slurm.conf"
        self.jobcomp = self.root / "jobcomp.txt"
        self.env = {**os.environ, "SLURM_CONF": str(self.conf)}
        self._procs: list[tuple[str, subprocess.Popen]] = []
        self._linked_default = False

    # --- start -------------------------------------------------------------------------------
    def _bring_up(self) -> None:
        self._write_config()
        self._link_default_config()
        self._start_munge()
        self._start("slurmctld", [_binary("slurmctld"), "-D", "-c", "-f", str(self.conf)])
        self._start("slurmd", [_binary("slurmd"), "-D", "-f", str(self.conf)])
        self._wait_idle()

    def __exit__(self, *exc) -> None:
        self.stop()

    def _write_config(self) -> None:
        for sub in ("state", "spool", "munge"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        (self.root / "munge").chmod(0o700)
        self.socket = self.root / "munge" / "munge.socket"
        self.conf.write_text("\n".join([
            "ClusterName=medgantest",
            f"SlurmctldHost={self.node}(127.0.0.1)",
            f"SlurmctldPort={free_port()}",
            f"SlurmdPort={free_port()}",
            "AuthType=auth/munge",
            "CredType=cred/munge",
            f"AuthInfo=socket={self.socket}",
            "SlurmUser=root",
            "SlurmdUser=root",
            f"StateSaveLocation={self.root / 'state'}",
            f"SlurmdSpoolDir={self.root / 'spool'}",
            f"SlurmctldPidFile={self.root / 'slurmctld.pid'}",
            f"SlurmdPidFile={self.root / 'slurmd.pid'}",
            f"SlurmctldLogFile={self.root / 'slurmctld.log'}",
            f"SlurmdLogFile={self.root / 'slurmd.log'}",
            "ProctrackType=proctrack/linuxproc",
            "TaskPlugin=task/none",
            "JobAcctGatherType=jobacct_gather/none",
            "AccountingStorageType=accounting_storage/none",
            "JobCompType=jobcomp/filetxt",
            f"JobCompLoc={self.jobcomp}",
            "SchedulerType=sched/backfill",
            "SelectType=select/cons_tres",
            "SelectTypeParameters=CR_Core_Memory",
            "SlurmdParameters=config_overrides",
            f"MinJobAge={MIN_JOB_AGE_S}",
            "ReturnToService=2",
            "MpiDefault=none",
            f"NodeName={self.node} NodeAddr=127.0.0.1 CPUs={NODE_CPUS} RealMemory={_node_memory_mb()} State=UNKNOWN",
            f"PartitionName={PARTITION} Nodes=ALL Default=YES MaxTime=INFINITE State=UP",
            "",
        ]))

    def _link_default_config(self) -> None:
        if DEFAULT_CONF.exists() or DEFAULT_CONF.is_symlink():
            raise RuntimeError(f"{DEFAULT_CONF} exists: this machine has a Slurm configuration of its own, "
                               "which the test cluster will not replace")
        DEFAULT_CONF.parent.mkdir(parents=True, exist_ok=True)
        DEFAULT_CONF.symlink_to(self.conf)
        self._linked_default = True

    def _start_munge(self) -> None:
        key = self.root / "munge" / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o400)
        self._start("munged", [
            _binary("munged"), "--foreground", "--force", f"--socket={self.socket}", f"--key-file={key}",
            f"--pid-file={self.root / 'munge' / 'munged.pid'}", f"--log-file={self.root / 'munge' / 'munged.log'}",
            f"--seed-file={self.root / 'munge' / 'munged.seed'}",
        ])
        self._until(lambda: self.socket.exists(), "munged did not create its socket")

    def _start(self, name: str, argv: list[str]) -> None:
        with open(self.root / f"{name}.out", "w") as log:
            proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=self.env, start_new_session=True)
        self._procs.append((name, proc))

    def _until(self, ready, what: str) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while not ready():
            for name, proc in self._procs:
                if proc.poll() is not None:
                    raise RuntimeError(f"{name} exited ({proc.returncode}):\n{self.logs()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{what} within {START_TIMEOUT_S} s:\n{self.logs()}")
            time.sleep(0.2)

    def _wait_idle(self) -> None:
        def idle() -> bool:
            out = subprocess.run(["sinfo", "-h", "-N", "-o", "%T"], env=self.env, capture_output=True, text=True,
                                 timeout=30, check=False).stdout.split()
            return out == ["idle"]

        self._until(idle, f"node {self.node} was not idle")

    # --- use ---------------------------------------------------------------------------------
    def logs(self) -> str:
        """The daemons' own logs, for failure messages."""
        parts = []
        for path in sorted(self.root.glob("*.log")) + sorted(self.root.glob("*.out")) + [self.root / "munge" / "munged.log"]:
            if path.exists():
                parts.append(f"--- {path.name}\n{path.read_text()[-2000:]}")
        return "\n".join(parts)

    def completed_jobs(self) -> dict[str, dict[str, str]]:
        """Job id -> the job-completion log's fields (JobState, Name, NodeList, ...): Slurm's own record."""
        jobs = {}
        if self.jobcomp.exists():
            for line in self.jobcomp.read_text().splitlines():
                fields = dict(re.findall(r"(\w+)=(\S*)", line))
                if "JobId" in fields:
                    jobs[fields["JobId"]] = fields
        return jobs

    def queue(self) -> list[dict[str, str]]:
        """Jobs squeue shows now: id, state, name, comment."""
        out = subprocess.run(["squeue", "-h", "-o", "%i|%T|%j|%k"], env=self.env, capture_output=True, text=True,
                             check=True, timeout=30).stdout
        return [dict(zip(("id", "state", "name", "comment"), line.split("|", 3))) for line in out.splitlines()]

    # --- stop --------------------------------------------------------------------------------
    def stop(self) -> None:
        """Cancel this cluster's jobs, then stop exactly the daemons started here, newest first."""
        if any(name == "slurmctld" and proc.poll() is None for name, proc in self._procs):
            subprocess.run(["scancel", "--full", "--user", str(os.getuid())], env=self.env, capture_output=True,
                           timeout=30, check=False)
        while self._procs:
            _, proc = self._procs.pop()
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=STOP_TIMEOUT_S)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        if self._linked_default and DEFAULT_CONF.is_symlink() and DEFAULT_CONF.resolve() == self.conf.resolve():
            DEFAULT_CONF.unlink()
            self._linked_default = False
