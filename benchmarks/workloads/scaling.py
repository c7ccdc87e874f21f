"""Phase ``scaling``: a latency-bandwidth model of every strategy's step time, fitted, validated, projected.

THE PROJECTION IS A MODEL, NOT A MEASUREMENT. What is measured here (2 CPU cores, emulated links):

1. **Links**: ``all_reduce`` of 8 fp32 buffers from 4 KB to 45 MB on each link (2 ranks), a few
   repetitions each; least squares on the ring model below gives each link's latency ``alpha`` and
   payload bandwidth ``beta`` (bytes/s).
2. **Compute**: the compute-only bound ``t(B) = a + b B`` (the throughput phase's calibration, or
   two compute-only runs of this phase when that is absent).
3. **4 ranks**: a small MLP (9.5 MB of fp32 parameters) on 4 ranks joined by an emulated switch
   (:func:`benchmarks.base.netns.emulated_cluster`), its own link sweep, then ``--scaling-repeats``
   rounds of every strategy interleaved (A B C, A B C, ...; compute-only in the same rounds) in one
   process per rank: data the fits never saw, compared by its median.

Model (per optimizer step, seconds; ``t_c`` compute-only step, ``M`` model bytes, ``N`` ranks,
``H`` ``sync_every``, ``d`` ``delay``)::

    T_ar(M, N)        = 2(N-1)/N * M / beta + 2(N-1) * alpha     ring all-reduce
    compute_only      = t_c
    ssgd, ddp         = t_c + kappa M + E_ddp                    E_ddp: DDP's buckets, below
    our others pay their own work w per step (below): t_c <- t_c + w in every line that follows
    odsgd             = t_c + kappa M + max(0, T_ar - t_c)       consumed one whole step after launch
    the periodic ones, with t_c' = t_c + kappa M / H:
    local_sgd, diloco,
    post_local_sgd    = t_c' + T_ar / H                          one blocking average per period
    dasgd             = t_c' + max(0, T_ar - d t_c') / H         the average overlaps d steps
    cocodsgd,
    overlap_local_sgd = t_c' + max(0, T_ar - H t_c') / H         the average overlaps the whole period
    streaming_diloco  = t_c' + P max(0, T_ar(M/P) - tau t_c') / H   P fragments, each overlapping tau steps

``E_ddp`` (:func:`ddp_exposed_s`) follows how DDP buckets the gradient: buckets of 1 MB (the first)
then 25 MB (``bucket_cap_mb``) filled in gradient-ready order (:func:`ddp_buckets`); backward is the
last 2/3 of ``t_c`` and makes gradient bytes at an even rate; buckets are all-reduced one after the
other from when they are ready; ``E_ddp`` is how far the last one ends after ``t_c``. Where the
phase measured it (:func:`ready_profile`: gradient hooks on one process, one thread), the
measured backward share and the time each gradient is made replace the 2/3 and the even rate. So the
last-launched bucket never overlaps backward and the others overlap what is left of it: a model of
one or two buckets (the 4-rank MLP) hides little, ResNet-18 (3 buckets) more. No overlap share is
fitted. ``kappa`` (host CPU time per byte all-reduced, lost to compute: gloo's threads share the
ranks' cores; 0 for the GPU projection) is the one fitted term, on the 2-rank ssgd/ddp cells
only; every other cell and the 4-rank run are predictions. On ``N`` ranks it is scaled by
:func:`contention`, not refitted: ``2(N-1)/N`` ring bytes per rank times ranks per core. An
algorithm's own work ``w`` (its copies, second update, merges) is not fitted either: the own-cost
phase measures it in isolation (:mod:`benchmarks.workloads.own_work`) as whole-model passes, and
:func:`own_work_s` turns passes into seconds for a model of ``M`` bytes at the measured pass rate
(0 where it was not measured, and for ``ssgd``/``ddp``, whose reduction is DDP's own; 0 for the GPU
projection, where a pass over even the 1B model's 4 GB takes milliseconds). ``sasgd`` and ``asgd``
are left out: they are not lock-step and their traffic goes through one parameter server in rank
0, whose link carries ``N`` workers' pushes and pulls, not a ring; a ring model says nothing about
them.

Run it after the throughput phase (it validates against ``data["throughput"]`` and reuses its
calibration). Alone: ``sudo .venv/bin/python -m benchmarks.projection [--base-json RESULTS.json]``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from benchmarks.base import netns
    from benchmarks.base.launch import Runner

# ---------------------------------------------------------------------------------------- model

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


# ------------------------------------------------------------------------------------------ fits


def fit_link(points: Sequence[tuple[float, int, float]]) -> dict[str, float]:
    """Least squares of ``T = 2(N-1) alpha + 2(N-1)/N * bytes / beta`` over ``(bytes, N, seconds)`` points.

    Linear in ``(alpha, 1/beta)``; a negative ``alpha`` (noise at small sizes) is clamped to 0 and ``1/beta``
    refitted alone. Returns ``latency_s``, ``bytes_per_s`` and the fit's median relative error.
    """
    rows = [(2.0 * (n - 1), 2.0 * (n - 1) / n * b, t) for b, n, t in points if n > 1]
    if len(rows) < 2:
        raise ValueError("fitting a link needs at least 2 all-reduce timings with N > 1")
    sxx = sum(x * x for x, _, _ in rows)
    syy = sum(y * y for _, y, _ in rows)
    sxy = sum(x * y for x, y, _ in rows)
    sxt = sum(x * t for x, _, t in rows)
    syt = sum(y * t for _, y, t in rows)
    det = sxx * syy - sxy * sxy
    alpha = inv_beta = 0.0
    if det > 1e-12 * sxx * syy:  # all points at one N and one size cannot separate alpha from beta
        alpha, inv_beta = (syy * sxt - sxy * syt) / det, (sxx * syt - sxy * sxt) / det
    if alpha < 0 or inv_beta <= 0:
        alpha = 0.0
        inv_beta = syt / syy
    if inv_beta <= 0:
        raise ValueError("all-reduce timings do not grow with the message size: cannot fit a bandwidth")
    errors = [abs((alpha * x + inv_beta * y) / t - 1) for x, y, t in rows if t > 0]
    return {"latency_s": alpha, "bytes_per_s": 1.0 / inv_beta, "median_rel_error": statistics.median(errors)}


def fit_line(points: Sequence[tuple[float, float]]) -> dict[str, float]:
    """Least-squares line ``t = a + b B`` through ``(B, t)`` points (the compute-only calibration)."""
    if len({b for b, _ in points}) < 2:
        raise ValueError("a line needs points at 2 or more batch sizes")
    n = len(points)
    mb = sum(b for b, _ in points) / n
    mt = sum(t for _, t in points) / n
    slope = sum((b - mb) * (t - mt) for b, t in points) / sum((b - mb) ** 2 for b, _ in points)
    return {"a": mt - slope * mb, "b": slope}


KAPPA_GRID = tuple(i * 0.25e-9 for i in range(41))
"""kappa candidates: 0 to 10 ms of CPU per MB all-reduced."""


def fit_kappa(cells: Sequence[tuple[float, float, float]]) -> float:
    """``kappa`` minimising the median |relative error| over ``(predicted without kappa, bytes, measured)`` cells.

    A grid in steps of 0.25 ms/MB, ties to the smaller value; 0 without cells.
    """
    if not cells:
        return 0.0
    return min(
        KAPPA_GRID, key=lambda k: (round(statistics.median(abs((p + k * b) / m - 1) for p, b, m in cells), 4), k)
    )


# ------------------------------------------------------------------------------- data → cells


def _step(entry: dict[str, Any]) -> float:
    """A cell's step time: its slowest rank (lock-step ranks wait for it)."""
    return float(max(r["step_s"] for r in entry["ranks"]))


