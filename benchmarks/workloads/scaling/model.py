"""The latency-bandwidth model of a step: ring all-reduce, DDP's buckets, each strategy's step time.

See :mod:`benchmarks.workloads.scaling` for the model's equations and what is measured.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence


MODELLED = (
    "compute_only",
    "ssgd",
    "ddp",
    "odsgd",
    "local_sgd",
    "post_local_sgd",
    "diloco",
    "dasgd",
    "cocodsgd",
    "overlap_local_sgd",
    "streaming_diloco",
)
"""Strategies the model covers (``sasgd``/``asgd`` are not lock-step: see the module docstring)."""

FIRST_BUCKET_BYTES = 1024 * 1024
"""DDP's first gradient bucket (``torch.distributed._DEFAULT_FIRST_BUCKET_BYTES``): launched early."""
BUCKET_CAP_BYTES = 25 * 1024 * 1024
"""DDP's ``bucket_cap_mb=25`` default: the size of every later bucket."""
BACKWARD_SHARE = 2.0 / 3.0
"""Share of a compute step spent in backward (its FLOPs are about twice the forward's)."""


def ddp_buckets(
    param_bytes: Sequence[float], first: float = FIRST_BUCKET_BYTES, cap: float = BUCKET_CAP_BYTES
) -> list[float]:
    """Bytes of each DDP bucket, in launch order, from parameter sizes in gradient-ready order.

    DDP fills a bucket with gradients in the order they become ready (about the reverse of
    registration) and closes it once it holds ``first`` bytes (the first bucket) or ``cap`` bytes
    (every later one); a bucket is all-reduced when its last gradient is ready.
    """
    buckets: list[float] = []
    cur, limit = 0.0, first
    for b in param_bytes:
        cur += b
        if cur >= limit:
            buckets.append(cur)
            cur, limit = 0.0, cap
    if cur > 0:
        buckets.append(cur)
    return buckets


def even_buckets(nbytes: float, first: float = FIRST_BUCKET_BYTES, cap: float = BUCKET_CAP_BYTES) -> list[float]:
    """DDP's buckets of a model whose parameters are unknown: ``first`` bytes, then ``cap``-byte ones, the rest."""
    out = [min(nbytes, first)]
    left = nbytes - out[0]
    while left > 0:
        out.append(min(left, cap))
        left -= out[-1]
    return out


def profile_buckets(profile: dict[str, Any]) -> tuple[list[float], list[float]]:
    """DDP's buckets of a measured :func:`ready_profile` and the share of backward done when each is ready."""
    sizes = ddp_buckets(profile["param_bytes"])
    ready, i = [], 0
    for b in sizes:  # a bucket is ready with its last gradient
        got = 0.0
        while got < b - 0.5:
            got += profile["param_bytes"][i]
            i += 1
        ready.append(max(profile["ready"][:i]))
    return sizes, ready


def ready_profile(model: Any, inputs: Any, targets: Any) -> dict[str, Any]:
    """When backward makes each parameter's gradient (share of backward), and backward's share of the step.

    One process, one thread; the second of two passes (the first warms up). Gradient-ready order is
    the order the hooks fire, as DDP's rebuilt buckets follow it.
    """
    import torch

    stamps: dict[int, float] = {}
    params = [q for q in model.parameters() if q.requires_grad]
    hooks = [q.register_post_accumulate_grad_hook(lambda q: stamps.__setitem__(id(q), time.perf_counter()))
             for q in params]  # fmt: skip
    for _ in range(2):
        stamps.clear()
        model.zero_grad()
        t0 = time.perf_counter()
        loss = torch.nn.functional.cross_entropy(model(inputs), targets)
        t1 = time.perf_counter()
        loss.backward()
        t2 = time.perf_counter()
    for h in hooks:
        h.remove()
    order = sorted(params, key=lambda q: stamps[id(q)])
    return {
        "param_bytes": [q.numel() * q.element_size() for q in order],
        "ready": [(stamps[id(q)] - t1) / (t2 - t1) for q in order],
        "backward_share": (t2 - t1) / (t2 - t0),
    }


