"""``DelayedStrategy``: the Lightning glue shared by every algorithm.

It owns what is the same for all algorithms: the algorithm object's life cycle, calling its rule
around the user's optimizer step, the end-of-training flush, validation on the consensus model,
algorithm state in checkpoints, registering communication hooks on every device (Lightning's own
``DDPStrategy`` registers them only on CUDA), and refusing settings it cannot honour before the
first step. A concrete strategy only says which algorithm object and which DDP hook it builds.

Communication is chosen by two arguments every strategy accepts: ``comm_hook`` (a
:class:`~lightning_delayed.comm.communicator.CommHook`; default: bucketed all-reduce) and
``compression`` (``"none"``, ``"fp16"``, ``"bf16"``, ``"int8"``, ``"int4"``): fp16/bf16 wrap that
hook in a :class:`~lightning_delayed.comm.compression.CompressedHook`; int8/int4 average through a
:class:`~lightning_delayed.comm.lowbit.LowBitHook` (block size ``block_size``), which keeps the hook
for the one-off full-precision averages. The result is :attr:`DelayedStrategy.communicator`,
built at the start of every ``fit`` and handed to the algorithm (and to the DDP gradient hook).
"""

from __future__ import annotations

import contextlib
from datetime import timedelta  # noqa: TC003 (LightningCLI resolves __init__'s annotations at run time)
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import lightning.pytorch as pl  # noqa: TC002 (as above: `accelerator: pl.accelerators.Accelerator`)
import torch  # noqa: TC002 (LightningCLI resolves `parallel_devices: list[torch.device]` at run time)
from lightning.fabric.plugins.environments.torchelastic import TorchElasticEnvironment
from lightning.pytorch.plugins.precision import MixedPrecision
from lightning.pytorch.strategies import DDPStrategy
from lightning.pytorch.trainer.states import TrainerFn
from torch.distributed.constants import default_pg_timeout
from torch.nn.parallel import DistributedDataParallel
from typing_extensions import override

from lightning_delayed._compat import collective_timeout, process_group_backend
from lightning_delayed.comm.buckets import DEFAULT_BUCKET_CAP_MB, communication_errors
from lightning_delayed.comm.communicator import CommHook  # noqa: TC001 (LightningCLI reads the annotations)
from lightning_delayed.comm.compression import Compression  # noqa: TC001 (as above)
from lightning_delayed.comm.hooks import DDPGradientHook
from lightning_delayed.comm.process_groups import init_elastic_default_group
from lightning_delayed.comm.quantized import DEFAULT_BLOCK_SIZE
from lightning_delayed.core.base import DelayedAlgorithm
from lightning_delayed.strategies import checkpoint as ckpt
from lightning_delayed.strategies.callbacks import refuse_weight_averaging
from lightning_delayed.strategies.checks import refuse_on_every_rank, refuse_unknown_keywords
from lightning_delayed.strategies.comm_args import (
    SUPPORTED_BACKENDS,
    check_comm_arguments,
    make_communicator,
    open_comm_group,
    release_comm_group,
)
from lightning_delayed.strategies.finite import refuse_non_finite_checkpoint

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    import torch.distributed as dist
    from lightning.fabric.strategies.registry import _StrategyRegistry
    from lightning.fabric.utilities.types import _PATH
    from torch import Tensor
    from torch.optim import Optimizer

    from lightning_delayed.core.base import DelayedAlgorithm

CHECKPOINT_KEY = "lightning_delayed"
_OWNED_DDP_ARGS = ("ddp_comm_hook", "ddp_comm_state", "ddp_comm_wrapper", "model_averaging_period")


