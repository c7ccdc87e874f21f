"""Plain synchronous data-parallel SGD: ``x <- opt.step(x, mean(g(x)))`` every step.

This is DDP. It has no state beyond the step counter; it exists so that every benchmark and
example can switch between all algorithms with one argument. With a custom communication hook
or wire compression, the mean comes from a
:class:`~lightning_delayed.core.base.GradientCommunicator` (the DDP hook launches it during
backward; it is waited for right after backward, before the optimizer step).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import Tensor

from lightning_delayed.core.base import DelayedAlgorithm, GradientCommunicator, set_grads_


class SynchronousSGD(DelayedAlgorithm):
    """Counts optimizer steps; the gradient average is DDP's own, or ``grad_comm``'s when given.

    Args:
        params: the module's trainable parameters (needed with ``grad_comm``).
        grad_comm: the gradient communication; ``None`` when DDP's own reduction averages ``p.grad``.
    """

    def __init__(self, params: Sequence[Tensor] = (), grad_comm: GradientCommunicator | None = None) -> None:
        super().__init__()
        self.params = list(params)
        self.grad_comm = grad_comm

    def before_optimizer_step(self) -> None:
        if self.grad_comm is None:
            return
        launched = self.grad_comm.take_launched()
        if launched is None:
            raise RuntimeError(
                "synchronous SGD found no gradient average launched during this step's backward: the DDP "
                "communication hook is not attached or backward did not run"
            )
        set_grads_(self.params, launched.wait())

    def after_optimizer_step(self) -> None:
        self.step += 1

    def load_resized_state_dict(self, state: dict[str, Any], local_states: list[dict[str, Any]]) -> None:
        """No per-rank state: the step counter carries over (docs/algorithms/ssgd.md)."""
        self.load_state_dict(state, {})
