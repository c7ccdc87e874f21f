"""Constants and pure logic of the phase (unit-tested; no processes)."""

from __future__ import annotations

import contextlib
import itertools
import os
import statistics
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Sequence


MODEL: dict[str, int] = {"d_model": 192, "nhead": 4, "num_layers": 3, "seq_len": 128}
"""The language model's size (keep equal to the LM phase's to compare the two)."""


NAME = "peer"
BATCH = 16
"""Windows per rank and step."""
SYNC_EVERY = 8
INNER_LR = 1e-3
OUTER = {"lr": 0.7, "momentum": 0.9, "nesterov": True}
VAL_WINDOWS = 32
IMPLS = ("ours", "torchft")
LIGHTHOUSE_PORT = 29400
"""In rank 0's namespace, outside the Runner's 29500..29999 and the offsets below."""
# Ports the worker derives from MASTER_PORT (the Runner's ports are 29500..29999, or free ones on loopback).
BARRIER_PORT_OFFSET = 1000
STORE_PORT_OFFSET = 2000  # + rank: each replica group's own TCPStore
MANAGER_PORT_OFFSET = 3000  # + rank: each replica group's ManagerServer


def loss_at(curve: Sequence[Sequence[float]], t: float) -> float:
    """The loss of a ``[(time, loss), ...]`` curve (times increasing) at time ``t``, linearly interpolated.

    Before the first point: the first loss; after the last: the last loss.
    """
    if not curve:
        raise ValueError("empty curve")
    if t <= curve[0][0]:
        return float(curve[0][1])
    for (t0, l0), (t1, l1) in itertools.pairwise(curve):
        if t <= t1:
            return float(l0 if t1 == t0 else l0 + (l1 - l0) * (t - t0) / (t1 - t0))
    return float(curve[-1][1])


def spread(values: Sequence[float]) -> dict[str, float]:
    """Median, min and max of the repeats."""
    if not values:
        raise ValueError("no values")
    return {"median": float(statistics.median(values)), "min": float(min(values)), "max": float(max(values))}


def parse_task_stat(text: str) -> tuple[str, float]:
    """``(thread name, user + system CPU ticks)`` of one ``/proc/<pid>/task/<tid>/stat`` line."""
    name = text[text.index("(") + 1 : text.rindex(")")]
    fields = text[text.rindex(")") + 2 :].split()
    return name, float(fields[11]) + float(fields[12])  # utime, stime: fields 14 and 15 of proc(5)


def cpu_by_thread(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    """CPU seconds per thread name between two :func:`thread_ticks` snapshots (threads that ran only)."""
    ticks = os.sysconf("SC_CLK_TCK")
    out = {name: (after[name] - before.get(name, 0.0)) / ticks for name in after}
    return {name: sec for name, sec in sorted(out.items(), key=lambda kv: -kv[1]) if sec > 0}


def thread_ticks() -> dict[str, float]:
    """CPU ticks of this process per thread name (threads of the same name summed)."""
    out: dict[str, float] = {}
    for task in Path("/proc/self/task").iterdir():
        with contextlib.suppress(OSError, ValueError):
            name, ticks = parse_task_stat((task / "stat").read_text())
            out[name] = out.get(name, 0.0) + ticks
    return out


def schedule(repeats: int) -> list[tuple[int, str]]:
    """``(repeat, impl)`` in interleaved order: ours, torchft, ours, torchft, ... (repeat r uses seed r)."""
    return [(r, impl) for r in range(repeats) for impl in IMPLS]


def summarise(runs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Per implementation: samples/s and wire MB/step (median, min-max), and the losses at equal wall time.

    The equal wall time is the shortest run's training time, so every curve reaches it. Failed runs
    (``"error"`` in the run) are only listed.
    """
    failed = [run for run in runs if "error" in run]
    runs = [run for run in runs if "error" not in run]
    out: dict[str, Any] = {"failed": [f"{run['impl']} seed {run['seed']}" for run in failed]}
    if not runs:
        return out
    t_equal = min(run["val_curve"][-1][0] for run in runs)
    out["equal_wall_time_s"] = t_equal
    for impl in IMPLS:
        mine = [run for run in runs if run["impl"] == impl]
        if not mine:
            continue
        out[impl] = {
            "samples_per_s": spread([run["samples_per_s"] for run in mine]),
            "wire_mb_per_step": spread([run["wire_mb_per_step"] for run in mine]),
            "val_loss_at_equal_time": spread([loss_at(run["val_curve"], t_equal) for run in mine]),
            "final_val_loss": spread([run["val_curve"][-1][1] for run in mine]),
            "seconds": spread([run["val_curve"][-1][0] for run in mine]),
        }
        if all("local_step_s" in run for run in mine):
            out[impl]["local_step_s"] = spread([run["local_step_s"] for run in mine])
            out[impl]["sync_step_s"] = spread([run["sync_step_s"] for run in mine])
            names = {name for run in mine for name in run["cpu_s_by_thread"]}
            per_step = {
                name: statistics.median(run["cpu_s_by_thread"].get(name, 0.0) / run["steady_steps"] for run in mine)
                for name in names
            }
            out[impl]["cpu_ms_per_step_by_thread"] = {
                name: round(1e3 * sec, 2) for name, sec in sorted(per_step.items(), key=lambda kv: -kv[1]) if sec > 0
            }
    if "ours" in out and "torchft" in out:
        out["throughput_ratio"] = out["ours"]["samples_per_s"]["median"] / out["torchft"]["samples_per_s"]["median"]
    return out
