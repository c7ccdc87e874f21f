"""Turns a results JSON of :mod:`benchmarks.run` into ``docs/benchmarks.md`` and PNG plots.

Everything here is derived from the JSON, so ``python -m benchmarks.run --report-only`` rebuilds
the page without measuring again. Metrics (per run, ranks combined):

* samples/s: the ranks' samples/s summed (each rank: batch x timed steps / window wall time);
* x ssgd: samples/s over ``ssgd``'s at the same (bandwidth, batch);
* x compute: samples/s over the compute-only bound's samples/s at the same batch (overlap efficiency);
* x limit: samples/s over the strategy's own limit, ``min(compute-only samples/s, world x batch / t_link)``,
  with ``t_link`` = payload bytes the strategy all-reduces per step / all-reduce throughput measured on
  the same link in the same run (the bound is measured like the strategy, so it is exactly 1 for itself);
* blocked: time per step the rank waited for communication (:class:`lightning_delayed.CommMonitor`);
* exposed: step time minus the compute-only step time (communication not hidden, any family);
* all-reduced: payload bytes per step per rank (CommMonitor); wire: bytes the rank's veth sent per step;
* peak RSS: the larger ``ru_maxrss`` of the two ranks.

Repeats: each throughput cell is measured ``--repeats`` times in interleaved rounds (every strategy and
the compute-only bound once per round, same order), each run ``--warmup`` untimed then ``--steps``
timed steps. x ssgd, x compute and x limit are computed per round against that round's ssgd and
compute-only runs; a cell shows the median and [min, max] over the rounds (times, bytes: the median).
Noise rule: a cell whose median x limit exceeds 1.05 is faster than its own bound allows; it is
marked noise and left out of the targets.
"""

from __future__ import annotations

import importlib
import re
import statistics
from pathlib import Path
from typing import Any

from benchmarks.base.baselines import OVERLAPPING_EXCLUDED, lock_step_strategies, our_strategies

MB = 1e6
LOCK_STEP_TARGET = 0.95
IMG = "img"


RESULT_NAME = re.compile(r"\d{8}-\d{6}\.json")
"""A dated results file of :mod:`benchmarks.run`; other JSON there (contention-*, groups_wire) is not one."""


def latest_json(directory: Path) -> Path:
    files = sorted(p for p in directory.glob("*.json") if RESULT_NAME.fullmatch(p.name))
    if not files:
        raise SystemExit(f"error: no results JSON in {directory}; run `python -m benchmarks.run` first")
    return files[-1]


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


def _closest(sets: list[dict[str, Any]], ratio: float) -> dict[str, Any] | None:
    """The shaped setting whose ssgd/compute ratio is closest to ``ratio``, if within the tolerance."""
    near = [
        s for s in sets if s["bandwidth"] != "unshaped" and abs(s["ssgd_over_compute"] / ratio - 1) <= SETTING_TOLERANCE
    ]
    return min(near, key=lambda s: abs(s["ssgd_over_compute"] - ratio)) if near else None


def _get(rows: list[dict[str, Any]], bw: str, batch: int, name: str) -> dict[str, Any] | None:
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
        s = _closest(sets, ratio)
        for name in names:
            if name not in ours:
                continue
            if s is None:  # no setting of this run's grid is near that ratio: nothing to judge
                lines.append((f"{name} >= {need}x ssgd where {what}", "no such setting in this run", "not measured"))
                continue
            r = _get(rows, s["bandwidth"], s["batch_size"], name)  # None for a noise cell: not measured
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


def _f(x: Any, fmt: str, scale: float = 1.0) -> str:
    return "n/a" if x is None else format(x * scale, fmt)


def _spread(cell: dict[str, Any], key: str, fmt: str) -> str:
    """``median [min, max]``; the median alone for a single repeat."""
    value, span = cell.get(key), cell.get(f"{key}_range")
    if value is None:
        return "n/a"
    if span is None or span[0] == span[1]:
        return format(value, fmt)
    return f"{format(value, fmt)} [{format(span[0], fmt)}, {format(span[1], fmt)}]"


