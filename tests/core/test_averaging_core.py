"""The model-averaging core in one process: configs, merge rules, fake-communicator arithmetic."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence

import pytest
import torch
from torch import Tensor, nn

from lightning_delayed.core.averaging import merge_delayed_, model_state, pull_back_
from lightning_delayed.core.dasgd import DaSGD, DaSGDConfig, cocodsgd_config
from lightning_delayed.core.local_sgd import LocalSGD, LocalSGDConfig
from lightning_delayed.core.overlap_local_sgd import OverlapLocalSGD, OverlapLocalSGDConfig, anchor_momentum_
from tests.helpers.fake_comm import FakeGroup, FakePending


class WeightedFakeComm:
    """One replica's communicator over a :class:`FakeGroup`; weighted averages are done by hand."""

    def __init__(self, group: FakeGroup, rank: int) -> None:
        self.group, self.rank = group, rank
        self.weighted: list[float] = []
        self.keys: list[list[str] | None] = []  # the keys of every launch, in order

    def launch(
        self,
        tensors: Sequence[Tensor],
        *,
        weight: float | None = None,
        keys: Sequence[str] | None = None,
        what: str = "tensors",
    ) -> _Waiting:
        self.keys.append(None if keys is None else list(keys))
        if weight is None:
            return _Waiting(self.group.launch(self.rank, list(tensors)), weighted=False)
        self.weighted.append(weight)
        # sum_i n_i c_i / sum_i n_i == mean_i(n_i c_i) / mean_i(n_i): launch both, combine at wait
        scaled = [t * weight for t in tensors] + [torch.tensor([weight], dtype=torch.float64)]
        return _Waiting(self.group.launch(self.rank, scaled), weighted=True)


class _Waiting:
    """Waits (up to 10 s) for the replicas running in other threads, like a blocking all-reduce."""

    def __init__(self, pending: FakePending, weighted: bool) -> None:
        self.pending, self.weighted = pending, weighted

    def wait(self) -> list[Tensor]:
        result = self.pending.wait(timeout=10.0)
        if not self.weighted:
            return result
        *avg, total = result
        return [a / total for a in avg]


def _in_threads(calls: list[Callable[[], object]]) -> None:
    """Run one call per replica concurrently, so a blocking fake all-reduce can complete."""
    errors: list[BaseException] = []

    def run(call: Callable[[], object]) -> None:
        try:
            call()
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=run, args=(c,)) for c in calls]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert not errors, errors


# ------------------------------------------------------------------ configs


@pytest.mark.parametrize(
    ("factory", "message"),
    [
        (lambda: LocalSGDConfig(sync_every=0), "sync_every (tau) must be an integer >= 1, got 0"),
        (lambda: LocalSGDConfig(sync_every=2.0), "sync_every (tau) must be an integer >= 1, got 2.0"),  # type: ignore[arg-type]
        (lambda: LocalSGDConfig(sync_every=True), "got True"),
        (lambda: LocalSGDConfig(average_buffers=1), "average_buffers must be True or False, got 1"),  # type: ignore[arg-type]
        (lambda: DaSGDConfig(sync_every=4, delay=0), "1 <= delay <= sync_every=4, got 0"),
        (lambda: DaSGDConfig(sync_every=2, delay=3), "1 <= delay <= sync_every=2, got 3"),
        (lambda: DaSGDConfig(weighting="batch"), "weighting must be one of ('uniform', 'samples'), got 'batch'"),
        (lambda: cocodsgd_config(sync_every=-1), "sync_every (tau) must be an integer >= 1, got -1"),
        (lambda: OverlapLocalSGDConfig(alpha=0.0), "alpha must be a number in (0, 1], got 0.0"),
        (lambda: OverlapLocalSGDConfig(alpha=1.5), "alpha must be a number in (0, 1], got 1.5"),
        (lambda: OverlapLocalSGDConfig(outer_momentum=-0.1), "outer_momentum (beta) must be a number >= 0"),
    ],
)
def test_bad_config_raises_naming_argument_value_and_range(factory, message: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValueError) as err:
        factory()
    assert message in str(err.value)


def test_defaults_and_cocodsgd_delay() -> None:
    assert (LocalSGDConfig().sync_every, LocalSGDConfig().average_buffers) == (4, True)
    assert (DaSGDConfig().sync_every, DaSGDConfig().delay, DaSGDConfig().weighting) == (4, 1, "uniform")
    c = cocodsgd_config(sync_every=3, weighting="samples")
    assert (c.delay, c.weighting) == (3, "samples")
    o = OverlapLocalSGDConfig()
    assert (o.sync_every, o.alpha, o.outer_momentum) == (2, 0.6, 0.0)
    assert OverlapLocalSGDConfig(alpha=1).alpha == 1


