"""The strategy's own process group: its timeout, its life cycle, and that the communication uses it.

Real gloo ranks (tests/helpers/launch.py); rank-side code in process_group_worker.py.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.helpers.launch import run_ranks, run_ranks_expecting_failure

WORKER = "tests.strategies.process_group_worker"
STOP_TIMEOUT_S = 6.0


@pytest.mark.timeout(200)
@pytest.mark.parametrize(
    ("strategy", "kwargs"),
    [
        ("odsgd", {}),
        ("dasgd", {"sync_every": 4, "delay": 2}),
        ("cocodsgd", {"sync_every": 4}),
        ("overlap_local_sgd", {"sync_every": 4}),
    ],
)
def test_a_stopped_peer_fails_the_job_within_the_strategy_timeout(strategy: str, kwargs: dict[str, Any]) -> None:
    # Rank 1 stops (SIGSTOP) for good at step 3, with an average in flight on the strategy's group;
    # rank 0 must give up after `timeout`, not after torch's 30-minute default for a group created
    # without one. Rank 0 then kills rank 1 and reports through its log.
    outcome = run_ranks_expecting_failure(
        f"{WORKER}:stopped_peer", strategy=strategy, timeout_s=STOP_TIMEOUT_S, kwargs=kwargs, timeout=120
    )
    marker = [line for line in outcome.logs[0].splitlines() if line.startswith("STOPPED-PEER ")]
    assert marker, f"rank 0 did not report how its fit ended\n{outcome.logs_text()}"
    result = json.loads(marker[-1].removeprefix("STOPPED-PEER "))
    assert result["error"] == "CommunicationError", result
    assert f"Timed out waiting {int(STOP_TIMEOUT_S * 1000)}ms" in result["message"], result
    assert result["seconds"] < STOP_TIMEOUT_S + 5, result


def test_the_communication_runs_on_the_strategys_own_group_with_and_without_compression() -> None:
    # The own group is what keeps an average in flight from blocking Lightning's collectives on the
    # default group (tests/comm/test_buckets.py shows why, on a bare hook). The strategy
    # must hand it to its communicator, and a CompressedHook to the hook it wraps.
    cases = [("odsgd", "none"), ("odsgd", "fp16"), ("dasgd", "none"), ("dasgd", "bf16")]
    results = run_ranks(f"{WORKER}:communicator_groups", cases=cases, timeout=200)
    for rank, seen in enumerate(results):
        for (strategy, compression), s in zip(cases, seen, strict=True):
            where = f"rank {rank}, {strategy}, compression={compression}: {s}"
            assert not s["own_group_is_default"], where
            expected = ["AllReduceHook"] if compression == "none" else ["CompressedHook", "AllReduceHook"]
            assert s["hooks"] == expected, where
            assert all(s["hooks_on_own_group"]), where


FITS = 20


@pytest.mark.timeout(420)
def test_twenty_fits_in_one_process_leak_no_threads_and_no_file_descriptors() -> None:
    # A gradient strategy, an averaging strategy and sasgd (RPC), 20 fits each in the same two
    # processes, every trainer kept alive. The strategy's group is created by every fit: it must be
    # released at teardown (3 threads and 5 fds per fit and rank before), and so must sasgd's RPC
    # agent and rendezvous store. (torch keeps the first RPC agent's thread pool for the life of
    # the process; that costs once, at the first sasgd fit, so fit 2 is the reference.)
    strategies = ["odsgd", "dasgd", "sasgd"]
    results = run_ranks(f"{WORKER}:repeated_fits", strategies=strategies, fits=FITS, timeout=400)
    for rank, result in enumerate(results):
        for name in strategies:
            counts = result[name]
            assert len(counts) == FITS
            second, last = counts[1], counts[-1]
            for what in ("threads", "fds"):
                series = [c[what] for c in counts]
                assert last[what] <= second[what], f"rank {rank}, {name}: {what} after each fit {series}"
