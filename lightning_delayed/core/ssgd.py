"""Plain synchronous data-parallel SGD: ``x <- opt.step(x, mean(g(x)))`` every step.

This is DDP. It has no state beyond the step counter; it exists so that every benchmark and
example can switch between all algorithms with one argument. With a custom communication hook
or wire compression, the mean comes from a
:class:`~lightning_delayed.core.base.GradientCommunicator` (the DDP hook launches it during
backward; it is waited for right after backward, before the optimizer step). Without one, DDP's
own reduction averages ``p.grad`` and, with ``check_finite``, the average is checked here
(``docs/algorithms/ssgd.md``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from lightning_delayed.comm.buckets import NonFiniteReductionError, all_finite
from lightning_delayed.comm.hooks import no_launch_error
from lightning_delayed.core.base import DelayedAlgorithm, GradientCommunicator, set_grads_

if TYPE_CHECKING:
    from collections.abc import Sequence

    from torch import Tensor


def check_finite_grads(params: Sequence[Tensor]) -> None:
    """Raise :class:`NonFiniteReductionError` if any ``p.grad`` holds NaN or Inf.

    One read of each gradient (:func:`~lightning_delayed.comm.buckets.all_finite`: minimum and
    maximum, which are NaN or Inf exactly when an element is) and one host sync.
    """
    grads = [p.grad for p in params if p.grad is not None]
    with torch.no_grad():
        finite = all_finite(grads)
    if not finite:
        raise NonFiniteReductionError(
            "the all-reduced average of the gradients contains NaN or Inf: at least one rank produced a "
            "non-finite gradient. Lower the learning rate, enable gradient clipping "
            "(Trainer(gradient_clip_val=...)), or find the rank that diverged; pass check_finite=False to the "
            "strategy to skip this check."
        )


class SynchronousSGD(DelayedAlgorithm):
    """Counts optimizer steps; the gradient average is DDP's own, or ``grad_comm``'s when given.

    Args:
        params: the module's trainable parameters (needed with ``grad_comm`` or ``check_finite``).
        grad_comm: the gradient communication; ``None`` when DDP's own reduction averages ``p.grad``.
        check_finite: with ``grad_comm=None``, raise :class:`NonFiniteReductionError` when DDP's
            average holds NaN or Inf. The average is the same on every rank, so every rank raises
            at the same step. (A ``grad_comm`` checks its own averages.)
    """

    def __init__(
        self,
        params: Sequence[Tensor] = (),
        grad_comm: GradientCommunicator | None = None,
        check_finite: bool = False,
    ) -> None:
        super().__init__()
        self.params = list(params)
        self.grad_comm = grad_comm
        self.check_finite = check_finite

    def before_optimizer_step(self) -> None:
        if self.grad_comm is None:
            if self.check_finite:
                check_finite_grads(self.params)
            return
        launched = self.grad_comm.take_launched()
        if launched is None:
            raise no_launch_error("synchronous SGD", self.params)
        set_grads_(self.params, launched.wait())

    def after_optimizer_step(self) -> None:
        self.step += 1

    def load_resized_state_dict(self, state: dict[str, Any], local_states: list[dict[str, Any]], *, rank: int) -> None:
        """No per-rank state: the step counter carries over (docs/algorithms/ssgd.md)."""
        self.load_state_dict(state, {})