def ddp_exposed_s(
    t_c: float,
    allreduce: Callable[[float], float],
    buckets: Sequence[float],
    backward_share: float = BACKWARD_SHARE,
    ready: Sequence[float] | None = None,
) -> float:
    """Seconds of DDP's bucketed all-reduce left after the compute step: the part backward cannot hide.

    Backward runs the last ``backward_share * t_c`` of the step and makes gradient bytes at an even
    rate; bucket ``k`` is ready when the bytes of buckets ``1..k`` are made. Buckets are all-reduced
    one after the other, each from ``max(ready, previous one done)``; the step ends when the last one
    is done. So the last-launched bucket (ready when backward ends) never overlaps backward; the
    others overlap what remains of it. ``ready`` (measured, :func:`ready_profile`) replaces the even
    rate: the share of backward done when each bucket is ready.
    """
    total = sum(buckets)
    if total <= 0:
        return 0.0
    t_b = backward_share * t_c
    start, made, done = t_c - t_b, 0.0, 0.0
    for i, m in enumerate(buckets):
        made += m
        share = ready[i] if ready is not None else made / total
        done = max(start + t_b * share, done) + allreduce(m)
    return max(0.0, done - t_c)


def ring_allreduce_s(nbytes: float, n: int, bytes_per_s: float, latency_s: float) -> float:
    """Ring all-reduce: ``2(N-1)/N * bytes / beta`` on the wire plus ``2(N-1)`` latency-bound hops; 0 for N = 1."""
    if n < 1 or bytes_per_s <= 0 or latency_s < 0 or nbytes < 0:
        raise ValueError(f"need n >= 1, bandwidth > 0, latency >= 0, bytes >= 0; got {n}, {bytes_per_s}, {latency_s}")
    if n == 1:
        return 0.0
    return 2 * (n - 1) / n * nbytes / bytes_per_s + 2 * (n - 1) * latency_s


def step_time(
    strategy: str,
    t_c: float,
    allreduce: Callable[[float], float],
    nbytes: float,
    sync_every: int = 4,
    delay: int = 1,
    fragments: int = 2,
    buckets: Sequence[float] | None = None,
    cpu_s_per_byte: float = 0.0,
    profile: dict[str, Any] | None = None,
    own_s: float = 0.0,
) -> float:
    """Modelled step time of ``strategy`` (module docstring); ``allreduce(bytes)`` is ``T_ar`` on this cluster.

    Args:
        strategy: one of :data:`MODELLED`.
        t_c: compute-only step time (s).
        allreduce: all-reduce time of a message of the given bytes on this link and N.
        nbytes: bytes each strategy all-reduces (the fp32 model, = its gradient).
        sync_every: H of the periodic strategies.
        delay: d of dasgd and tau of streaming_diloco (steps an average overlaps).
        fragments: P of streaming_diloco.
        buckets: DDP's bucket bytes in launch order (:func:`ddp_buckets`) for ssgd/ddp; by default
            :func:`even_buckets` of ``nbytes``.
        cpu_s_per_byte: ``kappa``, host CPU time per byte all-reduced that compute cannot use (the
            communication threads share the ranks' cores); every strategy pays ``kappa`` times its
            bytes per step on top. 0 where communication has its own engine (NCCL on GPUs).
        own_s: the algorithm's own work per step (:func:`own_work_s`), added to the compute of every
            strategy but ``compute_only``, ``ssgd`` and ``ddp``; communication overlaps it like compute.
    """
    if sync_every < 1 or delay < 0 or fragments < 1:
        raise ValueError(f"need sync_every >= 1, delay >= 0, fragments >= 1; got {sync_every}, {delay}, {fragments}")
    t_ar = allreduce(nbytes)
    if strategy == "compute_only":
        return t_c
    if strategy in ("ssgd", "ddp"):
        if profile:
            bk, ready = profile_buckets(profile)
            exposed = ddp_exposed_s(t_c, allreduce, bk, profile["backward_share"], ready)
        else:
            exposed = ddp_exposed_s(t_c, allreduce, buckets if buckets is not None else even_buckets(nbytes))
        return t_c + cpu_s_per_byte * nbytes + exposed
    t_c += own_s
    if strategy == "odsgd":
        return t_c + cpu_s_per_byte * nbytes + max(0.0, t_ar - t_c)
    t_c += cpu_s_per_byte * nbytes / sync_every  # the periodic ones move M bytes per H steps
    if strategy in ("local_sgd", "post_local_sgd", "diloco"):
        return t_c + t_ar / sync_every
    if strategy == "dasgd":
        return t_c + max(0.0, t_ar - min(delay, sync_every) * t_c) / sync_every
    if strategy in ("cocodsgd", "overlap_local_sgd"):
        return t_c + max(0.0, t_ar - sync_every * t_c) / sync_every
    if strategy == "streaming_diloco":
        return t_c + fragments * max(0.0, allreduce(nbytes / fragments) - delay * t_c) / sync_every
    raise ValueError(f"strategy {strategy!r} is not modelled; modelled: {MODELLED}")
