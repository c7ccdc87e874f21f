"""Phase ``peer``: our ``diloco`` against torchft's ``DiLoCo`` under torchft's real ``Manager`` and lighthouse.

Both train the character-level LM of :mod:`benchmarks.base.charlm` on the same emulated link, from the
same initial weights, on the same per-rank batches, with the same inner optimizer (AdamW), outer
optimizer (SGD lr 0.7, momentum 0.9, Nesterov: our diloco's defaults) and ``sync_every``. The two
sides run the same plain loop (``zero_grad``, loss, backward, ``step``):

* **ours**: a Fabric loop with ``DelayedFabricStrategy("diloco")`` (gloo; DDP's gradient all-reduce
  replaced by the strategy's no-op hook, the synchronisation runs after the wrapped optimizer's step);
* **torchft**: ``torchft.local_sgd.DiLoCo`` around the same AdamW, driven by ``torchft.Manager``
  with a ``ProcessGroupGloo``; every rank is a replica group of one (its own ``TCPStore`` and
  ``ManagerServer``), the lighthouse (``torchft_lighthouse --min_replicas 2``) runs inside rank 0's
  network namespace, started before and stopped after every torchft run by :func:`lighthouse`.

Repeats are interleaved (ours, torchft, ours, torchft, ...), repeat ``r`` uses seed ``r`` on both
sides. Validation loss is measured after every synchronisation on a fixed set of windows, on both
ranks, with the clock stopped. Standalone::

    python -m benchmarks.peer --json peer.json              # 200mbit, 6 repeats, 64 steps
    python -m benchmarks.peer --peer-bandwidths 200mbit,unshaped --peer-repeats 3

The default (200mbit, 6 repeats, 64 steps: 12 runs) does about 0.3 s of CPU per step and rank; on
a quiet 2-core machine a run is about 28 s (start-up, 64 steps, 9 evaluations), the phase about 6
minutes. Six repeats, not three: the two implementations differ by a few per cent, about the spread
of three repeats on a shared machine (two full runs with three gave 1.04x and 0.99x).
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from benchmarks.base import netns
from benchmarks.base.phase import Phase

if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence

    from benchmarks.base.launch import Runner

MODEL: dict[str, int] = {"d_model": 192, "nhead": 4, "num_layers": 3, "seq_len": 128}
"""The language model's size (keep equal to the LM phase's to compare the two)."""
NAME = "peer"
BATCH = 16
"""Windows per rank and step."""
SYNC_EVERY = 8
INNER_LR = 1e-3
OUTER = {"lr": 0.7, "momentum": 0.9, "nesterov": True}
VAL_WINDOWS = 32
IMPLS = ("ours", "torchft")
LIGHTHOUSE_PORT = 29400
"""In rank 0's namespace, outside the Runner's 29500..29999 and the offsets below."""
# Ports the worker derives from MASTER_PORT (the Runner's ports are 29500..29999, or free ones on loopback).
BARRIER_PORT_OFFSET = 1000
STORE_PORT_OFFSET = 2000  # + rank: each replica group's own TCPStore
MANAGER_PORT_OFFSET = 3000  # + rank: each replica group's ManagerServer


# ---------------------------------------------------------------- pure logic (unit-tested)


def loss_at(curve: Sequence[Sequence[float]], t: float) -> float:
    """The loss of a ``[(time, loss), ...]`` curve (times increasing) at time ``t``, linearly interpolated.

    Before the first point: the first loss; after the last: the last loss.
    """
    if not curve:
        raise ValueError("empty curve")
    if t <= curve[0][0]:
        return float(curve[0][1])
    for (t0, l0), (t1, l1) in itertools.pairwise(curve):
        if t <= t1:
            return float(l0 if t1 == t0 else l0 + (l1 - l0) * (t - t0) / (t1 - t0))
    return float(curve[-1][1])


def spread(values: Sequence[float]) -> dict[str, float]:
    """Median, min and max of the repeats."""
    if not values:
        raise ValueError("no values")
    return {"median": float(statistics.median(values)), "min": float(min(values)), "max": float(max(values))}


def parse_task_stat(text: str) -> tuple[str, float]:
    """``(thread name, user + system CPU ticks)`` of one ``/proc/<pid>/task/<tid>/stat`` line."""
    name = text[text.index("(") + 1 : text.rindex(")")]
    fields = text[text.rindex(")") + 2 :].split()
    return name, float(fields[11]) + float(fields[12])  # utime, stime: fields 14 and 15 of proc(5)


def cpu_by_thread(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    """CPU seconds per thread name between two :func:`thread_ticks` snapshots (threads that ran only)."""
    ticks = os.sysconf("SC_CLK_TCK")
    out = {name: (after[name] - before.get(name, 0.0)) / ticks for name in after}
    return {name: sec for name, sec in sorted(out.items(), key=lambda kv: -kv[1]) if sec > 0}


def thread_ticks() -> dict[str, float]:
    """CPU ticks of this process per thread name (threads of the same name summed)."""
    out: dict[str, float] = {}
    for task in Path("/proc/self/task").iterdir():
        with contextlib.suppress(OSError, ValueError):
            name, ticks = parse_task_stat((task / "stat").read_text())
            out[name] = out.get(name, 0.0) + ticks
    return out


def schedule(repeats: int) -> list[tuple[int, str]]:
    """``(repeat, impl)`` in interleaved order: ours, torchft, ours, torchft, ... (repeat r uses seed r)."""
    return [(r, impl) for r in range(repeats) for impl in IMPLS]


def summarise(runs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Per implementation: samples/s and wire MB/step (median, min-max), and the losses at equal wall time.

    The equal wall time is the shortest run's training time, so every curve reaches it. Failed runs
    (``"error"`` in the run) are only listed.
    """
    failed = [run for run in runs if "error" in run]
    runs = [run for run in runs if "error" not in run]
    out: dict[str, Any] = {"failed": [f"{run['impl']} seed {run['seed']}" for run in failed]}
    if not runs:
        return out
    t_equal = min(run["val_curve"][-1][0] for run in runs)
    out["equal_wall_time_s"] = t_equal
    for impl in IMPLS:
        mine = [run for run in runs if run["impl"] == impl]
        if not mine:
            continue
        out[impl] = {
            "samples_per_s": spread([run["samples_per_s"] for run in mine]),
            "wire_mb_per_step": spread([run["wire_mb_per_step"] for run in mine]),
            "val_loss_at_equal_time": spread([loss_at(run["val_curve"], t_equal) for run in mine]),
            "final_val_loss": spread([run["val_curve"][-1][1] for run in mine]),
            "seconds": spread([run["val_curve"][-1][0] for run in mine]),
        }
        if all("local_step_s" in run for run in mine):
            out[impl]["local_step_s"] = spread([run["local_step_s"] for run in mine])
            out[impl]["sync_step_s"] = spread([run["sync_step_s"] for run in mine])
            names = {name for run in mine for name in run["cpu_s_by_thread"]}
            per_step = {
                name: statistics.median(run["cpu_s_by_thread"].get(name, 0.0) / run["steady_steps"] for run in mine)
                for name in names
            }
            out[impl]["cpu_ms_per_step_by_thread"] = {
                name: round(1e3 * sec, 2) for name, sec in sorted(per_step.items(), key=lambda kv: -kv[1]) if sec > 0
            }
    if "ours" in out and "torchft" in out:
        out["throughput_ratio"] = out["ours"]["samples_per_s"]["median"] / out["torchft"]["samples_per_s"]["median"]
    return out


