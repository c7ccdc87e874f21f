"""SASGD's server rule in one process: scripted pushes with known versions against hand-computed θ."""

from __future__ import annotations

import pytest
import torch

from lightning_delayed.comm.buckets import NonFiniteReductionError
from lightning_delayed.comm.parameter_server import WorkerLostError
from lightning_delayed.core.sasgd import SASGDConfig
from lightning_delayed.core.sasgd_server import ParameterServer, ServerScheduler, server_optimizer, server_scheduler

T = torch.float64


def vec(*xs: float) -> torch.Tensor:
    return torch.tensor(xs, dtype=T)


def make_server(
    world: int, softsync: int | None = None, aware: bool = True, lr: float = 0.1, momentum: float = 0.0, **kw
) -> ParameterServer:
    theta = [vec(1.0, -2.0, 0.5), vec(3.0)]
    opt = torch.optim.SGD(theta, lr=lr, momentum=momentum)
    return ParameterServer(SASGDConfig(softsync=softsync, staleness_aware=aware), theta, opt, world, **kw)


G = [
    [vec(0.3, -0.1, 0.2), vec(1.0)],
    [vec(-0.5, 0.4, 0.1), vec(-2.0)],
    [vec(0.7, 0.7, -0.3), vec(0.5)],
    [vec(0.2, -0.9, 0.6), vec(4.0)],
    [vec(-0.1, 0.05, 0.8), vec(-1.5)],
    [vec(0.9, 0.3, -0.2), vec(2.5)],
]


def test_fully_async_staleness_aware_by_hand() -> None:
    """N=2, n=2 (c=1): an update per gradient, each divided by max(sigma, 1)."""
    s = make_server(world=2)
    t0, t1 = vec(1.0, -2.0, 0.5), vec(3.0)
    # (rank, gradient, version it was computed at) -> expected sigma
    script = [(0, G[0], 0, 0), (1, G[1], 0, 1), (0, G[2], 1, 1), (1, G[3], 0, 3), (0, G[4], 2, 2)]
    for rank, g, j, sigma in script:
        rec = s.push(rank, g, j)
        assert rec.staleness == sigma
        assert rec.scale == 1.0 / max(sigma, 1)
        assert rec.applied
        d = max(sigma, 1)
        t0 = t0 - 0.1 * (g[0] / d)
        t1 = t1 - 0.1 * (g[1] / d)
        torch.testing.assert_close(s.theta[0], t0, rtol=0, atol=1e-15)
        torch.testing.assert_close(s.theta[1], t1, rtol=0, atol=1e-15)
    assert s.version == 5
    assert s.pushes_by_rank == [3, 2]
    assert dict(s.staleness_counts) == {0: 1, 1: 2, 3: 1, 2: 1}
    assert s.staleness_summary() == {"mean": 7 / 5, "max": 3.0, "count": 5.0}


def test_plain_asgd_does_not_scale() -> None:
    s = make_server(world=2, aware=False)
    s.push(0, G[0], 0)
    s.push(0, G[1], 1)
    rec = s.push(1, G[2], 0)  # sigma = 2, still applied at full weight
    assert rec.staleness == 2 and rec.scale == 1.0
    expected = vec(1.0, -2.0, 0.5) - 0.1 * G[0][0] - 0.1 * G[1][0] - 0.1 * G[2][0]
    torch.testing.assert_close(s.theta[0], expected, rtol=0, atol=1e-15)


@pytest.mark.parametrize(("world", "softsync", "c"), [(2, 1, 2), (4, 2, 2), (4, 1, 4), (3, 2, 1), (4, 4, 1)])
def test_softsync_updates_once_per_c_gradients(world: int, softsync: int, c: int) -> None:
    s = make_server(world=world, softsync=softsync)
    assert s.c == c
    theta = vec(1.0, -2.0, 0.5)
    acc = torch.zeros(3, dtype=T)
    version = 0
    for k in range(6):
        rank, j = k % world, max(0, version - (k % 2))  # some gradients one version old
        rec = s.push(rank, G[k], j)
        sigma = version - j
        acc = acc + G[k][0] / max(sigma, 1)
        assert rec.staleness == sigma
        if (k + 1) % c == 0:
            theta = theta - 0.1 * (acc / c)
            acc = torch.zeros(3, dtype=T)
            version += 1
            assert rec.applied
        else:
            assert not rec.applied
        assert s.version == version
        torch.testing.assert_close(s.theta[0], theta, rtol=0, atol=1e-15)


