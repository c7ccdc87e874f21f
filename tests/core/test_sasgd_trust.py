"""SASGD's server against what a peer may send it, frozen parameters, and a worker whose process ends."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from lightning_delayed.comm.buckets import NonFiniteReductionError
from lightning_delayed.comm.parameter_server import WorkerLostError
from lightning_delayed.core.sasgd import SASGDConfig
from lightning_delayed.core.sasgd_server import ParameterServer, server_optimizer

T = torch.float64


def vec(*xs: float) -> torch.Tensor:
    return torch.tensor(xs, dtype=T)


def make_server(world: int = 2, momentum: float = 0.9) -> ParameterServer:
    theta = [vec(1.0, -2.0, 0.5), vec(3.0)]
    return ParameterServer(SASGDConfig(), theta, torch.optim.SGD(theta, lr=0.1, momentum=momentum), world)


GOOD = [vec(0.3, -0.1, 0.2), vec(1.0)]


def snapshot(s: ParameterServer) -> dict[str, Any]:
    return s.state_dict()


def assert_same_state(a: dict[str, Any], b: dict[str, Any]) -> None:
    assert (a["version"], a["acc_count"], a["pushes_by_rank"], a["staleness_counts"]) == (
        b["version"],
        b["acc_count"],
        b["pushes_by_rank"],
        b["staleness_counts"],
    )
    for key in ("theta", "acc"):
        for x, y in zip(a[key], b[key], strict=True):
            assert torch.equal(x, y)
    for k, st in a["optimizer"]["state"].items():
        assert torch.equal(st["momentum_buffer"], b["optimizer"]["state"][k]["momentum_buffer"])


@pytest.mark.parametrize(
    ("rank", "grads", "version", "error", "match"),
    [
        # (1,) broadcasts against (3,): without the shape check it would be added to every element.
        (1, [vec(5.0), vec(1.0)], 1, ValueError, r"shape \(1,\) for parameter 0 of shape \(3,\)"),
        (1, [vec(1.0, 2.0, 3.0), vec(1.0, 2.0)], 1, ValueError, r"shape \(2,\) for parameter 1 of shape \(1,\)"),
        (1, [vec(1.0, 2.0, 3.0)], 1, ValueError, "pushed 1 gradients for 2 parameters"),
        (1, [torch.ones(3, dtype=torch.int64), vec(1.0)], 1, TypeError, "torch.int64 gradient for parameter 0"),
        (1, [torch.ones(3).to_sparse(), vec(1.0)], 1, TypeError, "torch.sparse_coo"),
        (1, "gradients", 1, TypeError, "pushed str; a push is a list of tensors"),
        (1, [[0.1, 0.2, 0.3], [1.0]], 1, TypeError, "a push is a list of tensors"),
        (1, GOOD, True, TypeError, "pushed version True"),
        (1, GOOD, "1", TypeError, "pushed version '1'"),
        (1, GOOD, -1, TypeError, "pushed version -1"),
        (1, GOOD, 2, ValueError, "version 2, but the server is at 1"),
        (5, GOOD, 1, ValueError, "unknown worker rank 5"),
        ("1", GOOD, 1, ValueError, "unknown worker rank 1"),
        (1, [vec(float("nan"), 0.0, 0.0), vec(0.0)], 1, NonFiniteReductionError, "rank 1 pushed a gradient with NaN"),
        (1, [vec(0.0, 0.0, 0.0), vec(float("inf"))], 1, NonFiniteReductionError, "NaN or Inf"),
    ],
)
def test_a_refused_push_leaves_no_trace_and_the_next_push_goes_on(
    rank: Any, grads: Any, version: Any, error: type, match: str
) -> None:
    s = make_server()
    s.push(0, GOOD, 0)  # momentum state and version 1: a refused push must touch neither
    before = snapshot(s)
    with pytest.raises(error, match=match):
        s.push(rank, grads, version)
    assert_same_state(snapshot(s), before)
    assert len(s.history) == 1
    # The server goes on: the same push done right is applied exactly as on a server that never saw the bad one.
    twin = make_server()
    twin.push(0, GOOD, 0)
    for server in (s, twin):
        server.push(1, [vec(0.1, 0.2, 0.3), vec(-1.0)], 1)
    assert_same_state(snapshot(s), snapshot(twin))


def test_frozen_parameters_in_the_optimizer_are_skipped_like_torch_does() -> None:
    """``SGD(module.parameters())`` with a frozen layer: the server steps exactly what torch steps."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Linear(3, 2)).double()
    for p in net[0].parameters():
        p.requires_grad_(False)
    ref = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Linear(3, 2)).double()
    ref.load_state_dict(net.state_dict())
    for p in ref[0].parameters():
        p.requires_grad_(False)
    make_opt = lambda m: torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9, weight_decay=0.01)  # noqa: E731
    opt, ref_opt = make_opt(net), make_opt(ref)
    trainable = [p for p in net.parameters() if p.requires_grad]
    theta = [p.detach().clone() for p in trainable]
    server = ParameterServer(SASGDConfig(), theta, server_optimizer(opt, trainable, theta), world_size=1)
    assert [len(g["params"]) for g in server.optimizer.param_groups] == [4]  # the user's layout, frozen included

    x = torch.randn(5, 4, dtype=T)
    for _ in range(3):
        ref_opt.zero_grad()
        ref(x).square().sum().backward()
        ref_opt.step()
        net.zero_grad()
        for p, t in zip(trainable, theta, strict=True):
            p.data.copy_(t)
        net(x).square().sum().backward()
        server.push(0, [p.grad for p in trainable], server.version)
    for t, p in zip(theta, [p for p in ref.parameters() if p.requires_grad], strict=True):
        torch.testing.assert_close(t, p, rtol=0, atol=1e-15)
    for p, q in zip(net[0].parameters(), ref[0].parameters(), strict=True):
        assert torch.equal(p, q)  # the frozen layer never moved


def test_a_foreign_trainable_parameter_is_still_refused() -> None:
    params = [torch.zeros(2, dtype=T, requires_grad=True)]
    stranger = torch.optim.SGD([params[0], torch.zeros(3, requires_grad=True)], lr=0.1)
    with pytest.raises(ValueError, match=r"1 trainable parameter\(s\) \(shapes \[\(3,\)\]\) that are not parameters"):
        server_optimizer(stranger, params, [p.detach().clone() for p in params])


def test_a_closed_connection_loses_the_worker_at_once_and_says_why() -> None:
    now = [0.0]
    theta = [vec(1.0)]
    s = ParameterServer(
        SASGDConfig(worker_timeout=60.0), theta, torch.optim.SGD(theta, lr=0.1), 3, clock=lambda: now[0]
    )
    s.done(2)
    s.connection_lost(2, "its connection closed (eof)")  # a finished worker leaving is no loss
    s.push(0, [vec(1.0)], 0)
    now[0] = 0.5  # far inside worker_timeout
    s.connection_lost(1, "its connection closed (eof): its process exited or was killed")
    with pytest.raises(WorkerLostError, match=r"lost worker rank 1 \(rank 0 is stopping too\): rank 1: its connection"):
        s.push(0, [vec(1.0)], 1)
    with pytest.raises(WorkerLostError, match="process exited or was killed"):
        s.wait_all_done(0, timeout=10.0)
