"""Pieces of the loop on their own: the stop request a SIGTERM sets, the out-of-memory advice
per batch and number of processes, and the process-wide numerics a run sets and restores."""
from __future__ import annotations

import os
import signal
import threading

import pytest
import torch

from pipeline.engine.knobs import numerics
from pipeline.engine.loop import StopRequest, out_of_memory_advice


@pytest.mark.parametrize("batch, world, advice", [
    (32, 1, "train.batch_size 32 (32 per GPU, 64 images, bf16 False): try train.batch_size: 16"),
    (32, 4, "train.batch_size 32 (8 per GPU, 64 images, bf16 False): try train.batch_size: 16"),
    (6, 2, "train.batch_size 6 (3 per GPU, 64 images, bf16 False): try train.batch_size: 2"),
    (4, 4, "train.batch_size 4 (1 per GPU, 64 images, bf16 False): the batch cannot shrink further; try bf16"),
])
def test_out_of_memory_advice_halves_the_share_of_each_gpu(batch, world, advice):
    assert out_of_memory_advice(batch, world, "64", bf16=False).startswith(f"CUDA out of memory at {advice}")


def test_sigterm_while_listening_only_sets_the_request_and_the_handler_is_restored():
    def previous_handler(signum, frame):
        raise AssertionError("the run's handler should have caught SIGTERM")

    saved = signal.signal(signal.SIGTERM, previous_handler)
    try:
        stop = StopRequest()
        with stop.listening():
            assert not stop.requested()
            os.kill(os.getpid(), signal.SIGTERM)
            assert stop.requested() and stop.signal == signal.SIGTERM
        assert signal.getsignal(signal.SIGTERM) is previous_handler
    finally:
        signal.signal(signal.SIGTERM, saved)


def test_listening_off_the_main_thread_installs_nothing():
    """Python only lets the main thread set signal handlers; a run in another thread (a notebook
    worker, a test runner) trains without SIGTERM checkpoints rather than failing."""
    before, errors = signal.getsignal(signal.SIGTERM), []

    def listen():
        try:
            with StopRequest().listening():
                errors.append(signal.getsignal(signal.SIGTERM) is not before)
        except Exception as err:  # noqa: BLE001 - reported below
            errors.append(err)

    thread = threading.Thread(target=listen)
    thread.start()
    thread.join()
    assert errors == [False]


def test_numerics_are_set_for_the_run_and_restored_after():
    before = (torch.are_deterministic_algorithms_enabled(), torch.get_num_threads())
    threads = 1 if before[1] != 1 else 2
    with numerics(deterministic=not before[0], threads=threads, device=torch.device("cpu")):
        assert torch.are_deterministic_algorithms_enabled() is (not before[0])
        assert torch.backends.cudnn.benchmark is before[0]
        assert torch.get_num_threads() == threads
    assert (torch.are_deterministic_algorithms_enabled(), torch.get_num_threads()) == before
