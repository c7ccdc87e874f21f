"""The averaging core across a checkpoint, in one process: LR changes, what is saved, other rank counts."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

from lightning_delayed.core.averaging import mean_optimizer_state
from lightning_delayed.core.dasgd import DaSGD, DaSGDConfig
from lightning_delayed.core.local_sgd import LocalSGD, LocalSGDConfig
from lightning_delayed.core.overlap_local_sgd import OverlapLocalSGD, OverlapLocalSGDConfig
from tests.core.test_averaging_core import WeightedFakeComm
from tests.helpers.fake_comm import FakeGroup


def _replicas(world: int, momentum: float = 0.0) -> tuple[list[list[Tensor]], list[torch.optim.SGD]]:
    xs = [[torch.zeros(3, dtype=torch.float64, requires_grad=True)] for _ in range(world)]
    return xs, [torch.optim.SGD(x, lr=1.0, momentum=momentum) for x in xs]


def _step(xs: list[list[Tensor]], opts: list[torch.optim.SGD], k: int) -> None:
    for r, (x, o) in enumerate(zip(xs, opts, strict=True)):
        x[0].grad = torch.tensor([-(r + 1.0) * (k + 1), 0.5 * k, r - 1.0], dtype=torch.float64)
        o.step()


def test_overlap_momentum_uses_the_lr_of_the_step_it_runs_at() -> None:
    """beta > 0 divides by the current LR: change the LR at every step and follow the rule by hand."""
    alpha, beta, lrs = 0.3, 0.7, [1.0, 0.5, 0.25, 2.0, 0.125]
    group = FakeGroup(2)
    xs, opts = _replicas(2)
    cfg = OverlapLocalSGDConfig(sync_every=1, alpha=alpha, outer_momentum=beta)
    algos = [
        OverlapLocalSGD(cfg, x, o, WeightedFakeComm(group, r)) for r, (x, o) in enumerate(zip(xs, opts, strict=True))
    ]
    # the rule, by hand, on plain tensors
    ref_x = [torch.zeros(3, dtype=torch.float64) for _ in range(2)]
    ref_v = [torch.zeros(3, dtype=torch.float64) for _ in range(2)]
    ref_pending: Tensor | None = None
    for k, lr in enumerate(lrs):
        for o in opts:
            o.param_groups[0]["lr"] = lr
        _step(xs, opts, k)
        for a in algos:
            a.after_optimizer_step()
        sends = []
        for r in range(2):
            ref_x[r] = ref_x[r] + lr * torch.tensor([(r + 1.0) * (k + 1), -0.5 * k, 1.0 - r], dtype=torch.float64)
            if ref_pending is None:
                sends.append(ref_x[r].clone())
                continue
            ref_x[r] = (1 - alpha) * ref_x[r] + alpha * ref_pending
            ref_v[r] = beta * ref_v[r] + (ref_pending - ref_x[r]) / lr
            sends.append(ref_pending - lr * ref_v[r])
        ref_pending = (sends[0] + sends[1]) / 2
        for r in range(2):
            torch.testing.assert_close(xs[r][0].detach(), ref_x[r], rtol=0, atol=1e-12)
    assert algos[0].momentum is not None
    torch.testing.assert_close(algos[0].momentum[0], ref_v[0], rtol=0, atol=1e-12)


def test_overlap_checkpoint_holds_no_anchor() -> None:
    """The anchor is read only in the call that replaces it by the pending average: it is not state."""
    group = FakeGroup(1)
    xs, opts = _replicas(1)
    algo = OverlapLocalSGD(
        OverlapLocalSGDConfig(sync_every=1, outer_momentum=0.7), xs[0], opts[0], WeightedFakeComm(group, 0)
    )
    for k in range(3):
        _step(xs, opts, k)
        algo.after_optimizer_step()
    assert algo.anchor is not None
    assert set(algo.state_dict()) == {"step", "pending_average"}
    # a checkpoint of an older version (with "anchor") still loads
    ys, new_opts = _replicas(1)
    restored = OverlapLocalSGD(algo.config, ys[0], new_opts[0], WeightedFakeComm(FakeGroup(1), 0))
    restored.load_state_dict({**algo.state_dict(), "anchor": [torch.ones(3)]}, algo.local_state_dict())
    assert restored.step == 3 and restored.pending is not None


def _run_two(make: object, steps: int, momentum: float = 0.9) -> tuple[list[object], list[list[Tensor]]]:
    group = FakeGroup(2)
    xs, opts = _replicas(2, momentum)
    comms = [WeightedFakeComm(group, r) for r in range(2)]
    algos = [make(x, o, c) for x, o, c in zip(xs, opts, comms, strict=True)]  # type: ignore[operator]
    for k in range(steps):
        _step(xs, opts, k)
        for r, a in enumerate(algos):
            if isinstance(a, DaSGD):
                a.add_samples(3 + 2 * r)
            a.after_optimizer_step()
    return algos, xs


@pytest.mark.parametrize("new_world", [1, 3])
@pytest.mark.parametrize("kind", ["local_sgd", "dasgd", "overlap_local_sgd"])
def test_resume_on_another_number_of_ranks_by_hand(kind: str, new_world: int) -> None:
    alpha = 0.3
    makers = {
        "local_sgd": lambda x, o, c: LocalSGD(LocalSGDConfig(sync_every=4), x, o, c),
        "dasgd": lambda x, o, c: DaSGD(DaSGDConfig(sync_every=2, delay=2, weighting="samples"), x, o, c),
        "overlap_local_sgd": lambda x, o, c: OverlapLocalSGD(
            OverlapLocalSGDConfig(sync_every=2, alpha=alpha, outer_momentum=0.7), x, o, c
        ),
    }
    old, _ = _run_two(makers[kind], steps=5 if kind != "local_sgd" else 3)
    state = old[0].state_dict()  # type: ignore[attr-defined]
    locals_ = [a.local_state_dict() for a in old]  # type: ignore[attr-defined]
    if kind != "local_sgd":
        assert state["pending_average"] is not None, "the case must have an average in flight"
    # the end-of-fit merge of each saved rank, then the mean
    merged = []
    for local in locals_:
        x = local["tensors"][0]
        if kind == "dasgd":
            x = state["pending_average"][0] + (x - local["snapshot"][0])
        elif kind == "overlap_local_sgd":
            x = (1 - alpha) * x + alpha * state["pending_average"][0]
        merged.append(x)
    expected_x = (merged[0] + merged[1]) / 2
    momenta = [local["optimizer"]["state"][0]["momentum_buffer"] for local in locals_]
    assert not torch.equal(momenta[0], momenta[1])

    group = FakeGroup(new_world)
    xs, opts = _replicas(new_world, momentum=0.9)
    new = [makers[kind](x, o, WeightedFakeComm(group, r)) for r, (x, o) in enumerate(zip(xs, opts, strict=True))]
    for r, a in enumerate(new):
        a.load_resized_state_dict(state, locals_, rank=r)
    for a, x, o in zip(new, xs, opts, strict=True):
        assert a.step == state["step"] and getattr(a, "pending", None) is None
        torch.testing.assert_close(x[0].detach(), expected_x, rtol=0, atol=1e-12)
        torch.testing.assert_close(o.state[x[0]]["momentum_buffer"], (momenta[0] + momenta[1]) / 2, rtol=0, atol=1e-12)
        if kind == "dasgd":
            counts = [int(local["samples_since_launch"]) for local in locals_]
            assert counts[0] != counts[1] and a.samples_since_launch == sum(counts) // 2
        if kind == "overlap_local_sgd":
            v = [local["momentum"][0] for local in locals_]
            assert a.momentum is not None
            torch.testing.assert_close(a.momentum[0], (v[0] + v[1]) / 2, rtol=0, atol=1e-12)


def test_mean_optimizer_state_averages_moments_and_keeps_counters() -> None:
    states = []
    for scale in (1.0, 3.0):
        p = torch.nn.Parameter(torch.zeros(2, dtype=torch.float64))
        opt = torch.optim.Adam([p], lr=0.1)
        for _ in range(2):
            p.grad = torch.tensor([scale, -scale], dtype=torch.float64)
            opt.step()
        states.append(opt.state_dict())
    mean = mean_optimizer_state(states)
    for name in ("exp_avg", "exp_avg_sq"):
        expected = (states[0]["state"][0][name] + states[1]["state"][0][name]) / 2
        torch.testing.assert_close(mean["state"][0][name], expected, rtol=0, atol=0)
    assert torch.equal(mean["state"][0]["step"], states[0]["state"][0]["step"])
    assert mean["param_groups"] == states[0]["param_groups"]
    assert mean["state"][0]["exp_avg"] is not states[0]["state"][0]["exp_avg"], "no aliasing of a saved state"
