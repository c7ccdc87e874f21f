"""``DelayedLightningCLI``: LightningCLI whose error for a bad strategy argument names the argument first.

LightningCLI builds ``trainer.strategy`` through jsonargparse, and ``Trainer(strategy=...)`` is typed
``str | Strategy``. When the strategy's ``__init__`` refuses a value, jsonargparse reports the
failure of *both* union members: a traceback of the ``str`` attempt, a dump of every argument of
the strategy, and our one-line refusal somewhere in the middle. The exception object itself is
not kept (jsonargparse formats it into its message), so this CLI rebuilds the strategy from the
parsed ``class_path``/``init_args`` to get the refusal back, and raises it alone::

    ValueError: trainer.strategy (lightning_delayed.ODSGDStrategy): local_lr must be ... got -1.0

Anything else, and any refusal it cannot reproduce, is re-raised unchanged. Needs the ``cli``
extra (jsonargparse).
"""

from __future__ import annotations

import importlib
from typing import Any

from lightning.pytorch.cli import LightningCLI
from typing_extensions import override


def _plain(value: Any) -> Any:
    as_dict = getattr(value, "as_dict", None)
    return as_dict() if callable(as_dict) else value


def strategy_refusal(config: Any) -> Exception | None:
    """Rebuild ``trainer.strategy`` from a parsed config; return its construction error, if any.

    Returns ``None`` when the strategy is given by name, when an argument is itself a class to be
    built (a ``comm_hook`` from YAML: rebuilding it here would not be the CLI's construction), or
    when the strategy builds without error.
    """
    trainer: Any = config.get("trainer") if hasattr(config, "get") else None
    strategy: Any = trainer.get("strategy") if hasattr(trainer, "get") else None
    class_path = getattr(strategy, "class_path", None)
    if not isinstance(class_path, str) or "." not in class_path:
        return None
    init_args = _plain(getattr(strategy, "init_args", None)) or {}
    if any(isinstance(v, dict) and "class_path" in v for v in init_args.values()):
        return None
    module, _, name = class_path.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError):
        return None
    try:
        cls(**init_args)
    except (ValueError, TypeError) as error:
        return error
    return None


class DelayedLightningCLI(LightningCLI):
    """``LightningCLI`` that reports a refused strategy argument as the first line of the error.

    A drop-in replacement: ``DelayedLightningCLI(MyModel, MyData)`` (see ``examples/cli.py``).
    """

    @override
    def instantiate_classes(self) -> None:
        try:
            super().instantiate_classes()
        except (ValueError, TypeError):
            config = self.config.get(str(self.subcommand)) if self.subcommand is not None else self.config
            refusal = strategy_refusal(config)
            if refusal is None:
                raise
            strategy = config["trainer"]["strategy"]
            # ``from None``: jsonargparse's report (kept as __context__ for a debugger) buries the line.
            message = f"trainer.strategy ({strategy.class_path}): {refusal}"
            try:
                surfaced = type(refusal)(message)
            except Exception:  # an error type whose constructor takes other arguments
                surfaced = ValueError(message)
            raise surfaced from None
