"""The model-averaging strategies: ``local_sgd``, ``dasgd``, ``cocodsgd``, ``overlap_local_sgd``.

See the rules in :mod:`lightning_delayed.core.local_sgd`, :mod:`lightning_delayed.core.dasgd`,
:mod:`lightning_delayed.core.overlap_local_sgd` and ``docs/algorithms/<name>.md``.

Shared by all four (:class:`AveragingStrategy`):

* no gradient is communicated: a DDP hook (:class:`~lightning_delayed.comm.hooks.LocalGradientHook`)
  returns each rank's own gradient without a collective, so DDP's reduction costs nothing;
* DDP's ``broadcast_buffers`` defaults to ``False``, so buffers evolve locally between averages;
* ``x`` is the trainable parameters plus, with ``average_buffers=True``, the float buffers;
* the final synchronous average (end of ``fit``) and the validation consensus are uniform means;
* the averages go through the strategy's :attr:`~lightning_delayed.strategies.base.DelayedStrategy.communicator`
  (``comm_hook``, ``compression``). With compression the rule's averages (keys ``"model/<i>"``)
  are sent in fp16/bf16, or through the int8/int4 reduce-scatter, with error feedback; the final
  average and the validation consensus are one-off averages and stay at full precision, so the
  final model is an exact mean.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from lightning.pytorch.utilities.data import extract_batch_size
from typing_extensions import override

from lightning_delayed.comm.hooks import LocalGradientHook
from lightning_delayed.core.averaging import model_state
from lightning_delayed.core.dasgd import DaSGD, DaSGDConfig, cocodsgd_config
from lightning_delayed.core.local_sgd import LocalSGD, LocalSGDConfig
from lightning_delayed.core.overlap_local_sgd import OverlapLocalSGD, OverlapLocalSGDConfig
from lightning_delayed.strategies.buffers import keep_buffers_local
from lightning_delayed.strategies.groups import GroupedStrategy

if TYPE_CHECKING:
    from collections.abc import Sequence

    from torch import Tensor
    from torch.optim import Optimizer

    from lightning_delayed.comm.communicator import CommHook
    from lightning_delayed.core.base import DelayedAlgorithm


class AveragingStrategy(GroupedStrategy):
    """Base of the model-averaging strategies (not registered itself)."""

    config: LocalSGDConfig | DaSGDConfig | OverlapLocalSGDConfig

    def __init__(self, **kwargs: Any) -> None:
        # Buffers take part in the averages and evolve locally in between (docs/algorithms/index.md).
        keep_buffers_local(kwargs)
        super().__init__(**kwargs)

    @override
    def build_ddp_hook(self, params: Sequence[Tensor]) -> LocalGradientHook | None:
        # With worker groups (group_size > 1) DDP's own all-reduce averages the gradients over the worker.
        return LocalGradientHook() if self.local_gradients() else None

    def model_tensors(self, params: Sequence[Tensor]) -> list[Tensor]:
        assert self.lightning_module is not None
        return model_state(self.lightning_module, params, self.config.average_buffers)

    def parameter_comm(self) -> CommHook:
        assert self.communicator is not None, "build_communicator() runs at the start of fit"
        return self.communicator


class LocalSGDStrategy(AveragingStrategy):
    r"""Local SGD: every rank steps on its own gradient; blocking ``x <- mean(x)`` every ``sync_every`` steps.

    Args:
        sync_every: :math:`\tau \ge 1`, optimizer steps between averages (default 4).
        average_buffers: average float buffers (BatchNorm statistics) with the parameters (default True).
        **kwargs: ``group_size`` (worker groups, :class:`~lightning_delayed.strategies.groups.GroupedStrategy`)
            and the :class:`~lightning_delayed.strategies.base.DelayedStrategy` arguments.
    """

    strategy_name = "local_sgd"
    config: LocalSGDConfig

    def __init__(self, sync_every: int = 4, average_buffers: bool = True, **kwargs: Any) -> None:
        self.config = LocalSGDConfig(sync_every=sync_every, average_buffers=average_buffers)
        super().__init__(**kwargs)

    @override
    def build_algorithm(self, params: Sequence[Tensor], optimizer: Optimizer) -> DelayedAlgorithm:
        return LocalSGD(self.config, self.model_tensors(params), optimizer, self.parameter_comm())


class _DelayedAveragingStrategy(AveragingStrategy):
    """DaSGD-type strategies; counts the samples of every training batch for ``weighting="samples"``."""

    config: DaSGDConfig

    @override
    def build_algorithm(self, params: Sequence[Tensor], optimizer: Optimizer) -> DelayedAlgorithm:
        return DaSGD(self.config, self.model_tensors(params), optimizer, self.parameter_comm())

    @override
    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        super().on_train_batch_start(batch, batch_idx)
        # Every micro-batch counts (with gradient accumulation, all micro-batches of a step).
        if self.config.weighting == "samples" and isinstance(self.algorithm, DaSGD):
            self.algorithm.add_samples(extract_batch_size(batch))


class DaSGDStrategy(_DelayedAveragingStrategy):
    r"""DaSGD: an average launched every ``sync_every`` steps is merged ``delay`` steps later.

    Merge: ``x <- cbar + (x - s)`` (``s``: the snapshot taken at launch), before the launch of the same step.

    Args:
        sync_every: :math:`\tau \ge 1`, optimizer steps between launches (default 4).
        delay: :math:`d`, ``1 <= d <= sync_every`` steps between launch and merge (default 1).
        weighting: ``"uniform"`` (default) or ``"samples"``: weight each rank by the samples it
            processed since its previous launch, counted from each training batch
            (``lightning.pytorch.utilities.data.extract_batch_size``).
        average_buffers: average float buffers with the parameters (default True).
        **kwargs: ``group_size`` (worker groups, :class:`~lightning_delayed.strategies.groups.GroupedStrategy`)
            and the :class:`~lightning_delayed.strategies.base.DelayedStrategy` arguments.
    """

    strategy_name = "dasgd"

    def __init__(
        self,
        sync_every: int = 4,
        delay: int = 1,
        weighting: str = "uniform",
        average_buffers: bool = True,
        **kwargs: Any,
    ) -> None:
        self.config = DaSGDConfig(
            sync_every=sync_every, delay=delay, weighting=weighting, average_buffers=average_buffers
        )
        super().__init__(**kwargs)


class CoCoDSGDStrategy(_DelayedAveragingStrategy):
    r"""CoCoD-SGD: DaSGD with ``delay = sync_every`` (merge at the next synchronisation point).

    Args:
        sync_every: :math:`\tau \ge 1`, optimizer steps between launches (default 4).
        weighting: ``"uniform"`` (default) or ``"samples"``: ``cbar = sum_i n_i c_i / sum_i n_i``
            with :math:`n_i` the samples rank i processed since its previous launch, counted from
            each training batch (``extract_batch_size``; all micro-batches under accumulation).
        average_buffers: average float buffers with the parameters (default True).
        **kwargs: ``group_size`` (worker groups, :class:`~lightning_delayed.strategies.groups.GroupedStrategy`)
            and the :class:`~lightning_delayed.strategies.base.DelayedStrategy` arguments.
    """

    strategy_name = "cocodsgd"

    def __init__(
        self, sync_every: int = 4, weighting: str = "uniform", average_buffers: bool = True, **kwargs: Any
    ) -> None:
        if "delay" in kwargs:
            raise TypeError(
                f"CoCoDSGDStrategy fixes delay = sync_every (each average is merged at the next synchronisation "
                f"point), so it takes no delay argument, got delay={kwargs['delay']!r}. Remove it, or use "
                "DaSGDStrategy(sync_every=..., delay=...) for a shorter delay."
            )
        self.config = cocodsgd_config(sync_every=sync_every, weighting=weighting, average_buffers=average_buffers)
        super().__init__(**kwargs)


class OverlapLocalSGDStrategy(AveragingStrategy):
    r"""Overlap Local-SGD: pull toward the anchor average launched one period earlier.

    Args:
        sync_every: :math:`\tau \ge 1`, optimizer steps between anchor launches (default 2).
        alpha: :math:`\alpha \in (0, 1]`, pull-back strength (default 0.6, the paper's).
        outer_momentum: :math:`\beta \ge 0` anchor momentum (default 0; the paper's variant uses 0.7).
            Uses the current LR of the first param group.
        average_buffers: average float buffers with the parameters (default True).
        **kwargs: ``group_size`` (worker groups, :class:`~lightning_delayed.strategies.groups.GroupedStrategy`)
            and the :class:`~lightning_delayed.strategies.base.DelayedStrategy` arguments.
    """

    strategy_name = "overlap_local_sgd"
    config: OverlapLocalSGDConfig

    def __init__(
        self,
        sync_every: int = 2,
        alpha: float = 0.6,
        outer_momentum: float = 0.0,
        average_buffers: bool = True,
        **kwargs: Any,
    ) -> None:
        self.config = OverlapLocalSGDConfig(
            sync_every=sync_every, alpha=alpha, outer_momentum=outer_momentum, average_buffers=average_buffers
        )
        super().__init__(**kwargs)

    @override
    def build_algorithm(self, params: Sequence[Tensor], optimizer: Optimizer) -> DelayedAlgorithm:
        return OverlapLocalSGD(self.config, self.model_tensors(params), optimizer, self.parameter_comm())


__all__ = [
    "AveragingStrategy",
    "CoCoDSGDStrategy",
    "DaSGDStrategy",
    "LocalSGDStrategy",
    "OverlapLocalSGDStrategy",
]
