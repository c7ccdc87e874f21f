"""Lightning strategies that hide gradient or model communication behind computation.

``import lightning_delayed`` registers every strategy name with Lightning, so
``Trainer(strategy="odsgd")`` works. See ``docs/index.md``.

The names in ``__all__`` are the stable public API. To extend the package (a new algorithm, a
communication hook of your own, wire compression) see ``docs/extending.md``: the extension points
are :class:`DelayedAlgorithm` (the rule), :class:`CommHook` (the communication),
:class:`DelayedStrategy` (the Lightning glue) and :func:`register_strategy`.
"""

from lightning_delayed.comm.buckets import (
    DEFAULT_BUCKET_CAP_MB,
    CommunicationError,
    Completed,
    NonFiniteReductionError,
    Pending,
    PendingAverage,
    launch_average,
)
from lightning_delayed.comm.communicator import AllReduceHook, CommHook
from lightning_delayed.comm.compression import COMPRESSIONS, CompressedHook, Compression, Compressor
from lightning_delayed.comm.hooks import DDPGradientHook, LocalGradientHook
from lightning_delayed.comm.parameter_server import WorkerLostError
from lightning_delayed.comm.stats import CommStats, comm_stats, record_staleness
from lightning_delayed.core.averaging import AveragingAlgorithm
from lightning_delayed.core.base import DelayedAlgorithm, GradientCommunicator
from lightning_delayed.core.dasgd import DaSGD, DaSGDConfig, cocodsgd_config
from lightning_delayed.core.diloco import DiLoCo, DiLoCoConfig
from lightning_delayed.core.local_sgd import LocalSGD, LocalSGDConfig
from lightning_delayed.core.odsgd import ODSGD, ODSGDConfig
from lightning_delayed.core.overlap_local_sgd import OverlapLocalSGD, OverlapLocalSGDConfig
from lightning_delayed.core.sasgd import ParameterServer, SASGDConfig, SASGDWorker
from lightning_delayed.core.streaming_diloco import StreamingDiLoCo, StreamingDiLoCoConfig
from lightning_delayed.monitor import CommMonitor
from lightning_delayed.registry import STRATEGIES, register_all, register_strategy, strategy_names
from lightning_delayed.strategies import (
    ASGDStrategy,
    CoCoDSGDStrategy,
    DaSGDStrategy,
    DelayedStrategy,
    DiLoCoStrategy,
    LocalSGDStrategy,
    ODSGDStrategy,
    OverlapLocalSGDStrategy,
    SASGDStrategy,
    SSGDStrategy,
    StreamingDiLoCoStrategy,
)
from lightning_delayed.strategies.base import refuse_grad_scaler

__version__ = "0.1.0"

register_all()

__all__ = [
    "COMPRESSIONS",
    "DEFAULT_BUCKET_CAP_MB",
    "ODSGD",
    "STRATEGIES",
    "ASGDStrategy",
    "AllReduceHook",
    "AveragingAlgorithm",
    "CoCoDSGDStrategy",
    "CommHook",
    "CommMonitor",
    "CommStats",
    "CommunicationError",
    "Completed",
    "CompressedHook",
    "Compression",
    "Compressor",
    "DDPGradientHook",
    "DaSGD",
    "DaSGDConfig",
    "DaSGDStrategy",
    "DelayedAlgorithm",
    "DelayedStrategy",
    "DiLoCo",
    "DiLoCoConfig",
    "DiLoCoStrategy",
    "GradientCommunicator",
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
    "ParameterServer",
    "Pending",
    "PendingAverage",
    "SASGDConfig",
    "SASGDStrategy",
    "SASGDWorker",
    "SSGDStrategy",
    "StreamingDiLoCo",
    "StreamingDiLoCoConfig",
    "StreamingDiLoCoStrategy",
    "WorkerLostError",
    "cocodsgd_config",
    "comm_stats",
    "launch_average",
    "record_staleness",
    "refuse_grad_scaler",
    "register_strategy",
    "strategy_names",
]
