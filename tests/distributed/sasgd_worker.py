"""Rank-side code of the SASGD tests (run by :func:`tests.helpers.launch.run_ranks`)."""

from __future__ import annotations

import os
import time
from typing import Any

import lightning as L
import torch
from lightning.pytorch.loggers import Logger

from lightning_delayed import SASGDStrategy
from lightning_delayed.strategies.sasgd import ASGDStrategy
from tests.helpers.models import RegressionModule, SaveAt, params_of, rank, trainer


class SlowRank(RegressionModule):
    """The regression module, with ``delay`` seconds added to every step of ``slow_rank``."""

    def __init__(self, slow_rank: int, delay: float, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.slow_rank, self.delay = slow_rank, delay

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        if rank() == self.slow_rank:
            time.sleep(self.delay)  # the injected slowness under test, not a synchronisation
        return super().training_step(batch, batch_idx)


class RecordingLogger(Logger):
    """Keeps every metrics dict Lightning (or the strategy) logs."""

    def __init__(self) -> None:
        super().__init__()
        self.metrics: list[dict[str, float]] = []

    @property
    def name(self) -> str:
        return "recording"

    @property
    def version(self) -> int:
        return 0

    def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
        pass

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        self.metrics.append(dict(metrics))


class Clock(L.Callback):
    """Wall-clock time of this rank's last training batch."""

    def __init__(self) -> None:
        self.last_batch_end = 0.0
        self.train_start = 0.0

    def on_train_start(self, *args: Any) -> None:
        self.train_start = time.time()

    def on_train_batch_end(self, *args: Any) -> None:
        self.last_batch_end = time.time()


class PushedGradients(L.Callback):
    """The gradient of every step, as the worker pushes it (clipping and hooks have run)."""

    def __init__(self) -> None:
        self.grads: list[list[torch.Tensor]] = []

    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        self.grads.append([p.grad.detach().clone() for p in pl_module.parameters()])


def _server_view(strategy: SASGDStrategy) -> dict[str, Any]:
    server = strategy.server
    if server is None:
        return {}
    return {
        "history": [(r.rank, r.staleness, r.scale, r.version, r.applied) for r in server.history],
        "theta": [t.clone() for t in server.theta],
        "version": server.version,
        "pushes_by_rank": list(server.pushes_by_rank),
        "c": server.c,
    }


def asynchrony(slow_rank: int, delay: float, steps: int, aware: bool, softsync: int | None = None) -> dict[str, Any]:
    module = SlowRank(slow_rank, delay, n_batches=steps, opt={"kind": "sgd", "lr": 0.02, "momentum": 0.0})
    strategy = SASGDStrategy(softsync=softsync) if aware else ASGDStrategy(softsync=softsync)
    logger, clock, pushed = RecordingLogger(), Clock(), PushedGradients()
    trainer(strategy, max_epochs=1, logger=logger, log_every_n_steps=1, callbacks=[clock, pushed]).fit(module)
    return {
        "params": params_of(module),
        "pushed": pushed.grads,
        "server": _server_view(strategy),
        "train_start": clock.train_start,
        "last_batch_end": clock.last_batch_end,
        "logged": sorted({k for m in logger.metrics for k in m}),
        "final_metrics": logger.metrics[-1] if logger.metrics else {},
        "worker_steps": strategy.worker.step if strategy.worker else -1,
    }


def resume(
    epochs: int, n_batches: int, save_step: int, opt: dict[str, Any], resume_from: bool, ckpt: str
) -> dict[str, Any]:
    module = RegressionModule(n_batches=n_batches, opt=opt)
    strategy = SASGDStrategy()
    callbacks: list[L.Callback] = []
    if not resume_from:
        callbacks.append(SaveAt(save_step, ckpt))
    t = trainer(strategy, max_epochs=epochs, callbacks=callbacks)
    t.fit(module, ckpt_path=ckpt if resume_from else None)
    out: dict[str, Any] = {
        "params": params_of(module),
        "server": _server_view(strategy),
    }
    if not resume_from:
        saved = torch.load(ckpt, weights_only=True)  # plain tensors and containers only (docs/security.md)
        out["saved_server"] = saved["lightning_delayed"]["state"]["server"]
        out["saved_state_dict"] = saved["state_dict"]
    return out


def worker_dies(die_at: int, worker_timeout: float, dying_rank: int) -> None:
    class DieAt(L.Callback):
        def on_train_batch_start(self, trainer: L.Trainer, *args: Any) -> None:
            if trainer.global_rank == dying_rank and trainer.global_step == die_at:
                print(f"LD-DIED-AT {time.time():.3f}", flush=True)
                os._exit(3)  # a worker that dies without a word, like a killed process

    module = SlowRank(
        slow_rank=1 - dying_rank, delay=0.05, n_batches=400, opt={"kind": "sgd", "lr": 0.01, "momentum": 0.0}
    )
    try:
        trainer(SASGDStrategy(worker_timeout=worker_timeout), max_epochs=1, callbacks=[DieAt()]).fit(module)
    except Exception:
        print(f"LD-DETECTED-AT {time.time():.3f}", flush=True)
        raise