# ------------------------------------------------------------------ rules


def test_merge_and_pull_back_arithmetic() -> None:
    x, avg, snap = [torch.tensor([5.0, 1.0])], [torch.tensor([2.0, 2.0])], [torch.tensor([4.0, 0.0])]
    merge_delayed_(x, avg, snap)
    assert torch.equal(x[0], torch.tensor([3.0, 3.0]))  # 2 + (5 - 4), 2 + (1 - 0)
    # asymmetric alpha: swapping alpha and 1 - alpha would give [1.5, 4.5]
    pull_back_(x, [torch.tensor([1.0, 5.0])], 0.25)
    assert torch.equal(x[0], torch.tensor([2.5, 3.5]))  # 0.75 * 3 + 0.25 * 1, 0.75 * 3 + 0.25 * 5
    v = [torch.tensor([1.0, 0.0])]
    send = anchor_momentum_(v, [torch.tensor([1.0, 1.0])], [torch.tensor([2.0, 3.0])], beta=0.5, lr=0.5)
    assert torch.equal(v[0], torch.tensor([2.5, 4.0]))  # 0.5 * v + (z - x) / 0.5
    assert torch.equal(send[0], torch.tensor([0.75, 1.0]))  # z - 0.5 * v


def test_model_state_takes_float_buffers_only_when_asked() -> None:
    net = nn.Sequential(nn.Linear(2, 3), nn.BatchNorm1d(3))
    params = list(net.parameters())
    assert model_state(net, params, average_buffers=False) == params
    with_buffers = model_state(net, params, average_buffers=True)
    assert len(with_buffers) == len(params) + 2  # running_mean, running_var; not num_batches_tracked
    assert all(t.is_floating_point() for t in with_buffers)


# ------------------------------------------------------------------ fake-communicator runs


def _replicas(world: int) -> tuple[list[list[Tensor]], list[torch.optim.Optimizer]]:
    xs = [[torch.zeros(3, dtype=torch.float64, requires_grad=True)] for _ in range(world)]
    return xs, [torch.optim.SGD(x, lr=1.0) for x in xs]


def _step(xs: list[list[Tensor]], opts: list[torch.optim.Optimizer], k: int) -> None:
    for r, (x, o) in enumerate(zip(xs, opts, strict=True)):
        x[0].grad = torch.full((3,), -float((r + 1) * (k + 1)), dtype=torch.float64)  # x += (r+1)(k+1)
        o.step()


def test_dasgd_merges_delayed_average_by_hand() -> None:
    group = FakeGroup(2)
    xs, opts = _replicas(2)
    comms = [WeightedFakeComm(group, r) for r in range(2)]
    algos = [DaSGD(DaSGDConfig(sync_every=2, delay=1), x, o, c) for x, o, c in zip(xs, opts, comms, strict=True)]
    values = []
    for k in range(3):
        _step(xs, opts, k)
        for a in algos:
            a.after_optimizer_step()
        values.append([float(x[0][0].detach()) for x in xs])
    # k=0: x = 1, 2.  k=1: x = 3, 6, launch mean 4.5, s = 3, 6.  k=2: x = 6, 12 -> 4.5 + (6-3), 4.5 + (12-6)
    assert values == [[1.0, 2.0], [3.0, 6.0], [7.5, 10.5]]
    assert group.launches == 2
    _in_threads([a.finish for a in algos])  # nothing pending; final synchronous average
    assert [float(x[0][0].detach()) for x in xs] == [9.0, 9.0]
    # The rule's average is a keyed stream (error feedback may key on it); the final one is one-off.
    n = len(xs[0])
    assert comms[0].keys == [[f"model/{i}" for i in range(n)], None]

    def validate(a: DaSGD) -> None:
        with a.consensus():
            pass

    _in_threads([lambda a=a: validate(a) for a in algos])
    assert len(comms[0].keys) == 3 and comms[0].keys[-1] is None, (
        "the validation consensus must not touch per-stream state"
    )


