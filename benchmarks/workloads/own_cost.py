"""Phase ``own_cost``: each strategy's own cost, with communication made free.

Every strategy that takes a ``comm_hook`` runs with :class:`FreeHook`, a :class:`CommHook` that
completes at once with this rank's own values: no collective, no wire, no gloo thread. What is left
above the compute-only bound (:class:`benchmarks.base.baselines.ComputeOnlyStrategy`: the same model,
DDP wrapper and ranks, no communication at all) is the algorithm's own work: its copies, its second
update, the hook's copy, its Python::

    own cost = step(strategy, free comm) / step(compute_only) - 1        (target: <= 5 %)

ResNet-18 (torchvision, 10 classes), random CIFAR-shaped batches of 32, SGD lr 0.01 momentum 0.9,
one thread per rank, 2 ranks on the unshaped link. One process pair runs every cell: each round fits
``compute_only`` between every two strategies (C A C B C ... C), each fit with its own warm-up
before its timed steps, so start-up is paid once and each strategy is compared with the bound fits
just before and after it (their mean): a slow drift of the machine over a round cancels. A fit's
step time is the median over its windows of H = ``sync_every`` steps of the window's mean step
(24 timed steps: 6 windows): a periodic rule pays its synchronisation once per window, and a burst
of other load on the shared machine spoils one window, not the figure. A cell's figure is the median
over the rounds, with min and max.

The same phase times every rule's own work in isolation (:mod:`benchmarks.workloads.own_work`: the update
rule alone, no forward or backward, in ms and whole-model passes), which says *why* a cell costs
what it does.

Not measured here: ``sasgd`` and ``asgd`` take no ``comm_hook`` (their RPC parameter server is the
communication; nothing can make it free without removing the algorithm), and ``ssgd`` without a
hook runs DDP's own C++ all-reduce, which with communication free *is* the compute-only bound;
``ssgd`` here is its custom-hook path (:class:`~lightning_delayed.comm.hooks.DDPGradientHook`).

Every strategy runs with ``broadcast_buffers=False``, as the bound does: ``ssgd`` and ``odsgd``
would otherwise broadcast the BatchNorm buffers in every forward.

Each cell also records the CPU seconds per step of the main thread, gloo's threads and the rest
(:mod:`benchmarks.base.cputime`); the main thread's excess over ``compute_only`` is the algorithm's.

Standalone::

    python -m benchmarks.own_cost                       # default grid, prints and writes the JSON
    python -m benchmarks.own_cost --own-cost-steps 8 --own-cost-repeats 1 --own-cost-strategies odsgd
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import statistics
import sys
import time
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from benchmarks.base.free_hook import FreeHook
from benchmarks.base.launch import Runner
from benchmarks.base.phase import Phase
from benchmarks.workloads.own_work import table as own_work_table

if TYPE_CHECKING:
    from collections.abc import Sequence

    from benchmarks.base import netns

NAME = "own_cost"
TARGET = 0.05
"""Own cost target: at most 5 % of the compute-only step."""
BOUND = "compute_only"
PAIR_TIMEOUT_S = 1800.0
NUM_CLASSES = 10


# ---------------------------------------------------------------------------------- statistics


def cell_stats(values: Sequence[float]) -> dict[str, float]:
    """Median, min and max of one cell's per-round values."""
    if not values:
        raise ValueError("a cell needs at least one value")
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def bracketed(fits: Sequence[tuple[str, float]], bound: str = BOUND) -> dict[str, tuple[float, float]]:
    """One round's fits in run order -> ``{name: (value, bound value)}``.

    A strategy's bound value is the mean of the ``bound`` fits just before and just after it (the
    one there is at either end); ``bound`` itself maps to the mean of all its fits of the round.
    """
    values = [v for n, v in fits if n == bound]
    if not values:
        return {}
    out: dict[str, tuple[float, float]] = {bound: (statistics.fmean(values),) * 2}
    for j, (name, value) in enumerate(fits):
        if name == bound:
            continue
        before = next((v for n, v in reversed(fits[:j]) if n == bound), None)
        after = next((v for n, v in fits[j + 1 :] if n == bound), None)
        out[name] = (value, statistics.fmean(v for v in (before, after) if v is not None))
    return out


def own_costs(rounds: Sequence[dict[str, tuple[float, float]]], name: str) -> list[float]:
    """``step(name) / step(bound beside it) - 1`` for every round that measured ``name`` (:func:`bracketed`)."""
    return [r[name][0] / r[name][1] - 1 for r in rounds if name in r and r[name][1] > 0]


