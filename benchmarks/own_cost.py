"""Phase ``own_cost``: each strategy's own cost, with communication made free.

Every strategy that takes a ``comm_hook`` runs with :class:`FreeHook`, a :class:`CommHook` that
completes at once with this rank's own values: no collective, no wire, no gloo thread. What is left
above the compute-only bound (:class:`benchmarks.baselines.ComputeOnlyStrategy`: the same model,
DDP wrapper and ranks, no communication at all) is the algorithm's own work: its copies, its second
update, the hook's copy, its Python::

    own cost = step(strategy, free comm) / step(compute_only) - 1        (target: <= 5 %)

ResNet-18 (torchvision, 10 classes), random CIFAR-shaped batches of 32, SGD lr 0.01 momentum 0.9,
one thread per rank, 2 ranks on the unshaped link. One process pair runs every cell: each round
fits ``compute_only`` then every strategy in turn (A B C, A B C, ...), each fit with its own
warm-up before its timed steps, so start-up is paid once and every ratio compares cells of the
same round. A cell's figure is the median over the rounds, with min and max.

Not measured here: ``sasgd`` and ``asgd`` take no ``comm_hook`` (their RPC parameter server is the
communication; nothing can make it free without removing the algorithm), and ``ssgd`` without a
hook runs DDP's own C++ all-reduce, which with communication free *is* the compute-only bound;
``ssgd`` here is its custom-hook path (:class:`~lightning_delayed.comm.hooks.DDPGradientHook`).

Every strategy runs with ``broadcast_buffers=False``, as the bound does: ``ssgd`` and ``odsgd``
would otherwise broadcast the BatchNorm buffers in every forward.

Each cell also records the CPU seconds per step of the main thread, gloo's threads and the rest
(:mod:`benchmarks.cputime`); the main thread's excess over ``compute_only`` is the algorithm's.

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

from benchmarks.launch import Runner
from lightning_delayed.comm.buckets import Completed
from lightning_delayed.comm.communicator import CommHook

if TYPE_CHECKING:
    from collections.abc import Sequence

    from torch import Tensor

    from benchmarks import netns
    from lightning_delayed.comm.buckets import Pending

PHASE = "own_cost"
TARGET = 0.05
"""Own cost target: at most 5 % of the compute-only step."""
BOUND = "compute_only"
PAIR_TIMEOUT_S = 1800.0
NUM_CLASSES = 10


class FreeHook(CommHook):
    """Communication made free: ``launch`` completes at once with this rank's own values.

    The average of one contribution is that contribution (weighted or not), so the result is what
    an all-reduce would give if every rank held the same values. It returns *copies*: the contract
    lets the caller change its tensors as soon as ``launch`` returns (DDP reuses its bucket buffers,
    the optimizer steps the weights) and modify what ``wait()`` gives back, so handing out the
    inputs themselves would let an algorithm read its own later writes. One copy is also the least
    any hook keeping the contract pays (:class:`~lightning_delayed.comm.communicator.AllReduceHook`
    copies into its buckets), so the own cost measured with it counts that copy.

    Benchmark-only: with no collective the ranks drift apart, which no user wants.
    """

    def __init__(self) -> None:
        self.launches = 0

    def launch(
        self,
        tensors: Sequence[Tensor],
        *,
        weight: float | None = None,
        keys: Sequence[str] | None = None,
        what: str = "tensors",
    ) -> Pending:
        self.launches += 1
        with torch.no_grad():
            return Completed([t.detach().clone() for t in tensors])


# ---------------------------------------------------------------------------------- statistics


def cell_stats(values: Sequence[float]) -> dict[str, float]:
    """Median, min and max of one cell's per-round values."""
    if not values:
        raise ValueError("a cell needs at least one value")
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def own_costs(rounds: Sequence[dict[str, float]], name: str, bound: str = BOUND) -> list[float]:
    """``step(name) / step(bound) - 1`` for every round that measured both (same-round ratios)."""
    return [r[name] / r[bound] - 1 for r in rounds if name in r and bound in r and r[bound] > 0]


