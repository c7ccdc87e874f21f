r"""Streaming DiLoCo: DiLoCo on fragments of the model, each synchronised on its own staggered schedule, overlapped.

Douillard et al. *Streaming DiLoCo with overlapping communication: Towards a Distributed Free
Lunch.* arXiv:2501.18512 (2025). https://arxiv.org/abs/2501.18512

The *layers* are the modules that own trainable parameters directly, in ``model.modules()`` order,
:math:`j = 0 \dots L-1`; a layer's parameters stay together. ``strided``: layer :math:`j` is in
fragment :math:`j \bmod P`; ``sequential``: in fragment :math:`\lfloor jP / L \rfloor`. Each
fragment :math:`p` has its own global copy :math:`\theta_p` and outer SGD. After the optimizer
step of every step :math:`k`:

.. math::

    &\text{for } p \text{ with } (k + 1) \bmod H = ((p + 1) H / P) \bmod H:\quad
        \text{launch } \Delta_p = \mathrm{mean}(\theta_p - x_p) \\
    &\text{for every fragment launched at step } k - \tau:\quad
        \theta_p \leftarrow \mathrm{outer}_p.\mathrm{step}(\theta_p, \Delta_p),\quad
        x_p \leftarrow \alpha x_p + (1 - \alpha)\theta_p \\
    &\text{if } (k + 1) \bmod H = 0:\quad \text{float buffers} \leftarrow \mathrm{mean}(\text{float buffers})

The launches are asynchronous, on the strategy's own process group, and waited for :math:`\tau`
steps later; with :math:`\tau < H / P` (the default :math:`\tau = 1`) at most one fragment is in
flight. End of training: every pending fragment is applied as above; a fragment launched after the
last step then takes :math:`x_p \leftarrow \theta_p`; every other fragment is synchronised once
more (:math:`\Delta_p`, outer step, :math:`x_p \leftarrow \theta_p`) and the buffers averaged
unless the last step ended a period, in one one-off (full-precision) launch. With
:math:`P = 1, \tau = 0, \alpha = 0` this is DiLoCo.
See ``docs/algorithms/streaming_diloco.md``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from lightning_delayed.comm.buckets import Completed, Pending
from lightning_delayed.core.averaging import ParameterCommunicator, check_average_buffers, check_sync_every
from lightning_delayed.core.base import clone_all, copy_all_
from lightning_delayed.core.diloco import (
    DiLoCoBase,
    check_nesterov,
    check_outer_lr,
    check_outer_momentum,
    outer_sgd,
)

if TYPE_CHECKING:
    from collections.abc import Sequence

    from torch.optim import Optimizer

FRAGMENT_PATTERNS = ("strided", "sequential")


@dataclass(frozen=True)
class StreamingDiLoCoConfig:
    """Arguments of Streaming DiLoCo.

    Args:
        sync_every: :math:`H \\ge 1`, steps between two synchronisations of the same fragment.
        outer_lr: :math:`\\eta_o > 0`, learning rate of every fragment's outer SGD.
        outer_momentum: :math:`\\mu \\in [0, 1)`, momentum of the outer SGDs.
        nesterov: Nesterov momentum for the outer SGDs; ignored when ``outer_momentum=0``.
        num_fragments: :math:`P \\ge 1`, dividing ``sync_every``; fragment ``p`` is launched at steps
            with :math:`(k + 1) \\bmod H = ((p + 1) H / P) \\bmod H`.
        delay: :math:`\\tau \\in [0, H)`, steps between a fragment's launch and its use (0: same step, blocking).
        alpha: :math:`\\alpha \\in [0, 1]`, weight of the local weights in the mix
            :math:`x_p \\leftarrow \\alpha x_p + (1 - \\alpha)\\theta_p` (0: take :math:`\\theta_p`).
        fragments: ``"strided"`` (layer j in fragment j mod P) or ``"sequential"`` (contiguous blocks of layers).
        average_buffers: average floating-point buffers (BatchNorm statistics) every ``sync_every`` steps.
    """

    sync_every: int = 50
    outer_lr: float = 0.7
    outer_momentum: float = 0.9
    nesterov: bool = True
    num_fragments: int = 2
    delay: int = 1
    alpha: float = 0.5
    fragments: str = "strided"
    average_buffers: bool = True

    def __post_init__(self) -> None:
        check_sync_every(self.sync_every)
        check_outer_lr(self.outer_lr)
        check_outer_momentum(self.outer_momentum)
        check_nesterov(self.nesterov)
        p = self.num_fragments
        if isinstance(p, bool) or not isinstance(p, int) or p < 1:
            raise ValueError(f"num_fragments (P) must be an integer >= 1, got {p!r}")
        if self.sync_every % p != 0:
            raise ValueError(
                f"num_fragments (P) must divide sync_every={self.sync_every} (fragments are launched every "
                f"sync_every / P steps), got {p!r}"
            )
        d = self.delay
        if isinstance(d, bool) or not isinstance(d, int) or not 0 <= d < self.sync_every:
            raise ValueError(
                f"delay (tau) must be an integer with 0 <= delay < sync_every={self.sync_every}, got {d!r}"
            )
        a = self.alpha
        if isinstance(a, bool) or not isinstance(a, (int, float)) or not 0 <= a <= 1:  # NaN fails the range test
            raise ValueError(f"alpha must be a number in [0, 1], got {a!r}")
        if self.fragments not in FRAGMENT_PATTERNS:
            raise ValueError(f"fragments must be one of {FRAGMENT_PATTERNS}, got {self.fragments!r}")
        check_average_buffers(self.average_buffers)


def layer_fragments(module: nn.Module, params: Sequence[Tensor], num_fragments: int, pattern: str) -> list[list[int]]:
    """Split ``params`` into ``num_fragments`` fragments of whole layers; return each fragment's indices.

    A layer is a module owning at least one of ``params`` directly (``recurse=False``), in
    ``module.modules()`` order; a parameter shared by several modules belongs to the first. Raises
    ``ValueError`` (with the layer count) when there are fewer layers than fragments.
    """
    if pattern not in FRAGMENT_PATTERNS:
        raise ValueError(f"fragments must be one of {FRAGMENT_PATTERNS}, got {pattern!r}")
    index = {id(p): i for i, p in enumerate(params)}
    seen: set[int] = set()
    layers: list[list[int]] = []
    for m in module.modules():
        own = [index[id(p)] for p in m.parameters(recurse=False) if id(p) in index and id(p) not in seen]
        if own:
            seen.update(id(params[i]) for i in own)
            layers.append(own)
    if len(seen) != len(params):
        raise ValueError("some trainable parameters are not owned by any submodule of the model")
    n_layers = len(layers)
    if n_layers < num_fragments:
        raise ValueError(
            f"streaming_diloco needs at least num_fragments={num_fragments} layers (modules that own trainable "
            f"parameters directly), but the model has {n_layers}: lower num_fragments to at most {n_layers}"
        )
    fragments: list[list[int]] = [[] for _ in range(num_fragments)]
    for j, layer in enumerate(layers):
        p = j % num_fragments if pattern == "strided" else (j * num_fragments) // n_layers
        fragments[p].extend(layer)
    return [sorted(f) for f in fragments]


def mix_(x: Sequence[Tensor], theta: Sequence[Tensor], alpha: float) -> None:
    """``x <- alpha * x + (1 - alpha) * theta`` in place (``alpha * x`` computed in ``x``: same roundings)."""
    with torch.no_grad():
        for xi, ti in zip(x, theta, strict=True):
            xi.mul_(alpha).add_((1 - alpha) * ti)


@dataclass
class PendingFragment:
    """A fragment's pseudo-gradient average in flight, launched after the optimizer step of ``launch_step``."""

    fragment: int
    launch_step: int
    average: Pending


