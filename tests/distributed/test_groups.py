"""Worker groups on real gloo ranks: 4 ranks as 2 workers x 2 against the plain-loop reference.

The reference steps each rank on its worker's mean gradient (the mean over its 2 ranks' batches)
and averages over the workers by the algorithm's rule, blocking, in float64
(tests/distributed/groups_worker.py).
"""

from __future__ import annotations

from typing import Any

import pytest
import torch

from tests.helpers.launch import run_ranks

TOL = 1e-10
OPT = {"kind": "sgd", "lr": 0.05, "momentum": 0.9, "wd": 1e-3}
G = 2


def _case(kind: str, args: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"kind": kind, "opt": OPT, "epochs": 2, "args": args, "perturb": True, **extra}


CASES: list[dict[str, Any]] = [
    # validation on the consensus every epoch must leave the trajectory unchanged
    _case("local_sgd", {"sync_every": 2}, trainer={"limit_val_batches": 1}),
    _case("dasgd", {"sync_every": 2, "delay": 1}),
    _case("overlap_local_sgd", {"sync_every": 2, "outer_momentum": 0.7}),
    _case("diloco", {"sync_every": 2}),
    # BatchNorm: buffers follow the worker's first rank inside a worker, averaged between workers
    _case("dasgd", {"sync_every": 2, "delay": 2}, batchnorm=True),
    # fp16 on the cross-worker wire (checked for bit-identical workers only)
    _case("diloco", {"sync_every": 2}, compression="fp16"),
]
NAMES = [c["kind"] + ("-bn" if c.get("batchnorm") else "") + ("-fp16" if c.get("compression") else "") for c in CASES]
EXACT = [i for i, c in enumerate(CASES) if not c.get("compression")]


def assert_close(a: list[torch.Tensor], b: list[torch.Tensor], what: str) -> None:
    assert len(a) == len(b), what
    for i, (x, y) in enumerate(zip(a, b, strict=True)):
        assert x.dtype == y.dtype and x.shape == y.shape, f"{what}: tensor {i}"
        err = (x.double() - y.double()).abs().max().item()
        assert err <= TOL, f"{what}: tensor {i} differs by {err:.3e}"


@pytest.fixture(scope="module")
def results() -> list[list[dict[str, Any]]]:
    return run_ranks("tests.distributed.groups_worker:exactness", world_size=4, cases=CASES, group_size=G)


@pytest.mark.parametrize("index", EXACT, ids=[NAMES[i] for i in EXACT])
def test_matches_reference_every_step_and_at_the_end(results: list[list[dict[str, Any]]], index: int) -> None:
    for rank, per_rank in enumerate(results):
        ours, ref = per_rank[index]["ours"], per_rank[index]["reference"]
        assert len(ours["local"]) == len(ref["local"]) == 8, "optimizer steps"
        for k, (a, b) in enumerate(zip(ours["local"], ref["local"], strict=True)):
            assert_close(a, b, f"rank {rank} after step {k}")
        assert_close(ours["final"], ref["final"], f"rank {rank} at the end")
        assert not ours["groups_after_teardown"], "the worker groups are destroyed at teardown"


@pytest.mark.parametrize("index", range(len(CASES)), ids=NAMES)
def test_ranks_of_a_worker_are_bit_identical_and_workers_differ(
    results: list[list[dict[str, Any]]], index: int
) -> None:
    local = [per_rank[index]["ours"]["local"] for per_rank in results]
    for k in range(len(local[0])):
        for first, second in ((0, 1), (2, 3)):
            for a, b in zip(local[first][k], local[second][k], strict=True):
                assert torch.equal(a, b), f"ranks {first} and {second} differ after step {k}"
    # After the first step nothing was averaged yet: the two workers trained on different data.
    assert any(not torch.equal(a, b) for a, b in zip(local[0][0], local[2][0], strict=True))
    finals = [per_rank[index]["ours"]["final"] for per_rank in results]
    for rank in range(1, 4):
        assert all(torch.equal(a, b) for a, b in zip(finals[0], finals[rank], strict=True))


