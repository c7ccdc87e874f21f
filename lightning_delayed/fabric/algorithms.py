"""Which algorithm object each registry name builds behind Fabric, from the same ``core/`` as the Trainer glue.

Each entry turns the algorithm's keyword arguments into its config (validated by the config's
``__post_init__``, as for the Trainer strategies) and builds the rule from the module, its
trainable parameters, the optimizer, the communicator and the DDP gradient hook.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from torch import Tensor, nn
from torch.optim import Optimizer

from lightning_delayed.comm.communicator import CommHook
from lightning_delayed.core.averaging import model_state
from lightning_delayed.core.base import DelayedAlgorithm
from lightning_delayed.core.dasgd import DaSGD, DaSGDConfig, cocodsgd_config
from lightning_delayed.core.diloco import DiLoCo, DiLoCoConfig
from lightning_delayed.core.local_sgd import LocalSGD, LocalSGDConfig
from lightning_delayed.core.odsgd import ODSGD, ODSGDConfig
from lightning_delayed.core.overlap_local_sgd import OverlapLocalSGD, OverlapLocalSGDConfig
from lightning_delayed.core.ssgd import SynchronousSGD
from lightning_delayed.core.streaming_diloco import StreamingDiLoCo, StreamingDiLoCoConfig, layer_fragments

Builder = Callable[[Any, nn.Module, list[Tensor], Optimizer, CommHook, Any], DelayedAlgorithm]


@dataclasses.dataclass(frozen=True)
class Spec:
    """One algorithm behind Fabric.

    Attributes:
        make_config: keyword arguments -> the algorithm's frozen config (``None`` for ``ssgd``).
        gradients: whether the algorithm communicates gradients through the DDP hook; otherwise
            DDP's gradient all-reduce is replaced by a no-op hook.
        build: ``(config, module, params, optimizer, communicator, ddp_hook) -> algorithm``.
    """

    make_config: Callable[..., Any] | None
    gradients: bool
    build: Builder


def _float_buffers(module: nn.Module, config: DiLoCoConfig | StreamingDiLoCoConfig) -> list[Tensor]:
    return [b for b in module.buffers() if b.is_floating_point()] if config.average_buffers else []


def _odsgd(config: Any, module: nn.Module, params: list[Tensor], opt: Optimizer, comm: CommHook, hook: Any) -> Any:
    # Fabric clips in the user's loop (fabric.clip_gradients), before optimizer.step(): see docs/fabric.md.
    return ODSGD(config, params, opt, hook, clip_grads=None)


def _ssgd(config: Any, module: nn.Module, params: list[Tensor], opt: Optimizer, comm: CommHook, hook: Any) -> Any:
    return SynchronousSGD(params, hook)


def _local(config: Any, module: nn.Module, params: list[Tensor], opt: Optimizer, comm: CommHook, hook: Any) -> Any:
    return LocalSGD(config, model_state(module, params, config.average_buffers), opt, comm)


def _dasgd(config: Any, module: nn.Module, params: list[Tensor], opt: Optimizer, comm: CommHook, hook: Any) -> Any:
    return DaSGD(config, model_state(module, params, config.average_buffers), opt, comm)


def _overlap(config: Any, module: nn.Module, params: list[Tensor], opt: Optimizer, comm: CommHook, hook: Any) -> Any:
    return OverlapLocalSGD(config, model_state(module, params, config.average_buffers), opt, comm)


def _diloco(config: Any, module: nn.Module, params: list[Tensor], opt: Optimizer, comm: CommHook, hook: Any) -> Any:
    return DiLoCo(config, params, _float_buffers(module, config), opt, comm)


def _streaming(config: Any, module: nn.Module, params: list[Tensor], opt: Optimizer, comm: CommHook, hook: Any) -> Any:
    # Every rank holds the same model, so a refusal here happens on every rank (no hang).
    split = layer_fragments(module, params, config.num_fragments, config.fragments)
    return StreamingDiLoCo(config, params, _float_buffers(module, config), opt, split, comm)


SPECS: dict[str, Spec] = {
    "ssgd": Spec(None, True, _ssgd),
    "odsgd": Spec(ODSGDConfig, True, _odsgd),
    "local_sgd": Spec(LocalSGDConfig, False, _local),
    "dasgd": Spec(DaSGDConfig, False, _dasgd),
    "cocodsgd": Spec(cocodsgd_config, False, _dasgd),
    "overlap_local_sgd": Spec(OverlapLocalSGDConfig, False, _overlap),
    "diloco": Spec(DiLoCoConfig, False, _diloco),
    "streaming_diloco": Spec(StreamingDiLoCoConfig, False, _streaming),
}
"""Every algorithm Fabric offers. ``sasgd``/``asgd`` are left out: they run a parameter server over
RPC with a worker loop of their own and replace Lightning's training loop, which Fabric's user owns."""


def make_config(name: str, kwargs: dict[str, Any]) -> Any:
    """The config of algorithm ``name`` from ``kwargs`` (the configs' defaults are the Trainer strategies')."""
    spec = SPECS[name]
    if spec.make_config is None:
        if kwargs:
            raise TypeError(f"strategy {name!r} takes no algorithm arguments, got {sorted(kwargs)}")
        return None
    return spec.make_config(**kwargs)


def config_fields(name: str) -> set[str]:
    """The keyword arguments algorithm ``name`` takes (the rest go to Fabric's ``DDPStrategy``)."""
    fields = {
        "ssgd": set(),
        "odsgd": {f.name for f in dataclasses.fields(ODSGDConfig)},
        "local_sgd": {f.name for f in dataclasses.fields(LocalSGDConfig)},
        "dasgd": {f.name for f in dataclasses.fields(DaSGDConfig)},
        "cocodsgd": {f.name for f in dataclasses.fields(DaSGDConfig)} - {"delay"},
        "overlap_local_sgd": {f.name for f in dataclasses.fields(OverlapLocalSGDConfig)},
        "diloco": {f.name for f in dataclasses.fields(DiLoCoConfig)},
        "streaming_diloco": {f.name for f in dataclasses.fields(StreamingDiLoCoConfig)},
    }
    return fields[name]
