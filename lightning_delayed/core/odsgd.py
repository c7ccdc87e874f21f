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
:math:`w \leftarrow W`. With gradient clipping, :math:`g_k` in the local step and the last
:math:`\bar g` are clipped by the same rule as the gradient the optimizer steps with
(``docs/algorithms/odsgd.md``).

Implementation note: :math:`W` is stepped by swapping its storage into the module's parameters
(``p.data = W_i``) around the user's ``optimizer.step()``, so the optimizer's state stays keyed by
the module's parameters and no weight is copied on the hot path.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from lightning_delayed.comm.buckets import Completed, Pending
from lightning_delayed.comm.hooks import no_launch_error
from lightning_delayed.core.base import (
    DelayedAlgorithm,
    GradientCommunicator,
    clone_all,
    copy_all_,
    param_lrs,
    set_grads_,
)
from lightning_delayed.core.checks import check_real, non_negative, positive

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Sequence

    from torch.optim import Optimizer


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
        if self.local_lr is not None:
            check_real("local_lr", self.local_lr, "None (use the optimizer's current LR) or a number > 0", positive)
        check_real("dc_lambda", self.dc_lambda, "a number >= 0 (0 disables delay compensation)", non_negative)
        if isinstance(self.warmup_steps, bool) or not isinstance(self.warmup_steps, int) or self.warmup_steps < 0:
            raise ValueError(f"warmup_steps must be an integer >= 0, got {self.warmup_steps!r}")


def local_step_(
    w: Tensor, global_w: Tensor, grad: Tensor, lr: float, dc_lambda: float, prev_global_w: Tensor | None
) -> None:
    """``w <- W - lr * (g + dc_lambda * g * g * (W - W_prev))`` in place (no DC term without ``W_prev``).

    Without the DC term (the hot path, every step) it writes ``lr * g`` and then ``W - lr * g``
    straight into ``w``: the same two roundings as ``W - lr * g``, and no temporary.
    """
    if dc_lambda > 0 and prev_global_w is not None:
        direction = grad + dc_lambda * grad * grad * (global_w - prev_global_w)
        w.copy_(global_w - lr * direction)
        return
    torch.mul(grad, lr, out=w)
    torch.sub(global_w, w, out=w)


class ODSGD(DelayedAlgorithm):
    """OD-SGD state and rule around the user's optimizer.

    Args:
        config: the arguments.
        params: the module's trainable parameters, in a fixed order.
        optimizer: the user's optimizer; it steps the global weights ``W``.
        grad_comm: the gradient communication (see :class:`GradientCommunicator`).
        clip_grads: the user's gradient clipping, or ``None`` for none: clips, in place, the gradients
            held in ``p.grad`` of ``params`` (the strategy passes Lightning's, with the Trainer's
            ``gradient_clip_val`` and ``gradient_clip_algorithm``). It is applied to the own gradient
            before the local step and to the last mean before the end-of-training step; the
            optimizer's gradient at every other step is clipped by whoever drives the loop.
    """

    def __init__(
        self,
        config: ODSGDConfig,
        params: Sequence[Tensor],
        optimizer: Optimizer,
        grad_comm: GradientCommunicator,
        clip_grads: Callable[[], None] | None = None,
    ) -> None:
        super().__init__()
        self.config = config
        self.params = list(params)
        self.optimizer = optimizer
        self.grad_comm = grad_comm
        self.clip_grads = clip_grads
        self.global_params: list[Tensor] | None = None  # W; None while the module itself holds W
        # W_prev (only when dc_lambda > 0): scratch space of one step, rewritten before every read, so
        # never checkpointed; kept between steps only to reuse its memory.
        self.prev_global_params: list[Tensor] | None = None
        self.pending: Pending | None = None  # mean(g) launched at step k-1
        self._local_grads: list[Tensor | None] = []
        self._local_data: list[Tensor] = []
        self._updated = False

    @property
    def delayed(self) -> bool:
        return self.step >= self.config.warmup_steps

    @property
    def skips_optimizer_step(self) -> bool:
        """Whether the coming step leaves ``W`` and the optimizer alone (k = T0: no mean is pending yet)."""
        return self.delayed and self.pending is None

    def before_optimizer_step(self) -> None:
        launched = self.grad_comm.take_launched()
        if launched is None:
            raise no_launch_error("OD-SGD", self.params)
        if not self.delayed:
            # Warm-up: plain synchronous SGD; the module holds W and steps with this step's mean.
            set_grads_(self.params, launched.wait())
            return
        if self.global_params is None:  # first delayed step: W = x
            self.global_params = clone_all(self.params)
        if self.clip_grads is not None and any(p.grad is not None for p in self.params):
            # The own gradient went out unclipped (the hook sends it during backward, before any
            # clipping); the local step takes it clipped, like the gradient the optimizer steps W with.
            self.clip_grads()
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
            if self.clip_grads is not None:
                self.clip_grads()  # this step runs outside the training loop, so nothing else clips it
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
        # Checkpoints written before W_prev was dropped from them still hold it; it would be
        # overwritten before being read, so it is ignored.
        self.prev_global_params = None
        pending = to_params(state["pending_mean_grads"])
        self.pending = None if pending is None else Completed(pending)
        local = to_params(local_state.get("local_params"))
        if local is not None:
            copy_all_(self.params, local)

    def load_resized_state_dict(self, state: dict[str, Any], local_states: list[dict[str, Any]], *, rank: int) -> None:
        """Resume from ``W`` with the pending mean applied (the end-of-fit rule, docs/algorithms/odsgd.md).

        The ranks' local weights ``w`` are dropped: every rank continues from the same ``W``, and the
        next delayed step starts again as the first one (no pending mean, ``W`` stays for one step).
        """
        self.load_state_dict(state, {})
        self.finish()
