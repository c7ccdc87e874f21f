"""``sasgd`` and ``asgd``: staleness-aware asynchronous SGD on a ``torch.distributed.rpc`` parameter server.

See :mod:`lightning_delayed.core.sasgd_server` for the rule, :mod:`lightning_delayed.core.sasgd` for the
workers and ``docs/algorithms/sasgd.md``.
"""

from __future__ import annotations

import functools
import inspect
import os
from typing import TYPE_CHECKING, Any

import lightning.pytorch as pl
import torch
import torch.distributed as dist
from lightning.pytorch.strategies import DDPStrategy
from lightning.pytorch.utilities.exceptions import SIGTERMException
from torch import Tensor
from torch.nn.parallel import DistributedDataParallel
from typing_extensions import override

from lightning_delayed._compat import collective_timeout, replace_sigterm_broadcast
from lightning_delayed.comm import parameter_server as ps
from lightning_delayed.comm.buckets import DEFAULT_BUCKET_CAP_MB
from lightning_delayed.comm.compression import Compressor
from lightning_delayed.comm.quantized import QUANTIZED_BITS
from lightning_delayed.core.sasgd import SASGDConfig, SASGDWorker
from lightning_delayed.core.sasgd_server import ParameterServer, ServerScheduler, server_optimizer, server_scheduler
from lightning_delayed.strategies.base import DelayedStrategy, refuse_grad_scaler
from lightning_delayed.strategies.checks import refuse_unknown_keywords
from lightning_delayed.strategies.groups import refuse_group_size

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from lightning.fabric.utilities.types import _PATH
    from torch.optim import Optimizer

    from lightning_delayed.core.base import DelayedAlgorithm

# DelayedStrategy/DDPStrategy arguments that still mean something without a DDP wrapper.
_KEPT_ARGS = {
    "accelerator",
    "parallel_devices",
    "cluster_environment",
    "checkpoint_io",
    "precision_plugin",
    "process_group_backend",
    "timeout",
    "start_method",
    "check_finite",
    "compression",
    "block_size",
    "error_feedback",
}


def _is_ddp_default(name: str, value: Any) -> bool:
    for fn in (DDPStrategy.__init__, DistributedDataParallel.__init__):
        param = inspect.signature(fn).parameters.get(name)
        if param is not None and param.default is not inspect.Parameter.empty:
            return bool(value is param.default or value == param.default)
    return value is None


