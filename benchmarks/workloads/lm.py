"""Phase ``lm``: wall time to a target validation loss of a character-level transformer at 200 Mbit/s.

The workload is :mod:`benchmarks.base.charlm` (Python's standard library source, fixed split and
vocabulary): a decoder-only :class:`~benchmarks.base.charlm.CharTransformer` (d_model 192, 3 layers,
4 heads, context 128, ~1.4 M parameters), batch 16 windows per rank, AdamW (lr 3e-3) for every
strategy, which is also the inner optimizer of ``diloco`` and ``streaming_diloco``. At 200 Mbit/s
ssgd's all-reduce of the 5.6 MB gradient takes about as long as the compute step, so the link matters.

Each strategy runs in one pair of processes (start-up is ~10 s) that trains one model per seed in
turn. A run stops at ``--lm-max-steps`` or, checked at each validation, once its training wall
time passes ``--lm-max-wall`` (the decision is reduced over the ranks so all stop at the same
step). Every ``--lm-val-every`` steps each rank computes the loss on the fixed validation windows
of the model its strategy validates (ours: the consensus, the average over the ranks they form at
validation start; ddp: the common replica; post-local SGD: each rank's own model); the logged loss
is the mean over the ranks. The clock is paused while validating (consensus included), as in the
digits workload. The time to the target is the training wall time of the
first validation at or below it (a measured point, not an interpolation); a run that never gets
there is reported as "not reached" with its final loss.

Duration on a quiet 2-core machine: about 12-13 minutes for the default 8 strategies x 3 seeds
(8 start-ups of ~10 s; per seed ~20 s of training, up to one validation interval more, the
validations and their consensus averages, ~2 s of set-up). ``--lm-interleave`` runs seed 0 of
every strategy, then seed 1, ... in one process pair each, so that machine noise does not hit one
strategy only; its 16 extra start-ups add ~3 minutes.

Every strategy accepts AdamW. OD-SGD's local compensation step is plain SGD on the raw gradient
at the optimizer's learning rate (``local_lr=None``), so with AdamW's small learning rate the
local weights stay close to the global ones: it trains like AdamW on a one-step-stale mean gradient.

Standalone (root, emulated link)::

    .venv/bin/python -m benchmarks.lm                                   # all strategies, 3 seeds
    .venv/bin/python -m benchmarks.lm --lm-strategies ssgd,odsgd --lm-seeds 0 --out /tmp/lm/lm.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

from benchmarks.base import netns
from benchmarks.base.phase import Phase

if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence

    from benchmarks.base.launch import Runner

NAME = "lm"
STRATEGIES = (
    "ssgd",
    "ddp",
    "odsgd",
    "cocodsgd",
    "overlap_local_sgd",
    "diloco",
    "streaming_diloco",
    "post_local_sgd",
)
DILOCO_SYNC_EVERY = 10
"""Inner steps between two outer steps of diloco and streaming_diloco (their default 50 is too long a run)."""
SYNC_EVERY = 4
"""Period of the other periodic strategies (cocodsgd, overlap_local_sgd, post-local SGD), as in the other phases."""
MODEL = {"d_model": 192, "nhead": 4, "num_layers": 3, "seq_len": 128}
LR = 3e-3
VAL_WINDOWS = 32


def sync_every(name: str) -> int:
    """The period :func:`benchmarks.base.baselines.build_strategy` gets for ``name`` in this phase."""
    return DILOCO_SYNC_EVERY if name in ("diloco", "streaming_diloco") else SYNC_EVERY


# ------------------------------------------------------------------------------------------ pure logic


def time_to_target(points: Sequence[dict[str, float]], target: float) -> float | None:
    """Training wall time of the first validation with ``loss <= target``; None if none gets there."""
    for p in points:
        if p["loss"] <= target:
            return p["wall_s"]
    return None


def schedule(names: Sequence[str], seeds: Sequence[int], interleave: bool) -> list[tuple[str, list[int]]]:
    """The process pairs to start, in order: one per strategy with every seed, or seed-major pairs of one seed."""
    if interleave:  # seed 0 of every strategy, then seed 1, ...: machine noise spreads over all strategies
        return [(n, [s]) for s in seeds for n in names]
    return [(n, list(seeds)) for n in names]


def spread(values: Sequence[float]) -> dict[str, float] | None:
    """Median, min and max of ``values`` (None when empty)."""
    if not values:
        return None
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def summarize(entry: dict[str, Any], target: float) -> dict[str, Any]:
    """One strategy's table row: time to ``target`` and final loss over its seeds (rank 0's clock)."""
    runs = entry.get("runs", [])
    times, finals, not_reached = [], [], []
    for run in runs:
        if run["points"]:
            finals.append(run["points"][-1]["loss"])
        t = time_to_target(run["points"], target)
        if t is None:
            not_reached.append(
                {"seed": run["seed"], "final_loss": run["points"][-1]["loss"] if run["points"] else None}
            )
        else:
            times.append(t)
    return {
        "strategy": entry["strategy"],
        "seeds": len(runs),
        "reached": len(times),
        "time_to_target_s": spread(times),
        "not_reached": not_reached,
        "final_loss": spread(finals),
        "steps": spread([float(r["steps"]) for r in runs]),
        "step_s": spread([r["wall_s"] / r["steps"] for r in runs if r["steps"]]),
    }


# ------------------------------------------------------------------------------------------ rank side


RUN_OVERHEAD_S = 8.0
"""Per seed, on top of its training wall time: Trainer set-up, validation (clock stopped), teardown."""
SPAWN_S = 5.0
"""Per strategy: starting the rank pair."""


def estimate_s(args: argparse.Namespace) -> float:
    """The phase's run time on a quiet machine (s): each strategy's rank pair trains every seed for
    ``--lm-max-wall`` seconds at most (measured: about 28 s per seed at the default 20 s)."""
    strategies = len([s for s in args.lm_strategies.split(",") if s.strip()])
    seeds = len([s for s in args.lm_seeds.split(",") if s.strip()])
    return strategies * (SPAWN_S + seeds * (args.lm_max_wall + RUN_OVERHEAD_S))


def add_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("phase lm (character-level transformer, time to a target validation loss)")
    g.add_argument("--lm-strategies", default=",".join(STRATEGIES), help="comma-separated strategies")
    g.add_argument("--lm-seeds", default="0,1,2", help="comma-separated seeds")
    g.add_argument("--lm-bandwidth", default="200mbit", help="emulated link rate")
    g.add_argument("--lm-batch-size", type=int, default=16, help="windows per rank and step")
    g.add_argument("--lm-max-steps", type=int, default=400, help="steps per run at most")
    g.add_argument("--lm-max-wall", type=float, default=20.0, help="training seconds per run (checked at validation)")
    g.add_argument("--lm-val-every", type=int, default=5, help="steps between validations")
    g.add_argument("--lm-target", type=float, default=2.55, help="target validation loss (nats per character)")
    g.add_argument(
        "--lm-interleave",
        action="store_true",
        help="one process pair per (seed, strategy), seed-major, instead of one per strategy (+~10 s each)",
    )
    g.add_argument("--lm-timeout", type=float, default=300.0, help="seconds allowed per strategy (both ranks)")


def _worker_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--worker", action="store_true", help="run one rank (reads RANK, WORLD_SIZE, ...)")
    p.add_argument("--task", default="lm", choices=["lm"])
    p.add_argument("--result", help="worker: rank r writes <result>.rank<r>.json")
    p.add_argument("--strategy", help="worker: strategy name")
    p.add_argument("--out", type=Path, default=None, help="standalone: write the phase's JSON here")
    add_args(p)
    return p.parse_args(argv)


def train(args: argparse.Namespace) -> dict[str, Any]:
    """One rank: every seed of ``args.strategy`` in turn; the validation curve of each."""
    import lightning.pytorch as pl
    import torch
    from torch.utils.data import DataLoader, IterableDataset

    from benchmarks.base import charlm
    from benchmarks.base.baselines import build_strategy, strategy_kwargs
    from benchmarks.base.rank import FitEnvironment, bench_trainer, rank_and_world

    rank, _ = rank_and_world()
    data = charlm.corpus()
    seq, batch = MODEL["seq_len"], args.lm_batch_size
    val = charlm.val_batches(data.val, VAL_WINDOWS, seq, batch)

    class Windows(IterableDataset[tuple[torch.Tensor, torch.Tensor]]):
        """Endless training batches of this rank, from a generator seeded by (seed, rank)."""

        def __init__(self, seed: int) -> None:
            self.seed = seed

        def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + rank)
            while True:
                yield charlm.train_batch(data.train, batch, seq, g)

    class LM(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = charlm.CharTransformer(**MODEL)

        def training_step(self, b: tuple[torch.Tensor, torch.Tensor], i: int) -> torch.Tensor:
            return charlm.loss(self.net, *b)

        def validation_step(self, b: tuple[torch.Tensor, torch.Tensor], i: int) -> None:
            self.log("val_loss", charlm.loss(self.net, *b), sync_dist=True, batch_size=b[0].shape[0])

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.AdamW(self.parameters(), lr=LR)

    class Recorder(pl.Callback):
        """Validation loss against training wall time (validation excluded); stops past the wall budget."""

        def __init__(self) -> None:
            self.points: list[dict[str, float]] = []
            self.start = self.paused_at = self.paused = 0.0

        def on_train_start(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
            self.start = time.perf_counter()

        def on_validation_start(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
            self.paused_at = time.perf_counter()

        def on_validation_end(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
            wall = self.paused_at - self.start - self.paused
            loss = float(trainer.callback_metrics["val_loss"])
            self.points.append({"step": trainer.global_step, "wall_s": wall, "loss": loss})
            # Every rank must stop at the same step, or the others wait in a collective forever.
            if trainer.strategy.reduce_boolean_decision(wall >= args.lm_max_wall, all=False):
                trainer.should_stop = True
            self.paused += time.perf_counter() - self.paused_at

    runs = []
    env = FitEnvironment()  # every fit starts from the runner's environment
    for seed in [int(s) for s in args.lm_seeds.split(",") if s.strip()]:
        env.restore()
        pl.seed_everything(seed, verbose=False)
        recorder = Recorder()
        module = LM()
        with torch.no_grad():  # the starting point of the curve, before the clock starts
            initial = sum(float(charlm.loss(module.net, x, y)) for x, y in val) / len(val)
        trainer = bench_trainer(
            build_strategy(args.strategy, sync_every(args.strategy)),
            max_steps=args.lm_max_steps,
            val_check_interval=args.lm_val_every,
            check_val_every_n_epoch=None,
            limit_val_batches=None,  # the validation curve is the measurement
            callbacks=[recorder],
        )
        trainer.fit(module, DataLoader(Windows(seed), batch_size=None), DataLoader(val, batch_size=None))
        last = recorder.points[-1] if recorder.points else {"step": 0, "wall_s": 0.0}
        runs.append(
            {
                "seed": seed,
                "initial_loss": initial,
                "points": recorder.points,
                "steps": trainer.global_step,
                "wall_s": last["wall_s"] if last["step"] == trainer.global_step else None,
            }
        )
        if runs[-1]["wall_s"] is None:  # stopped by max_steps between validations: the clock up to then
            runs[-1]["wall_s"] = time.perf_counter() - recorder.start - recorder.paused
    params = sum(p.numel() for p in charlm.CharTransformer(**MODEL).parameters())
    return {
        "strategy": args.strategy,
        "sync_every": sync_every(args.strategy),
        "strategy_kwargs": strategy_kwargs(args.strategy, sync_every(args.strategy)),
        "params": params,
        "runs": runs,
    }


def run_worker(args: argparse.Namespace) -> None:
    warnings.filterwarnings("ignore")
    import torch
    import torch.distributed as dist

    import lightning_delayed  # noqa: F401  (registers the strategy names)
    from benchmarks.base.rank import rank_and_world, versions

    if not args.result or not args.strategy:
        raise ValueError("--worker needs --result and --strategy")
    torch.set_num_threads(1)
    rank, world = rank_and_world()
    result = train(args)
    result.update(task="lm", rank=rank, world_size=world, versions=versions())
    Path(f"{args.result}.rank{rank}.json").write_text(json.dumps(result, indent=1))
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


# ------------------------------------------------------------------------------------------ runner side


def measure(args: argparse.Namespace, shaped: netns.ShapedLink, runner: Runner, out: dict[str, Any]) -> None:
    """Every strategy at ``--lm-bandwidth``, all seeds inside one pair of processes; fills ``out["lm"]``."""
    from benchmarks.base import charlm
    from benchmarks.base.baselines import strategy_kwargs
    from benchmarks.base.launch import RunFailed

    rate = netns.parse_rate(args.lm_bandwidth)
    names = [s.strip() for s in args.lm_strategies.split(",") if s.strip()]
    phase: dict[str, Any] = {
        "bandwidth": netns.format_rate(rate),
        "emulated": shaped.link.emulated,
        "model": dict(MODEL),
        "batch_size": args.lm_batch_size,
        "optimizer": f"AdamW(lr={LR}) for every strategy (the inner optimizer of diloco and streaming_diloco)",
        # Only the periodic strategies: the others take no period.
        "sync_every": {n: sync_every(n) for n in names if strategy_kwargs(n, sync_every(n))},
        "seeds": [int(s) for s in args.lm_seeds.split(",") if s.strip()],
        "max_steps": args.lm_max_steps,
        "max_wall_s": args.lm_max_wall,
        "val_every": args.lm_val_every,
        "val_windows": VAL_WINDOWS,
        "target_loss": args.lm_target,
        "data": charlm.corpus().description,
        "interleaved": args.lm_interleave,
    }
    out[NAME] = phase
    t0 = time.monotonic()
    if shaped.link.emulated:
        shaped.shape(rate)
    common = [
        *("--lm-batch-size", str(args.lm_batch_size)),
        *("--lm-max-steps", str(args.lm_max_steps), "--lm-max-wall", str(args.lm_max_wall)),
        *("--lm-val-every", str(args.lm_val_every)),
    ]
    entries: dict[str, dict[str, Any]] = {n: {"strategy": n, "status": "ok", "runs": []} for n in names}
    phase["entries"] = list(entries.values())
    saved, runner.timeout = runner.timeout, args.lm_timeout
    try:
        for name, seeds in schedule(names, phase["seeds"], args.lm_interleave):
            start, entry = time.monotonic(), entries[name]
            seed_list = ",".join(map(str, seeds))
            try:
                ranks = runner.run(
                    "lm", ["--strategy", name, *common, "--lm-seeds", seed_list], module="benchmarks.workloads.lm"
                )
                entry["runs"] += ranks[0]["runs"]
                entry.update(params=ranks[0]["params"], strategy_kwargs=ranks[0]["strategy_kwargs"])
                finals = [r["points"][-1]["loss"] for r in ranks[0]["runs"] if r["points"]]
                print(
                    f"  lm {name:18s} seeds {seed_list}: final val loss {finals} ({time.monotonic() - start:.0f} s)",
                    file=sys.stderr,
                )
            except RunFailed as e:
                entry.update(status="failed", error=str(e))  # a strategy with a failed seed is reported failed
                print(f"  lm {name} seeds {seed_list}: FAILED ({str(e).splitlines()[0]})", file=sys.stderr)
    finally:
        runner.timeout = saved
    phase["summary"] = [summarize(e, args.lm_target) for e in phase["entries"] if e["status"] == "ok"]
    phase["total_s"] = time.monotonic() - t0


# ------------------------------------------------------------------------------------------ report


def _fmt(s: dict[str, float] | None, fmt: str = "{:.1f}") -> str:
    if s is None:
        return "n/a"
    return f"{fmt.format(s['median'])} ({fmt.format(s['min'])}-{fmt.format(s['max'])})"


def plot(phase: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, entry in enumerate(e for e in phase["entries"] if e["status"] == "ok"):
        color = colors[i % len(colors)]
        for j, run in enumerate(entry["runs"]):
            xs = [0.0] + [p["wall_s"] for p in run["points"]]
            ys = [run["initial_loss"]] + [p["loss"] for p in run["points"]]
            # Steps: a validation's loss holds until the next one (diloco's model only moves at its syncs).
            label = entry["strategy"] if j == 0 else None
            ax.plot(xs, ys, color=color, lw=1.0, alpha=0.7, drawstyle="steps-post", label=label)
    ax.axhline(phase["target_loss"], color="grey", ls="--", lw=1, label=f"target {phase['target_loss']}")
    ax.set_xlabel("training wall time (s, validation excluded)")
    ax.set_ylabel("validation loss (nats/char)")
    ax.set_ylim(top=min(3.3, ax.get_ylim()[1]))  # the start (~4.6 nats/char) hides the differences
    ax.set_title(f"Character-level transformer at {phase['bandwidth']}, one line per seed (initial loss off the top)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def section(data: dict[str, Any], img_dir: Path) -> str:
    phase = data.get(NAME)
    if not phase:
        return ""
    m, d = phase["model"], phase["data"]
    params = next((e["params"] for e in phase["entries"] if e.get("params")), None)
    lines = [
        "## A real workload: a character-level language model",
        "",
        f"A decoder-only character transformer (`benchmarks/charlm.py`: d_model {m['d_model']}, {m['num_layers']} "
        f"layers, {m['nhead']} heads, context {m['seq_len']}, "
        + (f"{params / 1e6:.2f} M parameters" if params else "")
        + f") trained on {d['source']} ({d['files']} files, {d['train_chars']:,} training and {d['val_chars']:,} "
        f"validation characters; split: {d['split']}; vocabulary of {d['vocab_size']} tokens; text SHA-256 "
        f"`{d['sha256']}`). 2 ranks on the emulated {phase['bandwidth']} link"
        + ("" if phase["emulated"] else " (NOT emulated: loopback)")
        + f", batch {phase['batch_size']} windows per rank, {phase['optimizer']}; seeds {phase['seeds']}.",
        "",
    ]
    if "odsgd" in phase["sync_every"] or any(e["strategy"] == "odsgd" for e in phase["entries"]):
        lines.append(
            "`odsgd`'s local compensation step is plain SGD at the optimizer's learning rate, small with AdamW: "
            "it trains like AdamW on a one-step-stale mean gradient."
        )
    if phase["sync_every"]:
        lines.append(
            "Sync periods: "
            + ", ".join(f"`{n}` {h}" for n, h in phase["sync_every"].items())
            + " steps (the default of 50 of diloco and streaming_diloco is too long for a run this short)."
        )
    lines += [
        f"Each run trains for {phase['max_wall_s']:.0f} s of training wall time (at most {phase['max_steps']} "
        f"steps); every {phase['val_every']} steps each rank computes the loss on {phase['val_windows']} fixed "
        "validation windows of the model its strategy validates (ours: the average over the ranks; post-local "
        "SGD: its own), and the mean over the ranks is plotted; the clock is paused while validating.",
        f"Time to target: training wall time of the first validation at or below **{phase['target_loss']}** "
        "nats/char; median (min to max) over the seeds.",
        "",
        "| strategy | reached | time to target (s) | final val loss | steps | s/step |",
        "|---|---|---|---|---|---|",
    ]
    for row in phase.get("summary", []):
        reached = f"{row['reached']}/{row['seeds']}"
        ttt = _fmt(row["time_to_target_s"])
        if row["not_reached"]:
            ttt += " — not reached: " + ", ".join(
                f"seed {n['seed']} (final {n['final_loss']:.3f})" for n in row["not_reached"] if n["final_loss"]
            )
        lines.append(
            f"| `{row['strategy']}` | {reached} | {ttt} | {_fmt(row['final_loss'], '{:.3f}')} | "
            f"{_fmt(row['steps'], '{:.0f}')} | {_fmt(row['step_s'], '{:.3f}')} |"
        )
    for e in phase["entries"]:
        if e["status"] != "ok":
            lines.append(f"| `{e['strategy']}` | failed | n/a | n/a | n/a | n/a |")
    img_dir.mkdir(parents=True, exist_ok=True)
    plot(phase, img_dir / "benchmarks_lm.png")
    lines += ["", "![validation loss against wall time](img/benchmarks_lm.png)", ""]
    return "\n".join(lines)


PHASE = Phase(
    name=NAME,
    add_args=add_args,
    measure=measure,
    section=section,
    estimate_s=estimate_s,
    writes=("lm", "img/benchmarks_lm.png"),
)
"""The phase as :mod:`benchmarks.run` runs it and the report renders it."""


def main(argv: list[str] | None = None) -> int:
    args = _worker_args(argv)
    if args.worker:
        run_worker(args)
        return 0
    from benchmarks.base.launch import Runner

    out: dict[str, Any] = {}
    ok, why = netns.can_emulate()
    with tempfile.TemporaryDirectory(prefix="ldbench-lm-") as tmp:
        if ok:
            netns.remove_stale()
            with netns.emulated_link() as shaped:
                measure(args, shaped, Runner(shaped.link, Path(tmp), args.lm_timeout), out)
        else:
            print(f"NOTE: {why}; running on loopback, unshaped", file=sys.stderr)
            shaped = netns.ShapedLink(netns.LOOPBACK, netns.run_command)
            measure(args, shaped, Runner(netns.LOOPBACK, Path(tmp), args.lm_timeout), out)
    text = json.dumps(out, indent=1)
    if args.out:
        args.out.write_text(text)
        print(section(out, args.out.parent / "img"))
    else:
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