def plots(data: dict[str, Any], rows: list[dict[str, Any]], acc_data: list[dict[str, Any]], img_dir: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    img_dir.mkdir(parents=True, exist_ok=True)
    written = []
    order = {link["bandwidth"]: -(link["bps"] or float("inf")) for link in data["links"]}
    ok_rows = [r for r in rows if "samples_per_s" in r]
    keys = sorted({(r["bandwidth"], r["batch_size"]) for r in ok_rows}, key=lambda k: (order.get(k[0], 0), k[1]))
    if keys:
        fig, axes = plt.subplots(1, 2, figsize=(13, 4.8))
        names = list(dict.fromkeys(r["strategy"] for r in ok_rows))
        for name in names:
            found = [(i, _get(rows, bw, b, name)) for i, (bw, b) in enumerate(keys)]
            pts = [(i, r) for i, r in found if r is not None]
            style = "--" if name in ("ddp", "post_local_sgd", "compute_only") else "-"
            for ax, key in zip(axes, ("samples_per_s", "x_compute"), strict=True):
                got = [(i, r) for i, r in pts if r.get(key) is not None]
                med = [r[key] for _, r in got]
                span = [r.get(f"{key}_range") or (r[key], r[key]) for _, r in got]
                err = [
                    [m - lo for m, (lo, _) in zip(med, span, strict=True)],
                    [hi - m for m, (_, hi) in zip(med, span, strict=True)],
                ]
                ax.errorbar([i for i, _ in got], med, yerr=err, fmt=style, marker="o", capsize=3, label=name)
        for ax, ylabel in zip(axes, ("samples/s (2 ranks)", "samples/s / compute-only bound"), strict=True):
            ax.set_xticks(range(len(keys)), [f"{bw}\nB={b}" for bw, b in keys])
            ax.set_xlabel("link bandwidth, batch per rank")
            ax.set_ylabel(ylabel)
            ax.grid(alpha=0.3)
        axes[0].set_yscale("log")
        axes[1].legend(fontsize=8, loc="best")
        fig.suptitle(
            "ResNet-18, CIFAR-shaped inputs: throughput against bandwidth (median, bars: min to max of repeats)"
        )
        fig.tight_layout()
        fig.savefig(img_dir / "benchmarks_throughput.png", dpi=110)
        plt.close(fig)
        written.append(f"{IMG}/benchmarks_throughput.png")
    if data["accuracy"]:
        fig, ax = plt.subplots(figsize=(7, 4.8))
        for e in data["accuracy"]:
            runs = [r["epochs"] for r in e["runs"] if r["epochs"]]
            if not runs:
                continue
            n = min(len(r) for r in runs)
            wall = [statistics.mean(r[i]["wall_s"] for r in runs) for i in range(n)]
            acc = [statistics.mean(r[i]["acc"] for r in runs) for i in range(n)]
            ax.plot(wall, acc, marker=".", label=e["strategy"])
        ax.axhline(data["meta"]["target_acc"], color="gray", linestyle=":", label="target")
        ax.set_xlabel("training wall time (s, validation excluded)")
        ax.set_ylabel("test accuracy (mean of seeds)")
        ax.set_title(f"digits CNN, 2 ranks, link {data['accuracy'][0]['bandwidth']}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(img_dir / "benchmarks_accuracy.png", dpi=110)
        plt.close(fig)
        written.append(f"{IMG}/benchmarks_accuracy.png")
    return written


def markdown(data: dict[str, Any], images: list[str], sections: list[str] | None = None) -> str:
    meta = data["meta"]
    rows = cells(summarize(data))
    acc = accuracy_summary(data)
    m, v = meta["machine"], meta["versions"]
    out = ["# Benchmarks on a slow network (measured)", ""]
    if meta.get("quick"):
        out += [
            "> **Quick smoke run** (`--quick`): tiny step counts; the numbers only show that the pipeline works.",
            "",
        ]
    link_kind = (
        "two network namespaces joined by a veth pair shaped with `tc tbf` on both ends"
        if meta["emulated"]
        else f"loopback only ({meta['fallback_reason']})"
    )
    out += [
        f"Measured {meta['date']} on {m['cpu']} ({m['cores']} cores, "
        f"{_f(m.get('memory_bytes'), '.0f', 1 / 2**30)} GiB, "
        f"{m['system']}); torch {v['torch']}, lightning {v['lightning']}, torchvision {v['torchvision']}, "
        f"lightning_delayed {v['lightning_delayed']}, Python {v['python']}.",
        "",
        f"2 ranks, one compute thread each (`OMP_NUM_THREADS=1`), gloo, on {link_kind}. Bandwidths: "
        f"{', '.join(meta['bandwidths'])}. Throughput: torchvision ResNet-18 (`num_classes=10`) on random 3x32x32 "
        f"inputs, SGD lr 0.01 momentum 0.9, {meta['warmup']} warm-up steps then {meta['steps']} timed steps, "
        f"{meta.get('repeats', 1)} interleaved repeat(s) per cell on "
        f"{', '.join(meta.get('throughput_bandwidths', meta['bandwidths']))} (the other links: all-reduce only). "
        f"Periodic strategies average every {meta['sync_every']} steps. Strategy arguments: "
        + ", ".join(f"`{n}` {kw}" for n, kw in meta["strategy_kwargs"].items() if kw)
        + ".",
        "",
        f"Reproduce: `{meta['command']}` (as root for the emulated links); rebuild this page from the JSON with "
        f"`python -m benchmarks.run --report-only`. Raw results: `{Path(meta['json_path']).name}` in "
        "`benchmarks/results/`. Total run time: " + _f(meta.get("total_s"), ".0f") + " s.",
        "",
        *[
            f"Phase `{name}` was measured again after this run, alone (`{r['command']}`, {r['date']}, "
            f"{_f(r.get('seconds'), '.0f')} s): {r['why']}"
            for name, r in meta.get("reruns", {}).items()
        ],
        *([""] if meta.get("reruns") else []),
        "## Links",
        "",
        "| bandwidth | all-reduce throughput (MB/s) | all-reduce of ResNet-18 gradient (ms) | batch sizes measured |",
        "|---|---:|---:|---|",
    ]
    for link in data["links"]:
        ar = link.get("allreduce")
        batches = ", ".join(f"{k}: {b}" for k, b in link.get("batches", {}).items())
        out.append(
            f"| {link['bandwidth']} | {_f(ar and ar['bytes_per_s'], '.1f', 1 / MB)} | "
            f"{_f(ar and ar['seconds_per_op'], '.0f', 1000)} | {batches} |"
        )
    sets = {(s["bandwidth"], s["batch_size"]): s["ssgd_over_compute"] for s in settings(rows)}
    repeats = meta.get("repeats", 1)
    out += [
        "",
        "## Throughput",
        "",
        f"Each cell: {repeats} repeat(s), median and [min, max]. The rounds are interleaved: every strategy, "
        "the compute-only bound included, runs once per round in the same order (A B C, A B C, ...), so a slow "
        "drift of the machine hits all alike. Ratios are taken per round against the same round's `ssgd` and "
        "compute-only runs, then summarised. A cell whose median x limit is above "
        f"{NOISE_LIMIT} (faster than its own bound allows) is marked **noise**: it shows the measurement's error, "
        "not the method, and is left out of the targets.",
        "",
    ]
    for key in dict.fromkeys((r["bandwidth"], r["batch_size"]) for r in rows):
        ratio = sets.get(key)
        note = f" (ssgd step / compute-only step = {ratio:.2f})" if ratio else ""
        out += [
            f"### {key[0]}, batch {key[1]} per rank{note}",
            "",
            "| strategy | samples/s | x ssgd | x compute | x limit | note | step (ms) | blocked (ms/step) "
            "| exposed (ms/step) | all-reduced (MB/step) | wire (MB/step) | peak RSS (MB) |",
            "|---|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|",
        ]
        for r in rows:
            if (r["bandwidth"], r["batch_size"]) != key:
                continue
            if "samples_per_s" not in r:
                out.append(f"| `{r['strategy']}` | failed | | | | | | | | | | |")
                continue
            notes = (["**noise**"] if r.get("noise") else []) + (
                [f"{r['failed']} run(s) failed"] if r.get("failed") else []
            )
            out.append(
                f"| `{r['strategy']}` | {_spread(r, 'samples_per_s', '.1f')} | {_spread(r, 'x_ssgd', '.2f')} | "
                f"{_spread(r, 'x_compute', '.2f')} | {_spread(r, 'x_limit', '.2f')} | {', '.join(notes)} | "
                f"{r['step_s'] * 1000:.0f} | {r['blocked_s'] * 1000:.1f} | {_f(r.get('exposed_s'), '.0f', 1000)} | "
                f"{r['bytes'] / MB:.2f} | {_f(r.get('wire_bytes'), '.2f', 1 / MB)} | {r['peak_rss_mb']:.0f} |"
            )
        out.append("")
    if acc:
        out += [
            "## Accuracy and time to accuracy (digits CNN)",
            "",
            f"{meta['epochs']} epochs, batch 32 per rank, seeds {meta['seeds']}, "
            f"link {data['accuracy'][0]['bandwidth']}. "
            f"Target accuracy {meta['target_acc']}. Test accuracy is measured after every epoch on the consensus "
            "model (ours) or each rank's own model with synchronised metrics (Lightning's strategies).",
            "",
            "| strategy | test accuracy (mean ± sd) | diff to ssgd (points) | wall time, all epochs (s) | "
            "wall time to target (s) |",
            "|---|---:|---:|---:|---:|",
        ]
        for a in acc:
            if "acc" not in a:
                out.append(f"| `{a['strategy']}` | failed | | | |")
                continue
            reach = (
                _f(a.get("to_target_s"), ".1f")
                if a["reached"] == a["seeds"]
                else f"not reached ({a['reached']}/{a['seeds']} seeds)"
            )
            out.append(
                f"| `{a['strategy']}` | {a['acc']:.4f} ± {a['acc_std']:.4f} | {_f(a.get('delta_points'), '+.2f')} | "
                f"{a['wall_s']:.1f} | {reach} |"
            )
        out.append("")
    lines = targets(rows, acc)
    if lines:
        out += [
            "## Targets (ratios measured side by side in this run)",
            "",
            "| target | measured | verdict |",
            "|---|---|---|",
            *[f"| {t} | {m_} | {v_} |" for t, m_, v_ in lines],
            "",
        ]
        noise = [f"`{r['strategy']}` ({r['bandwidth']}, B={r['batch_size']})" for r in rows if r.get("noise")]
        if noise:
            out += [f"Left out as noise (median x limit > {NOISE_LIMIT}): {', '.join(noise)}.", ""]
    avoid = when_not_to_use(rows, data.get("own_cost") if isinstance(data.get("own_cost"), dict) else None)
    if avoid:
        out += ["## When not to use a strategy (measured in this run)", "", *[f"- {t}" for t in avoid], ""]
    failed = [e for e in data["throughput"] + data["accuracy"] if e.get("status") == "failed"]
    if failed:
        out += ["## Failed runs", ""]
        for e in failed:
            first = (e.get("error") or "").splitlines()[:1]
            out.append(
                f"- `{e['strategy']}` ({e.get('bandwidth')}, B={e.get('batch_size', 32)}"
                + (f", round {e['round'] + 1}" if "round" in e else "")
                + f"): {first[0] if first else '?'}"
            )
        out.append("")
    out += [f"![{Path(i).stem}]({i})" for i in images] + [""]
    out += sections or []
    out += [
        "## How each number is measured",
        "",
        (__doc__ or "").split("ranks combined):", 1)[-1].strip(),
        "",
        "Blocked time by family: our strategies time every wait on a collective (`comm/buckets.py` `wait_work`); "
        "DDP's own C++ all-reduce (`ssgd`, `ddp`) is read from DDP's reducer timers (comm end minus autograd "
        "end); post-local SGD's blocking average is timed whole. Bytes: our collectives count their buffers; "
        "DDP's reduction counts the gradient bytes each step; the veth counters measure what really crossed "
        "the link (both directions are shaped, so one rank's tx is one direction's load).",
        "",
    ]
    return "\n".join(out)


def phase_sections(data: dict[str, Any], img_dir: Path) -> list[str]:
    """The markdown of every registered phase present in ``data``, from the phase's own ``section``."""
    from benchmarks.run import PHASES

    out = []
    for name, module_name in PHASES.items():
        if name not in data:
            continue
        if data[name].get("status") == "failed":
            first = (data[name].get("error") or "?").strip().splitlines()[-1:]
            out.append(f"## Phase `{name}`\n\nFailed: `{first[0] if first else '?'}` (see the JSON).\n")
            continue
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError:
            out.append(f"## Phase `{name}`\n\nNot rendered: module `{module_name}` is not in this checkout.\n")
            continue
        out.append(module.section(data, img_dir).rstrip() + "\n")
    return out


def write_report(data: dict[str, Any], docs: Path) -> None:
    rows = cells(summarize(data))
    img_dir = docs.parent / IMG
    images = plots(data, rows, accuracy_summary(data), img_dir)
    sections = phase_sections(data, img_dir)
    docs.parent.mkdir(parents=True, exist_ok=True)
    docs.write_text(markdown(data, images, sections))
