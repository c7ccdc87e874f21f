"""DiLoCo and Streaming DiLoCo in one process: configs, fragments, N simulated replicas vs a hand-written loop."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Any

import pytest
import torch
from torch import Tensor, nn

from lightning_delayed.core.diloco import DiLoCo, DiLoCoConfig
from lightning_delayed.core.streaming_diloco import StreamingDiLoCo, StreamingDiLoCoConfig, layer_fragments
from tests.helpers.fake_comm import FakeGroup, FakePending

WORLD = 3


class KeyedFakeComm:
    """One replica's communicator over a :class:`FakeGroup`; records the keys of every launch."""

    def __init__(self, group: FakeGroup, rank: int) -> None:
        self.group, self.rank = group, rank
        self.keys: list[list[str] | None] = []

    def launch(
        self,
        tensors: Sequence[Tensor],
        *,
        weight: float | None = None,
        keys: Sequence[str] | None = None,
        what: str = "tensors",
    ) -> _Waiting:
        assert weight is None
        self.keys.append(None if keys is None else list(keys))
        return _Waiting(self.group.launch(self.rank, list(tensors)))


class _Waiting:
    def __init__(self, pending: FakePending) -> None:
        self.pending = pending

    def wait(self) -> list[Tensor]:
        return self.pending.wait(timeout=10.0)  # the other replicas run in other threads


def _in_threads(calls: list[Callable[[], object]]) -> None:
    """One call per replica, concurrently, so that a blocking fake all-reduce can complete."""
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
        (lambda: DiLoCoConfig(sync_every=0), "sync_every (tau) must be an integer >= 1, got 0"),
        (lambda: DiLoCoConfig(outer_lr=0.0), "outer_lr (eta_o) must be a finite number > 0, got 0.0"),
        (lambda: DiLoCoConfig(outer_lr=-1), "outer_lr (eta_o) must be a finite number > 0, got -1"),
        (lambda: DiLoCoConfig(outer_lr=float("nan")), "outer_lr (eta_o) must be a finite number > 0, got nan"),
        (lambda: DiLoCoConfig(outer_lr=float("inf")), "outer_lr (eta_o) must be a finite number > 0, got inf"),
        (lambda: DiLoCoConfig(outer_lr=True), "outer_lr (eta_o) must be a finite number > 0, got True"),
        (lambda: DiLoCoConfig(outer_momentum=1.0), "outer_momentum (mu) must be a number in [0, 1), got 1.0"),
        (lambda: DiLoCoConfig(outer_momentum=-0.1), "outer_momentum (mu) must be a number in [0, 1), got -0.1"),
        (lambda: DiLoCoConfig(outer_momentum=float("nan")), "outer_momentum (mu) must be a number in [0, 1), got nan"),
        (lambda: DiLoCoConfig(nesterov=1), "nesterov must be True or False, got 1"),  # type: ignore[arg-type]
        (lambda: DiLoCoConfig(average_buffers=None), "average_buffers must be True or False, got None"),  # type: ignore[arg-type]
        (lambda: StreamingDiLoCoConfig(sync_every=6, num_fragments=4), "num_fragments (P) must divide sync_every=6"),
        (lambda: StreamingDiLoCoConfig(num_fragments=0), "num_fragments (P) must be an integer >= 1, got 0"),
        (lambda: StreamingDiLoCoConfig(sync_every=4, delay=4), "0 <= delay < sync_every=4, got 4"),
        (lambda: StreamingDiLoCoConfig(sync_every=4, delay=-1), "0 <= delay < sync_every=4, got -1"),
        (lambda: StreamingDiLoCoConfig(alpha=1.5), "alpha must be a number in [0, 1], got 1.5"),
        (lambda: StreamingDiLoCoConfig(alpha=-0.5), "alpha must be a number in [0, 1], got -0.5"),
        (lambda: StreamingDiLoCoConfig(alpha=float("nan")), "alpha must be a number in [0, 1], got nan"),
        (lambda: StreamingDiLoCoConfig(alpha=float("inf")), "alpha must be a number in [0, 1], got inf"),
        (
            lambda: StreamingDiLoCoConfig(fragments="random"),
            "fragments must be one of ('strided', 'sequential'), got 'random'",
        ),
        (lambda: StreamingDiLoCoConfig(outer_lr=float("inf")), "outer_lr (eta_o) must be a finite number > 0"),
        (lambda: StreamingDiLoCoConfig(outer_momentum=1), "outer_momentum (mu) must be a number in [0, 1), got 1"),
    ],
)
def test_bad_config_raises_naming_argument_value_and_range(factory: Callable[[], Any], message: str) -> None:
    with pytest.raises(ValueError) as err:
        factory()
    assert message in str(err.value)