class SASGDStrategy(DelayedStrategy):
    r"""Staleness-aware asynchronous SGD (Zhang et al., IJCAI 2016): workers never wait for each other.

    Each worker pushes the gradient it computed at server version ``j`` and pulls the newest
    ``theta``; the server (beside rank 0's worker) scales it by ``1 / max(i - j, 1)``
    and applies the user's optimizer once per ``c = max(1, N // softsync)`` gradients.

    Args:
        softsync: ``n`` of n-softsync, ``1 <= n <= N``; ``None`` (default) is ``N``: an update per gradient.
        staleness_aware: scale gradients by ``1/max(staleness, 1)`` (default); ``False`` is plain ASGD.
        worker_timeout: seconds a worker may stay connected but silent (no push or heartbeat: stopped,
            hung, cut off) before the server declares it lost and every other worker stops with an
            error naming it (default 60). A worker whose process ends is declared lost at once; a
            slow step is not silence (heartbeats run on their own thread).
        check_finite: refuse a pushed gradient with NaN or Inf (the error names the rank).
        compression: ``"fp16"`` / ``"bf16"`` sends the pushed gradients in that dtype, with error feedback
            (``error_feedback=True``); ``theta`` is pulled at full precision. ``"int8"`` / ``"int4"``
            are refused: their reduce-scatter shape needs a mean computed by all ranks together, and
            a push to the server is one rank's gradient.
        process_group_backend, timeout, start_method, ...: as for every strategy; the process group
            is used only to start RPC, at checkpoints and at the end.

    Choices the rule leaves open (``docs/algorithms/sasgd.md``):
        * The model is not wrapped in ``DistributedDataParallel``; DDP arguments are refused.
        * ``group_size`` other than 1 is refused: each worker pushes its own gradient to the
          parameter server asynchronously, with no collective between workers to shard; a
          synchronous group inside a worker would make every rank of it wait for the slowest.
        * The server keeps ``theta`` in host memory; GPU workers stage gradients through the host.
        * LR schedulers run on the server (``interval="step"``: per server update; ``"epoch"``: per
          data pass of N worker-epochs). ``ReduceLROnPlateau`` is refused.
        * Validation runs on the server's current ``theta`` (pulled), and each worker's weights and
          version are restored after it. Checkpoints (``state_dict`` = server's ``theta``, plus the
          server's version, accumulator, optimizer and scheduler state) and the end of ``fit`` are
          the synchronization points; training steps never wait for another worker.
        * At the end every rank holds the server's final ``theta``; floating-point buffers (BatchNorm
          statistics), which the server does not hold, are averaged over the ranks.
    """

    strategy_name = "sasgd"
    staleness_aware_default = True

    def __init__(
        self,
        softsync: int | None = None,
        staleness_aware: bool = True,
        worker_timeout: float = 60.0,
        **kwargs: Any,
    ) -> None:
        refuse_group_size(
            type(self),
            kwargs,
            "SA-SGD workers push gradients to a parameter server asynchronously; there is no average between "
            "workers to shard (docs/algorithms/sasgd.md).",
        )
        self.config = SASGDConfig(softsync=softsync, staleness_aware=staleness_aware, worker_timeout=worker_timeout)
        refuse_unknown_keywords(type(self), set(kwargs) - _KEPT_ARGS - {"bucket_cap_mb", "comm_hook"})
        bucket_cap_mb = kwargs.pop("bucket_cap_mb", DEFAULT_BUCKET_CAP_MB)
        if bucket_cap_mb not in (None, DEFAULT_BUCKET_CAP_MB):
            raise ValueError(
                f"{type(self).__name__} sends whole gradients over RPC, so bucket_cap_mb={bucket_cap_mb!r} does not "
                "apply; remove the argument"
            )
        if kwargs.get("comm_hook") is not None:
            raise ValueError(
                f"{type(self).__name__} talks to its parameter server over RPC, not through collectives, so "
                "comm_hook does not apply; use compression='fp16'/'bf16' to shrink the pushed gradients"
            )
        # LightningCLI passes every DDPStrategy / DistributedDataParallel argument with its default;
        # refuse only the ones set to something else, since nothing wraps the model in DDP.
        ignored = sorted(k for k, v in kwargs.items() if k not in _KEPT_ARGS and not _is_ddp_default(k, v))
        if ignored:
            raise ValueError(
                f"{type(self).__name__} does not wrap the model in DistributedDataParallel, so {ignored} would be "
                "ignored; remove them (sasgd's arguments are softsync, staleness_aware, worker_timeout, "
                "compression, error_feedback and check_finite)"
            )
        compression = kwargs.get("compression", "none")
        if isinstance(compression, str) and compression in QUANTIZED_BITS:
            raise ValueError(
                f"{type(self).__name__} does not support compression={compression!r}: the low-bit reduction "
                "quantizes chunks of a mean that all ranks compute together (a reduce-scatter, then an all-gather), "
                "and SA-SGD has no such mean: each worker pushes its own gradient to the parameter server, which "
                "applies it alone. Use compression='fp16' or 'bf16' to shrink the pushed gradients "
                "(with error feedback)."
            )
        kwargs = {k: v for k, v in kwargs.items() if k in _KEPT_ARGS}
        super().__init__(**kwargs)
        self.server: ParameterServer | None = None
        self.client: ps.ServerClient | None = None
        self._rpc_up = False
        self._epoch = 0
        self._snapshot: dict[str, Any] | None = None

    @property
    def worker(self) -> SASGDWorker | None:
        return self.algorithm if isinstance(self.algorithm, SASGDWorker) else None

    # ------------------------------------------------------------------ set-up

    @override
    def validate_trainer(self, trainer: pl.Trainer) -> None:
        # The grad scaler would step the server proxy as if it were a torch optimizer.
        refuse_grad_scaler(self, trainer)

    @override
    def configure_ddp(self) -> None:
        # No DDP wrapper: nothing is all-reduced. Start every rank from rank 0's weights and buffers.
        assert self.lightning_module is not None
        if dist.is_initialized() and dist.get_world_size() > 1:
            with torch.no_grad():
                for t in self.lightning_module.state_dict().values():
                    dist.broadcast(t, src=ps.SERVER_RANK)

    @override
    def validate_setup(self) -> None:
        world = dist.get_world_size() if dist.is_initialized() else 1
        self.config.gradients_per_update(world)  # raises on softsync > N before anything starts
        for config in self.lr_scheduler_configs:
            if config.reduce_on_plateau:
                raise ValueError(
                    f"{type(self).__name__} runs the LR schedule on the parameter server, which has no validation "
                    "metric: ReduceLROnPlateau is not supported. Use a step or epoch schedule."
                )

    @override
    def build_algorithm(self, params: Sequence[Tensor], optimizer: Optimizer) -> DelayedAlgorithm:
        world = dist.get_world_size() if dist.is_initialized() else 1
        rank = self.global_rank
        server, error = None, None
        if rank == ps.SERVER_RANK:
            try:
                server = self._build_server(params, optimizer, world)
            except (ValueError, TypeError) as e:
                error = e
        _refuse_on_every_rank(error)
        # The schedules run on the server; Lightning must not step the workers' copies.
        self.lr_scheduler_configs = []
        self.server = server
        ps.install_server(server)
        master_addr = os.environ.get("MASTER_ADDR", "127.0.0.1")
        master_port = int(os.environ["MASTER_PORT"]) if os.environ.get("MASTER_PORT") else None
        timeout = collective_timeout(self) or torch.distributed.constants.default_pg_timeout
        ps.start_rpc(rank, world, master_addr, master_port, timeout)
        self._rpc_up = True
        if server is not None:
            ps.LivenessWatch(server, world).start()
        self.client = ps.ServerClient(rank, heartbeat_s=min(1.0, self.config.worker_timeout / 10))
        self.client.start_heartbeat()
        compressor = None if self.compression == "none" else Compressor(self.compression, self.error_feedback)  # type: ignore[arg-type]
        return SASGDWorker(params, optimizer, self.client, server, compressor)

    def _build_server(self, params: Sequence[Tensor], optimizer: Optimizer, world: int) -> ParameterServer:
        theta = [p.detach().to("cpu", copy=True) for p in params]
        rebuilt = server_optimizer(optimizer, params, theta)
        schedulers = [
            ServerScheduler(server_scheduler(cfg.scheduler, optimizer, rebuilt), cfg.interval, cfg.frequency)
            for cfg in self.lr_scheduler_configs
        ]
        return ParameterServer(self.config, theta, rebuilt, world, schedulers, check_finite=self.check_finite)

    @override
    def setup(self, trainer: pl.Trainer) -> None:
        super().setup(trainer)
        if self.worker is not None:
            # Lightning 2.6 broadcasts a "received SIGTERM" flag from rank 0 before every training
            # batch, a collective that would put the workers back in lock-step. Each worker checks
            # its own flag instead; a worker that stops is noticed by the server (heartbeats).
            replace_sigterm_broadcast(trainer, functools.partial(_local_sigterm_check, trainer))

    # ------------------------------------------------------------------ the step

    @override
    def on_train_start(self) -> None:
        super().on_train_start()  # restores the server from a checkpoint, on the server rank
        worker = self.worker
        if worker is not None:
            if dist.is_initialized():
                dist.barrier()  # nobody pulls before the server is restored
            worker.start()
            assert self.lightning_module is not None
            self._epoch = self.lightning_module.current_epoch

    @override
    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        super().on_train_batch_start(batch, batch_idx)
        assert self.lightning_module is not None
        epoch = self.lightning_module.current_epoch
        if self.client is not None and self.worker is not None and not self.worker.finished:
            while self._epoch < epoch:  # tell the server about finished epochs (epoch LR schedules)
                self.client.epoch_done()
                self._epoch += 1

    @override
    def optimizer_step(
        self,
        optimizer: Optimizer,
        closure: Callable[[], Any],
        model: pl.LightningModule | torch.nn.Module | None = None,
        **kwargs: Any,
    ) -> Any:
        worker = self.worker
        if worker is None:
            return super().optimizer_step(optimizer, closure, model, **kwargs)
        model = model if isinstance(model, pl.LightningModule) else self.lightning_module
        assert model is not None
        # The precision plugin runs the closure (forward, backward, clipping, hooks) inside
        # `step`; the proxy's step then pushes the gradient and pulls theta instead of stepping.
        output = self.precision_plugin.optimizer_step(_ServerStep(optimizer, worker), model=model, closure=closure)
        self._log_step(worker)
        return output

    def _log_step(self, worker: SASGDWorker) -> None:
        module = self.lightning_module
        if module is None or worker.last is None:
            return
        module.log("sasgd/staleness", float(worker.last.staleness), on_step=True, on_epoch=False)
        module.log("sasgd/scale", worker.last.scale, on_step=True, on_epoch=False)
        if self.server is not None:
            summary = self.server.staleness_summary()
            module.log("sasgd/staleness_mean", summary["mean"], on_step=True, on_epoch=False)
            module.log("sasgd/staleness_max", summary["max"], on_step=True, on_epoch=False)
            module.log("sasgd/server_version", float(self.server.version), on_step=True, on_epoch=False)

    # ------------------------------------------------------------------ the end

    @override
    def on_train_end(self) -> None:
        super().on_train_end()  # worker.finish(): wait for every worker, take the final theta
        if self.worker is None:
            return
        self._average_float_buffers()
        self._log_histogram()
        self._stop_rpc(graceful=True)

    def _average_float_buffers(self) -> None:
        if not (dist.is_initialized() and dist.get_world_size() > 1):
            return
        assert self.lightning_module is not None
        with torch.no_grad():
            for b in self.lightning_module.buffers():
                if b.is_floating_point():
                    dist.all_reduce(b, op=dist.ReduceOp.SUM)
                    b.div_(dist.get_world_size())

    def _log_histogram(self) -> None:
        if self.server is None or self.lightning_module is None:
            return
        trainer = self.lightning_module.trainer
        summary = self.server.staleness_summary()
        metrics = {f"sasgd/staleness_hist/{s}": float(n) for s, n in sorted(self.server.staleness_counts.items())}
        metrics.update({"sasgd/staleness_mean_total": summary["mean"], "sasgd/staleness_max_total": summary["max"]})
        for r, n in enumerate(self.server.pushes_by_rank):
            metrics[f"sasgd/pushes/rank{r}"] = float(n)
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=trainer.global_step)

    def _stop_rpc(self, graceful: bool) -> None:
        if self.client is not None:
            self.client.stop_heartbeat()
        if self._rpc_up:
            self._rpc_up = False
            ps.shutdown_rpc(graceful=graceful, timeout=self.config.worker_timeout)

    @override
    def teardown(self) -> None:
        # On an error path the peers may be gone: shut the agent down without waiting for them.
        self._stop_rpc(graceful=False)
        super().teardown()

    @override
    def on_exception(self, exception: BaseException) -> None:
        self._stop_rpc(graceful=False)
        super().on_exception(exception)

    # ------------------------------------------------------------------ checkpoints

    @override
    def save_checkpoint(self, checkpoint: dict[str, Any], filepath: _PATH, storage_options: Any | None = None) -> None:
        # Other workers keep pushing while a checkpoint is written, so take ONE snapshot of the
        # server and make the checkpoint's state_dict the theta of that same snapshot.
        self._snapshot = self._algorithm_checkpoint() if self.algorithm is not None else None
        try:
            if self._snapshot is not None and self.server is not None and self.lightning_module is not None:
                theta = self._snapshot["state"]["server"]["theta"]
                names = [n for n, p in self.lightning_module.named_parameters() if p.requires_grad]
                state_dict = checkpoint["state_dict"]
                for name, t in zip(names, theta, strict=True):
                    state_dict[name] = t.to(state_dict[name].dtype).clone()
            super().save_checkpoint(checkpoint, filepath, storage_options=storage_options)
        finally:
            self._snapshot = None

    @override
    def _algorithm_checkpoint(self) -> dict[str, Any]:
        return self._snapshot if self._snapshot is not None else super()._algorithm_checkpoint()

    @override
    def _enter_consensus(self) -> None:
        if self.worker is not None and self.worker.finished:
            return
        super()._enter_consensus()