# ---------------------------------------------------------------- rank side


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


# ---------------------------------------------------------------- runner side


def lighthouse_command(bind: str, min_replicas: int = 2) -> list[str]:
    """The lighthouse server of the installed torchft (its console script, next to this interpreter)."""
    script = Path(sys.executable).parent / "torchft_lighthouse"
    exe = str(script) if script.exists() else shutil.which("torchft_lighthouse")
    if exe is None:
        raise FileNotFoundError("torchft_lighthouse not found: pip install 'lightning-delayed[bench]'")
    # join_timeout: once min_replicas have joined, do not wait for more (there are none).
    return [exe, "--min_replicas", str(min_replicas), "--bind", bind, "--join_timeout_ms", "100"]


@contextlib.contextmanager
def lighthouse(link: netns.Link, log: Path, port: int = LIGHTHOUSE_PORT) -> Iterator[str]:
    """A torchft lighthouse in rank 0's namespace on rank 0's address; yields its URL, always stops it."""
    bind = f"{link.master_addr}:{port}"
    with open(log, "w") as out:
        proc = subprocess.Popen([*link.exec_prefix(0), *lighthouse_command(bind)], stdout=out, stderr=subprocess.STDOUT)
        try:
            yield f"http://{bind}"
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


RUN_START_S = 10.0
"""Per run: the rank pair's start-up (and torchft's lighthouse and Manager for its runs)."""
PEER_STEP_S = 0.26
"""A step of the peer's character LM at 200 Mbit/s, sync steps included (measured: 0.24 local, 0.5 sync)."""


