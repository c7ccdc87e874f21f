"""Per-thread CPU time of one process, from ``/proc/<pid>/task/*/stat`` (Linux only).

Two snapshots around a timed window (taken outside it, so the window pays nothing) give each
thread's user + system CPU seconds inside it; :func:`split` groups them into the main thread
(forward, backward, optimizer and the algorithm's own work), gloo's threads (the collectives in
flight) and the rest (autograd, the TCP store, ...).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Mapping

Snapshot = dict[int, tuple[str, int]]
"""Thread id -> (thread name, utime + stime in clock ticks)."""


def parse_stat(text: str) -> tuple[str, int]:
    """``(name, utime + stime)`` of one ``/proc/.../stat`` line (fields 14 and 15, in clock ticks).

    The name sits in parentheses and may itself contain spaces and parentheses, so the fields are
    counted from the last ``)``.
    """
    open_, close = text.index("("), text.rindex(")")
    fields = text[close + 2 :].split()
    # fields[0] is field 3 (state); utime and stime are fields 14 and 15.
    return text[open_ + 1 : close], int(fields[11]) + int(fields[12])


def snapshot(pid: int | None = None) -> Snapshot:
    """Every live thread of ``pid`` (default: this process): name and CPU ticks so far."""
    root = Path(f"/proc/{pid or os.getpid()}/task")
    out: Snapshot = {}
    for task in root.iterdir():
        try:
            out[int(task.name)] = parse_stat((task / "stat").read_text())
        except (OSError, ValueError):  # the thread ended between listing and reading
            continue
    return out


def group_of(tid: int, name: str, pid: int) -> str:
    """``main`` (the process's first thread), ``gloo`` (gloo's loops and work threads) or ``other``."""
    if tid == pid:
        return "main"
    if "gloo" in name.lower():
        return "gloo"
    return "other"


def split(
    before: Mapping[int, tuple[str, int]], after: Mapping[int, tuple[str, int]], pid: int, hz: float
) -> dict[str, float]:
    """CPU seconds per group spent between two snapshots (threads born in between count from 0)."""
    totals = {"main": 0.0, "gloo": 0.0, "other": 0.0}
    for tid, (name, ticks) in after.items():
        start = before.get(tid, (name, 0))[1]
        totals[group_of(tid, name, pid)] += max(ticks - start, 0) / hz
    return totals


def clock_ticks() -> float:
    """Clock ticks per second of ``/proc`` CPU times (``SC_CLK_TCK``, almost always 100)."""
    return float(os.sysconf("SC_CLK_TCK"))
