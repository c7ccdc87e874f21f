"""Phase ``peer``: the interpolation, summaries, schedule, lighthouse command and section (no ranks started)."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

import pytest
import torch

from benchmarks.base import charlm
from benchmarks.workloads.peer import common as peer_common
from benchmarks.workloads.peer import report as peer_report
from benchmarks.workloads.peer import runner as peer_runner
from benchmarks.workloads.peer import worker as peer_worker

if TYPE_CHECKING:
    from pathlib import Path


def test_loss_at_interpolates_and_clamps() -> None:
    curve = [[0.0, 4.0], [2.0, 3.0], [4.0, 2.0]]
    assert peer_common.loss_at(curve, 1.0) == pytest.approx(3.5)
    assert peer_common.loss_at(curve, 3.0) == pytest.approx(2.5)
    assert peer_common.loss_at(curve, 2.0) == pytest.approx(3.0)
    assert peer_common.loss_at(curve, -1.0) == 4.0
    assert peer_common.loss_at(curve, 10.0) == 2.0
    with pytest.raises(ValueError, match="empty"):
        peer_common.loss_at([], 1.0)


def test_spread_is_median_min_max() -> None:
    assert peer_common.spread([3.0, 1.0, 2.0, 10.0]) == {"median": 2.5, "min": 1.0, "max": 10.0}
    with pytest.raises(ValueError):
        peer_common.spread([])


def test_schedule_interleaves_ours_and_torchft() -> None:
    assert peer_common.schedule(2) == [(0, "ours"), (0, "torchft"), (1, "ours"), (1, "torchft")]


def _run(impl: str, seed: int, rate: float, end: float) -> dict[str, Any]:
    return {
        "impl": impl,
        "seed": seed,
        "samples_per_s": rate,
        "wire_mb_per_step": 0.7,
        "train_curve": [[end, 3.0]],
        "val_curve": [[0.0, 4.6], [end, 3.0]],
    }


def _runs() -> list[dict[str, Any]]:
    return [
        _run("ours", 0, 40.0, 10.0),
        _run("torchft", 0, 30.0, 20.0),
        _run("ours", 1, 44.0, 11.0),
        _run("torchft", 1, 32.0, 18.0),
    ]


def test_summarise_reads_losses_at_the_shortest_runs_time() -> None:
    s = peer_common.summarise(_runs())
    assert s["equal_wall_time_s"] == 10.0
    assert s["ours"]["samples_per_s"] == {"median": 42.0, "min": 40.0, "max": 44.0}
    assert s["throughput_ratio"] == pytest.approx(42.0 / 31.0)
    # torchft at 10 s is halfway down a 20 s and 4/9 of the way down an 18 s curve from 4.6 to 3.0
    assert s["torchft"]["val_loss_at_equal_time"]["max"] == pytest.approx(4.6 - 1.6 * 0.5)
    assert s["torchft"]["val_loss_at_equal_time"]["min"] == pytest.approx(4.6 - 1.6 * 10 / 18)
    assert s["ours"]["final_val_loss"]["median"] == 3.0


def test_lighthouse_command_binds_where_asked() -> None:
    cmd = peer_runner.lighthouse_command("10.77.0.1:29510")
    assert cmd[0].endswith("torchft_lighthouse")
    assert cmd[cmd.index("--bind") + 1] == "10.77.0.1:29510"
    assert cmd[cmd.index("--min_replicas") + 1] == "2"


def test_section_has_the_table_verdict_and_plot(tmp_path: Path) -> None:
    runs = _runs()
    data = {
        "peer": {
            "config": {
                "model": peer_common.MODEL,
                "batch_per_rank": peer_common.BATCH,
                "world": 2,
                "sync_every": 8,
                "steps": 64,
                "inner": {"AdamW": {"lr": peer_common.INNER_LR}},
                "outer": peer_common.OUTER,
                "val_windows": 32,
                "repeats": 2,
            },
            "versions": {"torchft": "0.2.0"},
            "links": {"200mbit": {"runs": runs, "summary": peer_common.summarise(runs)}},
            "seconds": 100.0,
        }
    }
    md = peer_report.section(data, tmp_path)
    assert md.startswith("## A real peer")
    assert "| 200mbit | ours | 42.0 (40.0-44.0) |" in md
    assert "**1.35x** (target >= 1: met)" in md
    assert (tmp_path / "benchmarks_peer.png").stat().st_size > 0
    assert peer_report.section({}, tmp_path) == ""


def test_the_lm_has_no_non_finite_float_buffer() -> None:
    # The averaging strategies (diloco, local_sgd, ...) all-reduce every float buffer and refuse non-finite averages.
    model = charlm.CharTransformer(d_model=16, nhead=2, num_layers=1, seq_len=8)
    for name, buf in model.named_buffers():
        if buf.is_floating_point():
            assert torch.isfinite(buf).all(), name
    # ... and the causal mask is still there: position 0 may not see position 1, position 1 may see position 0
    assert bool(model.mask[0, 1]) and not bool(model.mask[1, 0])


def test_failed_runs_are_listed_not_summarised() -> None:
    runs = [*_runs(), {"impl": "torchft", "seed": 2, "error": "train --impl torchft: rank 1 exited with 1\n..."}]
    s = peer_common.summarise(runs)
    assert s["failed"] == ["torchft seed 2"]
    assert s["torchft"]["samples_per_s"]["max"] == 32.0
    only_failed = peer_common.summarise(runs[-1:])
    assert only_failed == {"failed": ["torchft seed 2"]}


def test_parse_task_stat_reads_name_and_cpu_ticks() -> None:
    # a thread name with a space and parentheses; utime 120 and stime 30 are fields 14 and 15
    line = "4242 (gloo (x) 1) S 1 2 3 0 -1 4194304 143 0 0 0 120 30 0 0 20 0 1 0 1233564 3133440 394"
    assert peer_common.parse_task_stat(line) == ("gloo (x) 1", 150.0)


def test_cpu_by_thread_is_seconds_since_the_first_snapshot() -> None:
    hz = os.sysconf("SC_CLK_TCK")
    got = peer_common.cpu_by_thread({"python": 10.0, "idle": 5.0}, {"python": 10.0 + 2 * hz, "idle": 5.0, "new": hz})
    assert got == {"python": 2.0, "new": 1.0}
    assert list(got) == ["python", "new"]  # busiest first
    assert sum(peer_common.thread_ticks().values()) > 0  # this process has run: /proc/self/task is read


def test_summarise_reports_step_times_and_cpu_per_step() -> None:
    runs = _runs()
    for i, run in enumerate(runs):
        run.update(steady_steps=10, local_step_s=0.1 * (i + 1), sync_step_s=0.5, cpu_s_by_thread={"python": 2.0})
    s = peer_common.summarise(runs)
    assert s["ours"]["local_step_s"]["max"] == pytest.approx(0.3)
    assert s["torchft"]["cpu_ms_per_step_by_thread"] == {"python": 200.0}


def test_store_barrier_lets_rank_0_leave_only_after_the_others() -> None:
    import threading
    from datetime import timedelta

    from torch.distributed import TCPStore

    master = TCPStore("127.0.0.1", 0, 2, is_master=True, timeout=timedelta(seconds=30), wait_for_workers=False)
    client = TCPStore("127.0.0.1", master.port, 2, is_master=False, timeout=timedelta(seconds=30))
    other = threading.Thread(target=peer_worker._store_barrier, args=(client, "end", 2, 1))
    other.start()
    peer_worker._store_barrier(master, "end", 2, 0)
    assert master.check(["end/through/1"])  # rank 1 was through before rank 0 returned
    other.join(timeout=30)
    assert not other.is_alive()
