"""Least-squares fits of the model's parameters: a link's latency and bandwidth, the compute line, kappa."""

from __future__ import annotations

import statistics
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Sequence


def fit_link(points: Sequence[tuple[float, int, float]]) -> dict[str, float]:
    """Least squares of ``T = 2(N-1) alpha + 2(N-1)/N * bytes / beta`` over ``(bytes, N, seconds)`` points.

    Linear in ``(alpha, 1/beta)``; a negative ``alpha`` (noise at small sizes) is clamped to 0 and ``1/beta``
    refitted alone. Returns ``latency_s``, ``bytes_per_s`` and the fit's median relative error.
    """
    rows = [(2.0 * (n - 1), 2.0 * (n - 1) / n * b, t) for b, n, t in points if n > 1]
    if len(rows) < 2:
        raise ValueError("fitting a link needs at least 2 all-reduce timings with N > 1")
    sxx = sum(x * x for x, _, _ in rows)
    syy = sum(y * y for _, y, _ in rows)
    sxy = sum(x * y for x, y, _ in rows)
    sxt = sum(x * t for x, _, t in rows)
    syt = sum(y * t for _, y, t in rows)
    det = sxx * syy - sxy * sxy
    alpha = inv_beta = 0.0
    if det > 1e-12 * sxx * syy:  # all points at one N and one size cannot separate alpha from beta
        alpha, inv_beta = (syy * sxt - sxy * syt) / det, (sxx * syt - sxy * sxt) / det
    if alpha < 0 or inv_beta <= 0:
        alpha = 0.0
        inv_beta = syt / syy
    if inv_beta <= 0:
        raise ValueError("all-reduce timings do not grow with the message size: cannot fit a bandwidth")
    errors = [abs((alpha * x + inv_beta * y) / t - 1) for x, y, t in rows if t > 0]
    return {"latency_s": alpha, "bytes_per_s": 1.0 / inv_beta, "median_rel_error": statistics.median(errors)}


def fit_line(points: Sequence[tuple[float, float]]) -> dict[str, float]:
    """Least-squares line ``t = a + b B`` through ``(B, t)`` points (the compute-only calibration)."""
    if len({b for b, _ in points}) < 2:
        raise ValueError("a line needs points at 2 or more batch sizes")
    n = len(points)
    mb = sum(b for b, _ in points) / n
    mt = sum(t for _, t in points) / n
    slope = sum((b - mb) * (t - mt) for b, t in points) / sum((b - mb) ** 2 for b, _ in points)
    return {"a": mt - slope * mb, "b": slope}


KAPPA_GRID = tuple(i * 0.25e-9 for i in range(41))
"""kappa candidates: 0 to 10 ms of CPU per MB all-reduced."""


def fit_kappa(cells: Sequence[tuple[float, float, float]]) -> float:
    """``kappa`` minimising the median |relative error| over ``(predicted without kappa, bytes, measured)`` cells.

    A grid in steps of 0.25 ms/MB, ties to the smaller value; 0 without cells.
    """
    if not cells:
        return 0.0
    return min(
        KAPPA_GRID, key=lambda k: (round(statistics.median(abs((p + k * b) / m - 1) for p, b, m in cells), 4), k)
    )
