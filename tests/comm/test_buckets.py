"""Bucketed asynchronous averaging and the delayed DDP hook."""

from __future__ import annotations

import pytest
import torch

from lightning_delayed.comm.buckets import all_finite, launch_average, plan_buckets
from tests.helpers.launch import run_ranks


def test_plan_buckets_respects_cap_dtype_and_order() -> None:
    ts = [
        torch.zeros(4),
        torch.zeros(4),
        torch.zeros(2, dtype=torch.float64),
        torch.zeros(100),
        torch.zeros(1),
    ]
    plan = plan_buckets(ts, bucket_cap_mb=32 / 2**20)  # 32 bytes = 8 float32
    assert plan == [[0, 1], [2], [3], [4]]
    assert plan_buckets(ts, bucket_cap_mb=25) == [[0, 1, 3, 4], [2]]


def test_single_process_average_is_a_copy() -> None:
    src = [torch.arange(6.0).view(2, 3), torch.ones(2)]
    pending = launch_average(src)
    src[0].zero_()
    out = pending.wait()
    assert torch.equal(out[0], torch.arange(6.0).view(2, 3)) and torch.equal(out[1], torch.ones(2))
    assert out[0].data_ptr() != src[0].data_ptr()
    assert pending.wait() is out  # idempotent


def test_average_on_two_ranks() -> None:
    results = run_ranks("tests.comm.comm_worker:averaging")
    for res in results:
        assert res["buckets"] >= 3
        torch.testing.assert_close(res["mean"][0], torch.full((3, 2), 1.5), rtol=0, atol=0)
        torch.testing.assert_close(res["mean"][1], torch.arange(5.0) * 1.5, rtol=0, atol=0)
        assert res["mean"][2].dtype == torch.float64
        # weights 1 and 4: (1*0 + 4*1) / 5
        torch.testing.assert_close(res["weighted"], torch.tensor([0.8]))
        assert res["nan_error"] is not None and "parameters contains NaN or Inf" in res["nan_error"]
        assert "attention mask" in res["nan_error"] and "average_buffers=False" in res["nan_error"]


@pytest.mark.parametrize("compression", ["none", "fp16"])
def test_gradient_hook_launches_mean_returns_local_grad_and_survives_rebuild(compression: str) -> None:
    results = run_ranks("tests.comm.comm_worker:hook_across_bucket_rebuild", compression=compression)
    for res in results:
        # exact: the plain mean, or the fp16 mean of the error-fed wire tensors simulated by hand
        assert all(e == 0.0 for e in res["errors"]), res["errors"]
        assert all(res["local_ok"]), "p.grad must hold the local gradient"
        counts = res["buckets_per_step"]
        assert max(counts) > 1, f"expected several buckets per step, got {counts}"
        # DDP rebuilds its buckets after the first iteration; the steps span both layouts
        assert counts[0] != counts[1], f"no bucket rebuild observed: {counts}"
        if compression != "none":
            residuals = res["state"]["compressor"]["residuals"]
            assert sorted(residuals) == [f"grad/{i}" for i in range(6)], "error feedback is keyed by parameter"
            assert any(bool(r.abs().max() > 0) for r in residuals.values())


def test_an_average_on_the_hooks_group_does_not_block_the_default_group() -> None:
    results = run_ranks("tests.comm.comm_worker:own_group_does_not_block_default_group", timeout=120)
    for res in results:
        assert torch.equal(res["mean"], torch.full((4,), 2.0))
        assert res["flag"] == 11


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64, torch.complex64])
def test_all_finite_finds_every_nan_and_infinity_and_never_overflows(dtype: torch.dtype) -> None:
    big = torch.finfo(torch.float32 if dtype == torch.complex64 else dtype).max
    tensors = [torch.full((5,), big, dtype=dtype), -torch.full((300,), big, dtype=dtype), torch.zeros(0, dtype=dtype)]
    assert all_finite(tensors) and all_finite([]) and all_finite([torch.zeros(0)])  # sums of these would overflow
    for bad in (float("nan"), float("inf"), -float("inf")):
        for where in (0, 137, 299):
            broken = [t.clone() for t in tensors]
            broken[1][where] = bad if dtype != torch.complex64 else complex(0.0, bad)
            assert not all_finite(broken), (dtype, bad, where)
