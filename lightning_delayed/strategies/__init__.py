"""Lightning strategies, one per algorithm, on the shared :class:`DelayedStrategy` base."""

from lightning_delayed.strategies.averaging import (
    CoCoDSGDStrategy,
    DaSGDStrategy,
    LocalSGDStrategy,
    OverlapLocalSGDStrategy,
)
from lightning_delayed.strategies.base import DelayedStrategy
from lightning_delayed.strategies.diloco import DiLoCoStrategy, StreamingDiLoCoStrategy
from lightning_delayed.strategies.odsgd import ODSGDStrategy
from lightning_delayed.strategies.sasgd import ASGDStrategy, SASGDStrategy
from lightning_delayed.strategies.ssgd import SSGDStrategy

__all__ = [
    "ASGDStrategy",
    "CoCoDSGDStrategy",
    "DaSGDStrategy",
    "DelayedStrategy",
    "DiLoCoStrategy",
    "LocalSGDStrategy",
    "ODSGDStrategy",
    "OverlapLocalSGDStrategy",
    "SASGDStrategy",
    "SSGDStrategy",
    "StreamingDiLoCoStrategy",
]
