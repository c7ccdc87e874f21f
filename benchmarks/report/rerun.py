"""One link's throughput grid measured again, alone, merged into a full run's results, next to its earlier figures.

A full run (``python -m benchmarks.run``) takes hours; re-measuring one link's grid is a run of
its own (``--workloads throughput --throughput-bandwidths 200mbit --bandwidths 200mbit``). This
module puts that grid into the full run's results, so the page shows every figure from one file:

* the rerun's throughput runs of that bandwidth (calibration included) replace the base's, and its
  link record (all-reduce, batch choice) replaces the base's link of that name;
* ``meta.reruns["throughput <bandwidth>"]`` names the rerun's command, date and why (the page prints
  it at the top, as for a phase measured again);
* with ``--previous``, the cells an earlier run measured on that link go into
  ``throughput_before`` (medians of the same metrics), and the page shows both side by side;
* with ``--detail``, a small run of a few strategies with ``--cpu-split`` (CPU seconds per step by
  thread) goes into ``throughput_detail`` with its own command: the page shows it as a section of
  its own, since it does not replace any cell of the grid.

Nothing is re-derived by hand: every figure of both tables comes from :func:`summarize` and
:func:`cells` on the runs as measured. The merged file gets the rerun's date stamp, so
``--report-only`` picks it up as the newest.

    python -m benchmarks.rerun --base benchmarks/results/20261122-052931.json \\
        --rerun /tmp/grid200/20261203-170816.json --previous benchmarks/results/20261121-131116.json \\
        --bandwidth 200mbit --why "..."
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from benchmarks.base import schema
from benchmarks.report.metrics import cells, settings, summarize

KEPT = ("samples_per_s", "x_ssgd", "x_compute", "x_ssgd_range", "repeats", "noise")
"""The figures of an earlier cell the side-by-side table shows."""


def before(data: dict[str, Any], bandwidth: str, source: str) -> dict[str, Any]:
    """The cells ``data`` measured on ``bandwidth``, its batch choice there and ssgd's step over compute per batch."""
    rows = [r for r in summarize(data) if r["bandwidth"] == bandwidth]
    link = next((x for x in data["links"] if x["bandwidth"] == bandwidth), None)
    ratio = {s["batch_size"]: s["ssgd_over_compute"] for s in settings(cells(rows))}  # medians, as the tables
    return {
        "file": source,
        "date": data["meta"]["date"],
        "repeats": data["meta"].get("repeats", schema.DEFAULTS["meta.repeats"]),
        "steps": data["meta"]["steps"],
        "batches": dict((link or {}).get("batches") or {}),
        "ssgd_over_compute": {str(b): r for b, r in ratio.items()},
        "cells": [{k: c.get(k) for k in ("strategy", "batch_size", *KEPT)} for c in cells(rows)],
    }


def merge(
    base: dict[str, Any],
    rerun: dict[str, Any],
    bandwidth: str,
    why: str,
    previous: dict[str, Any] | None = None,
    previous_source: str = "",
) -> dict[str, Any]:
    """``base`` with ``rerun``'s grid on ``bandwidth`` in place of its own (see the module docstring)."""
    new_link = next((x for x in rerun["links"] if x["bandwidth"] == bandwidth), None)
    grid = [e for e in rerun["throughput"] if e["bandwidth"] == bandwidth]
    if new_link is None or not any(e.get("role", "compare") == "compare" for e in grid):
        raise SystemExit(f"error: the rerun has no throughput grid on {bandwidth}; nothing to merge")
    out = copy.deepcopy(base)
    out["throughput"] = [e for e in out["throughput"] if e["bandwidth"] != bandwidth] + copy.deepcopy(grid)
    links = [x for x in out["links"] if x["bandwidth"] != bandwidth] + [copy.deepcopy(new_link)]
    order = out["meta"]["bandwidths"]
    out["links"] = sorted(links, key=lambda x: order.index(x["bandwidth"]) if x["bandwidth"] in order else len(order))
    meta = out["meta"]
    shown = meta.get("throughput_bandwidths", meta["bandwidths"])
    meta["throughput_bandwidths"] = [b for b in order if b in {*shown, bandwidth}]
    rerun_meta = rerun["meta"]
    if rerun_meta.get("repeats", 1) != meta.get("repeats", 1) or rerun_meta["steps"] != meta["steps"]:
        raise SystemExit(
            f"error: the rerun's repeats/steps ({rerun_meta.get('repeats', 1)}/{rerun_meta['steps']}) differ from the "
            f"base's ({meta.get('repeats', 1)}/{meta['steps']}); one page would mix two methods"
        )
    meta.setdefault("reruns", {})[f"throughput {bandwidth}"] = {
        "command": rerun_meta["command"],
        "date": rerun_meta["date"],
        "seconds": rerun_meta.get("total_s"),
        "why": f"{why} (lightning_delayed {rerun_meta['versions']['lightning_delayed']}, "
        f"torch {rerun_meta['versions']['torch']}; raw results {Path(rerun_meta['json_path']).name}).",
    }
    if previous is not None:
        out["throughput_before"] = before(previous, bandwidth, previous_source)
    return out


def detail(data: dict[str, Any], source: str, why: str) -> dict[str, Any]:
    """The cells of a small ``--cpu-split`` run, its command and date, for a section of their own."""
    rows = summarize(data)
    keep = ("strategy", "bandwidth", "batch_size", "step_s", "cpu_split", "blocked_s", *KEPT, "x_compute_range")
    return {
        "file": source,
        "why": why,
        "command": data["meta"]["command"],
        "date": data["meta"]["date"],
        "repeats": data["meta"].get("repeats", schema.DEFAULTS["meta.repeats"]),
        "steps": data["meta"]["steps"],
        "cells": [{k: c.get(k) for k in keep} for c in cells(rows)],
    }