def summarise(
    rounds: Sequence[dict[str, tuple[float, float]]], names: Sequence[str], target: float = TARGET
) -> dict[str, Any]:
    """Per strategy: step times and own cost (median and min-max over rounds), and whether the target is met.

    ``rounds``: one :func:`bracketed` dict per round.
    """
    cells: dict[str, Any] = {}
    for name in names:
        steps = [r[name][0] for r in rounds if name in r]
        if not steps:
            continue
        cell: dict[str, Any] = {"step_s": cell_stats(steps)}
        if name != BOUND:
            cell["bound_s"] = cell_stats([r[name][1] for r in rounds if name in r])
            costs = own_costs(rounds, name)
            if costs:
                cell["own_cost"] = cell_stats(costs)
                cell["target_met"] = cell["own_cost"]["median"] <= target
        cells[name] = cell
    return cells


def mean_over_ranks(per_rank: Sequence[dict[str, Any]], cpu: bool = False) -> list[list[tuple[str, float]]]:
    """The rounds of every rank merged, fit by fit in run order: each fit's step time (``cpu``: CPU
    seconds per step of all its threads) is the mean over the ranks."""

    def value(fit: dict[str, Any]) -> float:
        return float(sum(fit["cpu_s_per_step"].values())) if cpu else float(fit["step_s"])

    merged: list[list[tuple[str, float]]] = []
    for round_idx, fits in enumerate(per_rank[0]["rounds"]):
        merged.append(
            [
                (fit["name"], statistics.fmean(value(r["rounds"][round_idx][j]) for r in per_rank))
                for j, fit in enumerate(fits)
            ]
        )
    return merged


def window_step_s(ends: Sequence[float], window: int) -> float:
    """Median over consecutive windows of ``window`` steps of the window's mean step time.

    ``ends``: the clock at the start of the timed steps, then at the end of each timed step.
    """
    steps = len(ends) - 1
    if steps < window or steps % window:
        raise ValueError(f"the timed steps ({steps}) must be a positive multiple of the window ({window})")
    return statistics.median((ends[i + window] - ends[i]) / window for i in range(0, steps, window))


# ---------------------------------------------------------------------------------- rank side


def hooked_strategies() -> list[str]:
    """Our strategies that take a ``comm_hook`` (those whose constructor accepts a :class:`FreeHook`)."""
    from benchmarks.base.baselines import our_strategies

    names = []
    for name, cls in our_strategies().items():
        try:
            cls(comm_hook=FreeHook())
        except (TypeError, ValueError):
            continue
        names.append(name)
    return names


def build(name: str) -> Any:
    from benchmarks.base.baselines import SYNC_EVERY, ComputeOnlyStrategy, our_strategies

    if name == BOUND:
        return ComputeOnlyStrategy()
    cls = our_strategies()[name]
    # No buffer broadcast either (ssgd and odsgd keep DDP's default): nothing at all is communicated.
    kwargs: dict[str, Any] = {"comm_hook": FreeHook(), "broadcast_buffers": False}
    if "sync_every" in inspect.signature(cls.__init__).parameters:
        kwargs["sync_every"] = SYNC_EVERY
    return cls(**kwargs)


def fit_once(name: str, args: argparse.Namespace, rank: int) -> dict[str, Any]:
    """One fit of ``name``: ``warmup`` untimed steps, then ``steps`` timed; step time and CPU split."""
    import lightning.pytorch as pl

    from benchmarks.base import cputime
    from benchmarks.base.baselines import SYNC_EVERY
    from benchmarks.base.rank import bench_trainer, resnet_task

    torch.manual_seed(0)
    total = args.warmup + args.steps
    pid, hz = os.getpid(), cputime.clock_ticks()

    class Clock(pl.Callback):
        """The wall clock at every step end from the warm-up's on; thread CPU snapshots at the first and last."""

        def __init__(self) -> None:
            self.ends: list[float] = []
            self.cpu: dict[int, cputime.Snapshot] = {}

        def on_train_batch_end(self, trainer: pl.Trainer, *a: Any) -> None:
            if trainer.global_step >= args.warmup:
                self.ends.append(time.perf_counter())
            if trainer.global_step in (args.warmup, total):
                self.cpu[trainer.global_step] = cputime.snapshot(pid)

    clock = Clock()
    trainer = bench_trainer(build(name), max_steps=total, callbacks=[clock])
    trainer.fit(*resnet_task(args.batch_size, total, rank))
    cpu = {k: v / args.steps for k, v in cputime.split(clock.cpu[args.warmup], clock.cpu[total], pid, hz).items()}
    return {
        "name": name,
        "step_s": window_step_s(clock.ends, SYNC_EVERY),
        "mean_step_s": (clock.ends[-1] - clock.ends[0]) / args.steps,
        "cpu_s_per_step": cpu,
    }


