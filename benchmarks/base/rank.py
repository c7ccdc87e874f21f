"""What one rank of the benchmarks is: its place in the world, its accelerator, its Trainer.

Everything comes from the environment (the runner, ``torchrun`` or a scheduler sets Lightning's
variables: ``WORLD_SIZE``, ``RANK``/``NODE_RANK``/``LOCAL_RANK``, ``LOCAL_WORLD_SIZE``), and
:data:`ACCELERATOR_ENV` says ``cpu`` or ``gpu``. The tasks the ranks run are in
:mod:`benchmarks.base.tasks`.
"""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import lightning.pytorch as pl

REPO = Path(__file__).resolve().parents[2]
NUM_CLASSES = 10


def env_int(name: str, default: int | None = None) -> int:
    value = os.environ.get(name)
    if value is None:
        if default is None:
            raise ValueError(f"the worker needs the environment variable {name} (set by the runner, torchrun or you)")
        return default
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"environment variable {name} must be an integer, got {value!r}") from None


def rank_and_world() -> tuple[int, int]:
    world = env_int("WORLD_SIZE")
    rank = env_int("RANK", env_int("NODE_RANK", 0) * env_int("LOCAL_WORLD_SIZE", 1) + env_int("LOCAL_RANK", 0))
    return rank, world


ACCELERATOR_ENV = "LD_BENCH_ACCELERATOR"
"""The ranks' accelerator, ``cpu`` (default) or ``gpu``: set by the runner (``--accelerator``) for every rank."""
ACCELERATORS = ("cpu", "gpu")


def accelerator() -> str:
    """``cpu`` or ``gpu``, from :data:`ACCELERATOR_ENV` (unset: ``cpu``)."""
    value = os.environ.get(ACCELERATOR_ENV) or "cpu"
    if value not in ACCELERATORS:
        raise ValueError(f"environment variable {ACCELERATOR_ENV} must be one of {ACCELERATORS}, got {value!r}")
    return value


def backend() -> str:
    """The process group's backend for this rank's accelerator: NCCL on GPUs, gloo on CPUs."""
    return "nccl" if accelerator() == "gpu" else "gloo"


def gpu_problem(world: int) -> str | None:
    """Why ``world`` ranks cannot each have a CUDA device with NCCL here, or None if they can."""
    import torch
    import torch.distributed as dist

    if not torch.cuda.is_available():
        return "no CUDA device here (torch.cuda.is_available() is False)"
    if torch.cuda.device_count() < world:
        return f"{world} ranks need {world} CUDA devices, one per rank; found {torch.cuda.device_count()}"
    if not dist.is_nccl_available():
        return "this torch has no NCCL"
    return None


def tx_bytes() -> int | None:
    """Bytes sent by this namespace's network device (``LD_BENCH_NET_DEV``), or None if unknown."""
    dev = os.environ.get("LD_BENCH_NET_DEV")
    if not dev:
        return None
    try:
        return int(Path(f"/sys/class/net/{dev}/statistics/tx_bytes").read_text())
    except (OSError, ValueError):
        return None


def versions() -> dict[str, str]:
    import lightning
    import torch
    import torchvision

    import lightning_delayed

    return {
        "torch": torch.__version__,
        "lightning": lightning.__version__,
        "torchvision": torchvision.__version__,
        "lightning_delayed": lightning_delayed.__version__,
        "python": platform.python_version(),
    }


QUIET: dict[str, Any] = {
    "logger": False,
    "enable_checkpointing": False,
    "enable_progress_bar": False,
    "enable_model_summary": False,
}
"""Trainer arguments of every benchmark fit: no logger, checkpoints, progress bar or model summary."""


def _trainer_topology() -> dict[str, int]:
    _, world = rank_and_world()
    devices = env_int("LOCAL_WORLD_SIZE", 1)
    if world % devices:
        raise ValueError(f"WORLD_SIZE={world} is not a multiple of LOCAL_WORLD_SIZE={devices}")
    return {"devices": devices, "num_nodes": world // devices}


def bench_trainer(strategy: Any, **overrides: Any) -> pl.Trainer:
    """A Trainer for one benchmark fit: the rank's accelerator, the topology from the environment, nothing but the fit.

    No logger, checkpoints, progress bar, model summary, sanity check or validation, and no
    distributed sampler (each rank makes its own batches). ``overrides`` replace or add Trainer
    arguments: ``max_steps``, ``callbacks``, and for a phase that validates ``limit_val_batches=None``
    (Lightning's default) or that shards a dataset ``use_distributed_sampler=True``.
    """
    import lightning.pytorch as pl

    kwargs: dict[str, Any] = {
        "accelerator": accelerator(),  # on GPUs each rank sees its one device (CUDA_VISIBLE_DEVICES)
        "strategy": strategy,
        **QUIET,
        "use_distributed_sampler": False,
        "num_sanity_val_steps": 0,
        "limit_val_batches": 0,
        **_trainer_topology(),
    }
    kwargs.update(overrides)
    return pl.Trainer(**kwargs)


class FitEnvironment:
    """The process environment as the runner set it, put back before each of several fits in one process.

    Lightning's ``LightningEnvironment.teardown`` deletes ``WORLD_SIZE`` when a fit ends, so a second
    Trainer in the same process would find no world size (:func:`rank_and_world` raises) or a wrong
    topology. Snapshot once before the first fit, call :meth:`restore` before every fit::

        env = FitEnvironment()
        for name in names:
            env.restore()
            bench_trainer(build_strategy(name), max_steps=n).fit(...)

    ``restore`` puts back every variable of the snapshot (deleted or changed ones) and leaves
    variables set since alone.
    """

    def __init__(self) -> None:
        self.snapshot = dict(os.environ)

    def restore(self) -> None:
        os.environ.update(self.snapshot)
