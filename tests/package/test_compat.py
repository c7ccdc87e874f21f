"""Every private torch / Lightning API the package uses: present in the tested versions, loud when gone.

One test per entry of the table in ``lightning_delayed/_compat.py``. Each shows the accessor works
on the installed versions, and that removing the attribute (as a rename in a new release would)
raises :class:`PrivateAPIError` naming the API and the tested versions, never a silent fallback.
"""

from __future__ import annotations

import ast
import copy
import warnings
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import lightning as L
import pytest
import torch
import torch.distributed as dist
from lightning.pytorch.accelerators import CPUAccelerator
from lightning.pytorch.loops.training_epoch_loop import _TrainingEpochLoop
from lightning.pytorch.strategies import DDPStrategy
from torch import nn
from torch.distributed.rpc import TensorPipeRpcBackendOptions
from torch.nn.parallel import DistributedDataParallel

from lightning_delayed import PrivateAPIError, SSGDStrategy, _compat
from lightning_delayed.comm import parameter_server
from lightning_delayed.core.base import copy_all_
from lightning_delayed.core.sasgd_server import server_scheduler
from lightning_delayed.monitor import _ReducerTimers

PACKAGE = Path(__file__).resolve().parents[2] / "lightning_delayed"


def assert_loud(excinfo: pytest.ExceptionInfo[PrivateAPIError], api: str) -> None:
    message = str(excinfo.value)
    assert api in message
    assert "torch 2.14.1" in message and "lightning 2.6.6" in message  # the versions tested


def cpu_strategy(**kwargs: object) -> SSGDStrategy:
    return SSGDStrategy(accelerator=CPUAccelerator(), parallel_devices=[torch.device("cpu")], **kwargs)  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------------ Lightning


def test_register_ddp_hooks_is_still_lightnings_hook_point(monkeypatch: pytest.MonkeyPatch) -> None:
    _compat.check_ddp_hook_override()
    monkeypatch.delattr(DDPStrategy, "_register_ddp_hooks")
    with pytest.raises(PrivateAPIError) as excinfo:
        _compat.check_ddp_hook_override()
    assert_loud(excinfo, "DDPStrategy._register_ddp_hooks")


def test_register_ddp_hooks_must_still_be_called_by_configure_ddp(monkeypatch: pytest.MonkeyPatch) -> None:
    # A Lightning that kept the method but stopped calling it would leave our override dead.
    monkeypatch.setattr(DDPStrategy, "configure_ddp", lambda self: None)
    with pytest.raises(PrivateAPIError) as excinfo:
        _compat.check_ddp_hook_override()
    assert_loud(excinfo, "configure_ddp")


def test_get_process_group_backend(monkeypatch: pytest.MonkeyPatch) -> None:
    strategy = cpu_strategy()
    assert _compat.process_group_backend(strategy) == "gloo"
    monkeypatch.delattr(DDPStrategy, "_get_process_group_backend")
    with pytest.raises(PrivateAPIError) as excinfo:
        _compat.process_group_backend(strategy)
    assert_loud(excinfo, "DDPStrategy._get_process_group_backend()")


def test_timeout_attribute() -> None:
    strategy = cpu_strategy(timeout=timedelta(seconds=7))
    assert _compat.collective_timeout(strategy) == timedelta(seconds=7)
    del strategy._timeout
    with pytest.raises(PrivateAPIError) as excinfo:
        _compat.collective_timeout(strategy)
    assert_loud(excinfo, "DDPStrategy._timeout")


def _trainer() -> L.Trainer:
    return L.Trainer(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False)


def test_broadcast_sigterm_tensor_is_replaced(monkeypatch: pytest.MonkeyPatch) -> None:
    trainer = _trainer()
    calls: list[int] = []
    _compat.replace_sigterm_broadcast(trainer, lambda: calls.append(1))
    trainer.fit_loop.epoch_loop._broadcast_sigterm_tensor()
    assert calls == [1]

    monkeypatch.delattr(_TrainingEpochLoop, "_broadcast_sigterm_tensor")
    with pytest.raises(PrivateAPIError) as excinfo:
        _compat.replace_sigterm_broadcast(_trainer(), lambda: None)
    assert_loud(excinfo, "_TrainingEpochLoop._broadcast_sigterm_tensor")


def test_broadcast_sigterm_tensor_must_still_be_called_by_advance(monkeypatch: pytest.MonkeyPatch) -> None:
    # Patching a method the loop no longer calls would silently leave sasgd's workers in lock-step.
    monkeypatch.setattr(_TrainingEpochLoop, "advance", lambda self, data_fetcher: None)
    with pytest.raises(PrivateAPIError) as excinfo:
        _compat.replace_sigterm_broadcast(_trainer(), lambda: None)
    assert_loud(excinfo, "_TrainingEpochLoop.advance")


# ---------------------------------------------------------------------------------------------- torch


@pytest.fixture
def ddp(tmp_path: Path) -> Iterator[DistributedDataParallel]:
    """A one-rank gloo DDP model in this process (destroyed afterwards)."""
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        yield DistributedDataParallel(nn.Linear(3, 2))
    finally:
        dist.destroy_process_group()