def test_users_momentum_optimizer_steps_on_the_server() -> None:
    s = make_server(world=2, momentum=0.9)
    theta, buf = vec(1.0, -2.0, 0.5), None
    for k, (j, sigma) in enumerate([(0, 0), (0, 1), (1, 1), (3, 0)]):
        s.push(k % 2, G[k], j)
        g = G[k][0] / max(sigma, 1)
        buf = g.clone() if buf is None else 0.9 * buf + g
        theta = theta - 0.1 * buf
        torch.testing.assert_close(s.theta[0], theta, rtol=0, atol=1e-14)


def test_lr_schedule_runs_on_server_updates_and_data_passes() -> None:
    theta = [vec(1.0, 2.0)]
    user_params = [vec(1.0, 2.0).requires_grad_()]
    user_opt = torch.optim.SGD(user_params, lr=0.4)
    step_sched = torch.optim.lr_scheduler.StepLR(user_opt, step_size=2, gamma=0.5)
    rebuilt = server_optimizer(user_opt, user_params, theta)
    assert rebuilt.param_groups[0]["params"][0] is theta[0]
    sched = server_scheduler(step_sched, user_opt, rebuilt)
    assert sched.optimizer is rebuilt
    s = ParameterServer(SASGDConfig(), theta, rebuilt, 2, [ServerScheduler(sched, "step", 1)])
    g = [vec(1.0, 1.0)]
    lrs = []
    for k in range(5):
        s.push(0, g, k)
        lrs.append(s.lrs()[0])
    assert lrs == [0.4, 0.2, 0.2, 0.1, 0.1]
    assert user_opt.param_groups[0]["lr"] == 0.4  # the worker's copy is untouched
    # lr in effect at updates 1..5: 0.4, 0.4, 0.2, 0.2, 0.1
    torch.testing.assert_close(s.theta[0], vec(1.0, 2.0) - (0.4 + 0.4 + 0.2 + 0.2 + 0.1), rtol=0, atol=1e-12)

    epoch_theta = [vec(0.0)]
    epoch_user = [vec(0.0).requires_grad_()]
    eopt = torch.optim.SGD(epoch_user, lr=1.0)
    esched = torch.optim.lr_scheduler.StepLR(eopt, step_size=1, gamma=0.1)
    erebuilt = server_optimizer(eopt, epoch_user, epoch_theta)
    es = ParameterServer(
        SASGDConfig(), epoch_theta, erebuilt, 2, [ServerScheduler(server_scheduler(esched, eopt, erebuilt), "epoch", 1)]
    )
    es.epoch_done(0)
    es.epoch_done(0)  # the fast worker's two epochs are one data pass of N=2 worker-epochs
    assert es.lrs() == [pytest.approx(0.1)]
    es.epoch_done(1)
    assert es.lrs() == [pytest.approx(0.1)]
    es.epoch_done(1)
    assert es.lrs() == [pytest.approx(0.01)]


