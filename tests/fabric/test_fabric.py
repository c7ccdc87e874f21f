"""The Fabric glue on 2 real gloo ranks vs the plain-loop references of the Trainer strategies, to 1e-10."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from tests.helpers.launch import run_ranks

TOL = 1e-10
SGD_MOMENTUM = {"kind": "sgd", "lr": 0.05, "momentum": 0.9, "wd": 1e-3}

CASES: list[dict[str, Any]] = [
    {"name": "odsgd-by-name", "kind": "odsgd", "by_name": True, "opt": SGD_MOMENTUM, "epochs": 2},
    {
        "name": "odsgd-dc-warmup",
        "kind": "odsgd",
        "args": {"dc_lambda": 0.3, "warmup_steps": 2},
        "opt": SGD_MOMENTUM,
        "epochs": 2,
    },
    {"name": "dasgd", "kind": "dasgd", "args": {"sync_every": 2, "delay": 1}, "opt": SGD_MOMENTUM, "epochs": 2},
    {
        "name": "overlap_local_sgd",
        "kind": "overlap_local_sgd",
        "args": {"sync_every": 2, "outer_momentum": 0.7},
        "opt": SGD_MOMENTUM,
        "epochs": 2,
    },
    {"name": "diloco", "kind": "diloco", "args": {"sync_every": 3}, "opt": SGD_MOMENTUM, "epochs": 2},
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
    return run_ranks("tests.fabric.fabric_worker:exactness", cases=CASES)


@pytest.mark.parametrize("index", range(len(CASES)), ids=NAMES)
def test_matches_reference_every_step(exactness_results: list[list[dict[str, Any]]], index: int) -> None:
    for rank, rank_results in enumerate(exactness_results):
        ours, ref = rank_results[index]["ours"], rank_results[index]["reference"]
        assert len(ours["local"]) == len(ref["local"]) > 0, "number of optimizer steps"
        for k, (a, b) in enumerate(zip(ours["local"], ref["local"], strict=True)):
            assert_close_lists(a, b, f"rank {rank} weights after step {k}")
        assert_close_lists(ours["final"], ref["final"], f"rank {rank} after finish()")


def test_odsgd_consensus_is_the_global_weights(exactness_results: list[list[dict[str, Any]]]) -> None:
    """``consensus()`` puts OD-SGD's W in place and leaves the trajectory (checked above) untouched."""
    index = NAMES.index("odsgd-dc-warmup")
    for rank_results in exactness_results:
        ours, ref = rank_results[index]["ours"], rank_results[index]["reference"]
        for k, (c, w) in enumerate(zip(ours["consensus"], ref["global"], strict=True)):
            assert_close_lists(c, w if w is not None else ref["local"][k], f"consensus after step {k}")


def test_finish_leaves_the_same_model_on_every_rank(exactness_results: list[list[dict[str, Any]]]) -> None:
    for index in range(len(CASES)):
        assert_close_lists(
            exactness_results[0][index]["ours"]["final"],
            exactness_results[1][index]["ours"]["final"],
            f"{NAMES[index]}: rank 0 vs rank 1 after finish()",
        )


@pytest.mark.parametrize("kind", ["odsgd", "dasgd"])
def test_resume_continues_the_same_trajectory(tmp_path: Path, kind: str) -> None:
    case = next(c for c in CASES if c["kind"] == kind and not c.get("by_name"))
    results = run_ranks("tests.fabric.fabric_worker:resume", cases=[case], tmp=str(tmp_path), save_step=3)
    for rank, rank_results in enumerate(results):
        whole, resumed = rank_results[0]["whole"], rank_results[0]["resumed"]
        assert len(resumed["local"]) == len(whole["local"]) - 3 > 0
        for k, (a, b) in enumerate(zip(resumed["local"], whole["local"][3:], strict=True)):
            assert_close_lists(a, b, f"rank {rank} step {k + 3} resumed vs uninterrupted")
        assert_close_lists(resumed["final"], whole["final"], f"rank {rank} final")


def test_every_name_is_in_fabrics_registry() -> None:
    from lightning.fabric.strategies import STRATEGY_REGISTRY

    import lightning_delayed  # noqa: F401 (registers the names)
    from lightning_delayed.fabric import DelayedFabricStrategy

    for name in ("ssgd", "odsgd", "local_sgd", "dasgd", "cocodsgd", "overlap_local_sgd", "diloco", "streaming_diloco"):
        strategy = STRATEGY_REGISTRY.get(name)
        assert isinstance(strategy, DelayedFabricStrategy) and strategy.strategy_name == name
    assert "sasgd" not in STRATEGY_REGISTRY