def cpu_split_table(cells_: list[dict[str, Any]]) -> list[str]:
    """Markdown rows of CPU ms per step by thread (median over rounds of the ranks' mean), beside the step."""
    rows = [c for c in cells_ if c.get("cpu_split")]
    if not rows:
        return []
    out = [
        "| strategy | step (ms) | main thread CPU (ms/step) | gloo threads CPU (ms/step) | other threads CPU (ms/step) "
        "| all threads CPU (ms/step) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for c in rows:
        sp = c["cpu_split"]
        out.append(
            f"| `{c['strategy']}` | {c['step_s'] * 1000:.0f} | {sp['main'] * 1000:.0f} | {sp['gloo'] * 1000:.0f} | "
            f"{sp['other'] * 1000:.0f} | {sum(sp.values()) * 1000:.0f} |"
        )
    return out


def detail_section(data: dict[str, Any]) -> list[str]:
    """Markdown of ``throughput_detail``: the small run's cells with their CPU by thread."""
    d = data.get("throughput_detail")
    if not d:
        return []
    first = d["cells"][0] if d["cells"] else {}
    out = [
        f"### {first.get('bandwidth')}, batch {first.get('batch_size')}: CPU by thread ({d['date']})",
        "",
        f"{d['why']} Measured alone: `{d['command']}` ({d['repeats']} interleaved repeats of {d['steps']} timed "
        f"steps; raw results {d['file']}).",
        "",
        "| strategy | samples/s | x ssgd [min, max] | x compute [min, max] |",
        "|---|---:|---:|---:|",
    ]
    for c in d["cells"]:
        if c.get("samples_per_s") is None:
            continue
        xs, xc = c.get("x_ssgd_range"), c.get("x_compute_range")
        out.append(
            f"| `{c['strategy']}` | {c['samples_per_s']:.1f} | "
            + (f"{c['x_ssgd']:.2f} [{xs[0]:.2f}, {xs[1]:.2f}]" if xs else "")
            + " | "
            + (f"{c['x_compute']:.2f} [{xc[0]:.2f}, {xc[1]:.2f}]" if xc else "")
            + " |"
        )
    return [*out, "", *cpu_split_table(d["cells"]), ""]


def _pair(cell: dict[str, Any] | None, batch: int | None) -> list[str]:
    if cell is None or cell.get("samples_per_s") is None:
        return ["", ""]
    rng = cell.get("x_ssgd_range")
    spread = f" [{rng[0]:.2f}, {rng[1]:.2f}]" if rng and cell.get("repeats", 1) > 1 else ""
    x = f"{cell['x_ssgd']:.2f}{spread}" if cell.get("x_ssgd") is not None else ""
    return [f"{cell['samples_per_s']:.1f}" + (" (**noise**)" if cell.get("noise") else ""), x]


def section(data: dict[str, Any]) -> list[str]:
    """Markdown: per batch setting, the earlier cells of the rerun link next to this page's."""
    old = data.get("throughput_before")
    reruns = [k for k in data["meta"].get("reruns", {}) if k.startswith("throughput ")]
    if not old or not reruns:
        return []
    bandwidth = reruns[0].split(" ", 1)[1]
    now_rows = [r for r in summarize(data) if r["bandwidth"] == bandwidth]
    now = {(c["batch_size"], c["strategy"]): c for c in cells(now_rows)}
    now_ratio = {s["batch_size"]: s["ssgd_over_compute"] for s in settings(list(now.values()))}  # medians
    link = next(x for x in data["links"] if x["bandwidth"] == bandwidth)
    was = {(c["batch_size"], c["strategy"]): c for c in old["cells"]}
    out = [
        f"### {bandwidth}: this measurement next to the earlier one ({old['file']}, {old['date']})",
        "",
        f"The earlier grid: {old['repeats']} repeat(s) of {old['steps']} timed steps per cell; this page's: "
        f"{data['meta'].get('repeats', 1)} interleaved repeats of {data['meta']['steps']} steps. "
        "Each batch setting is chosen anew by each run's own "
        "calibration (the batch at which ssgd's step is about 2x, or 3x, the compute-only step), so the batch sizes "
        "differ; compare the ratios, not the samples/s.",
        "",
    ]
    for name, batch in (link.get("batches") or {}).items():
        b_old = old["batches"].get(name)
        r_old = old["ssgd_over_compute"].get(str(b_old))
        r_new = now_ratio.get(batch)
        out += [
            f"#### `{name}`: batch {b_old} then (ssgd / compute = {_ratio(r_old)}), batch {batch} now "
            f"(ssgd / compute = {_ratio(r_new)})",
            "",
            "| strategy | samples/s then | x ssgd then | samples/s now | x ssgd now [min, max] | change of x ssgd |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        names = list(dict.fromkeys([s for (b, s) in now if b == batch] + [s for (b, s) in was if b == b_old]))
        for s in names:
            a, c = was.get((b_old, s)), now.get((batch, s))
            change = (
                f"{c['x_ssgd'] - a['x_ssgd']:+.2f}"
                if a and c and a.get("x_ssgd") is not None and c.get("x_ssgd") is not None
                else ""
            )
            out.append(f"| `{s}` | " + " | ".join([*_pair(a, b_old), *_pair(c, batch), change]) + " |")
        out.append("")
    return out


def _ratio(r: float | None) -> str:
    return "?" if r is None else f"{r:.2f}"
