r"""Overlap Local-SGD: local SGD whose anchor average runs during the next period.

Wang, Liang, Joshi. *Overlap Local-SGD: An Algorithmic Approach to Hide Communication Delays in
Distributed SGD.* ICASSP 2020. https://arxiv.org/abs/2002.09539

Per-rank state: anchor :math:`z`, outer momentum :math:`v`, one pending anchor average. After the
optimizer step of every step with :math:`(k + 1) \bmod \tau = 0`:

.. math::

    &\text{if an anchor average is pending: wait for it: } z \\
    &\qquad x \leftarrow (1 - \alpha)\, x + \alpha z \\
    &\qquad \beta > 0:\; v \leftarrow \beta v + (z - x) / \eta,\quad \text{send} \leftarrow z - \eta v
        \qquad \beta = 0:\; \text{send} \leftarrow x \\
    &\text{else (first synchronisation point): send} \leftarrow x \\
    &\text{launch } \mathrm{mean}(\text{send})

:math:`\eta` is the current LR of the optimizer's first param group. At the end of training the
pending anchor is waited for and pulled toward, then ``x`` is averaged synchronously.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from lightning_delayed.comm.buckets import Completed, Pending
from lightning_delayed.core.averaging import (
    AveragingAlgorithm,
    ParameterCommunicator,
    check_average_buffers,
    check_sync_every,
    mean_tensors,
    pull_back_,
)
from lightning_delayed.core.base import clone_all
from lightning_delayed.core.checks import check_real, non_negative

if TYPE_CHECKING:
    from collections.abc import Sequence

    from torch.optim import Optimizer


@dataclass(frozen=True)
class OverlapLocalSGDConfig:
    """Arguments of Overlap Local-SGD.

    Args:
        sync_every: :math:`\\tau \\ge 1`, optimizer steps between anchor launches.
        alpha: :math:`\\alpha \\in (0, 1]`, strength of the pull toward the anchor.
        outer_momentum: :math:`\\beta \\ge 0` of the anchor momentum (0: none; the paper uses 0.7).
        average_buffers: also average floating-point buffers (BatchNorm statistics).
    """

    sync_every: int = 2
    alpha: float = 0.6
    outer_momentum: float = 0.0
    average_buffers: bool = True

    def __post_init__(self) -> None:
        check_sync_every(self.sync_every)
        check_real("alpha", self.alpha, "a number in (0, 1]", lambda a: 0 < a <= 1)
        check_real("outer_momentum (beta)", self.outer_momentum, "a number >= 0 (0: none)", non_negative)
        check_average_buffers(self.average_buffers)


def anchor_momentum_(
    v: Sequence[Tensor], x: Sequence[Tensor], anchor: Sequence[Tensor], beta: float, lr: float
) -> list[Tensor]:
    """``v <- beta * v + (z - x) / lr`` in place; returns ``send = z - lr * v``."""
    send = []
    with torch.no_grad():
        for vi, xi, zi in zip(v, x, anchor, strict=True):
            vi.copy_(beta * vi + (zi - xi) / lr)
            send.append(zi - lr * vi)
    return send


class OverlapLocalSGD(AveragingAlgorithm):
    """Overlap Local-SGD state and rule (see the module docstring).

    Attributes:
        anchor: ``z``, the last anchor average received (``None`` before the first).
        momentum: ``v``, the outer momentum buffer (``None`` until first used).
        pending: the anchor average in flight.
    """

    def __init__(
        self,
        config: OverlapLocalSGDConfig,
        tensors: Sequence[Tensor],
        optimizer: Optimizer,
        comm: ParameterCommunicator | None = None,
    ) -> None:
        super().__init__(tensors, optimizer, comm)
        self.config = config
        self.anchor: list[Tensor] | None = None
        self.momentum: list[Tensor] | None = None
        self.pending: Pending | None = None

    def current_lr(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])

    def _receive_and_pull_back(self) -> None:
        assert self.pending is not None
        # The average lives in the pending's own buffers, which nothing else references once the
        # pending is dropped: the anchor takes them over instead of copying a whole model.
        self.anchor = list(self.pending.wait())
        self.pending = None
        pull_back_(self.tensors, self.anchor, float(self.config.alpha))

    def after_optimizer_step(self) -> None:
        if self.is_sync_step(self.config.sync_every):
            send: Sequence[Tensor] = self.tensors  # the communicator copies it
            if self.pending is not None:
                self._receive_and_pull_back()
                assert self.anchor is not None
                beta = float(self.config.outer_momentum)
                if beta > 0:
                    if self.momentum is None:
                        self.momentum = [torch.zeros_like(t) for t in self.tensors]
                    send = anchor_momentum_(self.momentum, self.tensors, self.anchor, beta, self.current_lr())
            self.pending = self.launch(send)
        self.step += 1

    def finish_pending(self) -> None:
        if self.pending is not None:
            self._receive_and_pull_back()

    def state_dict(self) -> dict[str, Any]:
        # No "anchor": the last anchor is read only in the same call that replaces it with the
        # pending average, so it is never read after a checkpoint.
        return {
            "step": self.step,
            # Waiting only receives the anchor early; it is used at the same step as always.
            "pending_average": None if self.pending is None else clone_all(self.pending.wait()),
        }

    def local_state_dict(self) -> dict[str, Any]:
        return {**super().local_state_dict(), "momentum": None if self.momentum is None else clone_all(self.momentum)}

    def load_state_dict(self, state: dict[str, Any], local_state: dict[str, Any]) -> None:
        super().load_state_dict(state, local_state)
        pending = self.maybe_tensors(state["pending_average"])
        self.pending = None if pending is None else Completed(pending)
        self.momentum = self.maybe_tensors(local_state["momentum"])

    def merged_local_tensors(self, state: dict[str, Any], local_state: dict[str, Any]) -> list[Tensor]:
        """End-of-fit merge of a saved rank: pull back ``x <- (1 - alpha) x + alpha z`` when an anchor was pending."""
        x = clone_all(local_state["tensors"])
        if state["pending_average"] is not None:
            pull_back_(x, state["pending_average"], float(self.config.alpha))
        return x

    def load_resized_state_dict(self, state: dict[str, Any], local_states: list[dict[str, Any]], *, rank: int) -> None:
        super().load_resized_state_dict(state, local_states, rank=rank)
        # The pending anchor is merged above, so the next synchronisation point launches x like the
        # first one; the outer momentum v continues as the saved ranks' mean.
        momenta = [local["momentum"] for local in local_states if local.get("momentum") is not None]
        self.momentum = self.maybe_tensors(mean_tensors(momenta)) if len(momenta) == len(local_states) else None
