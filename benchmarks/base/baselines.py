"""The strategies the benchmarks compare: ours, and three baselines that are not ours.

* ``ddp``: Lightning's own ``DDPStrategy`` (plain DDP, C++ gradient all-reduce), untouched.
* ``post_local_sgd``: Lightning's post-local SGD: ``DDPStrategy`` with torch's ``post_localSGD_hook``
  (``PostLocalSGDState``) and ``model_averaging_period``, i.e. a blocking
  ``PeriodicModelAverager`` after the optimizer step. Lightning registers DDP hooks only on CUDA
  (``DDPStrategy._register_ddp_hooks``), so :class:`PostLocalSGDStrategy` registers the hook on
  every device; otherwise on CPU the gradients would be all-reduced every step and the "local"
  phase would never start. Local SGD starts at step ``start_localSGD_iter`` (default 0) with
  ``post_local_gradient_allreduce=False``: after it no gradient is communicated at all (torch's
  default would all-reduce within intra-node subgroups, which on CPU it cannot even create).
* ``compute_only``: the compute-only bound: the same model, DDP wrapper and ranks, with a DDP hook
  that hands back the local gradient without any collective, no model averaging and no buffer
  broadcast. Nothing crosses the network after set-up.

Our collectives count their bytes and blocked time in :mod:`lightning_delayed.comm.stats`; the
post-local-SGD baseline records its averaging there too (bytes of the averaged parameters, the
blocking call timed as blocked), so :class:`lightning_delayed.CommMonitor` sees every family.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterable
from typing import Any

import torch.distributed as dist
from lightning.pytorch.strategies import DDPStrategy, Strategy
from torch.distributed.algorithms.ddp_comm_hooks import post_localSGD_hook as post_local
from torch.nn.parallel import DistributedDataParallel
from typing_extensions import override

from lightning_delayed.comm import stats as comm_stats
from lightning_delayed.comm.hooks import LocalGradientHook

BASELINES = ("ddp", "post_local_sgd", "compute_only")
SYNC_EVERY = 4
"""Period of every model-averaging strategy and of post-local SGD in the benchmarks."""


class _CountingAverager:
    """Wraps torch's ``PeriodicModelAverager``: records the bytes and the (blocking) time of each average."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.averages = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def average_parameters(self, params: Iterable[Any]) -> None:
        params = list(params)
        inner = self.inner
        averages_now = inner.step >= inner.warmup_steps and (inner.step - inner.warmup_steps) % inner.period == 0
        with comm_stats.blocked():
            inner.average_parameters(iter(params))
        if averages_now and dist.is_initialized() and dist.get_world_size() > 1:
            self.averages += 1
            comm_stats.record_sent(sum(p.numel() * p.element_size() for p in params))


class PostLocalSGDStrategy(DDPStrategy):
    """Lightning's post-local SGD, with the DDP hook registered on CPU as well.

    Args:
        model_averaging_period: steps between blocking parameter averages (the period).
        start_localSGD_iter: synchronous DDP steps before local SGD starts.
        **kwargs: ``DDPStrategy`` arguments.
    """

    def __init__(self, model_averaging_period: int = SYNC_EVERY, start_localSGD_iter: int = 0, **kwargs: Any) -> None:
        if isinstance(model_averaging_period, bool) or not isinstance(model_averaging_period, int):
            raise TypeError(f"model_averaging_period must be an int, got {model_averaging_period!r}")
        if model_averaging_period < 1 or start_localSGD_iter < 0:
            raise ValueError(
                f"need model_averaging_period >= 1 and start_localSGD_iter >= 0, got {model_averaging_period!r} "
                f"and {start_localSGD_iter!r}"
            )
        state = post_local.PostLocalSGDState(
            process_group=None,
            subgroup=None,
            start_localSGD_iter=start_localSGD_iter,
            post_local_gradient_allreduce=False,
        )
        super().__init__(
            ddp_comm_state=state,
            ddp_comm_hook=self._counting_hook,
            model_averaging_period=model_averaging_period,
            **kwargs,
        )

    @staticmethod
    def _counting_hook(state, bucket):  # type: ignore[no-untyped-def]
        # No annotations: DDP compares them with dist.GradBucket / Future, and this module's are strings.
        if state.iter < state.start_localSGD_iter:  # the synchronous phase all-reduces this bucket
            comm_stats.record_sent(bucket.buffer().numel() * bucket.buffer().element_size())
        return post_local.post_localSGD_hook(state, bucket)

    @override
    def _register_ddp_hooks(self) -> None:
        assert isinstance(self.model, DistributedDataParallel)
        self.model.register_comm_hook(state=self._ddp_comm_state, hook=self._ddp_comm_hook)

    @override
    def _enable_model_averaging(self) -> None:
        super()._enable_model_averaging()
        self._model_averager = _CountingAverager(self._model_averager)  # type: ignore[assignment]


