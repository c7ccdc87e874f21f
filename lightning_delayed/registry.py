"""The one place that registers every strategy name in Lightning's ``StrategyRegistry``.

Lightning has no entry point for third-party strategies, so ``import lightning_delayed`` calls
:func:`register_all`. Each class registers ``<name>``, ``<name>_spawn`` and ``<name>_notebook``.
"""

from __future__ import annotations

from typing import TypeVar

from lightning.pytorch.strategies import StrategyRegistry

from lightning_delayed.fabric import register_fabric_strategies
from lightning_delayed.strategies import (
    ASGDStrategy,
    CoCoDSGDStrategy,
    DaSGDStrategy,
    DiLoCoStrategy,
    LocalSGDStrategy,
    ODSGDStrategy,
    OverlapLocalSGDStrategy,
    SASGDStrategy,
    SSGDStrategy,
    StreamingDiLoCoStrategy,
)
from lightning_delayed.strategies.base import DelayedStrategy

_S = TypeVar("_S", bound=type[DelayedStrategy])

STRATEGIES: tuple[type[DelayedStrategy], ...] = (
    SSGDStrategy,
    ODSGDStrategy,
    LocalSGDStrategy,
    DaSGDStrategy,
    CoCoDSGDStrategy,
    OverlapLocalSGDStrategy,
    SASGDStrategy,
    ASGDStrategy,
    DiLoCoStrategy,
    StreamingDiLoCoStrategy,
)
"""Every algorithm, baselines first; the demo and the benchmarks iterate over this tuple."""


def register_strategy(cls: _S) -> _S:
    """Register a strategy of your own under ``cls.strategy_name`` (and its ``_spawn``/``_notebook`` aliases).

    Usable as a class decorator; afterwards ``Trainer(strategy=cls.strategy_name)`` works in every
    process that has imported the module defining ``cls`` (Lightning has no entry point for
    strategies). Re-registering a name replaces the previous entry.
    """
    if not (isinstance(cls, type) and issubclass(cls, DelayedStrategy)):
        raise TypeError(f"register_strategy needs a lightning_delayed.DelayedStrategy subclass, got {cls!r}")
    if not cls.strategy_name or not isinstance(cls.strategy_name, str):
        raise ValueError(
            f"{cls.__name__}.strategy_name must be a non-empty string (the registry name), got {cls.strategy_name!r}"
        )
    cls.register_strategies(StrategyRegistry)
    return cls


def register_all() -> None:
    for cls in STRATEGIES:
        cls.register_strategies(StrategyRegistry)
    register_fabric_strategies()  # the same names, in Fabric's own registry (docs/fabric.md)


def strategy_names() -> list[str]:
    """The plain registry names (``"ssgd"``, ``"odsgd"``, ...), in :data:`STRATEGIES` order."""
    return [cls.strategy_name for cls in STRATEGIES]