def task_own_cost(args: argparse.Namespace) -> dict[str, Any]:
    from benchmarks.base.rank import FitEnvironment, rank_and_world

    rank, _ = rank_and_world()
    # C A C B C ... C: every strategy between two compute-only fits of the same round.
    order = [BOUND]
    for name in args.strategies.split(","):
        order += [name, BOUND]
    env = FitEnvironment()  # every fit must find what the first found
    rounds = []
    for _ in range(args.repeats):
        fits = []
        for name in order:
            env.restore()
            fits.append(fit_once(name, args, rank))
        rounds.append(fits)
    return {"rounds": rounds, "steps": args.steps, "warmup": args.warmup, "batch_size": args.batch_size}


def run_worker(args: argparse.Namespace) -> None:
    import torch.distributed as dist

    from benchmarks.base.rank import rank_and_world, versions

    warnings.filterwarnings("ignore")
    import lightning_delayed  # noqa: F401  (registers the strategy names)

    torch.set_num_threads(1)
    rank, world = rank_and_world()
    result = task_own_cost(args)
    result.update(task=NAME, rank=rank, world_size=world, versions=versions())
    Path(f"{args.result}.rank{rank}.json").write_text(json.dumps(result, indent=1))
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


# ---------------------------------------------------------------------------------- phase interface


FIT_OVERHEAD_S = 4.0
"""A fit's Trainer set-up and teardown in the worker, on top of its steps (measured: about 4 s)."""
STEP_S = 0.2
"""A free-communication ResNet-18 step at batch 32 on one thread (the compute-only bound, about 0.18 s)."""
OWN_WORK_S = 60.0
""":mod:`benchmarks.workloads.own_work` for every rule: 3 rounds of 9 timings on ResNet-18."""
SPLIT_RUN_S = 25.0
"""One real-link throughput run of the CPU split: process start-up, set-up and its steps."""


def estimate_s(args: argparse.Namespace) -> float:
    """The phase's run time on a quiet machine (s): every bracketed fit, the isolated own work, and
    the CPU split for ``ssgd`` and (at most) every strategy."""
    n = len(args.own_cost_strategies.split(",")) if args.own_cost_strategies else 8
    fits = args.own_cost_repeats * (2 * n + 1)
    fit_s = FIT_OVERHEAD_S + STEP_S * (args.own_cost_warmup + args.own_cost_steps)
    split = {"none": 0, "missed": n + 1, "all": n + 1}[args.own_cost_split]
    return fits * fit_s + OWN_WORK_S + split * SPLIT_RUN_S


def add_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("own_cost phase (each strategy with communication made free)")
    g.add_argument(
        "--own-cost-strategies", default="", help="comma-separated (default: every strategy with a comm_hook)"
    )
    g.add_argument("--own-cost-steps", type=int, default=24, help="timed steps per fit (a multiple of sync_every)")
    g.add_argument("--own-cost-warmup", type=int, default=4, help="untimed steps before each fit's timed steps")
    g.add_argument("--own-cost-repeats", type=int, default=3, help="interleaved rounds")
    g.add_argument("--own-cost-batch-size", type=int, default=32, help="batch size per rank")
    g.add_argument(
        "--own-cost-split",
        choices=("missed", "none", "all"),
        default="missed",
        help="also run the real unshaped link (throughput task, --cpu-split) for ssgd and these strategies: "
        "those that missed the target (default), none, or all",
    )


