r"""``sasgd``'s parameter server: the update rule of staleness-aware asynchronous SGD.

Zhang, Gupta, Lian, Liu. *Staleness-aware Async-SGD for Distributed Deep Learning*. IJCAI 2016,
arXiv:1511.05950. With ``staleness_aware=False`` it is plain asynchronous SGD (the paper's
baseline, registered as ``asgd``). The workers and the rule's arguments
(:class:`~lightning_delayed.core.sasgd.SASGDConfig`) are in :mod:`lightning_delayed.core.sasgd`.

:class:`ParameterServer` holds :math:`\theta`, its version :math:`i` (updates applied so far), the
user's optimizer on :math:`\theta` (rebuilt by :func:`server_optimizer`, its schedulers by
:func:`server_scheduler`) and an accumulator, and answers each push with a :class:`PushRecord`::

    server on push(g, j):
        sigma <- i - j                                   # staleness in server versions
        acc += g / max(sigma, 1)   if staleness_aware else g
        after c = max(1, N // n) pushes:  theta <- opt.step(theta, acc / c);  i += 1;  acc <- 0

This module is the rule only, transport-free and thread-safe: :mod:`lightning_delayed.comm.parameter_server`
carries pushes and pulls over ``torch.distributed.rpc``; a test calls :meth:`ParameterServer.push`
directly with scripted versions.

Choices the rule leaves open (``docs/algorithms/sasgd.md``):
    * LR schedules run on the server. ``interval="step"`` schedulers step after every
      ``frequency`` server updates; ``interval="epoch"`` schedulers step after every ``frequency``
      *data passes*, one data pass being N worker-epochs reported to the server (with equal shards,
      one pass over the whole dataset).
    * A worker counts as lost when its process ends before it said it was done (its connection
      closes: noticed at once), or when the server has not heard from it (push or heartbeat) for
      ``worker_timeout`` seconds. Heartbeats come from a thread of their own, so a slow step is
      never silence; only a stopped, hung or cut-off process is.
    * A push the server refuses (wrong number, shape or kind of tensors, NaN/Inf) leaves ``theta``,
      the accumulator and the counters unchanged; the pushing worker gets the reason.
"""

from __future__ import annotations

import copy
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from lightning_delayed._compat import foreach_add_, foreach_div, mark_scheduler_stepped
from lightning_delayed.comm.buckets import NonFiniteReductionError
from lightning_delayed.comm.parameter_server import WorkerLostError
from lightning_delayed.core.base import clone_all, copy_all_

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from torch.optim import Optimizer

    from lightning_delayed.core.sasgd import SASGDConfig


@dataclass(frozen=True)
class PushRecord:
    """What the server did with one gradient."""

    rank: int
    staleness: int
    scale: float
    version: int  # server version after this push
    applied: bool  # this push completed a group of c gradients and triggered an update


@dataclass
class ServerScheduler:
    """An LR scheduler of the user's, re-bound to the server's optimizer."""

    scheduler: Any
    interval: str = "epoch"
    """``"step"``: after every ``frequency`` server updates; ``"epoch"``: after ``frequency`` data passes."""
    frequency: int = 1

    def __post_init__(self) -> None:
        if self.interval not in ("step", "epoch"):
            raise ValueError(f"a scheduler's interval must be 'step' or 'epoch', got {self.interval!r}")