def test_reducer_logging_data(ddp: DistributedDataParallel, monkeypatch: pytest.MonkeyPatch) -> None:
    timers = _ReducerTimers(ddp)
    assert timers.available
    ddp(torch.randn(4, 3)).sum().backward()
    ddp(torch.randn(4, 3))  # DDP publishes a backward's timers at the next forward
    assert "backward_comm_time_end" in _compat.ddp_logging_data(ddp)
    assert timers.take_blocked() >= 0.0

    monkeypatch.delattr(DistributedDataParallel, "_get_ddp_logging_data")
    with pytest.raises(PrivateAPIError) as excinfo:
        _ReducerTimers(ddp)  # CommMonitor.on_fit_start: loud, not a silent blocked_s = 0
    assert_loud(excinfo, "DistributedDataParallel._get_ddp_logging_data()")


def test_reducer_runtime_logging_sample_rate(ddp: DistributedDataParallel, monkeypatch: pytest.MonkeyPatch) -> None:
    _compat.enable_ddp_runtime_logging(ddp)
    monkeypatch.delattr(DistributedDataParallel, "_set_ddp_runtime_logging_sample_rate")
    with pytest.raises(PrivateAPIError) as excinfo:
        _ReducerTimers(ddp)
    assert_loud(excinfo, "DistributedDataParallel._set_ddp_runtime_logging_sample_rate")


def test_ddp_comm_hooks(ddp: DistributedDataParallel) -> None:
    assert _compat.ddp_comm_hooks(ddp) == []
    ddp.register_comm_hook(state=None, hook=lambda state, bucket: torch.futures.Future())  # type: ignore[arg-type,return-value]
    assert len(_compat.ddp_comm_hooks(ddp)) == 1
    del ddp._comm_hooks
    with pytest.raises(PrivateAPIError) as excinfo:
        _compat.ddp_comm_hooks(ddp)
    assert_loud(excinfo, "DistributedDataParallel._comm_hooks")


def _scheduler() -> torch.optim.lr_scheduler.LRScheduler:
    optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(2))], lr=0.1)
    return torch.optim.lr_scheduler.StepLR(optimizer, step_size=1)


def test_scheduler_step_count() -> None:
    scheduler = _scheduler()
    optimizer = scheduler.optimizer
    rebuilt = torch.optim.SGD([nn.Parameter(torch.zeros(2))], lr=0.1)
    copied = server_scheduler(scheduler, optimizer, rebuilt)
    assert copied._step_count == 2
    rebuilt.step()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # torch's "lr_scheduler.step() before optimizer.step()" warning
        copied.step()

    broken = copy.deepcopy(scheduler)
    del broken._step_count
    with pytest.raises(PrivateAPIError) as excinfo:
        _compat.mark_scheduler_stepped(broken)
    assert_loud(excinfo, "LRScheduler._step_count")
    _compat.mark_scheduler_stepped(object())  # not a torch LRScheduler: nothing to do


