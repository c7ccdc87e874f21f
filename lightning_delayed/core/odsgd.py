r"""OD-SGD: one-step delay SGD.

Xu, Dong, Xu, Liao. *OD-SGD: One-step Delay Stochastic Gradient Descent for Distributed
Training.* arXiv:2005.06728 (2020). https://arxiv.org/abs/2005.06728

Every rank keeps the global weights :math:`W` (identical on all ranks, stepped by the user's
optimizer) and local weights :math:`w` (where forward and backward run). The gradient all-reduce
of step :math:`k` is consumed at step :math:`k+1`, so it overlaps a whole step of computation:

.. math::

    g_k &= \nabla f(w_k) \qquad \text{launch } \bar g_k = \mathrm{mean}(g_k) \\
    W_{k} &= \mathrm{opt.step}(W_{k-1}, \bar g_{k-1}) \qquad (\text{skipped at } k = T_0) \\
    w_{k+1} &= W_k - \eta_l \left(g_k + \lambda\, g_k \odot g_k \odot (W_k - W_{k-1})\right)

For :math:`k < T_0` (warm-up) it is plain synchronous SGD with :math:`w = W`. At the end of
training the last pending mean is applied, :math:`W \leftarrow \mathrm{opt.step}(W, \bar g)` and
:math:`w \leftarrow W`.

Implementation note: :math:`W` is stepped by swapping its storage into the module's parameters
(``p.data = W_i``) around the user's ``optimizer.step()``, so the optimizer's state stays keyed by
the module's parameters and no weight is copied on the hot path.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer

from lightning_delayed.comm.buckets import Completed, Pending
from lightning_delayed.core.base import (
    DelayedAlgorithm,
    GradientCommunicator,
    clone_all,
    copy_all_,
    param_lrs,
    set_grads_,
)


@dataclass(frozen=True)
class ODSGDConfig:
    """Arguments of OD-SGD.

    Args:
        local_lr: :math:`\\eta_l`, the learning rate of the local compensation step. ``None`` uses the
            current learning rate of each parameter's optimizer param group.
        dc_lambda: :math:`\\lambda \\ge 0`, weight of the delay-compensation term (0: none).
        warmup_steps: :math:`T_0 \\ge 0`, synchronous SGD steps before delaying starts.
    """

    local_lr: float | None = None
    dc_lambda: float = 0.0
    warmup_steps: int = 0

    def __post_init__(self) -> None:
        if self.local_lr is not None and (
            isinstance(self.local_lr, bool) or not isinstance(self.local_lr, (int, float)) or self.local_lr <= 0
        ):
            raise ValueError(
                f"local_lr must be None (use the optimizer's current LR) or a number > 0, got {self.local_lr!r}"
            )
        if isinstance(self.dc_lambda, bool) or not isinstance(self.dc_lambda, (int, float)) or self.dc_lambda < 0:
            raise ValueError(f"dc_lambda must be a number >= 0 (0 disables delay compensation), got {self.dc_lambda!r}")
        if isinstance(self.warmup_steps, bool) or not isinstance(self.warmup_steps, int) or self.warmup_steps < 0:
            raise ValueError(f"warmup_steps must be an integer >= 0, got {self.warmup_steps!r}")


def local_step_(
    w: Tensor, global_w: Tensor, grad: Tensor, lr: float, dc_lambda: float, prev_global_w: Tensor | None
) -> None:
    """``w <- W - lr * (g + dc_lambda * g * g * (W - W_prev))`` in place (no DC term without ``W_prev``)."""
    if dc_lambda > 0 and prev_global_w is not None:
        direction = grad + dc_lambda * grad * grad * (global_w - prev_global_w)
    else:
        direction = grad
    w.copy_(global_w - lr * direction)


class ODSGD(DelayedAlgorithm):
    """OD-SGD state and rule around the user's optimizer.

    Args:
        config: the arguments.
        params: the module's trainable parameters, in a fixed order.
        optimizer: the user's optimizer; it steps the global weights ``W``.
        grad_comm: the gradient communication (see :class:`GradientCommunicator`).
    """

    def __init__(
        self,
        config: ODSGDConfig,
        params: Sequence[Tensor],
        optimizer: Optimizer,
        grad_comm: GradientCommunicator,
    ) -> None:
        super().__init__()
        self.config = config
        self.params = list(params)
        self.optimizer = optimizer
        self.grad_comm = grad_comm
        self.global_params: list[Tensor] | None = None  # W; None while the module itself holds W
        self.prev_global_params: list[Tensor] | None = None  # W_prev, kept only when dc_lambda > 0
        self.pending: Pending | None = None  # mean(g) launched at step k-1
        self._local_grads: list[Tensor | None] = []
        self._local_data: list[Tensor] = []
        self._updated = False

    @property
    def delayed(self) -> bool:
        return self.step >= self.config.warmup_steps

    def before_optimizer_step(self) -> None:
        launched = self.grad_comm.take_launched()
        if launched is None:
            raise RuntimeError(
                "OD-SGD found no gradient all-reduce launched during this step's backward: the DDP "
                "communication hook is not attached or backward did not run"
            )
        if not self.delayed:
            # Warm-up: plain synchronous SGD; the module holds W and steps with this step's mean.
            set_grads_(self.params, launched.wait())
            return
        if self.global_params is None:  # first delayed step: W = x
            self.global_params = clone_all(self.params)
        previous, self.pending = self.pending, launched
        self._local_grads = [p.grad for p in self.params]
        self._updated = previous is not None
        if previous is None:
            # k = T0: nothing to apply, W stays. grad=None makes every torch optimizer skip the step.
            for p in self.params:
                p.grad = None
            return
        mean_grads = previous.wait()
        if self.config.dc_lambda > 0:
            if self.prev_global_params is None:
                self.prev_global_params = clone_all(self.global_params)
            else:
                copy_all_(self.prev_global_params, self.global_params)
        # Swap W into the module so the user's optimizer (state keyed by p) steps W with mean(g).
        self._local_data = [p.data for p in self.params]
        for p, global_w, mean_g in zip(self.params, self.global_params, mean_grads, strict=True):
            p.data = global_w
            p.grad = mean_g

    def after_optimizer_step(self) -> None:
        if self.delayed:
            assert self.global_params is not None
            if self._updated:
                for p, local in zip(self.params, self._local_data, strict=True):
                    p.data = local  # W_i keeps the updated global weights
                self._local_data = []
            lrs = self._local_lrs()
            prev = self.prev_global_params if self._updated else None
            with torch.no_grad():
                for i, (p, global_w, grad) in enumerate(
                    zip(self.params, self.global_params, self._local_grads, strict=True)
                ):
                    if grad is None:  # parameter without gradient this step: w = W
                        p.copy_(global_w)
                        continue
                    local_step_(p, global_w, grad, lrs[i], self.config.dc_lambda, None if prev is None else prev[i])
                    p.grad = grad  # leave the own gradient visible, as plain training would
            self._local_grads = []
        self.step += 1

    def _local_lrs(self) -> list[float]:
        if self.config.local_lr is not None:
            return [float(self.config.local_lr)] * len(self.params)
        return param_lrs(self.optimizer, self.params)

    def finish(self) -> None:
        """Apply the last pending mean to ``W`` and set ``w <- W``."""
        if self.global_params is None:
            return
        pending, self.pending = self.pending, None
        mean_grads = pending.wait() if pending is not None else None
        for i, (p, global_w) in enumerate(zip(self.params, self.global_params, strict=True)):
            p.data = global_w
            p.grad = None if mean_grads is None else mean_grads[i]
        if mean_grads is not None:
            self.optimizer.step()
        for p in self.params:
            p.grad = None
        # The module now holds W itself; a later delayed step starts again from W = x.
        self.global_params = None
        self.prev_global_params = None

    @contextlib.contextmanager
    def consensus(self) -> Iterator[None]:
        if self.global_params is None:
            yield
            return
        local = [p.data for p in self.params]
        for p, global_w in zip(self.params, self.global_params, strict=True):
            p.data = global_w
        try:
            yield
        finally:
            for p, data in zip(self.params, local, strict=True):
                p.data = data

    def state_dict(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "global_params": None if self.global_params is None else clone_all(self.global_params),
            "prev_global_params": None if self.prev_global_params is None else clone_all(self.prev_global_params),
            # Waiting here only receives the mean early; it is applied at the same step as always.
            "pending_mean_grads": None if self.pending is None else clone_all(self.pending.wait()),
        }

    def local_state_dict(self) -> dict[str, Any]:
        if self.global_params is None:
            return {}
        return {"local_params": clone_all(self.params)}

    def load_state_dict(self, state: dict[str, Any], local_state: dict[str, Any]) -> None:
        super().load_state_dict(state, local_state)

        def to_params(tensors: list[Tensor] | None) -> list[Tensor] | None:
            if tensors is None:
                return None
            return [t.to(device=p.device, dtype=p.dtype) for t, p in zip(tensors, self.params, strict=True)]

        self.global_params = to_params(state["global_params"])
        self.prev_global_params = to_params(state["prev_global_params"])
        pending = to_params(state["pending_mean_grads"])
        self.pending = None if pending is None else Completed(pending)
        local = to_params(local_state.get("local_params"))
        if local is not None:
            copy_all_(self.params, local)

    def load_resized_state_dict(self, state: dict[str, Any], local_states: list[dict[str, Any]]) -> None:
        """Resume from ``W`` with the pending mean applied (the end-of-fit rule, docs/algorithms/odsgd.md).

        The ranks' local weights ``w`` are dropped: every rank continues from the same ``W``, and the
        next delayed step starts again as the first one (no pending mean, ``W`` stays for one step).
        """
        self.load_state_dict(state, {})
        self.finish()
