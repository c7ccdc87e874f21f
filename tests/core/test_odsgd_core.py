"""OD-SGD's core rule in one process: N simulated replicas, a fake communicator, exact arithmetic."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from lightning_delayed.core.odsgd import ODSGD, ODSGDConfig, local_step_
from tests.helpers.fake_comm import FakeGradComm, FakeGroup


def make_replica(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 3), nn.Tanh(), nn.Linear(3, 2)).double()


def batch(rank: int, step: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(100 * rank + step)
    return torch.randn(5, 4, generator=gen, dtype=torch.float64), torch.randn(5, 2, generator=gen, dtype=torch.float64)


def grads_of(model: nn.Module, rank: int, step: int) -> list[torch.Tensor]:
    for p in model.parameters():
        p.grad = None
    x, y = batch(rank, step)
    nn.functional.mse_loss(model(x), y).backward()
    return [p.grad.clone() for p in model.parameters()]


def run_package(config: ODSGDConfig, world: int, steps: int, lr: float = 0.1) -> list[list[torch.Tensor]]:
    group = FakeGroup(world)
    models = [make_replica() for _ in range(world)]
    opts = [torch.optim.SGD(m.parameters(), lr=lr, momentum=0.9) for m in models]
    comms = [FakeGradComm(group, r) for r in range(world)]
    algos = [ODSGD(config, list(m.parameters()), o, c) for m, o, c in zip(models, opts, comms, strict=True)]
    for k in range(steps):
        per_rank = [grads_of(m, r, k) for r, m in enumerate(models)]
        # The hook launches mean(g) in every step; p.grad holds the own gradient (grads_of left it).
        for c, g in zip(comms, per_rank, strict=True):
            c.backward_done(g)
        for a, o in zip(algos, opts, strict=True):
            a.before_optimizer_step()
            o.step()
            a.after_optimizer_step()
    for a in algos:
        a.finish()
    return [[p.detach().clone() for p in m.parameters()] for m in models]


def run_by_hand(config: ODSGDConfig, world: int, steps: int, lr: float = 0.1) -> list[list[torch.Tensor]]:
    """docs/algorithms/odsgd.md, literally, with explicit copies; W and the optimizer live on a separate model."""
    models = [make_replica() for _ in range(world)]
    global_models = [make_replica() for _ in range(world)]
    opts = [torch.optim.SGD(g.parameters(), lr=lr, momentum=0.9) for g in global_models]
    pending = None
    for k in range(steps):
        per_rank = [grads_of(m, r, k) for r, m in enumerate(models)]
        mean = [sum(gs) / world for gs in zip(*per_rank, strict=True)]
        for r in range(world):
            big_w = list(global_models[r].parameters())
            if k < config.warmup_steps:
                for p, g in zip(big_w, mean, strict=True):
                    p.grad = g.clone()
                opts[r].step()
                with torch.no_grad():
                    for w, big in zip(models[r].parameters(), big_w, strict=True):
                        w.copy_(big)
                continue
            prev = [t.detach().clone() for t in big_w]
            if pending is not None:
                for p, g in zip(big_w, pending, strict=True):
                    p.grad = g.clone()
                opts[r].step()
            eta = config.local_lr if config.local_lr is not None else lr
            with torch.no_grad():
                for w, big, g, old in zip(models[r].parameters(), big_w, per_rank[r], prev, strict=True):
                    dc = config.dc_lambda * g * g * (big - old) if pending is not None else 0.0
                    w.copy_(big - eta * (g + dc))
        if k >= config.warmup_steps:
            pending = mean
    for r in range(world):
        if pending is not None:
            for p, g in zip(global_models[r].parameters(), pending, strict=True):
                p.grad = g.clone()
            opts[r].step()
    return [[p.detach().clone() for p in g.parameters()] for g in global_models]


@pytest.mark.parametrize(
    "config",
    [
        ODSGDConfig(),
        ODSGDConfig(warmup_steps=2),
        ODSGDConfig(dc_lambda=0.7, local_lr=0.05),
        ODSGDConfig(warmup_steps=6),
    ],
    ids=["plain", "warmup", "dc", "all-warmup"],
)
@pytest.mark.parametrize("world", [1, 3])
def test_rule_matches_hand_written_loop(config: ODSGDConfig, world: int) -> None:
    ours, ref = run_package(config, world, steps=6), run_by_hand(config, world, steps=6)
    for r in range(world):
        for a, b in zip(ours[r], ref[r], strict=True):
            torch.testing.assert_close(a, b, rtol=0, atol=1e-12)
        for a, b in zip(ours[r], ours[0], strict=True):
            assert torch.equal(a, b), "replicas differ after finish()"


def test_local_step_arithmetic() -> None:
    w = torch.zeros(2, dtype=torch.float64)
    big = torch.tensor([1.0, 2.0], dtype=torch.float64)
    prev = torch.tensor([0.5, 3.0], dtype=torch.float64)
    g = torch.tensor([2.0, -1.0], dtype=torch.float64)
    local_step_(w, big, g, lr=0.1, dc_lambda=0.5, prev_global_w=prev)
    # w = W - 0.1 * (g + 0.5 * g^2 * (W - W_prev)) = [1 - 0.1*(2 + 0.5*4*0.5), 2 - 0.1*(-1 + 0.5*1*(-1))]
    assert torch.equal(w, torch.tensor([1.0 - 0.1 * 3.0, 2.0 - 0.1 * -1.5], dtype=torch.float64))
    local_step_(w, big, g, lr=0.1, dc_lambda=0.5, prev_global_w=None)
    assert torch.equal(w, big - 0.1 * g)


def test_first_delayed_step_does_not_touch_W_or_optimizer() -> None:
    group = FakeGroup(1)
    model = make_replica()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    comm = FakeGradComm(group, 0)
    algo = ODSGD(ODSGDConfig(), list(model.parameters()), opt, comm)
    before = [p.detach().clone() for p in model.parameters()]
    g = grads_of(model, 0, 0)
    comm.backward_done(g)
    algo.before_optimizer_step()
    opt.step()
    algo.after_optimizer_step()
    assert opt.state == {} or all(len(s) == 0 for s in opt.state.values()), "the optimizer stepped at k = T0"
    assert algo.global_params is not None
    for big, b in zip(algo.global_params, before, strict=True):
        assert torch.equal(big, b)
    for p, b, gi in zip(model.parameters(), before, g, strict=True):
        assert torch.equal(p.detach(), b - 0.1 * gi)


def test_consensus_swaps_W_in_and_restores_w() -> None:
    # Zero steps: finish() without any state leaves the initial weights untouched.
    untouched = run_package(ODSGDConfig(), 1, steps=0)[0]
    initial = list(make_replica().parameters())
    assert len(untouched) == len(initial) == 4
    for a, b in zip(untouched, initial, strict=True):
        assert torch.equal(a, b.detach())
    group = FakeGroup(1)
    model = make_replica()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    comm = FakeGradComm(group, 0)
    algo = ODSGD(ODSGDConfig(), list(model.parameters()), opt, comm)
    for k in range(2):
        comm.backward_done(grads_of(model, 0, k))
        algo.before_optimizer_step()
        opt.step()
        algo.after_optimizer_step()
    local = [p.detach().clone() for p in model.parameters()]
    assert algo.global_params is not None
    with algo.consensus():
        for p, big in zip(model.parameters(), algo.global_params, strict=True):
            assert torch.equal(p.detach(), big)
    for p, w in zip(model.parameters(), local, strict=True):
        assert torch.equal(p.detach(), w)


def test_state_dict_round_trip_continues_identically() -> None:
    def make() -> tuple[nn.Module, torch.optim.Optimizer, FakeGradComm, ODSGD, FakeGroup]:
        group = FakeGroup(1)
        model = make_replica()
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        comm = FakeGradComm(group, 0)
        return model, opt, comm, ODSGD(ODSGDConfig(dc_lambda=0.3), list(model.parameters()), opt, comm), group

    def step(model: nn.Module, opt: torch.optim.Optimizer, comm: FakeGradComm, algo: ODSGD, k: int) -> None:
        comm.backward_done(grads_of(model, 0, k))
        algo.before_optimizer_step()
        opt.step()
        algo.after_optimizer_step()

    m1, o1, c1, a1, _ = make()
    for k in range(3):
        step(m1, o1, c1, a1, k)
    # deepcopy: Optimizer.load_state_dict would otherwise share the momentum tensors with o1
    state, local, opt_state = a1.state_dict(), a1.local_state_dict(), copy.deepcopy(o1.state_dict())
    m2, o2, c2, a2, _ = make()
    o2.load_state_dict(opt_state)
    a2.load_state_dict(state, local)
    assert a2.step == 3 and a2.delayed
    for k in range(3, 6):
        step(m1, o1, c1, a1, k)
        step(m2, o2, c2, a2, k)
    a1.finish()
    a2.finish()
    for p, q in zip(m1.parameters(), m2.parameters(), strict=True):
        assert torch.equal(p, q)


def test_W_prev_is_not_checkpointed_and_an_old_one_is_never_read() -> None:
    """W_prev is rewritten before every read, so it is not in the checkpoint; an old checkpoint's is ignored."""

    def make() -> tuple[nn.Module, torch.optim.Optimizer, FakeGradComm, ODSGD]:
        model = make_replica()
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        comm = FakeGradComm(FakeGroup(1), 0)
        return model, opt, comm, ODSGD(ODSGDConfig(dc_lambda=0.7), list(model.parameters()), opt, comm)

    def step(model: nn.Module, opt: torch.optim.Optimizer, comm: FakeGradComm, algo: ODSGD, k: int) -> None:
        comm.backward_done(grads_of(model, 0, k))
        algo.before_optimizer_step()
        opt.step()
        algo.after_optimizer_step()

    m1, o1, c1, a1 = make()
    for k in range(3):
        step(m1, o1, c1, a1, k)
    assert a1.prev_global_params is not None  # dc_lambda > 0 and the global update ran: W_prev exists
    state, local, opt_state = a1.state_dict(), a1.local_state_dict(), copy.deepcopy(o1.state_dict())
    assert "prev_global_params" not in state
    # A checkpoint written before W_prev was dropped, holding a W_prev that would poison the DC term if read.
    old_format = {**state, "prev_global_params": [torch.full_like(p, float("nan")) for p in m1.parameters()]}
    m2, o2, c2, a2 = make()
    o2.load_state_dict(opt_state)
    a2.load_state_dict(old_format, local)
    for k in range(3, 6):
        step(m1, o1, c1, a1, k)
        step(m2, o2, c2, a2, k)
    a1.finish()
    a2.finish()
    for p, q in zip(m1.parameters(), m2.parameters(), strict=True):
        assert torch.equal(p, q)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"local_lr": 0.0}, r"local_lr .* got 0\.0"),
        ({"local_lr": -1}, r"local_lr .* got -1"),
        ({"dc_lambda": -0.1}, r"dc_lambda must be a number >= 0 .* got -0\.1"),
        ({"warmup_steps": -1}, r"warmup_steps must be an integer >= 0, got -1"),
        ({"warmup_steps": 2.5}, r"warmup_steps must be an integer >= 0, got 2\.5"),
        ({"warmup_steps": True}, r"warmup_steps must be an integer >= 0, got True"),
    ],
)
def test_config_refuses_bad_values(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        ODSGDConfig(**kwargs)


def test_config_refuses_a_learning_rate_that_is_not_a_number() -> None:
    with pytest.raises(TypeError, match=r"local_lr .* got 'fast' of type str"):
        ODSGDConfig(local_lr="fast")  # type: ignore[arg-type]


def test_missing_launch_is_a_clear_error() -> None:
    model = make_replica()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    algo = ODSGD(ODSGDConfig(), list(model.parameters()), opt, FakeGradComm(FakeGroup(1), 0))
    grads_of(model, 0, 0)  # every parameter has a gradient, yet nothing was launched
    with pytest.raises(RuntimeError, match=r"no gradient average launched .* communication hook is not attached"):
        algo.before_optimizer_step()


def test_missing_launch_with_a_parameter_without_gradient_names_unused_parameters() -> None:
    model = make_replica()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    algo = ODSGD(ODSGDConfig(), list(model.parameters()), opt, FakeGradComm(FakeGroup(1), 0))
    grads_of(model, 0, 0)
    model[2].bias.grad = None  # as DDP leaves a parameter the loss did not use
    with pytest.raises(RuntimeError) as error:
        algo.before_optimizer_step()
    message = str(error.value)
    assert "positions [3] (shapes [(2,)])" in message
    assert "not used to compute the loss" in message
    assert "find_unused_parameters=True" in message and "remove the unused parameters" in message
