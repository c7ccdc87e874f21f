"""Plain synchronous data-parallel SGD: ``x <- opt.step(x, mean(g(x)))`` every step.

This is DDP. It has no state beyond the step counter; it exists so that every benchmark and
example can switch between all algorithms with one argument.
"""

from __future__ import annotations

from lightning_delayed.core.base import DelayedAlgorithm


class SynchronousSGD(DelayedAlgorithm):
    """Counts optimizer steps; the gradient average is DDP's own, inside backward."""

    def after_optimizer_step(self) -> None:
        self.step += 1
