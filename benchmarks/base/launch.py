"""Starting the two ranks of one benchmark task on a link, and describing the machine.

:class:`Runner` launches one child process per rank (inside the rank's network namespace when the
link is emulated) with Lightning's environment variables, waits for both under a timeout, kills
both process groups on any failure, and returns the JSON each rank wrote.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from benchmarks.base import netns
from benchmarks.base.rank import REPO

TAIL = 3000


class RunFailed(RuntimeError):
    pass


class Runner:
    """Starts both ranks of one task on the current link and collects their JSON results."""

    def __init__(self, link: netns.Link, workdir: Path, timeout: float, accelerator: str = "cpu") -> None:
        if accelerator not in ("cpu", "gpu"):
            raise ValueError(f"accelerator must be 'cpu' or 'gpu', got {accelerator!r}")
        if accelerator == "gpu" and link.emulated:
            raise ValueError("accelerator 'gpu' runs without link emulation: NCCL does not use the namespaces' veths")
        self.link, self.workdir, self.timeout, self.accelerator = link, workdir, timeout, accelerator
        self.count = 0

    def env(self, rank: int, world: int, port: int) -> dict[str, str]:
        """The environment of rank ``rank``: Lightning's variables, one thread, the link's devices.

        With ``accelerator="gpu"`` each rank sees only its own GPU (``CUDA_VISIBLE_DEVICES`` = its
        rank: one device per rank on this machine) and :func:`benchmarks.base.rank.accelerator` says
        ``gpu`` to the worker, whose Trainer then uses NCCL.
        """
        env = dict(os.environ)
        for key in ("TORCHELASTIC_RUN_ID", "GROUP_RANK", "LOCAL_WORLD_SIZE", "SLURM_NTASKS", "SLURM_JOB_ID"):
            env.pop(key, None)
        env.update(
            MASTER_ADDR=self.link.master_addr,
            MASTER_PORT=str(port),
            WORLD_SIZE=str(world),
            RANK=str(rank),
            NODE_RANK=str(rank),
            LOCAL_RANK="0",
            OMP_NUM_THREADS="1",
            PYTHONUNBUFFERED="1",
            GLOO_SOCKET_IFNAME=self.link.devices[rank],
            TP_SOCKET_IFNAME=self.link.devices[rank],  # TensorPipe (sasgd's RPC) on the same link,
            LD_RPC_TRANSPORTS="uv",  # over TCP, not shared memory: the ranks emulate separate nodes
            LD_BENCH_NET_DEV=self.link.devices[rank] if self.link.emulated else "",
            PYTHONPATH=os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p),
        )
        if self.accelerator == "gpu":
            env.update(CUDA_VISIBLE_DEVICES=str(rank), LD_BENCH_ACCELERATOR="gpu")
        else:
            env.pop("LD_BENCH_ACCELERATOR", None)
        return env

    def _port(self) -> int:
        if self.link.emulated:  # a fresh namespace has every port free; vary it anyway (TIME_WAIT)
            return 29500 + self.count % 500
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return int(s.getsockname()[1])

    def run(self, task: str, extra: list[str], world: int = 2, module: str = "benchmarks.run") -> list[dict[str, Any]]:
        """Run ``python -m <module> --worker --task <task> --result <prefix> <extra>`` on ``world`` ranks.

        ``module`` is any module whose command line takes ``--worker``, ``--task`` and ``--result``
        and makes rank ``r`` write ``<prefix>.rank<r>.json`` (the benchmark phases with workers of
        their own, such as :mod:`benchmarks.workloads.lm`, use it).
        """
        self.count += 1
        prefix = self.workdir / f"run{self.count}"
        port = self._port()
        procs = []
        for rank in range(world):
            env = self.env(rank, world, port)
            cmd = [*self.link.exec_prefix(rank), sys.executable, "-m", module, "--worker", "--task", task]
            cmd += ["--result", str(prefix), *extra]
            logfile = open(f"{prefix}.rank{rank}.log", "w")  # noqa: SIM115 - closed below
            procs.append(
                (
                    subprocess.Popen(
                        cmd, env=env, cwd=REPO, stdout=logfile, stderr=subprocess.STDOUT, start_new_session=True
                    ),
                    logfile,
                )
            )
        deadline = time.monotonic() + self.timeout
        failure = None
        try:
            for rank, (proc, _) in enumerate(procs):
                try:
                    rc = proc.wait(timeout=max(0.1, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    failure = failure or f"timed out after {self.timeout:.0f} s"
                    break
                if rc != 0:
                    failure = failure or f"rank {rank} exited with {rc}"
                    break
        finally:
            for proc, logfile in procs:
                if proc.poll() is None:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
                logfile.close()
        paths = [Path(f"{prefix}.rank{r}.json") for r in range(world)]
        if failure is None and not all(p.exists() for p in paths):
            failure = "a rank exited 0 but wrote no result"
        if failure is not None:
            logs = "\n".join(
                f"--- rank {r} ---\n{Path(f'{prefix}.rank{r}.log').read_text()[-TAIL:]}" for r in range(world)
            )
            raise RunFailed(f"{task} {' '.join(extra)}: {failure}\n{logs}")
        return [json.loads(p.read_text()) for p in paths]


def machine() -> dict[str, Any]:
    """CPU model, core count, memory and kernel of this machine (for the report)."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = None
    with contextlib.suppress(OSError, ValueError, IndexError):
        mem = int(Path("/proc/meminfo").read_text().split()[1]) * 1024
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_bytes": mem,
        "system": f"{platform.system()} {platform.release()}",
    }


def log(msg: str) -> None:
    """One line of the run's log on stderr, with the time of day."""
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


@contextlib.contextmanager
def measured_link(
    timeout: float,
    prefix: str = "ldbench-",
    accelerator: str = "cpu",
    plan: tuple[bool, str] | None = None,
    note: bool = True,
) -> Iterator[tuple[netns.ShapedLink, Runner]]:
    """The 2-rank link a measurement runs on, and a :class:`Runner` on it, for the ``with`` block.

    ``plan`` is (emulate?, why not) (default :func:`benchmarks.base.netns.can_emulate`): as root,
    two fresh namespaces joined by a shaped veth (stale ones of earlier runs removed first, the
    new ones removed after); otherwise loopback, said in the log unless ``note`` is False. The
    ranks' files go to a temporary folder named ``prefix...``.
    """
    ok, why = plan if plan is not None else netns.can_emulate()
    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        if ok:
            removed = netns.remove_stale()
            if removed:
                log(f"removed stale namespaces of earlier runs: {removed}")
            with netns.emulated_link() as shaped:
                log(f"emulated link: namespaces {shaped.link.namespaces}")
                yield shaped, Runner(shaped.link, Path(tmp), timeout)
        else:
            if note:
                log(f"NOTE: {why}; running on loopback, unshaped")
            shaped = netns.ShapedLink(netns.LOOPBACK, netns.run_command)
            yield shaped, Runner(netns.LOOPBACK, Path(tmp), timeout, accelerator=accelerator)
