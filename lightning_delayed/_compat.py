"""Every private torch and Lightning API this package relies on, and nothing else.

A private name can be renamed or removed in any release without a deprecation. Each one is
reached only through this module, which checks it exists and otherwise raises
:class:`PrivateAPIError` naming the API, the installed versions and the versions tested. It must
never fail silently (a renamed method that we override would simply stop being called).
``tests/package/test_compat.py`` checks every entry against the installed versions, so an upgrade that
breaks one fails CI on that entry.

| private API                                              | used in               | without it                       |
|----------------------------------------------------------|-----------------------|----------------------------------|
| ``DDPStrategy._register_ddp_hooks``                      | strategies/base.py    | no hook: DDP all-reduces instead |
| ``DDPStrategy._get_process_group_backend()``             | strategies/base.py    | backend check, the algo's group  |
| ``DDPStrategy._timeout``                                 | strategies/sasgd.py   | the RPC agent's timeout          |
| ``DDPStrategy._timeout``, ``._ddp_kwargs``               | strategies/groups.py  | no worker groups (group_size)    |
| ``_TrainingEpochLoop._broadcast_sigterm_tensor``         | strategies/sasgd.py   | sasgd workers back in lock-step  |
| ``DistributedDataParallel._get_ddp_logging_data``        | monitor.py            | DDP all-reduce's blocked time    |
| ``DistributedDataParallel._set_ddp_runtime_logging_...`` | monitor.py            | DDP all-reduce's blocked time    |
| ``DistributedDataParallel._comm_hooks``                  | monitor.py            | hooked reductions timed twice    |
| ``LRScheduler._step_count``                              | core/sasgd_server.py  | a torch warning per server step  |
| ``TensorPipeRpcBackendOptions(_transports, _channels)``  | comm/parameter_server | ``LD_RPC_TRANSPORTS``            |
| ``torch._foreach_copy_``                                 | core/base.py          | fused multi-tensor math          |
| ``torch._foreach_add_/_div``                             | core/sasgd_server.py  | fused multi-tensor math          |
| ``distributed_c10d._get_default_store()``                | comm/rpc_network.py   | sasgd RPC without ``MASTER_PORT``|
| ``distributed_c10d._world.pg_map``                       | comm/process_groups.py| teardown of the strategy's group |
| ``Trainer._checkpoint_connector.resume_start``           | strategies/snapshots  | ElasticSnapshots cannot resume   |
| ``lightning...types._PATH``, ``..._StrategyRegistry``    | strategies (hints)    | nothing: under ``TYPE_CHECKING`` |

``_register_ddp_hooks`` is overridden and ``_broadcast_sigterm_tensor`` replaced, so renamed they
would fail silently: both are also checked to be still called by Lightning
(``DDPStrategy.configure_ddp``, ``_TrainingEpochLoop.advance``).

This module imports torch only; the Lightning classes are imported inside the functions that
check them, so ``lightning_delayed.core`` and ``lightning_delayed.comm`` stay Lightning-free.
"""

from __future__ import annotations

import importlib.metadata
import inspect
from typing import TYPE_CHECKING, Any

import torch
from torch.optim.lr_scheduler import LRScheduler

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence
    from datetime import timedelta

    from torch import Tensor
    from torch.nn.parallel import DistributedDataParallel

TESTED_WITH = {"torch": "2.14.1", "lightning": "2.6.6"}
"""The versions this release was tested with (``constraints.txt``)."""


class PrivateAPIError(RuntimeError):
    """The installed torch or Lightning lacks a private API this package relies on."""


def installed_versions() -> dict[str, str]:
    versions = {}
    for name in TESTED_WITH:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def missing_api(api: str, purpose: str) -> PrivateAPIError:
    """The error for a private API that is gone: what it is, what it was for, installed and tested versions."""
    installed = ", ".join(f"{k} {v}" for k, v in installed_versions().items())
    tested = ", ".join(f"{k} {v}" for k, v in TESTED_WITH.items())
    return PrivateAPIError(
        f"lightning_delayed relies on the private API {api} ({purpose}), which the installed versions "
        f"({installed}) do not have. This release was tested with {tested}: install those versions "
        "(constraints.txt) or a lightning_delayed release that supports yours."
    )


def require(obj: Any, name: str, api: str, purpose: str) -> Any:
    """``getattr(obj, name)``, or :class:`PrivateAPIError` if it does not exist."""
    try:
        return getattr(obj, name)
    except AttributeError:
        raise missing_api(api, purpose) from None