def summarise(rounds: Sequence[dict[str, float]], names: Sequence[str], target: float = TARGET) -> dict[str, Any]:
    """Per strategy: step times and own cost (median and min-max over rounds), and whether the target is met.

    ``rounds``: one dict per round, strategy name -> mean step seconds of that fit.
    """
    cells: dict[str, Any] = {}
    for name in names:
        steps = [r[name] for r in rounds if name in r]
        if not steps:
            continue
        cell: dict[str, Any] = {"step_s": cell_stats(steps)}
        if name != BOUND:
            costs = own_costs(rounds, name)
            if costs:
                cell["own_cost"] = cell_stats(costs)
                cell["target_met"] = cell["own_cost"]["median"] <= target
        cells[name] = cell
    return cells


def mean_over_ranks(per_rank: Sequence[dict[str, Any]], cpu: bool = False) -> list[dict[str, float]]:
    """The rounds of every rank merged: each cell's step time (``cpu``: CPU seconds per step of all its
    threads) is the mean over the ranks."""

    def value(cell: dict[str, Any]) -> float:
        return float(sum(cell["cpu_s_per_step"].values())) if cpu else float(cell["step_s"])

    merged: list[dict[str, float]] = []
    for round_idx in range(len(per_rank[0]["rounds"])):
        names = per_rank[0]["rounds"][round_idx]
        merged.append({n: statistics.fmean(value(r["rounds"][round_idx][n]) for r in per_rank) for n in names})
    return merged


# ---------------------------------------------------------------------------------- rank side


def hooked_strategies() -> list[str]:
    """Our strategies that take a ``comm_hook`` (those whose constructor accepts a :class:`FreeHook`)."""
    from benchmarks.baselines import our_strategies

    names = []
    for name, cls in our_strategies().items():
        try:
            cls(comm_hook=FreeHook())
        except (TypeError, ValueError):
            continue
        names.append(name)
    return names


