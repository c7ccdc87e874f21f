"""Wire compression: the Compressor's error-feedback arithmetic and CompressedHook's compressed mean."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
import torch
from torch import Tensor

from lightning_delayed import AllReduceHook, CommHook, CompressedHook, Compressor
from lightning_delayed.comm.buckets import Pending
from lightning_delayed.comm.compression import WIRE_DTYPES, check_compression
from tests.helpers.fake_comm import FakeGroup
from tests.helpers.launch import run_ranks


class FakeHook(CommHook):
    """One replica of an in-process "all-reduce": the mean of every replica's tensors, in their dtype."""

    def __init__(self, group: FakeGroup, rank: int) -> None:
        self.group, self.rank = group, rank
        self.seen_dtypes: list[list[torch.dtype]] = []

    def launch(
        self,
        tensors: Sequence[Tensor],
        *,
        weight: float | None = None,
        keys: Sequence[str] | None = None,
        what: str = "tensors",
    ) -> Pending:
        assert weight is None, "CompressedHook sends weights as a tensor, never as the inner hook's weight"
        self.seen_dtypes.append([t.dtype for t in tensors])
        return self.group.launch(self.rank, list(tensors))


@pytest.mark.parametrize("compression", ["fp16", "bf16"])
def test_compressor_error_feedback_arithmetic_is_exact(compression: str) -> None:
    wire_dtype = WIRE_DTYPES[compression]
    compressor = Compressor(compression)
    gen = torch.Generator().manual_seed(0)
    residual = torch.zeros(50, dtype=torch.float64)
    for _ in range(5):
        t = torch.randn(50, generator=gen, dtype=torch.float64)
        wire = compressor.compress(t, "x")
        assert wire.dtype == wire_dtype
        assert torch.equal(wire, (t + residual).to(wire_dtype))
        residual = t + residual - wire.double()
        assert torch.equal(compressor.residuals["x"], residual)
        assert bool(residual.abs().max() > 0), "the cast lost nothing: the test data are too easy"
        assert torch.equal(compressor.decompress(wire, torch.float64), wire.double())


def test_error_feedback_keeps_the_sum_that_plain_casting_loses() -> None:
    # 1e-4 + 3e-8 per round: fp16 rounds the 3e-8 away every time; error feedback carries it over.
    t = torch.full((4,), 1e-4 + 3e-8, dtype=torch.float64)
    fed, plain = Compressor("fp16"), Compressor("fp16", error_feedback=False)
    rounds = 200
    sent_fed = sum(fed.compress(t, "k").double() for _ in range(rounds))
    sent_plain = sum(plain.compress(t, "k").double() for _ in range(rounds))
    target = t * rounds
    assert isinstance(sent_fed, Tensor) and isinstance(sent_plain, Tensor)
    # what was sent plus what is still owed is what was meant, up to float64 rounding
    torch.testing.assert_close(sent_fed + fed.residuals["k"], target, rtol=0, atol=1e-15)
    assert float((sent_fed - target).abs().max()) < float((sent_plain - target).abs().max()) / 10
    assert plain.residuals == {}


def test_compressor_passes_through_what_it_cannot_shrink_and_checks_keys() -> None:
    c = Compressor("fp16")
    ints = torch.arange(5)
    assert torch.equal(c.compress(ints, "i"), ints) and c.compress(ints, "i").dtype == torch.int64
    bf = torch.randn(3).bfloat16()
    assert c.compress(bf, "b").dtype == torch.bfloat16, "bf16 is no wider than fp16: sent as is"
    assert c.residuals == {}
    assert c.compress(torch.randn(3), None).dtype == torch.float16 and c.residuals == {}
    c.compress(torch.randn(3), "x")
    with pytest.raises(RuntimeError, match="key 'x' was used for a tensor of shape"):
        c.compress(torch.randn(4), "x")
    restored = Compressor("fp16")
    restored.load_state_dict(c.state_dict())
    assert torch.equal(restored.residuals["x"], c.residuals["x"])


@pytest.mark.parametrize("compression", ["fp16", "bf16"])
def test_compressed_hook_result_is_the_wire_mean_of_error_fed_tensors(compression: str) -> None:
    wire_dtype = WIRE_DTYPES[compression]
    group = FakeGroup(2)
    inners = [FakeHook(group, r) for r in range(2)]
    hooks = [CompressedHook(inner, compression) for inner in inners]
    residuals = [[torch.zeros(6, dtype=torch.float64), torch.zeros(2, 3)] for _ in range(2)]
    for k in range(3):
        sent = [
            [torch.randn(6, generator=torch.Generator().manual_seed(10 * r + k), dtype=torch.float64), torch.rand(2, 3)]
            for r in range(2)
        ]
        pendings = [h.launch(s, keys=["a", "b"]) for h, s in zip(hooks, sent, strict=True)]
        results = [p.wait() for p in pendings]
        for i in range(2):
            wires = [(sent[r][i] + residuals[r][i]).to(wire_dtype) for r in range(2)]
            for r in range(2):
                residuals[r][i] = sent[r][i] + residuals[r][i] - wires[r].to(sent[r][i].dtype)
            expected = ((wires[0] + wires[1]) / 2).to(sent[0][i].dtype)
            for r in range(2):
                assert results[r][i].dtype == sent[r][i].dtype
                assert torch.equal(results[r][i], expected), f"round {k}, tensor {i}, replica {r}"
    assert inners[0].seen_dtypes[0] == [wire_dtype, wire_dtype]


