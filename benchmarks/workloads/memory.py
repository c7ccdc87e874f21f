"""Extra memory each strategy keeps per rank, against ``ssgd``, on ResNet-18 (CIFAR-shaped inputs).

Usage::

    python benchmarks/memory.py [--markdown docs/memory.md] [--steps 6]

For every registered strategy the driver launches a child run (``--worker``) with
``Trainer(accelerator="cpu", devices=2, ...)``: two CPU ranks over gloo, ``torchvision`` ResNet-18
(``num_classes=10``, random init), batches of 8 random 3x32x32 images with random labels, SGD
(lr 0.01, momentum 0.9), ``sync_every=2`` for the averaging strategies and ``delay=1`` for
``dasgd``, other arguments at their defaults.

Two figures per rank:

* **extra algorithm state**: bytes of the unique tensor storages reachable from
  ``trainer.strategy.algorithm`` (attributes, lists, dicts, pending averages and their flat
  buckets), excluding storages shared with the module's parameters, buffers, gradients and the
  optimizer state. Measured after every optimizer step (``on_train_batch_end``, while an average
  or a gradient is in flight) and the maximum kept. This is what the algorithm holds beyond plain
  training; ``ssgd`` has no algorithm object (0).
* **peak RSS**: ``resource.getrusage(RUSAGE_SELF).ru_maxrss`` of the rank's process at the end of
  ``fit``. It includes the torch runtime, DDP's buckets and the allocator's slack, and is noisy by
  a few MB; only its difference to ``ssgd`` means something.

Lightning's ``popen`` launcher starts rank 1 by running this script again with the same
arguments, so the worker code runs on both ranks and each writes ``<out>.rank<r>.json``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
MB = 1e6
WORLD_SIZE = 2
BATCH_SIZE = 8
STRATEGY_KWARGS: dict[str, dict[str, Any]] = {
    "local_sgd": {"sync_every": 2},
    "dasgd": {"sync_every": 2, "delay": 1},
    "cocodsgd": {"sync_every": 2},
    "overlap_local_sgd": {"sync_every": 2},
}


# ---------------------------------------------------------------------------------------- worker


def _storage_key(t: Any) -> tuple[str, int] | None:
    storage = t.untyped_storage()
    if storage.nbytes() == 0:
        return None
    return (str(t.device), storage.data_ptr())


def excluded_storages(module: Any, optimizer: Any) -> set[tuple[str, int]]:
    """Storages plain training holds anyway: parameters, buffers, gradients, optimizer state."""
    import torch

    keys: set[tuple[str, int]] = set()
    tensors = [*module.parameters(), *module.buffers()]
    tensors += [p.grad for p in module.parameters() if p.grad is not None]
    for state in optimizer.state.values():
        tensors += [v for v in state.values() if isinstance(v, torch.Tensor)]
    for t in tensors:
        key = _storage_key(t)
        if key is not None:
            keys.add(key)
    return keys


def algorithm_storages(algorithm: Any, exclude: set[tuple[str, int]]) -> dict[str, dict[tuple[str, int], int]]:
    """Unique storages (key -> bytes) reachable from each top-level attribute of ``algorithm``.

    Follows lists, tuples, dicts, dataclasses and objects of this package; does not enter the
    optimizer, modules or torch objects other than tensors. A storage found under several
    attributes is reported under the first one.
    """
    import torch
    from torch import nn
    from torch.optim import Optimizer

    seen_storages: set[tuple[str, int]] = set()
    by_attr: dict[str, dict[tuple[str, int], int]] = {}

    def walk(obj: Any, acc: dict[tuple[str, int], int], visited: set[int]) -> None:
        if id(obj) in visited or isinstance(obj, (Optimizer, nn.Module, str, bytes, int, float, bool)):
            return
        visited.add(id(obj))
        if isinstance(obj, torch.Tensor):
            key = _storage_key(obj)
            if key is not None and key not in exclude and key not in seen_storages:
                seen_storages.add(key)
                acc[key] = obj.untyped_storage().nbytes()
            return
        if isinstance(obj, dict):
            for v in obj.values():
                walk(v, acc, visited)
        elif isinstance(obj, (list, tuple, set)):
            for v in obj:
                walk(v, acc, visited)
        elif dataclasses.is_dataclass(obj) or type(obj).__module__.startswith("lightning_delayed"):
            for v in vars(obj).values():
                walk(v, acc, visited)

    visited: set[int] = {id(algorithm)}
    for name, value in vars(algorithm).items():
        acc: dict[tuple[str, int], int] = {}
        walk(value, acc, visited)
        if acc:
            by_attr[name] = acc
    return by_attr


def run_worker(strategy_name: str, out: str, steps: int) -> None:
    import warnings

    warnings.filterwarnings("ignore")
    import lightning.pytorch as pl
    import torch
    import torch.distributed as dist
    import torchvision
    from torch.utils.data import DataLoader, TensorDataset

    import lightning_delayed
    from lightning_delayed import STRATEGIES

    torch.manual_seed(0)

    class Classifier(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = torchvision.models.resnet18(num_classes=10)

        def training_step(self, batch: Any, batch_idx: int) -> Any:
            x, y = batch
            return torch.nn.functional.cross_entropy(self.net(x), y)

        def configure_optimizers(self) -> Any:
            return torch.optim.SGD(self.parameters(), lr=0.01, momentum=0.9)

    class Probe(pl.Callback):
        def __init__(self) -> None:
            self.peak_bytes = 0
            self.peak_step = -1
            self.peak_by_attr: dict[str, int] = {}
            self.per_step: list[int] = []

        def on_train_batch_end(self, trainer: pl.Trainer, pl_module: Any, outputs: Any, batch: Any, i: int) -> None:
            algorithm = getattr(trainer.strategy, "algorithm", None)
            if algorithm is None:
                self.per_step.append(0)
                return
            exclude = excluded_storages(pl_module, trainer.optimizers[0])
            by_attr = algorithm_storages(algorithm, exclude)
            sizes = {name: sum(acc.values()) for name, acc in by_attr.items()}
            total = sum(sizes.values())
            self.per_step.append(total)
            if total > self.peak_bytes:
                self.peak_bytes, self.peak_step, self.peak_by_attr = total, trainer.global_step, sizes

    from benchmarks.base.rank import QUIET

    cls = {c.strategy_name: c for c in STRATEGIES}[strategy_name]
    strategy = cls(**STRATEGY_KWARGS.get(strategy_name, {}))
    n = WORLD_SIZE * BATCH_SIZE * steps
    data = TensorDataset(torch.randn(n, 3, 32, 32), torch.randint(0, 10, (n,)))
    loader = DataLoader(data, batch_size=BATCH_SIZE)
    model = Classifier()
    probe = Probe()
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=WORLD_SIZE,
        strategy=strategy,
        max_steps=steps,
        callbacks=[probe],
        **QUIET,
    )
    trainer.fit(model, loader)
    rank = trainer.global_rank
    param_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    buffer_bytes = sum(b.numel() * b.element_size() for b in model.buffers() if b.is_floating_point())
    result = {
        "strategy": strategy_name,
        "strategy_kwargs": STRATEGY_KWARGS.get(strategy_name, {}),
        "rank": rank,
        "steps": trainer.global_step,
        "param_bytes": param_bytes,
        "float_buffer_bytes": buffer_bytes,
        "algorithm_peak_bytes": probe.peak_bytes,
        "algorithm_peak_step": probe.peak_step,
        "algorithm_peak_by_attr": probe.peak_by_attr,
        "algorithm_bytes_per_step": probe.per_step,
        "maxrss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
        "versions": {
            "torch": torch.__version__,
            "lightning": pl.__version__,
            "torchvision": torchvision.__version__,
            "lightning_delayed": lightning_delayed.__version__,
        },
    }
    Path(f"{out}.rank{rank}.json").write_text(json.dumps(result, indent=2))
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


# ---------------------------------------------------------------------------------------- driver


def run_child(name: str, out: str, steps: int) -> list[dict[str, Any]]:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    for key in ("MASTER_ADDR", "MASTER_PORT", "LOCAL_RANK", "NODE_RANK", "WORLD_SIZE", "GLOBAL_RANK"):
        env.pop(key, None)
    cmd = [sys.executable, "-m", "benchmarks.workloads.memory", "--worker", "--strategy", name, "--out", out]
    cmd += ["--steps", str(steps)]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    results = []
    for rank in range(WORLD_SIZE):
        path = Path(f"{out}.rank{rank}.json")
        if proc.returncode != 0 or not path.exists():
            sys.stderr.write(proc.stdout[-4000:] + proc.stderr[-4000:])
            raise RuntimeError(f"worker for {name!r} failed (exit {proc.returncode}); no {path.name}")
        results.append(json.loads(path.read_text()))
    return results


def table(results: dict[str, list[dict[str, Any]]]) -> str:
    base = results.get("ssgd")
    model_bytes = next(iter(results.values()))[0]["param_bytes"]
    lines = [
        "| strategy | extra algorithm state (MB) | in model copies | peak RSS rank 0 (MB) | Δ RSS vs ssgd (MB) |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, ranks in results.items():
        extra = max(r["algorithm_peak_bytes"] for r in ranks)
        rss = ranks[0]["maxrss_kib"] * 1024 / MB
        if base is None:
            delta = "n/a"
        else:
            d = rss - base[0]["maxrss_kib"] * 1024 / MB
            delta = f"{d:+.1f}"
        lines.append(f"| `{name}` | {extra / MB:.1f} | {extra / model_bytes:.2f} | {rss:.1f} | {delta} |")
    return "\n".join(lines)


def describe(results: dict[str, list[dict[str, Any]]], steps: int) -> str:
    first = next(iter(results.values()))[0]
    v = first["versions"]
    return (
        f"ResNet-18 (torchvision, num_classes=10, {first['param_bytes'] / MB:.1f} MB of fp32 parameters = one model "
        f"copy), batch {BATCH_SIZE} of random 3x32x32 inputs, SGD lr 0.01 momentum 0.9, {WORLD_SIZE} CPU ranks over "
        f"gloo, {steps} optimizer steps, sync_every=2 (averaging strategies), delay=1 (dasgd), other arguments "
        f"default. Machine: {os.cpu_count()} CPU cores ({platform.machine()}, {platform.system()}), OMP_NUM_THREADS=1, "
        f"torch {v['torch']}, lightning {v['lightning']}, torchvision {v['torchvision']}, Python "
        f"{platform.python_version()}."
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--strategy", help="worker only: the strategy name")
    parser.add_argument("--out", help="worker only: result prefix; each rank writes <out>.rank<r>.json")
    parser.add_argument("--steps", type=int, default=6, help="optimizer steps per run (default 6)")
    parser.add_argument("--strategies", nargs="*", help="names to measure (default: all registered)")
    parser.add_argument("--markdown", help="also write the table and the set-up to this file")
    args = parser.parse_args()

    if args.worker:
        if not args.strategy or not args.out:
            parser.error("--worker needs --strategy and --out")
        run_worker(args.strategy, args.out, args.steps)
        return

    sys.path.insert(0, str(REPO))
    from lightning_delayed import strategy_names

    names = args.strategies or strategy_names()
    if "ssgd" in names:  # the baseline first
        names = ["ssgd", *[n for n in names if n != "ssgd"]]
    results: dict[str, list[dict[str, Any]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            print(f"measuring {name} ...", file=sys.stderr, flush=True)
            results[name] = run_child(name, str(Path(tmp) / name), args.steps)
            for r in results[name]:
                attrs = ", ".join(f"{k}={v / MB:.1f}MB" for k, v in r["algorithm_peak_by_attr"].items())
                print(
                    f"  rank {r['rank']}: peak algorithm state {r['algorithm_peak_bytes'] / MB:.1f} MB at step "
                    f"{r['algorithm_peak_step']} ({attrs or 'none'}), per step "
                    f"{[round(b / MB, 1) for b in r['algorithm_bytes_per_step']]}, "
                    f"max RSS {r['maxrss_kib'] / 1024:.0f} MiB",
                    file=sys.stderr,
                    flush=True,
                )
    text = table(results)
    print(text)
    if args.markdown:
        doc = (
            "# Memory per rank (measured)\n\n"
            f"{describe(results, args.steps)}\n\n"
            f"{text}\n\n"
            "*Extra algorithm state*: the largest, over the optimizer steps, of the bytes of the tensor storages "
            "reachable from `trainer.strategy.algorithm` (snapshots, global weights, anchors, pending averages and "
            "their flat buckets) that are not the module's parameters, buffers or gradients, nor the optimizer "
            "state; the larger of the two ranks. *In model copies*: that divided by the parameter bytes. *Peak RSS* "
            "is the process's `ru_maxrss` (includes the torch runtime and allocator slack; noisy by a few MB).\n\n"
            "Reproduce: `python benchmarks/memory.py --markdown docs/memory.md`\n"
        )
        Path(args.markdown).write_text(doc)


if __name__ == "__main__":
    main()
