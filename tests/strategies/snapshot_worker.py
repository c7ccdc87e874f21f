"""Rank-side code of tests/strategies/test_snapshots.py: snapshots written, committed, served, resumed."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from lightning_delayed import ElasticSnapshots
from lightning_delayed.strategies.snapshots import committed_steps, snapshot_path
from tests.distributed.resume_worker import _fit
from tests.helpers.models import rank

CASE: dict[str, Any] = {
    "kind": "diloco",
    "args": {"sync_every": 4},
    "opt": {"kind": "sgd", "lr": 0.05, "momentum": 0.9},
    "n_batches": 5,
}


def snapshots(tmp: str) -> dict[str, Any]:
    """Uninterrupted 10 steps; 7 steps with snapshots every 3; then a fresh fit that resumes from them.

    Before the second fit rank 1's node is "replaced" (its directory is gone) and rank 0 holds a
    newer snapshot file that was never committed (no marker): the fit must resume from step 6 on
    both ranks, rank 1 receiving the snapshot from rank 0.
    """
    straight = _fit(CASE, max_steps=10)
    node = Path(tmp) / f"node{rank()}"
    _fit(CASE, max_steps=7, callbacks=[ElasticSnapshots(3, node)])
    written = committed_steps(node)
    if rank() == 1:
        shutil.rmtree(node)
    else:
        shutil.copy(snapshot_path(node, 6), snapshot_path(node, 9))  # a file without its commit marker
    snap = ElasticSnapshots(3, node)
    resumed = _fit(CASE, max_steps=10, callbacks=[snap])
    return {
        "written": written,
        "resumed_step": snap.resumed_step,
        "start_step": resumed["start"]["step"],
        "steps": resumed["steps"],
        "final": resumed["final"],
        "straight": straight["final"],
        "after": committed_steps(node),
    }