def estimate_s(args: argparse.Namespace) -> float:
    """The phase's run time on a quiet machine (s): per link and repeat, one run of ours and one of torchft."""
    links = len([b for b in args.peer_bandwidths.split(",") if b.strip()])
    return links * args.peer_repeats * len(IMPLS) * (RUN_START_S + PEER_STEP_S * args.peer_steps)


def add_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("peer (our diloco against torchft's DiLoCo with its Manager and lighthouse)")
    g.add_argument("--peer-bandwidths", default="200mbit", help="comma-separated rates (default 200mbit)")
    g.add_argument(
        "--peer-repeats",
        type=int,
        default=6,
        help="interleaved repeats (seeds 0..n-1), default 6: with 3, two full runs gave 1.04x and 0.99x",
    )
    g.add_argument("--peer-steps", type=int, default=64, help="optimizer steps per run (default 64)")
    g.add_argument("--peer-sync-every", type=int, default=SYNC_EVERY, help=f"H of both (default {SYNC_EVERY})")
    g.add_argument("--peer-timeout", type=float, default=240, help="seconds per run before it is killed")


def versions() -> dict[str, str]:
    from importlib.metadata import version

    out = {"python": platform.python_version()}
    for name in ("torch", "torchft", "lightning", "lightning-delayed"):
        with contextlib.suppress(Exception):
            out[name] = version(name)
    return out


def measure(args: argparse.Namespace, shaped: netns.ShapedLink, runner: Runner, out: dict[str, Any]) -> None:
    """Fill ``out["peer"]``: every interleaved run on every bandwidth, and the summaries."""
    from benchmarks.base import charlm
    from benchmarks.base.launch import RunFailed

    if args.peer_steps % args.peer_sync_every or args.peer_steps < 2 * args.peer_sync_every:
        raise ValueError("--peer-steps must be a multiple of --peer-sync-every, at least two rounds")
    began = time.monotonic()
    link = shaped.link
    result: dict[str, Any] = {
        "config": {
            "model": MODEL,
            "batch_per_rank": BATCH,
            "world": 2,
            "sync_every": args.peer_sync_every,
            "steps": args.peer_steps,
            "inner": {"AdamW": {"lr": INNER_LR}},
            "outer": OUTER,
            "val_windows": VAL_WINDOWS,
            "repeats": args.peer_repeats,
            "ours": "Fabric loop, DelayedFabricStrategy('diloco'), gloo",
            "torchft": "Manager(ProcessGroupGloo, use_async_quorum=False, init_sync=False) + local_sgd.DiLoCo, "
            "lighthouse --min_replicas 2 in rank 0's namespace",
        },
        "corpus": charlm.corpus().description,
        "versions": versions(),
        "links": {},
    }
    addrs = ",".join(link.addresses)
    for bw in [b.strip() for b in args.peer_bandwidths.split(",") if b.strip()]:
        shaped.shape(netns.parse_rate(bw))
        runs = []
        for rep, impl in schedule(args.peer_repeats):
            extra = ["--impl", impl, "--seed", str(rep), "--steps", str(args.peer_steps)]
            extra += ["--sync-every", str(args.peer_sync_every), "--addrs", addrs]
            try:
                if impl == "torchft":
                    port = LIGHTHOUSE_PORT if link.emulated else _free_port()
                    with lighthouse(link, runner.workdir / f"lighthouse{runner.count + 1}.log", port) as url:
                        ranks = runner.run("train", [*extra, "--lighthouse", url], module="benchmarks.workloads.peer")
                else:
                    ranks = runner.run("train", extra, module="benchmarks.workloads.peer")
            except RunFailed as e:  # one failed run is reported on the page, not the end of the benchmark
                print(f"peer {bw} {impl} seed {rep} FAILED: {e}", flush=True)
                runs.append({"impl": impl, "seed": rep, "error": str(e).splitlines()[0], "log_tail": str(e)[-2000:]})
                continue
            run = dict(ranks[0])
            run["samples_per_s"] = min(r["samples_per_s"] for r in ranks)  # the slower rank sets the pace
            run["wire_mb_per_step"] = sum(r["wire_mb_per_step"] for r in ranks) / len(ranks)
            runs.append(run)
            print(
                f"peer {bw} {impl} seed {rep}: {run['samples_per_s']:.1f} samples/s, "
                f"{run['wire_mb_per_step']:.2f} MB/step, val loss {run['val_curve'][-1][1]:.3f}",
                flush=True,
            )
        result["links"][bw] = {"runs": runs, "summary": summarise(runs)}
    result["seconds"] = time.monotonic() - began
    out["peer"] = result


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _fmt(s: dict[str, float], digits: int = 1) -> str:
    return f"{s['median']:.{digits}f} ({s['min']:.{digits}f}-{s['max']:.{digits}f})"