class ComputeOnlyStrategy(DDPStrategy):
    """The compute-only bound: DDP with a hook that communicates nothing, and no buffer broadcast."""

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("broadcast_buffers", False)
        super().__init__(**kwargs)
        self.hook = LocalGradientHook()

    @override
    def _register_ddp_hooks(self) -> None:
        assert isinstance(self.model, DistributedDataParallel)
        self.model.register_comm_hook(state=None, hook=self.hook.hook)


def our_strategies() -> dict[str, type]:
    """Every registered ``lightning_delayed`` strategy, by name (sasgd included once it is registered)."""
    from lightning_delayed.registry import STRATEGIES

    return {cls.strategy_name: cls for cls in STRATEGIES}


def lock_step_strategies() -> list[str]:
    """Ours whose ranks advance step by step together (every one but the parameter-server family, sasgd/asgd).

    ``SASGDStrategy`` workers push to and pull from an RPC parameter server and never wait for each
    other; every other strategy meets its peers in a collective at fixed steps.
    """
    from lightning_delayed.strategies.sasgd import SASGDStrategy

    return [name for name, cls in our_strategies().items() if not issubclass(cls, SASGDStrategy)]


def all_names() -> list[str]:
    """Ours in registry order, then the baselines."""
    return [*our_strategies(), *BASELINES]


def build_strategy(name: str, sync_every: int = SYNC_EVERY) -> Strategy:
    """A fresh strategy object for ``name``; the periodic ones average every ``sync_every`` steps."""
    ours = our_strategies()
    if name in ours:
        cls = ours[name]
        kwargs: dict[str, Any] = {}
        if "sync_every" in inspect.signature(cls.__init__).parameters:
            kwargs["sync_every"] = sync_every
        strategy: Strategy = cls(**kwargs)
        return strategy
    if name == "ddp":
        return DDPStrategy()
    if name == "post_local_sgd":
        return PostLocalSGDStrategy(model_averaging_period=sync_every)
    if name == "compute_only":
        return ComputeOnlyStrategy()
    raise ValueError(f"unknown strategy {name!r}: choose from {all_names()}")


def strategy_kwargs(name: str, sync_every: int = SYNC_EVERY) -> dict[str, Any]:
    """The non-default arguments :func:`build_strategy` passes (for the report)."""
    ours = our_strategies()
    if name in ours and "sync_every" in inspect.signature(ours[name].__init__).parameters:
        return {"sync_every": sync_every}
    if name == "post_local_sgd":
        return {"model_averaging_period": sync_every, "start_localSGD_iter": 0, "post_local_gradient_allreduce": False}
    return {}


OVERLAPPING_EXCLUDED = ("ssgd", "local_sgd", "diloco")
"""Our strategies that do not overlap communication (the overlap target excludes them)."""


def strategy_list(spec: str) -> list[str]:
    """The strategies of a comma-separated ``--strategies`` value (empty: every one), ``ssgd`` first.

    Raises:
        SystemExit: naming the unknown ones and the known names.
    """
    known = all_names()
    names = [s.strip() for s in spec.split(",") if s.strip()] or known
    unknown = [n for n in names if n not in known]
    if unknown:
        raise SystemExit(f"error: unknown strategies {unknown}; known: {known}")
    if "ssgd" in names:
        names = ["ssgd", *[n for n in names if n != "ssgd"]]
    return names