def link_fits(data: dict[str, Any]) -> dict[str, dict[str, float]]:
    """Link parameters by bandwidth label: this phase's sweep fits, else from the throughput phase's one all-reduce.

    The fallback (one message size) cannot separate latency from bandwidth: ``alpha = 0``, ``beta`` = the
    measured payload rate.
    """
    fits: dict[str, dict[str, float]] = {}
    for link in data.get("links", []):
        ar = link.get("allreduce")
        if ar:
            fits[link["bandwidth"]] = {"latency_s": 0.0, "bytes_per_s": ar["bytes_per_s"], "source": "one all-reduce"}
    for link in data.get("scaling", {}).get("links", []):
        if link.get("fit"):
            fits[link["bandwidth"]] = {**link["fit"], "source": "sweep"}
    return fits


def throughput_source(data: dict[str, Any]) -> dict[str, Any]:
    """The 2-rank throughput results the model is validated on: this run's, else the copy :func:`measure` took.

    Returns a dict with ``throughput``, ``links``, ``calibration``, ``meta`` and ``source`` (where they come from).
    """
    if data.get("throughput"):
        return {**{k: data.get(k) for k in ("throughput", "links", "calibration", "meta")}, "source": "this run"}
    base = data.get("scaling", {}).get("base")
    if base:
        return dict(base)
    return {"throughput": [], "links": data.get("links", []), "calibration": None, "meta": data.get("meta", {}),
            "source": None}  # fmt: skip


def compute_time(data: dict[str, Any], bandwidth: str, batch: int) -> float | None:
    """Compute-only step at ``batch``: the cell on the same link, else on any link, else the calibration line."""
    same, other = [], []
    for e in data.get("throughput") or []:
        if e.get("strategy") == "compute_only" and e.get("status") == "ok" and e["batch_size"] == batch:
            (same if e["bandwidth"] == bandwidth else other).append(_step(e))
    if same or other:
        return statistics.median(same or other)
    cal = data.get("calibration") or data.get("scaling", {}).get("calibration")
    return cal["a"] + cal["b"] * batch if cal else None


def resnet18_param_bytes(data: dict[str, Any]) -> list[float] | None:
    """ResNet-18's parameter bytes in gradient-ready order (reverse registration): recorded, else built here."""
    recorded = data.get("scaling", {}).get("resnet18_param_bytes")
    if recorded:
        return [float(b) for b in recorded]
    try:
        import torchvision

        from benchmarks.base.rank import NUM_CLASSES
    except ImportError:
        return None
    params = list(torchvision.models.resnet18(num_classes=NUM_CLASSES).parameters())
    return [float(q.numel() * q.element_size()) for q in reversed(params)]


def own_work_s(data: dict[str, Any], strategy: str, nbytes: float) -> float:
    """The own work per step of ``strategy`` on a model of ``nbytes``: its measured whole-model passes
    (``data["own_cost"]["own_work"]``, ResNet-18 on one thread) times the measured time of one pass,
    scaled from ResNet-18's bytes to ``nbytes``. 0 when not measured, and for ``ssgd`` (its real
    reduction is DDP's own; the isolated figure is of its custom-hook path)."""
    work = (data.get("own_cost") or {}).get("own_work") or {}
    cell = work.get("cells", {}).get(strategy)
    ref = _resnet18_bytes(data)
    if strategy == "ssgd" or not cell or not ref:
        return 0.0
    return float(cell["passes"]) * float(work["pass_s"]) * nbytes / ref