def _calls(function: Any, name: str) -> bool:
    """Whether ``function``'s bytecode refers to ``name`` (it calls ``self.<name>()``)."""
    code = getattr(function, "__code__", None)
    return code is not None and name in code.co_names


# ---------------------------------------------------------------------------------------- Lightning


def checkpoint_connector(trainer: Any) -> Any:
    """``trainer._checkpoint_connector``, checked to still have the ``resume_start`` we replace.

    ``ElasticSnapshots`` replaces ``resume_start`` for one ``fit`` so that ``fit(ckpt_path=None)``
    resumes from the newest committed snapshot; Lightning's ``_run`` must still call it.
    """
    purpose = "ElasticSnapshots resumes fit(ckpt_path=None) from the newest committed snapshot"
    connector = require(trainer, "_checkpoint_connector", "Trainer._checkpoint_connector", purpose)
    require(connector, "resume_start", "_CheckpointConnector.resume_start", purpose)
    return connector


def check_ddp_hook_override() -> None:
    """``DelayedStrategy`` overrides ``DDPStrategy._register_ddp_hooks``: check Lightning still calls it.

    If Lightning renamed it, the override would silently never run and DDP would all-reduce the
    gradients itself, i.e. run synchronous SGD under the algorithm's name. Checked once, when the
    Lightning glue is imported.
    """
    from lightning.pytorch.strategies import DDPStrategy

    api = "DDPStrategy._register_ddp_hooks (called by DDPStrategy.configure_ddp)"
    purpose = "the strategies attach their DDP communication hook by overriding it"
    require(DDPStrategy, "_register_ddp_hooks", api, purpose)
    if not _calls(require(DDPStrategy, "configure_ddp", api, purpose), "_register_ddp_hooks"):
        raise missing_api(api, purpose)


def process_group_backend(strategy: Any) -> str:
    """``strategy._get_process_group_backend()``: the backend Lightning chose (``"gloo"``/``"nccl"``)."""
    get = require(
        strategy,
        "_get_process_group_backend",
        "DDPStrategy._get_process_group_backend()",
        "the backend of the default process group, and of the algorithm's own group",
    )
    backend = get()
    assert isinstance(backend, str)
    return backend


def collective_timeout(strategy: Any) -> timedelta | None:
    """``strategy._timeout``: the ``timeout`` the user gave the strategy (``None``: torch's default)."""
    timeout: timedelta | None = require(
        strategy, "_timeout", "DDPStrategy._timeout", "the strategy's timeout, for process groups and RPC"
    )
    return timeout


def ddp_kwargs(strategy: Any) -> dict[str, Any]:
    """``strategy._ddp_kwargs``: the keyword arguments ``DDPStrategy`` passes to ``DistributedDataParallel``."""
    kwargs: dict[str, Any] = require(
        strategy, "_ddp_kwargs", "DDPStrategy._ddp_kwargs", "DDP's process_group for worker groups (group_size)"
    )
    return kwargs


def replace_sigterm_broadcast(trainer: Any, replacement: Callable[[], None]) -> None:
    """Replace the per-batch SIGTERM broadcast of Lightning's training epoch loop by ``replacement``.

    The broadcast is a collective on the default group before every training batch; asynchronous
    workers must not take part in it. If Lightning renamed it, patching the old name would do
    nothing and the workers would fall back into lock-step (or wait forever at the end of fit).
    """
    epoch_loop = trainer.fit_loop.epoch_loop
    api = "_TrainingEpochLoop._broadcast_sigterm_tensor (called by _TrainingEpochLoop.advance)"
    purpose = "sasgd replaces Lightning's per-batch SIGTERM broadcast, which would put workers in lock-step"
    require(epoch_loop, "_broadcast_sigterm_tensor", api, purpose)
    if not _calls(require(type(epoch_loop), "advance", api, purpose), "_broadcast_sigterm_tensor"):
        raise missing_api(api, purpose)
    epoch_loop._broadcast_sigterm_tensor = replacement


# -------------------------------------------------------------------------------------------- torch


def ddp_comm_hooks(ddp: DistributedDataParallel) -> list[Any]:
    """The communication hooks registered on ``ddp`` (``DistributedDataParallel._comm_hooks``)."""
    hooks = require(
        ddp,
        "_comm_hooks",
        "DistributedDataParallel._comm_hooks",
        "CommMonitor tells DDP's own all-reduce from a communication hook",
    )
    return list(hooks)


