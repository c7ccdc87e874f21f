"""``DelayedFabricStrategy``: the Fabric glue, Fabric's ``DDPStrategy`` with an algorithm around the optimizer step.

The user's loop stays Fabric's: ``fabric.backward(loss)`` then ``optimizer.step()``. The wrapped
optimizer's step calls :meth:`DelayedFabricStrategy.optimizer_step`, which runs the rule's
``before_optimizer_step`` (after backward), the optimizer's step, then ``after_optimizer_step``.
The algorithm is built when ``fabric.setup`` (or ``setup_optimizers``) hands over the optimizer.
Fabric has no validation loop and no end-of-fit hook: :meth:`consensus` and :meth:`finish` are
what the user calls (``docs/fabric.md``).
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any, Literal

import torch  # noqa: TC002 (LightningCLI resolves `parallel_devices: list[torch.device]` at run time)
from lightning.fabric.strategies.ddp import DDPStrategy
from torch.distributed.constants import default_pg_timeout
from typing_extensions import override

from lightning_delayed.comm.buckets import DEFAULT_BUCKET_CAP_MB
from lightning_delayed.comm.hooks import DDPGradientHook, LocalGradientHook
from lightning_delayed.comm.quantized import DEFAULT_BLOCK_SIZE
from lightning_delayed.fabric.algorithms import SPECS, config_fields, make_config
from lightning_delayed.strategies import checkpoint as ckpt
from lightning_delayed.strategies.buffers import keep_buffers_local
from lightning_delayed.strategies.checks import refuse_unknown_keywords
from lightning_delayed.strategies.comm_args import (
    check_comm_arguments,
    make_communicator,
    open_comm_group,
    release_comm_group,
)

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from datetime import timedelta

    import torch.distributed as dist
    from lightning.fabric.strategies.registry import _StrategyRegistry
    from lightning.fabric.utilities.types import _PATH, Optimizable
    from torch import Tensor, nn
    from torch.nn.parallel import DistributedDataParallel
    from torch.optim import Optimizer

    from lightning_delayed.comm.communicator import CommHook
    from lightning_delayed.core.base import DelayedAlgorithm

CHECKPOINT_KEY = "lightning_delayed"


class DelayedFabricStrategy(DDPStrategy):
    """One ``lightning_delayed`` algorithm behind Fabric (``Fabric(strategy="odsgd")`` builds one).

    Args:
        algorithm: the registry name: ``"ssgd"``, ``"odsgd"``, ``"local_sgd"``, ``"dasgd"``,
            ``"cocodsgd"``, ``"overlap_local_sgd"``, ``"diloco"`` or ``"streaming_diloco"``.
        bucket_cap_mb: cap of each communication bucket in MiB (default 25).
        check_finite: raise a clear error when an averaged tensor contains NaN or Inf (default hook).
        compression: wire format of what the algorithm communicates: ``"none"``, ``"fp16"``, ``"bf16"``,
            ``"int8"`` or ``"int4"`` (as for the Trainer strategies, :class:`~lightning_delayed.DelayedStrategy`).
        block_size: elements per scale block of ``"int8"`` / ``"int4"`` (default 64, an int >= 1).
        error_feedback: with compression, carry each tensor's rounding residual to the next send.
        comm_hook: how tensors are averaged, a :class:`~lightning_delayed.comm.communicator.CommHook`.
        process_group_backend: ``"gloo"`` or ``"nccl"`` (default: NCCL on CUDA, gloo on CPU).
        timeout: timeout of collectives, also of the algorithm's own process group.
        start_method: how Fabric launches the ranks (``"popen"``, ``"spawn"``, ``"fork"``...).
        **kwargs: the algorithm's arguments (those of its Trainer strategy, e.g. ``sync_every``,
            ``delay``, ``local_lr``), then ``DistributedDataParallel``'s.
    """

    def __init__(
        self,
        algorithm: str,
        *,
        bucket_cap_mb: float = DEFAULT_BUCKET_CAP_MB,
        check_finite: bool = True,
        compression: str = "none",
        block_size: int = DEFAULT_BLOCK_SIZE,
        error_feedback: bool = True,
        comm_hook: CommHook | None = None,
        accelerator: Any = None,
        parallel_devices: list[torch.device] | None = None,
        cluster_environment: Any = None,
        checkpoint_io: Any = None,
        precision: Any = None,
        process_group_backend: str | None = None,
        timeout: timedelta | None = default_pg_timeout,
        start_method: Literal["popen", "spawn", "fork", "forkserver"] = "popen",
        **kwargs: Any,
    ) -> None:
        if algorithm not in SPECS:
            raise ValueError(
                f"algorithm={algorithm!r} is not available behind Fabric: use one of {sorted(SPECS)} "
                "(sasgd/asgd replace the training loop and run only under the Trainer)"
            )
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
        own = config_fields(algorithm)
        self.config = make_config(algorithm, {k: v for k, v in kwargs.items() if k in own})
        if getattr(self.config, "weighting", "uniform") == "samples":
            raise ValueError(
                f"{algorithm} with weighting='samples' is not available behind Fabric (no batch hook counts the "
                "samples of each step); use weighting='uniform', or the Trainer strategy"
            )
        ddp_kwargs = {k: v for k, v in kwargs.items() if k not in own}
        for key in ("ddp_comm_hook", "ddp_comm_state", "ddp_comm_wrapper"):
            if key in ddp_kwargs:
                raise ValueError(
                    f"DelayedFabricStrategy does not accept {key}: the strategy installs its own communication. "
                    "Pass comm_hook=<a lightning_delayed.CommHook> and/or compression='fp16'/'bf16'/'int8'/'int4' "
                    "instead"
                )
        # A misspelt argument would otherwise reach DistributedDataParallel(...) only after the group is up.
        refuse_unknown_keywords(type(self), ddp_kwargs)
        if not SPECS[algorithm].gradients:
            # Buffers take part in the averages and evolve locally in between (docs/algorithms/index.md).
            keep_buffers_local(ddp_kwargs)
        ddp_kwargs.setdefault("bucket_cap_mb", bucket_cap_mb)
        super().__init__(
            accelerator=accelerator,
            parallel_devices=parallel_devices,
            cluster_environment=cluster_environment,
            checkpoint_io=checkpoint_io,
            precision=precision,
            process_group_backend=process_group_backend,
            timeout=timeout,
            start_method=start_method,
            **ddp_kwargs,
        )
        self.algorithm_name = algorithm
        self.bucket_cap_mb = float(bucket_cap_mb)
        self.check_finite = check_finite
        self.compression = compression
        self.block_size = block_size
        self.error_feedback = error_feedback
        self.comm_hook = comm_hook
        self.communicator: CommHook | None = None
        self.comm_group: dist.ProcessGroup | None = None
        self.ddp_hook: DDPGradientHook | LocalGradientHook | None = None
        self.algorithm: DelayedAlgorithm | None = None
        self._module: nn.Module | None = None
        self._in_consensus = False

    @property
    def strategy_name(self) -> str:
        """The registry name of the algorithm (what the checkpoint records)."""
        return self.algorithm_name

    @property
    def lightning_module(self) -> nn.Module | None:
        """The user's module (unwrapped); the name the shared checkpoint helpers read."""
        return self._module

    # ------------------------------------------------------------------ set-up

    @override
    def setup_environment(self) -> None:
        super().setup_environment()
        self.comm_group = open_comm_group(self)  # as behind the Trainer: averages never block the loop's collectives
        self.communicator = make_communicator(
            self.comm_hook,
            bucket_cap_mb=self.bucket_cap_mb,
            check_finite=self.check_finite,
            compression=self.compression,
            error_feedback=self.error_feedback,
            group=self.comm_group,
            block_size=self.block_size,
        )

    @override
    def setup_module(self, module: nn.Module) -> DistributedDataParallel:
        if self._module is not None:
            raise ValueError(f"{type(self).__name__} trains one module; fabric.setup was called with a second one")
        self.check_precision()
        ddp = super().setup_module(module)
        self._module = module
        assert self.communicator is not None, "setup_environment runs before setup_module (fabric.launch)"
        params = self._trainable_params()
        # Registered on every device type: Fabric's DDPStrategy registers none, and the algorithms need one.
        if SPECS[self.algorithm_name].gradients:
            if self.algorithm_name != "ssgd" or self.compression != "none" or self.comm_hook is not None:
                self.ddp_hook = DDPGradientHook(params, self.communicator)
        else:
            self.ddp_hook = LocalGradientHook()
        if self.ddp_hook is not None:
            ddp.register_comm_hook(state=None, hook=self.ddp_hook.hook)
        return ddp

    def check_precision(self) -> None:
        """Refuse a loss scaler for gradient algorithms (same config on every rank, so refused on every rank)."""
        scaler = getattr(self.precision, "scaler", None)
        if SPECS[self.algorithm_name].gradients and self.algorithm_name != "ssgd" and scaler is not None:
            raise ValueError(
                f"{self.algorithm_name} does not support precision='16-mixed': its gradient scaler would unscale a "
                "gradient computed under another step's scale. Use precision='bf16-mixed' or '32-true'."
            )

    @override
    def setup_optimizer(self, optimizer: Optimizer) -> Optimizer:
        optimizer = super().setup_optimizer(optimizer)
        if self.algorithm is not None:
            raise ValueError(f"{type(self).__name__} steps one optimizer; a second one was set up")
        if self._module is None:
            raise ValueError(
                f"{type(self).__name__} builds its algorithm from the module and the optimizer: call "
                "fabric.setup(model, optimizer), or setup_module before setup_optimizers"
            )
        spec = SPECS[self.algorithm_name]
        assert self.communicator is not None
        self.algorithm = spec.build(
            self.config, self._module, self._trainable_params(), optimizer, self.communicator, self.ddp_hook
        )
        return optimizer

    def _trainable_params(self) -> list[Tensor]:
        assert self._module is not None
        return [p for p in self._module.parameters() if p.requires_grad]

    @override
    def teardown(self) -> None:
        super().teardown()
        release_comm_group(self.comm_group, self.communicator)
        self.comm_group = None

    # ------------------------------------------------------------------ the step

    @override
    def optimizer_step(self, optimizer: Optimizable, **kwargs: Any) -> Any:
        algorithm = self.algorithm
        if algorithm is None:
            return super().optimizer_step(optimizer, **kwargs)
        closure: Callable[[], Any] | None = kwargs.pop("closure", None)
        if closure is not None:
            # Backward runs inside the closure: the rule's pre-step part comes after it.
            result = closure()
            algorithm.before_optimizer_step()
            output = super().optimizer_step(optimizer, closure=lambda: result, **kwargs)
        else:
            algorithm.before_optimizer_step()
            output = super().optimizer_step(optimizer, **kwargs)
        algorithm.after_optimizer_step()
        return output

    # ------------------------------------------------------------------ consensus and the end

    @contextlib.contextmanager
    def consensus(self) -> Iterator[None]:
        """Inside, the module holds the consensus model (identical on every rank); the trajectory is restored after.

        Call it on every rank (it may average). For evaluation and export mid-run; the training
        trajectory is the same as without it. Before ``fabric.setup`` it does nothing.
        """
        if self.algorithm is None or self._in_consensus:
            yield
            return
        self._in_consensus = True
        try:
            with self.algorithm.consensus():
                yield
        finally:
            self._in_consensus = False

    def finish(self) -> None:
        """End of training: wait for and apply every pending communication, then the final average.

        Call it on every rank after the last ``optimizer.step()``; afterwards the module holds the
        same weights on every rank (the model to evaluate and save).
        """
        if self.algorithm is not None:
            self.algorithm.finish()

    # ------------------------------------------------------------------ checkpoints

    @override
    def get_module_state_dict(self, module: nn.Module) -> dict[str, Any]:
        # The consensus model, as the Trainer glue saves; each rank's own weights are in the algorithm state.
        if self.algorithm is None or self._in_consensus or module is not self._module:
            return super().get_module_state_dict(module)
        with self.consensus():
            return {k: v.clone() for k, v in super().get_module_state_dict(module).items()}

    @override
    def save_checkpoint(
        self,
        path: _PATH,
        state: dict[str, nn.Module | Optimizer | Any],
        storage_options: Any | None = None,
        filter: dict[str, Callable[[str, Any], bool]] | None = None,
    ) -> None:
        # fabric.save runs on every rank, so the gather below is a matched collective.
        state = dict(state)
        if self.algorithm is not None:
            if CHECKPOINT_KEY in state:
                raise ValueError(f"the key {CHECKPOINT_KEY!r} of fabric.save's state is the algorithm's; rename it")
            entry = ckpt.gather_algorithm_state(self)
            if self.is_global_zero:
                entry[ckpt.CHECKSUM_KEY] = ckpt.checksum({CHECKPOINT_KEY: entry}, CHECKPOINT_KEY)
            state[CHECKPOINT_KEY] = entry
        super().save_checkpoint(path, state, storage_options=storage_options, filter=filter)

    @override
    def load_checkpoint(
        self,
        path: _PATH,
        state: nn.Module | Optimizer | dict[str, nn.Module | Optimizer | Any] | None = None,
        strict: bool = True,
        weights_only: bool | None = None,
    ) -> dict[str, Any]:
        if not isinstance(state, dict) or not state:
            # The whole file (state=None), or a raw module or optimizer state: no algorithm state to restore.
            return super().load_checkpoint(path, state, strict=strict, weights_only=weights_only)

        def load() -> dict[str, Any]:
            return super(DelayedFabricStrategy, self).load_checkpoint(
                path, state, strict=strict, weights_only=weights_only
            )

        # Read and checked on every rank; a failure on any rank raises on all (ckpt.agree_on_load).
        remainder = ckpt.agree_on_load(load, lambda loaded: self._check_loaded(loaded, path), path)
        saved = remainder.pop(CHECKPOINT_KEY, None)
        if saved is not None:
            # After the module's (consensus) weights: the rank's own weights and the rule's state.
            ckpt.restore(self, saved)
        return remainder

    def _check_loaded(self, loaded: dict[str, Any], path: _PATH) -> None:
        saved = loaded.get(CHECKPOINT_KEY)
        if saved is None:
            return
        if self.algorithm is None:
            raise ValueError(
                f"the checkpoint {path} holds {saved.get('strategy')!r} state, which is restored into the algorithm "
                "built by fabric.setup(model, optimizer): call fabric.load after fabric.setup"
            )
        # The checksum covers the algorithm's entry (save_checkpoint), and the strategy must be the same.
        ckpt.check_loaded(self, {CHECKPOINT_KEY: saved}, CHECKPOINT_KEY, path)
        changed = ckpt.config_mismatch(saved.get(ckpt.CONFIG_KEY) or {}, ckpt.algorithm_config(self))
        if changed:
            raise ValueError(
                f"the checkpoint {path} was written with other {self.strategy_name!r} arguments: {'; '.join(changed)}. "
                "Resuming would change the algorithm in the middle of its trajectory. Resume with the checkpoint's "
                "arguments, or load only its model weights into a new run."
            )

    # ------------------------------------------------------------------ registry

    @classmethod
    @override
    def register_strategies(cls, strategy_registry: _StrategyRegistry) -> None:
        for name in SPECS:
            for suffix, start_method in (("", "popen"), ("_spawn", "spawn"), ("_notebook", "fork")):
                strategy_registry.register(
                    name + suffix,
                    cls,
                    description=f"lightning_delayed {name!r} behind Fabric, start_method={start_method!r}",
                    override=True,
                    algorithm=name,
                    start_method=start_method,
                )
