"""The interface every algorithm implements, and helpers shared by the rules.

An algorithm object owns its state (step counter, global replica, snapshots, pending
communication) and applies its rule around the user's optimizer step. It never owns the training
loop: the Lightning strategy (or a test's plain loop) calls, per optimizer step k::

    backward()                      # gradients of this step are in p.grad; the DDP hook has
                                    # launched mean(g) of this step (gradient algorithms)
    algo.before_optimizer_step()    # e.g. OD-SGD: swap in W and the delayed mean gradient
    optimizer.step()                # the user's optimizer, unchanged
    algo.after_optimizer_step()     # e.g. DaSGD: merge/launch averages; k += 1

and at the end of training ``algo.finish()``. Validation runs inside ``with algo.consensus():``.
Communication is injected: gradient algorithms get a :class:`GradientCommunicator` (the DDP hook),
model-averaging algorithms a :class:`~lightning_delayed.comm.communicator.CommHook`, so a
single-process test can pass a fake one.
"""

from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Any, Protocol

import torch
from torch import Tensor

from lightning_delayed._compat import foreach_copy_

if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence

    from torch.optim import Optimizer

    from lightning_delayed.comm.buckets import Pending


class GradientCommunicator(Protocol):
    """What a gradient algorithm needs from the gradient communication (the DDP hook, or a test's fake).

    During every backward the communication launches ``mean(g)`` of this step's gradients and
    leaves the rank's own gradient in ``p.grad``; ``take_launched()``, called after backward (in
    :meth:`DelayedAlgorithm.before_optimizer_step`), returns that launched mean in parameter order
    (``None`` if nothing was launched). The algorithm decides when to ``wait()`` for it: at once
    (synchronous SGD) or one step later (OD-SGD, Pipe-SGD).
    :class:`~lightning_delayed.comm.hooks.DDPGradientHook` implements it.
    """

    def take_launched(self) -> Pending | None: ...


class DelayedAlgorithm(ABC):
    """Base class of the algorithm objects (the "core rule" of an algorithm).

    Subclass it to add an algorithm: implement :meth:`after_optimizer_step`, and override the
    other methods where the rule needs them. The object is built by the strategy's
    ``build_algorithm`` once per ``fit``, after DDP wrapping and optimizer set-up, and lives
    until the end of ``fit``. It must not import Lightning: a plain loop can drive it.

    Attributes:
        step: ``k``, the number of optimizer steps taken so far (after gradient accumulation).
    """

    def __init__(self) -> None:
        self.step = 0

    def before_optimizer_step(self) -> None:  # noqa: B027 - optional hook, empty by design
        """Called after backward of step ``k`` and before the user's ``optimizer.step()``.

        Must leave in ``p.grad`` (and in the module's weights) what the user's optimizer should
        step with; ``p.grad = None`` makes every torch optimizer skip that parameter. Gradient
        clipping and ``on_before_optimizer_step`` callbacks run after it and see that gradient.
        Default: nothing (the optimizer steps the local weights with the local gradient).
        """

    @abstractmethod
    def after_optimizer_step(self) -> None:
        """Called after the user's ``optimizer.step()`` of step ``k``; must end with ``k += 1``.

        The place to merge received averages and launch new ones (model averaging), or to
        restore the local weights (OD-SGD). Never called on micro-batches that only accumulate.
        """

    def finish(self) -> None:  # noqa: B027 - optional hook, empty by design
        """End of training (end of ``fit``, also on ``max_steps`` or early stopping).

        Must wait for every pending communication and apply it by the algorithm's own rule, and
        leave the module holding weights that are identical on every rank.
        """

    @contextlib.contextmanager
    def consensus(self) -> Iterator[None]:
        """Context in which the module holds the consensus model; restores the local state after.

        Entered for validation during ``fit`` and when the checkpoint's ``state_dict`` is taken.
        Must not change the training trajectory (no error-feedback state, no pending average).
        Default: the module's own weights are the consensus (they are identical on every rank).
        """
        yield

    def state_dict(self) -> dict[str, Any]:
        """State identical on every rank (saved once in the checkpoint). Must include ``step``."""
        return {"step": self.step}

    def local_state_dict(self) -> dict[str, Any]:
        """State that differs between ranks (gathered from every rank into the checkpoint)."""
        return {}

    def load_state_dict(self, state: dict[str, Any], local_state: dict[str, Any]) -> None:
        """Restore from :meth:`state_dict` and this rank's :meth:`local_state_dict` (resume, before step 0)."""
        self.step = int(state["step"])

    def load_resized_state_dict(self, state: dict[str, Any], local_states: list[dict[str, Any]], *, rank: int) -> None:
        """Resume on a different number of ranks from :meth:`state_dict` and every saved rank's local state.

        Must leave every rank of the new run in the state its rule gives, documented in
        ``docs/algorithms/<name>.md`` (the same on every rank, except state the rule keeps per rank,
        such as DiLoCo's inner optimizer: ``rank`` is this rank of the new run). Default: no such
        rule; raises ``NotImplementedError``, which the strategy turns into a refusal on every rank.
        Called before anything else is restored.
        """
        raise NotImplementedError(f"{type(self).__name__} cannot resume on a different number of ranks")


def param_lrs(optimizer: Optimizer, params: Sequence[Tensor]) -> list[float]:
    """The current learning rate of each parameter's param group."""
    lr_of: dict[int, float] = {}
    for group in optimizer.param_groups:
        for p in group["params"]:
            lr_of[id(p)] = float(group["lr"])
    missing = [i for i, p in enumerate(params) if id(p) not in lr_of]
    if missing:
        raise ValueError(
            f"parameters at positions {missing} of the module are not in the optimizer; every trainable "
            "parameter must be optimized by the (single) optimizer returned by configure_optimizers"
        )
    return [lr_of[id(p)] for p in params]


def clone_all(tensors: Sequence[Tensor]) -> list[Tensor]:
    return [t.detach().clone() for t in tensors]


def copy_all_(dst: Sequence[Tensor], src: Sequence[Tensor]) -> None:
    with torch.no_grad():
        foreach_copy_(list(dst), list(src))


def set_grads_(params: Sequence[Tensor], grads: Sequence[Tensor]) -> None:
    """``p.grad <- g`` for every parameter: copied into an existing ``.grad``, so DDP's views stay valid."""
    with torch.no_grad():
        for p, g in zip(params, grads, strict=True):
            if p.grad is None:
                p.grad = g.detach().clone()
            else:
                p.grad.copy_(g)
