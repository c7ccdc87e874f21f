"""Lightning strategies that hide gradient or model communication behind computation.

``import lightning_delayed`` registers every strategy name with Lightning, so
``Trainer(strategy="odsgd")`` works. See ``docs/index.md``.

The names in ``__all__`` are the public API; each is documented in ``docs/extending.md`` ("Public
API"). To extend the package (a new algorithm, a communication hook of your own, wire
compression) see that page: the extension points are :class:`DelayedAlgorithm` (the rule),
:class:`CommHook` (the communication), :class:`DelayedStrategy` (the Lightning glue) and
:func:`register_strategy`. Lower-level pieces live in their submodules
(``lightning_delayed.comm.buckets.Pending``, ...).

``lightning_delayed.core`` and ``lightning_delayed.comm`` need only torch: without Lightning
installed, this package imports the Lightning-free names and leaves the Lightning glue (the
strategies, :class:`CommMonitor`, the registry) out, with an error naming Lightning when one of
them is asked for.
"""

from __future__ import annotations

from typing import Any

from lightning_delayed._compat import PrivateAPIError
from lightning_delayed._version import __version__ as __version__
from lightning_delayed.comm.buckets import CommunicationError, NonFiniteReductionError
from lightning_delayed.comm.communicator import AllReduceHook, CommHook
from lightning_delayed.comm.compression import CompressedHook, Compression, Compressor
from lightning_delayed.comm.hooks import DDPGradientHook, LocalGradientHook
from lightning_delayed.comm.lowbit import LowBitHook
from lightning_delayed.comm.parameter_server import WorkerLostError
from lightning_delayed.comm.quantized import BlockQuantizer, ChunkCompressor
from lightning_delayed.comm.stats import record_staleness
from lightning_delayed.core.averaging import AveragingAlgorithm
from lightning_delayed.core.base import DelayedAlgorithm, GradientCommunicator
from lightning_delayed.core.dasgd import DaSGDConfig
from lightning_delayed.core.diloco import DiLoCoConfig
from lightning_delayed.core.local_sgd import LocalSGDConfig
from lightning_delayed.core.odsgd import ODSGDConfig
from lightning_delayed.core.overlap_local_sgd import OverlapLocalSGDConfig
from lightning_delayed.core.sasgd import SASGDConfig
from lightning_delayed.core.streaming_diloco import StreamingDiLoCoConfig

_LIGHTNING_NAMES = (
    "ASGDStrategy",
    "AveragingStrategy",
    "CheckpointError",
    "CoCoDSGDStrategy",
    "CommMonitor",
    "DaSGDStrategy",
    "DelayedStrategy",
    "DiLoCoStrategy",
    "ElasticSnapshots",
    "LocalSGDStrategy",
    "NonFiniteCheckpointError",
    "ODSGDStrategy",
    "OverlapLocalSGDStrategy",
    "SASGDStrategy",
    "SSGDStrategy",
    "STRATEGIES",
    "StreamingDiLoCoStrategy",
    "register_strategy",
    "strategy_names",
)


def _lightning_missing() -> ImportError | None:
    """``None`` if Lightning imports; the import error if Lightning itself is not installed.

    Any other error inside Lightning's import is raised: a broken install must not pass for a
    missing one.
    """
    try:
        import lightning.pytorch  # noqa: F401
    except ImportError as e:
        if e.name in ("lightning", "lightning.pytorch"):
            return e
        raise
    return None


_LIGHTNING_ERROR = _lightning_missing()

if _LIGHTNING_ERROR is None:
    from lightning_delayed._compat import check_ddp_hook_override
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
    from lightning_delayed.strategies.averaging import AveragingStrategy
    from lightning_delayed.strategies.checkpoint import CheckpointError
    from lightning_delayed.strategies.finite import NonFiniteCheckpointError
    from lightning_delayed.strategies.snapshots import ElasticSnapshots

    check_ddp_hook_override()
    register_all()
else:

    def __getattr__(name: str) -> Any:
        if name in _LIGHTNING_NAMES:
            raise ImportError(
                f"lightning_delayed.{name} needs Lightning, which is not installed ({_LIGHTNING_ERROR}). "
                "Install it with `pip install lightning`; lightning_delayed.core and lightning_delayed.comm "
                "work with torch alone."
            )
        raise AttributeError(f"module 'lightning_delayed' has no attribute {name!r}")


__all__ = [
    "STRATEGIES",
    "ASGDStrategy",
    "AllReduceHook",
    "AveragingAlgorithm",
    "AveragingStrategy",
    "BlockQuantizer",
    "CheckpointError",
    "ChunkCompressor",
    "CoCoDSGDStrategy",
    "CommHook",
    "CommMonitor",
    "CommunicationError",
    "CompressedHook",
    "Compression",
    "Compressor",
    "DDPGradientHook",
    "DaSGDConfig",
    "DaSGDStrategy",
    "DelayedAlgorithm",
    "DelayedStrategy",
    "DiLoCoConfig",
    "DiLoCoStrategy",
    "ElasticSnapshots",
    "GradientCommunicator",
    "LocalGradientHook",
    "LocalSGDConfig",
    "LocalSGDStrategy",
    "LowBitHook",
    "NonFiniteCheckpointError",
    "NonFiniteReductionError",
    "ODSGDConfig",
    "ODSGDStrategy",
    "OverlapLocalSGDConfig",
    "OverlapLocalSGDStrategy",
    "PrivateAPIError",
    "SASGDConfig",
    "SASGDStrategy",
    "SSGDStrategy",
    "StreamingDiLoCoConfig",
    "StreamingDiLoCoStrategy",
    "WorkerLostError",
    "record_staleness",
    "register_strategy",
    "strategy_names",
]
