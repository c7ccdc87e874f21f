"""Plain-loop simulations of the rules in docs/algorithms/<name>.md, written independently of the package.

They use blocking ``torch.distributed.all_reduce`` and copy weights explicitly, the most literal
reading of the rules; the package must produce the same numbers.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from tests.helpers.models import RegressionModule, build_optimizer, build_scheduler, make_data, rank
from tests.helpers.reference_lowbit import LowBitReference


def mean(tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return [t.clone() for t in tensors]
    out = []
    for t in tensors:
        t = t.clone()
        dist.all_reduce(t)
        out.append(t / dist.get_world_size())
    return out


def batches(module: RegressionModule, epochs: int, accumulate: int) -> Iterator[list[tuple[Any, Any]]]:
    """Yield the micro-batches of each optimizer step, as Lightning's loop would."""
    data = make_data(rank(), module.n_batches, module.batch_size)
    per_epoch = [
        (data.tensors[0][i : i + module.batch_size], data.tensors[1][i : i + module.batch_size])
        for i in range(0, len(data), module.batch_size)
    ]
    for _ in range(epochs):
        for i in range(0, len(per_epoch), accumulate):
            yield per_epoch[i : i + accumulate]


def backward(module: RegressionModule, micro: list[tuple[Any, Any]]) -> list[torch.Tensor]:
    for p in module.parameters():
        p.grad = None
    for x, y in micro:
        (nn.functional.mse_loss(module(x), y) / len(micro)).backward()
    return [p.grad.clone() for p in module.parameters()]


def set_params(module: nn.Module, values: list[torch.Tensor]) -> None:
    with torch.no_grad():
        for p, v in zip(module.parameters(), values, strict=True):
            p.copy_(v)


def reference_odsgd(
    opt: dict[str, Any],
    epochs: int,
    local_lr: float | None = None,
    dc_lambda: float = 0.0,
    warmup_steps: int = 0,
    accumulate: int = 1,
    n_batches: int = 4,
    max_steps: int | None = None,
    lowbit: LowBitReference | None = None,
) -> dict[str, Any]:
    """``lowbit``: the gradient means (warm-up and delayed) are that low-bit mean, keys ``"grad/<i>"``."""

    def grad_mean(g: list[torch.Tensor]) -> list[torch.Tensor]:
        return mean(g) if lowbit is None else lowbit.mean(g, [f"grad/{i}" for i in range(len(g))])

    module = RegressionModule(n_batches=n_batches, opt=opt)
    params = list(module.parameters())
    optimizer = build_optimizer(params, opt)
    scheduler = build_scheduler(optimizer, opt)
    big_w = None  # W
    pending = None
    local_hist, global_hist = [], []
    for k, micro in enumerate(batches(module, epochs, accumulate)):
        if max_steps is not None and k >= max_steps:
            break
        g = backward(module, micro)
        if k < warmup_steps:
            for p, gb in zip(params, grad_mean(g), strict=True):
                p.grad = gb
            optimizer.step()
        else:
            if big_w is None:
                big_w = [p.detach().clone() for p in params]
            launched = grad_mean(g)
            updated = pending is not None
            if updated:
                w_prev = [t.clone() for t in big_w]
                set_params(module, big_w)
                for p, gb in zip(params, pending, strict=True):
                    p.grad = gb.clone()
                optimizer.step()
                big_w = [p.detach().clone() for p in params]
            pending = launched
            lr = local_lr if local_lr is not None else optimizer.param_groups[0]["lr"]
            new_w = []
            for i, (wi, gi) in enumerate(zip(big_w, g, strict=True)):
                if updated and dc_lambda > 0:
                    new_w.append(wi - lr * (gi + dc_lambda * gi * gi * (wi - w_prev[i])))
                else:
                    new_w.append(wi - lr * gi)
            set_params(module, new_w)
        if scheduler is not None:
            scheduler.step()
        local_hist.append([p.detach().clone() for p in params])
        global_hist.append(None if big_w is None else [t.clone() for t in big_w])
    if pending is not None:
        set_params(module, big_w)
        for p, gb in zip(params, pending, strict=True):
            p.grad = gb.clone()
        optimizer.step()
    return {"local": local_hist, "global": global_hist, "final": [p.detach().clone() for p in params]}


