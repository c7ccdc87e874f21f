"""OD-SGD on 2 real gloo ranks against the plain-loop reference of docs/algorithms/odsgd.md."""

from __future__ import annotations

import pytest
import torch

from tests.helpers.launch import run_ranks

TOL = 1e-10
SGD_MOMENTUM = {"kind": "sgd", "lr": 0.05, "momentum": 0.9, "wd": 1e-3}

CASES = [
    {"name": "plain", "opt": SGD_MOMENTUM, "epochs": 2, "args": {}},
    {"name": "warmup", "opt": SGD_MOMENTUM, "epochs": 2, "args": {"warmup_steps": 3}},
    {"name": "dc_lambda", "opt": SGD_MOMENTUM, "epochs": 2, "args": {"dc_lambda": 0.5, "local_lr": 0.02}},
    {
        "name": "warmup+dc+sched",
        "opt": {**SGD_MOMENTUM, "step_lr": 3},
        "epochs": 2,
        "args": {"dc_lambda": 0.3, "warmup_steps": 2},
    },
    {"name": "adam", "opt": {"kind": "adam", "lr": 0.01}, "epochs": 1, "args": {"warmup_steps": 1}},
    {
        "name": "accumulate",
        "opt": SGD_MOMENTUM,
        "epochs": 2,
        "n_batches": 8,
        "accumulate": 2,
        "args": {"warmup_steps": 1},
    },
]


def assert_close_lists(a: list[torch.Tensor], b: list[torch.Tensor], what: str) -> None:
    assert len(a) == len(b), what
    for i, (x, y) in enumerate(zip(a, b, strict=True)):
        err = (x - y).abs().max().item()
        assert err <= TOL, f"{what}: parameter {i} differs by {err:.3e}"


@pytest.fixture(scope="module")
def exactness_results() -> list[list[dict]]:
    return run_ranks("tests.distributed.odsgd_worker:exactness", cases=CASES)


@pytest.mark.parametrize("index", range(len(CASES)), ids=[c["name"] for c in CASES])
def test_odsgd_matches_reference_every_step(exactness_results: list[list[dict]], index: int) -> None:
    for rank, rank_results in enumerate(exactness_results):
        ours, ref = rank_results[index]["ours"], rank_results[index]["reference"]
        assert len(ours["local"]) == len(ref["local"]) > 0, "number of optimizer steps"
        for k, (a, b) in enumerate(zip(ours["local"], ref["local"], strict=True)):
            assert_close_lists(a, b, f"rank {rank} local w after step {k}")
        for k, (a, b) in enumerate(zip(ours["global"], ref["global"], strict=True)):
            if b is None:
                assert a is None, f"rank {rank}: W exists before the first delayed step {k}"
            else:
                assert_close_lists(a, b, f"rank {rank} global W after step {k}")
        assert_close_lists(ours["final"], ref["final"], f"rank {rank} final weights")
        assert ours["hook_calls"] > 0, "the DDP communication hook was never called on CPU"


@pytest.mark.parametrize("index", range(len(CASES)), ids=[c["name"] for c in CASES])
def test_odsgd_ranks_identical_at_end(exactness_results: list[list[dict]], index: int) -> None:
    r0, r1 = (r[index]["ours"] for r in exactness_results)
    for a, b in zip(r0["final"], r1["final"], strict=True):
        assert torch.equal(a, b)
    # ... while during training the local weights really differ (each rank compensates with its own g)
    assert any(not torch.equal(a, b) for a, b in zip(r0["local"][-1], r1["local"][-1], strict=True))


def test_accumulation_counts_optimizer_steps(exactness_results: list[list[dict]]) -> None:
    index = [c["name"] for c in CASES].index("accumulate")
    ours = exactness_results[0][index]["ours"]
    assert ours["steps"] == 2 * 8 // 2  # 2 epochs of 8 micro-batches, 2 per optimizer step
    assert len(ours["local"]) == ours["steps"]


def test_checkpoint_resume_continues_the_same_trajectory(tmp_path) -> None:
    case = {"opt": {**SGD_MOMENTUM, "step_lr": 3}, "epochs": 3, "args": {"dc_lambda": 0.2, "warmup_steps": 1}}
    results = run_ranks("tests.distributed.odsgd_worker:resume", case=case, tmp=str(tmp_path), save_step=4)
    for rank, res in enumerate(results):
        assert_close_lists(res["resumed"], res["straight"], f"rank {rank} resumed vs uninterrupted")
    state = results[0]["checkpoint"]["lightning_delayed"]
    assert state["strategy"] == "odsgd" and state["world_size"] == 2
    assert state["state"]["step"] == 4
    assert state["state"]["pending_mean_grads"] is not None, "the in-flight mean must be in the checkpoint"
    assert len(state["local_states"]) == 2
    # the checkpoint's state_dict is the consensus W, not rank 0's local w
    w_global = state["state"]["global_params"]
    sd = list(results[0]["checkpoint"]["state_dict"].values())
    assert_close_lists(sd, w_global, "checkpoint state_dict vs W")


def test_validation_runs_on_consensus_and_leaves_trajectory_unchanged() -> None:
    case = {"opt": SGD_MOMENTUM, "epochs": 2, "args": {"dc_lambda": 0.1}}
    results = run_ranks("tests.distributed.odsgd_worker:validation", case=case)
    for res in results:
        plain, validated = res["plain"], res["validated"]
        for a, b in zip(plain["final"], validated["final"], strict=True):
            assert torch.equal(a, b), "validation changed the training trajectory"
        # sanity check + every 2 steps of 8 -> 1 + 4 validations, each saw W (the consensus) of that step
        assert len(validated["val_params"]) == 5
        for i, seen in enumerate(validated["val_params"][1:]):
            step = 2 * (i + 1) - 1
            assert_close_lists(seen, validated["global"][step], f"validation {i} saw W of step {step}")
    assert all(
        torch.equal(a, b)
        for a, b in zip(
            results[0]["validated"]["val_params"][-1], results[1]["validated"]["val_params"][-1], strict=True
        )
    )