def build(name: str) -> Any:
    from benchmarks.baselines import SYNC_EVERY, ComputeOnlyStrategy, our_strategies

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
    import torchvision
    from torch.utils.data import DataLoader, Dataset

    from benchmarks import cputime
    from benchmarks.worker import LR, MOMENTUM, _trainer_topology

    torch.manual_seed(0)
    total = args.warmup + args.steps
    pid, hz = os.getpid(), cputime.clock_ticks()

    class Batches(Dataset[tuple[torch.Tensor, torch.Tensor]]):
        def __init__(self) -> None:
            g = torch.Generator().manual_seed(1000 + rank)
            self.x = torch.randn(args.batch_size, 3, 32, 32, generator=g)
            self.y = torch.randint(0, NUM_CLASSES, (args.batch_size,), generator=g)

        def __len__(self) -> int:
            return total

        def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
            return self.x, self.y

    class ResNet(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = torchvision.models.resnet18(num_classes=NUM_CLASSES)

        def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
            x, y = batch
            return torch.nn.functional.cross_entropy(self.net(x), y)

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.SGD(self.parameters(), lr=LR, momentum=MOMENTUM)

    class Clock(pl.Callback):
        """Wall time and thread CPU snapshots at the end of the warm-up and of the last step."""

        def __init__(self) -> None:
            self.marks: dict[int, tuple[float, cputime.Snapshot]] = {}

        def on_train_batch_end(self, trainer: pl.Trainer, *a: Any) -> None:
            if trainer.global_step in (args.warmup, total):
                self.marks[trainer.global_step] = (time.perf_counter(), cputime.snapshot(pid))

    clock = Clock()
    trainer = pl.Trainer(
        accelerator="cpu",
        strategy=build(name),
        max_steps=total,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        use_distributed_sampler=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        callbacks=[clock],
        **_trainer_topology(),
    )
    trainer.fit(ResNet(), DataLoader(Batches(), batch_size=None, shuffle=False))
    (t0, before), (t1, after) = clock.marks[args.warmup], clock.marks[total]
    cpu = {k: v / args.steps for k, v in cputime.split(before, after, pid, hz).items()}
    return {"step_s": (t1 - t0) / args.steps, "cpu_s_per_step": cpu}


def task_own_cost(args: argparse.Namespace) -> dict[str, Any]:
    from benchmarks.worker import rank_and_world

    rank, _ = rank_and_world()
    names = [BOUND, *args.strategies.split(",")]
    # Lightning's environment deletes WORLD_SIZE at teardown; every fit must find what the first found.
    env = dict(os.environ)
    rounds = []
    for _ in range(args.repeats):
        cells = {}
        for name in names:
            os.environ.update(env)
            cells[name] = fit_once(name, args, rank)
        rounds.append(cells)
    return {"rounds": rounds, "steps": args.steps, "warmup": args.warmup, "batch_size": args.batch_size}


def run_worker(args: argparse.Namespace) -> None:
    import torch.distributed as dist

    from benchmarks.worker import rank_and_world, versions

    warnings.filterwarnings("ignore")
    import lightning_delayed  # noqa: F401  (registers the strategy names)

    torch.set_num_threads(1)
    rank, world = rank_and_world()
    result = task_own_cost(args)
    result.update(task=PHASE, rank=rank, world_size=world, versions=versions())
    Path(f"{args.result}.rank{rank}.json").write_text(json.dumps(result, indent=1))
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


# ---------------------------------------------------------------------------------- phase interface


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
    per_rank = whole.run(PHASE, extra, world=2, module="benchmarks.own_cost")
    names = [BOUND, *strategies]
    rounds = mean_over_ranks(per_rank)
    cpu_rounds = mean_over_ranks(per_rank, cpu=True)
    cpu = {
        n: {
            k: statistics.median(r["rounds"][i][n]["cpu_s_per_step"][k] for r in per_rank for i in range(len(rounds)))
            for k in ("main", "gloo", "other")
        }
        for n in names
    }
    out[PHASE] = {
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
        "seconds": time.monotonic() - start,
    }
    cells = out[PHASE]["cells"]
    if args.own_cost_split == "none":
        return
    split_names = [
        n for n in strategies if args.own_cost_split == "all" or not cells.get(n, {}).get("target_met", True)
    ]
    if not split_names:
        return
    out[PHASE]["unshaped_split"] = unshaped_split(args, runner, ["ssgd", *[n for n in split_names if n != "ssgd"]])
    out[PHASE]["seconds"] = time.monotonic() - start


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
    d = data.get(PHASE)
    if not d:
        return ""
    cells, bound = d["cells"], d["cells"][BOUND]["step_s"]
    lines = [
        "## The algorithm's own cost (communication made free)",
        "",
        f"Every strategy that takes a `comm_hook` ran with `FreeHook` (`benchmarks/own_cost.py`): the average "
        f"completes at once with the rank's own values, so nothing crosses the network. ResNet-18, batch "
        f"{d['batch_size']}, one thread, 2 ranks; {d['warmup']} warm-up and {d['steps']} timed steps per fit; "
        f"{d['repeats']} rounds interleaved ({BOUND}, then every strategy, again). Own cost = step / compute-only "
        f"step of the same round - 1: median [min-max] over the rounds. Target: <= {100 * d['target']:.0f} %.",
        "",
        "| strategy | compute-only step (ms) | step, free comm (ms) | own cost median [min-max] | target met "
        "| own cost in CPU time median [min-max] |",
        "|---|---:|---:|---:|:---:|---:|",
    ]
    cpu_cells = d.get("cpu_cells", {})
    for name in d["strategies"]:
        c = cells.get(name)
        if c is None or "own_cost" not in c:
            continue
        oc = c["own_cost"]
        lines.append(
            f"| `{name}` | {1000 * bound['median']:.0f} | {1000 * c['step_s']['median']:.0f} "
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


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.own_cost", description=__doc__.split("\n")[0])
    w = p.add_argument_group("worker (one rank, started by the phase)")
    w.add_argument("--worker", action="store_true")
    w.add_argument("--task", choices=(PHASE,))
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

    from benchmarks import netns

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
