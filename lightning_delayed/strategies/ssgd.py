"""``ssgd``: plain synchronous data-parallel SGD (DDP), the baseline of every benchmark."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor
from torch.optim import Optimizer
from typing_extensions import override

from lightning_delayed.core.base import DelayedAlgorithm
from lightning_delayed.core.ssgd import SynchronousSGD
from lightning_delayed.strategies.base import DelayedStrategy


class SSGDStrategy(DelayedStrategy):
    """Synchronous SGD: ``x <- opt.step(x, mean(g(x)))`` every step.

    Gradients are averaged by DDP's own C++ all-reduce inside backward (no Python hook), which is
    the fastest synchronous baseline. Accepts every :class:`DelayedStrategy` argument.
    """

    strategy_name = "ssgd"

    @override
    def build_algorithm(self, params: Sequence[Tensor], optimizer: Optimizer) -> DelayedAlgorithm:
        return SynchronousSGD()
