"""The phase's measurement on the runner's side: link sweeps, gradient-ready profiles, the N-rank cluster."""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from benchmarks.base import schema
from benchmarks.base.launch import log
from benchmarks.base.phase import Options
from benchmarks.workloads.scaling.cells import cell_stats
from benchmarks.workloads.scaling.fit import fit_line, fit_link
from benchmarks.workloads.scaling.worker import (
    MLP_DEPTH,
    MLP_IN,
    MLP_WIDTH,
    SWEEP_SIZES,
    measure_profiles,
)

if TYPE_CHECKING:
    from collections.abc import Sequence

    from benchmarks.base import netns
    from benchmarks.base.launch import Runner


DEFAULT_BANDWIDTHS = "unshaped,1gbit,200mbit"
WORKER = "benchmarks.workloads.scaling.cli"
"""The module the ranks run (``--worker``)."""
CLUSTER_STRATEGIES = "compute_only,ssgd,odsgd,local_sgd,dasgd,cocodsgd"
"""One of each kind of hiding (none, DDP's, one step, blocking 1/H, d steps, whole period), in the 4-minute budget."""


def add_args(p: argparse.ArgumentParser) -> None:
    opt = Options(p, "scaling", "latency-bandwidth model: fitted, validated, projected")
    opt(
        "bandwidths",
        None,
        f"links whose all-reduce is swept (default: the runner's --bandwidths, else {DEFAULT_BANDWIDTHS})",
    )
    opt("reps", 3, "timed all-reduces per message size")
    opt("world", 4, "ranks of the validation cluster (0: skip it)")
    opt("cluster-bandwidth", "500mbit", "link rate of each cluster node")
    opt("cluster-strategies", CLUSTER_STRATEGIES, "strategies run on the cluster")
    opt("batch-size", 64, "MLP batch per rank on the cluster")
    opt("steps", 12, "timed MLP steps per cluster run (after 2 warm-up)")
    opt("repeats", 3, "interleaved rounds of the cluster strategies")


def estimate_s(args: argparse.Namespace) -> float:
    """The phase's run time on a quiet machine (s): ~10 s per 2-rank sweep; the cluster's start-up and
    sweep ~35 s, then each run ~1.5 s of Trainer set-up and ~0.2 s per MLP step (4 ranks on 2 cores)."""
    links = len((args.scaling_bandwidths or getattr(args, "bandwidths", None) or DEFAULT_BANDWIDTHS).split(","))
    runs = args.scaling_repeats * len([s for s in args.scaling_cluster_strategies.split(",") if s.strip()])
    cluster = 35.0 + runs * (1.5 + 0.2 * (2 + args.scaling_steps)) if args.scaling_world >= 2 else 0.0
    return 10.0 * links + cluster


def _sweep(runner: Runner, world: int, reps: int) -> dict[str, Any]:
    sizes = ",".join(str(s) for s in SWEEP_SIZES)
    ranks = runner.run("sweep", ["--sizes", sizes, "--reps", str(reps)], world=world, module=WORKER)
    # the slowest rank's time per size: a collective ends for the job when its last rank is done
    points = [[b, world, max(r["points"][i][2] for r in ranks)] for i, (b, _, _) in enumerate(ranks[0]["points"])]
    return {"world": world, "points": points, "fit": fit_link([tuple(p) for p in points])}


def load_base(own: Path) -> dict[str, Any]:
    """The throughput cells, links, calibration and meta of the newest dated results JSON (not ``own``, this run's)."""
    from benchmarks.base.rank import REPO

    try:
        path = schema.latest(REPO / "benchmarks" / "results", exclude=own.name)
    except SystemExit:
        return {"throughput": [], "links": [], "calibration": None, "meta": {}, "source": None}
    d = schema.load(path)
    keep = {k: d.get("meta", {}).get(k) for k in ("sync_every", "strategy_kwargs", "date", "command")}
    return {"throughput": d.get("throughput", []), "links": d.get("links", []), "calibration": d.get("calibration"),
            "meta": keep, "source": str(path.relative_to(REPO))}  # fmt: skip


