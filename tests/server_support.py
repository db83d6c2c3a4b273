"""Local servers the tests start as children and stop by pid: a free port, waiting for a health
check, stopping a process (or the group it leads), and a base for servers a ``with`` block runs."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Self

STOP_TIMEOUT_S = 20


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def stop(proc: subprocess.Popen, group: bool = False, sig: int = signal.SIGTERM) -> None:
    """``sig`` to the process (or its group), SIGKILL when it has not ended after STOP_TIMEOUT_S."""
    if proc.poll() is not None:
        return
    if group:
        os.killpg(proc.pid, sig)
    else:
        proc.send_signal(sig)
    try:
        proc.wait(timeout=STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL) if group else proc.kill()
        proc.wait()


def wait_for_health(base: str, proc: subprocess.Popen, timeout_s: float, log: Path, what: str) -> None:
    """Until ``base``/health answers OK; RuntimeError with the log's tail when ``proc`` ends or
    ``timeout_s`` pass first."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with urllib.request.urlopen(f"{base}/health", timeout=2) as response:
                if response.read().strip() == b"OK":
                    return
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"{what} did not answer on {base}:\n{log.read_text()[-3000:]}")
        time.sleep(0.5)


class ManagedServer:
    """A server a ``with`` block runs: ``_bring_up`` starts it, ``__exit__`` stops it and cleans
    up, also when the start fails half-way."""

    def _bring_up(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        try:
            self._bring_up()
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc) -> None:
        raise NotImplementedError
