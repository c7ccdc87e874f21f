"""Bytes between two emulated nodes, and step time, with and without worker groups (``group_size``).

Two network namespaces (:mod:`benchmarks.base.netns`) are two "nodes" joined by a veth shaped with
``tbf``; each starts 2 ranks with ``torchrun --nnodes=2 --nproc_per_node=2 --node_rank=<n>``, so
the link inside a node is loopback and the link between nodes is the veth. Rank 0 reads the
veth's byte counters (both directions) around the measured steps. Needs root.

    python -m benchmarks.groups_wire --rate-mbit 200 --out benchmarks/results/groups_wire.json

The model is an MLP of about 1.05 M float32 parameters (4.2 MB, "one model copy"); the data are
random. Every run trains ``--warmup`` steps, then measures ``--steps`` steps.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

RUNS: list[tuple[str, str, dict[str, Any]]] = [
    ("ssgd", "ssgd", {}),
    ("local_sgd tau=1 G=1", "local_sgd", {"sync_every": 1}),
    ("local_sgd tau=1 G=2", "local_sgd", {"sync_every": 1, "group_size": 2}),
    ("diloco H=4 G=1", "diloco", {"sync_every": 4}),
    ("diloco H=4 G=2", "diloco", {"sync_every": 4, "group_size": 2}),
]


def _veth_bytes(device: str) -> int:
    stats = Path("/sys/class/net") / device / "statistics"
    return int((stats / "tx_bytes").read_text()) + int((stats / "rx_bytes").read_text())


def train(args: argparse.Namespace) -> None:
    """One rank (started by torchrun inside a namespace)."""
    import lightning as L
    import torch
    from torch import nn
    from torch.utils.data import DataLoader, TensorDataset

    import lightning_delayed  # noqa: F401  (registers the strategy names)
    from lightning_delayed.registry import STRATEGIES

    torch.set_num_threads(1)
    torch.manual_seed(0)
    rank = int(os.environ["RANK"])

    class Net(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = nn.Sequential(nn.Linear(256, 1024), nn.ReLU(), nn.Linear(1024, 768), nn.Linear(768, 8))

        def training_step(self, batch: Any, batch_idx: int) -> Any:
            x, y = batch
            return nn.functional.mse_loss(self.net(x), y)

        def configure_optimizers(self) -> Any:
            return torch.optim.SGD(self.parameters(), lr=0.01)

    class Probe(L.Callback):
        def __init__(self) -> None:
            self.start: tuple[float, int] | None = None
            self.end: tuple[float, int] | None = None

        def on_train_batch_start(self, trainer: L.Trainer, *a: Any) -> None:
            if trainer.global_step == args.warmup:
                self.start = (time.perf_counter(), _veth_bytes(args.device))

        def on_train_end(self, trainer: L.Trainer, *a: Any) -> None:
            self.end = (time.perf_counter(), _veth_bytes(args.device))

    gen = torch.Generator().manual_seed(rank)
    n = 32 * (args.warmup + args.steps)
    data = TensorDataset(torch.randn(n, 256, generator=gen), torch.randn(n, 8, generator=gen))
    kind, options = args.kind, json.loads(args.options)
    from benchmarks.base.rank import QUIET

    strategy = {cls.strategy_name: cls for cls in STRATEGIES}[kind](**options)
    probe = Probe()
    trainer = L.Trainer(
        accelerator="cpu",
        devices=2,
        num_nodes=2,
        strategy=strategy,
        max_steps=args.warmup + args.steps,
        use_distributed_sampler=False,
        **QUIET,
        callbacks=[probe],
    )
    trainer.fit(Net(), DataLoader(data, batch_size=32))
    if rank == 0 and probe.start is not None and probe.end is not None:
        seconds, nbytes = probe.end[0] - probe.start[0], probe.end[1] - probe.start[1]
        params = sum(p.numel() for p in Net().parameters())
        Path(args.result).write_text(
            json.dumps({"seconds_per_step": seconds / args.steps, "veth_bytes": nbytes, "model_bytes": 4 * params})
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate-mbit", type=float, default=200.0)
    parser.add_argument("--warmup", type=int, default=4)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--out", default="benchmarks/results/groups_wire.json")
    parser.add_argument("--train", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--kind", help=argparse.SUPPRESS)
    parser.add_argument("--options", default="{}", help=argparse.SUPPRESS)
    parser.add_argument("--device", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.train:
        train(args)
        return

    from benchmarks.base.netns import can_emulate, emulated_link

    ok, why = can_emulate()
    if not ok:
        sys.exit(f"cannot emulate two nodes: {why}")
    results = []
    with emulated_link() as link:
        link.shape(int(args.rate_mbit * 1e6))
        for port, (name, kind, options) in enumerate(RUNS, start=29611):
            result = Path(args.out).with_suffix(f".{port}.tmp")
            procs = []
            for node in (0, 1):
                env = {**os.environ, "GLOO_SOCKET_IFNAME": link.link.devices[node], "OMP_NUM_THREADS": "1"}
                cmd = [
                    "ip", "netns", "exec", link.link.namespaces[node],
                    sys.executable, "-m", "torch.distributed.run", "--nnodes=2", "--nproc_per_node=2",
                    f"--node_rank={node}", f"--master_addr={link.link.addresses[0]}", f"--master_port={port}",
                    "-m", "benchmarks.workloads.groups_wire", "--train", "--kind", kind,
                    "--options", json.dumps(options),
                    "--device", link.link.devices[node], "--result", str(result),
                    "--warmup", str(args.warmup), "--steps", str(args.steps),
                ]  # fmt: skip
                procs.append(subprocess.Popen(cmd, env=env))
            codes = [p.wait(timeout=900) for p in procs]
            if any(codes):
                sys.exit(f"{name}: torchrun exited with {codes}")
            measured = json.loads(result.read_text())
            result.unlink()
            per_step = measured["veth_bytes"] / args.steps
            row = {"run": name, "rate_mbit": args.rate_mbit, **measured, "veth_bytes_per_step": per_step}
            row["model_copies_per_step"] = per_step / measured["model_bytes"]
            print(json.dumps(row), flush=True)
            results.append(row)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
