"""A single-process stand-in for the process group: N simulated replicas in lock-step.

``launch(rank, tensors)`` deposits a copy; the returned pending's ``wait()`` averages the copies
that all replicas deposited under the same sequence number, exactly like an all-reduce would.
"""

from __future__ import annotations

import threading
from collections import defaultdict

import torch


class FakeGroup:
    def __init__(self, world_size: int) -> None:
        self.world_size = world_size
        self._seq = [0] * world_size
        self._slots: dict[int, dict[int, list[torch.Tensor]]] = defaultdict(dict)
        self.launches = 0
        self.cond = threading.Condition()  # replicas may run in threads (blocking averages)

    def launch(self, rank: int, tensors: list[torch.Tensor]) -> FakePending:
        seq = self._seq[rank]
        self._seq[rank] += 1
        with self.cond:
            self._slots[seq][rank] = [t.detach().clone() for t in tensors]
            self.launches += 1
            self.cond.notify_all()
        return FakePending(self, seq)

    def average_now(self, per_rank: list[list[torch.Tensor]]) -> list[torch.Tensor]:
        return [sum(ts) / self.world_size for ts in zip(*per_rank, strict=True)]


class FakePending:
    def __init__(self, group: FakeGroup, seq: int) -> None:
        self.group, self.seq = group, seq

    def wait(self, timeout: float = 0.0) -> list[torch.Tensor]:
        """``timeout > 0``: poll that long for the other replicas (replicas running in threads)."""
        contributions = self.group._slots[self.seq]
        with self.group.cond:
            self.group.cond.wait_for(lambda: len(contributions) == self.group.world_size, timeout=timeout)
        assert len(contributions) == self.group.world_size, "wait() before every replica launched"
        return self.group.average_now([contributions[r] for r in range(self.group.world_size)])


class FakeGradComm:
    """The OD-SGD gradient communicator of one replica (what the DDP hook is in real runs)."""

    def __init__(self, group: FakeGroup, rank: int) -> None:
        self.group, self.rank = group, rank
        self._launched: FakePending | None = None

    def backward_done(self, grads: list[torch.Tensor]) -> None:
        """Call after backward: launches the mean like the DDP hook does (p.grad keeps the own gradient)."""
        self._launched = self.group.launch(self.rank, grads)

    def take_launched(self) -> FakePending | None:
        launched, self._launched = self._launched, None
        return launched
