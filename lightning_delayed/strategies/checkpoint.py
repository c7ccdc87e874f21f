"""What the strategies add to Lightning's checkpoints, and how they resume from them.

The strategy's part of a checkpoint lives under ``checkpoint["lightning_delayed"]``
(see ``docs/index.md#checkpoints``). This module holds the pieces that are the same for every
strategy, kept out of :mod:`lightning_delayed.strategies.base` so the base stays small:

* **per-rank module buffers** (:func:`rank_buffers`, :func:`restore_rank_buffers`): every rank's
  own persistent buffers (BatchNorm statistics that are not averaged, ``num_batches_tracked``...).
  The checkpoint's ``state_dict`` holds the consensus model, whose buffers are rank 0's wherever
  they are not averaged, so without them every rank would resume rank 0's statistics.
* **the algorithm's arguments** (:func:`algorithm_config`, :func:`config_mismatch`): resuming
  with different ones is refused, naming each argument with its old and new value.
* **a checksum** (:func:`checksum`): sha256 over every tensor's bytes (and every scalar) of the
  model ``state_dict``, the optimizer and scheduler states and the strategy's own state, in a fixed
  order. Written on save (rank 0, which writes the file), verified on load.
* **load errors on every rank** (:func:`agree_on_load`): Lightning reads the checkpoint on every
  rank, and ranks need not read the same bytes (node-local disks, a file replaced in between). A
  rank that cannot load must not leave the others waiting in the first collective of training, so
  the ranks exchange their outcome once and all of them raise.
* **resuming on another number of ranks** (:func:`restore_resized`): the algorithm's own rule
  (``DelayedAlgorithm.load_resized_state_dict``); each rank's buffers become the mean of the saved
  ranks' (floating point) or rank 0's (integer); communication state (error-feedback residuals)
  restarts from zero.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import torch
import torch.distributed as dist
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor, nn

from lightning_delayed.comm.quantized import QUANTIZED_BITS

if TYPE_CHECKING:
    from lightning.fabric.utilities.types import _PATH

    from lightning_delayed.comm.communicator import CommHook
    from lightning_delayed.core.base import DelayedAlgorithm

CHECKSUM_KEY = "checksum"
CONFIG_KEY = "config"
BUFFERS_KEY = "local_buffers"
CHECKSUMMED = ("state_dict", "optimizer_states", "lr_schedulers")
"""The Lightning checkpoint entries covered by the checksum, besides the strategy's own entry."""
TRAJECTORY_NEUTRAL_ARGS = frozenset({"worker_timeout"})
"""Arguments that may change between a checkpoint and its resume: they do not change any update."""


class CheckpointError(RuntimeError):
    """A checkpoint cannot be read or failed its checksum (on this rank or on another one)."""


# ------------------------------------------------------------------ checksum


def checksum(checkpoint: Mapping[str, Any], own_key: str) -> str:
    """sha256 of the checkpoint's tensors and scalars, in a fixed order (without the checksum itself)."""
    digest = hashlib.sha256()
    for key in CHECKSUMMED:
        _feed(digest, key)
        _feed(digest, checkpoint.get(key))
    _feed(digest, own_key)
    _feed(digest, {k: v for k, v in checkpoint[own_key].items() if k != CHECKSUM_KEY})
    return digest.hexdigest()


def _feed(digest: Any, obj: Any) -> None:
    if isinstance(obj, Tensor):
        digest.update(f"T{obj.dtype}{tuple(obj.shape)}{obj.layout}".encode())
        if obj.layout == torch.strided and obj.numel() > 0:
            flat = obj.detach().to("cpu").resolve_conj().resolve_neg().contiguous().reshape(-1).view(torch.uint8)
            digest.update(flat.numpy().data)
    elif isinstance(obj, Mapping):
        digest.update(f"D{len(obj)}".encode())
        for key in sorted(obj, key=repr):  # keys may mix types (optimizer state: int param ids)
            _feed(digest, repr(key))
            _feed(digest, obj[key])
    elif isinstance(obj, (list, tuple)):
        digest.update(f"L{len(obj)}".encode())
        for item in obj:
            _feed(digest, item)
    elif obj is None or isinstance(obj, (bool, int, float, str, bytes)):
        digest.update(f"{type(obj).__name__}:{obj!r};".encode())
    else:
        # Anything else (a scheduler's callable, say) may not repr the same in another process:
        # only its type takes part.
        digest.update(f"O{type(obj).__module__}.{type(obj).__qualname__};".encode())


