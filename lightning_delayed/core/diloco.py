r"""DiLoCo: local steps with the user's (inner) optimizer, an outer SGD step on the averaged pseudo-gradient.

Douillard et al. *DiLoCo: Distributed Low-Communication Training of Language Models.*
arXiv:2311.08105 (2023). https://arxiv.org/abs/2311.08105

State: the global copy :math:`\theta` of the parameters (equal on all ranks, starts as
:math:`x_0`) and an outer optimizer ``torch.optim.SGD(theta, lr=outer_lr, momentum=outer_momentum,
nesterov=nesterov)``. The user's optimizer is the inner optimizer; its state stays per rank and is
never reset. After the optimizer step of every step with :math:`(k + 1) \bmod H = 0`, blocking:

.. math::

    \Delta &\leftarrow \mathrm{mean}(\theta - x) \qquad \text{(pseudo-gradient, parameters only)} \\
    \theta &\leftarrow \mathrm{outer.step}(\theta, \mathrm{grad} = \Delta) \\
    x &\leftarrow \theta, \qquad \text{float buffers} \leftarrow \mathrm{mean}(\text{float buffers})

The pseudo-gradient and the float buffers travel in one launch with keys ``"model/<i>"``, so a
compressing hook sends them in fp16/bf16, or int8/int4 in one low-bit bucket, with error
feedback. End of training: if the number of steps is not a multiple of :math:`H`, one more such
synchronisation, as a one-off (full-precision) average. Validation and checkpoints see
:math:`\theta` with the float buffers averaged. With ``outer_lr=1`` and ``outer_momentum=0`` this
is ``local_sgd`` with ``sync_every=H`` (up to float rounding:
:math:`\theta - \mathrm{mean}(\theta - x)` instead of :math:`\mathrm{mean}(x)`).
See ``docs/algorithms/diloco.md``.
"""

from __future__ import annotations

import contextlib
import copy
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor
from torch.optim import SGD, Optimizer

from lightning_delayed.core.averaging import (
    AveragingAlgorithm,
    ParameterCommunicator,
    check_average_buffers,
    check_sync_every,
    mean_tensors,
)
from lightning_delayed.core.base import clone_all, copy_all_

if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence


def _is_number(value: object) -> bool:
    return not isinstance(value, bool) and isinstance(value, (int, float))


def check_outer_lr(value: object) -> float:
    if not _is_number(value) or not math.isfinite(float(value)) or float(value) <= 0:  # type: ignore[arg-type]
        raise ValueError(f"outer_lr (eta_o) must be a finite number > 0, got {value!r}")
    return float(value)  # type: ignore[arg-type]


def check_outer_momentum(value: object) -> float:
    if not _is_number(value) or not 0 <= float(value) < 1:  # type: ignore[arg-type]  # NaN fails the range test
        raise ValueError(f"outer_momentum (mu) must be a number in [0, 1), got {value!r}")
    return float(value)  # type: ignore[arg-type]


def check_nesterov(value: object) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"nesterov must be True or False, got {value!r}")
    return value


@dataclass(frozen=True)
class DiLoCoConfig:
    """Arguments of DiLoCo.

    Args:
        sync_every: :math:`H \\ge 1`, inner optimizer steps between synchronisations.
        outer_lr: :math:`\\eta_o > 0`, learning rate of the outer SGD (the paper's 0.7).
        outer_momentum: :math:`\\mu \\in [0, 1)`, momentum of the outer SGD (the paper's 0.9).
        nesterov: Nesterov momentum for the outer SGD (the paper's choice); ignored when ``outer_momentum=0``.
        average_buffers: average floating-point buffers (BatchNorm statistics) at every synchronisation.
    """

    sync_every: int = 50
    outer_lr: float = 0.7
    outer_momentum: float = 0.9
    nesterov: bool = True
    average_buffers: bool = True

    def __post_init__(self) -> None:
        check_sync_every(self.sync_every)
        check_outer_lr(self.outer_lr)
        check_outer_momentum(self.outer_momentum)
        check_nesterov(self.nesterov)
        check_average_buffers(self.average_buffers)


def outer_sgd(params: Sequence[Tensor], outer_lr: float, outer_momentum: float, nesterov: bool) -> SGD:
    """The outer optimizer over ``params`` (slices of ``theta``): torch's SGD, Nesterov only with momentum."""
    # torch refuses nesterov=True without momentum; the rule says nesterov is then simply irrelevant.
    return SGD(
        list(params),
        lr=float(outer_lr),
        momentum=float(outer_momentum),
        nesterov=bool(nesterov) and outer_momentum > 0,
    )


