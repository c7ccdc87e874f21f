"""Run a function on N real ranks (fresh processes, gloo), like torchrun does.

Each rank gets ``MASTER_ADDR/PORT, WORLD_SIZE, RANK, LOCAL_RANK, NODE_RANK`` and one compute
thread, imports ``module`` and calls ``function(**kwargs)``; its return value comes back through a
file. Lightning sees ``LOCAL_RANK`` and treats the processes as externally launched ranks.
A rank that fails or a run that exceeds ``timeout`` kills every rank and fails the test with the
ranks' output, so nothing hangs.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[2]


DISTRIBUTED_ENV = ("MASTER_ADDR", "MASTER_PORT", "WORLD_SIZE", "RANK", "LOCAL_RANK", "NODE_RANK", "GROUP_RANK")
"""What an in-process ``fit`` makes Lightning put in ``os.environ`` (its store may still hold the port)."""


def child_env(**extra: str) -> dict[str, str]:
    """``os.environ`` without the distributed variables an earlier in-process fit left, plus ``extra``.

    A child launched with an inherited ``MASTER_PORT`` would try to listen on the port the pytest
    process's store still holds (``EADDRINUSE``), depending only on which tests ran before it.
    """
    env = {k: v for k, v in os.environ.items() if k not in DISTRIBUTED_ENV}
    env.update(extra)
    return env


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run_ranks(target: str, world_size: int = 2, timeout: float = 240.0, **kwargs: Any) -> list[Any]:
    """Run ``target`` ("package.module:function") on ``world_size`` ranks; return each rank's result."""
    outcome = _run(target, world_size, timeout, kwargs)
    if outcome.failure is not None:
        raise AssertionError(f"{target}: {outcome.failure}\n{outcome.logs_text()}")
    return outcome.results


@dataclass
class Outcome:
    returncodes: list[int | None]
    logs: list[str]
    results: list[Any]
    failure: str | None
    seconds: float

    def logs_text(self) -> str:
        return "\n".join(f"----- rank {r} -----\n{log[-6000:]}" for r, log in enumerate(self.logs))


def run_ranks_expecting_failure(target: str, world_size: int = 2, timeout: float = 240.0, **kwargs: Any) -> Outcome:
    """Like :func:`run_ranks`, but return the outcome (exit codes, logs, time) instead of raising."""
    return _run(target, world_size, timeout, kwargs)


def _run(target: str, world_size: int, timeout: float, kwargs: dict[str, Any]) -> Outcome:
    module, function = target.split(":")
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="ld-ranks-") as tmp:
        procs = []
        for rank in range(world_size):
            env = dict(os.environ)
            env.update(
                MASTER_ADDR="127.0.0.1",
                MASTER_PORT=str(port),
                WORLD_SIZE=str(world_size),
                LD_WORLD_SIZE=str(world_size),
                RANK=str(rank),
                LOCAL_RANK=str(rank),
                NODE_RANK="0",
                OMP_NUM_THREADS="1",
                PYTHONPATH=str(REPO) + os.pathsep + env.get("PYTHONPATH", ""),
                LD_TEST_TMP=tmp,
            )
            log = open(Path(tmp) / f"rank{rank}.log", "w")  # noqa: SIM115 - closed below
            cmd = [sys.executable, "-m", "tests.helpers.worker", module, function, json.dumps(kwargs), tmp]
            procs.append((subprocess.Popen(cmd, env=env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT), log))
        failed = None
        start = time.monotonic()
        try:
            for rank, (proc, _) in enumerate(procs):
                rc = proc.wait(timeout=max(0.1, start + timeout - time.monotonic()))
                if rc != 0 and failed is None:
                    failed = f"rank {rank} exited with {rc}"
        except subprocess.TimeoutExpired:
            failed = f"ranks did not finish within {timeout} s"
        finally:
            for proc, log in procs:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
                log.close()
        seconds = time.monotonic() - start
        logs = [(Path(tmp) / f"rank{r}.log").read_text() for r in range(world_size)]
        codes = [proc.returncode for proc, _ in procs]
        results = []
        if failed is None:
            results = [torch.load(Path(tmp) / f"result{r}.pt", weights_only=False) for r in range(world_size)]
        return Outcome(codes, logs, results, failed, seconds)