def verify_checksum(checkpoint: Mapping[str, Any], own_key: str, path: _PATH) -> None:
    """Raise :class:`CheckpointError` if the stored checksum does not match (no checksum: older file, accepted)."""
    saved = checkpoint.get(own_key)
    if not isinstance(saved, Mapping) or CHECKSUM_KEY not in saved:
        return
    actual = checksum(checkpoint, own_key)
    if actual != saved[CHECKSUM_KEY]:
        raise CheckpointError(
            f"the checkpoint {path} is corrupt: the sha256 of its tensors is {actual[:16]}..., but "
            f"{saved[CHECKSUM_KEY][:16]}... was written with it, so bytes changed after it was saved. "
            f"{previous_checkpoint_hint(path)}"
        )


def previous_checkpoint_hint(path: _PATH) -> str:
    """Advice naming the newest other checkpoint beside ``path``, if there is one on a local disk."""
    candidates: list[tuple[float, str]] = []
    try:
        target = Path(os.fspath(path)).resolve()
        for other in target.parent.iterdir():
            if other.suffix == target.suffix and other.is_file() and other.resolve() != target:
                candidates.append((other.stat().st_mtime, str(other)))
    except (OSError, TypeError, ValueError):
        candidates = []
    if not candidates:
        return "Resume from an earlier checkpoint."
    return f"Resume from an earlier checkpoint, e.g. the newest other one in that directory: {max(candidates)[1]}"


class StrategyLike(Protocol):
    """What these helpers read from a strategy: the Trainer glue's or the Fabric glue's."""

    compression: str
    block_size: int
    error_feedback: bool
    comm_hook: CommHook | None
    communicator: CommHook | None
    algorithm: DelayedAlgorithm | None

    @property
    def strategy_name(self) -> str: ...

    @property
    def lightning_module(self) -> nn.Module | None: ...

    @property
    def global_rank(self) -> int: ...


def to_cpu(obj: Any) -> Any:
    """``obj`` with every tensor detached and on the CPU (dicts, lists and tuples followed)."""
    if isinstance(obj, Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_cpu(v) for v in obj)
    return obj


def gather_algorithm_state(strategy: StrategyLike) -> dict[str, Any]:
    """The algorithm's entry of a checkpoint; every rank's own state gathered to rank 0.

    A matched collective: call it on every rank. Per-rank communication state (error-feedback
    residuals) and module buffers (statistics that are not averaged) travel with the algorithm's.
    """
    algorithm, module = strategy.algorithm, strategy.lightning_module
    assert algorithm is not None and module is not None
    local = {
        "algorithm": to_cpu(algorithm.local_state_dict()),
        "comm": to_cpu(strategy.communicator.state_dict()) if strategy.communicator is not None else {},
        "buffers": to_cpu(rank_buffers(module)),
    }
    world = dist.get_world_size() if dist.is_initialized() else 1
    if world > 1:
        gathered: list[Any] | None = [None] * world if strategy.global_rank == 0 else None
        dist.gather_object(local, gathered, dst=0)
    else:
        gathered = [local]
    return {
        "strategy": strategy.strategy_name,
        "world_size": world,
        CONFIG_KEY: algorithm_config(strategy),
        "state": to_cpu(algorithm.state_dict()),
        "local_states": None if gathered is None else [g["algorithm"] for g in gathered],
        "comm_states": None if gathered is None else [g["comm"] for g in gathered],
        BUFFERS_KEY: None if gathered is None else [g["buffers"] for g in gathered],
    }