def measure(args: argparse.Namespace, shaped: netns.ShapedLink, runner: Runner, out: dict[str, Any]) -> None:
    """Fill ``out["own_cost"]``: per strategy, step times and own cost over interleaved rounds (unshaped link)."""
    strategies = args.own_cost_strategies.split(",") if args.own_cost_strategies else hooked_strategies()
    shaped.shape(None)
    extra = [
        "--strategies",
        ",".join(strategies),
        "--steps",
        str(args.own_cost_steps),
        "--warmup",
        str(args.own_cost_warmup),
        "--repeats",
        str(args.own_cost_repeats),
        "--batch-size",
        str(args.own_cost_batch_size),
    ]
    start = time.monotonic()
    # One process pair runs every cell (about 5 minutes on a quiet machine): more than one run's usual timeout.
    whole = Runner(runner.link, runner.workdir, max(runner.timeout, PAIR_TIMEOUT_S))
    per_rank = whole.run(NAME, extra, world=2, module="benchmarks.workloads.own_cost")
    names = [BOUND, *strategies]
    rounds = [bracketed(fits) for fits in mean_over_ranks(per_rank)]
    cpu_rounds = [bracketed(fits) for fits in mean_over_ranks(per_rank, cpu=True)]
    cpu = {
        n: {
            k: statistics.median(
                fit["cpu_s_per_step"][k] for r in per_rank for fits in r["rounds"] for fit in fits if fit["name"] == n
            )
            for k in ("main", "gloo", "other")
        }
        for n in names
    }
    out[NAME] = {
        "strategies": strategies,
        "not_measured": {
            n: "no comm_hook: its RPC parameter server is the communication"
            for n in ("sasgd", "asgd")
            if n not in strategies
        },
        "steps": args.own_cost_steps,
        "warmup": args.own_cost_warmup,
        "repeats": args.own_cost_repeats,
        "batch_size": args.own_cost_batch_size,
        "target": TARGET,
        "rounds": rounds,
        "cells": summarise(rounds, names),
        # The same ratio on CPU seconds (every thread of the rank): what a busy machine disturbs least.
        "cpu_rounds": cpu_rounds,
        "cpu_cells": summarise(cpu_rounds, names),
        "cpu_s_per_step": cpu,
        "own_work": own_work_isolated(strategies),
        "seconds": time.monotonic() - start,
    }
    cells = out[NAME]["cells"]
    if args.own_cost_split == "none":
        return
    split_names = [
        n for n in strategies if args.own_cost_split == "all" or not cells.get(n, {}).get("target_met", True)
    ]
    if not split_names:
        return
    out[NAME]["unshaped_split"] = unshaped_split(args, runner, ["ssgd", *[n for n in split_names if n != "ssgd"]])
    out[NAME]["seconds"] = time.monotonic() - start


def own_cost_advice(d: dict[str, Any]) -> list[str]:
    """One sentence per strategy that missed the own-cost target: when not to use it, from its own work.

    The own work is the price of hiding communication: a fixed number of passes over the weights per
    step (a periodic rule's, per H steps), independent of the batch. A strategy cannot win where it
    has less communication to hide than that: where ``ssgd``'s step is less than the own work longer
    than the compute-only step.
    """
    from benchmarks.workloads.own_work import PER_STEP

    work = d.get("own_work") or {}
    out = []
    for name in d.get("strategies", []):
        cell, measured = d.get("cells", {}).get(name, {}), work.get("cells", {}).get(name)
        if cell.get("target_met", True) or not measured:
            continue
        own, passes = 1000 * measured["own_s"]["median"], measured["passes"]
        if name == "ssgd":
            out.append(
                f"`ssgd` with a custom `comm_hook` or `compression` (its hook path) pays {passes:.1f} whole-model "
                f"passes per step ({own:.0f} ms here): the hook's copy and the copy of the mean into `.grad`. Without "
                "either it runs DDP's own reduction and pays none: keep the default unless the hook saves more "
                "communication time than that."
            )
            continue
        text = (
            f"`{name}`: its own work is {passes:.1f} whole-model passes per step ({own:.0f} ms here); do not use it "
            f"where `ssgd`'s step is less than about {own:.0f} ms longer than the compute-only step: there is less "
            "communication to hide than it costs. Its share falls as the step grows (larger batches, more compute "
            "per weight)"
        )
        periodic = f" and as `sync_every` grows (paid once per {work['sync_every']} steps here)."
        text += "." if name in PER_STEP else periodic
        out.append(text)
    return out


def own_work_isolated(strategies: Sequence[str]) -> dict[str, Any]:
    """:mod:`benchmarks.workloads.own_work` for the known rules of ``strategies``, in its own process (one thread)."""
    import subprocess
    import tempfile

    from benchmarks.workloads.own_work import RULES

    rules = [n for n in strategies if n in RULES]
    if not rules:
        return {}
    with tempfile.TemporaryDirectory(prefix="ldbench-own-work-") as tmp:
        path = Path(tmp) / "own_work.json"
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        cmd = [sys.executable, "-m", "benchmarks.workloads.own_work", "--rules", ",".join(rules), "--json", str(path)]
        subprocess.run(cmd, check=True, env=env, timeout=PAIR_TIMEOUT_S)
        result: dict[str, Any] = json.loads(path.read_text())
        return result


