"""Rank-side code of tests/strategies/test_process_groups.py: the strategy's own process group."""

from __future__ import annotations

import gc
import json
import os
import signal
import threading
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import lightning as L
import torch.distributed as dist

import lightning_delayed
from lightning_delayed.comm.compression import CompressedHook
from tests.helpers.models import RegressionModule, trainer


def _tmp() -> Path:
    return Path(os.environ["LD_TEST_TMP"])


def resources() -> dict[str, int]:
    """What a leaked process group or RPC agent keeps: OS threads (native ones included) and open fds."""
    gc.collect()
    return {
        "threads": len(os.listdir("/proc/self/task")),
        "python_threads": threading.active_count(),
        "fds": len(os.listdir("/proc/self/fd")),
    }


def repeated_fits(strategies: list[str], fits: int) -> dict[str, Any]:
    """``fits`` short fits per strategy in this one process; the resources after each fit.

    Every trainer is kept, as a user who fits, then tests or saves later would: a group must be
    released even while the strategy that created it is still referenced.
    """
    out: dict[str, Any] = {}
    kept = []
    for name in strategies:
        counts, seconds = [], []
        for _ in range(fits):
            start = time.monotonic()
            module = RegressionModule(n_batches=3, opt={"kind": "sgd", "lr": 0.05, "momentum": 0.0})
            fit = trainer(name, max_epochs=1)
            fit.fit(module)
            kept.append(fit)
            counts.append(resources())
            seconds.append(time.monotonic() - start)
        out[name] = counts
        out[name + "/seconds"] = seconds
    return out


# ---------------------------------------------------------------------- a peer stopped (SIGSTOP)


class _StopAt(L.Callback):
    """Rank 1 stops itself (SIGSTOP, like a hung or swapped-out process) before optimizer step ``step``."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer: L.Trainer, *args: Any) -> None:
        if trainer.global_rank == 1 and trainer.global_step == self.step:
            (_tmp() / "stopped.json").write_text(json.dumps({"pid": os.getpid(), "t": time.time()}))
            os.kill(os.getpid(), signal.SIGSTOP)


def stopped_peer(strategy: str, timeout_s: float, kwargs: dict[str, Any], stop_at: int = 3) -> dict[str, Any]:
    """Rank 1 stops at step ``stop_at`` of 40; rank 0 records when and how its fit failed, then kills rank 1."""
    cls = {
        "odsgd": lightning_delayed.ODSGDStrategy,
        "dasgd": lightning_delayed.DaSGDStrategy,
        "cocodsgd": lightning_delayed.CoCoDSGDStrategy,
        "overlap_local_sgd": lightning_delayed.OverlapLocalSGDStrategy,
        "ssgd": lightning_delayed.SSGDStrategy,
        "local_sgd": lightning_delayed.LocalSGDStrategy,
    }[strategy]
    module = RegressionModule(n_batches=40, opt={"kind": "sgd", "lr": 0.01, "momentum": 0.0})
    fit = trainer(cls(timeout=timedelta(seconds=timeout_s), **kwargs), max_epochs=1, callbacks=[_StopAt(stop_at)])
    try:
        fit.fit(module)
    except Exception as e:  # the failure is the result
        failed_at = time.time()
        stopped = json.loads((_tmp() / "stopped.json").read_text())
        result = {"error": type(e).__name__, "message": str(e), "seconds": failed_at - stopped["t"]}
    else:
        result = {"error": None, "message": "fit finished", "seconds": -1.0}
    # The launcher keeps no result of a run in which a rank was killed: report through the log.
    print("STOPPED-PEER " + json.dumps(result), flush=True)
    stopped = json.loads((_tmp() / "stopped.json").read_text())
    os.kill(stopped["pid"], signal.SIGKILL)  # the stopped peer would never exit by itself
    return result


# ---------------------------------------------------------------------- the group the communicator uses


class _GroupProbe(L.Callback):
    """Records, at the start of training, which group the communicator and every hook inside it use."""

    def __init__(self) -> None:
        self.seen: dict[str, Any] = {}

    def on_train_start(self, trainer: L.Trainer, *args: Any) -> None:
        strategy = trainer.strategy
        comm = strategy.communicator
        own = strategy.comm_group
        hooks = [comm]
        while isinstance(hooks[-1], CompressedHook):
            hooks.append(hooks[-1].inner)
        self.seen = {
            "own_group_is_default": own is None or own == dist.group.WORLD,
            "hooks": [type(h).__name__ for h in hooks],
            "hooks_on_own_group": [h.group is own for h in hooks],
        }


def communicator_groups(cases: list[tuple[str, str]]) -> list[dict[str, Any]]:
    """For each (strategy, compression), one short fit; which group its communication used."""
    classes = {"odsgd": lightning_delayed.ODSGDStrategy, "dasgd": lightning_delayed.DaSGDStrategy}
    seen = []
    for strategy, compression in cases:
        probe = _GroupProbe()
        module = RegressionModule(n_batches=2, opt={"kind": "sgd", "lr": 0.05, "momentum": 0.0})
        trainer(classes[strategy](compression=compression), max_epochs=1, callbacks=[probe]).fit(module)
        seen.append(probe.seen)
    return seen
