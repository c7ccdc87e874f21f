"""Construction and set-up checks shared by every strategy.

* :func:`refuse_unknown_keywords`: a misspelled keyword (``local_lr`` written ``locl_lr``) is
  refused at construction, with the closest valid name; the valid names are read from the
  signatures of the strategy classes, ``DDPStrategy`` and ``DistributedDataParallel``, never kept
  by hand. :func:`unknown_keyword_message` is that refusal's text, also used by LightningCLI.
* :func:`check_timeout`: ``timeout`` is a ``datetime.timedelta`` (or ``None``).
* :func:`refuse_on_every_rank`: a set-up check that fails on one rank fails on every rank, with
  the same message, before any rank enters a collective the failing rank will never join.
"""

from __future__ import annotations

import builtins
import difflib
import inspect
import numbers
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import torch.distributed as dist
from lightning.pytorch.strategies import DDPStrategy
from torch.nn.parallel import DistributedDataParallel

from lightning_delayed.comm.buckets import communication_errors

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

# DistributedDataParallel arguments that Lightning itself passes (DDPStrategy._setup_model).
_SET_BY_LIGHTNING = {
    "module": "the LightningModule is the module DDP wraps",
    "device_ids": "Lightning sets it from Trainer(devices=...)",
}


def _keyword_names(fn: Callable[..., Any]) -> set[str]:
    params = inspect.signature(fn).parameters.values()
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return {p.name for p in params if p.kind in kinds and p.name != "self"}


def ddp_keywords() -> set[str]:
    """Keyword arguments ``DDPStrategy.__init__`` and ``DistributedDataParallel.__init__`` accept."""
    names = _keyword_names(DDPStrategy.__init__) | _keyword_names(DistributedDataParallel.__init__)
    return names - set(_SET_BY_LIGHTNING)


def strategy_keywords(cls: type) -> set[str]:
    """Every keyword a strategy class accepts: its own, its bases' down to ``DDPStrategy``, and DDP's."""
    names = ddp_keywords()
    for klass in cls.__mro__:
        if issubclass(klass, DDPStrategy) and "__init__" in vars(klass):
            names |= _keyword_names(vars(klass)["__init__"])
    return names


def unknown_keyword_message(cls: type, name: str) -> str:
    """Why ``cls`` refuses the keyword ``name``, with the closest valid name when there is one.

    The one text for both ways of building a strategy: ``cls(name=...)`` in Python
    (:func:`refuse_unknown_keywords`) and ``init_args: {name: ...}`` under LightningCLI
    (``lightning_delayed.cli``), so both suggest the same name.
    """
    if name in _SET_BY_LIGHTNING:
        return f"{cls.__name__} does not take {name!r}: {_SET_BY_LIGHTNING[name]}"
    close = difflib.get_close_matches(name, sorted(strategy_keywords(cls)), n=1, cutoff=0.6)
    hint = f"; did you mean {close[0]!r}?" if close else "."
    return (
        f"{cls.__name__} got an unexpected keyword argument {name!r}{hint} It accepts its own arguments, "
        "the DelayedStrategy arguments (see docs/extending.md) and the keyword arguments of "
        "torch.nn.parallel.DistributedDataParallel."
    )


def keyword_annotation(cls: type, name: str) -> str | None:
    """The annotation of keyword ``name`` where ``cls`` (or a base, or DDP) declares it, as written there.

    ``None`` when no signature declares it or declares it without an annotation.
    """
    functions: list[Callable[..., Any]] = [
        vars(klass)["__init__"] for klass in cls.__mro__ if issubclass(klass, DDPStrategy) and "__init__" in vars(klass)
    ]
    for fn in [*functions, DistributedDataParallel.__init__]:
        parameter = inspect.signature(fn).parameters.get(name)
        if parameter is None or parameter.kind not in (
            inspect.Parameter.POSITIONAL_OR_KEYWORD,
            inspect.Parameter.KEYWORD_ONLY,
        ):
            continue
        if parameter.annotation is inspect.Parameter.empty:
            return None
        annotation = parameter.annotation
        # a string under ``from __future__ import annotations``: shown as the source spells it
        return annotation if isinstance(annotation, str) else inspect.formatannotation(annotation)
    return None


