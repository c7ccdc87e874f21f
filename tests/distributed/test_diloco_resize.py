"""DiLoCo and Streaming DiLoCo resumed on another number of real gloo ranks (3 -> 2 and 2 -> 3).

The rule (docs/algorithms/diloco.md, "another number of ranks"): theta (every
fragment) and every outer optimizer's state are kept as saved; every rank starts with x = theta;
new rank r' takes the inner optimizer state of saved rank r' mod N; fragments in flight are
dropped; the step counter continues. The first step after the resume is a DiLoCo sync, checked
against the rule written out by hand (inner SGD with momentum, outer Nesterov SGD).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from tests.helpers.launch import run_ranks

OPT = {"kind": "sgd", "lr": 0.05, "momentum": 0.9}
OUTER = {"outer_lr": 0.7, "outer_momentum": 0.9}
CASES: list[dict[str, Any]] = [
    # Saved after step 7 of H = 4: three local steps since the sync at k = 3; k = 7 (the first step
    # of the resumed run) ends a period.
    {"name": "diloco", "kind": "diloco", "args": {"sync_every": 4, **OUTER}, "opt": OPT, "save_step": 7},
    # Saved after step 6: fragment 0, launched after step 5 (delay 1), is in flight.
    {
        "name": "streaming_diloco",
        "kind": "streaming_diloco",
        "args": {"sync_every": 4, "num_fragments": 2, "delay": 1, **OUTER},
        "opt": OPT,
        "save_step": 6,
    },
]
MORE_STEPS = 3


@pytest.fixture(scope="module", params=[(3, 2), (2, 3)], ids=["3->2", "2->3"])
def resized(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    old, new = request.param
    tmp = tmp_path_factory.mktemp(f"diloco_resize_{old}_{new}")
    run_ranks("tests.distributed.resume_worker:write", world_size=old, cases=CASES, tmp=str(tmp))
    saved = {c["name"]: torch.load(Path(tmp) / f"{c['name']}.ckpt", weights_only=True) for c in CASES}
    out = run_ranks(
        "tests.distributed.diloco_resize_worker:resume",
        world_size=new,
        cases=CASES,
        tmp=str(tmp),
        more_steps=MORE_STEPS,
    )
    return {"old": old, "new": new, "saved": saved, "ranks": out}


def _equal(a: list[torch.Tensor], b: list[torch.Tensor], what: str) -> None:
    assert len(a) == len(b), what
    for i, (x, y) in enumerate(zip(a, b, strict=True)):
        assert torch.equal(x, y), f"{what}: tensor {i} differs by {(x - y).abs().max().item():.3e}"


@pytest.mark.timeout(400)
@pytest.mark.parametrize("index", range(len(CASES)), ids=[c["name"] for c in CASES])
def test_resized_run_starts_from_the_rule(resized: dict[str, Any], index: int) -> None:
    case = CASES[index]
    own = resized["saved"][case["name"]]["lightning_delayed"]
    assert own["world_size"] == resized["old"]
    theta = own["state"]["global_params"]
    if case["kind"] == "streaming_diloco":
        assert len(own["state"]["pending"]) == 1, "the case must save with a fragment in flight"
    locals_ = own["local_states"]
    assert not torch.equal(locals_[0]["tensors"][0], theta[0]), "saved mid-period: x differs from theta"
    for rank, result in enumerate(r[index] for r in resized["ranks"]):
        what = f"{case['name']} {resized['old']}->{resized['new']}, rank {rank}"
        start, record = result["start"], result["record"]
        assert start["step"] == case["save_step"], what
        n = len(theta)
        _equal(start["state"][:n], theta, f"{what}: x must be theta")
        _equal(record["theta"], theta, f"{what}: theta")
        assert record["pending"] == 0, f"{what}: the fragment in flight must be dropped"
        for q, (got, want) in enumerate(zip(record["outer"], own["state"]["outer_optimizers"], strict=True)):
            assert got["state"].keys() == want["state"].keys() and got["state"], f"{what}: outer {q}"
            for key in got["state"]:
                _equal([got["state"][key]["momentum_buffer"]], [want["state"][key]["momentum_buffer"]], what)
        inner = locals_[rank % resized["old"]]["optimizer"]["state"]
        for key, entry in start["optimizer"]["state"].items():
            _equal([entry["momentum_buffer"]], [inner[key]["momentum_buffer"]], f"{what}: inner state {key}")
        assert result["steps"] == case["save_step"] + MORE_STEPS


@pytest.mark.timeout(400)
def test_first_sync_after_the_resize_follows_the_rule(resized: dict[str, Any]) -> None:
    """DiLoCo's step k = 7 from x = theta with each rank's inherited momentum, then the kept outer momentum."""
    index = 0
    own = resized["saved"]["diloco"]["lightning_delayed"]
    theta = own["state"]["global_params"]
    outer = own["state"]["outer_optimizers"][0]["state"]
    ranks = [r[index] for r in resized["ranks"]]
    lr, mu = OPT["lr"], OPT["momentum"]
    x_new = []
    for rank, result in enumerate(ranks):
        inner = own["local_states"][rank % resized["old"]]["optimizer"]["state"]
        x_new.append(
            [
                t - lr * (mu * inner[i]["momentum_buffer"] + g)
                for i, (t, g) in enumerate(zip(theta, result["grads"], strict=True))
            ]
        )
    expected = []
    for i, t in enumerate(theta):
        delta = sum((t - x[i] for x in x_new), torch.zeros_like(t)) / len(x_new)
        velocity = OUTER["outer_momentum"] * outer[i]["momentum_buffer"] + delta
        expected.append(t - OUTER["outer_lr"] * (delta + OUTER["outer_momentum"] * velocity))
    for rank, result in enumerate(ranks):
        got = result["after"][0][: len(theta)]
        for i, (g, e) in enumerate(zip(got, expected, strict=True)):
            err = (g - e).abs().max().item()
            assert err <= 1e-12, f"rank {rank}, parameter {i}: theta after the first sync differs by {err:.3e}"