@pytest.mark.parametrize(
    ("args", "error", "match"),
    [
        ({"algorithm": "sasgd"}, ValueError, "sasgd/asgd replace the training loop"),
        ({"algorithm": "dasgd", "sync_every": 0}, ValueError, "sync_every"),
        ({"algorithm": "cocodsgd", "weighting": "samples"}, ValueError, "weighting='samples'"),
        ({"algorithm": "odsgd", "compression": "int3"}, ValueError, "compression must be one of .*got 'int3'"),
        ({"algorithm": "diloco", "compression": "int8", "block_size": 0}, ValueError, "block_size must be an int >= 1"),
        ({"algorithm": "odsgd", "ddp_comm_hook": print}, ValueError, "ddp_comm_hook"),
        ({"algorithm": "dasgd", "sync_evry": 2}, TypeError, "unexpected keyword argument 'sync_evry'"),
    ],
)
def test_bad_arguments_are_refused_at_construction(args: dict[str, Any], error: type[Exception], match: str) -> None:
    from lightning_delayed.fabric import DelayedFabricStrategy

    with pytest.raises(error, match=match):
        DelayedFabricStrategy(**args)


def test_odsgd_refuses_a_loss_scaler() -> None:
    """As behind the Trainer: fp16 AMP's scale changes between steps, OD-SGD steps with last step's gradient."""
    import warnings

    from lightning.fabric.plugins.precision import MixedPrecision

    from lightning_delayed.fabric import DelayedFabricStrategy

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # GradScaler warns that CUDA is not available
        scaler = torch.amp.GradScaler("cuda")
    strategy = DelayedFabricStrategy("odsgd", precision=MixedPrecision("16-mixed", "cuda", scaler=scaler))
    with pytest.raises(ValueError, match="does not support precision='16-mixed'"):
        strategy.check_precision()
    DelayedFabricStrategy("odsgd").check_precision()  # 32-true: accepted


def test_resume_with_other_arguments_is_refused_on_every_rank(tmp_path: Path) -> None:
    case = next(c for c in CASES if c["kind"] == "dasgd")
    messages = run_ranks("tests.fabric.fabric_worker:resume_with_other_arguments", case=case, tmp=str(tmp_path))
    for message in messages:
        assert "other 'dasgd' arguments: sync_every=2 (checkpoint) vs sync_every=3 (this run)" in message


def test_averaging_family_sets_ddp_buffer_sync_without_the_deprecated_argument() -> None:
    # torch 2.13 deprecated DDP's broadcast_buffers: passing it printed a FutureWarning once per rank.
    kinds = ["local_sgd", "dasgd", "overlap_local_sgd", "diloco", "streaming_diloco"]
    for rank, result in enumerate(run_ranks("tests.fabric.fabric_worker:setup_warnings", kinds=kinds)):
        for kind in kinds:
            caught = result[kind]["warnings"]
            assert not [w for w in caught if "broadcast_buffers" in w], f"rank {rank}, {kind}: {caught}"
            assert result[kind]["forward_sync_buffers"] is False, f"rank {rank}, {kind}: DDP syncs buffers"


LOWBIT_CASES = [
    {
        "kind": "diloco",
        "args": {"sync_every": 3},
        "opt": SGD_MOMENTUM,
        "epochs": 2,
        "compression": "int8",
        "block_size": 16,
    },
    {
        "kind": "dasgd",
        "args": {"sync_every": 2, "delay": 1},
        "opt": SGD_MOMENTUM,
        "epochs": 2,
        "compression": "int4",
        "block_size": 8,
    },
]


def test_low_bit_behind_fabric_follows_the_rule_and_resumes(tmp_path: Path) -> None:
    """int8/int4 behind Fabric: the reference with the low-bit mean, and a resume that restores both residuals."""
    results = run_ranks("tests.fabric.fabric_worker:lowbit", cases=LOWBIT_CASES, tmp=str(tmp_path), save_step=4)
    for i, case in enumerate(LOWBIT_CASES):
        for rank, rank_results in enumerate(results):
            whole, resumed, ref = (rank_results[i][k] for k in ("whole", "resumed", "reference"))
            for k, (a, b) in enumerate(zip(whole["local"], ref["local"], strict=True)):
                assert_close_lists(a, b, f"{case['kind']} rank {rank} step {k} vs the reference")
            assert_close_lists(whole["final"], ref["final"], f"{case['kind']} rank {rank} final vs the reference")
            assert len(resumed["local"]) == len(whole["local"]) - 4 > 0
            for k, (a, b) in enumerate(zip(resumed["local"], whole["local"][4:], strict=True)):
                assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True)), f"{case['kind']} rank {rank} {k}"
        finals = [r[i]["whole"]["final"] for r in results]
        assert all(torch.equal(a, b) for a, b in zip(*finals, strict=True))