def test_defaults_are_the_papers() -> None:
    d = DiLoCoConfig()
    assert (d.sync_every, d.outer_lr, d.outer_momentum, d.nesterov, d.average_buffers) == (50, 0.7, 0.9, True, True)
    s = StreamingDiLoCoConfig()
    assert (s.num_fragments, s.delay, s.alpha, s.fragments) == (2, 1, 0.5, "strided")
    assert StreamingDiLoCoConfig(sync_every=4, delay=0, alpha=0, num_fragments=4).alpha == 0


# ------------------------------------------------------------------ fragments


def _five_layers() -> nn.Module:
    # layers in modules() order: Linear, BatchNorm1d, Linear, LayerNorm, Linear (Tanh owns nothing)
    return nn.Sequential(
        nn.Linear(2, 3), nn.BatchNorm1d(3), nn.Tanh(), nn.Linear(3, 3), nn.LayerNorm(3), nn.Linear(3, 1)
    )


def test_fragments_are_whole_layers_strided_and_sequential() -> None:
    net = _five_layers()
    params = list(net.parameters())  # two per layer: layer j owns params 2j, 2j + 1
    assert layer_fragments(net, params, 2, "strided") == [[0, 1, 4, 5, 8, 9], [2, 3, 6, 7]]  # layers 0,2,4 | 1,3
    assert layer_fragments(net, params, 2, "sequential") == [[0, 1, 2, 3, 4, 5], [6, 7, 8, 9]]  # (j*2)//5: 0,0,0,1,1
    assert layer_fragments(net, params, 3, "sequential") == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]  # 0,0,1,1,2
    assert layer_fragments(net, params, 1, "strided") == [list(range(10))]
    # frozen parameters are not part of x: a layer with none left does not count
    frozen = [p for p in params if p is not net[1].weight and p is not net[1].bias]
    assert layer_fragments(net, frozen, 2, "strided") == [[0, 1, 4, 5], [2, 3, 6, 7]]


def test_fewer_layers_than_fragments_is_refused_with_the_layer_count() -> None:
    net = _five_layers()
    with pytest.raises(ValueError, match=r"at least num_fragments=6 layers .* the model has 5"):
        layer_fragments(net, list(net.parameters()), 6, "strided")


# ------------------------------------------------------------------ N replicas vs a hand-written loop

STEPS = 9
LR, MOMENTUM = 0.1, 0.5  # the inner SGD


def _grad(r: int, k: int, x: Tensor) -> Tensor:
    """A gradient that depends on the weights (so mixing/outer steps change the trajectory), per replica."""
    target = torch.linspace(-1.0, 1.0, x.numel(), dtype=torch.float64).view_as(x) * (r + 1) + 0.1 * k
    return (x.detach() - target) * (1.0 + 0.3 * r) + 0.05 * x.detach() ** 2


def _init() -> list[Tensor]:
    gen = torch.Generator().manual_seed(7)
    return [torch.randn(3, generator=gen, dtype=torch.float64), torch.randn(2, 2, generator=gen, dtype=torch.float64)]


def _outer_by_hand(
    theta: list[Tensor], buf: list[Tensor | None], delta: list[Tensor], lr: float, mu: float, nesterov: bool
) -> None:
    """torch's SGD written out: buf = delta (first) / mu * buf + delta; step = delta + mu * buf (Nesterov) or buf."""
    for i, d in enumerate(delta):
        if mu > 0:
            b = buf[i]
            buf[i] = d.clone() if b is None else mu * b + d
            step = d + mu * buf[i] if nesterov else buf[i]
        else:
            step = d
        theta[i] = theta[i] - lr * step


def _run_ours(make: Callable[[list[Tensor], torch.optim.Optimizer, KeyedFakeComm], Any]) -> dict[str, Any]:
    group = FakeGroup(WORLD)
    xs = [[t.clone().requires_grad_(True) for t in _init()] for _ in range(WORLD)]
    opts = [torch.optim.SGD(x, lr=LR, momentum=MOMENTUM) for x in xs]
    comms = [KeyedFakeComm(group, r) for r in range(WORLD)]
    algos = [make(x, o, c) for x, o, c in zip(xs, opts, comms, strict=True)]
    hist = []
    for k in range(STEPS):
        for r, (x, o) in enumerate(zip(xs, opts, strict=True)):
            for t in x:
                t.grad = _grad(r, k, t)
            o.step()
        _in_threads([a.after_optimizer_step for a in algos])
        hist.append([[t.detach().clone() for t in x] for x in xs])
    _in_threads([a.finish for a in algos])
    final = [[t.detach().clone() for t in x] for x in xs]
    return {"hist": hist, "final": final, "keys": comms[0].keys, "algos": algos, "xs": xs}