class DelayedStrategy(DDPStrategy):
    """Base class of the ``lightning_delayed`` strategies.

    Subclasses set :attr:`strategy_name`, implement :meth:`build_algorithm`, and may override
    :meth:`build_ddp_hook` and :meth:`validate_trainer` (see ``docs/extending.md``).

    Args:
        bucket_cap_mb: cap of each communication bucket in MiB (DDP's default, 25); also the cap of
            the default :class:`~lightning_delayed.comm.communicator.AllReduceHook`.
        check_finite: raise a clear error when an averaged tensor contains NaN or Inf (default hook).
            With ``"int8"`` / ``"int4"`` NaN or Inf is always refused, before anything is sent: no
            scale can carry it.
        compression: wire format of everything the algorithm communicates: ``"none"`` (default,
            exact), ``"fp16"`` or ``"bf16"`` (half the bytes; see
            :mod:`lightning_delayed.comm.compression`; wraps ``comm_hook`` or the default hook), or
            ``"int8"`` / ``"int4"`` (block-wise absmax quantization, a reduce-scatter of quantized
            chunks then an all-gather; see :mod:`lightning_delayed.comm.lowbit`; ``comm_hook`` or
            the default hook then carries only the one-off full-precision averages).
        block_size: elements per scale block of ``"int8"`` / ``"int4"`` (default 64, an int >= 1).
            Ignored by the other compressions.
        error_feedback: with compression, keep each tensor's rounding residual and add it to the
            next one sent (per rank, stored in checkpoints; with int8/int4 also each owner's
            residual of its chunk of the mean). Ignored without compression.
        comm_hook: how tensors are averaged, a :class:`~lightning_delayed.comm.communicator.CommHook`
            (default ``None``: :class:`~lightning_delayed.comm.communicator.AllReduceHook` with
            ``bucket_cap_mb`` and ``check_finite``). From YAML: ``class_path`` / ``init_args``.
        process_group_backend: ``"gloo"`` or ``"nccl"`` (default: NCCL on CUDA, gloo on CPU).
        timeout: timeout of collectives; a rank that dies makes the others fail after it.
        start_method: how Lightning launches the ranks (``"popen"``, ``"spawn"``, ``"fork"``...).
        **kwargs: the remaining ``DDPStrategy`` / ``DistributedDataParallel`` arguments.
    """

    strategy_name: ClassVar[str] = ""
    """Name in Lightning's strategy registry (``<name>``, ``<name>_spawn``, ``<name>_notebook``)."""
    module_holds_consensus: ClassVar[bool] = False
    """Whether the module holds the same weights on every rank after every step (weight-averaging
    callbacks are refused otherwise: :mod:`lightning_delayed.strategies.callbacks`)."""

    def __init__(
        self,
        *,
        bucket_cap_mb: float = DEFAULT_BUCKET_CAP_MB,
        check_finite: bool = True,
        compression: Compression = "none",
        block_size: int = DEFAULT_BLOCK_SIZE,
        error_feedback: bool = True,
        comm_hook: CommHook | None = None,
        accelerator: pl.accelerators.Accelerator | None = None,
        parallel_devices: list[torch.device] | None = None,
        cluster_environment: Any = None,
        checkpoint_io: Any = None,
        precision_plugin: Any = None,
        process_group_backend: str | None = None,
        timeout: timedelta | None = default_pg_timeout,
        start_method: Literal["popen", "spawn", "fork", "forkserver"] = "popen",
        **kwargs: Any,
    ) -> None:
        check_comm_arguments(
            type(self).__name__,
            bucket_cap_mb=bucket_cap_mb,
            check_finite=check_finite,
            compression=compression,
            error_feedback=error_feedback,
            comm_hook=comm_hook,
            process_group_backend=process_group_backend,
            timeout=timeout,
            block_size=block_size,
        )
        # LightningCLI passes every DDPStrategy argument it finds, with None for the defaults.
        for key in _OWNED_DDP_ARGS:
            if key in kwargs and kwargs[key] is None:
                del kwargs[key]
        owned = sorted(set(kwargs) & set(_OWNED_DDP_ARGS))
        if owned:
            raise ValueError(
                f"{type(self).__name__} does not accept {owned}: the strategy installs its own communication. "
                "To customise it, pass comm_hook=<a lightning_delayed.CommHook subclass> and/or "
                "compression='fp16'/'bf16'/'int8'/'int4' (see docs/extending.md), or use strategy='ddp'"
            )
        refuse_unknown_keywords(type(self), kwargs)
        kwargs.setdefault("bucket_cap_mb", bucket_cap_mb)
        super().__init__(
            accelerator=accelerator,
            parallel_devices=parallel_devices,
            cluster_environment=cluster_environment,
            checkpoint_io=checkpoint_io,
            precision_plugin=precision_plugin,
            process_group_backend=process_group_backend,
            timeout=timeout,
            start_method=start_method,
            **kwargs,
        )
        self.bucket_cap_mb = float(bucket_cap_mb)
        self.check_finite = check_finite
        self.compression: str = compression
        self.block_size: int = block_size
        self.error_feedback = error_feedback
        self.comm_hook: CommHook | None = comm_hook
        self.communicator: CommHook | None = None  # built at the start of every fit (build_communicator)
        self.algorithm: DelayedAlgorithm | None = None
        self.comm_group: dist.ProcessGroup | None = None  # the algorithm's own group (setup_distributed)
        self.ddp_hook: Any = None
        self._consensus_stack: contextlib.ExitStack | None = None
        self._restored: dict[str, Any] | None = None

    # ------------------------------------------------------------------ subclass API

    def build_algorithm(self, params: Sequence[Tensor], optimizer: Optimizer) -> DelayedAlgorithm:
        """Build the algorithm object (must override).

        Called once per ``fit``, after DDP wrapping, :meth:`build_ddp_hook` and optimizer set-up.
        ``params`` are the module's trainable parameters, ``optimizer`` the user's (only) one;
        :attr:`communicator` and :attr:`ddp_hook` are ready to be handed to the algorithm.
        """
        raise NotImplementedError(f"{type(self).__name__} must implement build_algorithm")

    def build_ddp_hook(self, params: Sequence[Tensor]) -> Any:
        """Return the DDP communication hook object (with a method ``hook(state, bucket)``), or ``None``.

        Called once per ``fit`` when DDP wraps the module, before :meth:`build_algorithm`; the
        result is registered on every device type and kept in :attr:`ddp_hook`. ``None`` (the
        default) keeps DDP's own gradient all-reduce. Gradient algorithms return
        :meth:`gradient_hook`; algorithms that communicate no gradient return a
        :class:`~lightning_delayed.comm.hooks.LocalGradientHook`.
        """
        return None

    def gradient_hook(self, params: Sequence[Tensor]) -> DDPGradientHook:
        """A DDP hook that launches every gradient bucket's mean through :attr:`communicator`."""
        assert self.communicator is not None, "build_communicator() runs before the DDP hook is built"
        return DDPGradientHook(params, self.communicator)

    def build_communicator(self) -> CommHook:
        """The :class:`CommHook` of this fit: ``comm_hook`` (or the default), wrapped for ``compression``."""
        return make_communicator(
            self.comm_hook,
            bucket_cap_mb=self.bucket_cap_mb,
            check_finite=self.check_finite,
            compression=self.compression,
            error_feedback=self.error_feedback,
            group=self.comm_group,
            block_size=self.block_size,
        )

    @property
    def custom_communication(self) -> bool:
        """Whether the user chose a ``comm_hook`` or a ``compression`` (``ssgd`` then leaves DDP's own)."""
        return self.comm_hook is not None or self.compression != "none"

    def validate_trainer(self, trainer: pl.Trainer) -> None:
        """Raise if the trainer uses a setting this algorithm cannot honour (before DDP wraps the module).

        A refusal on any rank is raised on every rank
        (:func:`~lightning_delayed.strategies.checks.refuse_on_every_rank`).
        """

    def validate_setup(self) -> None:
        """Raise if the optimizers or LR schedulers Lightning set up cannot be honoured.

        Called after Lightning's set-up (:attr:`optimizers`, :attr:`lr_scheduler_configs`) and
        before :meth:`build_algorithm`; a refusal on any rank is raised on every rank.
        """

    # ------------------------------------------------------------------ set-up

    @override
    def setup_distributed(self) -> None:
        backend = process_group_backend(self)
        if backend not in SUPPORTED_BACKENDS:
            raise ValueError(
                f"{type(self).__name__} supports the process-group backends {SUPPORTED_BACKENDS}, got {backend!r}"
            )
        if isinstance(self.cluster_environment, TorchElasticEnvironment):
            # torchelastic keeps one store across restart attempts: rendezvous on this attempt's keys.
            init_elastic_default_group(backend, collective_timeout(self), device_id=_device_id(self.root_device))
        super().setup_distributed()
        self.comm_group = open_comm_group(self)  # created anew for every fit, released at teardown

    @override
    def teardown(self) -> None:
        super().teardown()
        release_comm_group(self.comm_group, self.communicator)
        self.comm_group = None

    @override
    def setup(self, trainer: pl.Trainer) -> None:
        fitting = trainer.state.fn == TrainerFn.FITTING
        if fitting:
            # A refusal must reach every rank before DDP's first collective, or the others wait for
            # the refusing rank there (see refuse_on_every_rank).
            refuse_on_every_rank(lambda: self._prepare_fit(trainer), "set-up")
        super().setup(trainer)
        if not fitting:
            return
        refuse_on_every_rank(self.validate_setup, "set-up")
        # Several optimizers need manual optimization, which is refused above, so there is exactly one.
        self.algorithm = self.build_algorithm(self.trainable_params(), self.optimizers[0])

    def _prepare_fit(self, trainer: pl.Trainer) -> None:
        lm = self.lightning_module
        if lm is not None and not lm.automatic_optimization:
            raise ValueError(
                f"{type(self).__name__} needs automatic optimization: the algorithm runs its rule around "
                "the optimizer step Lightning makes. Remove `self.automatic_optimization = False`, "
                "or use strategy='ddp' for manual optimization."
            )
        self.validate_trainer(trainer)
        refuse_weight_averaging(self, trainer)
        self.communicator = self.build_communicator()

    def trainable_params(self) -> list[Tensor]:
        assert self.lightning_module is not None
        return [p for p in self.lightning_module.parameters() if p.requires_grad]

    @override
    def _register_ddp_hooks(self) -> None:
        # DDPStrategy only registers hooks on CUDA; communication hooks work on gloo as well, and
        # the algorithms depend on them, so register on every device.
        assert isinstance(self.model, DistributedDataParallel)
        self.ddp_hook = self.build_ddp_hook(self.trainable_params())
        if self.ddp_hook is not None:
            self.model.register_comm_hook(state=None, hook=self.ddp_hook.hook)

    # ------------------------------------------------------------------ the step

    @override
    def optimizer_step(
        self,
        optimizer: Optimizer,
        closure: Callable[[], Any],
        model: pl.LightningModule | torch.nn.Module | None = None,
        **kwargs: Any,
    ) -> Any:
        algorithm = self.algorithm
        if algorithm is None:
            return super().optimizer_step(optimizer, closure, model, **kwargs)

        def closure_then_rule() -> Any:
            # Forward and backward run inside optimizer.step()'s closure; the rule's pre-step part
            # (e.g. OD-SGD swapping in W and the delayed mean) must run after them and before the update.
            result = closure()
            algorithm.before_optimizer_step()
            return result

        output = super().optimizer_step(optimizer, closure_then_rule, model, **kwargs)
        algorithm.after_optimizer_step()
        return output

    @override
    def on_train_start(self) -> None:
        super().on_train_start()
        if self._restored is not None and self.algorithm is not None:
            restored, self._restored = self._restored, None
            self._load_algorithm_state(restored)

    @override
    def on_train_end(self) -> None:
        if self.algorithm is not None:
            self.algorithm.finish()
        super().on_train_end()

    # ------------------------------------------------------------------ validation on the consensus

    def _enter_consensus(self) -> None:
        if self.algorithm is None or self._consensus_stack is not None:
            return
        assert self.lightning_module is not None
        if self.lightning_module.trainer.state.fn != TrainerFn.FITTING:
            return
        stack = contextlib.ExitStack()
        stack.enter_context(self.algorithm.consensus())
        self._consensus_stack = stack

    def _exit_consensus(self) -> None:
        stack, self._consensus_stack = self._consensus_stack, None
        if stack is not None:
            stack.close()

    @override
    def on_validation_start(self) -> None:
        super().on_validation_start()
        self._enter_consensus()

    @override
    def on_validation_end(self) -> None:
        self._exit_consensus()
        super().on_validation_end()

    # ------------------------------------------------------------------ Lightning's collectives
    # Lightning calls these on the default group: ModelCheckpoint's file-exists check and
    # EarlyStopping (reduce_boolean_decision -> reduce), self.log(sync_dist=True) (reduce),
    # self.all_gather, the trainer's barriers and broadcasts. A peer that died turns them into
    # gloo's or NCCL's raw error; each is raised as the same CommunicationError as the
    # algorithm's own collectives, naming the collective (docs/index.md, "Faults").

    @override
    def barrier(self, name: str | None = None) -> None:
        with communication_errors(f"ranks at Lightning's barrier {name or ''}".rstrip(), operation="barrier"):
            super().barrier(name)

    @override
    def broadcast(self, obj: Any, src: int = 0) -> Any:
        with communication_errors(f"object from rank {src} (Lightning's strategy.broadcast)", operation="broadcast"):
            return super().broadcast(obj, src)

    @override
    def reduce(self, tensor: Any, group: Any | None = None, reduce_op: Any | None = "mean") -> Any:
        what = "tensor of Lightning's strategy.reduce (self.log(sync_dist=True), ModelCheckpoint, EarlyStopping)"
        with communication_errors(what):
            return super().reduce(tensor, group=group, reduce_op=reduce_op)

    @override
    def all_gather(self, tensor: Tensor, group: Any | None = None, sync_grads: bool = False) -> Tensor:
        with communication_errors("tensor of Lightning's strategy.all_gather", operation="all-gather"):
            return super().all_gather(tensor, group=group, sync_grads=sync_grads)

    # ------------------------------------------------------------------ checkpoints

    @override
    def lightning_module_state_dict(self) -> dict[str, Any]:
        """The consensus model (the same on every rank); each rank's own state is under ``CHECKPOINT_KEY``."""
        if self.algorithm is None or self._consensus_stack is not None:
            return super().lightning_module_state_dict()
        with self.algorithm.consensus():
            return {k: v.clone() for k, v in super().lightning_module_state_dict().items()}

    @override
    def save_checkpoint(self, checkpoint: dict[str, Any], filepath: _PATH, storage_options: Any | None = None) -> None:
        # Called on every rank (Trainer.save_checkpoint), so the gather below is a matched collective.
        if self.algorithm is not None:
            with communication_errors("algorithm state of every rank, for the checkpoint", operation="gather"):
                checkpoint[CHECKPOINT_KEY] = self._algorithm_checkpoint()
            if self.is_global_zero:  # the rank that writes the file
                checkpoint[CHECKPOINT_KEY][ckpt.CHECKSUM_KEY] = ckpt.checksum(checkpoint, CHECKPOINT_KEY)
        # Also a matched collective: every rank refuses together, before anything is written.
        assert self.lightning_module is not None
        param_names = {name for name, _ in self.lightning_module.named_parameters(remove_duplicate=False)}
        refuse_non_finite_checkpoint(checkpoint, param_names, CHECKPOINT_KEY, filepath, self.global_rank)
        super().save_checkpoint(checkpoint, filepath, storage_options=storage_options)

    def _algorithm_checkpoint(self) -> dict[str, Any]:
        return ckpt.gather_algorithm_state(self)

    @override
    def load_checkpoint(self, checkpoint_path: _PATH, weights_only: bool | None = None) -> dict[str, Any]:
        # Read and checked on every rank; a failure on any rank raises on all (ckpt.agree_on_load).
        checkpoint = ckpt.agree_on_load(
            lambda: super(DelayedStrategy, self).load_checkpoint(checkpoint_path, weights_only=weights_only),
            lambda loaded: ckpt.check_loaded(self, loaded, CHECKPOINT_KEY, checkpoint_path),
            checkpoint_path,
        )
        self._restored = checkpoint.get(CHECKPOINT_KEY)
        return checkpoint

    def _load_algorithm_state(self, saved: dict[str, Any]) -> None:
        ckpt.restore(self, saved)

    # ------------------------------------------------------------------ registry

    @classmethod
    @override
    def register_strategies(cls, strategy_registry: _StrategyRegistry) -> None:
        if not cls.strategy_name:
            return
        for suffix, start_method in (("", "popen"), ("_spawn", "spawn"), ("_notebook", "fork")):
            strategy_registry.register(
                cls.strategy_name + suffix,
                cls,
                description=f"{cls.__name__} with start_method={start_method!r}",
                override=True,
                start_method=start_method,
            )


def _device_id(device: torch.device) -> torch.device | None:
    # What Lightning passes to init_process_group as `device_id`.
    return device if device.type != "cpu" else None


def refuse_grad_scaler(strategy: DelayedStrategy, trainer: pl.Trainer) -> None:
    """Gradient algorithms that step with a gradient from another step cannot use a loss scaler."""
    plugin = strategy.precision_plugin
    if isinstance(plugin, MixedPrecision) and getattr(plugin, "scaler", None) is not None:
        raise ValueError(
            f"{type(strategy).__name__} does not support precision='16-mixed': its gradient scaler would "
            "unscale a gradient computed under another step's scale. Use precision='bf16-mixed' or '32-true'."
        )
