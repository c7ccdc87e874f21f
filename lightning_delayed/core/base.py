"""The interface every algorithm implements, and helpers shared by the rules.

An algorithm object owns its state (step counter, global replica, snapshots, pending
communication) and applies its rule around the user's optimizer step. It never owns the training
loop: the Lightning strategy (or a test's plain loop) calls, per optimizer step k::

    backward()                      # gradients of this step are in p.grad
    algo.before_optimizer_step()    # e.g. OD-SGD: swap in W and the delayed mean gradient
    optimizer.step()                # the user's optimizer, unchanged
    algo.after_optimizer_step()     # e.g. DaSGD: merge/launch averages; k += 1

and at the end of training ``algo.finish()``. Validation runs inside ``with algo.consensus():``.
"""

from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer


class DelayedAlgorithm(ABC):
    """Base class of the algorithm objects in :mod:`lightning_delayed.core`.

    Attributes:
        step: ``k``, the number of optimizer steps taken so far (after gradient accumulation).
    """

    def __init__(self) -> None:
        self.step = 0

    def before_optimizer_step(self) -> None:  # noqa: B027 - optional hook, empty by design
        """Called after backward of step ``k`` and before the user's ``optimizer.step()``."""

    @abstractmethod
    def after_optimizer_step(self) -> None:
        """Called after the user's ``optimizer.step()`` of step ``k``; must end with ``k += 1``."""

    def finish(self) -> None:  # noqa: B027 - optional hook, empty by design
        """End of training: wait for and merge all pending communication (the algorithm's rule)."""

    @contextlib.contextmanager
    def consensus(self) -> Iterator[None]:
        """Context in which the module holds the consensus model; restores the local state after."""
        yield

    def state_dict(self) -> dict[str, Any]:
        """State identical on every rank (saved once)."""
        return {"step": self.step}

    def local_state_dict(self) -> dict[str, Any]:
        """State that differs between ranks (gathered from every rank into the checkpoint)."""
        return {}

    def load_state_dict(self, state: dict[str, Any], local_state: dict[str, Any]) -> None:
        """Restore from :meth:`state_dict` and this rank's :meth:`local_state_dict`."""
        self.step = int(state["step"])


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
        torch._foreach_copy_(list(dst), list(src))
