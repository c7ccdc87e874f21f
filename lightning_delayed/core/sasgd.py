r"""``sasgd``: the workers of staleness-aware asynchronous SGD, and the rule's arguments.

Zhang, Gupta, Lian, Liu. *Staleness-aware Async-SGD for Distributed Deep Learning*. IJCAI 2016,
arXiv:1511.05950. With ``staleness_aware=False`` it is plain asynchronous SGD (the paper's
baseline, registered as ``asgd``).

:class:`SASGDConfig` holds the rule's arguments. Each :class:`SASGDWorker` reaches the server
through a :class:`ServerLink` and never waits for the other workers::

    worker, forever:   (theta, j) <- pull();  g <- grad at theta;  push(g, j)

The server and its update rule are in :mod:`lightning_delayed.core.sasgd_server`
(``docs/algorithms/sasgd.md``); :mod:`lightning_delayed.comm.parameter_server` carries pushes and
pulls over ``torch.distributed.rpc``.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import torch
from torch import Tensor

from lightning_delayed.comm.stats import record_staleness
from lightning_delayed.core.base import DelayedAlgorithm, clone_all, copy_all_
from lightning_delayed.core.checks import check_real, positive

MIN_WORKER_TIMEOUT_S = 1.0
"""The smallest ``worker_timeout`` accepted (seconds); heartbeats are sent every ``min(1 s, worker_timeout / 10)``."""

if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence

    from torch.optim import Optimizer

    from lightning_delayed.comm.compression import Compressor
    from lightning_delayed.core.sasgd_server import ParameterServer, PushRecord


@dataclass(frozen=True)
class SASGDConfig:
    """Arguments of the rule.

    Args:
        softsync: ``n`` of n-softsync, ``1 <= n <= N``; ``None`` means ``N`` (fully asynchronous).
        staleness_aware: divide each gradient by ``max(sigma, 1)``; ``False`` is plain ASGD.
        worker_timeout: seconds a connected worker may send no push or heartbeat before it counts
            as lost (a worker whose process ends counts as lost at once).
    """

    softsync: int | None = None
    staleness_aware: bool = True
    worker_timeout: float = 60.0

    def __post_init__(self) -> None:
        if self.softsync is not None and (
            isinstance(self.softsync, bool) or not isinstance(self.softsync, int) or self.softsync < 1
        ):
            raise ValueError(f"softsync must be an integer n with 1 <= n <= N (or None for N), got {self.softsync!r}")
        if not isinstance(self.staleness_aware, bool):
            raise TypeError(f"staleness_aware must be True or False, got {self.staleness_aware!r}")
        check_real("worker_timeout", self.worker_timeout, "> 0 seconds", positive)
        if self.worker_timeout < MIN_WORKER_TIMEOUT_S:
            raise ValueError(
                f"worker_timeout={self.worker_timeout!r} s is below the minimum of {MIN_WORKER_TIMEOUT_S:g} s: a "
                "worker counts as lost when the server has not heard from it for worker_timeout seconds, and one "
                "heartbeat delayed by a busy host, a garbage-collection pause or checkpoint I/O would then stop a "
                "healthy job. Use worker_timeout >= 1 (default 60)."
            )

    def gradients_per_update(self, world_size: int) -> int:
        """``c = max(1, N // n)``; raises if ``softsync`` exceeds the number of workers."""
        n = world_size if self.softsync is None else self.softsync
        if n > world_size:
            raise ValueError(
                f"softsync={n} exceeds the number of workers N={world_size}: n-softsync needs 1 <= n <= N "
                f"(n=N updates on every gradient; n=1 once per N gradients)"
            )
        return max(1, world_size // n)


class ServerLink(Protocol):
    """How a worker reaches the server (:class:`~lightning_delayed.comm.parameter_server.ServerClient`)."""

    def push(self, grads: Sequence[Tensor], version: int) -> tuple[PushRecord, list[Tensor], int, list[float]]: ...

    def pull(self) -> tuple[list[Tensor], int, list[float]]: ...

    def finish(self) -> None: ...


class SASGDWorker(DelayedAlgorithm):
    """One worker of SASGD: push the gradient computed at version ``j``, pull the newest ``theta``.

    The user's optimizer never steps on a worker; :meth:`after_optimizer_step` replaces its step
    (the strategy routes Lightning's ``optimizer.step()`` here). After every exchange the worker's
    optimizer's learning rates are set to the server's, so LR monitors show the LR in use.

    Args:
        params: the module's trainable parameters (where the worker computes its gradient).
        optimizer: the user's optimizer on this worker (only its learning rates are updated).
        link: the connection to the server.
        server: the server object, on the server's rank only (its state goes into checkpoints).
        compressor: sends the pushed gradients in fp16/bf16 with error feedback (the server casts
            them back to ``theta``'s dtype). ``theta`` is pulled at full precision, so every worker
            computes its gradient at exactly the server's weights.
    """

    def __init__(
        self,
        params: Sequence[Tensor],
        optimizer: Optimizer,
        link: ServerLink,
        server: ParameterServer | None = None,
        compressor: Compressor | None = None,
    ) -> None:
        super().__init__()
        self.compressor = compressor
        self.params = list(params)
        self.optimizer = optimizer
        self.link = link
        self.server = server
        self.version = 0
        self.finished = False
        self.last: PushRecord | None = None
        """What the server did with this worker's last gradient (its staleness and scale)."""

    def _adopt(self, theta: Sequence[Tensor], version: int, lrs: Sequence[float]) -> None:
        copy_all_(self.params, [t.to(p.device, p.dtype) for t, p in zip(theta, self.params, strict=True)])
        self.version = version
        for group, lr in zip(self.optimizer.param_groups, lrs, strict=True):
            group["lr"] = lr

    def start(self) -> None:
        """Pull ``theta`` before the first step (all workers start from the server's weights)."""
        self._adopt(*self.link.pull())

    def after_optimizer_step(self) -> None:
        # No copy of the gradient here: the push is synchronous (RPC serializes it, the in-process
        # server accumulates it under its lock) and returns before anything overwrites p.grad.
        grads = [torch.zeros(p.shape, dtype=p.dtype) if p.grad is None else p.grad.detach().cpu() for p in self.params]
        if self.compressor is not None:
            grads = [self.compressor.compress(g, key=f"grad{i}") for i, g in enumerate(grads)]
        record, theta, version, lrs = self.link.push(grads, self.version)
        self._adopt(theta, version, lrs)
        self.last = record
        record_staleness(record.staleness)
        self.step += 1

    def finish(self) -> None:
        """Wait for every worker to finish, then hold the server's final ``theta``."""
        if self.finished:
            return
        self.link.finish()
        self._adopt(*self.link.pull())
        self.finished = True

    @contextlib.contextmanager
    def consensus(self) -> Iterator[None]:
        """The server's current ``theta`` in the module; this worker's weights and version after.

        After :meth:`finish` the module already holds the final ``theta`` and the server may be gone.
        """
        if self.finished:
            yield
            return
        own, version = clone_all(self.params), self.version
        lrs = [float(g["lr"]) for g in self.optimizer.param_groups]
        self._adopt(*self.link.pull())
        try:
            yield
        finally:
            copy_all_(self.params, own)
            self.version = version
            for group, lr in zip(self.optimizer.param_groups, lrs, strict=True):
                group["lr"] = lr

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        if self.server is not None:
            state["server"] = self.server.state_dict()
        return state

    def local_state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {"steps": self.step}
        if self.compressor is not None:
            state["compressor"] = self.compressor.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any], local_state: dict[str, Any]) -> None:
        """Restore the server (on its rank) and this worker's counter; call :meth:`start` after."""
        if self.server is not None:
            self.server.load_state_dict(state["server"])
        self.step = int(local_state["steps"])
        if self.compressor is not None and "compressor" in local_state:
            self.compressor.load_state_dict(local_state["compressor"])
