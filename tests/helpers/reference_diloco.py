"""Plain-loop simulation of DiLoCo and Streaming DiLoCo (docs/algorithms/diloco.md, streaming_diloco.md).

Written independently of the package: blocking ``all_reduce`` on copies, fragments found by walking
the modules, and torch's SGD written out by hand for the outer step.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from tests.helpers.models import RegressionModule, build_optimizer, build_scheduler
from tests.helpers.reference import assign, backward, batches, compressed_mean, full_state, mean
from tests.helpers.reference_lowbit import BITS, LowBitReference

DILOCO_DEFAULTS: dict[str, Any] = {
    "sync_every": 50,
    "outer_lr": 0.7,
    "outer_momentum": 0.9,
    "nesterov": True,
    "average_buffers": True,
}
STREAMING_DEFAULTS: dict[str, Any] = {**DILOCO_DEFAULTS, "num_fragments": 2, "delay": 1, "alpha": 0.5}


def fragments_by_hand(module: nn.Module, num_fragments: int, pattern: str) -> list[list[int]]:
    """Parameter indices of each fragment: layers (modules owning parameters) dealt out strided or in blocks."""
    position = {id(p): i for i, p in enumerate(module.parameters())}
    layers = [[position[id(p)] for p in m.parameters(recurse=False)] for m in module.modules()]
    layers = [layer for layer in layers if layer]
    out: list[list[int]] = [[] for _ in range(num_fragments)]
    for j, layer in enumerate(layers):
        q = j % num_fragments if pattern == "strided" else j * num_fragments // len(layers)
        out[q] += layer
    return out


def reference_diloco(
    kind: str,
    opt: dict[str, Any],
    epochs: int,
    args: dict[str, Any],
    accumulate: int = 1,
    n_batches: int = 4,
    batchnorm: bool = False,
    compression: str = "none",
    block_size: int = 64,
    error_feedback: bool = True,
) -> dict[str, Any]:
    """``diloco`` is ``streaming_diloco`` with one fragment, no delay and no mix, as the docs say.

    ``compression="int8"``/``"int4"``: the low-bit mean of :mod:`tests.helpers.reference_lowbit`,
    buffers averaged apart from the pseudo-gradients (as ``streaming_diloco`` does; ``diloco``
    launches them together, so compare it without float buffers).
    """
    if kind == "diloco":
        a = {**DILOCO_DEFAULTS, **args, "num_fragments": 1, "delay": 0, "alpha": 0.0, "fragments": "strided"}
    else:
        a = {**STREAMING_DEFAULTS, "fragments": "strided", **args}
    h, n_frag, delay, alpha = a["sync_every"], a["num_fragments"], a["delay"], a["alpha"]
    lr, mu = a["outer_lr"], a["outer_momentum"]
    module = RegressionModule(n_batches=n_batches, opt=opt, batchnorm=batchnorm)
    module.train()
    params = list(module.parameters())
    optimizer = build_optimizer(params, opt)
    scheduler = build_scheduler(optimizer, opt)
    floats = [b for b in module.buffers() if b.is_floating_point()] if a["average_buffers"] else []
    fragments = fragments_by_hand(module, n_frag, a["fragments"])
    theta = [p.detach().clone() for p in params]
    velocity: list[torch.Tensor | None] = [None] * len(params)  # the outer SGD's momentum buffers
    residuals = [torch.zeros_like(t) for t in [*params, *floats]]  # error feedback per "model/<i>"

    lowbit = LowBitReference(BITS[compression], block_size, error_feedback) if compression in BITS else None

    def average(tensors: list[torch.Tensor], slots: list[int], stream: bool) -> list[torch.Tensor]:
        if compression == "none" or not stream:
            return mean(tensors)
        if lowbit is not None:
            return lowbit.mean(tensors, [f"model/{i}" for i in slots])
        mine = [residuals[i] for i in slots]
        out = compressed_mean(tensors, mine, compression)
        for i, r in zip(slots, mine, strict=True):
            residuals[i] = r
        return out

    def outer_step(idx: list[int], delta: list[torch.Tensor]) -> None:
        for i, d in zip(idx, delta, strict=True):
            if mu > 0:
                v = velocity[i]
                velocity[i] = d.clone() if v is None else mu * v + d
                step = d + mu * velocity[i] if a["nesterov"] else velocity[i]
            else:
                step = d
            theta[i] = theta[i] - lr * step

    def pseudo(idx: list[int], stream: bool) -> list[torch.Tensor]:
        return average([theta[i] - params[i].detach() for i in idx], idx, stream)

    def launch_offset(q: int) -> int:
        return ((q + 1) * h // n_frag) % h

    n = len(params)
    pending: list[tuple[int, int, list[torch.Tensor]]] = []
    hist = []
    steps = 0
    for k, micro in enumerate(batches(module, epochs, accumulate)):
        backward(module, micro)
        optimizer.step()
        if (k + 1) % h == 0 and floats:
            assign(floats, average([b.detach().clone() for b in floats], list(range(n, n + len(floats))), True))
        for q in range(n_frag):
            if (k + 1) % h == launch_offset(q):
                pending.append((q, k, pseudo(fragments[q], True)))
        for q, _, delta in [item for item in pending if item[1] == k - delay]:
            outer_step(fragments[q], delta)
            assign(
                [params[i] for i in fragments[q]],
                [alpha * params[i].detach() + (1 - alpha) * theta[i] for i in fragments[q]],
            )
        pending = [item for item in pending if item[1] != k - delay]
        if scheduler is not None:
            scheduler.step()
        hist.append(full_state(module))
        steps = k + 1
    # End of training (full precision): pending fragments merged as usual; a fragment launched after the
    # last step takes theta; every other one is synchronised once more; buffers averaged if mid-period.
    for q, _, delta in pending:
        outer_step(fragments[q], delta)
        assign(
            [params[i] for i in fragments[q]],
            [alpha * params[i].detach() + (1 - alpha) * theta[i] for i in fragments[q]],
        )
    for q in range(n_frag):
        if launch_offset(q) != steps % h:
            outer_step(fragments[q], pseudo(fragments[q], False))
        assign([params[i] for i in fragments[q]], [theta[i] for i in fragments[q]])
    if steps % h != 0 and floats:
        assign(floats, mean([b.detach().clone() for b in floats]))
    return {"local": hist, "final": full_state(module), "theta": [t.clone() for t in theta]}
