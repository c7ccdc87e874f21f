"""DiLoCo and Streaming DiLoCo on 2 real gloo ranks vs the plain-loop reference (tests/helpers/reference_diloco.py)."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from tests.helpers.launch import run_ranks

TOL = 1e-10
SGD_MOMENTUM = {"kind": "sgd", "lr": 0.05, "momentum": 0.9, "wd": 1e-3}
ADAMW_STEPLR = {"kind": "adamw", "lr": 0.02, "wd": 0.01, "step_lr": 3}
OUTER = {"outer_lr": 0.7, "outer_momentum": 0.9, "nesterov": True}
STREAM = {"sync_every": 4, "num_fragments": 2, "delay": 1, "alpha": 0.5, **OUTER}


def _case(name: str, kind: str, args: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"name": name, "kind": kind, "opt": SGD_MOMENTUM, "epochs": 2, "args": args, **extra}


CASES: list[dict[str, Any]] = [
    _case("diloco-nesterov", "diloco", {"sync_every": 2, **OUTER}),
    # 8 steps with H = 3: the end of training falls mid-period and syncs once more
    _case(
        "diloco-heavyball-midperiod",
        "diloco",
        {"sync_every": 3, "outer_lr": 0.5, "outer_momentum": 0.6, "nesterov": False},
    ),
    _case(
        "diloco-as-local-sgd",
        "diloco",
        {"sync_every": 2, "outer_lr": 1.0, "outer_momentum": 0.0},
        reference=("local_sgd", {"sync_every": 2}),
    ),
    _case("diloco-adamw-steplr", "diloco", {"sync_every": 2, **OUTER}, opt=ADAMW_STEPLR),
    _case("diloco-bn", "diloco", {"sync_every": 3, **OUTER}, batchnorm=True),
    # Linear, BatchNorm, Linear: strided puts layers 0, 2 | 1; sequential 0, 1 | 2
    _case("streaming-strided-bn", "streaming_diloco", {**STREAM, "fragments": "strided"}, batchnorm=True),
    _case("streaming-sequential-bn", "streaming_diloco", {**STREAM, "fragments": "sequential"}, batchnorm=True),
    _case("streaming-adamw-steplr", "streaming_diloco", STREAM, opt=ADAMW_STEPLR),
    # delay 3 >= H / P: two fragments in flight at once
    _case("streaming-delay3", "streaming_diloco", {**STREAM, "delay": 3, "alpha": 0.25}),
    _case(
        "streaming-p1-d0-a0",
        "streaming_diloco",
        {"sync_every": 2, "num_fragments": 1, "delay": 0, "alpha": 0.0, **OUTER},
        reference=("diloco", {"sync_every": 2, **OUTER}),
    ),
    _case(
        "streaming-accumulate",
        "streaming_diloco",
        {**STREAM, "sync_every": 2},
        n_batches=8,
        accumulate=2,
        batchnorm=True,
    ),
    _case("diloco-fp16", "diloco", {"sync_every": 2, **OUTER}, compression="fp16"),
    _case("streaming-fp16", "streaming_diloco", STREAM, compression="fp16"),
]
NAMES = [c["name"] for c in CASES]
MAX_DIFF: dict[str, float] = {}


def max_diff(a: list[torch.Tensor], b: list[torch.Tensor], what: str) -> float:
    assert len(a) == len(b), what
    worst = 0.0
    for i, (x, y) in enumerate(zip(a, b, strict=True)):
        assert x.dtype == y.dtype and x.shape == y.shape, f"{what}: tensor {i} dtype/shape"
        worst = max(worst, (x.double() - y.double()).abs().max().item())
    return worst


def assert_close_lists(a: list[torch.Tensor], b: list[torch.Tensor], what: str) -> float:
    err = max_diff(a, b, what)
    assert err <= TOL, f"{what}: differs by {err:.3e}"
    return err


@pytest.fixture(scope="module")
def exactness_results() -> list[list[dict[str, Any]]]:
    return run_ranks("tests.distributed.diloco_worker:exactness", cases=CASES, timeout=400)


@pytest.mark.parametrize("index", range(len(CASES)), ids=NAMES)
def test_matches_reference_every_step(exactness_results: list[list[dict[str, Any]]], index: int) -> None:
    worst = 0.0
    for rank, rank_results in enumerate(exactness_results):
        ours, ref = rank_results[index]["ours"], rank_results[index]["reference"]
        assert len(ours["local"]) == len(ref["local"]) > 0, "number of optimizer steps"
        for k, (a, b) in enumerate(zip(ours["local"], ref["local"], strict=True)):
            worst = max(worst, assert_close_lists(a, b, f"rank {rank} params+buffers after step {k}"))
        worst = max(worst, assert_close_lists(ours["final"], ref["final"], f"rank {rank} final params+buffers"))
    print(f"{NAMES[index]}: max abs diff vs reference {worst:.2e}")


@pytest.mark.parametrize("index", range(len(CASES)), ids=NAMES)
def test_ranks_bit_identical_at_end_and_different_during(
    exactness_results: list[list[dict[str, Any]]], index: int
) -> None:
    r0, r1 = (r[index]["ours"] for r in exactness_results)
    for a, b in zip(r0["final"], r1["final"], strict=True):
        assert torch.equal(a, b)
    assert any(
        not torch.equal(a, b)
        for s0, s1 in zip(r0["local"], r1["local"], strict=True)
        for a, b in zip(s0, s1, strict=True)
    )
    # theta is the same on both ranks after every step
    for t0, t1 in zip(r0["theta"], r1["theta"], strict=True):
        assert all(torch.equal(a, b) for a, b in zip(t0, t1, strict=True))


def _launch_steps(args: dict[str, Any], steps: int) -> list[list[int]]:
    """Per step, the fragments launched after it."""
    h, p = args["sync_every"], args.get("num_fragments", 1)
    return [[q for q in range(p) if (k + 1) % h == ((q + 1) * h // p) % h] for k in range(steps)]


@pytest.mark.parametrize("index", range(len(CASES)), ids=NAMES)
def test_no_gradient_communication_only_scheduled_launches(
    exactness_results: list[list[dict[str, Any]]], index: int
) -> None:
    case = CASES[index]
    for rank_results in exactness_results:
        ours = rank_results[index]["ours"]
        # DDP calls the hook only on the last micro-batch of an accumulated step
        assert ours["hook_calls"] == ours["steps"] > 0, "the no-communication DDP hook was not called on CPU"
        assert ours["forward_sync_buffers"] is False
        # diloco: one launch (pseudo-gradient and buffers) per period; streaming: one per fragment, plus the
        # buffers' small blocking average at the end of a period. The model fits in one bucket.
        launched = _launch_steps(case["args"], ours["steps"])
        separate_buffers = case["kind"] == "streaming_diloco" and case.get("batchnorm", False)
        h = case["args"]["sync_every"]
        expected = [len(q) + (1 if separate_buffers and (k + 1) % h == 0 else 0) for k, q in enumerate(launched)]
        assert ours["all_reduces"] == expected


def test_bytes_in_flight_are_one_fragment(exactness_results: list[list[dict[str, Any]]]) -> None:
    """CommMonitor: a streaming step sends one fragment (layer 0: 35 float64, layer 1: 18), never the whole model."""
    ours = exactness_results[0][NAMES.index("streaming-adamw-steplr")]["ours"]
    assert ours["bytes"] == [0, 35 * 8, 0, 18 * 8] * 2
    diloco = exactness_results[0][NAMES.index("diloco-nesterov")]["ours"]
    assert diloco["bytes"] == [0, 53 * 8] * 4
    fp16 = exactness_results[0][NAMES.index("streaming-fp16")]["ours"]
    assert fp16["bytes"] == [0, 35 * 2, 0, 18 * 2] * 2, "the pseudo-gradients go through the fp16 compression"


def test_accumulation_counts_optimizer_steps(exactness_results: list[list[dict[str, Any]]]) -> None:
    ours = exactness_results[0][NAMES.index("streaming-accumulate")]["ours"]
    assert ours["steps"] == 2 * 8 // 2 and len(ours["local"]) == ours["steps"]


def test_streaming_p1_no_delay_no_mix_is_diloco_and_diloco_lr1_mu0_is_local_sgd() -> None:
    args = {"sync_every": 2, **OUTER}
    pairs = [
        (
            _case("s", "streaming_diloco", {**args, "num_fragments": 1, "delay": 0, "alpha": 0.0}, batchnorm=True),
            _case("d", "diloco", args, batchnorm=True),
        ),
        (
            _case("d", "diloco", {"sync_every": 2, "outer_lr": 1.0, "outer_momentum": 0.0}, batchnorm=True),
            _case("l", "local_sgd", {"sync_every": 2}, batchnorm=True),
        ),
    ]
    results = run_ranks("tests.distributed.diloco_worker:same_as", cases=pairs)
    for res in results:
        streaming, diloco = res[0]["a"], res[0]["b"]
        for a, b in zip([*streaming["local"], streaming["final"]], [*diloco["local"], diloco["final"]], strict=True):
            assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True)), "streaming P=1 must be diloco bit for bit"
        ours, local_sgd = res[1]["a"], res[1]["b"]
        worst = max(
            max_diff(a, b, "diloco vs local_sgd")
            for a, b in zip([*ours["local"], ours["final"]], [*local_sgd["local"], local_sgd["final"]], strict=True)
        )
        # theta - mean(theta - x) rounds differently from mean(x): equal up to float64 rounding
        assert worst <= TOL, f"diloco(outer_lr=1, momentum=0) differs from local_sgd by {worst:.3e}"
        print(f"diloco(outer_lr=1, outer_momentum=0) vs local_sgd: max abs diff {worst:.2e}")


RESUME_CASES = [
    # H=4, P=2, delay 1: fragment 0 is launched after step 5 and applied at step 6; the checkpoint at
    # global_step 6 is mid-period (6 % 4 = 2), mid-epoch (4 steps per epoch), with that fragment in flight.
    {
        "kind": "streaming_diloco",
        "opt": {**SGD_MOMENTUM, "step_lr": 3},
        "epochs": 3,
        "args": STREAM,
        "batchnorm": True,
        "resumable": True,  # a loader Lightning can resume mid-epoch
    },
    {
        "kind": "diloco",
        "opt": ADAMW_STEPLR,
        "epochs": 3,
        "args": {"sync_every": 4, **OUTER},
        "batchnorm": True,
        "resumable": True,
    },
]
SAVE_STEP = 6


def test_checkpoint_with_fragment_in_flight_resumes_the_same_trajectory(tmp_path: Any) -> None:
    results = run_ranks(
        "tests.distributed.diloco_worker:resume", cases=RESUME_CASES, tmp=str(tmp_path), save_step=SAVE_STEP
    )
    for i, case in enumerate(RESUME_CASES):
        worst = 0.0
        for rank, res in enumerate(results):
            straight, resumed = res[i]["straight"], res[i]["resumed"]
            # every step after the resume, and the end, equal the uninterrupted run's
            assert len(resumed["local"]) == len(straight["local"]) - SAVE_STEP
            for k, (a, b) in enumerate(zip(resumed["local"], straight["local"][SAVE_STEP:], strict=True)):
                worst = max(worst, assert_close_lists(a, b, f"{case['kind']} rank {rank} step {SAVE_STEP + k}"))
            worst = max(worst, assert_close_lists(resumed["final"], straight["final"], f"{case['kind']} final"))
        print(f"resume {case['kind']}: max abs diff vs uninterrupted {worst:.2e}")
        saved = results[0][i]["checkpoint"]
        state = saved["lightning_delayed"]
        assert state["strategy"] == case["kind"] and state["world_size"] == 2
        assert state["state"]["step"] == SAVE_STEP
        # the model's state_dict is theta (both ranks' checkpoint code computes it; rank 0 writes it)
        theta = results[0][i]["straight"]["theta"][SAVE_STEP - 1]
        params = [v for k, v in saved["state_dict"].items() if k.endswith(("weight", "bias"))]
        assert all(torch.equal(a, b) for a, b in zip(params, theta, strict=True))
        assert all(torch.equal(a, b) for a, b in zip(state["state"]["global_params"], theta, strict=True))
        locals_ = state["local_states"]
        assert len(locals_) == 2 and all("optimizer" in s and "tensors" in s for s in locals_)
        assert not all(torch.equal(a, b) for a, b in zip(locals_[0]["tensors"], locals_[1]["tensors"], strict=True))
        n_outer = case["args"].get("num_fragments", 1) if case["kind"] == "streaming_diloco" else 1
        assert len(state["state"]["outer_optimizers"]) == n_outer
    pending = results[0][0]["checkpoint"]["lightning_delayed"]["state"]["pending"]
    assert [(p["fragment"], p["launch_step"]) for p in pending] == [(0, 5)], "the fragment in flight is saved"


VALIDATION_CASES = [
    {"kind": "streaming_diloco", "opt": SGD_MOMENTUM, "epochs": 2, "args": STREAM, "batchnorm": True},
    {"kind": "diloco", "opt": SGD_MOMENTUM, "epochs": 2, "args": {"sync_every": 3, **OUTER}},
]


def test_validation_on_theta_leaves_trajectory_unchanged() -> None:
    results = run_ranks("tests.distributed.diloco_worker:validation", cases=VALIDATION_CASES)
    for i in range(len(VALIDATION_CASES)):
        for res in results:
            plain, validated = res[i]["plain"], res[i]["validated"]
            for a, b in zip(plain["final"], validated["final"], strict=True):
                assert torch.equal(a, b), "validation changed the training trajectory"
            assert len(validated["val_params"]) == 1 + 4  # sanity check + every 2 of 8 steps
        r0, r1 = results[0][i]["validated"], results[1][i]["validated"]
        for j, (seen0, seen1) in enumerate(zip(r0["val_params"][1:], r1["val_params"][1:], strict=True)):
            step = 2 * (j + 1) - 1
            assert all(torch.equal(a, b) for a, b in zip(seen0, r0["theta"][step], strict=True)), f"validation {j}"
            assert all(torch.equal(a, b) for a, b in zip(seen0, seen1, strict=True))
