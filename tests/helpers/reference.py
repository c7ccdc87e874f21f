"""Plain-loop simulations of ALGORITHMS.md, written independently of the package.

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
) -> dict[str, Any]:
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
            for p, gb in zip(params, mean(g), strict=True):
                p.grad = gb
            optimizer.step()
        else:
            if big_w is None:
                big_w = [p.detach().clone() for p in params]
            launched = mean(g)
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
