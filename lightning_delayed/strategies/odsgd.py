"""``odsgd``: OD-SGD, one-step delay SGD (Xu et al., arXiv:2005.06728).

See :mod:`lightning_delayed.core.odsgd` for the rule and ``docs/algorithms/odsgd.md``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from typing_extensions import override

from lightning_delayed.core.odsgd import ODSGD, ODSGDConfig
from lightning_delayed.strategies.base import DelayedStrategy, refuse_grad_scaler

if TYPE_CHECKING:
    from collections.abc import Sequence

    import lightning.pytorch as pl
    from torch import Tensor
    from torch.optim import Optimizer

    from lightning_delayed.comm.hooks import DDPGradientHook
    from lightning_delayed.core.base import DelayedAlgorithm


class ODSGDStrategy(DelayedStrategy):
    r"""OD-SGD: the gradient all-reduce of step k is consumed at step k+1.

    Per step: launch ``mean(g)`` bucket by bucket during backward (DDP hook); apply the mean of
    the previous step to the global weights ``W`` with the user's optimizer; then take a local
    compensation step ``w <- W - local_lr * (g + dc_lambda * g * g * (W - W_prev))``.

    Args:
        local_lr: :math:`\eta_l` of the local step; ``None`` (default) uses the optimizer's current LR.
        dc_lambda: :math:`\lambda \ge 0`, delay-compensation weight; 0 (default) disables it.
        warmup_steps: :math:`T_0 \ge 0` synchronous SGD steps first (default 0; the authors use ~200).
        **kwargs: :class:`~lightning_delayed.strategies.base.DelayedStrategy` arguments
            (``compression``, ``comm_hook``, ``bucket_cap_mb``, ``check_finite``, ``process_group_backend``,
            DDP arguments...).

    Choices the rule leaves open (``docs/algorithms/odsgd.md``):
        * Gradient clipping (``Trainer(gradient_clip_val=...)``) clips the gradient the optimizer
          steps ``W`` with (the delayed mean); the local step uses the unclipped own gradient,
          which was already sent when clipping could run.
        * ``precision="16-mixed"`` is refused (its loss scale changes between steps).
        * The checkpoint's ``state_dict`` is ``W``; each rank's ``w`` is in the algorithm state.
        * With ``compression``, the gradient means (warm-up and delayed) are of the compressed
          gradients, with error feedback per parameter; the local step uses the exact own gradient.
    """

    strategy_name = "odsgd"

    def __init__(
        self,
        local_lr: float | None = None,
        dc_lambda: float = 0.0,
        warmup_steps: int = 0,
        **kwargs: Any,
    ) -> None:
        self.config = ODSGDConfig(local_lr=local_lr, dc_lambda=dc_lambda, warmup_steps=warmup_steps)
        super().__init__(**kwargs)

    @override
    def validate_trainer(self, trainer: pl.Trainer) -> None:
        refuse_grad_scaler(self, trainer)

    @override
    def build_ddp_hook(self, params: Sequence[Tensor]) -> DDPGradientHook:
        return self.gradient_hook(params)

    @override
    def build_algorithm(self, params: Sequence[Tensor], optimizer: Optimizer) -> DelayedAlgorithm:
        if self.ddp_hook is None:
            raise RuntimeError("ODSGDStrategy: the DDP communication hook was not registered before set-up")
        return ODSGD(self.config, params, optimizer, self.ddp_hook)
