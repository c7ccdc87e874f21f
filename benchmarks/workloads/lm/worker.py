"""The rank side of the phase: one process is one rank (``--worker``)."""

from __future__ import annotations

import argparse
import json
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

from benchmarks.workloads.lm.common import LR, MODEL, VAL_WINDOWS, sync_every
from benchmarks.workloads.lm.runner import add_args

if TYPE_CHECKING:
    from collections.abc import Iterator


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
    from benchmarks.base.clock import TrainingClock
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

    class Recorder(TrainingClock):
        """Validation loss against training wall time (validation excluded); stops past the wall budget."""

        def record(self, trainer: pl.Trainer, wall_s: float) -> None:
            loss = float(trainer.callback_metrics["val_loss"])
            self.points.append({"step": trainer.global_step, "wall_s": wall_s, "loss": loss})
            # Every rank must stop at the same step, or the others wait in a collective forever.
            if trainer.strategy.reduce_boolean_decision(wall_s >= args.lm_max_wall, all=False):
                trainer.should_stop = True

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
            runs[-1]["wall_s"] = recorder.elapsed()
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
