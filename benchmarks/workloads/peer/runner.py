"""The phase on the runner's side: its options, its budget, its measurement."""

from __future__ import annotations

import argparse
import contextlib
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from benchmarks.base import netns
from benchmarks.base.phase import Options
from benchmarks.workloads.peer.common import (
    BATCH,
    IMPLS,
    INNER_LR,
    LIGHTHOUSE_PORT,
    MODEL,
    NAME,
    OUTER,
    SYNC_EVERY,
    VAL_WINDOWS,
    schedule,
    summarise,
)

if TYPE_CHECKING:
    from collections.abc import Iterator

    from benchmarks.base.launch import Runner


WORKER = "benchmarks.workloads.peer.cli"
"""The module the ranks run (``--worker``)."""


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
    opt = Options(p, NAME, "our diloco against torchft's DiLoCo with its Manager and lighthouse")
    opt("bandwidths", "200mbit", "comma-separated rates (default 200mbit)")
    opt("repeats", 6, "interleaved repeats (seeds 0..n-1), default 6: with 3, two full runs gave 1.04x and 0.99x")
    opt("steps", 64, "optimizer steps per run (default 64)")
    opt("sync-every", SYNC_EVERY, f"H of both (default {SYNC_EVERY})")
    opt("timeout", 240.0, "seconds per run before it is killed")


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
                        ranks = runner.run("train", [*extra, "--lighthouse", url], module=WORKER)
                else:
                    ranks = runner.run("train", extra, module=WORKER)
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