# ------------------------------------------------------------------ the algorithm's arguments


def algorithm_config(strategy: StrategyLike) -> dict[str, Any]:
    """The arguments that define the strategy's updates: its config dataclass plus the communication."""
    config: dict[str, Any] = {}
    own = getattr(strategy, "config", None)
    if dataclasses.is_dataclass(own) and not isinstance(own, type):
        config.update(dataclasses.asdict(own))
    config["compression"] = strategy.compression
    if strategy.compression != "none":  # error_feedback is ignored without compression
        config["error_feedback"] = strategy.error_feedback
    if strategy.compression in QUANTIZED_BITS:  # and block_size without int8/int4
        config["block_size"] = strategy.block_size
    hook = strategy.comm_hook
    config["comm_hook"] = None if hook is None else f"{type(hook).__module__}.{type(hook).__qualname__}"
    return config


def config_mismatch(saved: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    """``"name=old -> name=new"`` for every argument both know that changed (trajectory-neutral ones aside)."""
    return [
        f"{name}={saved[name]!r} (checkpoint) vs {name}={current[name]!r} (this run)"
        for name in sorted(set(saved) & set(current))
        if name not in TRAJECTORY_NEUTRAL_ARGS and saved[name] != current[name]
    ]


# ------------------------------------------------------------------ loading on every rank


def check_loaded(strategy: StrategyLike, checkpoint: Mapping[str, Any], own_key: str, path: _PATH) -> None:
    """Every check of a loaded checkpoint: checksum, strategy, and (when fitting) the arguments."""
    verify_checksum(checkpoint, own_key, path)
    saved = checkpoint.get(own_key)
    if saved is None:
        return
    if saved["strategy"] != strategy.strategy_name:
        raise ValueError(
            f"the checkpoint {path} holds the state of strategy {saved['strategy']!r}; it cannot "
            f"resume with {strategy.strategy_name!r}. Resume with strategy={saved['strategy']!r}, or load only "
            "the weights (LightningModule.load_from_checkpoint) to start a new run."
        )
    trainer = getattr(strategy.lightning_module, "_trainer", None)
    fitting = trainer is not None and trainer.state.fn == TrainerFn.FITTING
    changed = config_mismatch(saved.get(CONFIG_KEY) or {}, algorithm_config(strategy))
    if fitting and changed:
        raise ValueError(
            f"the checkpoint {path} was written with other {strategy.strategy_name!r} arguments: "
            f"{'; '.join(changed)}. Resuming would change the algorithm in the middle of its trajectory. "
            "Resume with the checkpoint's arguments, or start a new run from its weights "
            "(LightningModule.load_from_checkpoint)."
        )


def agree_on_load(
    load: Callable[[], dict[str, Any]], check: Callable[[dict[str, Any]], None], path: _PATH
) -> dict[str, Any]:
    """``load()`` then ``check(loaded)`` on this rank; if any rank failed, every rank raises.

    A failure to read is re-raised as :class:`CheckpointError` naming the file and an earlier
    checkpoint (``FileNotFoundError`` keeps its type). Ranks that succeeded raise
    :class:`CheckpointError` naming the rank that failed and its message.
    """
    error: BaseException | None = None
    checkpoint: dict[str, Any] = {}
    try:
        checkpoint = load()
    except FileNotFoundError as e:
        error = e
    except Exception as e:  # torch's loader raises OSError, EOFError, RuntimeError, UnpicklingError...
        error = CheckpointError(
            f"cannot read the checkpoint {path} ({type(e).__name__}{f': {e}' if str(e) else ''}); the file is "
            f"empty, truncated or not a checkpoint. {previous_checkpoint_hint(path)}"
        )
        error.__cause__ = e
    if error is None:
        try:
            check(checkpoint)
        except (CheckpointError, ValueError) as e:
            error = e
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        outcomes: list[str | None] = [None] * dist.get_world_size()
        dist.all_gather_object(outcomes, None if error is None else f"{type(error).__name__}: {error}")
        failed = [(rank, message) for rank, message in enumerate(outcomes) if message is not None]
        if error is None and failed:
            rank, message = failed[0]
            raise CheckpointError(f"rank {rank} could not resume from the checkpoint {path}: {message}")
    if error is not None:
        raise error
    return checkpoint


# ------------------------------------------------------------------ per-rank buffers


def rank_buffers(module: nn.Module) -> dict[str, Tensor]:
    """This rank's persistent buffers by ``state_dict`` name (non-persistent ones are rebuilt by the module)."""
    persistent = set(nn.Module.state_dict(module, keep_vars=True))
    return {name: b.detach().clone() for name, b in module.named_buffers() if name in persistent}


def restore_rank_buffers(module: nn.Module, saved: Mapping[str, Tensor]) -> None:
    with torch.no_grad():
        for name, b in module.named_buffers():
            if name in saved:
                b.copy_(saved[name])


def consensus_buffers(saved: Sequence[Mapping[str, Tensor]]) -> dict[str, Tensor]:
    """Buffers for a different number of ranks: the mean of the saved ranks' float buffers, rank 0's others."""
    out: dict[str, Tensor] = {}
    for name, first in saved[0].items():
        if first.is_floating_point() and all(name in s for s in saved):
            out[name] = sum((s[name].double() for s in saved), torch.zeros_like(first, dtype=torch.float64))
            out[name] = (out[name] / len(saved)).to(first.dtype)
        else:
            out[name] = first
    return out


# ------------------------------------------------------------------ resuming


def restore(strategy: StrategyLike, saved: Mapping[str, Any]) -> None:
    """Restore the algorithm, communication and buffers of this rank at the start of training."""
    algorithm = strategy.algorithm
    module = strategy.lightning_module
    assert algorithm is not None and module is not None
    world = dist.get_world_size() if dist.is_initialized() else 1
    buffers = saved.get(BUFFERS_KEY)
    if saved["world_size"] != world:
        restore_resized(strategy, saved, world)
        return
    rank = strategy.global_rank
    if buffers is not None:
        restore_rank_buffers(module, buffers[rank])
    algorithm.load_state_dict(saved["state"], saved["local_states"][rank])
    comm_states = saved.get("comm_states")
    if comm_states is not None and strategy.communicator is not None:
        strategy.communicator.load_state_dict(comm_states[rank])


def restore_resized(strategy: StrategyLike, saved: Mapping[str, Any], world: int) -> None:
    """Resume on ``world`` ranks from a checkpoint of ``saved["world_size"]`` ranks, by the algorithm's rule."""
    algorithm = strategy.algorithm
    module = strategy.lightning_module
    assert algorithm is not None and module is not None
    old = saved["world_size"]
    buffers = saved.get(BUFFERS_KEY)
    if buffers is not None:
        # First: an algorithm that averages float buffers with its model sets them again, to the same mean.
        restore_rank_buffers(module, consensus_buffers(buffers))
    try:
        algorithm.load_resized_state_dict(saved["state"], saved["local_states"], rank=strategy.global_rank)
    except NotImplementedError:
        raise ValueError(
            f"the checkpoint was written by {old} ranks but this run has {world}, and {strategy.strategy_name!r} "
            "has no rule to redistribute its per-rank state (see docs/index.md#checkpoints). Resume with "
            f"{old} devices, or start a new run from the checkpoint's weights (LightningModule.load_from_checkpoint)."
        ) from None
    rank_zero_warn(
        f"Resuming {strategy.strategy_name!r} on {world} ranks from a checkpoint of {old} ranks: every rank starts "
        "from the saved state by the strategy's resize rule (docs/algorithms/"
        f'{strategy.strategy_name}.md, "another number of ranks"), so the trajectory differs from an '
        f"uninterrupted run on {old} ranks."
    )
