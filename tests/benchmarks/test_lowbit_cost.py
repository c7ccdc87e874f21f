"""The low-bit own-cost measurement: its work model, its wire fraction and its break-even speed."""

from __future__ import annotations

import pytest
import torch

from benchmarks.workloads import lowbit_cost
from lightning_delayed.comm.quantized import BlockQuantizer


def test_work_per_step_counts_every_encode_and_decode_of_the_rule() -> None:
    # N = 2: encode 1 + 1/2 payloads; decode 1 + 1/2 (residuals) + 2 * 1/2 (received, gathered).
    assert lowbit_cost.step_seconds(1.0, 0.0, 2) == pytest.approx(1.5)
    assert lowbit_cost.step_seconds(0.0, 1.0, 2) == pytest.approx(2.5)
    assert lowbit_cost.step_seconds(0.0, 1.0, 4) == pytest.approx(1 + 0.25 + 1.5)


def test_a_small_run_reports_every_compressor_with_a_consistent_break_even() -> None:
    result = lowbit_cost.measure(mb=0.2, repeats=2, block_size=64, world=2)
    numel = result["numel"]
    for bits in (8, 4):
        r = result[f"int{bits}"]
        lo, hi = r["s_per_mb_range"]
        assert 0 < lo <= r["s_per_mb"] <= hi
        wire = BlockQuantizer(bits, 64).wire_bytes(numel, torch.float32)
        assert r["wire_fraction"] == wire / (4 * numel)
        saved = 2 * (2 - 1) / 2 * (4 * numel - wire)
        assert r["break_even_mbit_s"] == pytest.approx(saved / r["step_s"] * 8 / 1e6)
    assert "| int8 |" in lowbit_cost.table(result) and "| int4 |" in lowbit_cost.table(result)