def validation_cells(data: dict[str, Any], kappa: float | None = None) -> tuple[list[dict[str, Any]], float]:
    """Predicted vs measured step of every modelled 2-rank throughput cell (ResNet-18 fp32 gradient bytes).

    ``kappa`` is fitted here on the ssgd/ddp cells when not given.
    """
    src = throughput_source(data)
    view = {**src, "scaling": data.get("scaling", {})}
    fits = link_fits(view)
    meta = src.get("meta") or {}
    sync_every = int(meta.get("sync_every", 4))
    base = []
    param_bytes: list[float] | None = None
    for e in src.get("throughput") or []:
        if e.get("status") != "ok" or e.get("strategy") not in MODELLED or e["bandwidth"] not in fits:
            continue
        t_c = compute_time(view, e["bandwidth"], e["batch_size"])
        nbytes = e["ranks"][0].get("model_bytes") or _resnet18_bytes(view)
        if t_c is None or nbytes is None:
            continue
        if param_bytes is None and e["strategy"] in ("ssgd", "ddp"):
            param_bytes = resnet18_param_bytes(data)
        base.append((e, t_c, fits[e["bandwidth"]], nbytes))
    buckets = ddp_buckets(param_bytes) if param_bytes else None
    profile = data.get("scaling", {}).get("profiles", {}).get("resnet18")

    def predict(e: dict[str, Any], t_c: float, f: dict[str, float], nbytes: float, k: float) -> float:
        kwargs = meta.get("strategy_kwargs", {}).get(e["strategy"], {})
        return step_time(
            e["strategy"],
            t_c,
            lambda b: ring_allreduce_s(b, 2, f["bytes_per_s"], f["latency_s"]),
            nbytes,
            sync_every=int(kwargs.get("sync_every", kwargs.get("model_averaging_period", sync_every))),
            buckets=buckets,
            cpu_s_per_byte=k,
            profile=profile,
            own_s=own_work_s(data, e["strategy"], nbytes),
        )

    if kappa is None:
        kappa = fit_kappa(
            [(predict(e, t_c, f, nb, 0.0), nb, _step(e)) for e, t_c, f, nb in base if e["strategy"] in ("ssgd", "ddp")]
        )
    # One cell per (link, batch, strategy, role): its interleaved repeats give the median it is judged by,
    # as the throughput phase reports each cell (and as the 4-rank cells are).
    groups: dict[tuple[str, int, str, str], list[tuple[dict[str, Any], float, dict[str, float], float]]] = {}
    for item in base:
        e = item[0]
        groups.setdefault((e["bandwidth"], e["batch_size"], e["strategy"], e.get("role", "compare")), []).append(item)
    cells = []
    for (bandwidth, batch, strategy, role), items in groups.items():
        e, t_c, f, nbytes = items[0]
        pred, reps = predict(e, t_c, f, nbytes, kappa), [_step(it[0]) for it in items]
        meas = statistics.median(reps)
        cells.append(
            {
                "world": 2,
                "bandwidth": bandwidth,
                "batch_size": batch,
                "strategy": strategy,
                "role": role,
                "measured_s": meas,
                "min_s": min(reps),
                "max_s": max(reps),
                "repeats": len(reps),
                "predicted_s": pred,
                "error": pred / meas - 1,
            }
        )
    return cells, kappa


def _resnet18_bytes(data: dict[str, Any]) -> float | None:
    for link in data.get("links") or []:
        if link.get("allreduce"):
            return float(link["allreduce"]["nbytes"])
    return None


def cell_stats(cell: dict[str, Any]) -> dict[str, float]:
    """Median, min and max step of a cluster cell over its interleaved repeats (one repeat: its only run)."""
    reps = cell.get("repeats_s") or [_step(cell)]
    return {"median_s": statistics.median(reps), "min_s": min(reps), "max_s": max(reps), "n": len(reps)}


def contention(world: int, cores: int | None) -> float:
    """How kappa (fitted on 2 ranks, one core each) scales to ``world`` ranks on ``cores`` cores.

    A rank's ring all-reduce handles ``2(N-1)/N`` times the model's bytes (1x for N = 2), and with
    more ranks than cores each core runs ``N / cores`` ranks' communication threads beside their compute.
    """
    per_core = max(1.0, world / cores) / max(1.0, 2 / cores) if cores else 1.0
    return 2 * (world - 1) / world * per_core


def cluster_cells(data: dict[str, Any], kappa: float) -> list[dict[str, Any]]:
    """Predicted vs measured (median of the repeats) step of the N-rank run, with its own link fit and compute bound."""
    c = data.get("scaling", {}).get("cluster")
    if not c or not c.get("fit"):
        return []
    f, world, nbytes = c["fit"], c["world"], c["model_bytes"]
    co = [x for x in c["cells"] if x["strategy"] == "compute_only" and x.get("status") == "ok"]
    if not co:
        return []
    t_c = cell_stats(co[0])["median_s"]
    buckets = ddp_buckets(c["param_bytes"]) if c.get("param_bytes") else None
    k_n = kappa * contention(world, c.get("cores"))
    profile = data.get("scaling", {}).get("profiles", {}).get("mlp")
    out = []
    for e in c["cells"]:
        if e.get("status") != "ok" or e["strategy"] not in MODELLED:
            continue
        pred = step_time(
            e["strategy"],
            t_c,
            lambda b: ring_allreduce_s(b, world, f["bytes_per_s"], f["latency_s"]),
            nbytes,
            sync_every=c["sync_every"],
            buckets=buckets,
            cpu_s_per_byte=k_n,
            profile=profile,
            own_s=own_work_s(data, e["strategy"], nbytes),
        )
        st = cell_stats(e)
        out.append(
            {
                "world": world,
                "bandwidth": c["bandwidth"],
                "batch_size": c["batch_size"],
                "strategy": e["strategy"],
                "role": "compare",
                "measured_s": st["median_s"],
                "min_s": st["min_s"],
                "max_s": st["max_s"],
                "repeats": st["n"],
                "predicted_s": pred,
                "error": pred / st["median_s"] - 1,
            }
        )
    return out


def error_summary(cells: Sequence[dict[str, Any]]) -> dict[str, float | None]:
    """Median and max |error| over the predicted cells (compute_only is the model's input, not a prediction)."""
    errs = [abs(c["error"]) for c in cells if c["strategy"] != "compute_only"]
    return {
        "cells": len(errs),
        "median_abs_error": statistics.median(errs) if errs else None,
        "max_abs_error": max(errs) if errs else None,
        "within_15pct": sum(e <= 0.15 for e in errs),
    }


# ------------------------------------------------------------------------------------ projection

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


# ----------------------------------------------------------------------------------- measurement

