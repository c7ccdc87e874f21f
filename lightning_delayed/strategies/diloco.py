"""The outer-optimizer branch of the model-averaging family: ``diloco`` and ``streaming_diloco``.

See the rules in :mod:`lightning_delayed.core.diloco`, :mod:`lightning_delayed.core.streaming_diloco`
and ``docs/algorithms/diloco.md``, ``docs/algorithms/streaming_diloco.md``.

As for the other model-averaging strategies: no gradient is communicated (a
:class:`~lightning_delayed.comm.hooks.LocalGradientHook` hands DDP each rank's own gradient), DDP's
``broadcast_buffers`` defaults to ``False`` so buffers evolve locally between averages, and the
pseudo-gradients go through the strategy's communicator (``comm_hook``, ``compression``) on the
strategy's own process group. The inner optimizer is the user's, from ``configure_optimizers``,
with its LR scheduler untouched; the outer optimizer is torch's SGD over the global copy ``theta``.
Validation and the checkpoint's model ``state_dict`` are ``theta`` with the float buffers averaged.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

from typing_extensions import override

from lightning_delayed.comm.hooks import LocalGradientHook
from lightning_delayed.core.diloco import DiLoCo, DiLoCoConfig
from lightning_delayed.core.streaming_diloco import StreamingDiLoCo, StreamingDiLoCoConfig, layer_fragments
from lightning_delayed.strategies.buffers import keep_buffers_local
from lightning_delayed.strategies.groups import GroupedStrategy

if TYPE_CHECKING:
    from collections.abc import Sequence

    from torch import Tensor
    from torch.optim import Optimizer

    from lightning_delayed.comm.communicator import CommHook
    from lightning_delayed.core.base import DelayedAlgorithm


class _OuterOptimizerStrategy(GroupedStrategy):
    """What both DiLoCo strategies share (not registered itself)."""

    config: DiLoCoConfig | StreamingDiLoCoConfig

    def __init__(self, **kwargs: Any) -> None:
        # Buffers take part in the synchronisations and evolve locally in between (docs/algorithms/diloco.md).
        keep_buffers_local(kwargs)
        super().__init__(**kwargs)

    @override
    def build_ddp_hook(self, params: Sequence[Tensor]) -> LocalGradientHook | None:
        # With worker groups (group_size > 1) DDP's own all-reduce averages the gradients over the worker.
        return LocalGradientHook() if self.local_gradients() else None

    def float_buffers(self) -> list[Tensor]:
        assert self.lightning_module is not None
        if not self.config.average_buffers:
            return []
        return [b for b in self.lightning_module.buffers() if b.is_floating_point()]

    def parameter_comm(self) -> CommHook:
        assert self.communicator is not None, "build_communicator() runs at the start of fit"
        return self.communicator


class DiLoCoStrategy(_OuterOptimizerStrategy):
    r"""DiLoCo: ``sync_every`` local steps, then an outer SGD step on the averaged pseudo-gradient ``mean(theta - x)``.

    Douillard et al., arXiv:2311.08105. Every rank steps on its own gradient with the user's
    (inner) optimizer; after every ``sync_every``-th step, blocking: ``Delta <- mean(theta - x)``,
    ``theta <- outer.step(theta, Delta)``, ``x <- theta``, float buffers averaged.

    Args:
        sync_every: :math:`H \ge 1`, inner steps between synchronisations (default 50).
        outer_lr: :math:`\eta_o > 0`, learning rate of the outer SGD (default 0.7, the paper's).
        outer_momentum: :math:`\mu \in [0, 1)`, momentum of the outer SGD (default 0.9, the paper's).
        nesterov: Nesterov outer momentum (default True, the paper's); ignored when ``outer_momentum=0``.
        average_buffers: average float buffers (BatchNorm statistics) at every synchronisation (default True).
        **kwargs: ``group_size`` (worker groups, :class:`~lightning_delayed.strategies.groups.GroupedStrategy`)
            and the :class:`~lightning_delayed.strategies.base.DelayedStrategy` arguments.
    """

    strategy_name = "diloco"
    config: DiLoCoConfig

    def __init__(
        self,
        sync_every: int = 50,
        outer_lr: float = 0.7,
        outer_momentum: float = 0.9,
        nesterov: bool = True,
        average_buffers: bool = True,
        **kwargs: Any,
    ) -> None:
        self.config = DiLoCoConfig(
            sync_every=sync_every,
            outer_lr=outer_lr,
            outer_momentum=outer_momentum,
            nesterov=nesterov,
            average_buffers=average_buffers,
        )
        super().__init__(**kwargs)

    @override
    def build_algorithm(self, params: Sequence[Tensor], optimizer: Optimizer) -> DelayedAlgorithm:
        return DiLoCo(self.config, params, self.float_buffers(), optimizer, self.parameter_comm())


class StreamingDiLoCoStrategy(_OuterOptimizerStrategy):
    r"""Streaming DiLoCo: DiLoCo per fragment of layers, staggered, each all-reduce overlapped for ``delay`` steps.

    Douillard et al., arXiv:2501.18512. Fragment ``p`` (whole layers, ``fragments`` pattern) is
    launched asynchronously when ``(k + 1) % sync_every == ((p + 1) * sync_every / num_fragments) % sync_every``
    and applied ``delay`` steps later: ``theta_p <- outer_p.step(theta_p, Delta_p)``,
    ``x_p <- alpha * x_p + (1 - alpha) * theta_p``. A model with fewer parameter-owning layers than
    ``num_fragments`` is refused when ``fit`` sets up.

    Args:
        sync_every: :math:`H \ge 1`, steps between two synchronisations of one fragment (default 50).
        outer_lr: :math:`\eta_o > 0`, learning rate of every fragment's outer SGD (default 0.7).
        outer_momentum: :math:`\mu \in [0, 1)`, outer momentum (default 0.9).
        nesterov: Nesterov outer momentum (default True); ignored when ``outer_momentum=0``.
        num_fragments: :math:`P \ge 1`, dividing ``sync_every`` (default 2).
        delay: :math:`\tau \in [0, H)`, steps a fragment's all-reduce overlaps with training (default 1).
        alpha: :math:`\alpha \in [0, 1]`, weight of the local weights when a fragment is merged (default 0.5).
        fragments: ``"strided"`` (default; layer j in fragment j mod P) or ``"sequential"`` (contiguous blocks).
        average_buffers: average float buffers every ``sync_every`` steps (default True).
        **kwargs: ``group_size`` (worker groups, :class:`~lightning_delayed.strategies.groups.GroupedStrategy`)
            and the :class:`~lightning_delayed.strategies.base.DelayedStrategy` arguments.
    """

    strategy_name = "streaming_diloco"
    config: StreamingDiLoCoConfig

    def __init__(
        self,
        sync_every: int = 50,
        outer_lr: float = 0.7,
        outer_momentum: float = 0.9,
        nesterov: bool = True,
        num_fragments: int = 2,
        delay: int = 1,
        alpha: float = 0.5,
        fragments: Literal["strided", "sequential"] = "strided",
        average_buffers: bool = True,
        **kwargs: Any,
    ) -> None:
        self.config = StreamingDiLoCoConfig(
            sync_every=sync_every,
            outer_lr=outer_lr,
            outer_momentum=outer_momentum,
            nesterov=nesterov,
            num_fragments=num_fragments,
            delay=delay,
            alpha=alpha,
            fragments=fragments,
            average_buffers=average_buffers,
        )
        super().__init__(**kwargs)

    @override
    def build_algorithm(self, params: Sequence[Tensor], optimizer: Optimizer) -> DelayedAlgorithm:
        assert self.lightning_module is not None
        # Every rank holds the same model, so a refusal here happens on every rank (no hang).
        split = layer_fragments(self.lightning_module, params, self.config.num_fragments, self.config.fragments)
        return StreamingDiLoCo(self.config, params, self.float_buffers(), optimizer, split, self.parameter_comm())


__all__ = ["DiLoCoStrategy", "StreamingDiLoCoStrategy"]
