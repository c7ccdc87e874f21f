"""``compression="int8"`` / ``"int4"`` at the strategy level, on 2 real gloo ranks.

DiLoCo and Streaming DiLoCo against the plain-loop reference of their rule with the low-bit mean
written out (tests/helpers/reference_diloco.py + reference_lowbit.py); the bytes on the wire are
the low-bit ones; a checkpoint resume carries both residuals and continues bit for bit.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch

from tests.distributed.test_diloco import ADAMW_STEPLR, OUTER, SGD_MOMENTUM, STREAM, assert_close_lists
from tests.helpers.launch import run_ranks
from tests.helpers.reference_lowbit import BITS, lowbit_wire_bytes


def _case(name: str, kind: str, args: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"name": name, "kind": kind, "opt": SGD_MOMENTUM, "epochs": 2, "args": args, **extra}


CASES: list[dict[str, Any]] = [
    _case("diloco-int8", "diloco", {"sync_every": 2, **OUTER}, compression="int8"),
    # blocks of 5: several blocks per chunk and a short last one (chunks of 27 and 26 elements)
    _case("diloco-int4-block5", "diloco", {"sync_every": 2, **OUTER}, compression="int4", block_size=5),
    _case(
        "diloco-int8-no-feedback",
        "diloco",
        {"sync_every": 2, **OUTER},
        compression="int8",
        block_size=4,
        error_feedback=False,
    ),
    _case("streaming-int4-bn", "streaming_diloco", STREAM, compression="int4", block_size=8, batchnorm=True),
]
NAMES = [c["name"] for c in CASES]
NUM_PARAMS = 53  # RegressionModule without BatchNorm: float64 elements of the one bucket


@pytest.fixture(scope="module")
def results() -> list[list[dict[str, Any]]]:
    return run_ranks("tests.distributed.diloco_worker:exactness", cases=CASES, timeout=300)


@pytest.mark.parametrize("index", range(len(CASES)), ids=NAMES)
def test_matches_the_reference_with_the_low_bit_mean(results: list[list[dict[str, Any]]], index: int) -> None:
    for rank, rank_results in enumerate(results):
        ours, ref = rank_results[index]["ours"], rank_results[index]["reference"]
        assert len(ours["local"]) == len(ref["local"]) > 0
        for k, (a, b) in enumerate(zip(ours["local"], ref["local"], strict=True)):
            assert_close_lists(a, b, f"rank {rank} params+buffers after step {k}")
        assert_close_lists(ours["final"], ref["final"], f"rank {rank} final params+buffers")


@pytest.mark.parametrize("index", range(len(CASES)), ids=NAMES)
def test_theta_and_the_end_are_the_same_on_both_ranks(results: list[list[dict[str, Any]]], index: int) -> None:
    r0, r1 = (r[index]["ours"] for r in results)
    assert all(torch.equal(a, b) for a, b in zip(r0["final"], r1["final"], strict=True))
    for t0, t1 in zip(r0["theta"], r1["theta"], strict=True):
        assert all(torch.equal(a, b) for a, b in zip(t0, t1, strict=True))
    assert any(
        not torch.equal(a, b)
        for s0, s1 in zip(r0["local"], r1["local"], strict=True)
        for a, b in zip(s0, s1, strict=True)
    )


@pytest.mark.parametrize("index", [0, 1, 2], ids=NAMES[:3])
def test_the_wire_carries_the_low_bit_bytes(results: list[list[dict[str, Any]]], index: int) -> None:
    case = CASES[index]
    bits, block = BITS[case["compression"]], case.get("block_size", 64)
    for rank, rank_results in enumerate(results):
        sent = lowbit_wire_bytes(NUM_PARAMS, 2, rank, bits, block, scale_bytes=8)
        assert sent < NUM_PARAMS * 8 / 2, "less than half of what float64 all-reduce sends"
        assert rank_results[index]["ours"]["bytes"] == [0, sent] * 4, f"rank {rank}"


def test_the_low_bit_mean_is_not_the_exact_one(results: list[list[dict[str, Any]]]) -> None:
    """The reference would also match a full-precision run if the compression did nothing: it does something."""
    int8, int4 = results[0][0]["ours"]["final"], results[0][1]["ours"]["final"]
    assert any(not torch.equal(a, b) for a, b in zip(int8, int4, strict=True))


RESUME_CASES = [
    # H = 4: synchronisations after steps 4, 8, 12; the checkpoint at step 6 holds the residuals of step 4.
    {
        "kind": "diloco",
        "opt": ADAMW_STEPLR,
        "epochs": 3,
        "args": {"sync_every": 4, **OUTER},
        "batchnorm": True,
        "resumable": True,
        "compression": "int8",
        "block_size": 16,
    },
    {
        "kind": "streaming_diloco",
        "opt": SGD_MOMENTUM,
        "epochs": 3,
        "args": STREAM,
        "resumable": True,
        "compression": "int4",
        "block_size": 8,
    },
]
SAVE_STEP = 6


def test_resume_restores_both_residuals_and_continues_bit_for_bit(tmp_path: Any) -> None:
    out = run_ranks(
        "tests.distributed.diloco_worker:resume", cases=RESUME_CASES, tmp=str(tmp_path), save_step=SAVE_STEP
    )
    for i, case in enumerate(RESUME_CASES):
        for rank, res in enumerate(out):
            straight, resumed = res[i]["straight"], res[i]["resumed"]
            assert len(resumed["local"]) == len(straight["local"]) - SAVE_STEP
            for k, (a, b) in enumerate(zip(resumed["local"], straight["local"][SAVE_STEP:], strict=True)):
                assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True)), f"{case['kind']} rank {rank} {k}"
            assert all(torch.equal(x, y) for x, y in zip(resumed["final"], straight["final"], strict=True))
        state = out[0][i]["checkpoint"]["lightning_delayed"]
        assert state["config"]["compression"] == case["compression"]
        assert state["config"]["block_size"] == case["block_size"]
        comm = state["comm_states"]
        assert len(comm) == 2
        for c in comm:
            assert c["residuals"] and c["owner_residuals"], "both residuals are in every rank's checkpoint"
        assert sorted(comm[0]["residuals"]) == sorted(comm[1]["residuals"])
        assert any(not torch.equal(comm[0]["residuals"][k], comm[1]["residuals"][k]) for k in comm[0]["residuals"]), (
            "each rank saves its own residuals"
        )


GROUP_CASES = [
    {"kind": "diloco", "opt": SGD_MOMENTUM, "epochs": 2, "args": {"sync_every": 2}, "perturb": True, **low}
    for low in ({"compression": "int8"}, {"compression": "int4", "block_size": 4})
]


def test_worker_groups_average_at_full_precision_inside_and_low_bit_between() -> None:
    """4 ranks as 2 workers x 2: DDP's float64 all-reduce inside a worker, the int8/int4 wire between workers."""
    out = run_ranks("tests.distributed.groups_worker:exactness", world_size=4, cases=GROUP_CASES, group_size=2)
    for index, case in enumerate(GROUP_CASES):
        local = [per_rank[index]["ours"]["local"] for per_rank in out]
        for k in range(len(local[0])):
            for first, second in ((0, 1), (2, 3)):
                assert all(torch.equal(a, b) for a, b in zip(local[first][k], local[second][k], strict=True))
        assert any(not torch.equal(a, b) for a, b in zip(local[0][0], local[2][0], strict=True))
        finals = [per_rank[index]["ours"]["final"] for per_rank in out]
        assert all(torch.equal(a, b) for rank in (1, 2, 3) for a, b in zip(finals[0], finals[rank], strict=True))
        # Every step DDP's gradient all-reduce over the worker (53 float64: 424 bytes); every 2nd step also the
        # low-bit average of this rank's 27-element shard with the other worker's rank at the same position
        # (2 ranks in that cross group), then the float64 all-gather of the shards inside the worker (28 * 8).
        bits, block = BITS[case["compression"]], case.get("block_size", 64)
        for rank, per_rank in enumerate(out):
            cross = lowbit_wire_bytes(27, 2, rank // 2, bits, block, scale_bytes=8)
            expected = [424 + (cross + 224 if (k + 1) % 2 == 0 else 0) for k in range(8)]
            assert per_rank[index]["ours"]["bytes"] == expected, f"{case['compression']} rank {rank}"
            assert not per_rank[index]["ours"]["groups_after_teardown"]


ODSGD_CASES = [
    {"name": "odsgd-int8", "opt": SGD_MOMENTUM, "epochs": 2, "args": {"warmup_steps": 2}, "compression": "int8"},
    {
        "name": "odsgd-int4-dc-block8",
        "opt": SGD_MOMENTUM,
        "epochs": 2,
        "args": {"dc_lambda": 0.3, "local_lr": 0.02},
        "compression": "int4",
        "block_size": 8,
    },
]
AVERAGING_CASES = [
    {
        "name": "dasgd-int8",
        "kind": "dasgd",
        "opt": SGD_MOMENTUM,
        "epochs": 2,
        "args": {"sync_every": 2, "delay": 1},
        "compression": "int8",
    },
    {
        "name": "local_sgd-int4-block8",
        "kind": "local_sgd",
        "opt": SGD_MOMENTUM,
        "epochs": 2,
        "args": {"sync_every": 2},
        "compression": "int4",
        "block_size": 8,
    },
    {
        "name": "overlap_local_sgd-int8-momentum",
        "kind": "overlap_local_sgd",
        "opt": SGD_MOMENTUM,
        "epochs": 2,
        "args": {"sync_every": 2, "outer_momentum": 0.7},
        "compression": "int8",
        "block_size": 16,
    },
]


@pytest.fixture(scope="module")
def other_results() -> list[dict[str, list[Any]]]:
    return run_ranks(
        "tests.distributed.lowbit_training_worker:cases",
        odsgd_cases=ODSGD_CASES,
        averaging_cases=AVERAGING_CASES,
        timeout=300,
    )


@pytest.mark.parametrize("index", range(len(ODSGD_CASES)), ids=[c["name"] for c in ODSGD_CASES])
def test_odsgd_with_low_bit_gradients_matches_the_reference(
    other_results: list[dict[str, list[Any]]], index: int
) -> None:
    for rank, per_rank in enumerate(other_results):
        ours, ref = per_rank["odsgd"][index]["ours"], per_rank["odsgd"][index]["reference"]
        assert len(ours["local"]) == len(ref["local"]) == 8
        for k, (a, b) in enumerate(zip(ours["local"], ref["local"], strict=True)):
            assert_close_lists(a, b, f"rank {rank} local w after step {k}")
        for k, (a, b) in enumerate(zip(ours["global"], ref["global"], strict=True)):
            assert (a is None) == (b is None), f"rank {rank} step {k}"
            if b is not None:
                assert_close_lists(a, b, f"rank {rank} global W after step {k}")
        assert_close_lists(ours["final"], ref["final"], f"rank {rank} final")
    r0, r1 = (per_rank["odsgd"][index]["ours"] for per_rank in other_results)
    assert all(torch.equal(a, b) for a, b in zip(r0["final"], r1["final"], strict=True))
    for w0, w1 in zip(r0["global"], r1["global"], strict=True):  # W, the global model, is one on every rank
        assert (w0 is None and w1 is None) or all(torch.equal(a, b) for a, b in zip(w0, w1, strict=True))
    case = ODSGD_CASES[index]
    bits, block = BITS[case["compression"]], case.get("block_size", 64)
    for rank, per_rank in enumerate(other_results):
        # one low-bit gradient mean per step, warm-up or delayed (the model fits in one DDP bucket)
        assert per_rank["odsgd"][index]["ours"]["bytes"] == 8 * lowbit_wire_bytes(NUM_PARAMS, 2, rank, bits, block, 8)


@pytest.mark.parametrize("index", range(len(AVERAGING_CASES)), ids=[c["name"] for c in AVERAGING_CASES])
def test_averaging_with_low_bit_models_matches_the_reference(
    other_results: list[dict[str, list[Any]]], index: int
) -> None:
    for rank, per_rank in enumerate(other_results):
        ours, ref = per_rank["averaging"][index]["ours"], per_rank["averaging"][index]["reference"]
        assert len(ours["local"]) == len(ref["local"]) == 8
        for k, (a, b) in enumerate(zip(ours["local"], ref["local"], strict=True)):
            assert_close_lists(a, b, f"rank {rank} params+buffers after step {k}")
        assert_close_lists(ours["final"], ref["final"], f"rank {rank} final")
    r0, r1 = (per_rank["averaging"][index]["ours"] for per_rank in other_results)
    assert all(torch.equal(a, b) for a, b in zip(r0["final"], r1["final"], strict=True))
    assert any(not torch.equal(a, b) for a, b in zip(r0["local"][0], r1["local"][0], strict=True))