def unshaped_split(args: argparse.Namespace, runner: Runner, names: Sequence[str]) -> dict[str, Any]:
    """Real communication on the unshaped link: step time and per-thread CPU per step, mean over the ranks."""
    result: dict[str, Any] = {}
    for name in names:
        extra = ["--strategy", name, "--steps", str(args.own_cost_steps), "--warmup", str(args.own_cost_warmup)]
        extra += ["--batch-size", str(args.own_cost_batch_size), "--cpu-split"]
        per_rank = runner.run("throughput", extra, world=2)
        result[name] = {
            "step_s": statistics.fmean(r["step_s"] for r in per_rank),
            "cpu_s_per_step": {
                k: statistics.fmean(r["cpu_split_s_per_step"][k] for r in per_rank) for k in ("main", "gloo", "other")
            },
        }
    return result


def _pct(x: float) -> str:
    return f"{100 * x:+.1f} %"


def _range(stats: dict[str, float]) -> str:
    return f"{_pct(stats['median'])} [{_pct(stats['min'])} .. {_pct(stats['max'])}]"


def section(data: dict[str, Any], img_dir: Path) -> str:
    """Markdown: the own-cost table, and the per-thread CPU split of every cell."""
    d = data.get(NAME)
    if not d:
        return ""
    cells, bound = d["cells"], d["cells"][BOUND]["step_s"]
    lines = [
        "## The algorithm's own cost (communication made free)",
        "",
        f"Every strategy that takes a `comm_hook` ran with `FreeHook` (`benchmarks/own_cost.py`): the average "
        f"completes at once with the rank's own values, so nothing crosses the network. ResNet-18, batch "
        f"{d['batch_size']}, one thread, 2 ranks; {d['warmup']} warm-up and {d['steps']} timed steps per fit; "
        f"{d['repeats']} rounds, each fitting {BOUND} between every two strategies ({BOUND} A {BOUND} B ... "
        f"{BOUND}). A fit's step is the median over its windows of H steps of the window's mean step. Own cost = "
        f"step / mean of the two {BOUND} fits beside it - 1: median [min-max] over the rounds. "
        f"Target: <= {100 * d['target']:.0f} %.",
        "",
        "| strategy | compute-only step beside it (ms) | step, free comm (ms) | own cost median [min-max] | target met "
        "| own cost in CPU time median [min-max] |",
        "|---|---:|---:|---:|:---:|---:|",
    ]
    cpu_cells = d.get("cpu_cells", {})
    for name in d["strategies"]:
        c = cells.get(name)
        if c is None or "own_cost" not in c:
            continue
        oc = c["own_cost"]
        beside = c.get("bound_s", bound)
        lines.append(
            f"| `{name}` | {1000 * beside['median']:.0f} | {1000 * c['step_s']['median']:.0f} "
            f"| {_range(oc)} | {'yes' if c['target_met'] else 'no'} "
            f"| {_range(cpu_cells[name]['own_cost']) if 'own_cost' in cpu_cells.get(name, {}) else ''} |"
        )
    for name, why in d.get("not_measured", {}).items():
        lines.append(f"| `{name}` | | | not measured: {why} | | |")
    lines += [
        "",
        "The last column is the same ratio on the CPU seconds of all the rank's threads: it does not count "
        "time spent waiting for a core, so it is the steadier figure on a shared machine.",
        "",
        "`ssgd` here is its custom-hook path (`DDPGradientHook`); by default it runs DDP's own all-reduce, "
        "which with communication made free is the compute-only bound itself.",
        "",
        "CPU seconds per step by thread (median over ranks and rounds, from `/proc/<pid>/task/*/stat`): the main "
        "thread runs forward, backward, the optimizer and the algorithm; its excess over compute-only is the "
        "algorithm's own work.",
        "",
        "| strategy | main (ms) | of which algorithm (ms) | gloo threads (ms) | other threads (ms) |",
        "|---|---:|---:|---:|---:|",
    ]
    base = d["cpu_s_per_step"][BOUND]["main"]
    for name in [BOUND, *d["strategies"]]:
        c = d["cpu_s_per_step"].get(name)
        if c is None:
            continue
        algo = "" if name == BOUND else f"{1000 * (c['main'] - base):+.0f}"
        lines.append(
            f"| `{name}` | {1000 * c['main']:.0f} | {algo} | {1000 * c['gloo']:.0f} | {1000 * c['other']:.0f} |"
        )
    work = d.get("own_work")
    if work:
        lines += [
            "",
            "Each rule's own work in isolation (`benchmarks/own_work.py`): the core rule with `FreeHook`, "
            "driven through its optimizer-step hooks on ResNet-18's weights, minus the bare optimizer step; "
            "no forward, backward or second rank, so none of their noise. A whole-model pass is one "
            f"elementwise `torch.add` over the 11.2 M weights: {1000 * work['pass_s']:.1f} ms on one thread. "
            f"Median [min-max] of {work['rounds']} interleaved rounds of {work['periods']} periods of "
            f"H = {work['sync_every']} steps.",
            "",
            *own_work_table(work, bound["median"]),
            "",
            "The target allows "
            f"{d['target'] * bound['median'] / work['pass_s']:.1f} whole-model passes per step on this machine. "
            "A gradient rule's hook copies the gradient out of DDP's bucket every step (the contract: "
            "the average is of a private copy); `odsgd` then needs its local step "
            "`w <- W - lr * g`, two passes with the specified roundings (a one-pass `torch.add(W, g, alpha=-lr)` "
            "rounds once, FMA, and would not match the rule bit for bit). A periodic rule pays a snapshot, "
            "the hook's copy and its merge once per H steps; DiLoCo adds the outer Nesterov step. "
            "What is left is passes over memory on one core, not Python: none of it scales with the batch, "
            "so its share shrinks as the step grows (on a GPU, a pass over these 45 MB at 2-3 TB/s of memory "
            "bandwidth is about 40 microseconds: arithmetic, not measured here).",
        ]
        avoid = own_cost_advice(d)
        if avoid:
            lines += ["", "When not to use a strategy that missed the target, from its own work:", ""]
            lines += [f"- {sentence}" for sentence in avoid]
    split = d.get("unshaped_split")
    if split:
        ssgd = split.get("ssgd", {}).get("step_s")
        lines += [
            "",
            "Where the target is missed: the same strategies with real communication on the unshaped link "
            "(the default all-reduce; one fit each), CPU seconds per step by thread. `ssgd` is DDP's own.",
            "",
            "| strategy | step (ms) | vs `ssgd` | main (ms) | gloo threads (ms) | other threads (ms) |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        for name, c in split.items():
            ratio = f"{ssgd / c['step_s']:.2f}x" if ssgd else ""
            cpu_ms = [f"{1000 * c['cpu_s_per_step'][k]:.0f}" for k in ("main", "gloo", "other")]
            lines.append(f"| `{name}` | {1000 * c['step_s']:.0f} | {ratio} | {' | '.join(cpu_ms)} |")
    return "\n".join(lines) + "\n"


PHASE = Phase(
    name=NAME, add_args=add_args, measure=measure, section=section, estimate_s=estimate_s, writes=("own_cost",)
)
"""The phase as :mod:`benchmarks.run` runs it and the report renders it."""


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.own_cost", description=__doc__.split("\n")[0])
    w = p.add_argument_group("worker (one rank, started by the phase)")
    w.add_argument("--worker", action="store_true")
    w.add_argument("--task", choices=(NAME,))
    w.add_argument("--result")
    w.add_argument("--strategies", default="")
    w.add_argument("--steps", type=int, default=24)
    w.add_argument("--warmup", type=int, default=4)
    w.add_argument("--repeats", type=int, default=3)
    w.add_argument("--batch-size", type=int, default=32)
    add_args(p)
    p.add_argument(
        "--out",
        type=Path,
        default=Path("benchmarks/results/own_cost"),
        help="where the JSON goes (not benchmarks/results itself: the report reads the latest JSON there)",
    )
    p.add_argument("--timeout", type=float, default=1800, help="seconds for the whole process pair")
    args = p.parse_args(argv)
    if args.worker:
        run_worker(args)
        return 0
    import tempfile

    from benchmarks.base import netns

    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="ldbench-") as tmp:
        ok, why = netns.can_emulate()
        if ok:
            with netns.emulated_link() as shaped:
                measure(args, shaped, Runner(shaped.link, Path(tmp), args.timeout), out)
        else:
            print(f"NOTE: {why}; on loopback", file=sys.stderr)
            measure(
                args,
                netns.ShapedLink(netns.LOOPBACK, netns.run_command),
                Runner(netns.LOOPBACK, Path(tmp), args.timeout),
                out,
            )
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"own_cost-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(out, indent=1))
    print(section(out, args.out))
    print(f"-> {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
