"""Constants and pure logic of the phase (unit-tested; no processes)."""

from __future__ import annotations

import statistics
from typing import TYPE_CHECKING, Any

from benchmarks.base.free_hook import FreeHook

if TYPE_CHECKING:
    from collections.abc import Sequence


NAME = "own_cost"
TARGET = 0.05
"""Own cost target: at most 5 % of the compute-only step."""
BOUND = "compute_only"
PAIR_TIMEOUT_S = 1800.0
NUM_CLASSES = 10


def cell_stats(values: Sequence[float]) -> dict[str, float]:
    """Median, min and max of one cell's per-round values."""
    if not values:
        raise ValueError("a cell needs at least one value")
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def bracketed(fits: Sequence[tuple[str, float]], bound: str = BOUND) -> dict[str, tuple[float, float]]:
    """One round's fits in run order -> ``{name: (value, bound value)}``.

    A strategy's bound value is the mean of the ``bound`` fits just before and just after it (the
    one there is at either end); ``bound`` itself maps to the mean of all its fits of the round.
    """
    values = [v for n, v in fits if n == bound]
    if not values:
        return {}
    out: dict[str, tuple[float, float]] = {bound: (statistics.fmean(values),) * 2}
    for j, (name, value) in enumerate(fits):
        if name == bound:
            continue
        before = next((v for n, v in reversed(fits[:j]) if n == bound), None)
        after = next((v for n, v in fits[j + 1 :] if n == bound), None)
        out[name] = (value, statistics.fmean(v for v in (before, after) if v is not None))
    return out


def own_costs(rounds: Sequence[dict[str, tuple[float, float]]], name: str) -> list[float]:
    """``step(name) / step(bound beside it) - 1`` for every round that measured ``name`` (:func:`bracketed`)."""
    return [r[name][0] / r[name][1] - 1 for r in rounds if name in r and r[name][1] > 0]


def summarise(
    rounds: Sequence[dict[str, tuple[float, float]]], names: Sequence[str], target: float = TARGET
) -> dict[str, Any]:
    """Per strategy: step times and own cost (median and min-max over rounds), and whether the target is met.

    ``rounds``: one :func:`bracketed` dict per round.
    """
    cells: dict[str, Any] = {}
    for name in names:
        steps = [r[name][0] for r in rounds if name in r]
        if not steps:
            continue
        cell: dict[str, Any] = {"step_s": cell_stats(steps)}
        if name != BOUND:
            cell["bound_s"] = cell_stats([r[name][1] for r in rounds if name in r])
            costs = own_costs(rounds, name)
            if costs:
                cell["own_cost"] = cell_stats(costs)
                cell["target_met"] = cell["own_cost"]["median"] <= target
        cells[name] = cell
    return cells


def mean_over_ranks(per_rank: Sequence[dict[str, Any]], cpu: bool = False) -> list[list[tuple[str, float]]]:
    """The rounds of every rank merged, fit by fit in run order: each fit's step time (``cpu``: CPU
    seconds per step of all its threads) is the mean over the ranks."""

    def value(fit: dict[str, Any]) -> float:
        return float(sum(fit["cpu_s_per_step"].values())) if cpu else float(fit["step_s"])

    merged: list[list[tuple[str, float]]] = []
    for round_idx, fits in enumerate(per_rank[0]["rounds"]):
        merged.append(
            [
                (fit["name"], statistics.fmean(value(r["rounds"][round_idx][j]) for r in per_rank))
                for j, fit in enumerate(fits)
            ]
        )
    return merged


def window_step_s(ends: Sequence[float], window: int) -> float:
    """Median over consecutive windows of ``window`` steps of the window's mean step time.

    ``ends``: the clock at the start of the timed steps, then at the end of each timed step.
    """
    steps = len(ends) - 1
    if steps < window or steps % window:
        raise ValueError(f"the timed steps ({steps}) must be a positive multiple of the window ({window})")
    return statistics.median((ends[i + window] - ends[i]) / window for i in range(0, steps, window))


def hooked_strategies() -> list[str]:
    """Our strategies that take a ``comm_hook`` (those whose constructor accepts a :class:`FreeHook`)."""
    from benchmarks.base.baselines import our_strategies

    names = []
    for name, cls in our_strategies().items():
        try:
            cls(comm_hook=FreeHook())
        except (TypeError, ValueError):
            continue
        names.append(name)
    return names