def measure(args: argparse.Namespace, shaped: netns.ShapedLink, runner: Runner, out: dict[str, Any]) -> None:
    """Link sweeps on the 2-rank link (each bandwidth), then the 4-rank cluster run (own namespaces)."""
    from benchmarks.base import netns
    from benchmarks.base.launch import RunFailed
    from benchmarks.base.launch import Runner as RunnerCls

    res: dict[str, Any] = out.setdefault("scaling", {"links": []})
    if not out.get("throughput"):  # no throughput phase in this run: validate on the newest dated results JSON
        res["base"] = load_base(Path(out.get("meta", {}).get("json_path") or ""))
        log(f"  2-rank validation cells from {res['base']['source']}")
    for text in (args.scaling_bandwidths or getattr(args, "bandwidths", None) or DEFAULT_BANDWIDTHS).split(","):
        rate = netns.parse_rate(text.strip())
        if rate is not None and not shaped.link.emulated:
            continue
        shaped.shape(rate)
        t0 = time.monotonic()
        try:
            link = {"bandwidth": netns.format_rate(rate), "bps": rate, **_sweep(runner, 2, args.scaling_reps)}
            f = link["fit"]
            log(
                f"  sweep {link['bandwidth']}: alpha {f['latency_s'] * 1e6:.0f} µs, "
                f"beta {f['bytes_per_s'] / 1e6:.1f} MB/s ({time.monotonic() - t0:.0f} s)"
            )
        except (RunFailed, ValueError) as e:
            link = {"bandwidth": netns.format_rate(rate), "bps": rate, "error": str(e)}
            log(f"  sweep {link['bandwidth']}: FAILED {str(e).splitlines()[0]}")
        res["links"].append(link)
    t0 = time.monotonic()
    res["profiles"] = measure_profiles(args.scaling_batch_size)
    log(f"  gradient-ready profiles of ResNet-18 and the MLP ({time.monotonic() - t0:.0f} s)")
    if not (
        out.get("calibration") or (res.get("base") or {}).get("calibration")
    ):  # no throughput phase: two compute-only runs of the ResNet-18 worker
        shaped.shape(None)
        pts = []
        for batch in (16, 64):
            with_err = runner.run("throughput", ["--strategy", "compute_only", "--batch-size", str(batch)])
            pts.append((batch, max(r["step_s"] for r in with_err)))
        res["calibration"] = {"points": pts, **fit_line(pts)}
    if args.scaling_world >= 2 and shaped.link.emulated:
        try:
            res["cluster"] = _cluster(args, runner.workdir, RunnerCls, RunFailed)
        except (netns.NetnsError, RunFailed, ValueError) as e:  # the 2-rank results above still stand
            res["cluster"] = {"world": args.scaling_world, "error": str(e)}
            log(f"  {args.scaling_world}-rank cluster: FAILED {str(e).splitlines()[0]}")


def _cluster(args: argparse.Namespace, workdir: Path, runner_cls: Any, run_failed: Any) -> dict[str, Any]:
    import os

    from benchmarks.base import netns
    from benchmarks.base.baselines import SYNC_EVERY

    rate = netns.parse_rate(args.scaling_cluster_bandwidth)
    world = args.scaling_world
    c: dict[str, Any] = {"world": world, "cores": os.cpu_count(), "bandwidth": netns.format_rate(rate), "bps": rate,
                         "cells": [], "batch_size": args.scaling_batch_size, "sync_every": SYNC_EVERY,
                         "model": f"MLP {MLP_IN}-{'-'.join([str(MLP_WIDTH)] * MLP_DEPTH)}-10"}  # fmt: skip
    with netns.emulated_cluster(world) as cluster:
        cluster.shape(rate)
        runner = runner_cls(cluster.link, workdir, getattr(args, "timeout", 300.0))
        t0 = time.monotonic()
        sweep = _sweep(runner, world, args.scaling_reps)
        c.update(points=sweep["points"], fit=sweep["fit"])
        log(f"  {world}-rank sweep {c['bandwidth']}: beta {c['fit']['bytes_per_s'] / 1e6:.1f} MB/s, "
            f"alpha {c['fit']['latency_s'] * 1e6:.0f} µs ({time.monotonic() - t0:.0f} s)")  # fmt: skip
        names = [s.strip() for s in args.scaling_cluster_strategies.split(",") if s.strip()]
        extra = ["--strategy", ",".join(names), "--rounds", str(args.scaling_repeats),
                 "--batch-size", str(args.scaling_batch_size), "--steps", str(args.scaling_steps)]  # fmt: skip
        t0 = time.monotonic()
        try:
            ranks = runner.run("mlp", extra, world=world, module=WORKER)
        except run_failed as e:
            c["cells"] = [{"strategy": n, "status": "failed", "error": str(e)} for n in names]
            log(f"  {world} ranks: FAILED {str(e).splitlines()[0]}")
            return c
        c.update(model_bytes=ranks[0]["model_bytes"], param_bytes=ranks[0]["param_bytes"], repeats=args.scaling_repeats)
        c["cells"] = cluster_from_runs(ranks, names)
        for cell in c["cells"]:
            st = cell_stats(cell)
            log(f"  {world} ranks {cell['strategy']:18s} step median {st['median_s']:.3f} s "
                f"({st['min_s']:.3f}-{st['max_s']:.3f}, {st['n']} repeats)")  # fmt: skip
        log(f"  {world}-rank runs: {time.monotonic() - t0:.0f} s")
    return c


def cluster_from_runs(ranks: list[dict[str, Any]], names: Sequence[str]) -> list[dict[str, Any]]:
    """One cell per strategy from the ranks' interleaved runs: per round the slowest rank, then median/min/max."""
    cells = []
    for name in names:
        by_round: dict[int, float] = {}
        for r in ranks:
            for run in r["runs"]:
                if run["strategy"] == name:
                    by_round[run["round"]] = max(by_round.get(run["round"], 0.0), run["step_s"])
        reps = [by_round[k] for k in sorted(by_round)]
        if not reps:
            cells.append({"strategy": name, "status": "failed", "error": "no run"})
            continue
        cells.append(
            {"strategy": name, "status": "ok", "repeats_s": reps, "ranks": [{"step_s": statistics.median(reps)}]}
        )
    return cells
