r"""DaSGD (delayed averaging) and CoCoD-SGD (computation/communication decoupled SGD).

Zhou et al. *DaSGD: Squeezing SGD Parallelization Performance in Distributed Training Using
Delayed Averaging.* arXiv:2006.00441 (2020). https://arxiv.org/abs/2006.00441

Shen, Xu, Liu, Liang, Cheng. *Computation and Communication Decoupled SGD.* IJCAI 2019.
https://arxiv.org/abs/1906.12043 -- DaSGD with :math:`d = \tau`, optionally sample-weighted.

No gradient is communicated; each rank steps on its own gradient. After the optimizer step of
step :math:`k`, in this order:

.. math::

    \text{merge:}\quad & \text{if an average was launched at step } k - d:\;
        x \leftarrow \bar c + (x - s) \\
    \text{launch:}\quad & \text{if } (k + 1) \bmod \tau = 0:\;
        s \leftarrow x,\ \text{launch } \bar c = \mathrm{mean}(x)

With ``weighting="samples"``, :math:`\bar c = \sum_i n_i c_i / \sum_i n_i` where :math:`n_i` is
the number of samples rank :math:`i` processed since its previous launch (fed by
:meth:`DaSGD.add_samples`). The optimizer's own state stays local and is not corrected.
Because :math:`d \le \tau`, at most one average is in flight.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from lightning_delayed.comm.buckets import Completed, Pending
from lightning_delayed.core.averaging import (
    WEIGHTINGS,
    AveragingAlgorithm,
    ParameterCommunicator,
    check_average_buffers,
    check_sync_every,
    merge_delayed_,
)
from lightning_delayed.core.base import clone_all, copy_all_

if TYPE_CHECKING:
    from collections.abc import Sequence

    from torch import Tensor
    from torch.optim import Optimizer


@dataclass(frozen=True)
class DaSGDConfig:
    """Arguments of DaSGD / CoCoD-SGD.

    Args:
        sync_every: :math:`\\tau \\ge 1`, optimizer steps between launches.
        delay: :math:`d`, ``1 <= d <= sync_every``: an average launched at step k is merged at k + d.
        weighting: ``"uniform"`` or ``"samples"`` (weight = samples since the rank's last launch).
        average_buffers: also average floating-point buffers (BatchNorm statistics).
    """

    sync_every: int = 4
    delay: int = 1
    weighting: str = "uniform"
    average_buffers: bool = True

    def __post_init__(self) -> None:
        check_sync_every(self.sync_every)
        if isinstance(self.delay, bool) or not isinstance(self.delay, int) or not 1 <= self.delay <= self.sync_every:
            raise ValueError(
                f"delay (d) must be an integer with 1 <= delay <= sync_every={self.sync_every}, got {self.delay!r}"
            )
        if self.weighting not in WEIGHTINGS:
            raise ValueError(f"weighting must be one of {WEIGHTINGS}, got {self.weighting!r}")
        check_average_buffers(self.average_buffers)


def cocodsgd_config(sync_every: int = 4, weighting: str = "uniform", average_buffers: bool = True) -> DaSGDConfig:
    """CoCoD-SGD: DaSGD whose average is merged at the next synchronisation point (``delay = sync_every``)."""
    check_sync_every(sync_every)
    return DaSGDConfig(sync_every=sync_every, delay=sync_every, weighting=weighting, average_buffers=average_buffers)


class DaSGD(AveragingAlgorithm):
    """DaSGD / CoCoD-SGD state and rule (see the module docstring).

    Attributes:
        snapshot: ``s``, the copy of ``x`` taken at the last launch.
        pending: the average in flight, launched at step ``launch_step``.
        samples_since_launch: ``n_i`` for ``weighting="samples"``.
    """

    def __init__(
        self,
        config: DaSGDConfig,
        tensors: Sequence[Tensor],
        optimizer: Optimizer,
        comm: ParameterCommunicator | None = None,
    ) -> None:
        super().__init__(tensors, optimizer, comm)
        self.config = config
        self.snapshot: list[Tensor] | None = None
        self.pending: Pending | None = None
        self.launch_step: int | None = None
        self.samples_since_launch = 0

    def add_samples(self, n: int) -> None:
        """Count ``n`` samples processed by this rank (the strategy calls it per training batch)."""
        self.samples_since_launch += int(n)

    def _merge(self) -> None:
        assert self.pending is not None and self.snapshot is not None
        average = self.pending.wait()
        merge_delayed_(self.tensors, average, self.snapshot)
        self.pending, self.launch_step = None, None

    def _weight(self) -> float | None:
        if self.config.weighting == "uniform":
            return None
        if self.samples_since_launch <= 0:
            raise RuntimeError(
                "DaSGD with weighting='samples' counted no samples since the last launch: the strategy "
                "must call add_samples() for every training batch"
            )
        return float(self.samples_since_launch)

    def after_optimizer_step(self) -> None:
        if self.pending is not None and self.launch_step == self.step - self.config.delay:
            self._merge()
        if self.is_sync_step(self.config.sync_every):
            assert self.pending is None, "delay <= sync_every: the previous average was merged above"
            if self.snapshot is None:
                self.snapshot = clone_all(self.tensors)
            else:
                copy_all_(self.snapshot, self.tensors)
            self.pending = self.launch(self.tensors, self._weight())
            self.launch_step = self.step
            self.samples_since_launch = 0
        self.step += 1

    def finish_pending(self) -> None:
        if self.pending is not None:
            self._merge()

    def state_dict(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "launch_step": self.launch_step,
            # Waiting only receives the average early; it is merged at the same step as always.
            "pending_average": None if self.pending is None else clone_all(self.pending.wait()),
        }

    def local_state_dict(self) -> dict[str, Any]:
        return {
            **super().local_state_dict(),
            "snapshot": None if self.snapshot is None else clone_all(self.snapshot),
            "samples_since_launch": self.samples_since_launch,
        }

    def load_state_dict(self, state: dict[str, Any], local_state: dict[str, Any]) -> None:
        super().load_state_dict(state, local_state)
        self.launch_step = state["launch_step"]
        pending = self.maybe_tensors(state["pending_average"])
        self.pending = None if pending is None else Completed(pending)
        self.snapshot = self.maybe_tensors(local_state["snapshot"])
        self.samples_since_launch = int(local_state["samples_since_launch"])

    def merged_local_tensors(self, state: dict[str, Any], local_state: dict[str, Any]) -> list[Tensor]:
        """End-of-fit merge of a saved rank: ``x <- cbar + (x - s)`` when an average was pending."""
        x = clone_all(local_state["tensors"])
        if state["pending_average"] is not None:
            merge_delayed_(x, state["pending_average"], local_state["snapshot"])
        return x

    def load_resized_state_dict(self, state: dict[str, Any], local_states: list[dict[str, Any]], *, rank: int) -> None:
        super().load_resized_state_dict(state, local_states, rank=rank)
        # The samples counted since the last launch: the saved ranks' mean, so the first average
        # after the resume weights this period like the saved ranks did on average.
        counts = [int(local["samples_since_launch"]) for local in local_states]
        self.samples_since_launch = sum(counts) // len(counts)
