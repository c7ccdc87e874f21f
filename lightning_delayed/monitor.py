"""``CommMonitor``: a Lightning callback that shows, per optimizer step, whether communication is hidden.

Add it to any Trainer that runs a DDP-based strategy (ours or Lightning's own ``"ddp"``)::

    trainer = L.Trainer(strategy="dasgd", callbacks=[lightning_delayed.CommMonitor()])

Per optimizer step it logs to the Lightning logger (``on_step=True``, each rank its own values; the
loggers write rank 0's):

* ``comm/step_s``: wall time of the step (forward, backward, optimizer step and the algorithm's rule);
* ``comm/blocked_s``: time of that step the rank spent waiting for communication;
* ``comm/compute_s``: ``step_s - blocked_s``;
* ``comm/bytes``: payload bytes the rank handed to collectives in that step;
* ``comm/staleness_mean``, ``comm/staleness_max``: only for strategies that report staleness.

The logger receives them every ``Trainer(log_every_n_steps=...)`` steps (Lightning's default 50);
set it to 1 to see every step.

Where the numbers come from:

* Our collectives (every strategy of this package: bucketed averages, the OD-SGD hook) count their
  bytes and time their waits in :mod:`lightning_delayed.comm.stats`; the monitor takes the
  difference of those counters across the step.
* DDP's own C++ gradient all-reduce (``ssgd``, Lightning's ``"ddp"``), which never enters Python:
  bytes are the gradient bytes of the parameters that require a gradient, on every step whose
  backward synchronises; blocked time is read from DDP's reducer timers (the monitor sets DDP's
  runtime-logging sample rate to 1): ``backward_comm_time_end - backward_compute_time_end``, the
  time the reducer waited for the last bucket after autograd finished. DDP publishes the timers
  of a backward at the *next* forward, so this part of ``blocked_s`` lags by one step (the totals
  over many steps are unaffected). Where the private DDP API is missing, ``on_fit_start`` raises
  :class:`~lightning_delayed._compat.PrivateAPIError` (never a silent 0). With a
  communication hook registered the timers are not used: hooks of this package launch through
  ``comm/`` and are counted there; a third-party hook's communication is not seen.
* DDP's per-forward buffer broadcast (``broadcast_buffers=True``) adds the floating buffers' bytes.
* Staleness (the protocol): a strategy calls :func:`lightning_delayed.comm.stats.record_staleness`
  once per applied update on the rank that applies it; the monitor logs mean and max of the values
  recorded during the step.

The totals since ``fit`` started are kept in :attr:`CommMonitor.totals` (and each logged step in
:attr:`CommMonitor.history` when ``keep_history=True``) for programs that want them without a logger.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import lightning.pytorch as pl
from torch.nn.parallel import DistributedDataParallel
from typing_extensions import override

from lightning_delayed._compat import PrivateAPIError, ddp_comm_hooks, ddp_logging_data, enable_ddp_runtime_logging
from lightning_delayed.comm.stats import CommCounters, comm_stats


@dataclass
class StepRecord:
    """What one optimizer step cost on this rank."""

    step: int
    step_s: float
    blocked_s: float
    bytes: int
    staleness: list[float] = field(default_factory=list)

    @property
    def compute_s(self) -> float:
        return max(0.0, self.step_s - self.blocked_s)


@dataclass
class CommTotals:
    steps: int = 0
    step_s: float = 0.0
    blocked_s: float = 0.0
    bytes: int = 0
    staleness_count: int = 0
    staleness_sum: float = 0.0
    staleness_max: float = 0.0

    @property
    def compute_s(self) -> float:
        return max(0.0, self.step_s - self.blocked_s)


class _ReducerTimers:
    """Exposed communication of DDP's reducer, from its runtime-logging timers (private torch API).

    A torch without that API raises :class:`~lightning_delayed._compat.PrivateAPIError` here, at
    ``on_fit_start``; a reducer that refuses runtime logging (``RuntimeError``) reports 0.
    """

    def __init__(self, ddp: DistributedDataParallel) -> None:
        self.ddp = ddp
        self.available = True
        self._last_end: int | None = None
        ddp_logging_data(ddp)  # fail now, not at the first step, if the private API is gone
        try:
            enable_ddp_runtime_logging(ddp)
        except PrivateAPIError:
            raise
        except RuntimeError:  # the reducer refuses runtime logging
            self.available = False

    def take_blocked(self) -> float:
        """Seconds the reducer waited after autograd, for the backward published since the last call."""
        if not self.available:
            return 0.0
        data = ddp_logging_data(self.ddp)
        comm_end = data.get("backward_comm_time_end")
        compute_end = data.get("backward_compute_time_end")
        if not isinstance(comm_end, int) or not isinstance(compute_end, int) or comm_end == self._last_end:
            return 0.0
        self._last_end = comm_end
        return max(0, comm_end - compute_end) / 1e9


class CommMonitor(pl.Callback):
    """Logs compute time, blocked time, bytes and staleness of every optimizer step.

    Args:
        prefix: prefix of the logged names (default ``"comm/"``).
        log: log to the Lightning logger; ``False`` only accumulates :attr:`totals`.
        keep_history: also keep every step's :class:`StepRecord` in :attr:`history`.
        skip_steps: steps at the start of ``fit`` left out of :attr:`totals` (warm-up); they are
            still logged.
    """

    def __init__(self, prefix: str = "comm/", log: bool = True, keep_history: bool = False, skip_steps: int = 0):
        if not isinstance(prefix, str):
            raise TypeError(f"prefix must be a string, got {prefix!r}")
        if isinstance(skip_steps, bool) or not isinstance(skip_steps, int) or skip_steps < 0:
            raise ValueError(f"skip_steps must be an integer >= 0, got {skip_steps!r}")
        self.prefix = prefix
        self.log = log
        self.keep_history = keep_history
        self.skip_steps = skip_steps
        self.totals = CommTotals()
        self.history: list[StepRecord] = []
        self._timers: _ReducerTimers | None = None
        self._builtin_bytes = 0
        self._buffer_bytes = 0
        self._ddp: DistributedDataParallel | None = None
        self._reset_step()

    def _reset_step(self) -> None:
        self._step_s = 0.0
        self._step_blocked = 0.0
        self._step_bytes = 0
        self._t0: float | None = None
        self._c0: CommCounters | None = None

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.totals = CommTotals()
        self.history = []
        self._reset_step()
        model = getattr(trainer.strategy, "model", None)
        self._ddp = model if isinstance(model, DistributedDataParallel) else None
        self._timers = None
        self._builtin_bytes = 0
        self._buffer_bytes = 0
        if self._ddp is not None:
            if not ddp_comm_hooks(self._ddp):
                # DDP's own C++ all-reduce. (With a hook, the reducer's timers also count its copy of
                # the results back into .grad as "communication", so they are read only here.)
                self._timers = _ReducerTimers(self._ddp)
                self._builtin_bytes = sum(
                    p.numel() * p.element_size() for p in self._ddp.module.parameters() if p.requires_grad
                )
            if self._ddp.broadcast_buffers and trainer.world_size > 1:
                self._buffer_bytes = sum(b.numel() * b.element_size() for b in self._ddp.module.buffers())
        comm_stats().drain_staleness()
        self._last_global_step = trainer.global_step

    @override
    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        self._t0 = time.perf_counter()
        self._c0 = comm_stats().snapshot()

    @override
    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if self._t0 is None or self._c0 is None:
            return
        delta = comm_stats().snapshot() - self._c0
        self._step_s += time.perf_counter() - self._t0
        self._step_blocked += delta.seconds_blocked
        self._step_bytes += delta.bytes_sent + self._buffer_bytes  # DDP broadcasts buffers every forward
        self._t0 = None
        if trainer.global_step == self._last_global_step:
            return  # a micro-batch of gradient accumulation: the optimizer step is not done yet
        self._last_global_step = trainer.global_step
        ddp = self._ddp
        if ddp is not None and self._builtin_bytes and trainer.world_size > 1 and ddp.require_backward_grad_sync:
            self._step_bytes += self._builtin_bytes
        if self._timers is not None:
            self._step_blocked += self._timers.take_blocked()
        record = StepRecord(
            step=trainer.global_step - 1,
            step_s=self._step_s,
            blocked_s=min(self._step_blocked, self._step_s),
            bytes=self._step_bytes,
            staleness=comm_stats().drain_staleness(),
        )
        self._reset_step()
        self._account(record)
        if self.log:
            self._log(pl_module, record)

    def _account(self, record: StepRecord) -> None:
        if self.keep_history:
            self.history.append(record)
        if record.step < self.skip_steps:
            return
        t = self.totals
        t.steps += 1
        t.step_s += record.step_s
        t.blocked_s += record.blocked_s
        t.bytes += record.bytes
        if record.staleness:
            t.staleness_count += len(record.staleness)
            t.staleness_sum += sum(record.staleness)
            t.staleness_max = max(t.staleness_max, *record.staleness)

    def _log(self, pl_module: pl.LightningModule, record: StepRecord) -> None:
        values = {
            f"{self.prefix}step_s": record.step_s,
            f"{self.prefix}compute_s": record.compute_s,
            f"{self.prefix}blocked_s": record.blocked_s,
            f"{self.prefix}bytes": float(record.bytes),
        }
        if record.staleness:
            values[f"{self.prefix}staleness_mean"] = sum(record.staleness) / len(record.staleness)
            values[f"{self.prefix}staleness_max"] = max(record.staleness)
        pl_module.log_dict(values, on_step=True, on_epoch=False, prog_bar=False, logger=True, sync_dist=False)
