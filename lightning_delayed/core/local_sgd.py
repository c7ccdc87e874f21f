r"""Local SGD: blocking periodic model averaging (the baseline the overlapped methods improve on).

Lin, Stich, Patel, Jaggi. *Don't Use Large Mini-Batches, Use Local SGD.* ICLR 2020.
https://arxiv.org/abs/1808.07217

Each rank steps on its own gradient with the user's optimizer. After the optimizer step of every
step :math:`k` with :math:`(k + 1) \bmod \tau = 0`:

.. math::

    x \leftarrow \mathrm{mean}(x) \qquad \text{(blocking)}
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from lightning_delayed.core.averaging import (
    AveragingAlgorithm,
    ParameterCommunicator,
    check_average_buffers,
    check_sync_every,
)

if TYPE_CHECKING:
    from collections.abc import Sequence

    from torch import Tensor
    from torch.optim import Optimizer


@dataclass(frozen=True)
class LocalSGDConfig:
    """Arguments of Local SGD.

    Args:
        sync_every: :math:`\\tau \\ge 1`, optimizer steps between averages.
        average_buffers: also average floating-point buffers (BatchNorm statistics).
    """

    sync_every: int = 4
    average_buffers: bool = True

    def __post_init__(self) -> None:
        check_sync_every(self.sync_every)
        check_average_buffers(self.average_buffers)


class LocalSGD(AveragingAlgorithm):
    """Local SGD around the user's optimizer (see the module docstring)."""

    def __init__(
        self,
        config: LocalSGDConfig,
        tensors: Sequence[Tensor],
        optimizer: Optimizer,
        comm: ParameterCommunicator | None = None,
    ) -> None:
        super().__init__(tensors, optimizer, comm)
        self.config = config

    def after_optimizer_step(self) -> None:
        if self.is_sync_step(self.config.sync_every):
            self.average_now_()
        self.step += 1