def refuse_unknown_keywords(cls: type, kwargs: Iterable[str]) -> None:
    """Raise ``TypeError`` for the first keyword in ``kwargs`` that ``cls`` does not accept.

    ``kwargs`` are the keywords left after ``cls`` and its bases took their own arguments: what
    would otherwise reach ``DistributedDataParallel(...)`` and fail only after the process group
    is up (or, for the parameter-server strategies, be silently ignored). The message is
    :func:`unknown_keyword_message`'s.
    """
    accepted = ddp_keywords()
    for name in sorted(kwargs):
        if name not in accepted:
            raise TypeError(unknown_keyword_message(cls, name))


def check_timeout(timeout: object) -> None:
    """``timeout`` must be ``None`` or a positive ``datetime.timedelta``.

    A bare number is refused rather than read as seconds: DDPStrategy and torch take a timedelta,
    and ``30`` could mean seconds or minutes. LightningCLI users write ``timeout: "0:00:30"``
    (jsonargparse parses ``"h:m:s"`` into a timedelta).
    """
    if timeout is None:
        return
    if isinstance(timeout, timedelta):
        if timeout.total_seconds() <= 0:
            raise ValueError(f"timeout must be a positive datetime.timedelta, got {timeout!r}")
        return
    if isinstance(timeout, numbers.Real) and not isinstance(timeout, bool):
        raise TypeError(
            f"timeout must be a datetime.timedelta, got the number {timeout!r}: pass "
            f'timeout=timedelta(seconds={timeout!r}) (from datetime import timedelta; in YAML: "h:m:s")'
        )
    raise TypeError(f"timeout must be a datetime.timedelta or None, got {timeout!r}")


def refuse_on_every_rank(check: Callable[[], None], what: str) -> None:
    """Run ``check`` on this rank; if it raises on any rank, raise the same error on every rank.

    A refusal on one rank alone is a hang or a misleading error: that rank leaves, and the others
    go on into the next collective (DDP's parameter broadcast, RPC start-up) and wait for it until
    the timeout, or fail with "Connection closed by peer". So every rank runs its checks, then all
    ranks exchange their outcome with one ``all_gather_object`` on the default group (bounded by
    the strategy's ``timeout``) and every rank raises the first refusing rank's error: a builtin
    exception type is kept, any other becomes a ``RuntimeError`` naming it.

    Args:
        check: the checks, raising on refusal.
        what: the phase, for the message (``"set-up"``).
    """
    error: Exception | None = None
    try:
        check()
    except Exception as e:  # every refusal, and any bug in a check: no rank may be left waiting
        error = e
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        if error is not None:
            raise error
        return
    mine = None if error is None else (type(error).__module__, type(error).__qualname__, str(error))
    outcomes: list[tuple[str, str, str] | None] = [None] * dist.get_world_size()
    with communication_errors(f"{what} checks' outcomes", operation="all-gather"):
        dist.all_gather_object(outcomes, mine)
    refused = [(rank, o) for rank, o in enumerate(outcomes) if o is not None]
    if not refused:
        return
    module, qualname, message = refused[0][1]
    ranks = ", ".join(str(rank) for rank, _ in refused)
    text = f"{message} [{what} refused on rank {ranks}; every rank stops with this error]"
    raise _same_type(module, qualname, text) from error


def _same_type(module: str, qualname: str, text: str) -> Exception:
    cls = getattr(builtins, qualname, None) if module == "builtins" else None
    if isinstance(cls, type) and issubclass(cls, Exception):
        try:
            return cls(text)
        except TypeError:  # a builtin whose constructor takes other arguments (UnicodeDecodeError)
            pass
    return RuntimeError(f"{module}.{qualname}: {text}")
