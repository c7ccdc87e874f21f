"""The one place that registers every strategy name in Lightning's ``StrategyRegistry``.

Lightning has no entry point for third-party strategies, so ``import lightning_delayed`` calls
:func:`register_all`. Each class registers ``<name>``, ``<name>_spawn`` and ``<name>_notebook``.
"""

from __future__ import annotations

from lightning.pytorch.strategies import StrategyRegistry

from lightning_delayed.strategies import (
    CoCoDSGDStrategy,
    DaSGDStrategy,
    LocalSGDStrategy,
    ODSGDStrategy,
    OverlapLocalSGDStrategy,
    SSGDStrategy,
)
from lightning_delayed.strategies.base import DelayedStrategy

STRATEGIES: tuple[type[DelayedStrategy], ...] = (
    SSGDStrategy,
    ODSGDStrategy,
    LocalSGDStrategy,
    DaSGDStrategy,
    CoCoDSGDStrategy,
    OverlapLocalSGDStrategy,
)
"""Every algorithm, baselines first; the demo and the benchmarks iterate over this tuple."""


def register_all() -> None:
    for cls in STRATEGIES:
        cls.register_strategies(StrategyRegistry)


def strategy_names() -> list[str]:
    """The plain registry names (``"ssgd"``, ``"odsgd"``, ...), in :data:`STRATEGIES` order."""
    return [cls.strategy_name for cls in STRATEGIES]
