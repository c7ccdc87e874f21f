"""The worked example (examples/custom_algorithm.py, Pipe-SGD) on 2 gloo ranks against a plain loop."""

from __future__ import annotations

import pytest
import torch

from tests.helpers.launch import run_ranks

TOL = 1e-10
SGD_MOMENTUM = {"kind": "sgd", "lr": 0.05, "momentum": 0.9, "wd": 1e-3}

CASES = [
    {"name": "by-name", "opt": SGD_MOMENTUM, "epochs": 2},
    {"name": "adam-steplr", "opt": {"kind": "adam", "lr": 0.01, "step_lr": 3}, "epochs": 2},
    {"name": "accumulate", "opt": SGD_MOMENTUM, "epochs": 1, "n_batches": 8, "accumulate": 2},
    # the reference simulates each rank's error feedback and averages the fp16 wire tensors
    {"name": "fp16", "opt": SGD_MOMENTUM, "epochs": 2, "args": {"compression": "fp16"}},
]


def assert_close_lists(a: list[torch.Tensor], b: list[torch.Tensor], what: str) -> None:
    assert len(a) == len(b), what
    for i, (x, y) in enumerate(zip(a, b, strict=True)):
        err = (x - y).abs().max().item()
        assert err <= TOL, f"{what}: parameter {i} differs by {err:.3e}"


@pytest.fixture(scope="module")
def exactness_results() -> list[list[dict]]:
    return run_ranks("tests.distributed.pipesgd_worker:exactness", cases=CASES)


@pytest.mark.parametrize("index", range(len(CASES)), ids=[c["name"] for c in CASES])
def test_pipesgd_example_matches_reference_every_step(exactness_results: list[list[dict]], index: int) -> None:
    for rank, rank_results in enumerate(exactness_results):
        ours, ref = rank_results[index]["ours"], rank_results[index]["reference"]
        assert ours["strategy"] == "PipeSGDStrategy"
        assert len(ours["local"]) == len(ref["local"]) > 0, "number of optimizer steps"
        for k, (a, b) in enumerate(zip(ours["local"], ref["local"], strict=True)):
            assert_close_lists(a, b, f"rank {rank} weights after step {k}")
        assert_close_lists(ours["final"], ref["final"], f"rank {rank} final weights")
        assert ours["hook_calls"] > 0, "the DDP gradient hook was never called"
    # Pipe-SGD keeps the replicas identical: every rank applies the same means to the same weights
    r0, r1 = (r[index]["ours"] for r in exactness_results)
    for a, b in zip(r0["final"], r1["final"], strict=True):
        assert torch.equal(a, b)


def test_pipesgd_first_step_does_not_update(exactness_results: list[list[dict]]) -> None:
    from tests.helpers.models import RegressionModule

    initial = [p.detach() for p in RegressionModule().parameters()]
    ours = exactness_results[0][0]["ours"]
    assert all(torch.equal(a, b) for a, b in zip(ours["local"][0], initial, strict=True))
    assert any(not torch.equal(a, b) for a, b in zip(ours["local"][1], initial, strict=True))


def test_pipesgd_checkpoint_resume_continues_the_same_trajectory(tmp_path) -> None:
    case = {"opt": SGD_MOMENTUM, "epochs": 3, "args": {"compression": "bf16"}}
    results = run_ranks("tests.distributed.pipesgd_worker:resume", case=case, tmp=str(tmp_path), save_step=4)
    for rank, res in enumerate(results):
        assert_close_lists(res["resumed"], res["straight"], f"rank {rank} resumed vs uninterrupted")
    saved = results[0]["checkpoint"]["lightning_delayed"]
    assert saved["strategy"] == "pipesgd" and saved["state"]["step"] == 4
    assert saved["state"]["pending"] is not None, "the mean in flight must be in the checkpoint"
    residuals = [s["compressor"]["residuals"] for s in saved["comm_states"]]
    assert len(residuals) == 2 and sorted(residuals[0]) == [f"grad/{i}" for i in range(4)]
    assert any(not torch.equal(residuals[0][k], residuals[1][k]) for k in residuals[0]), "residuals are per rank"
