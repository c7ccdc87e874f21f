"""``odsgd``: OD-SGD, one-step delay SGD (Xu et al., arXiv:2005.06728).

See :mod:`lightning_delayed.core.odsgd` for the rule and ``docs/algorithms/odsgd.md``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities.model_helpers import is_overridden
from torch import Tensor
from torch.optim import Optimizer
from typing_extensions import override

from lightning_delayed.core.odsgd import ODSGD, ODSGDConfig
from lightning_delayed.strategies.base import DelayedStrategy, refuse_grad_scaler
from lightning_delayed.strategies.groups import refuse_group_size

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    import lightning.pytorch as pl
    from torch import Tensor
    from torch.optim import Optimizer

    from lightning_delayed.comm.hooks import DDPGradientHook
    from lightning_delayed.core.base import DelayedAlgorithm


ODSGD_GROUPS_WHY = (
    "OD-SGD applies the delayed mean of every rank's gradient to one global replica, a gradient rule with "
    "nothing to average between workers (docs/algorithms/odsgd.md)."
)


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
        * Gradient clipping (``Trainer(gradient_clip_val=..., gradient_clip_algorithm=...)``, or the
          module's ``configure_gradient_clipping``) clips every gradient that moves a weight: the
          delayed mean the optimizer steps ``W`` with, the own gradient of the local step (sent
          unclipped, clipped before the step) and the last mean of the end-of-training step.
        * At k = T0 nothing is pending: the optimizer's ``step()`` runs without any gradient (a
          no-op) and Lightning's ``on_before_optimizer_step`` hooks and clipping are not called.
        * ``precision="16-mixed"`` is refused (its loss scale changes between steps).
        * ``group_size`` other than 1 is refused: OD-SGD's rule is a gradient rule (every rank
          applies the delayed *global* mean of all gradients), so it has no per-worker model to
          average hierarchically; a worker-level variant would be a different algorithm.
        * The checkpoint's ``state_dict`` is ``W``; each rank's ``w`` is in the algorithm state.
        * With ``compression`` (fp16/bf16, or int8/int4), the gradient means (warm-up and delayed)
          are of the compressed gradients, with error feedback per parameter; the local step uses
          the exact own gradient.
    """

    strategy_name = "odsgd"

    def __init__(
        self,
        local_lr: float | None = None,
        dc_lambda: float = 0.0,
        warmup_steps: int = 0,
        **kwargs: Any,
    ) -> None:
        refuse_group_size(type(self), kwargs, ODSGD_GROUPS_WHY)
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
        return ODSGD(self.config, params, optimizer, self.ddp_hook, clip_grads=self._gradient_clipping(optimizer))

    def _gradient_clipping(self, optimizer: Optimizer) -> Callable[[], None] | None:
        """Lightning's clipping of ``p.grad``, exactly as it runs before every optimizer step; ``None`` if it is off."""
        module = self.lightning_module
        assert module is not None
        trainer = module.trainer
        if not trainer.gradient_clip_val and not is_overridden("configure_gradient_clipping", module):
            return None

        def clip() -> None:
            # The hook Lightning calls, with the arguments it passes (Precision._clip_gradients).
            module.configure_gradient_clipping(
                optimizer,
                gradient_clip_val=trainer.gradient_clip_val,
                gradient_clip_algorithm=trainer.gradient_clip_algorithm,
            )

        return clip

    @override
    def optimizer_step(
        self,
        optimizer: Optimizer,
        closure: Callable[[], Any],
        model: pl.LightningModule | torch.nn.Module | None = None,
        **kwargs: Any,
    ) -> Any:
        algorithm = self.algorithm
        if not (isinstance(algorithm, ODSGD) and algorithm.skips_optimizer_step):
            return super().optimizer_step(optimizer, closure, model, **kwargs)
        # k = T0: no mean is pending, so W and the optimizer must not move and no gradient is left
        # for the optimizer. Lightning's pre-step hooks and clipping are skipped: they would see
        # no gradient at all, and torch's clip_grad_value_ fails on an empty gradient list.
        with torch.enable_grad():  # as inside optimizer.step()
            result = closure()
        algorithm.before_optimizer_step()
        # A step without gradients changes nothing; it keeps the optimizer's step counters (which
        # the LR scheduler checks) as in every other step.
        output = optimizer.step(closure=lambda: result, **kwargs)
        algorithm.after_optimizer_step()
        return output
