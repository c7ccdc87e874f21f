"""Resuming on 2 real gloo ranks: mid-epoch, rank-local buffers, and on another number of ranks."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import torch

from tests.helpers.launch import run_ranks

SGD_MOMENTUM = {"kind": "sgd", "lr": 0.05, "momentum": 0.9, "wd": 1e-3}
N_PARAMS = 6  # Linear, BatchNorm1d, Linear: weight and bias each; then running_mean, running_var, count


def _assert_equal_lists(a: list[torch.Tensor], b: list[torch.Tensor], what: str, tol: float = 1e-12) -> None:
    assert len(a) == len(b), what
    for i, (x, y) in enumerate(zip(a, b, strict=True)):
        assert x.dtype == y.dtype and x.shape == y.shape, f"{what}: tensor {i} dtype/shape"
        err = (x.double() - y.double()).abs().max().item() if x.numel() else 0.0
        assert err <= tol, f"{what}: tensor {i} differs by {err:.3e}"


# Every case saves in the middle of an epoch and of a period, with BatchNorm statistics that stay
# on their rank (average_buffers=False) unless said otherwise.
MID_EPOCH_CASES: list[dict[str, Any]] = [
    # the case: local_sgd, tau=3, BatchNorm, checkpoint at step 8 (epoch of 5 batches)
    {
        "name": "local_sgd-bn-local",
        "kind": "local_sgd",
        "args": {"sync_every": 3, "average_buffers": False},
        "n_batches": 5,
        "save_step": 8,
    },
    {
        "name": "dasgd-bn-local",
        "kind": "dasgd",
        "args": {"sync_every": 4, "delay": 3, "average_buffers": False},
        "save_step": 6,
    },
    {
        "name": "cocodsgd-bn-local",
        "kind": "cocodsgd",
        "args": {"sync_every": 3, "average_buffers": False},
        "n_batches": 5,
        "save_step": 7,
    },
    {
        "name": "overlap-momentum-steplr-bn-local",
        "kind": "overlap_local_sgd",
        "args": {"sync_every": 2, "alpha": 0.3, "outer_momentum": 0.7, "average_buffers": False},
        "opt": {**SGD_MOMENTUM, "step_lr": 3},
        "save_step": 7,
    },
    {
        "name": "overlap-bn-averaged",
        "kind": "overlap_local_sgd",
        "args": {"sync_every": 3, "alpha": 0.8},
        "n_batches": 5,
        "save_step": 7,
    },
    # samples weighting with batch sizes that vary within a period: the count of samples since the
    # last launch is non-zero at the checkpoint and changes the next average's weights
    {
        "name": "dasgd-samples-varying-batches",
        "kind": "dasgd",
        "args": {"sync_every": 4, "delay": 2, "weighting": "samples"},
        "n_batches": 5,
        "sizes": [[2, 7, 3, 5, 4], [6, 1, 4, 8, 2]],
        "save_step": 6,
        "batchnorm": False,
    },
]
for _case in MID_EPOCH_CASES:
    _case.setdefault("opt", SGD_MOMENTUM)
    _case.setdefault("epochs", 3)
    _case.setdefault("batchnorm", True)


@pytest.fixture(scope="module")
def mid_epoch_results(tmp_path_factory: pytest.TempPathFactory) -> list[list[dict[str, Any]]]:
    tmp = str(tmp_path_factory.mktemp("mid-epoch"))
    return run_ranks("tests.distributed.resume_worker:resume", cases=MID_EPOCH_CASES, tmp=tmp)


@pytest.mark.parametrize("index", range(len(MID_EPOCH_CASES)), ids=[c["name"] for c in MID_EPOCH_CASES])
def test_mid_epoch_resume_equals_the_uninterrupted_run_on_every_rank(
    mid_epoch_results: list[list[dict[str, Any]]], index: int
) -> None:
    case = MID_EPOCH_CASES[index]
    save = case["save_step"]
    for rank, results in enumerate(mid_epoch_results):
        straight, resumed = results[index]["straight"], results[index]["resumed"]
        assert resumed["start"]["step"] == save
        assert straight["steps"] == resumed["steps"] == case["epochs"] * case.get("n_batches", 4)
        # parameters and every buffer (this rank's own statistics), after every step and at the end
        assert len(resumed["after"]) == len(straight["after"]) - save
        for k, (a, b) in enumerate(zip(resumed["after"], straight["after"][save:], strict=True)):
            _assert_equal_lists(a, b, f"rank {rank} step {save + k + 1}", tol=0.0)
        _assert_equal_lists(resumed["final"], straight["final"], f"rank {rank} final", tol=0.0)
    if case["batchnorm"] and not case["args"].get("average_buffers", True):
        # the case is worth something only if the ranks' statistics really differ at the checkpoint
        r0, r1 = (results[index]["straight"]["after"][save - 1] for results in mid_epoch_results)
        assert not torch.equal(r0[N_PARAMS], r1[N_PARAMS])


# ------------------------------------------------------------------ another number of ranks

RESIZE_CASES: list[dict[str, Any]] = [
    {"name": "ssgd", "kind": "ssgd", "args": {}},
    {"name": "odsgd", "kind": "odsgd", "args": {"dc_lambda": 0.1}},
    {"name": "local_sgd", "kind": "local_sgd", "args": {"sync_every": 4, "average_buffers": False}},
    {"name": "dasgd", "kind": "dasgd", "args": {"sync_every": 4, "delay": 3}},
    {
        "name": "cocodsgd",
        "kind": "cocodsgd",
        "args": {"sync_every": 4, "weighting": "samples"},
        "batch_sizes": [8, 4, 6],
    },
    {
        "name": "overlap_local_sgd",
        "kind": "overlap_local_sgd",
        "args": {"sync_every": 2, "alpha": 0.3, "outer_momentum": 0.7},
    },
    {"name": "sasgd", "kind": "sasgd", "args": {}, "batchnorm": False},
]
for _case in RESIZE_CASES:
    _case.update(opt=SGD_MOMENTUM, epochs=3, save_step=6)
    _case.setdefault("batchnorm", True)
MORE_STEPS = 3


@pytest.fixture(scope="module")
def resized(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    tmp = tmp_path_factory.mktemp("resize")
    run_ranks("tests.distributed.resume_worker:write", world_size=2, cases=RESIZE_CASES, tmp=str(tmp))
    saved = {c["name"]: torch.load(tmp / f"{c['name']}.ckpt", weights_only=True) for c in RESIZE_CASES}
    out: dict[str, Any] = {"saved": saved}
    for world in (1, 3):
        out[world] = run_ranks(
            "tests.distributed.resume_worker:resume_resized",
            world_size=world,
            cases=RESIZE_CASES,
            tmp=str(tmp),
            more_steps=MORE_STEPS,
        )
    return out


def _mean(per_rank: list[list[torch.Tensor]]) -> list[torch.Tensor]:
    return [sum(ts[1:], ts[0].clone()) / len(ts) for ts in zip(*per_rank, strict=True)]


def _expected_start(case: dict[str, Any], saved: dict[str, Any]) -> dict[str, list[torch.Tensor]]:
    """Parameters, buffers and momentum every new rank must start from, by the rules in docs/algorithms/."""
    own = saved["lightning_delayed"]
    state, locals_ = own["state"], own["local_states"]
    names = [n for n in saved["state_dict"] if not n.split(".")[-1].startswith(("running", "num_batches"))]
    # buffers that are not averaged with the model: the mean of the saved ranks' float ones, rank 0's count
    per_rank_buffers = [list(b.values()) for b in own["local_buffers"]]
    buffers = [*_mean([b[:-1] for b in per_rank_buffers]), per_rank_buffers[0][-1]]
    momenta = [saved["optimizer_states"][0]["state"][i]["momentum_buffer"] for i in range(len(names))]
    if case["kind"] == "ssgd":
        return {"params": [saved["state_dict"][n] for n in names], "buffers": buffers, "momenta": momenta}
    if case["kind"] == "odsgd":
        # W with the pending mean applied by the user's optimizer (the end-of-fit rule)
        w = [t.clone().requires_grad_(True) for t in state["global_params"]]
        opt = torch.optim.SGD(w, lr=0.05, momentum=0.9, weight_decay=1e-3)
        opt.load_state_dict(copy.deepcopy(saved["optimizer_states"][0]))
        for p, g in zip(w, state["pending_mean_grads"], strict=True):
            p.grad = g.clone()
        opt.step()
        return {
            "params": [p.detach() for p in w],
            "buffers": buffers,
            "momenta": [opt.state[p]["momentum_buffer"] for p in w],
        }
    merged = []
    for local in locals_:
        x = [t.clone() for t in local["tensors"]]
        if case["kind"] in ("dasgd", "cocodsgd"):  # x <- cbar + (x - s)
            x = [c + (xi - s) for c, xi, s in zip(state["pending_average"], x, local["snapshot"], strict=True)]
        elif case["kind"] == "overlap_local_sgd":  # x <- (1 - alpha) x + alpha z
            alpha = case["args"]["alpha"]
            x = [(1 - alpha) * xi + alpha * z for xi, z in zip(x, state["pending_average"], strict=True)]
        merged.append(x)
    x = _mean(merged)
    n = len(names)
    if case["args"].get("average_buffers", True):  # float buffers are part of x
        buffers = x[n:] + buffers[len(x) - n :]
    per_rank_momenta = [[local["optimizer"]["state"][i]["momentum_buffer"] for i in range(n)] for local in locals_]
    return {"params": x[:n], "buffers": buffers, "momenta": _mean(per_rank_momenta)}


@pytest.mark.parametrize("world", [1, 3])
@pytest.mark.parametrize("case", RESIZE_CASES[:-1], ids=[c["name"] for c in RESIZE_CASES[:-1]])
def test_resume_on_another_number_of_ranks_starts_from_the_consensus(
    resized: dict[str, Any], world: int, case: dict[str, Any]
) -> None:
    index = RESIZE_CASES.index(case)
    saved = resized["saved"][case["name"]]
    assert saved["lightning_delayed"]["world_size"] == 2
    expected = _expected_start(case, saved)
    n = len(expected["params"])
    results = [r[index] for r in resized[world]]
    for rank, res in enumerate(results):
        assert "error" not in res, res.get("error")
        start = res["start"]
        assert start["step"] == case["save_step"], "the step counter (and the schedule) continues"
        what = f"{case['name']} on {world} ranks, rank {rank}"
        _assert_equal_lists(start["state"][:n], expected["params"], f"{what}: parameters")
        _assert_equal_lists(start["state"][n:], expected["buffers"], f"{what}: buffers")
        got_momenta = [start["optimizer"]["state"][i]["momentum_buffer"] for i in range(n)]
        _assert_equal_lists(got_momenta, expected["momenta"], f"{what}: momentum")
        assert res["steps"] == case["save_step"] + MORE_STEPS, "training continued"
        assert res["warnings"] == ([] if rank else [res["warnings"][0]]) and len(results[0]["warnings"]) == 1
        assert "the trajectory differs from an uninterrupted run on 2 ranks" in results[0]["warnings"][0]
    for res in results[1:]:  # every new rank started from the same state and ends bit-identical
        for a, b in zip(res["start"]["state"], results[0]["start"]["state"], strict=True):
            assert torch.equal(a, b)
        for a, b in zip(res["final"][:n], results[0]["final"][:n], strict=True):
            assert torch.equal(a, b)


@pytest.mark.parametrize("world", [1, 3])
def test_sasgd_refuses_another_number_of_ranks_on_every_rank(resized: dict[str, Any], world: int) -> None:
    for res in (r[-1] for r in resized[world]):
        assert "the checkpoint was written by 2 ranks but this run has" in res["error"]
        assert "'sasgd' has no rule to redistribute its per-rank state" in res["error"]


def test_the_rules_change_the_state(resized: dict[str, Any]) -> None:
    """The cases above are worth something: pending averages and per-rank states really differ."""
    for name in ("dasgd", "cocodsgd", "overlap_local_sgd"):
        own = resized["saved"][name]["lightning_delayed"]
        assert own["state"]["pending_average"] is not None, name
        a, b = (local["tensors"][0] for local in own["local_states"])
        assert not torch.equal(a, b), name
    assert resized["saved"]["odsgd"]["lightning_delayed"]["state"]["pending_mean_grads"] is not None
