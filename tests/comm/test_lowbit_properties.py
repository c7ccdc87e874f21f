"""Property tests of the low-bit wire's error feedback and chunk arithmetic (hypothesis, derandomized).

The rule (docs/algorithms/index.md, "Low-bit reductions"): what a rank sends plus the residual it
keeps is exactly what it meant to send, ``concat_j deq(q(u_j)) + e' == u`` with ``u = v + e``; the
owner's likewise, ``deq(q(m_j)) + f' == m_j``. Both hold exactly in floating point: a value and
its quantization are within a factor 2 of each other (or the quantization is 0), so their
difference is exact (Sterbenz). Over shapes that divide into neither blocks nor ranks, block
sizes, bit widths, dtypes and rank counts; the multi-rank exchange itself is checked against the
plain loop on real gloo ranks in test_lowbit.py.
"""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lightning_delayed.comm.lowbit import LowBitHook
from lightning_delayed.comm.quantized import BlockQuantizer, compute_dtype

DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)
PROPERTY = settings(max_examples=150, deadline=None, derandomize=True, database=None)
"""Derandomized: the same examples on every run and in CI (a red test reproduces); no example database."""


@st.composite
def buckets(draw: st.DrawFn) -> tuple[list[torch.Tensor], BlockQuantizer, int]:
    """A few tensors of one dtype (sizes 0..300), some with all-zero stretches, a quantizer, a rank count."""
    dtype = draw(st.sampled_from(DTYPES))
    sizes = draw(st.lists(st.integers(0, 300), min_size=1, max_size=3))
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    tensors = []
    for n in sizes:
        scale = 10.0 ** draw(st.integers(-6, 3))
        t = torch.randn(n, generator=gen, dtype=torch.float64) * scale
        if n and draw(st.booleans()):
            start = draw(st.integers(0, n - 1))
            t[start : start + draw(st.integers(1, 130))] = 0.0  # zero blocks: scale 0, nothing divides by it
        tensors.append(t.to(dtype))
    quantizer = BlockQuantizer(bits=draw(st.sampled_from((4, 8))), block_size=draw(st.integers(1, 70)))
    return tensors, quantizer, draw(st.integers(1, 5))


def _keys(tensors: list[torch.Tensor]) -> list[str]:
    return [f"t/{i}" for i in range(len(tensors))]


@PROPERTY
@given(buckets(), st.integers(1, 3))
def test_what_a_rank_sends_plus_its_residual_is_what_it_meant_to_send(
    bucket: tuple[list[torch.Tensor], BlockQuantizer, int], calls: int
) -> None:
    tensors, quantizer, ranks = bucket
    hook, keys = LowBitHook(quantizer), _keys(tensors)
    dtype = compute_dtype(tensors[0].dtype)
    for call in range(calls):
        before = [
            hook.residuals.get(k, torch.zeros(t.numel(), dtype=dtype)) for k, t in zip(keys, tensors, strict=True)
        ]
        meant = torch.cat([t.reshape(-1).to(dtype) + e for t, e in zip(tensors, before, strict=True)])
        _, _, got_dtype, sizes, wires, finite = hook._prepare(tensors, keys, list(range(len(tensors))), None, ranks)
        assert finite and got_dtype == dtype
        assert sizes == [c.numel() for c in torch.tensor_split(meant, ranks)] and sum(sizes) == meant.numel()
        # padding is never sent: each chunk's bytes are exactly its own blocks and values
        assert [w.numel() for w in wires] == [quantizer.wire_bytes(n, dtype) for n in sizes]
        sent = torch.cat([quantizer.decode(w, n, dtype) for w, n in zip(wires, sizes, strict=True)])
        residual = torch.cat([hook.residuals[k] for k in keys])
        assert torch.equal(sent + residual, meant), f"call {call}"
        # the residual of every element is at most half a step of its block's scale (plus float rounding)
        for chunk, got in zip(torch.tensor_split(meant, ranks), torch.tensor_split(sent, ranks), strict=True):
            n, scales = quantizer.quantize(chunk)
            step = scales.repeat_interleave(quantizer.block_size)[: chunk.numel()]
            rounding = 4 * torch.finfo(dtype).eps * chunk.abs()  # of z / s and n * s in the compute dtype
            assert torch.all((chunk - got).abs() <= step / 2 + rounding)
            assert torch.all(n.abs() <= quantizer.qmax)


@PROPERTY
@given(buckets(), st.integers(2, 4), st.sampled_from((3.0, 0.3, 7.0)))
def test_the_owner_keeps_what_its_send_rounds_off_and_nothing_is_lost_over_calls(
    bucket: tuple[list[torch.Tensor], BlockQuantizer, int], calls: int, weight: float
) -> None:
    """One rank owns the whole tensor, a weighted average (so the owner's sum ``sent / w`` is off the grid and
    its residual is not zero): per call ``mean + f' == (u - e') / w + f`` exactly, with ``u = w v + e``; over
    calls ``sum mean + e_T / w + f_T`` telescopes to ``sum v``, up to the rounding of ``w v + e`` and ``sent / w + f``.
    """
    tensors, quantizer, _ = bucket
    dtype = compute_dtype(tensors[0].dtype)
    tensors = [t.to(dtype) for t in tensors]  # the means come back in the tensors' dtype: keep it exact
    hook, keys = LowBitHook(quantizer), _keys(tensors)
    numel = sum(t.numel() for t in tensors)
    total = torch.zeros(numel, dtype=torch.float64)
    meant = torch.zeros(numel, dtype=torch.float64)
    try:
        for call in range(calls):
            inputs = [t * (call + 1) for t in tensors]
            e_before, f_before = dict(hook.residuals), dict(hook.owner_residuals)
            u = torch.cat(
                [
                    x.reshape(-1) * weight + e_before[k] if k in e_before else x.reshape(-1) * weight
                    for k, x in zip(keys, inputs, strict=True)
                ]
            )
            mean = torch.cat([m.reshape(-1) for m in hook.launch(inputs, keys=keys, weight=weight).wait()])
            (name,) = hook.owner_residuals
            sent = u - torch.cat([hook.residuals[k] for k in keys])
            m = sent / weight + f_before[name] if name in f_before else sent / weight
            assert torch.equal(mean + hook.owner_residuals[name], m), f"call {call}"
            total += mean.double()
            meant += torch.cat([x.reshape(-1) for x in inputs]).double()
    finally:
        hook.close()
    left = torch.cat([hook.residuals[k] for k in keys]).double() / weight + hook.owner_residuals[name].double()
    bound = max(1.0, float(meant.abs().max()) if numel else 1.0) * calls * 8 * float(torch.finfo(dtype).eps)
    assert torch.allclose(total + left, meant, rtol=0, atol=bound)
