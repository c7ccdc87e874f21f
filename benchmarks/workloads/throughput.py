"""The core workload ``throughput``: ResNet-18 steps per (bandwidth, batch), every strategy, interleaved rounds.

Per bandwidth of ``--bandwidths``: the all-reduce of a ResNet-18-sized fp32 buffer (the link bound;
every bandwidth, also those without a throughput grid: the projection fits its link model to them).
Calibration: compute-only step time at two batch sizes, ``t(B) = a + b B``; for each shaped
bandwidth of the grid with all-reduce time ``A`` the batch of each ``--batch-settings`` entry is
chosen (:func:`choose_batches`, then :func:`refine_batches`); the unshaped link uses
``--batch-size``. Then per (bandwidth of ``--throughput-bandwidths``, batch): ``--repeats`` rounds,
each running every strategy once in the same order (A B C, A B C, ...), the compute-only bound
included. The page (:mod:`benchmarks.report.page`) renders it; the budget of the phase is
:func:`estimate_throughput_s`.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks.base import netns, schema
from benchmarks.base.baselines import strategy_list
from benchmarks.base.launch import RunFailed, Runner, log
from benchmarks.base.tasks import resnet18_grad_bytes

Write = Callable[[argparse.Namespace, dict[str, Any]], None]
"""How the runner saves the results after each link (:func:`benchmarks.run.write_json`)."""

CALIBRATION_BATCHES = (16, 64)
MIN_BATCH, MAX_BATCH = 4, 512
PROBE_WARMUP, PROBE_STEPS = 1, 8
"""Calibration and batch-probe runs only choose a batch (20 % tolerance): short runs keep the budget."""
STARTUP_S = 10.0
"""Seconds one pair of worker processes needs before its first step (imports, process group)."""
TARGET_RATIOS = {"allreduce_eq_compute": 2.0, "ssgd_3x_compute": 3.0}
"""ssgd step / compute-only step wanted for each setting (all-reduce = compute means a ratio of 2)."""


def interleave(names: list[str], repeats: int) -> list[tuple[int, str]]:
    """(round, strategy) in run order: every strategy once per round, rounds one after the other (A B, A B)."""
    return [(r, name) for r in range(repeats) for name in names]


def choose_batches(a: float, b: float, allreduce_s: float) -> dict[str, int]:
    """Batch sizes where compute-only ``t(B) = a + b B`` equals ``A`` and ``A / 2``."""
    out = {}
    for label, target in (("allreduce_eq_compute", allreduce_s), ("ssgd_3x_compute", allreduce_s / 2)):
        batch = round((target - a) / b) if b > 0 else MAX_BATCH
        out[label] = int(min(MAX_BATCH, max(MIN_BATCH, batch)))
    return out


def refine_batches(
    batches: dict[str, int], cal: dict[str, Any], run_ssgd: Callable[[int], dict[str, Any]]
) -> dict[str, dict[str, Any]]:
    """Run ssgd at each chosen batch; if its step ratio misses the target by > 20 %, move the batch once.

    The first choice assumes ssgd hides none of its all-reduce; DDP hides part of it behind
    backward, so the ratio comes out lower. The exposed part ``E = step - t(B)`` measured at the
    first choice gives the batch where ``t(B') = E / (ratio - 1)``. The ssgd run at the first batch
    stays in the results as a "probe" (the rounds measure ssgd again beside the others).
    """
    choice: dict[str, dict[str, Any]] = {}
    for label, batch in batches.items():
        target = TARGET_RATIOS[label]
        entry = run_ssgd(batch)
        info: dict[str, Any] = {"first": batch, "final": batch, "target_ratio": target}
        if entry["status"] == "ok":
            step = max(r["step_s"] for r in entry["ranks"])
            t_model = cal["a"] + cal["b"] * batch
            info["first_ratio"] = step / t_model
            if abs(info["first_ratio"] / target - 1) > 0.2 and cal["b"] > 0:
                exposed = max(0.0, step - t_model)
                final = round((exposed / (target - 1) - cal["a"]) / cal["b"])
                info["final"] = int(min(MAX_BATCH, max(MIN_BATCH, final)))
        choice[label] = info
    return choice


def previous_results(directory: Path) -> dict[str, Any] | None:
    """The newest dated results JSON in ``directory`` (for the budget estimate), or None (also if invalid)."""
    try:
        return schema.load(schema.latest(directory))
    except (SystemExit, OSError, ValueError):
        return None


def step_estimate(prev: dict[str, Any], bandwidth: str, batch: int | None, name: str) -> float:
    """A previous run's step time of ``name`` on ``bandwidth`` at the batch nearest ``batch``.

    Falls back to the median over strategies on that link (a strategy the previous run lacked),
    then over everything, then 1 s.
    """
    ok = [e for e in prev.get("throughput", []) if e.get("status") == "ok"]

    def step(e: dict[str, Any]) -> float:
        return float(max(r["step_s"] for r in e["ranks"]))

    def nearest(es: list[dict[str, Any]]) -> list[dict[str, Any]]:
        if batch is None or not es:
            return es
        best = min(abs(e["batch_size"] - batch) for e in es)
        return [e for e in es if abs(e["batch_size"] - batch) == best]

    for pool in (
        [e for e in ok if e["bandwidth"] == bandwidth and e["strategy"] == name],
        [e for e in ok if e["bandwidth"] == bandwidth],
        ok,
    ):
        pool = nearest(pool)
        if pool:
            return float(statistics.median(step(e) for e in pool))
    return 1.0


def previous_batch(prev: dict[str, Any], bandwidth: str, setting: str) -> int | None:
    for link in prev.get("links", []):
        if link["bandwidth"] == bandwidth:
            batches = link.get("batches", {})
            if setting in batches:
                return int(batches[setting])
            if batches:
                return int(next(iter(batches.values())))
    return None


def estimate_throughput_s(args: argparse.Namespace, names: list[str], prev: dict[str, Any]) -> dict[str, float]:
    """Seconds of the throughput phase on a quiet machine, per part, from a previous run's step times.

    Each pair of processes costs :data:`STARTUP_S` plus (warm-up + steps) x its step time.
    """
    run_steps = args.warmup + args.steps
    short = min(args.warmup, PROBE_WARMUP) + min(args.steps, PROBE_STEPS)
    parts: dict[str, float] = {}
    allreduce = 0.0
    for rate in args.rates:
        label = netns.format_rate(rate)
        link = next((x for x in prev.get("links", []) if x["bandwidth"] == label and x.get("allreduce")), None)
        a = link["allreduce"]["seconds_per_op"] if link else 1.0
        allreduce += STARTUP_S + (1 + (1 if args.quick else 3)) * a  # one warm-up op, then the timed ones
    parts["all-reduce"] = allreduce
    shaped_grid = [r for r in args.grid_rates if r is not None]
    if shaped_grid and not args.batch_list:
        parts["calibration"] = sum(
            STARTUP_S + short * step_estimate(prev, "unshaped", b, "compute_only") for b in CALIBRATION_BATCHES
        )
    for rate in args.grid_rates:
        label = netns.format_rate(rate)
        if args.batch_list:
            batches = list(args.batch_list)
        elif rate is None:
            batches = [args.batch_size]
        else:
            batches = [previous_batch(prev, label, s) or args.batch_size for s in args.setting_list]
        total = 0.0
        for batch in batches:
            if rate is not None and not args.batch_list and "ssgd" in names:
                total += STARTUP_S + short * step_estimate(prev, label, batch, "ssgd")  # the batch probe
            for _, name in interleave(names, args.repeats):
                total += STARTUP_S + run_steps * step_estimate(prev, label, batch, name)
        parts[f"throughput {label}"] = total
    return parts


def measure(
    args: argparse.Namespace, shaped: netns.ShapedLink, runner: Runner, out: dict[str, Any], write: Write
) -> None:
    """All-reduce per link, calibration, batch choice and the interleaved rounds; ``write`` after each link."""
    names = strategy_list(args.strategies)
    common = ["--warmup", str(args.warmup), "--steps", str(args.steps), *(["--cpu-split"] if args.cpu_split else [])]
    short = ["--warmup", str(min(args.warmup, PROBE_WARMUP)), "--steps", str(min(args.steps, PROBE_STEPS))]

    def throughput(
        rate: int | None, batch: int, name: str, role: str = "compare", round_: int | None = None
    ) -> dict[str, Any]:
        entry: dict[str, Any] = {
            "bandwidth": netns.format_rate(rate),
            "bps": rate,
            "batch_size": batch,
            "strategy": name,
            "role": role,  # "calibration" and "probe" runs are not compared in the report
        }
        if round_ is not None:
            entry["round"] = round_
        t0 = time.monotonic()
        try:
            steps = common if role == "compare" else short
            entry["ranks"] = runner.run("throughput", ["--strategy", name, "--batch-size", str(batch), *steps])
            entry["status"] = "ok"
            sps = sum(r["samples_per_s"] for r in entry["ranks"])
            where = "" if round_ is None else f" round {round_ + 1}/{args.repeats}"
            log(f"  {name:18s} B={batch:<4d} {sps:8.1f} samples/s ({time.monotonic() - t0:.0f} s){where}")
        except RunFailed as e:
            entry.update(status="failed", error=str(e))
            log(f"  {name}: FAILED ({str(e).splitlines()[0]})")
        out["throughput"].append(entry)
        return entry

    nbytes = resnet18_grad_bytes()
    if not args.batch_list and any(r is not None for r in args.grid_rates):  # calibrate the compute-only step
        shaped.shape(None)
        for batch in CALIBRATION_BATCHES:
            throughput(None, batch, "compute_only", role="calibration")
        pts = [
            (e["batch_size"], max(r["step_s"] for r in e["ranks"]))
            for e in out["throughput"]
            if e["role"] == "calibration" and e["status"] == "ok"
        ]
        if len(pts) == 2:
            (b1, t1), (b2, t2) = pts
            slope = (t2 - t1) / (b2 - b1)
            out["calibration"] = {"points": pts, "a": t1 - slope * b1, "b": slope}
    for rate in args.rates:
        shaped.shape(rate)
        label = netns.format_rate(rate)
        log(f"link {label}: all-reduce of {nbytes / 1e6:.1f} MB")
        try:
            ranks = runner.run("allreduce", ["--nbytes", str(nbytes), "--reps", "1" if args.quick else "3"])
            link = {"bandwidth": label, "bps": rate, "allreduce": max(ranks, key=lambda r: r["seconds_per_op"])}
        except RunFailed as e:
            link = {"bandwidth": label, "bps": rate, "allreduce": None, "error": str(e)}
        out["links"].append(link)
        if rate not in args.grid_rates:
            log(f"link {label}: all-reduce only (not in --throughput-bandwidths)")
            continue
        batches: dict[str, int] = {}
        if args.batch_list:
            batches = {f"batch {b}": b for b in args.batch_list}
        elif rate is None or link["allreduce"] is None or "calibration" not in out:
            batches = {"default": args.batch_size}
        else:
            cal = out["calibration"]
            chosen = choose_batches(cal["a"], cal["b"], link["allreduce"]["seconds_per_op"])
            batches = {s: chosen[s] for s in args.setting_list}
            if "ssgd" in names:

                def probe(batch: int, rate: int | None = rate) -> dict[str, Any]:
                    return throughput(rate, batch, "ssgd", role="probe")

                link["batch_choice"] = refine_batches(batches, cal, probe)
                batches = {k: v["final"] for k, v in link["batch_choice"].items()}
        link["batches"] = batches
        log(f"link {label}: batches {batches}, {args.repeats} interleaved rounds of {len(names)} strategies")
        for batch in sorted(set(batches.values())):
            for round_, name in interleave(names, args.repeats):
                throughput(rate, batch, name, round_=round_)
        write(args, out)