SWEEP_SIZES = tuple(round(4096 * (45e6 / 4096) ** (i / 7)) // 4 * 4 for i in range(8))
"""8 message sizes, geometric from 4 KB to 45 MB (a ResNet-18 gradient)."""
MLP_WIDTH, MLP_IN, MLP_DEPTH = 1024, 256, 3
DEFAULT_BANDWIDTHS = "unshaped,1gbit,200mbit"
CLUSTER_STRATEGIES = "compute_only,ssgd,odsgd,local_sgd,dasgd,cocodsgd"
"""One of each kind of hiding (none, DDP's, one step, blocking 1/H, d steps, whole period), in the 4-minute budget."""


def add_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("scaling phase (benchmarks.workloads.scaling)")
    g.add_argument(
        "--scaling-bandwidths",
        default=None,
        help=f"links whose all-reduce is swept (default: the runner's --bandwidths, else {DEFAULT_BANDWIDTHS})",
    )
    g.add_argument("--scaling-reps", type=int, default=3, help="timed all-reduces per message size")
    g.add_argument("--scaling-world", type=int, default=4, help="ranks of the validation cluster (0: skip it)")
    g.add_argument("--scaling-cluster-bandwidth", default="500mbit", help="link rate of each cluster node")
    g.add_argument("--scaling-cluster-strategies", default=CLUSTER_STRATEGIES, help="strategies run on the cluster")
    g.add_argument("--scaling-batch-size", type=int, default=64, help="MLP batch per rank on the cluster")
    g.add_argument("--scaling-steps", type=int, default=12, help="timed MLP steps per cluster run (after 2 warm-up)")
    g.add_argument("--scaling-repeats", type=int, default=3, help="interleaved rounds of the cluster strategies")


def estimate_s(args: argparse.Namespace) -> float:
    """The phase's run time on a quiet machine (s): ~10 s per 2-rank sweep; the cluster's start-up and
    sweep ~35 s, then each run ~1.5 s of Trainer set-up and ~0.2 s per MLP step (4 ranks on 2 cores)."""
    links = len((args.scaling_bandwidths or getattr(args, "bandwidths", None) or DEFAULT_BANDWIDTHS).split(","))
    runs = args.scaling_repeats * len([s for s in args.scaling_cluster_strategies.split(",") if s.strip()])
    cluster = 35.0 + runs * (1.5 + 0.2 * (2 + args.scaling_steps)) if args.scaling_world >= 2 else 0.0
    return 10.0 * links + cluster


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def _sweep(runner: Runner, world: int, reps: int) -> dict[str, Any]:
    sizes = ",".join(str(s) for s in SWEEP_SIZES)
    ranks = runner.run(
        "sweep", ["--sizes", sizes, "--reps", str(reps)], world=world, module="benchmarks.workloads.scaling"
    )
    # the slowest rank's time per size: a collective ends for the job when its last rank is done
    points = [[b, world, max(r["points"][i][2] for r in ranks)] for i, (b, _, _) in enumerate(ranks[0]["points"])]
    return {"world": world, "points": points, "fit": fit_link([tuple(p) for p in points])}


def load_base(own: Path) -> dict[str, Any]:
    """The throughput cells, links, calibration and meta of the newest dated results JSON (not ``own``, this run's)."""
    from benchmarks.base.rank import REPO
    from benchmarks.report import page as report

    results = REPO / "benchmarks" / "results"
    files = sorted(q for q in results.glob("*.json") if report.RESULT_NAME.fullmatch(q.name) and q.name != own.name)
    if not files:
        return {"throughput": [], "links": [], "calibration": None, "meta": {}, "source": None}
    d = json.loads(files[-1].read_text())
    keep = {k: d.get("meta", {}).get(k) for k in ("sync_every", "strategy_kwargs", "date", "command")}
    return {"throughput": d.get("throughput", []), "links": d.get("links", []), "calibration": d.get("calibration"),
            "meta": keep, "source": str(files[-1].relative_to(REPO))}  # fmt: skip


def measure(args: argparse.Namespace, shaped: netns.ShapedLink, runner: Runner, out: dict[str, Any]) -> None:
    """Link sweeps on the 2-rank link (each bandwidth), then the 4-rank cluster run (own namespaces)."""
    from benchmarks.base import netns
    from benchmarks.base.launch import RunFailed
    from benchmarks.base.launch import Runner as RunnerCls

    res: dict[str, Any] = out.setdefault("scaling", {"links": []})
    if not out.get("throughput"):  # no throughput phase in this run: validate on the newest dated results JSON
        res["base"] = load_base(Path(out.get("meta", {}).get("json_path") or ""))
        log(f"  2-rank validation cells from {res['base']['source']}")
    for text in (args.scaling_bandwidths or getattr(args, "bandwidths", None) or DEFAULT_BANDWIDTHS).split(","):
        rate = netns.parse_rate(text.strip())
        if rate is not None and not shaped.link.emulated:
            continue
        shaped.shape(rate)
        t0 = time.monotonic()
        try:
            link = {"bandwidth": netns.format_rate(rate), "bps": rate, **_sweep(runner, 2, args.scaling_reps)}
            f = link["fit"]
            log(
                f"  sweep {link['bandwidth']}: alpha {f['latency_s'] * 1e6:.0f} µs, "
                f"beta {f['bytes_per_s'] / 1e6:.1f} MB/s ({time.monotonic() - t0:.0f} s)"
            )
        except (RunFailed, ValueError) as e:
            link = {"bandwidth": netns.format_rate(rate), "bps": rate, "error": str(e)}
            log(f"  sweep {link['bandwidth']}: FAILED {str(e).splitlines()[0]}")
        res["links"].append(link)
    t0 = time.monotonic()
    res["profiles"] = measure_profiles(args.scaling_batch_size)
    log(f"  gradient-ready profiles of ResNet-18 and the MLP ({time.monotonic() - t0:.0f} s)")
    if not (
        out.get("calibration") or (res.get("base") or {}).get("calibration")
    ):  # no throughput phase: two compute-only runs of the ResNet-18 worker
        shaped.shape(None)
        pts = []
        for batch in (16, 64):
            with_err = runner.run("throughput", ["--strategy", "compute_only", "--batch-size", str(batch)])
            pts.append((batch, max(r["step_s"] for r in with_err)))
        res["calibration"] = {"points": pts, **fit_line(pts)}
    if args.scaling_world >= 2 and shaped.link.emulated:
        try:
            res["cluster"] = _cluster(args, runner.workdir, RunnerCls, RunFailed)
        except (netns.NetnsError, RunFailed, ValueError) as e:  # the 2-rank results above still stand
            res["cluster"] = {"world": args.scaling_world, "error": str(e)}
            log(f"  {args.scaling_world}-rank cluster: FAILED {str(e).splitlines()[0]}")


def _cluster(args: argparse.Namespace, workdir: Path, runner_cls: Any, run_failed: Any) -> dict[str, Any]:
    import os

    from benchmarks.base import netns
    from benchmarks.base.baselines import SYNC_EVERY

    rate = netns.parse_rate(args.scaling_cluster_bandwidth)
    world = args.scaling_world
    c: dict[str, Any] = {"world": world, "cores": os.cpu_count(), "bandwidth": netns.format_rate(rate), "bps": rate,
                         "cells": [], "batch_size": args.scaling_batch_size, "sync_every": SYNC_EVERY,
                         "model": f"MLP {MLP_IN}-{'-'.join([str(MLP_WIDTH)] * MLP_DEPTH)}-10"}  # fmt: skip
    with netns.emulated_cluster(world) as cluster:
        cluster.shape(rate)
        runner = runner_cls(cluster.link, workdir, getattr(args, "timeout", 300.0))
        t0 = time.monotonic()
        sweep = _sweep(runner, world, args.scaling_reps)
        c.update(points=sweep["points"], fit=sweep["fit"])
        log(f"  {world}-rank sweep {c['bandwidth']}: beta {c['fit']['bytes_per_s'] / 1e6:.1f} MB/s, "
            f"alpha {c['fit']['latency_s'] * 1e6:.0f} µs ({time.monotonic() - t0:.0f} s)")  # fmt: skip
        names = [s.strip() for s in args.scaling_cluster_strategies.split(",") if s.strip()]
        extra = ["--strategy", ",".join(names), "--rounds", str(args.scaling_repeats),
                 "--batch-size", str(args.scaling_batch_size), "--steps", str(args.scaling_steps)]  # fmt: skip
        t0 = time.monotonic()
        try:
            ranks = runner.run("mlp", extra, world=world, module="benchmarks.workloads.scaling")
        except run_failed as e:
            c["cells"] = [{"strategy": n, "status": "failed", "error": str(e)} for n in names]
            log(f"  {world} ranks: FAILED {str(e).splitlines()[0]}")
            return c
        c.update(model_bytes=ranks[0]["model_bytes"], param_bytes=ranks[0]["param_bytes"], repeats=args.scaling_repeats)
        c["cells"] = cluster_from_runs(ranks, names)
        for cell in c["cells"]:
            st = cell_stats(cell)
            log(f"  {world} ranks {cell['strategy']:18s} step median {st['median_s']:.3f} s "
                f"({st['min_s']:.3f}-{st['max_s']:.3f}, {st['n']} repeats)")  # fmt: skip
        log(f"  {world}-rank runs: {time.monotonic() - t0:.0f} s")
    return c


# ----------------------------------------------------------------------------------- rank side


def _task_sweep(args: argparse.Namespace) -> dict[str, Any]:
    import torch
    import torch.distributed as dist

    dist.init_process_group("gloo")
    n = dist.get_world_size()
    points = []
    for nbytes in [int(s) for s in args.sizes.split(",")]:
        buf = torch.ones(nbytes // 4)
        dist.all_reduce(buf)  # first use of this size (allocation, connection warm-up)
        dist.barrier()
        t0 = time.perf_counter()
        for _ in range(args.reps):
            dist.all_reduce(buf)
        points.append([buf.numel() * 4, n, (time.perf_counter() - t0) / args.reps])
    return {"points": points}


def mlp() -> Any:
    """The cluster's model: ``MLP_IN``-``MLP_WIDTH`` x ``MLP_DEPTH``-10, ReLU between (9.5 MB of fp32)."""
    import itertools

    from torch import nn

    dims = [MLP_IN, *[MLP_WIDTH] * MLP_DEPTH]
    layers: list[nn.Module] = []
    for a, b in itertools.pairwise(dims):
        layers += [nn.Linear(a, b), nn.ReLU()]
    return nn.Sequential(*layers, nn.Linear(MLP_WIDTH, 10))


def measure_profiles(batch: int) -> dict[str, Any]:
    """:func:`ready_profile` of ResNet-18 (batch 32, as the throughput cells) and the MLP, one thread, here."""
    import torch
    import torchvision

    from benchmarks.base.rank import NUM_CLASSES

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(0)
        resnet = torchvision.models.resnet18(num_classes=NUM_CLASSES)
        x, y = torch.randn(32, 3, 32, 32), torch.randint(0, NUM_CLASSES, (32,))
        out = {"resnet18": ready_profile(resnet, x, y)}
        out["mlp"] = ready_profile(mlp(), torch.randn(batch, MLP_IN), torch.randint(0, 10, (batch,)))
    finally:
        torch.set_num_threads(threads)
    return out


def _task_mlp(args: argparse.Namespace) -> dict[str, Any]:
    """A small MLP (random data, 10 classes) trained by each of ``--strategy`` (comma-separated), ``--rounds`` times.

    Interleaved (A B C, A B C, ...) in one process per rank: one Trainer per run, on the process group
    initialised once here (Lightning reuses it), so the repeats cost no process start-up. Timed like
    the ResNet-18 throughput task: the mean step after ``--warmup`` steps.
    """

    import lightning.pytorch as pl
    import torch
    import torch.distributed as dist
    from torch import nn
    from torch.utils.data import DataLoader

    from benchmarks.base.baselines import build_strategy
    from benchmarks.base.rank import FitEnvironment, bench_trainer, rank_and_world

    rank, _ = rank_and_world()
    dist.init_process_group("gloo")
    total = args.warmup + args.steps
    g = torch.Generator().manual_seed(1000 + rank)
    x, y = torch.randn(args.batch_size, MLP_IN, generator=g), torch.randint(0, 10, (args.batch_size,), generator=g)

    class MLP(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = mlp()

        def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
            return nn.functional.cross_entropy(self.net(batch[0]), batch[1])

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.SGD(self.parameters(), lr=0.01, momentum=0.9)

    class Clock(pl.Callback):
        def __init__(self) -> None:
            self.ends: list[float] = []

        def on_train_batch_end(self, *a: Any) -> None:
            self.ends.append(time.perf_counter())

    env = FitEnvironment()  # each run starts from the runner's environment
    runs = []
    for rnd in range(args.rounds):
        for name in [n for n in args.strategy.split(",") if n]:
            env.restore()
            torch.manual_seed(0)
            clock, module = Clock(), MLP()
            trainer = bench_trainer(build_strategy(name), max_steps=total, callbacks=[clock])
            trainer.fit(module, DataLoader([(x, y)] * total, batch_size=None))
            window = clock.ends[total - 1] - clock.ends[args.warmup - 1]
            runs.append({"round": rnd, "strategy": name, "step_s": window / args.steps})
            dist.barrier()  # the next run starts together on every rank
    params = list(MLP().parameters())
    return {
        "batch_size": args.batch_size,
        "steps": args.steps,
        "runs": runs,
        "model_bytes": sum(q.numel() * q.element_size() for q in params),
        "param_bytes": [q.numel() * q.element_size() for q in reversed(params)],  # gradient-ready order
    }


def cluster_from_runs(ranks: list[dict[str, Any]], names: Sequence[str]) -> list[dict[str, Any]]:
    """One cell per strategy from the ranks' interleaved runs: per round the slowest rank, then median/min/max."""
    cells = []
    for name in names:
        by_round: dict[int, float] = {}
        for r in ranks:
            for run in r["runs"]:
                if run["strategy"] == name:
                    by_round[run["round"]] = max(by_round.get(run["round"], 0.0), run["step_s"])
        reps = [by_round[k] for k in sorted(by_round)]
        if not reps:
            cells.append({"strategy": name, "status": "failed", "error": "no run"})
            continue
        cells.append(
            {"strategy": name, "status": "ok", "repeats_s": reps, "ranks": [{"step_s": statistics.median(reps)}]}
        )
    return cells


def run_worker(args: argparse.Namespace) -> None:
    import warnings

    import torch
    import torch.distributed as dist

    from benchmarks.base.rank import rank_and_world

    if args.task != "sweep":  # the sweep needs no Lightning: start it fast
        import lightning_delayed  # noqa: F401  (registers the strategy names)
    warnings.filterwarnings("ignore")
    torch.set_num_threads(1)
    rank, world = rank_and_world()
    if args.task == "throughput":  # the ResNet-18 compute-only calibration, from the shared worker
        from benchmarks.base.rank import task_throughput

        args.warmup = 2
        result = task_throughput(args)
    else:
        result = {"sweep": _task_sweep, "mlp": _task_mlp}[args.task](args)
    result.update(task=args.task, strategy=args.strategy, rank=rank, world_size=world)
    Path(f"{args.result}.rank{rank}.json").write_text(json.dumps(result, indent=1))
    if dist.is_available() and dist.is_initialized():
        dist.barrier()  # tear gloo down while every rank is alive
        dist.destroy_process_group()


# -------------------------------------------------------------------------------------- report


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{x * 100:+.0f} %"


def _abs_pct(x: float | None) -> str:
    return "-" if x is None else f"{x * 100:.0f} %"


def _profiles_text(data: dict[str, Any]) -> str:
    prof = data.get("scaling", {}).get("profiles") or {}
    if not prof:
        return "(No gradient-ready profile in this run: backward = 2/3 of `t_c`, gradient bytes at an even rate.)"
    parts = []
    for name, label in (("resnet18", "ResNet-18"), ("mlp", "the MLP")):
        if name in prof:
            _, ready = profile_buckets(prof[name])
            shares = ", ".join(f"{r:.2f}" for r in ready)
            parts.append(f"{label}: backward {prof[name]['backward_share']:.2f} of the step, buckets ready at {shares}")
    return (
        "Measured here instead of assumed (gradient hooks, one process, one thread): when backward makes each "
        "gradient and backward's share of the step (" + "; ".join(parts) + " of backward)."
    )


def _own_work_text(data: dict[str, Any]) -> str:
    work = (data.get("own_cost") or {}).get("own_work") or {}
    if not work.get("cells"):
        return "This run did not measure the algorithms' own work (the own-cost phase), so it has no term here."
    passes = ", ".join(f"`{n}` {c['passes']:.1f}" for n, c in work["cells"].items() if n != "ssgd")
    return (
        "An algorithm's own work `w` is not fitted either: the own-cost phase measured it in isolation as "
        f"whole-model passes per step ({passes}; one pass over ResNet-18 = {1000 * work['pass_s']:.1f} ms on one "
        "thread), scaled to each model's bytes; `ssgd` and `ddp` reduce through DDP's own path and have none. "
        "The GPU projection sets it to 0, like kappa: a pass over even the 1B model's 4 GB is milliseconds there."
    )


def _mb(buckets: list[float] | None) -> str:
    if not buckets:
        return "(buckets unknown: DDP's defaults assumed)"
    return (
        f"{len(buckets)} bucket{'s' if len(buckets) > 1 else ''} ("
        + ", ".join(f"{b / 1e6:.1f}" for b in buckets)
        + " MB)"
    )


def analyse(data: dict[str, Any]) -> dict[str, Any]:
    """Everything the section shows, from the whole results dict (JSON-serialisable)."""
    two, kappa = validation_cells(data)
    four = cluster_cells(data, kappa)
    eff = payload_efficiency(data)
    sync_every = int(data.get("meta", {}).get("sync_every", 4))
    return {
        "source": throughput_source(data)["source"],
        "world_n": (c := data.get("scaling", {}).get("cluster") or {}).get("world", 4),
        "contention_n": contention(c.get("world", 4), c.get("cores")),
        "buckets_2": ddp_buckets(rb) if two and (rb := resnet18_param_bytes(data)) else None,
        "buckets_n": ddp_buckets(pb) if (pb := data.get("scaling", {}).get("cluster", {}).get("param_bytes")) else None,
        "kappa": kappa,
        "payload_efficiency": eff,
        "validation_2": two,
        "validation_n": four,
        "summary_2": error_summary([c for c in two if c["role"] == "compare"]),
        "summary_n": error_summary(four),
        "projection": project(eff, sync_every),
        "sync_every": sync_every,
    }


PLOT_GROUPS = (
    ("odsgd",),
    ("local_sgd", "post_local_sgd", "diloco"),
    ("dasgd",),
    ("cocodsgd", "overlap_local_sgd"),
    ("streaming_diloco",),
)


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models, links = list(PROJECTION_MODELS), list(PROJECTION_LINKS)
    fig, axes = plt.subplots(len(models), len(links), figsize=(11, 8), sharex=True, squeeze=False)
    for i, m in enumerate(models):
        for j, lk in enumerate(links):
            ax = axes[i][j]
            sel = [r for r in rows if r["model"] == m and r["link"] == lk]
            for group, style in zip(PLOT_GROUPS, ("-o", "-s", "--^", "-D", "-.v"), strict=True):
                ys = [r[group[0]] for r in sel]  # the group's members share one rule, hence one curve
                ax.plot([r["n"] for r in sel], ys, style, ms=3, label=" = ".join(group))
            ax.axhline(1.0, color="grey", lw=0.8, ls="--")
            ax.set_xscale("log", base=2)
            ax.set_title(f"{m}, {lk}", fontsize=10)
            ax.set_ylabel("speed-up over ssgd")
            if i == len(models) - 1:
                ax.set_xlabel("ranks N")
    axes[0][0].legend(fontsize=7)
    fig.suptitle("PROJECTION (latency-bandwidth model, not a measurement): step-time speed-up over ssgd", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def section(data: dict[str, Any], img_dir: Path) -> str:
    """Markdown of the scaling phase: model, fitted parameters, validation, projection table and plot."""
    a = analyse(data)
    res = data.get("scaling", {})
    lines = ["## Scaling: a latency-bandwidth model, its validation, and a PROJECTION to 8-1024 ranks", ""]
    lines += [
        "Everything under *Projection* below is computed from a model, **not measured**. The model is fitted "
        "and checked on this machine's 2-rank links and a 4-rank emulated cluster.",
        "",
        "### Model",
        "",
        "Per optimizer step; `t_c` compute-only step, `M` model bytes (fp32), `N` ranks, `H` = `sync_every` "
        f"(= {a['sync_every']}), `d` = `delay` (1), `P` fragments (2), `tau` fragment delay (1):",
        "",
        "```",
        "T_ar(M, N)        = 2(N-1)/N * M / beta + 2(N-1) * alpha          ring all-reduce",
        "compute_only      = t_c",
        "ssgd, ddp         = t_c + kappaM + E_ddp                   E_ddp: what backward cannot hide of DDP's buckets",
        "   our others first add their own work w per step: t_c <- t_c + w",
        "odsgd             = t_c + kappaM + max(0, T_ar - t_c)          the mean is consumed one step after launch",
        "   the periodic ones, with t_c' = t_c + kappaM/H:",
        "local_sgd, diloco,",
        "post_local_sgd    = t_c' + T_ar / H                        one blocking average per period",
        "dasgd             = t_c' + max(0, T_ar - d*t_c') / H       the average overlaps d steps",
        "cocodsgd,",
        "overlap_local_sgd = t_c' + max(0, T_ar - H*t_c') / H       the average overlaps the whole period",
        "streaming_diloco  = t_c' + P * max(0, T_ar(M/P) - tau*t_c') / H",
        "```",
        "",
        "`E_ddp` follows how DDP buckets the gradient, with nothing fitted: buckets of 1 MB (the first) then 25 MB "
        "(`bucket_cap_mb`), filled with gradients in the order backward makes them; backward is the last 2/3 of "
        "`t_c` and makes gradient bytes at an even rate; the buckets are all-reduced one after the other, each "
        "from when it is ready; `E_ddp` = how far the last one ends after `t_c`. "
        f"{_profiles_text(data)} The last-launched bucket never "
        f"overlaps backward, the others overlap what is left of it: ResNet-18 makes {_mb(a['buckets_2'])}, the "
        f"4-rank MLP {_mb(a['buckets_n'])}. "
        f"`kappa` = **{a['kappa'] * 1e9:.2f} ms/MB** (host CPU time per byte all-reduced that compute loses: gloo's "
        "threads share the ranks' 2 cores) is the one fitted term, fitted (median relative error) on the 2-rank "
        "`ssgd`/`ddp` cells only; every other cell, and the 4-rank run, is a prediction. On N ranks kappa is "
        "scaled, not refitted: x 2(N-1)/N (the bytes a rank's ring all-reduce handles) x ranks per core "
        f"(x {a['contention_n']:.1f} on the {a['world_n']}-rank cluster). {_own_work_text(data)} `sasgd`/`asgd` are "
        "not modelled: they are not lock-step, and their traffic goes through one parameter server in rank 0 "
        "(N pushes and pulls on one link), which a ring model does not describe.",
        "",
        "### Fitted link parameters",
        "",
        "All-reduce of 8 fp32 buffers, 4 KB to 45 MB, least squares on `T = 2(N-1)alpha + 2(N-1)/N * bytes/beta`:",
        "",
        "| link | ranks | latency alpha | payload beta | beta / nominal rate | fit's median error |",
        "|---|---|---|---|---|---|",
    ]
    fitted = [(lk, 2) for lk in res.get("links", [])]
    if res.get("cluster", {}).get("fit"):
        fitted.append((res["cluster"], res["cluster"]["world"]))
    for lk, n in fitted:
        f = lk.get("fit")
        if not f:
            lines.append(f"| {lk['bandwidth']} | {n} | failed | | | |")
            continue
        ratio = f"{f['bytes_per_s'] * 8 / lk['bps']:.2f}" if lk.get("bps") else "-"
        lines.append(
            f"| {lk['bandwidth']} | {n} | {f['latency_s'] * 1e6:.0f} µs | {f['bytes_per_s'] / 1e6:.1f} MB/s | "
            f"{ratio} | {_abs_pct(f['median_rel_error'])} |"
        )
    if not fitted:
        lines.append(
            "| (no sweep in this run: each link's one ResNet-18 all-reduce gives beta, with alpha = 0) | | | | | |"
        )
    cal = data.get("calibration") or res.get("calibration")
    if cal:
        lines += ["", f"Compute: `t(B) = {cal['a']:.3f} s + {cal['b'] * 1e3:.2f} ms * B` (ResNet-18, 2 ranks); "
                  "each cell uses the compute-only cell at its own batch when there is one."]  # fmt: skip
    lines += [
        "",
        "### Validation: predicted vs measured step time",
        "",
        "Error = predicted / measured - 1 (measured: the slowest rank's mean step, median over the repeats). "
        "Cells beyond 15 % are marked ⚠. On 2 cores the throughput cells carry the noise the throughput "
        "section describes.",
        "",
    ]
    for title, cells, summ in (
        (
            f"2 ranks, ResNet-18 (throughput cells of {a['source'] or 'no run'}: median of each cell's interleaved "
            "repeats, as that phase reports it, min-max beside)",
            a["validation_2"],
            a["summary_2"],
        ),
        (
            f"{res.get('cluster', {}).get('world', 4)} ranks, {res.get('cluster', {}).get('model', 'small MLP')} "
            f"(out of sample; median of {res.get('cluster', {}).get('repeats', 1)} interleaved repeats, min-max "
            "beside)",
            a["validation_n"],
            a["summary_n"],
        ),
    ):
        lines += [f"**{title}**: "]
        if not cells:
            lines += ["not measured in this run.", ""]
            continue
        lines[-1] += (
            f"median |error| **{_abs_pct(summ['median_abs_error'])}**, max **{_abs_pct(summ['max_abs_error'])}**, "
            f"{summ['within_15pct']} of {summ['cells']} cells within the 15 % target."
        )
        lines += ["", "| link | batch | strategy | measured | predicted | error |", "|---|---|---|---|---|---|"]
        for c in cells:
            if c["role"] != "compare":
                continue
            flag = "" if abs(c["error"]) <= 0.15 else " ⚠"
            spread = f" ({c['min_s']:.3f}-{c['max_s']:.3f})" if "min_s" in c else ""
            lines.append(
                f"| {c['bandwidth']} | {c['batch_size']} | {c['strategy']} | {c['measured_s']:.3f} s{spread} | "
                f"{c['predicted_s']:.3f} s | {_pct(c['error'])}{flag} |"
            )
        lines.append("")
    img_dir.mkdir(parents=True, exist_ok=True)
    plot(a["projection"], img_dir / "benchmarks_projection.png")
    lines += [
        "### PROJECTION: speed-up over `ssgd` at scale (model output, not a measurement)",
        "",
        "Assumptions (none measured here):",
        "",
    ]
    for name, m in PROJECTION_MODELS.items():
        lines.append(f"- **{name}** ({m['bytes'] / 1e6:,.0f} MB): `t_c` = {m['t_c']:.2f} s per step: {m['why']}.")
    for name, lk in PROJECTION_LINKS.items():
        lines.append(f"- **{name}** between nodes, alpha = {lk['latency_s'] * 1e6:.0f} µs per hop ({lk['why']}).")
    lines += [
        f"- beta = nominal rate x {a['payload_efficiency']:.2f} (the payload efficiency fitted on the shaped links "
        "above); one ring over all N ranks, each with its own link of that rate (the inter-node link is the "
        "bottleneck: intra-node NVLink and hierarchical all-reduce are not modelled); "
        "for ssgd, DDP's default buckets (1 MB, then 25 MB each; backward = 2/3 of `t_c`, gradient bytes at an "
        "even rate), each a ring all-reduce paying its own `2(N-1)` latency hops: the 1B model's 154 buckets at "
        "N = 1024 pay about 1.6 s of latency at 100 Gbit/s, more than its whole-model `T_ar` in the table "
        "(NCCL's tree all-reduce, not modelled, would cut that); `kappa` = 0 (NCCL moves the bytes without the "
        "host CPU); "
        f"`H` = {a['sync_every']} as in the measured runs. Speed-up = ssgd "
        "step / strategy step at the same batch: time per sample, not time to a target loss (the periodic "
        "methods may need more steps).",
        "",
        "![PROJECTION: speed-up over ssgd](img/benchmarks_projection.png)",
        "",
        "| model | link | N | ssgd step (T_ar) | " + " | ".join(PROJECTED) + " |",
        "|---|---|---|---|" + "---|" * len(PROJECTED),
    ]
    for r in a["projection"]:
        cells = " | ".join(f"{r[s]:.2f}x" for s in PROJECTED)
        lines.append(
            f"| {r['model']} | {r['link']} | {r['n']} | {r['ssgd_step_s']:.2f} s ({r['t_ar_s']:.2f} s) | {cells} |"
        )
    lines.append("")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------ main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_args(p)
    p.add_argument("--base-json", type=Path, help="start from this results JSON (its throughput cells, calibration)")
    p.add_argument("--no-measure", action="store_true", help="only analyse --base-json, measure nothing")
    p.add_argument("--out", type=Path, default=None, help="JSON to write (default benchmarks/results/scaling/<date>)")
    p.add_argument("--img-dir", type=Path, default=None, help="where the plot goes (default: next to the JSON)")
    p.add_argument("--md", type=Path, default=None, help="write the section's markdown here")
    p.add_argument("--timeout", type=float, default=300.0)
    w = p.add_argument_group("worker (one rank)")
    w.add_argument("--worker", action="store_true")
    w.add_argument("--task", choices=("sweep", "mlp", "throughput"))
    w.add_argument("--result")
    w.add_argument("--strategy")
    w.add_argument("--batch-size", type=int, default=64)
    w.add_argument("--warmup", type=int, default=2)
    w.add_argument("--steps", type=int, default=8)
    w.add_argument("--sizes", default=",".join(str(s) for s in SWEEP_SIZES))
    w.add_argument("--reps", type=int, default=3)
    w.add_argument("--rounds", type=int, default=1)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    import datetime as dt
    import tempfile

    from benchmarks.base import netns
    from benchmarks.base.launch import Runner
    from benchmarks.base.rank import REPO

    args = parse_args(argv)
    if args.worker:
        run_worker(args)
        return 0
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    # a folder of its own: benchmarks.report.page's latest_json takes the newest *.json in results/
    out_path = args.out or REPO / "benchmarks" / "results" / "scaling" / f"{stamp}.json"
    data: dict[str, Any] = json.loads(args.base_json.read_text()) if args.base_json else {"meta": {}}
    if not args.no_measure:
        data["meta"]["scaling_command"] = " ".join(["python -m benchmarks.projection", *(argv or sys.argv[1:])])
        data.pop("scaling", None)
        ok, why = netns.can_emulate()
        t0 = time.monotonic()
        with tempfile.TemporaryDirectory(prefix="ldbench-") as tmp:
            if ok:
                netns.remove_stale()
                with netns.emulated_link() as shaped:
                    measure(args, shaped, Runner(shaped.link, Path(tmp), args.timeout), data)
            else:
                log(f"NOTE: {why}; unshaped loopback only, no cluster")
                shaped = netns.ShapedLink(netns.LOOPBACK, netns.run_command)
                measure(args, shaped, Runner(netns.LOOPBACK, Path(tmp), args.timeout), data)
        data["meta"]["scaling_s"] = time.monotonic() - t0
        log(f"scaling phase measured in {data['meta']['scaling_s']:.0f} s")
        out_path.parent.mkdir(parents=True, exist_ok=True)
        out_path.write_text(json.dumps(data, indent=1))
        log(f"wrote {out_path}")
    md = section(data, args.img_dir or out_path.parent / "img")
    if args.md:
        args.md.write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
