"""Derived figures of the throughput runs: one row per run, one cell per (bandwidth, batch, strategy).

The metrics are defined in :mod:`benchmarks.report.page` (its docstring is the page's "How each
number is measured" section). Everything is computed from the results dict alone.
"""

from __future__ import annotations

import statistics
from typing import Any

MB = 1e6


def _ok(entry: dict[str, Any]) -> bool:
    return entry.get("status") == "ok"


def link_time(row: dict[str, Any], ranks: list[dict[str, Any]], ar: dict[str, Any] | None) -> float | None:
    """Seconds per step the link needs for what the strategy sends: its link bound.

    Payload bytes all-reduced per step / all-reduce throughput (payload bytes/s) on the same link.
    A strategy that sends without collectives and reports no payload (an RPC parameter server)
    is bounded by its veth bytes instead: the busiest rank's wire bytes per step / the wire
    bytes per second the all-reduce achieved.
    """
    if ar is None:
        return None
    if row["bytes"] > 0:
        return float(row["bytes"] / ar["bytes_per_s"])
    wire = [r["wire_bytes_per_step"] for r in ranks if r.get("wire_bytes_per_step") is not None]
    if wire and ar.get("wire_bytes_per_op"):
        return float(max(wire) / (ar["wire_bytes_per_op"] / ar["seconds_per_op"]))
    return None


NOISE_LIMIT = 1.05
"""A cell whose median x limit is above this is faster than its own bound can allow: noise, not a result."""
RATIOS = ("samples_per_s", "x_ssgd", "x_compute", "x_limit")
"""Reported as median and min-max over the repeats."""
MEDIANS = ("step_s", "blocked_s", "exposed_s", "bytes", "wire_bytes", "t_link")
"""Reported as the median over the repeats (peak RSS: the maximum)."""


def _step(entry: dict[str, Any]) -> float:
    return float(max(r["step_s"] for r in entry["ranks"]))


def _sps(entry: dict[str, Any]) -> float:
    return float(sum(r["samples_per_s"] for r in entry["ranks"]))


def summarize(data: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per throughput run (one repeat of one cell) with every derived metric.

    Ratios are taken per round: x ssgd against the same round's ssgd run at the same (bandwidth,
    batch), x compute and x limit against the same round's compute-only run. Runs of results
    without rounds (older JSON) count as round 0; a missing same-round partner falls back to the
    median over the other rounds (for compute-only: over every run at that batch, calibration included).
    """
    allreduce = {link["bandwidth"]: link["allreduce"] for link in data["links"]}
    compute_runs = [e for e in data["throughput"] if e["strategy"] == "compute_only" and _ok(e)]
    compute_round = {  # (step, samples/s) of the bound
        (e["bandwidth"], e["batch_size"], e.get("round", 0)): (_step(e), _sps(e))
        for e in compute_runs
        if e.get("role", "compare") == "compare"
    }
    compute_any: dict[int, list[tuple[float, float]]] = {}
    for e in compute_runs:
        compute_any.setdefault(e["batch_size"], []).append((_step(e), _sps(e)))
    rows = []
    for e in data["throughput"]:
        if e.get("role", "compare") != "compare":
            continue  # calibration and batch-probe runs only feed the compute-only times above
        row: dict[str, Any] = {k: e[k] for k in ("bandwidth", "batch_size", "strategy")}
        row["round"] = e.get("round", 0)
        row["status"] = e.get("status")
        if not _ok(e):
            rows.append(row)
            continue
        ranks = e["ranks"]
        world = len(ranks)
        row["samples_per_s"] = _sps(e)
        row["step_s"] = _step(e)
        row["blocked_s"] = statistics.mean(r["blocked_s_per_step"] for r in ranks)
        row["bytes"] = statistics.mean(r["bytes_per_step"] for r in ranks)
        wire = [r["wire_bytes_per_step"] for r in ranks if r.get("wire_bytes_per_step") is not None]
        row["wire_bytes"] = statistics.mean(wire) if wire else None
        row["peak_rss_mb"] = max(r["peak_rss_mb"] for r in ranks)
        splits = [r["cpu_split_s_per_step"] for r in ranks if r.get("cpu_split_s_per_step")]
        if splits:  # --cpu-split: CPU seconds per step of the main thread, gloo's threads and the rest
            row["cpu_split"] = {k: statistics.fmean(sp[k] for sp in splits) for k in splits[0]}
        bound = compute_round.get((e["bandwidth"], e["batch_size"], row["round"]))
        if bound is None and e["batch_size"] in compute_any:
            pairs = compute_any[e["batch_size"]]
            bound = (statistics.median(p[0] for p in pairs), statistics.median(p[1] for p in pairs))
        row["exposed_s"] = None if bound is None else max(0.0, row["step_s"] - bound[0])
        ar = allreduce.get(e["bandwidth"])
        if bound is not None:
            row["x_compute"] = row["samples_per_s"] / bound[1]
            row["t_link"] = link_time(row, ranks, ar)
            limit_sps = bound[1] if not row["t_link"] else min(bound[1], world * e["batch_size"] / row["t_link"])
            row["x_limit"] = row["samples_per_s"] / limit_sps
        rows.append(row)
    base: dict[tuple[Any, ...], float] = {}
    base_any: dict[tuple[Any, ...], list[float]] = {}
    for r in rows:
        if r["strategy"] == "ssgd" and "samples_per_s" in r:
            base[(r["bandwidth"], r["batch_size"], r["round"])] = r["samples_per_s"]
            base_any.setdefault((r["bandwidth"], r["batch_size"]), []).append(r["samples_per_s"])
    for r in rows:
        if "samples_per_s" not in r:
            continue
        b = base.get((r["bandwidth"], r["batch_size"], r["round"]))
        if b is None and (r["bandwidth"], r["batch_size"]) in base_any:
            b = statistics.median(base_any[(r["bandwidth"], r["batch_size"])])
        if b is not None:
            r["x_ssgd"] = r["samples_per_s"] / b
    return rows


def cells(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One cell per (bandwidth, batch, strategy): medians over its repeats, [min, max] of the ratios, the noise flag.

    A cell keeps the per-run keys (now medians), adds ``<ratio>_range`` = (min, max) and ``repeats``
    (runs that succeeded), ``failed`` (runs that did not) and ``noise`` (median x limit > 1.05).
    """
    groups: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["bandwidth"], r["batch_size"], r["strategy"]), []).append(r)
    out = []
    for (bw, batch, name), runs in groups.items():
        ok = [r for r in runs if "samples_per_s" in r]
        cell: dict[str, Any] = {"bandwidth": bw, "batch_size": batch, "strategy": name}
        cell.update(repeats=len(ok), failed=len(runs) - len(ok), status="ok" if ok else "failed")
        for key in (*RATIOS, *MEDIANS):
            values = [r[key] for r in ok if r.get(key) is not None]
            cell[key] = statistics.median(values) if values else None
            if key in RATIOS:
                cell[f"{key}_range"] = (min(values), max(values)) if values else None
        if ok:
            cell["peak_rss_mb"] = max(r["peak_rss_mb"] for r in ok)
            splits = [r["cpu_split"] for r in ok if r.get("cpu_split")]
            if splits:
                cell["cpu_split"] = {k: statistics.median(sp[k] for sp in splits) for k in splits[0]}
        else:
            cell.pop("samples_per_s")  # the failed marker of the tables and plots
        cell["noise"] = is_noise(cell)
        out.append(cell)
    return out


