"""examples/topk_compression.py: a user's top-k ChunkCompressor in LowBitHook, against the plain-loop rule."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest
import torch

from lightning_delayed import ChunkCompressor
from tests.comm.lowbit_worker import SHAPES
from tests.helpers.launch import run_ranks
from tests.helpers.reference_lowbit import reference_rounds

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"

KEY_ORDER = [1, 0, 3, 2]
"""The tensors of lowbit_worker.rounds sorted by key ("model/0" .. "model/3")."""
FRACTION = 0.25
STEPS = 4
NUMEL = sum(math.prod(s) for s in SHAPES)  # 169: chunks of 85 and 84 on 2 ranks
KEPT = [math.ceil(FRACTION * 85), math.ceil(FRACTION * 84)]  # entries sent per chunk


def TopK(fraction: float) -> ChunkCompressor:
    """The example's compressor, imported as a user running a script beside it would."""
    if str(EXAMPLES) not in sys.path:
        sys.path.insert(0, str(EXAMPLES))
    from topk_compression import TopK as Example

    return Example(fraction)


def ref_topk(z: torch.Tensor, fraction: float) -> torch.Tensor:
    """Keep the ceil(fraction * n) entries of largest magnitude, written out; zero elsewhere."""
    k = min(z.numel(), math.ceil(fraction * z.numel()))
    out = torch.zeros_like(z)
    for i in sorted(range(z.numel()), key=lambda i: -abs(float(z[i])))[:k]:
        out[i] = z[i]
    return out


@pytest.fixture(scope="module")
def results() -> list[dict]:
    return run_ranks(
        "tests.comm.lowbit_worker:rounds", bits=8, block_size=64, dtype="float64", steps=STEPS, topk=FRACTION
    )


@pytest.fixture(scope="module")
def expected(results: list[dict]) -> dict:
    inputs = [[res["rounds"][k]["inputs"] for res in results] for k in range(STEPS)]
    return reference_rounds(inputs, KEY_ORDER, lambda z: ref_topk(z, FRACTION), feedback=True)


def _flat(tensors: list[torch.Tensor]) -> torch.Tensor:
    return torch.cat([tensors[i].reshape(-1) for i in KEY_ORDER])


def test_the_mean_is_the_rules_on_every_rank(results: list[dict], expected: dict) -> None:
    for k in range(STEPS):
        for r, res in enumerate(results):
            assert torch.equal(_flat(res["rounds"][k]["mean"]), expected["means"][k]), f"step {k} rank {r}"


def test_sent_plus_residual_is_what_was_meant(results: list[dict], expected: dict) -> None:
    for r, res in enumerate(results):
        total_sent = torch.zeros_like(expected["meant"][0][r])
        for k in range(STEPS):
            residual = torch.cat([res["rounds"][k]["residuals"][f"model/{j}"] for j in range(4)])
            # each entry is either sent whole or kept whole: exact, step by step
            assert torch.equal(expected["sent"][k][r] + residual, expected["meant"][k][r]), f"step {k} rank {r}"
            assert torch.count_nonzero(expected["sent"][k][r]) <= sum(KEPT)
            total_sent += expected["sent"][k][r]
        # over the rounds: what the rank sent plus what it still holds is the sum of its inputs
        inputs = sum(_flat(res["rounds"][k]["inputs"]) for k in range(STEPS))
        assert torch.allclose(total_sent + residual, inputs, rtol=0, atol=1e-12)


def test_the_wire_is_indices_and_values_of_the_kept_entries(results: list[dict]) -> None:
    for r, res in enumerate(results):
        for step in res["rounds"]:
            # phase 1: a flag byte and the other rank's chunk; phase 2: this rank's chunk of the mean
            assert step["bytes"] == 1 + (KEPT[1 - r] + KEPT[r]) * (4 + 8) < NUMEL * 8 / 2


def test_nan_raises_on_every_rank(results: list[dict]) -> None:
    assert all(res["nan_error"] is not None for res in results)
    assert "top-0.25" in results[1]["nan_error"]


def test_bad_fraction_is_refused_and_empty_chunks_work() -> None:
    with pytest.raises(ValueError, match=r"fraction must be in \(0, 1\], got 0"):
        TopK(0)
    compressor = TopK(0.5)
    assert isinstance(compressor, ChunkCompressor)
    wire, decoded = compressor.roundtrip(torch.zeros(0))
    assert wire.numel() == compressor.wire_bytes(0, torch.float32) == 0 and decoded.numel() == 0
    z = torch.tensor([0.5, -3.0, 1.0, 2.0, 0.0])
    wire, decoded = compressor.roundtrip(z)
    assert wire.dtype == torch.uint8 and wire.numel() == compressor.wire_bytes(5, torch.float32) == 3 * 8
    assert torch.equal(decoded, torch.tensor([0.0, -3.0, 1.0, 2.0, 0.0]))