def pseudo_gradient(theta: Sequence[Tensor], x: Sequence[Tensor], out: Sequence[Tensor] | None = None) -> list[Tensor]:
    """``theta - x`` per tensor: fresh tensors, or written into ``out`` (a scratch list reused across syncs,
    safe because the communicator copies what it is given before ``launch`` returns)."""
    with torch.no_grad():
        if out is None:
            return [t - xi.detach() for t, xi in zip(theta, x, strict=True)]
        for t, xi, o in zip(theta, x, out, strict=True):
            torch.sub(t, xi.detach(), out=o)
        return list(out)


def outer_step_(outer: Optimizer, theta: Sequence[Tensor], delta: Sequence[Tensor]) -> None:
    """``theta <- outer.step(theta, grad=delta)``; the gradients are dropped afterwards."""
    for t, d in zip(theta, delta, strict=True):
        t.grad = d
    outer.step()
    for t in theta:
        t.grad = None


class DiLoCoBase(AveragingAlgorithm):
    """What DiLoCo and Streaming DiLoCo share: ``theta``, the float buffers, consensus and checkpoints.

    Args:
        params: the module's trainable parameters (the first part of ``x``).
        buffers: its floating-point buffers when they are averaged (the rest of ``x``), else empty.
        optimizer: the user's (inner) optimizer.
        comm: the communication (default: bucketed all-reduce).

    Attributes:
        global_params: ``theta``, the global copy of the parameters (identical on every rank).
        fragments: the parameter indices of each fragment (DiLoCo: one fragment, every parameter).
        outer_optimizers: the outer SGD of each fragment, over its part of ``theta``.
    """

    def __init__(
        self,
        params: Sequence[Tensor],
        buffers: Sequence[Tensor],
        optimizer: Optimizer,
        comm: ParameterCommunicator | None = None,
    ) -> None:
        super().__init__([*params, *buffers], optimizer, comm)
        self.params = list(params)
        self.buffers = list(buffers)
        # theta starts as x0: every rank holds the same weights when the algorithm is built (after DDP's broadcast).
        self.global_params = [p.detach().clone() for p in self.params]
        self.fragments: list[list[int]] = [list(range(len(self.params)))]
        self._delta: list[Tensor] | None = None  # scratch for the pseudo-gradients, allocated at the first sync
        self.outer_optimizers: list[Optimizer] = []  # one per fragment, set by the subclass

    @property
    def buffer_keys(self) -> list[str]:
        return self.keys[len(self.params) :]

    def pseudo_gradients(self, idx: Sequence[int]) -> list[Tensor]:
        """``theta_i - x_i`` for the parameter indices ``idx``, in buffers reused from one sync to the next."""
        if self._delta is None:
            self._delta = [torch.empty_like(t) for t in self.global_params]
        return pseudo_gradient(
            [self.global_params[i] for i in idx], [self.params[i] for i in idx], [self._delta[i] for i in idx]
        )

    def outer_step_fragment_(self, q: int, delta: Sequence[Tensor]) -> None:
        """``theta_q <- outer_q.step(theta_q, grad=delta)`` for fragment ``q`` (DiLoCo: the one fragment)."""
        outer_step_(self.outer_optimizers[q], [self.global_params[i] for i in self.fragments[q]], delta)

    def sync_(self, fragments: Sequence[int], stream: bool, buffers: bool = True) -> None:
        """Blocking synchronisation of the given fragments (and the float buffers), in one launch.

        ``Delta_q <- mean(theta_q - x_q)``, ``theta_q <- outer_q.step(theta_q, Delta_q)``, ``x_q <- theta_q``;
        ``buffers <- mean(buffers)``. ``stream=False``: a one-off average (``keys=None``: full precision,
        no error-feedback state), as at the end of training.
        """
        idx = [i for q in fragments for i in self.fragments[q]]
        floats = self.buffers if buffers else []
        if not idx and not floats:
            return
        send = [*self.pseudo_gradients(idx), *floats]
        keys = [*(self.keys[i] for i in idx), *self.buffer_keys[: len(floats)]] if stream else None
        average = self.comm.launch(send, keys=keys, what="pseudo-gradients").wait()
        offset = 0
        for q in fragments:
            n = len(self.fragments[q])
            self.outer_step_fragment_(q, average[offset : offset + n])
            offset += n
        if idx:  # torch's foreach copy refuses empty lists
            copy_all_([self.params[i] for i in idx], [self.global_params[i] for i in idx])
        if floats:
            copy_all_(floats, average[len(idx) :])

    @contextlib.contextmanager
    def consensus(self) -> Iterator[None]:
        """``theta`` in the parameters and the (one-off) mean of the float buffers; ``x`` restored after."""
        own = clone_all(self.tensors)
        copy_all_(self.params, self.global_params)
        if self.buffers:
            copy_all_(self.buffers, self.comm.launch(self.buffers, keys=None, what="buffers").wait())
        try:
            yield
        finally:
            copy_all_(self.tensors, own)

    def load_resized_state_dict(self, state: dict[str, Any], local_states: list[dict[str, Any]], *, rank: int) -> None:
        """Resume on another number of ranks (docs/algorithms/diloco.md, "Resuming on another number of ranks").

        ``theta`` (every fragment) and every outer optimizer's state are kept as saved (they are equal
        on every rank); every rank starts with ``x = theta``; rank ``r'`` takes the inner optimizer
        state of saved rank ``r' mod N``; fragments in flight are dropped (their pseudo-gradients are
        lost, ``theta`` stays consistent); the step counter ``k`` continues, so the schedule does too.
        The float buffers start as the mean of the saved ranks'. The model-averaging rule of
        :class:`AveragingAlgorithm` (the mean of the saved ``x``) would leave ``theta`` and the outer
        momentum behind, so it is not inherited.
        """
        if not local_states:
            raise ValueError("the checkpoint holds no per-rank state (local_states is empty); it cannot be resized")
        DiLoCoBase.load_state_dict(self, state, {})  # the shared part only: not the fragments in flight
        self._drop_pending()
        copy_all_(self.params, self.global_params)
        n_params = len(self.params)
        saved_x = [local["tensors"] for local in local_states]
        if self.buffers:
            copy_all_(self.buffers, self.to_tensors(mean_tensors(saved_x))[n_params:])
        inner = local_states[rank % len(local_states)].get("optimizer")
        if inner is not None:
            self.optimizer.load_state_dict(copy.deepcopy(inner))

    def _drop_pending(self) -> None:
        """Forget the fragments in flight (Streaming DiLoCo); DiLoCo has none."""

    def state_dict(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "global_params": clone_all(self.global_params),
            "outer_optimizers": [copy.deepcopy(o.state_dict()) for o in self.outer_optimizers],
        }

    def load_state_dict(self, state: dict[str, Any], local_state: dict[str, Any]) -> None:
        super().load_state_dict(state, local_state)
        saved = state["global_params"]
        copy_all_(
            self.global_params,
            [t.to(device=g.device, dtype=g.dtype) for t, g in zip(saved, self.global_params, strict=True)],
        )
        outer_states = state["outer_optimizers"]
        if len(outer_states) != len(self.outer_optimizers):
            raise ValueError(
                f"the checkpoint holds {len(outer_states)} outer optimizer states but this run has "
                f"{len(self.outer_optimizers)} (num_fragments changed?); resume with the same settings"
            )
        for outer, saved_state in zip(self.outer_optimizers, outer_states, strict=True):
            outer.load_state_dict(copy.deepcopy(saved_state))


class DiLoCo(DiLoCoBase):
    """DiLoCo around the user's optimizer (see the module docstring)."""

    def __init__(
        self,
        config: DiLoCoConfig,
        params: Sequence[Tensor],
        buffers: Sequence[Tensor],
        optimizer: Optimizer,
        comm: ParameterCommunicator | None = None,
    ) -> None:
        super().__init__(params, buffers, optimizer, comm)
        self.config = config
        self.outer_optimizers = [outer_sgd(self.global_params, config.outer_lr, config.outer_momentum, config.nesterov)]

    def after_optimizer_step(self) -> None:
        if self.is_sync_step(self.config.sync_every):
            self.sync_(range(len(self.fragments)), stream=True)
        self.step += 1

    def finish(self) -> None:
        # After a synchronisation x == theta and the buffers are the mean on every rank: nothing left to do.
        if self.step % self.config.sync_every != 0:
            self.sync_(range(len(self.fragments)), stream=False)
