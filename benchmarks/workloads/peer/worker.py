"""The rank side of the phase: one process is one rank (``--worker``)."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

from benchmarks.workloads.peer.common import (
    BARRIER_PORT_OFFSET,
    BATCH,
    IMPLS,
    INNER_LR,
    MANAGER_PORT_OFFSET,
    MODEL,
    OUTER,
    STORE_PORT_OFFSET,
    SYNC_EVERY,
    VAL_WINDOWS,
    cpu_by_thread,
    thread_ticks,
)


def _store_barrier(store: Any, key: str, world: int, rank: int) -> None:
    """Every rank waits here until all ``world`` have arrived (the last one to arrive opens it).

    Rank 0 holds the store's server, so it leaves last: once every other rank says it is through,
    or its exit could close the server before another rank's ``wait`` has had its answer.
    """
    if store.add(key, 1) == world:
        store.set(f"{key}/open", "1")
    store.wait([f"{key}/open"])
    if rank == 0:
        store.wait([f"{key}/through/{r}" for r in range(1, world)])
    else:
        store.set(f"{key}/through/{rank}", "1")


def _tx_bytes() -> int:
    from benchmarks.base.rank import tx_bytes

    return tx_bytes() or 0


def _train(args: argparse.Namespace) -> dict[str, Any]:
    import torch
    from torch.distributed import TCPStore

    from benchmarks.base import charlm

    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    master, port = os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"])
    own_addr = args.addrs.split(",")[rank]
    torch.set_num_threads(1)
    data = charlm.corpus()
    val = charlm.val_batches(data.val, VAL_WINDOWS, MODEL["seq_len"], BATCH)
    gen = torch.Generator().manual_seed(1000 * args.seed + rank)
    batches = [charlm.train_batch(data.train, BATCH, MODEL["seq_len"], gen) for _ in range(args.steps)]
    torch.manual_seed(args.seed)
    model: Any = charlm.CharTransformer(**MODEL)
    optimizer: Any = torch.optim.AdamW(model.parameters(), lr=INNER_LR)
    barrier = TCPStore(master, port + BARRIER_PORT_OFFSET, world, is_master=rank == 0, timeout=timedelta(seconds=120))

    with contextlib.ExitStack() as stack:
        if args.impl == "ours":
            from lightning.fabric import Fabric

            from lightning_delayed.fabric import DelayedFabricStrategy, finish

            strategy = DelayedFabricStrategy(
                "diloco",
                sync_every=args.sync_every,
                outer_lr=OUTER["lr"],
                outer_momentum=OUTER["momentum"],
                nesterov=OUTER["nesterov"],
                process_group_backend="gloo",
            )
            fabric = Fabric(accelerator="cpu", devices=1, num_nodes=world, strategy=strategy)
            fabric.launch()
            model, optimizer = fabric.setup(model, optimizer)
            backward = fabric.backward
            stack.callback(lambda: finish(fabric))
        else:
            from torchft.local_sgd import DiLoCo
            from torchft.manager import Manager
            from torchft.process_group import ProcessGroupGloo

            store_port = port + STORE_PORT_OFFSET + rank
            # The replica group's store (a local kept alive to the end); the quorum hands replica 0's address to
            # both ranks for the gloo group.
            _replica_store = TCPStore(own_addr, store_port, 1, is_master=True, wait_for_workers=False)

            def state_dict() -> dict[str, Any]:
                return {"model": model.state_dict(), "optim": optimizer.state_dict()}

            def load_state_dict(sd: dict[str, Any]) -> None:
                model.load_state_dict(sd["model"])
                optimizer.load_state_dict(sd["optim"])

            manager = Manager(
                pg=ProcessGroupGloo(timeout=timedelta(seconds=120)),
                load_state_dict=load_state_dict,
                state_dict=state_dict,
                min_replica_size=world,
                use_async_quorum=False,  # DiLoCo requires it
                timeout=timedelta(seconds=120),
                rank=0,
                world_size=1,
                store_addr=own_addr,
                store_port=store_port,
                lighthouse_addr=args.lighthouse,
                replica_id=f"peer_{rank}",
                port=port + MANAGER_PORT_OFFSET + rank,
                hostname=own_addr,
                init_sync=False,  # the weights start equal on every rank (same seed), as on our side
            )
            stack.callback(lambda: manager.shutdown(wait=False))
            outer = torch.optim.SGD(model.parameters(), **OUTER)  # type: ignore[arg-type]
            stack.enter_context(
                DiLoCo(manager, [model], optimizer, outer, sync_every=args.sync_every, pin_memory=False)
            )

            def backward(loss: Any) -> None:
                loss.backward()

        def evaluate() -> float:
            with torch.no_grad():
                return float(sum(charlm.loss(model, x, y).item() for x, y in val) / len(val))

        train_curve: list[list[float]] = []
        val_curve = [[0.0, evaluate()]]
        _store_barrier(barrier, "start", world, rank)
        elapsed = 0.0
        steady_from = steady_tx = 0.0
        ticks: dict[str, float] = {}
        step_times: dict[bool, list[float]] = {False: [], True: []}  # after the first round; key: a sync step
        for step, (x, y) in enumerate(batches, start=1):
            t0 = time.perf_counter()
            optimizer.zero_grad()
            loss = charlm.loss(model, x, y)
            backward(loss)
            optimizer.step()  # ours: the diloco rule around it; torchft: DiLoCo's post-step hook
            took = time.perf_counter() - t0
            elapsed += took
            train_curve.append([elapsed, float(loss.item())])
            if step > args.sync_every:
                step_times[step % args.sync_every == 0].append(took)
            if step % args.sync_every == 0:  # both sides just synchronised: the model is the global one
                val_curve.append([elapsed, evaluate()])
                if step == args.sync_every:  # the first round holds the start-up skew and the first quorum
                    steady_from, steady_tx = elapsed, _tx_bytes()
                    ticks = thread_ticks()
        cpu = cpu_by_thread(ticks, thread_ticks())  # evaluation included: it is the same on both sides
        steady_steps = args.steps - args.sync_every
        result = {
            "impl": args.impl,
            "seed": args.seed,
            "rank": rank,
            "steps": args.steps,
            "samples_per_s": steady_steps * BATCH * world / (elapsed - steady_from),
            "wire_mb_per_step": (_tx_bytes() - steady_tx) / steady_steps / 1e6,
            "steady_steps": steady_steps,
            "local_step_s": statistics.median(step_times[False]),
            "sync_step_s": statistics.median(step_times[True]),
            "cpu_s_by_thread": cpu,
            "train_curve": train_curve,
            "val_curve": val_curve,
        }
        _store_barrier(barrier, "end", world, rank)
    return result


def _worker_main(argv: list[str]) -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--worker", action="store_true")
    p.add_argument("--task", choices=["train"], required=True)
    p.add_argument("--result", required=True)
    p.add_argument("--impl", choices=IMPLS, required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, required=True)
    p.add_argument("--sync-every", type=int, default=SYNC_EVERY)
    p.add_argument("--addrs", required=True, help="comma-separated address of every rank")
    p.add_argument("--lighthouse", default="", help="torchft lighthouse URL")
    args = p.parse_args(argv)
    result = _train(args)
    Path(f"{args.result}.rank{os.environ['RANK']}.json").write_text(json.dumps(result))
