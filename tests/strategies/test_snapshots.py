"""ElasticSnapshots on 2 real gloo ranks: commit on every rank, newest committed step, served to a new node."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from lightning_delayed import ElasticSnapshots
from tests.helpers.launch import run_ranks


@pytest.mark.timeout(300)
def test_a_fit_resumes_from_the_newest_committed_snapshot_on_every_rank(tmp_path: Path) -> None:
    results = run_ranks("tests.strategies.snapshot_worker:snapshots", world_size=2, tmp=str(tmp_path))
    for r, res in enumerate(results):
        assert res["written"] == [3, 6], f"rank {r}: committed snapshots {res['written']}"
        # step 9's file on rank 0 has no commit marker; rank 1's directory was empty
        assert res["resumed_step"] == 6 and res["start_step"] == 6, f"rank {r}: {res['resumed_step']}"
        assert res["steps"] == 10
        assert res["after"] == [6, 9], f"rank {r}: after the resumed fit {res['after']} (keep=2)"
        for i, (got, want) in enumerate(zip(res["final"], res["straight"], strict=True)):
            assert torch.equal(got, want), f"rank {r}, tensor {i}: the resumed run differs from the uninterrupted one"
    assert (tmp_path / "node1" / "step-6.ckpt").is_file(), "rank 1 must have received the snapshot"


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"every_n_steps": 0, "dirpath": "d"}, ValueError, "every_n_steps must be an integer >= 1.*got 0"),
        ({"every_n_steps": True, "dirpath": "d"}, ValueError, "every_n_steps"),
        ({"every_n_steps": 2, "dirpath": "d", "keep": 0}, ValueError, "keep must be an integer >= 1.*got 0"),
        ({"every_n_steps": 2, "dirpath": 3}, TypeError, "dirpath must be a path.*int: 3"),
    ],
)
def test_bad_arguments_are_refused(kwargs: dict[str, object], error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        ElasticSnapshots(**kwargs)  # type: ignore[arg-type]
