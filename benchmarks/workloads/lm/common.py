"""Constants and pure logic of the phase (unit-tested; no processes)."""

from __future__ import annotations

import statistics
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Sequence


NAME = "lm"
STRATEGIES = (
    "ssgd",
    "ddp",
    "odsgd",
    "cocodsgd",
    "overlap_local_sgd",
    "diloco",
    "streaming_diloco",
    "post_local_sgd",
)
DILOCO_SYNC_EVERY = 10
"""Inner steps between two outer steps of diloco and streaming_diloco (their default 50 is too long a run)."""
SYNC_EVERY = 4
"""Period of the other periodic strategies (cocodsgd, overlap_local_sgd, post-local SGD), as in the other phases."""
MODEL = {"d_model": 192, "nhead": 4, "num_layers": 3, "seq_len": 128}
LR = 3e-3
VAL_WINDOWS = 32


def sync_every(name: str) -> int:
    """The period :func:`benchmarks.base.baselines.build_strategy` gets for ``name`` in this phase."""
    return DILOCO_SYNC_EVERY if name in ("diloco", "streaming_diloco") else SYNC_EVERY


def time_to_target(points: Sequence[dict[str, float]], target: float) -> float | None:
    """Training wall time of the first validation with ``loss <= target``; None if none gets there."""
    for p in points:
        if p["loss"] <= target:
            return p["wall_s"]
    return None


def schedule(names: Sequence[str], seeds: Sequence[int], interleave: bool) -> list[tuple[str, list[int]]]:
    """The process pairs to start, in order: one per strategy with every seed, or seed-major pairs of one seed."""
    if interleave:  # seed 0 of every strategy, then seed 1, ...: machine noise spreads over all strategies
        return [(n, [s]) for s in seeds for n in names]
    return [(n, list(seeds)) for n in names]


def spread(values: Sequence[float]) -> dict[str, float] | None:
    """Median, min and max of ``values`` (None when empty)."""
    if not values:
        return None
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def summarize(entry: dict[str, Any], target: float) -> dict[str, Any]:
    """One strategy's table row: time to ``target`` and final loss over its seeds (rank 0's clock)."""
    runs = entry.get("runs", [])
    times, finals, not_reached = [], [], []
    for run in runs:
        if run["points"]:
            finals.append(run["points"][-1]["loss"])
        t = time_to_target(run["points"], target)
        if t is None:
            not_reached.append(
                {"seed": run["seed"], "final_loss": run["points"][-1]["loss"] if run["points"] else None}
            )
        else:
            times.append(t)
    return {
        "strategy": entry["strategy"],
        "seeds": len(runs),
        "reached": len(times),
        "time_to_target_s": spread(times),
        "not_reached": not_reached,
        "final_loss": spread(finals),
        "steps": spread([float(r["steps"]) for r in runs]),
        "step_s": spread([r["wall_s"] / r["steps"] for r in runs if r["steps"]]),
    }
