"""GPU tier: NCCL and CUDA streams. Skipped where CUDA is absent (see tests/conftest.py)."""

from __future__ import annotations

import pytest

from tests.helpers.launch import run_ranks

pytestmark = pytest.mark.gpu


def test_odsgd_on_nccl_matches_reference() -> None:
    (res,) = run_ranks("tests.gpu.gpu_worker:odsgd_on_nccl", world_size=1)
    assert res["backend"] == "nccl"
    assert res["calls"] > 0, "the delayed hook was not called on CUDA"
    for a, b in zip(res["ours"], res["reference"], strict=True):
        assert (a - b).abs().max().item() <= 1e-10


def test_average_in_flight_is_correct_while_compute_overwrites_the_source() -> None:
    (res,) = run_ranks("tests.gpu.gpu_worker:stream_overlap", world_size=1)
    assert res["correct"], "the reduction must average the launched copy, not the overwritten tensor"