def test_validation_runs_on_the_consensus_of_the_workers(results: list[list[dict[str, Any]]]) -> None:
    vals = [per_rank[0]["ours"]["val_params"] for per_rank in results]
    assert len(vals[0]) == 2, "validated once per epoch"
    for rank in range(1, 4):
        for a, b in zip(vals[0], vals[rank], strict=True):
            assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True)), f"rank {rank} validated other weights"


def test_comm_monitor_counts_the_worker_all_reduce_and_one_shard_per_average(
    results: list[list[dict[str, Any]]],
) -> None:
    # diloco, sync_every=2, 53 float64 parameters (424 bytes). Every step: DDP's gradient all-reduce
    # over the worker (424). Every 2nd step also the pseudo-gradient: a 27-element shard across
    # workers (216) and its all-gather inside the worker (27 + 1 status elements, 224).
    index = NAMES.index("diloco")
    for rank, per_rank in enumerate(results):
        expected = [424 + (216 + 224 if (k + 1) % 2 == 0 else 0) for k in range(8)]
        assert per_rank[index]["ours"]["bytes"] == expected, f"rank {rank}"


NO_OUTER = {"outer_lr": 1.0, "outer_momentum": 0.0}
# What docs/scaling.md ("One worker of every rank") says G = N is, rule by rule.
ONE_WORKER: list[tuple[str, dict[str, Any], str]] = [
    ("local_sgd", {"sync_every": 2}, "bit for bit"),
    ("dasgd", {"sync_every": 2, "delay": 1}, "up to rounding"),
    ("cocodsgd", {"sync_every": 2}, "up to rounding"),
    ("diloco", {"sync_every": 2}, "not"),
    ("diloco", {"sync_every": 2, **NO_OUTER}, "up to rounding"),
    ("streaming_diloco", {"sync_every": 2}, "not"),
    ("streaming_diloco", {"sync_every": 2, **NO_OUTER, "delay": 0, "alpha": 0.0}, "up to rounding"),
    ("overlap_local_sgd", {"sync_every": 2}, "not"),
]


def test_one_worker_of_every_rank_is_what_the_docs_say() -> None:
    """G = N = 2 against ssgd on the same data, after every one of 8 steps."""
    cases = [_case(kind, args) for kind, args, _ in ONE_WORKER]
    out = run_ranks("tests.distributed.groups_worker:one_worker_of_every_rank", cases=cases)
    for rank, r in enumerate(out):
        for (kind, args, claim), grouped in zip(ONE_WORKER, r["grouped"], strict=True):
            assert len(grouped) == len(r["ssgd"]) == 8
            gaps = [
                max((x - y).abs().max().item() for x, y in zip(a, b, strict=True))
                for a, b in zip(grouped, r["ssgd"], strict=True)
            ]
            what = f"rank {rank}: {kind} {args} with G = N is {claim} ssgd; gaps per step {gaps}"
            if claim == "bit for bit":
                assert max(gaps) == 0.0, what
            elif claim == "up to rounding":
                assert max(gaps) <= 1e-12, what
            else:
                assert max(gaps) > 1e-3, what


def test_checkpoint_resumes_with_the_same_groups_and_refuses_others(tmp_path: Any) -> None:
    case = _case("dasgd", {"sync_every": 2, "delay": 2})
    out = run_ranks(
        "tests.distributed.groups_worker:resume", world_size=4, case=case, group_size=G, tmp=str(tmp_path), save_step=4
    )
    for rank, r in enumerate(out):
        assert r["saved_group_size"] == G
        assert_close(r["resumed"], r["straight"], f"rank {rank} resumed")
        assert r["refusal"] is not None, f"rank {rank} resumed with group_size=1 from a group_size=2 checkpoint"
        assert "group_size=2" in r["refusal"] and "group_size=1" in r["refusal"], r["refusal"]