class StreamingDiLoCo(DiLoCoBase):
    """Streaming DiLoCo around the user's optimizer (see the module docstring).

    Args:
        config: the arguments.
        params: the module's trainable parameters.
        buffers: its floating-point buffers when they are averaged, else empty.
        optimizer: the user's (inner) optimizer.
        fragments: the parameter indices of each fragment (:func:`layer_fragments`).
        comm: the communication (default: bucketed all-reduce).

    Attributes:
        pending: fragments in flight, in launch order.
        launch_offsets: ``(k + 1) mod H`` at which each fragment is launched.
    """

    def __init__(
        self,
        config: StreamingDiLoCoConfig,
        params: Sequence[Tensor],
        buffers: Sequence[Tensor],
        optimizer: Optimizer,
        fragments: Sequence[Sequence[int]],
        comm: ParameterCommunicator | None = None,
    ) -> None:
        super().__init__(params, buffers, optimizer, comm)
        self.config = config
        covered = sorted(i for f in fragments for i in f)
        if len(fragments) != config.num_fragments or covered != list(range(len(self.params))):
            raise ValueError(
                f"fragments must split the {len(self.params)} parameters into num_fragments={config.num_fragments} "
                f"disjoint index lists, got {[list(f) for f in fragments]}"
            )
        self.fragments = [sorted(f) for f in fragments]
        self.outer_optimizers = [
            outer_sgd([self.global_params[i] for i in f], config.outer_lr, config.outer_momentum, config.nesterov)
            for f in self.fragments
        ]
        h, p = config.sync_every, config.num_fragments
        self.launch_offsets = [((q + 1) * h // p) % h for q in range(p)]
        self.pending: list[PendingFragment] = []

    def _launch(self, q: int) -> None:
        idx = self.fragments[q]
        delta = self.pseudo_gradients(idx)
        average = self.comm.launch(delta, keys=[self.keys[i] for i in idx], what="pseudo-gradients")
        self.pending.append(PendingFragment(q, self.step, average))

    def _apply(self, item: PendingFragment) -> None:
        q = item.fragment
        self.outer_step_fragment_(q, item.average.wait())
        idx = self.fragments[q]
        mix_([self.params[i] for i in idx], [self.global_params[i] for i in idx], float(self.config.alpha))

    def after_optimizer_step(self) -> None:
        offset = (self.step + 1) % self.config.sync_every
        if offset == 0 and self.buffers:
            # Before the launch below, so this small blocking average never queues behind a fragment in
            # flight on the same group (with delay < H / P nothing else is in flight here). Buffers and
            # parameters are disjoint, so the order does not change any value.
            average = self.comm.launch(self.buffers, keys=self.buffer_keys, what="buffers").wait()
            copy_all_(self.buffers, average)
        for q, at in enumerate(self.launch_offsets):
            if at == offset:
                self._launch(q)
        due = [item for item in self.pending if item.launch_step == self.step - self.config.delay]
        self.pending = [item for item in self.pending if item.launch_step != self.step - self.config.delay]
        for item in due:
            self._apply(item)
        self.step += 1

    def finish(self) -> None:
        if self.step == 0:
            return  # nothing trained: every rank still holds x0 == theta
        pending, self.pending = self.pending, []
        for item in pending:
            self._apply(item)
        # A fragment launched after the last step already carries all its local progress: it ends at
        # theta_p (no second outer step on a pseudo-gradient that would only repeat it). Every other
        # fragment is synchronised once more. With P = 1, delay 0, alpha 0 this is DiLoCo's end rule.
        offset = self.step % self.config.sync_every
        fresh = [q for q, at in enumerate(self.launch_offsets) if at == offset]
        for q in fresh:
            idx = self.fragments[q]
            copy_all_([self.params[i] for i in idx], [self.global_params[i] for i in idx])
        stale = [q for q in range(self.config.num_fragments) if q not in fresh]
        # The buffers were averaged after the last step if it ended a period.
        self.sync_(stale, stream=False, buffers=offset != 0)

    def state_dict(self) -> dict[str, Any]:
        return {
            **super().state_dict(),
            # Waiting only receives a fragment early; it is applied at the same step as always.
            "pending": [
                {"fragment": item.fragment, "launch_step": item.launch_step, "average": clone_all(item.average.wait())}
                for item in self.pending
            ],
        }

    def load_state_dict(self, state: dict[str, Any], local_state: dict[str, Any]) -> None:
        super().load_state_dict(state, local_state)
        self.pending = []
        for saved in state["pending"]:
            q = int(saved["fragment"])
            like = [self.params[i] for i in self.fragments[q]]
            average = [
                t.to(device=x.device, dtype=x.dtype, copy=True) for t, x in zip(saved["average"], like, strict=True)
            ]
            self.pending.append(PendingFragment(q, int(saved["launch_step"]), Completed(average)))

    def _drop_pending(self) -> None:
        # Resized: the fragments in flight are dropped (their pseudo-gradients were means over the old ranks).
        self.pending = []


__all__ = ["FRAGMENT_PATTERNS", "StreamingDiLoCo", "StreamingDiLoCoConfig", "layer_fragments"]