class ParameterServer:
    r"""The server side of SASGD, one object on the server's rank, called from RPC threads.

    Args:
        config: the rule's arguments.
        theta: the server's own parameter tensors (never a worker's live parameters).
        optimizer: the user's optimizer rebuilt over ``theta`` (see :func:`server_optimizer`).
        world_size: N, the number of workers.
        schedulers: the user's LR schedulers rebound to ``optimizer``.
        check_finite: refuse a gradient with NaN or Inf (:class:`NonFiniteReductionError` naming the rank).
        clock: time source for liveness (tests pass a fake one).
    """

    HISTORY = 100_000
    """How many :class:`PushRecord` the server keeps (counters are kept for every push)."""

    def __init__(
        self,
        config: SASGDConfig,
        theta: Sequence[Tensor],
        optimizer: Optimizer,
        world_size: int,
        schedulers: Sequence[ServerScheduler] = (),
        check_finite: bool = True,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self.check_finite = check_finite
        self.world_size = world_size
        self.c = config.gradients_per_update(world_size)
        self.theta = list(theta)
        self.optimizer = optimizer
        self.schedulers = list(schedulers)
        self.clock = clock
        self.version = 0
        self._acc: list[Tensor] = [torch.zeros_like(t) for t in self.theta]
        self._acc_count = 0
        self.staleness_counts: Counter[int] = Counter()
        self.pushes_by_rank = [0] * world_size
        self.history: deque[PushRecord] = deque(maxlen=self.HISTORY)
        self.worker_epochs = 0
        self._cond = threading.Condition(threading.RLock())
        now = clock()
        self._last_seen = [now] * world_size
        self._done = [False] * world_size
        self._lost: dict[int, str] = {}  # rank -> why it counts as lost

    # ------------------------------------------------------------------ the rule

    def push(self, rank: int, grads: Sequence[Tensor], version: int) -> PushRecord:
        """Accumulate gradient ``grads`` computed at server version ``version`` by worker ``rank``."""
        with self._cond:
            self._touch(rank)
            self._raise_if_lost(rank)
            # Every check before the first write: a refused push must leave no trace.
            _check_push(rank, grads, version, self.theta)
            sigma = self.version - version
            if sigma < 0:
                raise ValueError(
                    f"rank {rank} pushed a gradient of version {version}, but the server is at {self.version}"
                )
            incoming = [g.to(a.device, a.dtype) for g, a in zip(grads, self._acc, strict=True)]
            if self.check_finite and not all(bool(torch.isfinite(g).all()) for g in incoming):
                raise NonFiniteReductionError(
                    f"rank {rank} pushed a gradient with NaN or Inf to the sasgd parameter server: lower the "
                    "learning rate, enable gradient clipping (Trainer(gradient_clip_val=...)), or find why that "
                    "rank diverged; pass check_finite=False to the strategy to skip this check"
                )
            with torch.no_grad():
                if self.config.staleness_aware:
                    divisor = max(sigma, 1)
                    scale = 1.0 / divisor
                    # g / max(sigma, 1), a division as in the rule (not a multiplication by 1/sigma).
                    foreach_add_(self._acc, foreach_div(incoming, float(divisor)))
                else:
                    scale = 1.0
                    foreach_add_(self._acc, incoming)
            self._acc_count += 1
            applied = self._acc_count == self.c
            if applied:
                self._apply()
            record = PushRecord(rank=rank, staleness=sigma, scale=scale, version=self.version, applied=applied)
            self.staleness_counts[sigma] += 1
            self.pushes_by_rank[rank] += 1
            self.history.append(record)
            return record

    def _apply(self) -> None:
        for t, a in zip(self.theta, self._acc, strict=True):
            t.grad = a / self.c
        self.optimizer.step()
        for t in self.theta:
            t.grad = None
        self._acc = [torch.zeros_like(t) for t in self.theta]
        self._acc_count = 0
        self.version += 1
        self._step_schedulers("step", self.version)

    def _step_schedulers(self, interval: str, count: int) -> None:
        for s in self.schedulers:
            if s.interval == interval and count % s.frequency == 0:
                s.scheduler.step()

    def epoch_done(self, rank: int) -> None:
        """Worker ``rank`` finished an epoch; every N worker-epochs are one data pass."""
        with self._cond:
            self._touch(rank)
            self.worker_epochs += 1
            if self.worker_epochs % self.world_size == 0:
                self._step_schedulers("epoch", self.worker_epochs // self.world_size)

    def pull(self) -> tuple[list[Tensor], int]:
        """A copy of ``theta`` and its version."""
        with self._cond:
            return clone_all(self.theta), self.version

    def lrs(self) -> list[float]:
        with self._cond:
            return [float(g["lr"]) for g in self.optimizer.param_groups]

    # ------------------------------------------------------------------ statistics

    def staleness_summary(self) -> dict[str, float]:
        with self._cond:
            total = sum(self.staleness_counts.values())
            if total == 0:
                return {"mean": 0.0, "max": 0.0, "count": 0.0}
            mean = sum(s * n for s, n in self.staleness_counts.items()) / total
            return {"mean": mean, "max": float(max(self.staleness_counts)), "count": float(total)}

    # ------------------------------------------------------------------ liveness and the end

    def _touch(self, rank: int) -> None:
        if isinstance(rank, bool) or not isinstance(rank, int) or not 0 <= rank < self.world_size:
            raise ValueError(f"unknown worker rank {rank}: the server has ranks 0..{self.world_size - 1}")
        self._last_seen[rank] = self.clock()

    def heartbeat(self, rank: int) -> None:
        with self._cond:
            self._touch(rank)

    def connection_lost(self, rank: int, why: str) -> None:
        """Worker ``rank``'s process is gone (``why``): lost at once, unless it had said it was done."""
        with self._cond:
            if not self._done[rank] and rank not in self._lost:
                self._lost[rank] = why
                self._cond.notify_all()

    def _raise_if_lost(self, asking: int) -> None:
        now = self.clock()
        for r in range(self.world_size):
            if r not in self._lost and not self._done[r] and now - self._last_seen[r] > self.config.worker_timeout:
                self._lost[r] = (
                    f"its process is connected but has sent no push or heartbeat for more than "
                    f"worker_timeout={self.config.worker_timeout:g} s: it is stopped, hung or cut off by the network "
                    "(a slow step still sends heartbeats; raise worker_timeout to wait longer for a stopped worker)"
                )
        if self._lost:
            self._cond.notify_all()
            lost = ", ".join(str(r) for r in self._lost)
            why = "; ".join(f"rank {r}: {w}" for r, w in self._lost.items())
            raise WorkerLostError(
                f"sasgd lost worker rank {lost} (rank {asking} is stopping too): {why}. Check rank {lost}'s log for "
                "the first error."
            )

    def done(self, rank: int) -> None:
        """Worker ``rank`` finished training."""
        with self._cond:
            self._touch(rank)
            self._done[rank] = True
            self._cond.notify_all()

    def wait_all_done(self, rank: int, timeout: float) -> bool:
        """Block up to ``timeout`` s until every worker is done; raise if one is lost meanwhile."""
        deadline = self.clock() + timeout
        with self._cond:
            while True:
                self._touch(rank)
                self._raise_if_lost(rank)
                if all(self._done):
                    return True
                left = deadline - self.clock()
                if left <= 0:
                    return False
                self._cond.wait(min(left, 0.5))

    # ------------------------------------------------------------------ checkpoints

    def state_dict(self) -> dict[str, Any]:
        with self._cond:
            return {
                "version": self.version,
                "theta": clone_all(self.theta),
                "acc": clone_all(self._acc),
                "acc_count": self._acc_count,
                "optimizer": copy.deepcopy(self.optimizer.state_dict()),
                "schedulers": [copy.deepcopy(s.scheduler.state_dict()) for s in self.schedulers],
                "staleness_counts": dict(self.staleness_counts),
                "pushes_by_rank": list(self.pushes_by_rank),
                "worker_epochs": self.worker_epochs,
            }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        with self._cond:
            if len(state["pushes_by_rank"]) != self.world_size:
                raise ValueError(
                    f"the checkpoint's parameter server had {len(state['pushes_by_rank'])} workers, this run has "
                    f"{self.world_size}: resume with the same number of devices"
                )
            copy_all_(self.theta, state["theta"])
            self._acc = clone_all(state["acc"])
            self._acc_count = int(state["acc_count"])
            self.version = int(state["version"])
            # Optimizer.load_state_dict keeps references to the given tensors: hand it copies.
            self.optimizer.load_state_dict(copy.deepcopy(state["optimizer"]))
            for s, saved in zip(self.schedulers, state["schedulers"], strict=True):
                s.scheduler.load_state_dict(copy.deepcopy(saved))
            self.staleness_counts = Counter({int(k): int(v) for k, v in state["staleness_counts"].items()})
            self.pushes_by_rank = [int(n) for n in state["pushes_by_rank"]]
            self.worker_epochs = int(state["worker_epochs"])


def _check_push(rank: int, grads: Any, version: Any, theta: Sequence[Tensor]) -> None:
    """Refuse a push that is not one dense floating-point tensor per parameter, of its shape."""
    if isinstance(version, bool) or not isinstance(version, int) or version < 0:
        raise TypeError(f"rank {rank} pushed version {version!r}; a version is an integer >= 0")
    if not isinstance(grads, (list, tuple)) or not all(isinstance(g, Tensor) for g in grads):
        raise TypeError(f"rank {rank} pushed {type(grads).__name__}; a push is a list of tensors")
    if len(grads) != len(theta):
        raise ValueError(f"rank {rank} pushed {len(grads)} gradients for {len(theta)} parameters")
    for k, (g, t) in enumerate(zip(grads, theta, strict=True)):
        if g.layout != torch.strided or not g.is_floating_point():
            raise TypeError(f"rank {rank} pushed a {g.layout} {g.dtype} gradient for parameter {k}; need dense float")
        if g.shape != t.shape:
            raise ValueError(
                f"rank {rank} pushed a gradient of shape {tuple(g.shape)} for parameter {k} of shape {tuple(t.shape)}"
            )


def server_optimizer(optimizer: Optimizer, params: Sequence[Tensor], theta: Sequence[Tensor]) -> Optimizer:
    """The user's optimizer rebuilt over ``theta``: same class, param groups, hyperparameters and state.

    ``params[k]`` (the module's trainable parameter) is replaced by ``theta[k]`` in every param group.
    A frozen parameter (``requires_grad=False``) in the optimizer, as ``SGD(self.parameters())``
    with a frozen layer gives, becomes an empty placeholder: it never gets a gradient, so torch's
    optimizer skips it exactly as it skips the frozen parameter on one process, and the group
    layout (and with it the optimizer's state indices) stays the user's.
    """
    theta_of = {id(p): t for p, t in zip(params, theta, strict=True)}
    groups = []
    for group in optimizer.param_groups:
        foreign = [p for p in group["params"] if id(p) not in theta_of and p.requires_grad]
        if foreign:
            raise ValueError(
                f"the optimizer holds {len(foreign)} trainable parameter(s) (shapes "
                f"{[tuple(p.shape) for p in foreign]}) that are not parameters of the module; sasgd's server steps "
                "the module's trainable parameters only. Build the optimizer from self.parameters()"
            )
        hyper = {k: v for k, v in group.items() if k != "params"}
        placed = [theta_of[id(p)] if id(p) in theta_of else torch.empty(0, dtype=p.dtype) for p in group["params"]]
        groups.append({**hyper, "params": placed})
    try:
        rebuilt = type(optimizer)(groups, **optimizer.defaults)
    except TypeError as e:
        raise TypeError(
            f"sasgd rebuilds the optimizer on the server as {type(optimizer).__name__}(param_groups, **defaults) "
            f"and that failed: {e}. Give the optimizer's constructor keyword arguments matching its `defaults`."
        ) from e
    rebuilt.load_state_dict(copy.deepcopy(optimizer.state_dict()))
    return rebuilt


def server_scheduler(scheduler: Any, optimizer: Optimizer, rebuilt: Optimizer) -> Any:
    """A copy of ``scheduler`` (same state and schedule) that drives ``rebuilt`` instead of ``optimizer``."""
    copied = copy.deepcopy(scheduler, {id(optimizer): rebuilt})
    # torch warns on a scheduler's second step() unless its optimizer's step() was patched by the
    # scheduler's constructor; the server always steps the optimizer first, so skip that check.
    mark_scheduler_stepped(copied)
    return copied
