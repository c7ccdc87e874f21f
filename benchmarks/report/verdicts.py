"""The verdicts of the page: the issue's targets, and when not to use a strategy, judged on this run's cells."""

from __future__ import annotations

from typing import Any

from benchmarks.base.baselines import OVERLAPPING_EXCLUDED, lock_step_strategies, our_strategies
from benchmarks.report.metrics import closest_setting, find_cell, settings

LOCK_STEP_TARGET = 0.95


def targets(rows: list[dict[str, Any]], acc: list[dict[str, Any]]) -> list[tuple[str, str, str]]:
    """(target, measured, verdict) lines of the issue's targets."""
    ours = list(our_strategies())
    overlapping = [n for n in ours if n not in OVERLAPPING_EXCLUDED]
    sets = settings(rows)
    lines = []
    rows = [r for r in rows if not r.get("noise")]  # noise is not a result
    effs = [r for r in rows if r["strategy"] in overlapping and r.get("x_limit") is not None]
    if effs:
        worst = min(effs, key=lambda r: r["x_limit"])
        ok = all(r["x_limit"] >= 0.9 for r in effs)
        lines.append(
            (
                "overlap efficiency >= 0.9 of own limit (every overlapping strategy, every setting)",
                f"min {worst['x_limit']:.2f} ({worst['strategy']}, {worst['bandwidth']}, B={worst['batch_size']})",
                "met" if ok else "MISSED",
            )
        )
    for ratio, names, need, what in (
        (2.0, ["odsgd"], 1.25, "all-reduce ~ compute"),
        (3.0, ["dasgd", "cocodsgd", "overlap_local_sgd"], 2.0, "ssgd step ~ 3x compute"),
    ):
        s = closest_setting(sets, ratio)
        for name in names:
            if name not in ours:
                continue
            if s is None:  # no setting of this run's grid is near that ratio: nothing to judge
                lines.append((f"{name} >= {need}x ssgd where {what}", "no such setting in this run", "not measured"))
                continue
            r = find_cell(rows, s["bandwidth"], s["batch_size"], name)  # None for a noise cell: not measured
            got = r.get("x_ssgd") if r else None
            where = f"{s['bandwidth']}, B={s['batch_size']}, ssgd/compute = {s['ssgd_over_compute']:.2f}"
            verdict = "not measured" if got is None else ("met" if got >= need else "MISSED")
            lines.append((f"{name} >= {need}x ssgd where {what}", f"{got:.2f}x ({where})" if got else where, verdict))
    lock_step = lock_step_strategies()
    fast = [r for r in rows if r["bandwidth"] == "unshaped" and r["strategy"] in lock_step and r.get("x_ssgd")]
    if fast:
        worst = min(fast, key=lambda r: r["x_ssgd"])
        missed = sorted({r["strategy"] for r in fast if r["x_ssgd"] < LOCK_STEP_TARGET})
        lines.append(
            (
                f"unshaped link: every lock-step strategy >= {LOCK_STEP_TARGET}x ssgd (median of the repeats; "
                f"lock-step: {', '.join(lock_step)})",
                f"min {worst['x_ssgd']:.2f}x ({worst['strategy']}, B={worst['batch_size']})"
                + (f"; below: {', '.join(missed)}" if missed else ""),
                "met" if not missed else "MISSED",
            )
        )
    deltas = [a for a in acc if a["strategy"] in ours and a.get("delta_points") is not None]
    if deltas:
        worst = max(deltas, key=lambda a: abs(a["delta_points"]))
        lines.append(
            (
                "digits accuracy within 1 point of ssgd (mean of seeds)",
                f"max |diff| {abs(worst['delta_points']):.2f} points ({worst['strategy']})",
                "met" if abs(worst["delta_points"]) <= 1.0 else "MISSED",
            )
        )
    return lines


def when_not_to_use(rows: list[dict[str, Any]], own_cost: dict[str, Any] | None = None) -> list[str]:
    """One sentence per lock-step strategy below the unshaped-link target: when not to use it, from this run.

    ``rows`` are the summarised cells (noise left out); ``own_cost`` is the ``own_cost`` phase's result,
    when the run has one: the algorithm's own work with communication made free.
    """
    rows = [r for r in rows if not r.get("noise") and r.get("x_ssgd") is not None]
    ssgd_ratio = {  # only where the compute-only bound ran in the same rounds
        (r["bandwidth"], r["batch_size"]): 1 / r["x_compute"]
        for r in rows
        if r["strategy"] == "ssgd" and r.get("x_compute")
    }
    cost_cells = (own_cost or {}).get("cells", {})
    cpu = (own_cost or {}).get("cpu_s_per_step", {})
    sentences = []
    for r in rows:
        if r["bandwidth"] != "unshaped" or r["strategy"] not in lock_step_strategies():
            continue
        if r["x_ssgd"] >= LOCK_STEP_TARGET or (r["bandwidth"], r["batch_size"]) not in ssgd_ratio:
            continue
        name, where = r["strategy"], ssgd_ratio[(r["bandwidth"], r["batch_size"])]
        text = (
            f"`{name}` ran at {r['x_ssgd']:.2f}x `ssgd` on the unshaped link (B={r['batch_size']}, where `ssgd`'s "
            f"step is {where:.2f}x the compute-only step): do not use it where `ssgd`'s step is within about "
            f"{where:.1f}x of the compute-only step; use `ssgd` or DDP there."
        )
        cost = cost_cells.get(name, {}).get("own_cost")
        if cost is not None:
            text += f" Its own work costs {100 * cost['median']:+.1f} % of the compute-only step (free communication)"
            if name in cpu and "compute_only" in cpu:
                extra = 1000 * (cpu[name]["main"] - cpu["compute_only"]["main"])
                text += f", {extra:+.0f} ms of main-thread CPU per step"
            text += "; the rest of the loss is its background communication competing with compute for the cores."
        better = sorted(
            (ssgd_ratio[(c["bandwidth"], c["batch_size"])], c)
            for c in rows
            if c["strategy"] == name and c["x_ssgd"] >= 1.0 and (c["bandwidth"], c["batch_size"]) in ssgd_ratio
        )
        if better:
            ratio, c = better[0]
            text += (
                f" It pays off from `ssgd` step / compute = {ratio:.2f} ({c['bandwidth']}, B={c['batch_size']}: "
                f"{c['x_ssgd']:.2f}x `ssgd`)."
            )
        sentences.append(text)
    return sentences
