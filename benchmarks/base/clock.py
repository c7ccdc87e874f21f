"""Training wall time with validation left out: the clock of every time-to-target workload."""

from __future__ import annotations

import time

import lightning.pytorch as pl


class TrainingClock(pl.Callback):
    """Seconds of training since ``on_train_start``, the time spent in validation left out.

    After every validation :meth:`record` gets the training seconds up to when it began (a
    subclass stores a point of its curve there, and may stop the fit); the validation's own time,
    :meth:`record` included, is then added to the pause.
    """

    def __init__(self) -> None:
        self.points: list[dict[str, float]] = []
        self.start = self.paused_at = self.paused = 0.0

    def on_train_start(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        self.start = time.perf_counter()

    def on_validation_start(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        self.paused_at = time.perf_counter()

    def on_validation_end(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        self.record(trainer, self.paused_at - self.start - self.paused)
        self.paused += time.perf_counter() - self.paused_at

    def record(self, trainer: pl.Trainer, wall_s: float) -> None:
        """One validation's point: ``wall_s`` training seconds so far; the default stores nothing."""

    def elapsed(self) -> float:
        """Training seconds up to now (validation left out)."""
        return time.perf_counter() - self.start - self.paused