def test_server_optimizer_copies_hyperparameters_and_state() -> None:
    params = [torch.randn(3, dtype=T, requires_grad=True), torch.randn(2, dtype=T, requires_grad=True)]
    opt = torch.optim.Adam([{"params": [params[0]], "lr": 0.01}, {"params": [params[1]], "lr": 0.5}], betas=(0.8, 0.9))
    for p in params:
        p.grad = torch.ones_like(p)
    opt.step()
    theta = [p.detach().clone() for p in params]
    rebuilt = server_optimizer(opt, params, theta)
    assert type(rebuilt) is torch.optim.Adam
    assert [g["lr"] for g in rebuilt.param_groups] == [0.01, 0.5]
    assert rebuilt.param_groups[0]["betas"] == (0.8, 0.9)
    torch.testing.assert_close(rebuilt.state[theta[0]]["exp_avg"], opt.state[params[0]]["exp_avg"])
    assert rebuilt.state[theta[0]]["exp_avg"].data_ptr() != opt.state[params[0]]["exp_avg"].data_ptr()

    stranger = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
    with pytest.raises(ValueError, match="not parameters of the module"):
        server_optimizer(stranger, params, theta)


def test_state_dict_round_trip_continues_identically() -> None:
    a = make_server(world=2, softsync=1, momentum=0.9)
    for k, j in enumerate([0, 0, 1, 0, 2]):
        a.push(k % 2, G[k], j)
    assert a.version == 2 and a._acc_count == 1  # one gradient waiting in the accumulator
    b = make_server(world=2, softsync=1, momentum=0.9)
    b.load_state_dict(a.state_dict())
    for s in (a, b):
        s.push(1, G[5], 2)
        s.push(0, G[0], 3)
    assert a.version == b.version == 3
    for x, y in zip(a.theta, b.theta, strict=True):
        assert torch.equal(x, y)
    assert a.staleness_counts == b.staleness_counts and a.pushes_by_rank == b.pushes_by_rank

    with pytest.raises(ValueError, match="same number of devices"):
        make_server(world=3).load_state_dict(a.state_dict())


def test_bad_pushes_and_arguments_are_refused() -> None:
    s = make_server(world=2)
    with pytest.raises(ValueError, match="version 1, but the server is at 0"):
        s.push(0, G[0], 1)
    with pytest.raises(ValueError, match="unknown worker rank 2"):
        s.push(2, G[0], 0)
    with pytest.raises(ValueError, match="pushed 1 gradients for 2 parameters"):
        s.push(0, G[0][:1], 0)
    with pytest.raises(NonFiniteReductionError, match="rank 1 pushed a gradient with NaN"):
        s.push(1, [vec(float("nan"), 0.0, 0.0), vec(0.0)], 0)
    assert s.version == 0 and s.pushes_by_rank == [0, 0]
    with pytest.raises(ValueError, match="softsync=3 exceeds the number of workers N=2"):
        make_server(world=2, softsync=3)
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="softsync must be an integer"):
            SASGDConfig(softsync=bad)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="staleness_aware must be True or False"):
        SASGDConfig(staleness_aware="yes")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="worker_timeout must be > 0"):
        SASGDConfig(worker_timeout=0)


def test_silent_worker_is_declared_lost_by_name() -> None:
    now = [0.0]
    theta = [vec(1.0)]
    s = ParameterServer(
        SASGDConfig(worker_timeout=10.0), theta, torch.optim.SGD(theta, lr=0.1), 3, clock=lambda: now[0]
    )
    now[0] = 8.0
    s.heartbeat(1)
    s.done(2)  # a finished worker is never "lost"
    now[0] = 12.0
    s.push(0, [vec(1.0)], 0)  # rank 1 was seen 4 s ago: fine
    now[0] = 18.5
    s.heartbeat(0)
    with pytest.raises(WorkerLostError, match="lost worker rank 1") as err:
        s.push(0, [vec(1.0)], 1)
    assert "rank 0 is stopping too" in str(err.value) and "worker_timeout=10" in str(err.value)
    with pytest.raises(WorkerLostError, match="lost worker rank 1"):
        s.wait_all_done(0, timeout=0.0)


def test_wait_all_done_returns_when_every_worker_is_done() -> None:
    theta = [vec(1.0)]
    s = ParameterServer(SASGDConfig(), theta, torch.optim.SGD(theta, lr=0.1), 2)
    s.done(0)
    assert s.wait_all_done(0, timeout=0.0) is False
    s.done(1)
    assert s.wait_all_done(0, timeout=0.0) is True
