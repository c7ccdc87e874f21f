"""Worker groups in comm/: the layout, and the shard-then-gather average on 4 real gloo ranks."""

from __future__ import annotations

import time
from typing import Any

import pytest
import torch

from lightning_delayed.comm import stats as comm_stats
from lightning_delayed.comm.groups import WorkerLayout, check_group_size, resolve_group_size
from tests.helpers.launch import run_ranks

CASES: list[dict[str, Any]] = [
    # sizes that do not divide by 2 or 4, one bucket holding several tensors of two dtypes
    {"shapes": [(5,), (3, 3), (7,)], "dtypes": ["float32", "float64", "float32"], "cap": 25.0},
    # a tensor smaller than G (empty shards), a 16-byte cap (several buckets, each sharded)
    {"shapes": [(1,), (2, 3), (11,)], "dtypes": ["float64", "float64", "float64"], "cap": 16 / 2**20},
    # weighted: ranks of a worker give different weights; the worker's weight is their sum
    {"shapes": [(4,), (3,)], "dtypes": ["float64", "float32"], "cap": 25.0, "weighted": True},
]
GROUP_SIZES = [1, 2, 4]


def test_layout() -> None:
    layout = WorkerLayout(world_size=6, group_size=3)
    assert layout.num_workers == 2
    assert [layout.worker_of(r) for r in range(6)] == [0, 0, 0, 1, 1, 1]
    assert layout.intra_ranks(1) == [3, 4, 5]
    assert layout.cross_ranks(2) == [2, 5]
    with pytest.raises(ValueError, match="group_size=4 must divide the world size 6"):
        WorkerLayout(world_size=6, group_size=4)


def test_blocked_time_is_not_counted_off_the_training_loop() -> None:
    stats = comm_stats.comm_stats()
    before = stats.snapshot()
    with comm_stats.background(), comm_stats.blocked():
        time.sleep(0.01)  # stands for a helper thread's wait, not the training loop's
    assert (stats.snapshot() - before).seconds_blocked == 0.0
    with comm_stats.blocked():
        time.sleep(0.01)
    assert (stats.snapshot() - before).seconds_blocked > 0.0


def test_group_size_values() -> None:
    assert check_group_size("node") == "node"
    assert check_group_size(3) == 3
    for bad in (0, -2, 1.0, True, "nodes", None):
        with pytest.raises(ValueError, match="group_size must be an int >= 1"):
            check_group_size(bad)
    assert resolve_group_size("node", world_size=8, devices_per_node=4) == 4
    with pytest.raises(ValueError, match="'node' = 3 devices per node must divide the world size 8"):
        resolve_group_size("node", world_size=8, devices_per_node=3)


@pytest.fixture(scope="module")
def sharded() -> list[dict[str, Any]]:
    return run_ranks("tests.comm.groups_worker:sharded", world_size=4, cases=CASES, group_sizes=GROUP_SIZES)


@pytest.mark.parametrize("size", GROUP_SIZES)
@pytest.mark.parametrize("index", range(len(CASES)))
def test_sharded_average_is_the_plain_average(sharded: list[dict[str, Any]], size: int, index: int) -> None:
    for rank, results in enumerate(sharded):
        r = results[f"G{size}/{index}"]
        assert r["same_on_second_wait"]
        for got, want, shape, dtype in zip(
            r["got"], r["expected"], CASES[index]["shapes"], CASES[index]["dtypes"], strict=True
        ):
            assert got.shape == torch.Size(shape) and got.dtype == getattr(torch, dtype)
            assert torch.equal(got, want), f"rank {rank}: {got} != {want}"


@pytest.mark.parametrize("size", [2, 4])
def test_ranks_of_a_worker_get_identical_bits(sharded: list[dict[str, Any]], size: int) -> None:
    for index in range(len(CASES)):
        for rank in range(4):
            first = rank - rank % size
            ours, firsts = sharded[rank][f"G{size}/{index}"]["got"], sharded[first][f"G{size}/{index}"]["got"]
            for a, b in zip(ours, firsts, strict=True):
                assert torch.equal(a, b)


@pytest.mark.parametrize("size", GROUP_SIZES)
def test_bytes_each_rank_sends_across_workers_shrink_with_g(sharded: list[dict[str, Any]], size: int) -> None:
    # Case 0 makes two buckets: float32 (5 + 7 = 12 elements) and float64 (9 elements). Each rank
    # sends a ceil(n / G) shard of each across workers (nothing when G = N: one worker), and in the
    # gather (G > 1) that shard plus one status element.
    buckets = [(12, 4), (9, 8)]
    cross = 0 if size == 4 else sum(-(-n // size) * b for n, b in buckets)
    gather = 0 if size == 1 else sum((-(-n // size) + 1) * b for n, b in buckets)
    for results in sharded:
        assert results[f"G{size}/0"]["bytes_sent"] == cross + gather


@pytest.mark.parametrize("size", GROUP_SIZES)
def test_compression_on_the_cross_wire(sharded: list[dict[str, Any]], size: int) -> None:
    workers = 4 // size
    for rank, results in enumerate(sharded):
        r = results[f"G{size}/compressed"]
        assert [t.dtype for t in r["got"]] == [torch.float64, torch.float32]
        want0 = sum(0.1 * (w + 1) for w in range(workers)) / workers
        want1 = sum(1.0 + w for w in range(workers)) / workers
        assert torch.allclose(r["got"][0], torch.full((5,), want0, dtype=torch.float64), rtol=1e-3)
        assert torch.equal(r["got"][1], torch.full((3,), want1))  # exact in fp16
        # One bucket per dtype, one shard of each per rank: error feedback keyed per shard.
        position = rank % size
        assert r["residual_keys"] == [f"model/{j}..model/{j}/shard{position}of{size}" for j in (0, 1)]


@pytest.mark.parametrize("size", GROUP_SIZES)
def test_a_nan_in_one_shard_raises_on_every_rank(sharded: list[dict[str, Any]], size: int) -> None:
    for rank, results in enumerate(sharded):
        message = results[f"G{size}/nan"]
        assert message != "no error", f"rank {rank} did not raise"
        assert "NaN or Inf" in message or "failed on the rank(s) at positions" in message, message