def _reference(
    h: int, outer_lr: float, mu: float, nesterov: bool, fragments: list[list[int]], delay: int, alpha: float
) -> dict[str, Any]:
    """docs/algorithms/streaming_diloco.md (diloco: one fragment, delay 0, alpha 0) with plain tensors."""
    n_frag = len(fragments)
    xs = [[t.clone() for t in _init()] for _ in range(WORLD)]
    vel = [[torch.zeros_like(t) for t in x] for x in xs]  # the inner SGD's momentum, by hand
    theta = [t.clone() for t in _init()]
    bufs: list[list[Tensor | None]] = [[None] * len(f) for f in fragments]
    pending: list[tuple[int, int, list[Tensor]]] = []
    hist = []

    def apply(q: int, delta: list[Tensor]) -> None:
        part = [theta[i] for i in fragments[q]]
        _outer_by_hand(part, bufs[q], delta, outer_lr, mu, nesterov)
        for i, t in zip(fragments[q], part, strict=True):
            theta[i] = t
            for x in xs:
                x[i] = alpha * x[i] + (1 - alpha) * t

    for k in range(STEPS):
        for r, x in enumerate(xs):
            for i, t in enumerate(x):
                g = _grad(r, k, t)
                vel[r][i] = g if k == 0 else MOMENTUM * vel[r][i] + g
                x[i] = t - LR * vel[r][i]
        for q in range(n_frag):
            if (k + 1) % h == ((q + 1) * h // n_frag) % h:
                delta = [sum(theta[i] - x[i] for x in xs) / WORLD for i in fragments[q]]
                pending.append((q, k, delta))
        for q, _, delta in [p for p in pending if p[1] == k - delay]:
            apply(q, delta)
        pending = [p for p in pending if p[1] != k - delay]
        hist.append([[t.clone() for t in x] for x in xs])
    for q, _, delta in pending:
        apply(q, delta)
    # End: a fragment launched after the last step ends at theta; the others are synchronised once more.
    for q in range(n_frag):
        if ((q + 1) * h // n_frag) % h != STEPS % h:
            apply(q, [sum(theta[i] - x[i] for x in xs) / WORLD for i in fragments[q]])
        for i in fragments[q]:
            for x in xs:
                x[i] = theta[i].clone()
    return {"hist": hist, "final": [[t.clone() for t in x] for x in xs], "theta": theta}


def _assert_same(ours: dict[str, Any], ref: dict[str, Any]) -> float:
    worst = 0.0
    for step_ours, step_ref in [*zip(ours["hist"], ref["hist"], strict=True), (ours["final"], ref["final"])]:
        for a, b in zip(step_ours, step_ref, strict=True):
            for x, y in zip(a, b, strict=True):
                worst = max(worst, (x - y).abs().max().item())
    assert worst <= 1e-12, f"differs from the hand-written loop by {worst:.3e}"
    return worst


@pytest.mark.parametrize(("mu", "nesterov"), [(0.9, True), (0.9, False), (0.0, True)])
def test_diloco_matches_hand_written_loop(mu: float, nesterov: bool) -> None:
    cfg = DiLoCoConfig(sync_every=2, outer_lr=0.7, outer_momentum=mu, nesterov=nesterov)
    ours = _run_ours(lambda x, o, c: DiLoCo(cfg, x, [], o, c))
    ref = _reference(2, 0.7, mu, nesterov, [[0, 1]], delay=0, alpha=0.0)
    _assert_same(ours, ref)
    # 9 steps, H = 2: syncs after steps 1, 3, 5, 7, then one at the end (9 % 2 != 0), one-off
    assert ours["keys"] == [["model/0", "model/1"]] * 4 + [None]
    for x in ours["xs"][1:]:
        assert all(torch.equal(a, b) for a, b in zip(x, ours["xs"][0], strict=True))
    theta = ours["algos"][0].global_params
    assert all(torch.allclose(a, b, rtol=0, atol=1e-12) for a, b in zip(theta, ref["theta"], strict=True))


@pytest.mark.parametrize(
    ("fragments", "delay", "alpha", "h"),
    [([[0], [1]], 1, 0.5, 4), ([[1], [0]], 1, 0.5, 4), ([[0], [1]], 0, 0.25, 2), ([[0, 1]], 2, 0.5, 4)],
)
def test_streaming_diloco_matches_hand_written_loop(
    fragments: list[list[int]], delay: int, alpha: float, h: int
) -> None:
    cfg = StreamingDiLoCoConfig(
        sync_every=h, outer_lr=0.7, outer_momentum=0.9, num_fragments=len(fragments), delay=delay, alpha=alpha
    )
    ours = _run_ours(lambda x, o, c: StreamingDiLoCo(cfg, x, [], o, fragments, c))
    ref = _reference(h, 0.7, 0.9, True, fragments, delay=delay, alpha=alpha)
    _assert_same(ours, ref)
    # every fragment's launch carries only its own keys; the last, end-of-training sync is one-off
    keys = ours["keys"]
    assert keys[-1] is None
    assert all(
        k == [f"model/{i}" for i in fragments[0]] or k == [f"model/{i}" for i in fragments[-1]] for k in keys[:-1]
    )
    n_launches = sum(
        1 for k in range(STEPS) for q in range(len(fragments)) if (k + 1) % h == ((q + 1) * h // len(fragments)) % h
    )
    assert len(keys) == n_launches + 1


def test_streaming_one_fragment_no_delay_no_mix_is_diloco() -> None:
    ours = _run_ours(
        lambda x, o, c: StreamingDiLoCo(
            StreamingDiLoCoConfig(sync_every=3, num_fragments=1, delay=0, alpha=0.0), x, [], o, [[0, 1]], c
        )
    )
    plain = _run_ours(lambda x, o, c: DiLoCo(DiLoCoConfig(sync_every=3), x, [], o, c))
    for a, b in zip([*ours["hist"], ours["final"]], [*plain["hist"], plain["final"]], strict=True):
        for x, y in zip(a, b, strict=True):
            assert all(torch.equal(s, t) for s, t in zip(x, y, strict=True))


def test_consensus_is_theta_with_buffers_averaged_and_restores_x() -> None:
    group = FakeGroup(2)
    params = [[torch.tensor([float(r + 1)], dtype=torch.float64, requires_grad=True)] for r in range(2)]
    buffers = [[torch.tensor([10.0 * (r + 1)], dtype=torch.float64)] for r in range(2)]
    opts = [torch.optim.SGD(p, lr=1.0) for p in params]
    comms = [KeyedFakeComm(group, r) for r in range(2)]
    algos = [DiLoCo(DiLoCoConfig(sync_every=5), params[r], buffers[r], opts[r], comms[r]) for r in range(2)]
    for r in range(2):
        with torch.no_grad():
            params[r][0].add_(1.0)  # x moves away from theta = (1, 2) as built
    seen: list[tuple[float, float]] = []

    def validate(a: DiLoCo) -> None:
        with a.consensus():
            seen.append((float(a.params[0].detach()), float(a.buffers[0])))

    _in_threads([lambda a=a: validate(a) for a in algos])
    assert sorted(seen) == [(1.0, 15.0), (2.0, 15.0)]  # each rank's theta (as built from its x0), mean buffers
    assert [float(p[0]) for p in params] == [2.0, 3.0] and [float(b[0]) for b in buffers] == [10.0, 20.0]
    assert comms[0].keys == [None], "the consensus average is one-off (no error-feedback state)"


def test_checkpoint_round_trip_with_fragment_in_flight() -> None:
    group = FakeGroup(1)
    x = [torch.ones(2, dtype=torch.float64, requires_grad=True), torch.ones(1, dtype=torch.float64, requires_grad=True)]
    opt = torch.optim.SGD(x, lr=0.1, momentum=0.9)
    cfg = StreamingDiLoCoConfig(sync_every=4, num_fragments=2, delay=1)
    algo = StreamingDiLoCo(cfg, x, [], opt, [[0], [1]], KeyedFakeComm(group, 0))
    for _ in range(6):  # fragment 0 launched at k=1 (applied k=2), fragment 1 at k=3 (k=4), fragment 0 at k=5
        for t in x:
            t.grad = torch.ones_like(t)
        opt.step()
        algo.after_optimizer_step()
    state, local = algo.state_dict(), algo.local_state_dict()
    assert state["step"] == 6 and [(p["fragment"], p["launch_step"]) for p in state["pending"]] == [(0, 5)]
    assert (
        len(state["outer_optimizers"]) == 2 and state["outer_optimizers"][1]["state"][0]["momentum_buffer"] is not None
    )

    y = [
        torch.zeros(2, dtype=torch.float64, requires_grad=True),
        torch.zeros(1, dtype=torch.float64, requires_grad=True),
    ]
    opt2 = torch.optim.SGD(y, lr=0.1, momentum=0.9)
    restored = StreamingDiLoCo(cfg, y, [], opt2, [[0], [1]], KeyedFakeComm(FakeGroup(1), 0))
    restored.load_state_dict(state, local)
    assert restored.step == 6 and all(torch.equal(a, b) for a, b in zip(y, x, strict=True))
    assert all(torch.equal(a, b) for a, b in zip(restored.global_params, algo.global_params, strict=True))
    # both continue identically: the restored pending fragment is applied at step 6 like the original
    for a, o, t in ((algo, opt, x), (restored, opt2, y)):
        for p in t:
            p.grad = torch.ones_like(p)
        o.step()
        a.after_optimizer_step()
    assert all(torch.equal(a, b) for a, b in zip(y, x, strict=True))
    assert all(torch.equal(a, b) for a, b in zip(restored.global_params, algo.global_params, strict=True))
    state["global_params"][0].add_(1.0)
    assert not torch.equal(restored.global_params[0], state["global_params"][0]), "restored state aliases the saved"


@pytest.mark.parametrize("streaming", [False, True], ids=["diloco", "streaming_diloco"])
def test_resume_on_another_number_of_ranks_keeps_theta_and_the_outer_state(streaming: bool) -> None:
    """3 saved ranks -> 2: theta and the outer state as saved, x = theta, inner state of rank r' mod 3, k kept."""
    x = [torch.ones(2, dtype=torch.float64, requires_grad=True), torch.ones(1, dtype=torch.float64, requires_grad=True)]
    opt = torch.optim.SGD(x, lr=0.1, momentum=0.9)
    cfg = StreamingDiLoCoConfig(sync_every=4, num_fragments=2, delay=1)

    def make(t: list[Tensor], o: torch.optim.Optimizer) -> Any:
        if streaming:
            return StreamingDiLoCo(cfg, t, [], o, [[0], [1]], KeyedFakeComm(FakeGroup(1), 0))
        return DiLoCo(DiLoCoConfig(sync_every=4), t, [], o, KeyedFakeComm(FakeGroup(1), 0))

    algo = make(x, opt)
    for _ in range(6):  # streaming: fragment 0 launched after step 5 is still in flight
        for p in x:
            p.grad = torch.ones_like(p)
        opt.step()
        algo.after_optimizer_step()
    state = algo.state_dict()
    assert not streaming or len(state["pending"]) == 1
    saved_theta = [t.clone() for t in state["global_params"]]
    local_states = []
    for r in range(3):  # three saved ranks, each with its own x and inner momentum
        local = algo.local_state_dict()
        local["tensors"] = [t + r for t in local["tensors"]]
        for entry in local["optimizer"]["state"].values():
            entry["momentum_buffer"] = entry["momentum_buffer"] * (r + 2)
        local_states.append(local)
    for new_rank in (0, 1):
        y = [
            torch.zeros(2, dtype=torch.float64, requires_grad=True),
            torch.zeros(1, dtype=torch.float64, requires_grad=True),
        ]
        opt2 = torch.optim.SGD(y, lr=0.1, momentum=0.9)
        resized = make(y, opt2)
        resized.load_resized_state_dict(state, local_states, rank=new_rank)
        assert resized.step == 6
        assert all(torch.equal(a, b) for a, b in zip(resized.global_params, saved_theta, strict=True))
        assert all(torch.equal(a.detach(), b) for a, b in zip(y, saved_theta, strict=True)), "x must be theta"
        assert getattr(resized, "pending", []) == [], "fragments in flight must be dropped"
        for o_new, o_saved in zip(resized.outer_optimizers, state["outer_optimizers"], strict=True):
            got = o_new.state_dict()["state"]
            assert got.keys() == o_saved["state"].keys() and got
            for key in got:
                assert torch.equal(got[key]["momentum_buffer"], o_saved["state"][key]["momentum_buffer"])
        inner = local_states[new_rank % 3]["optimizer"]["state"]
        for i, p in enumerate(y):
            assert torch.equal(opt2.state[p]["momentum_buffer"], inner[i]["momentum_buffer"])