def test_compressed_hook_weighted_and_one_off_averages() -> None:
    group = FakeGroup(2)
    inners = [FakeHook(group, r) for r in range(2)]
    hooks = [CompressedHook(inner, "fp16") for inner in inners]
    xs = [torch.full((3,), 0.1 * (r + 1), dtype=torch.float64) for r in range(2)]
    weights = [1.0, 4.0]
    pendings = [h.launch([x], weight=w, keys=["m"]) for h, x, w in zip(hooks, xs, weights, strict=True)]
    got = [p.wait()[0] for p in pendings]
    wires = [(x * w).half() for x, w in zip(xs, weights, strict=True)]
    expected = ((wires[0] + wires[1]) / 2).double() / 2.5  # mean wire / mean weight
    assert all(torch.equal(g, expected) for g in got)
    assert inners[0].seen_dtypes[-1] == [torch.float16, torch.float64], "the weight travels at full precision"
    torch.testing.assert_close(got[0], torch.full((3,), 0.9 / 5, dtype=torch.float64), rtol=1e-3, atol=0)
    # keys=None: a one-off average at full precision, no residual touched
    one_off = [h.launch([x]) for h, x in zip(hooks, xs, strict=True)]
    assert all(torch.equal(p.wait()[0], (xs[0] + xs[1]) / 2) for p in one_off)
    assert inners[0].seen_dtypes[-1] == [torch.float64]
    assert sorted(hooks[0].compressor.residuals) == ["m"]


def test_compression_arguments_are_checked() -> None:
    with pytest.raises(
        ValueError, match=r"compression must be one of \('none', 'fp16', 'bf16', 'int8', 'int4'\), got 'fp8'"
    ):
        check_compression("fp8")
    with pytest.raises(ValueError, match=r"compression must be one of \('fp16', 'bf16'\), got 'int8'"):
        CompressedHook(compression="int8")  # type: ignore[arg-type]  # the casts only: int8 is LowBitHook's
    with pytest.raises(ValueError, match=r"compression must be one of \('fp16', 'bf16'\), got 'none'"):
        CompressedHook(compression="none")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="error_feedback must be True or False, got 1"):
        Compressor("bf16", error_feedback=1)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="compressing twice"):
        CompressedHook(CompressedHook())
    with pytest.raises(TypeError, match=r"inner must be a lightning_delayed\.CommHook"):
        CompressedHook(inner=print)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="bucket_cap_mb must be a number of MiB > 0, got 0"):
        AllReduceHook(bucket_cap_mb=0)


@pytest.mark.parametrize("compression", ["fp16", "bf16"])
def test_compressed_average_on_two_gloo_ranks(compression: str) -> None:
    wire_dtype = WIRE_DTYPES[compression]
    results = run_ranks("tests.comm.comm_worker:compressed_average", compression=compression)
    for k in range(3):
        per_rank = [res["rounds"][k] for res in results]
        for i in range(2):
            wires = []
            for rr in per_rank:
                sent, before = rr["sent"][i], rr["residuals_before"][i]
                corrected = sent if before is None else sent + before
                wire = corrected.to(wire_dtype)
                assert torch.equal(rr["residuals_after"][i], corrected - wire.to(sent.dtype)), "error feedback"
                wires.append(wire)
            expected = ((wires[0] + wires[1]) / 2).to(per_rank[0]["sent"][i].dtype)
            for r, rr in enumerate(per_rank):
                assert torch.equal(rr["result"][i], expected), f"round {k} tensor {i} rank {r}: not the wire mean"
    w0 = (torch.full((4,), 0.1, dtype=torch.float64) * 1.0).to(wire_dtype)
    w1 = (torch.full((4,), 0.2, dtype=torch.float64) * 4.0).to(wire_dtype)
    for res in results:
        assert torch.equal(res["weighted"], ((w0 + w1) / 2).double() / 2.5)
        exact = (
            torch.full((3,), 1.0 / 3, dtype=torch.float64) + torch.full((3,), 1.0 / 3 + 1, dtype=torch.float64)
        ) / 2
        assert torch.equal(res["one_off"], exact), "one-off averages are sent at full precision"
