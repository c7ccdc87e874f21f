"""The low-bit reduction (int8 / int4) against a plain-loop reference of docs/algorithms/index.md, on gloo ranks."""

from __future__ import annotations

import math

import pytest
import torch

from lightning_delayed.comm.lowbit import LowBitHook
from lightning_delayed.comm.quantized import BlockQuantizer, pack_int4, unpack_int4
from tests.comm.lowbit_worker import SHAPES
from tests.helpers.launch import run_ranks
from tests.helpers.reference_lowbit import ref_quantize, reference_rounds

KEY_ORDER = [1, 0, 3, 2]
"""The tensors of lowbit_worker.rounds sorted by key ("model/0" .. "model/3")."""


def reference(inputs: list[list[list[torch.Tensor]]], bits: int, block: int, feedback: bool) -> list[torch.Tensor]:
    """inputs[step][rank] -> the flat mean of every step, with both residuals carried by hand."""
    return reference_rounds(inputs, KEY_ORDER, lambda z: ref_quantize(z, bits, block), feedback)["means"]


def wire_formula(ranks: int, numel: int, bits: int, block: int, scale_bytes: int) -> float:
    """2 (N-1)/N of the payload at bits/8 bytes an element, plus one scale per block per chunk sent."""
    chunk = numel / ranks
    per_chunk = chunk * bits / 8 + math.ceil(chunk / block) * scale_bytes
    return 2 * (ranks - 1) * per_chunk


@pytest.mark.parametrize(
    ("ranks", "bits", "block", "dtype", "feedback"),
    [
        (2, 8, 64, "float32", True),
        (2, 4, 3, "float32", True),
        (2, 8, 5, "float64", False),
        (3, 4, 64, "float32", True),
        (3, 8, 2, "float64", True),
    ],
)
def test_lowbit_average_is_bit_identical_to_the_plain_loop(
    ranks: int, bits: int, block: int, dtype: str, feedback: bool
) -> None:
    results = run_ranks(
        "tests.comm.lowbit_worker:rounds",
        world_size=ranks,
        bits=bits,
        block_size=block,
        dtype=dtype,
        error_feedback=feedback,
    )
    steps = len(results[0]["rounds"])
    inputs = [[res["rounds"][k]["inputs"] for res in results] for k in range(steps)]
    expected = reference(inputs, bits, block, feedback)
    numel = sum(math.prod(s) for s in SHAPES)
    for k in range(steps):
        for r, res in enumerate(results):
            mean = res["rounds"][k]["mean"]
            flat = torch.cat([mean[i].reshape(-1).to(expected[k].dtype) for i in KEY_ORDER])
            assert torch.equal(flat, expected[k]), f"step {k} rank {r}: not the reference mean"
            assert all(m.dtype == getattr(torch, dtype) for m in mean)
            sent = res["rounds"][k]["bytes"]
            # one flag byte per chunk of the first phase rides along: N - 1 bytes
            scale = 8 if dtype == "float64" else 4
            assert sent == pytest.approx(wire_formula(ranks, numel, bits, block, scale), rel=0.03), (k, r, sent)
    for r, res in enumerate(results):
        assert bool(res["state"]["residuals"]) == feedback and bool(res["state"]["owner_residuals"]) == feedback
        assert res["nan_error"] is not None, f"rank {r} did not raise on rank 1's NaN"
    assert "on this rank" in results[1]["nan_error"] and "Nothing was sent" in results[1]["nan_error"]
    assert "rank(s) [1]" in results[0]["nan_error"]


def test_int4_packs_two_values_a_byte_and_unpacks_them() -> None:
    n = torch.tensor([-7, 7, 0, 3, -1], dtype=torch.int8)
    packed = pack_int4(n)
    assert packed.dtype == torch.uint8 and packed.numel() == 3
    assert torch.equal(unpack_int4(packed, 5), n)
    q = BlockQuantizer(4, block_size=4)
    assert q.wire_bytes(5, torch.float32) == 3 + 2 * 4
    assert q.encode(torch.randn(5)).numel() == 11


def test_zero_blocks_round_half_even_and_clamp() -> None:
    q = BlockQuantizer(8, block_size=2)
    z = torch.tensor([0.0, 0.0, 127.0, 0.5, -254.0, 1.0])
    n, s = q.quantize(z)
    assert torch.equal(s, torch.tensor([0.0, 1.0, 2.0]))
    assert torch.equal(n, torch.tensor([0, 0, 127, 0, -127, 0], dtype=torch.int8))  # 0.5 -> 0, 0.5 -> 0 (half even)
    assert torch.equal(q.decode(q.encode(z), 6, torch.float32), torch.tensor([0.0, 0.0, 127.0, 0.0, -254.0, 0.0]))


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match=r"bits must be 8 .* got 3"):
        BlockQuantizer(3)
    with pytest.raises(ValueError, match="block_size must be an int >= 1, got 0"):
        BlockQuantizer(8, 0)
    with pytest.raises(TypeError, match=r"compressor must be a lightning_delayed\.ChunkCompressor"):
        LowBitHook("int8")  # type: ignore[arg-type]