def test_tensorpipe_transports(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(parameter_server.RPC_TRANSPORTS_ENV, "uv")
    options = parameter_server.tensorpipe_transport_options()
    assert options == {"_transports": ["uv"], "_channels": ["basic"]}
    TensorPipeRpcBackendOptions(**options)  # type: ignore[arg-type]

    def init_without_transports(self: object, *, num_worker_threads: int = 16) -> None: ...

    monkeypatch.setattr(TensorPipeRpcBackendOptions, "__init__", init_without_transports)
    with pytest.raises(PrivateAPIError) as excinfo:
        parameter_server.tensorpipe_transport_options()
    assert_loud(excinfo, "TensorPipeRpcBackendOptions(_transports=..., _channels=...)")


def test_foreach_copy(monkeypatch: pytest.MonkeyPatch) -> None:
    dst, src = [torch.zeros(2), torch.zeros(3)], [torch.ones(2), torch.full((3,), 2.0)]
    copy_all_(dst, src)
    assert all(torch.equal(d, s) for d, s in zip(dst, src, strict=True))
    monkeypatch.delattr(torch, "_foreach_copy_")
    with pytest.raises(PrivateAPIError) as excinfo:
        copy_all_(dst, src)
    assert_loud(excinfo, "torch._foreach_copy_")


def test_foreach_add_and_div(monkeypatch: pytest.MonkeyPatch) -> None:
    acc, grads = [torch.zeros(2)], [torch.full((2,), 3.0)]
    _compat.foreach_add_(acc, _compat.foreach_div(grads, 2.0))
    assert torch.equal(acc[0], torch.full((2,), 1.5))
    for name in ("_foreach_add_", "_foreach_div"):
        with monkeypatch.context() as patch:
            patch.delattr(torch, name)
            with pytest.raises(PrivateAPIError) as excinfo:
                _compat.foreach_add_(acc, _compat.foreach_div(grads, 2.0))
            assert_loud(excinfo, f"torch.{name}")


def test_lightning_private_types_are_only_type_hints() -> None:
    from lightning_delayed.strategies import base, sasgd

    for module in (base, sasgd):
        assert "_PATH" not in vars(module) and "_StrategyRegistry" not in vars(module)


# ------------------------------------------------------------------------------------------ one place

PRIVATE_NAMES = {
    "_broadcast_sigterm_tensor",
    "_register_ddp_hooks",
    "_get_process_group_backend",
    "_timeout",
    "_get_ddp_logging_data",
    "_set_ddp_runtime_logging_sample_rate",
    "_comm_hooks",
    "_step_count",
    "_transports",
    "_channels",
    "_foreach_copy_",
    "_foreach_add_",
    "_foreach_div",
}


def test_private_names_are_touched_only_in_compat() -> None:
    """Outside ``_compat.py`` no attribute access, string or import uses one of these names.

    The one exception is ``DelayedStrategy``'s ``def _register_ddp_hooks`` (an override must
    carry the name), which ``check_ddp_hook_override`` guards.
    """
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.name == "_compat.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            name = None
            if isinstance(node, ast.Attribute):
                name = node.attr
            elif isinstance(node, ast.Constant) and isinstance(node.value, str):
                name = node.value
            elif isinstance(node, ast.alias):
                name = node.name.rsplit(".", 1)[-1]
            if name in PRIVATE_NAMES:
                offenders.append(f"{path.relative_to(PACKAGE)}:{getattr(node, 'lineno', '?')}: {name}")
    assert offenders == []


def _package_trees() -> dict[Path, ast.Module]:
    return {path: ast.parse(path.read_text(), str(path)) for path in sorted(PACKAGE.rglob("*.py"))}


def _type_checking_nodes(tree: ast.Module) -> set[int]:
    """ids of the nodes inside ``if TYPE_CHECKING:`` blocks."""
    inside: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING":
            inside.update(id(child) for stmt in node.body for child in ast.walk(stmt))
    return inside


def test_no_other_private_name_of_torch_or_lightning_is_used() -> None:
    """Any ``x._name`` the package does not define itself must go through ``_compat``.

    This catches private APIs this file does not know yet (a new ``torch._foreach_*``, a
    ``dist.distributed_c10d._...``), and private names imported from torch or Lightning outside
    ``if TYPE_CHECKING:``.
    """
    trees = _package_trees()
    defined: set[str] = set()
    for tree in trees.values():
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                defined.add(node.name)
            elif isinstance(node, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                for target in targets:
                    for part in ast.walk(target):
                        if isinstance(part, ast.Name):
                            defined.add(part.id)
                        elif isinstance(part, ast.Attribute):
                            defined.add(part.attr)
    offenders = []
    for path, tree in trees.items():
        if path.name == "_compat.py":
            continue
        type_checking = _type_checking_nodes(tree)
        for node in ast.walk(tree):
            where = f"{path.relative_to(PACKAGE)}:{getattr(node, 'lineno', '?')}"
            if isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__"):
                if node.attr not in defined:
                    offenders.append(f"{where}: .{node.attr}")
            elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in ("torch", "lightning"):
                private = [a.name for a in node.names if a.name.startswith("_")]
                if private and id(node) not in type_checking:
                    offenders.append(f"{where}: from {node.module} import {private}")
    assert offenders == []


def test_default_store(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch.distributed.distributed_c10d as c10d

    assert callable(c10d._get_default_store)
    monkeypatch.delattr(c10d, "_get_default_store")
    with pytest.raises(_compat.PrivateAPIError, match="_get_default_store"):
        _compat.default_store()


def test_is_live_group(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch.distributed.distributed_c10d as c10d

    assert _compat.is_live_group(object()) is False
    monkeypatch.delattr(c10d, "_world")
    with pytest.raises(_compat.PrivateAPIError, match="_world"):
        _compat.is_live_group(object())


def test_checkpoint_connector_resume_start(monkeypatch: pytest.MonkeyPatch) -> None:
    from lightning.pytorch.trainer.connectors.checkpoint_connector import _CheckpointConnector

    from tests.helpers.models import RegressionModule, trainer

    t = trainer(SSGDStrategy(), devices=1, max_steps=1)
    connector = _compat.checkpoint_connector(t)
    calls: list[object] = []
    original = connector.resume_start

    def counting(checkpoint_path: object = None, weights_only: object = None) -> None:
        calls.append(checkpoint_path)
        original(checkpoint_path, weights_only=weights_only)

    connector.resume_start = counting
    t.fit(RegressionModule(n_batches=2))
    assert calls == [None], "fit no longer restores through resume_start: ElasticSnapshots would not resume"
    del connector.resume_start  # the instance's replacement; then the method itself, as a rename would
    monkeypatch.delattr(_CheckpointConnector, "resume_start")
    with pytest.raises(_compat.PrivateAPIError) as excinfo:
        _compat.checkpoint_connector(t)
    assert_loud(excinfo, "_CheckpointConnector.resume_start")
