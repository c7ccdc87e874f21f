"""``ssgd``: plain synchronous data-parallel SGD (DDP), the baseline of every benchmark."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from typing_extensions import override

from lightning_delayed.comm.buckets import communication_errors
from lightning_delayed.comm.hooks import DDPGradientHook
from lightning_delayed.core.base import DelayedAlgorithm
from lightning_delayed.core.ssgd import SynchronousSGD
from lightning_delayed.strategies.base import DelayedStrategy
from lightning_delayed.strategies.groups import refuse_group_size

if TYPE_CHECKING:
    from collections.abc import Sequence

    from torch import Tensor
    from torch.optim import Optimizer

    from lightning_delayed.comm.hooks import DDPGradientHook
    from lightning_delayed.core.base import DelayedAlgorithm


class SSGDStrategy(DelayedStrategy):
    """Synchronous SGD: ``x <- opt.step(x, mean(g(x)))`` every step.

    By default gradients are averaged by DDP's own C++ all-reduce inside backward (no Python hook),
    the fastest synchronous baseline. With ``comm_hook`` or ``compression`` set, the package's
    :class:`~lightning_delayed.comm.hooks.DDPGradientHook` launches each bucket's mean through
    that communicator during backward and the step waits for it right after backward; with
    ``compression="fp16"``/``"bf16"`` (or ``"int8"``/``"int4"``, the low-bit reduce-scatter of
    :class:`~lightning_delayed.comm.lowbit.LowBitHook`) this is compressed SGD *with* error
    feedback (per parameter, in checkpoints), unlike torch's ``fp16_compress_hook``/``bf16_compress_hook``,
    which have none.
    Accepts every :class:`DelayedStrategy` argument. With ``check_finite`` (the default), DDP's
    average is checked for NaN/Inf after backward; a peer lost during DDP's own collectives (the
    gradient all-reduce, the buffer broadcast) raises :class:`~lightning_delayed.CommunicationError`.
    ``group_size`` other than 1 is refused: every rank already averages every gradient every step,
    which is what ``local_sgd`` with a single worker of all ranks (``group_size`` = N) does
    (docs/scaling.md, "One worker of every rank").
    """

    strategy_name = "ssgd"
    module_holds_consensus = True  # the same mean gradient on every rank: SWA and EMA work as under DDP

    def __init__(self, **kwargs: Any) -> None:
        refuse_group_size(
            type(self),
            kwargs,
            "ssgd already averages every gradient over all ranks every step (one worker of N ranks).",
        )
        super().__init__(**kwargs)

    @override
    def build_ddp_hook(self, params: Sequence[Tensor]) -> DDPGradientHook | None:
        return self.gradient_hook(params) if self.custom_communication else None

    @override
    def build_algorithm(self, params: Sequence[Tensor], optimizer: Optimizer) -> DelayedAlgorithm:
        if self.ddp_hook is None:
            # DDP's own C++ reduction: nothing checks its average but this.
            return SynchronousSGD(params, check_finite=self.check_finite)
        return SynchronousSGD(params, self.ddp_hook)

    @override
    def training_step(self, *args: Any, **kwargs: Any) -> Any:
        # DDP's forward broadcasts the buffers from rank 0 (broadcast_buffers=True), on the world group.
        with communication_errors("buffers from rank 0", operation="broadcast"):
            return super().training_step(*args, **kwargs)

    @override
    def backward(self, closure_loss: Tensor, optimizer: Optimizer | None, *args: Any, **kwargs: Any) -> Tensor:
        # Without a hook the gradient all-reduce is DDP's own, inside backward: its failure is gloo's or
        # NCCL's raw error unless translated here.
        with communication_errors("gradients"):
            return super().backward(closure_loss, optimizer, *args, **kwargs)
