"""Local SGD, DaSGD, CoCoD-SGD and Overlap Local-SGD on 2 real gloo ranks vs the plain-loop reference."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from tests.helpers.launch import run_ranks

TOL = 1e-10
SGD_MOMENTUM = {"kind": "sgd", "lr": 0.05, "momentum": 0.9, "wd": 1e-3}


def _case(name: str, kind: str, args: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"name": name, "kind": kind, "opt": SGD_MOMENTUM, "epochs": 2, "args": args, **extra}


CASES: list[dict[str, Any]] = [
    *[_case(f"local_sgd-tau{t}", "local_sgd", {"sync_every": t}) for t in (1, 2, 4)],
    *[_case(f"dasgd-tau{t}-d{d}", "dasgd", {"sync_every": t, "delay": d}) for t in (1, 2, 4) for d in sorted({1, t})],
    *[_case(f"cocodsgd-tau{t}", "cocodsgd", {"sync_every": t}) for t in (1, 2, 4)],
    *[
        _case(f"cocodsgd-samples-tau{t}", "cocodsgd", {"sync_every": t, "weighting": "samples"}, batch_sizes=[8, 4])
        for t in (2, 4)
    ],
    _case("dasgd-samples-tau4-d2", "dasgd", {"sync_every": 4, "delay": 2, "weighting": "samples"}, batch_sizes=[4, 8]),
    *[
        _case(f"overlap-tau{t}-beta{b}", "overlap_local_sgd", {"sync_every": t, "outer_momentum": b})
        for t in (1, 2, 4)
        for b in (0.0, 0.7)
    ],
    {
        **_case("overlap-beta0.7-steplr", "overlap_local_sgd", {"sync_every": 2, "outer_momentum": 0.7, "alpha": 0.5}),
        "opt": {**SGD_MOMENTUM, "step_lr": 3},
    },
    *[
        _case(f"{kind}-bn-buffers{avg}", kind, {"sync_every": 2, "average_buffers": avg, **extra}, batchnorm=True)
        for kind, extra in (
            ("local_sgd", {}),
            ("dasgd", {"delay": 1}),
            ("cocodsgd", {"weighting": "samples"}),
            ("overlap_local_sgd", {"outer_momentum": 0.7}),
        )
        for avg in (True, False)
    ],
    _case("dasgd-accumulate", "dasgd", {"sync_every": 2, "delay": 2}, n_batches=8, accumulate=2),
    _case(
        "cocodsgd-samples-accumulate",
        "cocodsgd",
        {"sync_every": 2, "weighting": "samples"},
        n_batches=8,
        accumulate=2,
        batch_sizes=[8, 4],
    ),
]
NAMES = [c["name"] for c in CASES]


def assert_close_lists(a: list[torch.Tensor], b: list[torch.Tensor], what: str) -> None:
    assert len(a) == len(b), what
    for i, (x, y) in enumerate(zip(a, b, strict=True)):
        assert x.dtype == y.dtype and x.shape == y.shape, f"{what}: tensor {i} dtype/shape"
        err = (x.double() - y.double()).abs().max().item()
        assert err <= TOL, f"{what}: tensor {i} differs by {err:.3e}"


@pytest.fixture(scope="module")
def exactness_results() -> list[list[dict[str, Any]]]:
    return run_ranks("tests.distributed.averaging_worker:exactness", cases=CASES)


@pytest.mark.parametrize("index", range(len(CASES)), ids=NAMES)
def test_matches_reference_every_step(exactness_results: list[list[dict[str, Any]]], index: int) -> None:
    for rank, rank_results in enumerate(exactness_results):
        ours, ref = rank_results[index]["ours"], rank_results[index]["reference"]
        assert len(ours["local"]) == len(ref["local"]) > 0, "number of optimizer steps"
        for k, (a, b) in enumerate(zip(ours["local"], ref["local"], strict=True)):
            assert_close_lists(a, b, f"rank {rank} params+buffers after step {k}")
        assert_close_lists(ours["final"], ref["final"], f"rank {rank} final params+buffers")


@pytest.mark.parametrize("index", range(len(CASES)), ids=NAMES)
def test_ranks_bit_identical_at_end(exactness_results: list[list[dict[str, Any]]], index: int) -> None:
    r0, r1 = (r[index]["ours"] for r in exactness_results)
    case = CASES[index]
    # float buffers are part of the averaged model only with average_buffers (default True)
    n_params = 6 if case.get("batchnorm") else 4
    compared = len(r0["final"]) if case["args"].get("average_buffers", True) else n_params
    for a, b in zip(r0["final"][:compared], r1["final"][:compared], strict=True):
        assert torch.equal(a, b)
    # ... while during training the ranks really differ (each steps on its own data)
    if CASES[index]["args"]["sync_every"] > 1 or CASES[index]["kind"] != "local_sgd":
        assert any(
            not torch.equal(a, b)
            for s0, s1 in zip(r0["local"], r1["local"], strict=True)
            for a, b in zip(s0, s1, strict=True)
        )


@pytest.mark.parametrize("index", range(len(CASES)), ids=NAMES)
def test_no_gradient_communication_only_scheduled_averages(
    exactness_results: list[list[dict[str, Any]]], index: int
) -> None:
    """The hook ran (DDP's own gradient reduction was replaced) and the only all-reduces are the averages."""
    case = CASES[index]
    tau = case["args"]["sync_every"]
    for rank_results in exactness_results:
        ours = rank_results[index]["ours"]
        assert ours["hook_calls"] == ours["steps"] > 0, "the no-communication DDP hook was not called on CPU"
        assert ours["forward_sync_buffers"] is False
        # One bucket per average: the model fits in one float64 bucket. Local steps issue nothing.
        expected = [1 if (k + 1) % tau == 0 else 0 for k in range(ours["steps"])]
        assert ours["all_reduces"] == expected


@pytest.mark.parametrize("kind", ["local_sgd", "dasgd", "cocodsgd", "overlap_local_sgd"])
def test_buffers_stay_local_when_not_averaged(exactness_results: list[list[dict[str, Any]]], kind: str) -> None:
    n_params = 6  # Linear, BatchNorm, Linear: weight + bias each; then running_mean, running_var, count
    off0, off1 = (r[NAMES.index(f"{kind}-bn-buffersFalse")]["ours"] for r in exactness_results)
    on0, on1 = (r[NAMES.index(f"{kind}-bn-buffersTrue")]["ours"] for r in exactness_results)
    # running statistics evolve per rank (no DDP broadcast) and are not averaged ...
    assert all(
        not torch.equal(a, b) for a, b in zip(off0["final"][n_params:-1], off1["final"][n_params:-1], strict=True)
    )
    # ... unless average_buffers=True; the integer count is never averaged but equal (same step count)
    assert all(torch.equal(a, b) for a, b in zip(on0["final"][n_params:], on1["final"][n_params:], strict=True))
    assert on0["final"][-1].dtype == torch.int64 and int(on0["final"][-1]) == 8


def test_accumulation_counts_optimizer_steps(exactness_results: list[list[dict[str, Any]]]) -> None:
    for name in ("dasgd-accumulate", "cocodsgd-samples-accumulate"):
        ours = exactness_results[0][NAMES.index(name)]["ours"]
        assert ours["steps"] == 2 * 8 // 2  # 2 epochs of 8 micro-batches, 2 per optimizer step
        assert len(ours["local"]) == ours["steps"]
        assert ours["all_reduces"] == [0, 1] * 4


RESUME_CASES = [
    # tau=4, d=3: the average launched at step 3 (global_step 4) is merged at step 6 -> in flight at the save
    {"kind": "dasgd", "opt": {**SGD_MOMENTUM, "step_lr": 3}, "epochs": 3, "args": {"sync_every": 4, "delay": 3}},
    {
        "kind": "cocodsgd",
        "opt": SGD_MOMENTUM,
        "epochs": 3,
        "args": {"sync_every": 4, "weighting": "samples"},
        "batch_sizes": [8, 4],
        "batchnorm": True,
    },
    {
        "kind": "overlap_local_sgd",
        "opt": {**SGD_MOMENTUM, "step_lr": 3},
        "epochs": 3,
        "args": {"sync_every": 2, "outer_momentum": 0.7},
    },
]


def test_checkpoint_with_average_in_flight_resumes_the_same_trajectory(tmp_path: Any) -> None:
    results = run_ranks("tests.distributed.averaging_worker:resume", cases=RESUME_CASES, tmp=str(tmp_path), save_step=4)
    for i, case in enumerate(RESUME_CASES):
        for rank, res in enumerate(results):
            assert_close_lists(res[i]["resumed"], res[i]["straight"], f"{case['kind']} rank {rank} resumed")
        state = results[0][i]["checkpoint"]["lightning_delayed"]
        assert state["strategy"] == case["kind"] and state["world_size"] == 2
        assert state["state"]["step"] == 4
        assert state["state"]["pending_average"] is not None, "the in-flight average must be in the checkpoint"
        locals_ = state["local_states"]
        assert len(locals_) == 2 and all("optimizer" in s and "tensors" in s for s in locals_)
        # each rank's own optimizer state (momentum buffers) differs and is kept
        m0, m1 = (s["optimizer"]["state"][0]["momentum_buffer"] for s in locals_)
        assert not torch.equal(m0, m1)
    overlap_local = results[0][2]["checkpoint"]["lightning_delayed"]["local_states"]
    assert all(s["momentum"] is not None for s in overlap_local)


VALIDATION_CASES = [
    {"kind": "dasgd", "opt": SGD_MOMENTUM, "epochs": 2, "args": {"sync_every": 4, "delay": 2}},
    {"kind": "overlap_local_sgd", "opt": SGD_MOMENTUM, "epochs": 2, "args": {"sync_every": 2, "outer_momentum": 0.7}},
]


def test_validation_on_consensus_leaves_trajectory_unchanged() -> None:
    results = run_ranks("tests.distributed.averaging_worker:validation", cases=VALIDATION_CASES)
    for i in range(len(VALIDATION_CASES)):
        for res in results:
            plain, validated = res[i]["plain"], res[i]["validated"]
            for a, b in zip(plain["final"], validated["final"], strict=True):
                assert torch.equal(a, b), "validation changed the training trajectory"
            assert len(validated["val_params"]) == 1 + 4  # sanity check + every 2 of 8 steps
        # every validation saw the consensus: the mean of both ranks' own weights at that step
        r0, r1 = results[0][i]["validated"], results[1][i]["validated"]
        for j, (seen0, seen1) in enumerate(zip(r0["val_params"][1:], r1["val_params"][1:], strict=True)):
            step = 2 * (j + 1) - 1
            n = len(seen0)
            expected = [(a + b) / 2 for a, b in zip(r0["local"][step][:n], r1["local"][step][:n], strict=True)]
            assert_close_lists(seen0, expected, f"validation {j} saw the mean of step {step}")
            assert all(torch.equal(a, b) for a, b in zip(seen0, seen1, strict=True))