def _ms(s: dict[str, float] | None) -> str:
    return "-" if s is None else _fmt({k: 1e3 * v for k, v in s.items()}, 0)


def _plot(data: dict[str, Any], img_dir: Path) -> str | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    links = data["links"]
    if not links:
        return None
    fig, axes = plt.subplots(1, len(links), figsize=(6 * len(links), 4), squeeze=False)
    colours = {"ours": "tab:blue", "torchft": "tab:orange"}
    for ax, (bw, link) in zip(axes[0], links.items(), strict=True):
        seen = set()
        for run in link["runs"]:
            if "error" in run:
                continue
            t, v = zip(*run["val_curve"], strict=True)
            label = None if run["impl"] in seen else f"{run['impl']} diloco"
            seen.add(run["impl"])
            ax.plot(t, v, color=colours[run["impl"]], marker=".", alpha=0.8, label=label)
        if "equal_wall_time_s" in link["summary"]:
            ax.axvline(link["summary"]["equal_wall_time_s"], color="grey", linestyle=":", linewidth=1)
        ax.set_title(f"{bw}: validation loss, seeds 0..{data['config']['repeats'] - 1}")
        ax.set_xlabel("training wall time (s, evaluation excluded)")
        ax.set_ylabel("validation loss (nats/char)")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    img_dir.mkdir(parents=True, exist_ok=True)
    fig.savefig(img_dir / "benchmarks_peer.png", dpi=110)
    plt.close(fig)
    return "img/benchmarks_peer.png"


