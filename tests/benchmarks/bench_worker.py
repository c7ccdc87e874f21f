"""Rank-side code of the monitor and baseline tests (started by tests.helpers.launch.run_ranks)."""

from __future__ import annotations

from typing import Any

import lightning as L
import torch

from benchmarks.base.baselines import ComputeOnlyStrategy, PostLocalSGDStrategy
from lightning_delayed import CommMonitor, DaSGDStrategy, ODSGDStrategy, SSGDStrategy, record_staleness
from tests.helpers.models import RegressionModule, trainer


class MemoryLogger(L.pytorch.loggers.Logger):
    """Keeps every logged metric dict (what a user's TensorBoard/CSV logger would receive)."""

    def __init__(self) -> None:
        super().__init__()
        self.metrics: list[dict[str, float]] = []

    @property
    def name(self) -> str:
        return "memory"

    @property
    def version(self) -> int:
        return 0

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        self.metrics.append(dict(metrics))

    def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
        pass


class ReportStaleness(L.Callback):
    """Stands in for an asynchronous strategy: reports two staleness values in every step."""

    def on_before_optimizer_step(self, *args: Any) -> None:
        record_staleness(1)
        record_staleness(3)


class StepProbe(L.Callback):
    """Each step: this rank's gradient (before the optimizer) and weights (after the step)."""

    def __init__(self) -> None:
        self.grads: list[list[torch.Tensor]] = []
        self.params: list[list[torch.Tensor]] = []

    def on_before_optimizer_step(self, trainer: L.Trainer, module: L.LightningModule, *args: Any) -> None:
        # (None where a strategy skips a parameter's update, e.g. OD-SGD's first delayed step)
        self.grads.append([torch.zeros(0) if p.grad is None else p.grad.detach().clone() for p in module.parameters()])

    def on_train_batch_end(self, trainer: L.Trainer, module: L.LightningModule, *args: Any) -> None:
        self.params.append([p.detach().clone() for p in module.parameters()])


def monitor_runs() -> dict[str, Any]:
    """Four short fits in the same two processes: what the monitor logged and counted for each."""
    out: dict[str, Any] = {}
    module = RegressionModule(n_batches=6)
    out["param_bytes"] = sum(p.numel() * p.element_size() for p in module.parameters())
    cases = {
        "ssgd": (SSGDStrategy(), []),
        "odsgd": (ODSGDStrategy(), []),
        "dasgd": (DaSGDStrategy(sync_every=2, delay=1), [ReportStaleness()]),
        "post_local_sgd": (PostLocalSGDStrategy(model_averaging_period=2), []),
        "compute_only": (ComputeOnlyStrategy(), []),
    }
    for name, (strategy, extra) in cases.items():
        monitor, logger, probe = CommMonitor(keep_history=True), MemoryLogger(), StepProbe()
        trainer(strategy, max_epochs=1, logger=logger, log_every_n_steps=1, callbacks=[monitor, probe, *extra]).fit(
            RegressionModule(n_batches=6)
        )
        out[name] = {
            "history": [(r.step, r.step_s, r.blocked_s, r.bytes, r.staleness) for r in monitor.history],
            "logged": logger.metrics,
            "grads": probe.grads,
            "params": probe.params,
        }
    return out