def is_noise(cell: dict[str, Any]) -> bool:
    """Faster than its own limit allows by more than 5 % (median of the repeats): the measurement, not the method."""
    return cell.get("x_limit") is not None and cell["x_limit"] > NOISE_LIMIT


def settings(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per (bandwidth, batch): ssgd's step over the compute-only step (2 = all-reduce about equals compute)."""
    out = []
    for r in rows:
        if r["strategy"] == "ssgd" and r.get("x_compute"):
            out.append(
                {"bandwidth": r["bandwidth"], "batch_size": r["batch_size"], "ssgd_over_compute": 1 / r["x_compute"]}
            )
    return out


SETTING_TOLERANCE = 0.25
"""A shaped setting stands for a target's ssgd/compute ratio only within this relative distance of it."""


def closest_setting(sets: list[dict[str, Any]], ratio: float) -> dict[str, Any] | None:
    """The shaped setting whose ssgd/compute ratio is closest to ``ratio``, if within the tolerance."""
    near = [
        s for s in sets if s["bandwidth"] != "unshaped" and abs(s["ssgd_over_compute"] / ratio - 1) <= SETTING_TOLERANCE
    ]
    return min(near, key=lambda s: abs(s["ssgd_over_compute"] - ratio)) if near else None


def find_cell(rows: list[dict[str, Any]], bw: str, batch: int, name: str) -> dict[str, Any] | None:
    for r in rows:
        if (r["bandwidth"], r["batch_size"], r["strategy"]) == (bw, batch, name) and "samples_per_s" in r:
            return r
    return None


def accuracy_summary(data: dict[str, Any]) -> list[dict[str, Any]]:
    target = data["meta"]["target_acc"]
    out = []
    for e in data["accuracy"]:
        runs = [r for r in e["runs"] if r["epochs"]]
        row: dict[str, Any] = {"strategy": e["strategy"], "status": e.get("status"), "seeds": len(runs)}
        if runs:
            finals = [r["epochs"][-1]["acc"] for r in runs]
            row["acc"] = statistics.mean(finals)
            row["acc_std"] = statistics.stdev(finals) if len(finals) > 1 else 0.0
            row["wall_s"] = statistics.mean(r["epochs"][-1]["wall_s"] for r in runs)
            reached = [next((p["wall_s"] for p in r["epochs"] if p["acc"] >= target), None) for r in runs]
            row["to_target_s"] = statistics.mean(x for x in reached if x is not None) if all(reached) else None
            row["reached"] = sum(x is not None for x in reached)
        out.append(row)
    base = next((r for r in out if r["strategy"] == "ssgd" and "acc" in r), None)
    for r in out:
        if base is not None and "acc" in r:
            r["delta_points"] = 100 * (r["acc"] - base["acc"])
    return out
