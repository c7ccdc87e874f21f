"""CommMonitor on 2 gloo ranks, and proof that the benchmark baselines communicate as they claim."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from lightning_delayed import CommMonitor
from lightning_delayed.comm.stats import CommStats
from tests.helpers.launch import run_ranks

STEPS = 6


@pytest.fixture(scope="module")
def runs() -> list[dict[str, Any]]:
    return run_ranks("tests.benchmarks.bench_worker:monitor_runs", timeout=240)


def _same(a: list[torch.Tensor], b: list[torch.Tensor]) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


def test_monitor_logs_every_step_with_positive_bytes_and_sane_times(runs: list[dict[str, Any]]) -> None:
    for rank_out in runs:
        for name in ("ssgd", "odsgd", "dasgd", "post_local_sgd"):
            history = rank_out[name]["history"]
            assert [h[0] for h in history] == list(range(STEPS)), name
            assert all(h[1] > 0 and 0 <= h[2] <= h[1] for h in history), (name, history)
            assert sum(h[3] for h in history) > 0, name
            logged = [m for m in rank_out[name]["logged"] if "comm/bytes" in m]
            assert len(logged) == STEPS, (name, rank_out[name]["logged"])
            for m in logged:
                assert m["comm/blocked_s"] >= 0 and m["comm/compute_s"] >= 0
                assert abs(m["comm/step_s"] - m["comm/compute_s"] - m["comm/blocked_s"]) < 1e-6


def test_monitor_bytes_match_what_each_family_communicates(runs: list[dict[str, Any]]) -> None:
    for rank_out in runs:
        param_bytes = rank_out["param_bytes"]
        # ssgd: DDP's C++ all-reduce of every gradient, every step
        assert [h[3] for h in rank_out["ssgd"]["history"]] == [param_bytes] * STEPS
        # odsgd: the hook launches the mean of every gradient, every step (through comm/buckets)
        assert [h[3] for h in rank_out["odsgd"]["history"]] == [param_bytes] * STEPS
        # dasgd, sync_every=2: parameters averaged after steps 1, 3, 5 only
        assert [h[3] for h in rank_out["dasgd"]["history"]] == [0, param_bytes] * (STEPS // 2)
        # post-local SGD, period 2: blocking averages at averager steps 0, 2, 4; no gradient traffic
        assert [h[3] for h in rank_out["post_local_sgd"]["history"]] == [param_bytes, 0] * (STEPS // 2)
        assert [h[3] for h in rank_out["compute_only"]["history"]] == [0] * STEPS


def test_monitor_logs_reported_staleness(runs: list[dict[str, Any]]) -> None:
    for rank_out in runs:
        assert all(h[4] == [1.0, 3.0] for h in rank_out["dasgd"]["history"])
        logged = [m for m in rank_out["dasgd"]["logged"] if "comm/bytes" in m]
        assert all(m["comm/staleness_mean"] == 2.0 and m["comm/staleness_max"] == 3.0 for m in logged)
        assert not any("comm/staleness_mean" in m for m in rank_out["ssgd"]["logged"])


def test_post_local_sgd_averages_every_period_and_never_reduces_gradients(runs: list[dict[str, Any]]) -> None:
    r0, r1 = (r["post_local_sgd"] for r in runs)
    for step in range(STEPS):
        assert not _same(r0["grads"][step], r1["grads"][step]), f"gradients all-reduced at step {step}"
        averaged = step % 2 == 0  # PeriodicModelAverager(period=2, warmup_steps=0) averages at 0, 2, 4
        assert _same(r0["params"][step], r1["params"][step]) == averaged, step


def test_compute_only_never_communicates(runs: list[dict[str, Any]]) -> None:
    r0, r1 = (r["compute_only"] for r in runs)
    for step in range(STEPS):
        assert not _same(r0["grads"][step], r1["grads"][step])
        assert not _same(r0["params"][step], r1["params"][step])


def test_comm_stats_counters_and_validation() -> None:
    stats = CommStats()
    before = stats.snapshot()
    stats.record_sent(100)
    stats.record_sent(20, collectives=2)
    stats.record_blocked(0.5)
    stats.record_staleness(4)
    delta = stats.snapshot() - before
    assert (delta.bytes_sent, delta.collectives, delta.seconds_blocked) == (120, 3, 0.5)
    assert stats.drain_staleness() == [4.0] and stats.drain_staleness() == []
    for bad in (lambda: stats.record_sent(-1), lambda: stats.record_blocked(-0.1), lambda: stats.record_staleness(-2)):
        with pytest.raises(ValueError, match=">= 0"):
            bad()
    with pytest.raises(ValueError, match="skip_steps"):
        CommMonitor(skip_steps=-1)
