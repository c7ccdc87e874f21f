"""The PROJECTION to 8-1024 ranks on GPU-class links: model output, not a measurement."""

from __future__ import annotations

import statistics
from typing import TYPE_CHECKING, Any

from benchmarks.workloads.scaling.model import ring_allreduce_s, step_time

if TYPE_CHECKING:
    from collections.abc import Sequence


PROJECTION_MODELS = {
    "ResNet-50": {
        "params": 25.6e6,
        "bytes": 25.6e6 * 4,
        "t_c": 0.10,
        "why": "batch 256 per GPU at about 2,500 images/s: the order of the A100 mixed-precision ResNet-50 "
        "training throughput NVIDIA publishes (DeepLearningExamples); fp32 gradients and weights on the wire",
    },
    "1B params": {
        "params": 1e9,
        "bytes": 1e9 * 4,
        "t_c": 0.80,
        "why": "16,384 tokens per GPU per step (8 sequences of 2,048), 6 FLOP per parameter per token = 9.8e13 FLOP "
        "at 125 TFLOP/s (40 % of an A100's 312 TFLOP/s bf16 peak); fp32 gradients and weights on the wire",
    },
}
PROJECTION_LINKS = {
    "10 Gbit/s": {"bps": 10e9, "latency_s": 25e-6, "why": "TCP over 10 GbE: tens of µs per hop"},
    "100 Gbit/s": {"bps": 100e9, "latency_s": 5e-6, "why": "RDMA-class 100 Gbit/s fabric: a few µs per hop"},
}
PROJECTION_N = tuple(2**k for k in range(3, 11))
PROJECTED = ("odsgd", "local_sgd", "post_local_sgd", "diloco", "dasgd", "cocodsgd", "overlap_local_sgd",
             "streaming_diloco")  # fmt: skip


def project(payload_efficiency: float, sync_every: int = 4, ns: Sequence[int] = PROJECTION_N) -> list[dict[str, Any]]:
    """Speed-up over ssgd (ssgd step / strategy step, same batch) of every lock-step strategy, per model, link, N.

    ``payload_efficiency`` turns a nominal link rate into the all-reduce payload rate ``beta`` (the
    median ratio measured on the shaped emulated links). ssgd's buckets: :func:`even_buckets` (DDP's defaults).
    """
    rows = []
    for mname, m in PROJECTION_MODELS.items():
        for lname, link in PROJECTION_LINKS.items():
            beta = link["bps"] / 8 * payload_efficiency
            for n in ns:

                def ar(b: float, n: int = n, beta: float = beta, lat: float = link["latency_s"]) -> float:
                    return ring_allreduce_s(b, n, beta, lat)

                ssgd = step_time("ssgd", m["t_c"], ar, m["bytes"], sync_every)
                row: dict[str, Any] = {"model": mname, "link": lname, "n": n, "ssgd_step_s": ssgd}
                row["t_ar_s"] = ar(m["bytes"])
                for s in PROJECTED:
                    row[s] = ssgd / step_time(s, m["t_c"], ar, m["bytes"], sync_every)  # kappa = 0: GPUs
                rows.append(row)
    return rows


def payload_efficiency(data: dict[str, Any]) -> float:
    """Fitted payload bandwidth / nominal rate on the shaped links (median); 0.9 when none was fitted."""
    ratios = [
        link["fit"]["bytes_per_s"] * 8 / link["bps"]
        for link in data.get("scaling", {}).get("links", [])
        if link.get("bps") and link.get("fit")
    ]
    if not ratios:
        ratios = [link["allreduce"]["bytes_per_s"] * 8 / link["bps"] for link in data.get("links", []) if
                  link.get("bps") and link.get("allreduce")]  # fmt: skip
    return min(1.0, statistics.median(ratios)) if ratios else 0.9
