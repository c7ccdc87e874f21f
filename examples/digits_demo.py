"""Train a small CNN on the scikit-learn digits with every ``lightning_delayed`` strategy and compare.

For each registered strategy name (``lightning_delayed.registry.strategy_names()``), the demo runs
a child ``python examples/digits_demo.py --worker --strategy NAME ...``; inside it Lightning's own
launcher starts the second rank (2 CPU processes over gloo). Rank 0 times ``trainer.fit``, runs
``trainer.test`` and writes a JSON result; the parent prints one table row per strategy::

    OMP_NUM_THREADS=1 python examples/digits_demo.py                 # all strategies
    python examples/digits_demo.py --strategies ssgd,odsgd --epochs 3 --json results.json

The data are the 1,797 digits bundled with scikit-learn: nothing is downloaded.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

DEFAULT_EPOCHS = 10
DEFAULT_TIMEOUT_S = 300.0
TAIL_CHARS = 4000


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=DEFAULT_EPOCHS, help="training epochs per strategy")
    parser.add_argument("--strategies", default="", help="comma-separated strategy names (default: all)")
    parser.add_argument("--batch-size", type=int, default=32, help="batch size per rank")
    parser.add_argument("--seed", type=int, default=0, help="seed of the data split and of the model")
    parser.add_argument("--json", type=Path, default=None, help="also save every result to this JSON file")
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_S, help="seconds allowed per strategy")
    # Internal: the per-strategy child process (and, through Lightning's launcher, its rank 1).
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--strategy", default="", help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.epochs < 1:
        parser.error(f"--epochs must be >= 1, got {args.epochs}")
    if args.batch_size < 1:
        parser.error(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.worker and (not args.strategy or args.result is None):
        parser.error("--worker needs --strategy and --result")
    return args


# ---------------------------------------------------------------------- child (one strategy, 2 ranks)


def run_worker(args: argparse.Namespace) -> None:
    """Runs on both ranks: Lightning's popen launcher re-runs this script, same argv, for rank 1."""
    import lightning.pytorch as pl
    import torch
    from digits import DATA_DESCRIPTION, DigitsCNN, DigitsDataModule

    import lightning_delayed  # noqa: F401  (registers the strategy names)

    torch.set_num_threads(1)
    pl.seed_everything(args.seed, workers=True, verbose=False)

    class SampleCounter(pl.Callback):
        def __init__(self) -> None:
            self.samples = 0

        def on_train_batch_end(
            self, trainer: pl.Trainer, module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
        ) -> None:
            self.samples += int(batch[0].shape[0])

    counter = SampleCounter()
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=2,
        strategy=args.strategy,
        max_epochs=args.epochs,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[counter],
    )
    model = DigitsCNN()
    data = DigitsDataModule(batch_size=args.batch_size, seed=args.seed)

    start = time.perf_counter()
    trainer.fit(model, datamodule=data)
    fit_wall_s = time.perf_counter() - start

    test_metrics = trainer.test(model, datamodule=data, verbose=False)
    # Every rank counted its own samples; the sum is what all ranks processed together.
    total = trainer.strategy.reduce(torch.tensor(float(counter.samples)), reduce_op="sum")
    samples = int(total.item())
    if trainer.global_rank == 0:
        result = {
            "strategy": args.strategy,
            "data": DATA_DESCRIPTION,
            "world_size": trainer.world_size,
            "epochs": args.epochs,
            "batch_size_per_rank": args.batch_size,
            "optimizer_steps": trainer.global_step,
            "train_samples": samples,
            "fit_wall_s": fit_wall_s,
            "samples_per_s": samples / fit_wall_s,
            "test_acc": float(test_metrics[0]["test_acc"]),
        }
        args.result.write_text(json.dumps(result, indent=2))
    # Tear the gloo group down while both ranks are alive: left to interpreter exit, its threads
    # are sometimes destroyed while still joinable and the process aborts ("terminate called
    # without an active exception", exit -6) after all the work is done.
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()


# ---------------------------------------------------------------------- parent


class ChildFailed(RuntimeError):
    pass


def _tail(text: str) -> str:
    return text if len(text) <= TAIL_CHARS else "...\n" + text[-TAIL_CHARS:]


def run_child(name: str, args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    result_file = workdir / f"{name}.json"
    cmd = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--worker",
        "--strategy",
        name,
        "--result",
        str(result_file),
        "--epochs",
        str(args.epochs),
        "--batch-size",
        str(args.batch_size),
        "--seed",
        str(args.seed),
    ]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    # Own session: on timeout the whole group (child and the rank Lightning started) is killed.
    proc = subprocess.Popen(
        cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )
    try:
        output, _ = proc.communicate(timeout=args.timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        output, _ = proc.communicate()
        raise ChildFailed(f"strategy {name!r}: timed out after {args.timeout:.0f} s\n{_tail(output)}") from None
    if proc.returncode != 0:
        raise ChildFailed(f"strategy {name!r}: child exited with {proc.returncode}\n{_tail(output)}")
    if not result_file.exists():
        raise ChildFailed(f"strategy {name!r}: child exited 0 but wrote no result file\n{_tail(output)}")
    return json.loads(result_file.read_text())


def format_table(results: list[dict[str, Any]]) -> str:
    lines = [
        "| strategy | test accuracy | samples/s | wall time (s) |",
        "|---|---:|---:|---:|",
    ]
    for r in results:
        lines.append(f"| {r['strategy']} | {r['test_acc']:.4f} | {r['samples_per_s']:.0f} | {r['fit_wall_s']:.1f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker:
        run_worker(args)
        return 0

    from lightning_delayed.registry import strategy_names

    known = strategy_names()
    names = [s.strip() for s in args.strategies.split(",") if s.strip()] if args.strategies else known
    unknown = [n for n in names if n not in known]
    if unknown:
        print(f"error: unknown strategies {unknown}; registered: {known}", file=sys.stderr)
        return 2

    from digits import DATA_DESCRIPTION

    print(f"Data: {DATA_DESCRIPTION}")
    print(f"2 CPU ranks over gloo, {args.epochs} epochs, batch size {args.batch_size} per rank, seed {args.seed}")
    results = []
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="digits_demo_") as tmp:
        for name in names:
            t0 = time.perf_counter()
            try:
                results.append(run_child(name, args, Path(tmp)))
            except ChildFailed as err:
                print(f"error: {err}", file=sys.stderr)
                return 1
            print(f"  {name}: done in {time.perf_counter() - t0:.1f} s", flush=True)
    print()
    print(format_table(results))
    print(f"\nTotal demo wall time: {time.perf_counter() - start:.1f} s")
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=2))
        print(f"Results saved to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