def model_tensors(module: nn.Module, average_buffers: bool) -> list[torch.Tensor]:
    """``x``: parameters, then the floating-point buffers when they are averaged."""
    tensors = list(module.parameters())
    if average_buffers:
        tensors += [b for b in module.buffers() if b.is_floating_point()]
    return tensors


def full_state(module: nn.Module) -> list[torch.Tensor]:
    """What the tests compare: every parameter and every buffer (integer ones included)."""
    return [t.detach().clone() for t in [*module.parameters(), *module.buffers()]]


def weighted_mean(tensors: list[torch.Tensor], weight: float | None) -> list[torch.Tensor]:
    if weight is None:
        return mean(tensors)
    total = torch.tensor([float(weight)], dtype=torch.float64)
    dist.all_reduce(total)
    out = []
    for t in tensors:
        t = t.detach().clone() * weight
        dist.all_reduce(t)
        out.append(t / total.to(t.dtype))
    return out


def assign(tensors: list[torch.Tensor], values: list[torch.Tensor]) -> None:
    with torch.no_grad():
        for t, v in zip(tensors, values, strict=True):
            t.copy_(v)


AVERAGING_DEFAULTS: dict[str, dict[str, Any]] = {
    "local_sgd": {"sync_every": 4},
    "dasgd": {"sync_every": 4, "delay": 1, "weighting": "uniform"},
    "cocodsgd": {"sync_every": 4, "weighting": "uniform"},
    "overlap_local_sgd": {"sync_every": 2, "alpha": 0.6, "outer_momentum": 0.0},
}


def reference_averaging(
    kind: str,
    opt: dict[str, Any],
    epochs: int,
    args: dict[str, Any],
    accumulate: int = 1,
    n_batches: int = 4,
    batchnorm: bool = False,
    batch_sizes: list[int] | None = None,
    lowbit: LowBitReference | None = None,
) -> dict[str, Any]:
    """Local SGD, DaSGD, CoCoD-SGD and Overlap Local-SGD as docs/algorithms/<name>.md write them, blocking.

    ``lowbit``: the rule's (uniform) averages are that low-bit mean, keys ``"model/<i>"``; the final
    average stays exact (a one-off average).
    """
    a = {**AVERAGING_DEFAULTS[kind], "average_buffers": True, **args}
    tau = a["sync_every"]
    delay = tau if kind == "cocodsgd" else a.get("delay", 1)
    module = RegressionModule(n_batches=n_batches, opt=opt, batchnorm=batchnorm, batch_sizes=batch_sizes)
    module.train()
    optimizer = build_optimizer(list(module.parameters()), opt)
    scheduler = build_scheduler(optimizer, opt)
    x = model_tensors(module, a["average_buffers"])
    keys = [f"model/{i}" for i in range(len(x))]

    def rule_mean(tensors: list[torch.Tensor], weight: float | None = None) -> list[torch.Tensor]:
        if lowbit is None:
            return weighted_mean(tensors, weight)
        assert weight is None, "the low-bit reference averages uniformly"
        return lowbit.mean(tensors, keys)

    pending: list[torch.Tensor] | None = None  # the average launched at launch_step (already computed)
    launch_step = -1
    snapshot: list[torch.Tensor] = []
    velocity = [torch.zeros_like(t) for t in x]
    samples = 0
    hist = []
    for k, micro in enumerate(batches(module, epochs, accumulate)):
        backward(module, micro)  # own gradient only: nothing is communicated
        samples += sum(len(xb) for xb, _ in micro)
        optimizer.step()
        sync = (k + 1) % tau == 0
        if kind == "local_sgd":
            if sync:
                assign(x, rule_mean([t.detach().clone() for t in x]))
        elif kind in ("dasgd", "cocodsgd"):
            if pending is not None and launch_step == k - delay:
                assign(x, [c + (xi.detach() - s) for c, xi, s in zip(pending, x, snapshot, strict=True)])
                pending = None
            if sync:
                snapshot = [t.detach().clone() for t in x]
                weight = float(samples) if a["weighting"] == "samples" else None
                pending = rule_mean([t.detach().clone() for t in x], weight)
                launch_step, samples = k, 0
        elif sync:  # overlap_local_sgd
            alpha, beta = a["alpha"], a["outer_momentum"]
            if pending is not None:
                z = pending
                assign(x, [(1 - alpha) * xi.detach() + alpha * zi for xi, zi in zip(x, z, strict=True)])
                if beta > 0:
                    lr = optimizer.param_groups[0]["lr"]
                    velocity = [beta * v + (zi - xi.detach()) / lr for v, xi, zi in zip(velocity, x, z, strict=True)]
                    send = [zi - lr * v for zi, v in zip(z, velocity, strict=True)]
                else:
                    send = [t.detach().clone() for t in x]
            else:
                send = [t.detach().clone() for t in x]
            pending = rule_mean(send)
        if scheduler is not None:
            scheduler.step()
        hist.append(full_state(module))
    # End of training: merge what is pending by the algorithm's rule, then one synchronous average.
    if pending is not None:
        if kind in ("dasgd", "cocodsgd"):
            assign(x, [c + (xi.detach() - s) for c, xi, s in zip(pending, x, snapshot, strict=True)])
        elif kind == "overlap_local_sgd":
            alpha = a["alpha"]
            assign(x, [(1 - alpha) * xi.detach() + alpha * zi for xi, zi in zip(x, pending, strict=True)])
    assign(x, mean([t.detach().clone() for t in x]))
    return {"local": hist, "final": full_state(module)}


