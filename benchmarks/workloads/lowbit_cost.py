"""Own cost of the low-bit wire: block quantize + dequantize time per MB on one CPU thread.

Per rank and step a low-bit reduction with error feedback (docs/algorithms/index.md, "Low-bit
reductions") of a payload P encodes ``1 + 1/N`` P (every chunk it sends, then its chunk of the
mean) and decodes ``1 + 1/N + 2 (N - 1) / N`` P (what it sent and its mean chunk, for the two
residuals; the N - 1 chunks it receives to sum; the N - 1 chunks of the mean it gathers). This
times ``BlockQuantizer.encode`` and ``decode`` of one fp32 buffer, ``--repeats`` rounds with every
compressor once per round (int8, int4: interleaved), and reports the median and range per MB of
one encode + decode and the cost per step of that model. It also states the link speed above
which the cost eats the gain: per rank and step the wire carries ``2 (N - 1) / N`` payloads (a
ring all-reduce at fp32, the low-bit shape at ``wire_bytes``), so the time saved at ``L`` bytes/s
is ``2 (N - 1) / N * (P - P_lowbit) / L``; at the break-even speed it equals the cost. Usage::

    python -m benchmarks.lowbit_cost --mb 45 --repeats 5     # 45 MB: a ResNet-18 gradient
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from typing import Any

import torch

from lightning_delayed.comm.quantized import BlockQuantizer

BITS = (8, 4)


def roundtrip_seconds(quantizer: BlockQuantizer, x: torch.Tensor) -> tuple[float, float]:
    """Wall time of one ``encode`` and of one ``decode`` of ``x`` (the wire back to fp32)."""
    start = time.perf_counter()
    wire = quantizer.encode(x)
    encoded = time.perf_counter()
    quantizer.decode(wire, x.numel(), x.dtype)
    return encoded - start, time.perf_counter() - encoded


def step_seconds(encode_s: float, decode_s: float, world: int) -> float:
    """One rank's quantization work per step of a payload whose encode / decode take these times."""
    return encode_s * (1 + 1 / world) + decode_s * (1 + 1 / world + 2 * (world - 1) / world)


def measure(mb: float, repeats: int, block_size: int, world: int, seed: int = 0) -> dict[str, Any]:
    """Per compressor: seconds per MB (median, min, max over ``repeats``) and the break-even link speed."""
    torch.set_num_threads(1)
    numel = int(mb * 1e6) // 4
    x = torch.randn(numel, generator=torch.Generator().manual_seed(seed))
    quantizers = {f"int{b}": BlockQuantizer(b, block_size) for b in BITS}
    for q in quantizers.values():  # warm-up: allocator and first-call costs out of the figures
        roundtrip_seconds(q, x)
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in quantizers}
    for _ in range(repeats):
        for name, q in quantizers.items():  # interleaved: a drift of the machine hits both alike
            times[name].append(roundtrip_seconds(q, x))
    payload = numel * 4
    out: dict[str, Any] = {"mb": payload / 1e6, "numel": numel, "block_size": block_size, "world": world}
    for name, q in quantizers.items():
        roundtrips = [e + d for e, d in times[name]]
        per_step = statistics.median(step_seconds(e, d, world) for e, d in times[name])
        saved_bytes = 2 * (world - 1) / world * (payload - q.wire_bytes(numel, x.dtype))
        out[name] = {
            "s_per_mb": statistics.median(roundtrips) / (payload / 1e6),
            "s_per_mb_range": [min(roundtrips) / (payload / 1e6), max(roundtrips) / (payload / 1e6)],
            "step_s": per_step,
            "wire_fraction": q.wire_bytes(numel, x.dtype) / payload,
            # Above this link speed the quantization work costs more time than the smaller wire saves.
            "break_even_mbit_s": saved_bytes / per_step * 8 / 1e6,
        }
    return out


def table(result: dict[str, Any]) -> str:
    rows = [
        f"quantize + dequantize of {result['mb']:.1f} MB fp32 on one thread, block {result['block_size']}, "
        f"break-even for {result['world']} ranks:",
        "| compressor | encode + decode, ms per MB (median [min, max]) | work per step (ms) | wire / fp32 "
        "| eats the gain above |",
        "|---|---:|---:|---:|---:|",
    ]
    for name in (f"int{b}" for b in BITS):
        r = result[name]
        lo, hi = r["s_per_mb_range"]
        rows.append(
            f"| {name} | {r['s_per_mb'] * 1e3:.2f} [{lo * 1e3:.2f}, {hi * 1e3:.2f}] | {r['step_s'] * 1e3:.0f} "
            f"| {r['wire_fraction']:.3f} "
            f"| {r['break_even_mbit_s']:.0f} Mbit/s |"
        )
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=float, default=45.0, help="payload in MB (default: a ResNet-18 gradient)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--block-size", type=int, default=64)
    parser.add_argument("--world", type=int, default=2, help="ranks, for the break-even link speed")
    parser.add_argument("--json", default="", help="also write the result to this file")
    args = parser.parse_args(argv)
    result = measure(args.mb, args.repeats, args.block_size, args.world)
    print(table(result))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    return result


if __name__ == "__main__":
    main()