def test_cocodsgd_samples_weighting_by_hand() -> None:
    group = FakeGroup(2)
    xs, opts = _replicas(2)
    comms = [WeightedFakeComm(group, r) for r in range(2)]
    algos = [
        DaSGD(cocodsgd_config(sync_every=1, weighting="samples"), x, o, c)
        for x, o, c in zip(xs, opts, comms, strict=True)
    ]
    _step(xs, opts, 0)  # x = 1, 2
    for a, n in zip(algos, (1, 3), strict=True):
        a.add_samples(n)
        a.after_optimizer_step()
    assert [c.weighted for c in comms] == [[1.0], [3.0]]
    assert all(a.samples_since_launch == 0 for a in algos)
    for a in algos:
        a.finish_pending()  # merge (1*1 + 3*2) / 4 = 1.75 + (x - s) with x == s
    assert [float(x[0][0].detach()) for x in xs] == [1.75, 1.75]
    with pytest.raises(RuntimeError, match="counted no samples"):
        algos[0].after_optimizer_step()


def test_local_sgd_and_overlap_by_hand() -> None:
    group = FakeGroup(2)
    xs, opts = _replicas(2)
    algos = [
        LocalSGD(LocalSGDConfig(sync_every=2), x, o, WeightedFakeComm(group, r))
        for r, (x, o) in enumerate(zip(xs, opts, strict=True))
    ]
    _step(xs, opts, 0)
    for a in algos:
        a.after_optimizer_step()  # k=0: not a synchronisation point, nothing launched
    assert group.launches == 0
    _step(xs, opts, 1)
    _in_threads([a.after_optimizer_step for a in algos])  # blocking mean
    assert [float(x[0][0].detach()) for x in xs] == [4.5, 4.5]  # mean(3, 6)

    group = FakeGroup(2)
    xs, opts = _replicas(2)
    cfg = OverlapLocalSGDConfig(sync_every=1, alpha=0.25, outer_momentum=0.0)
    overlap = [
        OverlapLocalSGD(cfg, x, o, WeightedFakeComm(group, r)) for r, (x, o) in enumerate(zip(xs, opts, strict=True))
    ]
    for k in range(2):
        _step(xs, opts, k)
        for a in overlap:
            a.after_optimizer_step()
    # k=0: x = 1, 2, launch z = 1.5 (no pull).  k=1: x = 3, 6 -> 0.75 x + 0.25 * 1.5
    assert [float(x[0][0].detach()) for x in xs] == [2.625, 4.875]
    seen: list[float] = []

    def validate(a: OverlapLocalSGD) -> None:
        with a.consensus():
            seen.append(float(a.tensors[0][0].detach()))

    _in_threads([lambda a=a: validate(a) for a in overlap])
    assert seen == [3.75, 3.75]
    assert [float(x[0][0].detach()) for x in xs] == [2.625, 4.875], "consensus must restore each rank's own x"
    _in_threads([a.finish for a in overlap])  # pull toward z = mean(2.625, 4.875) = 3.75, then average
    assert [float(x[0][0].detach()) for x in xs] == [3.75, 3.75]


def test_checkpoint_round_trip_keeps_local_state_unaliased() -> None:
    group = FakeGroup(1)
    x = [torch.zeros(2, dtype=torch.float64, requires_grad=True)]
    opt = torch.optim.SGD(x, lr=0.1, momentum=0.9)
    algo = OverlapLocalSGD(OverlapLocalSGDConfig(sync_every=1, outer_momentum=0.7), x, opt, WeightedFakeComm(group, 0))
    for _ in range(2):
        x[0].grad = torch.ones(2, dtype=torch.float64)
        opt.step()
        algo.after_optimizer_step()
    state, local = algo.state_dict(), algo.local_state_dict()
    assert state["step"] == 2 and state["pending_average"] is not None and local["momentum"] is not None

    y = [torch.zeros(2, dtype=torch.float64, requires_grad=True)]
    opt2 = torch.optim.SGD(y, lr=0.1, momentum=0.9)
    restored = OverlapLocalSGD(algo.config, y, opt2, WeightedFakeComm(FakeGroup(1), 0))
    restored.load_state_dict(state, local)
    assert torch.equal(y[0], x[0]) and restored.step == 2
    assert torch.equal(opt2.state[y[0]]["momentum_buffer"], opt.state[x[0]]["momentum_buffer"])
    assert restored.momentum is not None and algo.momentum is not None
    assert restored.momentum[0].data_ptr() != algo.momentum[0].data_ptr()
    local["momentum"][0].add_(1.0)
    assert not torch.equal(restored.momentum[0], local["momentum"][0]), "restored state aliases the saved one"
