"""Rank-side code of the worker-group strategy tests (run by tests.helpers.launch.run_ranks)."""

from __future__ import annotations

from typing import Any

from lightning_delayed import DiLoCoStrategy, LocalSGDStrategy
from tests.helpers.models import RegressionModule, trainer


def indivisible(group_size: Any) -> str:
    """Fit with a group_size that does not divide the world size: every rank must raise, none may hang."""
    for cls in (LocalSGDStrategy, DiLoCoStrategy):
        try:
            trainer(cls(group_size=group_size), max_epochs=1).fit(RegressionModule(n_batches=2))
        except ValueError as e:
            message = str(e)
        else:
            return f"{cls.__name__}: no error"
    return message