WIRE_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}


def compressed_mean(tensors: list[torch.Tensor], residuals: list[torch.Tensor], compression: str) -> list[torch.Tensor]:
    """Each rank sends ``cast(t + e)`` and keeps ``e <- t + e - cast(t + e)`` (``residuals`` updated in
    place); the result is the mean of all ranks' wire tensors computed in the wire dtype."""
    out = []
    for i, t in enumerate(tensors):
        corrected = t + residuals[i]
        wire = corrected.to(WIRE_DTYPES[compression])
        residuals[i] = corrected - wire.to(t.dtype)
        wires = [torch.empty_like(wire) for _ in range(dist.get_world_size())]
        dist.all_gather(wires, wire)
        total = wires[0]
        for w in wires[1:]:
            total = total + w
        out.append((total / len(wires)).to(t.dtype))
    return out


def reference_pipesgd(
    opt: dict[str, Any],
    epochs: int,
    accumulate: int = 1,
    n_batches: int = 4,
    compression: str = "none",
) -> dict[str, Any]:
    """Pipe-SGD (examples/custom_algorithm.py): ``x <- opt.step(x, mean(g_{k-1}))``; no update at step 0;
    the last mean is applied at the end."""
    module = RegressionModule(n_batches=n_batches, opt=opt)
    params = list(module.parameters())
    optimizer = build_optimizer(params, opt)
    scheduler = build_scheduler(optimizer, opt)
    residuals = [torch.zeros_like(p) for p in params]
    pending = None
    hist = []
    for micro in batches(module, epochs, accumulate):
        g = backward(module, micro)
        launched = mean(g) if compression == "none" else compressed_mean(g, residuals, compression)
        if pending is not None:
            for p, gb in zip(params, pending, strict=True):
                p.grad = gb.clone()
            optimizer.step()
        pending = launched
        if scheduler is not None:
            scheduler.step()
        hist.append([p.detach().clone() for p in params])
    if pending is not None:
        for p, gb in zip(params, pending, strict=True):
            p.grad = gb.clone()
        optimizer.step()
    return {"local": hist, "final": [p.detach().clone() for p in params]}
