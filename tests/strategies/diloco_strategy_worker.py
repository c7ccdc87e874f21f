"""Rank-side code of tests/strategies/test_diloco_strategy.py."""

from __future__ import annotations

from lightning_delayed import StreamingDiLoCoStrategy
from tests.helpers.models import RegressionModule, trainer


def refused_on_every_rank() -> str:
    """Fit a 2-layer model with 3 fragments: every rank must raise (a refusal on one rank only would hang)."""
    t = trainer(StreamingDiLoCoStrategy(sync_every=3, num_fragments=3), max_steps=2)
    try:
        t.fit(RegressionModule())
    except ValueError as e:
        return str(e)
    return "not refused"
