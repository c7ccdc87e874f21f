"""The Fabric front door: every ``lightning_delayed`` algorithm as a strategy of ``lightning.fabric.Fabric``.

``import lightning_delayed`` registers the names in Fabric's own registry, so
``Fabric(strategy="odsgd")`` works; see ``docs/fabric.md``.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING

from lightning.fabric.strategies import STRATEGY_REGISTRY  # type: ignore[attr-defined]

from lightning_delayed.fabric.strategy import DelayedFabricStrategy

if TYPE_CHECKING:
    from collections.abc import Iterator

    from lightning.fabric import Fabric


def _strategy(fabric: Fabric) -> DelayedFabricStrategy:
    strategy = fabric.strategy
    if not isinstance(strategy, DelayedFabricStrategy):
        raise TypeError(
            f"fabric.strategy is {type(strategy).__name__}, not a lightning_delayed strategy: create the Fabric with "
            "strategy='odsgd' (or another lightning_delayed name) after `import lightning_delayed`"
        )
    return strategy


@contextlib.contextmanager
def consensus(fabric: Fabric) -> Iterator[None]:
    """``with consensus(fabric):`` the module holds the consensus model; see :meth:`DelayedFabricStrategy.consensus`."""
    with _strategy(fabric).consensus():
        yield


def finish(fabric: Fabric) -> None:
    """End-of-training flush and final average; see :meth:`DelayedFabricStrategy.finish`."""
    _strategy(fabric).finish()


def register_fabric_strategies() -> None:
    """Register every algorithm name in Fabric's ``STRATEGY_REGISTRY`` (``import lightning_delayed`` does)."""
    DelayedFabricStrategy.register_strategies(STRATEGY_REGISTRY)


__all__ = ["DelayedFabricStrategy", "consensus", "finish", "register_fabric_strategies"]
