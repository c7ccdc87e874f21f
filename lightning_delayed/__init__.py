"""Lightning strategies that hide gradient or model communication behind computation.

``import lightning_delayed`` registers every strategy name with Lightning, so
``Trainer(strategy="odsgd")`` works. See ``docs/index.md``.
"""

from lightning_delayed.comm.buckets import (
    DEFAULT_BUCKET_CAP_MB,
    CommunicationError,
    NonFiniteReductionError,
    PendingAverage,
    launch_average,
)
from lightning_delayed.comm.hooks import DelayedAllReduceHook, LocalGradientHook
from lightning_delayed.core.base import DelayedAlgorithm
from lightning_delayed.core.dasgd import DaSGD, DaSGDConfig, cocodsgd_config
from lightning_delayed.core.local_sgd import LocalSGD, LocalSGDConfig
from lightning_delayed.core.odsgd import ODSGD, ODSGDConfig
from lightning_delayed.core.overlap_local_sgd import OverlapLocalSGD, OverlapLocalSGDConfig
from lightning_delayed.registry import STRATEGIES, register_all, strategy_names
from lightning_delayed.strategies import (
    CoCoDSGDStrategy,
    DaSGDStrategy,
    DelayedStrategy,
    LocalSGDStrategy,
    ODSGDStrategy,
    OverlapLocalSGDStrategy,
    SSGDStrategy,
)

__version__ = "0.1.0"

register_all()

__all__ = [
    "DEFAULT_BUCKET_CAP_MB",
    "ODSGD",
    "STRATEGIES",
    "CoCoDSGDStrategy",
    "CommunicationError",
    "DaSGD",
    "DaSGDConfig",
    "DaSGDStrategy",
    "DelayedAlgorithm",
    "DelayedAllReduceHook",
    "DelayedStrategy",
    "LocalGradientHook",
    "LocalSGD",
    "LocalSGDConfig",
    "LocalSGDStrategy",
    "NonFiniteReductionError",
    "ODSGDConfig",
    "ODSGDStrategy",
    "OverlapLocalSGD",
    "OverlapLocalSGDConfig",
    "OverlapLocalSGDStrategy",
    "PendingAverage",
    "SSGDStrategy",
    "cocodsgd_config",
    "launch_average",
    "strategy_names",
]