def section(data: dict[str, Any], img_dir: Path) -> str:
    """Markdown for ``data["peer"]``: the table per link, the plot, and how torchft was run."""
    peer = data.get("peer")
    if not peer:
        return ""
    cfg, ver = peer["config"], peer["versions"]
    m = cfg["model"]
    lines = [
        "## A real peer: torchft's DiLoCo",
        "",
        f"Our `diloco` against torchft {ver.get('torchft', '?')}'s `DiLoCo` driven by its real `Manager` and "
        f"lighthouse, on the same emulated link: the character LM (d_model {m['d_model']}, {m['num_layers']} "
        f"layers, {m['nhead']} heads, sequence {m['seq_len']}), batch {cfg['batch_per_rank']} per rank on "
        f"{cfg['world']} ranks, the same initial weights and per-rank batches, inner AdamW lr "
        f"{cfg['inner']['AdamW']['lr']}, outer SGD lr {cfg['outer']['lr']} momentum {cfg['outer']['momentum']} "
        f"Nesterov, `sync_every` {cfg['sync_every']}, {cfg['steps']} steps; {cfg['repeats']} repeats interleaved "
        "(ours, torchft, ours, ...), repeat r with seed r on both sides. samples/s is measured after the first "
        "round (which holds the start-up and torchft's first quorum), over the slower rank; wire MB/step is the "
        "veth's transmitted bytes per step and rank, over the same steps. Validation loss: "
        f"{cfg['val_windows']} fixed windows after every synchronisation, clock stopped; the loss at equal wall "
        "time is read off each curve at the shortest run's training time.",
        "",
        "| link | implementation | samples/s median (min-max) | wire MB/step | val loss at equal wall time "
        "| final val loss | training time (s) | local step (ms) | sync step (ms) |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for bw, link in peer["links"].items():
        s = link["summary"]
        for impl in IMPLS:
            if impl not in s:
                continue
            row = s[impl]
            lines.append(
                f"| {bw} | {impl} | {_fmt(row['samples_per_s'])} | {_fmt(row['wire_mb_per_step'], 2)} "
                f"| {_fmt(row['val_loss_at_equal_time'], 3)} | {_fmt(row['final_val_loss'], 3)} "
                f"| {_fmt(row['seconds'])} | {_ms(row.get('local_step_s'))} | {_ms(row.get('sync_step_s'))} |"
            )
    lines.append("")
    for bw, link in peer["links"].items():
        s = link["summary"]
        for run in link["runs"]:
            if "error" in run:
                lines.append(f"- {bw}: {run['impl']} seed {run['seed']} failed: `{run['error'].splitlines()[0]}`")
        if "throughput_ratio" in s:
            verdict = "met" if s["throughput_ratio"] >= 1 else "missed"
            lines.append(
                f"- {bw}: ours / torchft throughput = **{s['throughput_ratio']:.2f}x** (target >= 1: {verdict}); "
                f"validation loss at {s['equal_wall_time_s']:.1f} s: ours "
                f"{s['ours']['val_loss_at_equal_time']['median']:.3f}, torchft "
                f"{s['torchft']['val_loss_at_equal_time']['median']:.3f} (medians over seeds)."
            )
    for bw, link in peer["links"].items():
        totals = {}
        for impl in IMPLS:
            cpu = link["summary"].get(impl, {}).get("cpu_ms_per_step_by_thread")
            if cpu:
                totals[impl] = sum(cpu.values())
                top = ", ".join(f"`{name}` {ms:.1f}" for name, ms in list(cpu.items())[:5])
                lines.append(f"- {bw}, {impl}: CPU ms per step by thread (rank 0, `/proc/self/task`): {top}.")
        if len(totals) == 2:
            lines.append(
                f"- {bw}: CPU per step, all threads: ours {totals['ours']:.0f} ms, torchft {totals['torchft']:.0f} ms "
                f"(ratio {totals['ours'] / totals['torchft']:.2f}); where the wall-time ratio differs from this, "
                "the difference is waiting (network, or CPU taken by other processes), not work."
            )
    img = _plot(peer, img_dir)
    if img:
        lines += ["", f"![validation loss against wall time, ours and torchft]({img})"]
    lines += [
        "",
        "How torchft was run: every rank is a replica group of one (`Manager(rank=0, world_size=1, "
        "min_replica_size=2, use_async_quorum=False, init_sync=False)`, its own `TCPStore` and `ManagerServer`); "
        "the runner starts `torchft_lighthouse --min_replicas 2` inside rank 0's network namespace on rank 0's "
        "address before each torchft run and stops it after. At every synchronisation torchft's `DiLoCo` does "
        "what ours does not: it asks the lighthouse for a quorum (`start_quorum`, a round trip through its "
        "ManagerServer and the lighthouse, and a reconfiguration of the gloo group when the membership "
        "changes), keeps a backup copy of the parameters to roll back to, averages the pseudo-gradient with "
        "`Manager.allreduce` (per-tensor, wrapped in futures that catch errors) and then votes on `should_commit` "
        "before the outer step; between synchronisations each ManagerServer heartbeats to the lighthouse every "
        "100 ms. Ours averages the pseudo-gradient in buckets on a fixed gloo group and has no fault tolerance. "
        f"Versions: {', '.join(f'{k} {v}' for k, v in ver.items())}. Phase time: {peer['seconds']:.0f} s.",
    ]
    return "\n".join(lines) + "\n"


PHASE = Phase(
    name=NAME,
    add_args=add_args,
    measure=measure,
    section=section,
    estimate_s=estimate_s,
    writes=("peer", "img/benchmarks_peer.png"),
)
"""The phase as :mod:`benchmarks.run` runs it and the report renders it."""


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if "--worker" in argv:
        _worker_main(argv)
        return 0
    import tempfile

    from benchmarks.base.launch import Runner

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    add_args(p)
    p.add_argument("--json", default="peer.json", help="where to write the phase's JSON")
    p.add_argument("--markdown", default="", help="also write the section here (images next to it in img/)")
    args = p.parse_args(argv)
    ok, why = netns.can_emulate()
    if not ok:
        sys.exit(f"the emulated link needs root: {why}")
    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp, netns.emulated_link() as shaped:
        measure(args, shaped, Runner(shaped.link, Path(tmp), args.peer_timeout), out)
    Path(args.json).write_text(json.dumps(out, indent=1))
    if args.markdown:
        md = Path(args.markdown)
        md.write_text(section(out, md.parent / "img"))
    for bw, link in out["peer"]["links"].items():
        print(bw, json.dumps({k: v for k, v in link["summary"].items()}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