_REDUCER_PURPOSE = "CommMonitor reads the blocked time of DDP's own all-reduce from the reducer's timers"


def enable_ddp_runtime_logging(ddp: DistributedDataParallel) -> None:
    """Make DDP's reducer publish its timers after every iteration (``_set_ddp_runtime_logging_sample_rate(1)``)."""
    set_rate = require(
        ddp,
        "_set_ddp_runtime_logging_sample_rate",
        "DistributedDataParallel._set_ddp_runtime_logging_sample_rate",
        _REDUCER_PURPOSE,
    )
    set_rate(1)


def ddp_logging_data(ddp: DistributedDataParallel) -> dict[str, Any]:
    """DDP's reducer logging data (``DistributedDataParallel._get_ddp_logging_data()``)."""
    get = require(ddp, "_get_ddp_logging_data", "DistributedDataParallel._get_ddp_logging_data()", _REDUCER_PURPOSE)
    data = get()
    assert isinstance(data, dict)
    return data


def mark_scheduler_stepped(scheduler: Any) -> None:
    """Tell a torch LR scheduler that its optimizer already stepped (``LRScheduler._step_count``).

    torch warns on a scheduler's first ``step()`` when ``_step_count`` is 1 and its optimizer's
    ``step()`` was not patched by the scheduler's constructor; a copied scheduler driving a rebuilt
    optimizer always looks like that. Schedulers that are not ``LRScheduler`` are left alone.
    """
    if not isinstance(scheduler, LRScheduler):
        return
    count = require(
        scheduler,
        "_step_count",
        "LRScheduler._step_count",
        "sasgd's server schedulers skip torch's 'optimizer.step() before lr_scheduler.step()' check",
    )
    if count == 1:
        scheduler._step_count = 2


def tensorpipe_transport_options(transports: Sequence[str], channels: Sequence[str]) -> dict[str, list[str]]:
    """Keyword arguments of ``TensorPipeRpcBackendOptions`` that force TensorPipe's transports and channels."""
    from torch.distributed.rpc import TensorPipeRpcBackendOptions

    params = inspect.signature(TensorPipeRpcBackendOptions.__init__).parameters
    if "_transports" not in params or "_channels" not in params:
        raise missing_api(
            "TensorPipeRpcBackendOptions(_transports=..., _channels=...)",
            "LD_RPC_TRANSPORTS chooses TensorPipe's transport (TCP between emulated nodes)",
        )
    return {"_transports": list(transports), "_channels": list(channels)}


def default_store() -> Any:
    """The default process group's store (``torch.distributed.distributed_c10d._get_default_store``).

    Used only when ``MASTER_PORT`` is unset (a process group the user started some other way): the
    sasgd RPC agent then meets on that store, since torch has no public accessor for it.
    """
    import torch.distributed.distributed_c10d as c10d

    getter = require(
        c10d,
        "_get_default_store",
        "torch.distributed.distributed_c10d._get_default_store",
        "sasgd's RPC agent meets on the default group's store when MASTER_PORT is unset",
    )
    return getter()


def is_live_group(group: Any) -> bool:
    """Whether ``group`` is still registered (``distributed_c10d._world.pg_map``), i.e. not yet destroyed.

    ``dist.destroy_process_group()`` of the default group also destroys every other group; a second
    destroy of one of them would raise, and torch has no public "is destroyed" query.
    """
    import torch.distributed.distributed_c10d as c10d

    world = require(c10d, "_world", "torch.distributed.distributed_c10d._world", "teardown of the strategy's group")
    pg_map = require(world, "pg_map", "distributed_c10d._world.pg_map", "teardown of the strategy's group")
    return group in pg_map


def _foreach(name: str) -> Any:
    return require(torch, name, f"torch.{name}", "the fused multi-tensor math of the update rules")


def foreach_copy_(dst: list[Tensor], src: list[Tensor]) -> None:
    """``torch._foreach_copy_(dst, src)``: one fused copy of many tensors."""
    _foreach("_foreach_copy_")(dst, src)


def foreach_add_(dst: list[Tensor], src: list[Tensor]) -> None:
    """``torch._foreach_add_(dst, src)``: ``d += s`` for every pair, fused."""
    _foreach("_foreach_add_")(dst, src)


def foreach_div(tensors: list[Tensor], divisor: float) -> list[Tensor]:
    """``torch._foreach_div(tensors, divisor)``: new tensors ``t / divisor``, fused."""
    result: list[Tensor] = _foreach("_foreach_div")(tensors, divisor)
    return result