class ASGDStrategy(SASGDStrategy):
    """Plain asynchronous SGD, the paper's baseline: ``sasgd`` with ``staleness_aware=False``.

    Args:
        softsync: ``n`` of n-softsync (default ``N``).
        worker_timeout: seconds of silence after which a worker counts as lost.
    """

    strategy_name = "asgd"

    def __init__(self, softsync: int | None = None, worker_timeout: float = 60.0, **kwargs: Any) -> None:
        if kwargs.pop("staleness_aware", False):
            raise ValueError(
                "asgd is sasgd with staleness_aware=False; use strategy='sasgd' for the staleness-aware rule"
            )
        super().__init__(softsync=softsync, staleness_aware=False, worker_timeout=worker_timeout, **kwargs)


def _refuse_on_every_rank(error: Exception | None) -> None:
    """Raise the server rank's set-up refusal on every rank (a refusal on rank 0 alone leaves the others
    waiting for a server that never starts)."""
    box: list[Any] = [None if error is None else (type(error).__name__, str(error))]
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.broadcast_object_list(box, src=ps.SERVER_RANK)
    if box[0] is not None:
        if error is not None:
            raise error
        kind, message = box[0]
        raise (TypeError if kind == "TypeError" else ValueError)(message)


def _local_sigterm_check(trainer: pl.Trainer) -> None:
    if getattr(trainer, "received_sigterm", False):
        raise SIGTERMException()


class _ServerStep:
    """Stands in for the user's optimizer in the precision plugin: ``step`` runs the closure, then
    pushes and pulls. Everything else (``param_groups`` for clipping, hooks) is the real optimizer's."""

    def __init__(self, optimizer: Optimizer, worker: SASGDWorker) -> None:
        self._optimizer = optimizer
        self._worker = worker

    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        output = closure() if closure is not None else None
        self._worker.after_optimizer_step()
        return output

    def __getattr__(self, name: str) -> Any:
        return getattr(self._optimizer, name)
