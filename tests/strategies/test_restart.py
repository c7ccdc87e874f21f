"""Automatic restarts under ``torchrun --max-restarts``: a killed rank, a restarted attempt that
resumes from ``last.ckpt``, and a result equal to the uninterrupted run.

Before the fix the restarted attempt rendezvoused on the store keys of the dead attempt (the
elastic agent keeps one store for all attempts) and hung in ``dist.new_group`` or failed with
"Gloo connectFullMesh failed ... Connection refused" (see lightning_delayed/comm/groups.py).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "tests" / "strategies" / "restart_script.py"


def _torchrun(strategy: str, out: Path, kill_at: int) -> None:
    out.mkdir()
    env = dict(os.environ, OMP_NUM_THREADS="1", LD_WORLD_SIZE="2")
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "--max-restarts=1"]
    try:
        proc = subprocess.run(
            [*cmd, str(SCRIPT), strategy, str(out), str(kill_at)],
            env=env,
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=200,
        )
    except subprocess.TimeoutExpired as e:
        raise AssertionError(f"torchrun did not finish within 200 s\n{e.output}\n{e.stderr}") from e
    assert proc.returncode == 0, f"torchrun failed ({proc.returncode})\n{proc.stdout[-4000:]}\n{proc.stderr[-8000:]}"


@pytest.mark.timeout(500)
@pytest.mark.parametrize("strategy", ["odsgd", "dasgd"])  # a gradient and an averaging strategy
def test_a_torchrun_restart_resumes_and_ends_equal_to_the_uninterrupted_run(strategy: str, tmp_path: Path) -> None:
    _torchrun(strategy, tmp_path / "uninterrupted", kill_at=-1)
    # Rank 1 dies before step 6 of 12 (epoch 2; dasgd's period of 3 spans the epoch boundary),
    # so the restarted attempt resumes from the end of epoch 1.
    _torchrun(strategy, tmp_path / "restarted", kill_at=6)
    for rank in (0, 1):
        attempts = (tmp_path / "restarted" / f"attempts{rank}.txt").read_text().split()
        # attempt 0 starts at step 0; attempt 1 resumes from last.ckpt, written at the end of the first epoch
        assert attempts == ["0:0", "1:4"], f"rank {rank}: attempts (restart count:first step) {attempts}"
        expected = torch.load(tmp_path / "uninterrupted" / f"final{rank}.pt")
        got = torch.load(tmp_path / "restarted" / f"final{rank}.pt")
        for i, (e, g) in enumerate(zip(expected, got, strict=True)):
            assert torch.equal(e, g), f"rank {rank}, parameter {i}: max difference {(e - g).abs().max().item()}"
