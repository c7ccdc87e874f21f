"""Each update rule's own work in isolation: no forward, no backward, no network, no second rank.

The end-to-end own cost (:mod:`benchmarks.workloads.own_cost`) divides two noisy training steps of about
175 ms; an algorithm's extra 10-20 ms hides in their spread on a shared 2-core machine. Here the
rule itself is timed: the core objects of :mod:`lightning_delayed.core`, built on ResNet-18's
parameters and float buffers as the strategies build them, with
:class:`~benchmarks.base.free_hook.FreeHook` as their communication, driven through the optimizer-step
hooks exactly as the strategies drive them::

    own work = time(hook launch + before_optimizer_step + optimizer.step() + after_optimizer_step)
             - time(optimizer.step())                     per step, mean over whole periods of H steps

One thread; gradients are copied into ``.grad`` before the clock starts, as DDP's copy-back does
(the same for every strategy).
It also times one elementwise pass over the model (``torch.add`` of two parameter lists), the unit
the rules are made of, so each rule's work reads as a number of whole-model passes.

Standalone::

    python -m benchmarks.own_work                 # prints the table
    python -m benchmarks.own_work --json w.json   # and writes it
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

NUM_CLASSES = 10
SYNC_EVERY = 4
"""H of the periodic rules, as in the throughput and own-cost phases (:data:`benchmarks.base.baselines.SYNC_EVERY`)."""
PER_STEP = ("ssgd", "odsgd")
"""Rules whose own work is paid every step (the others pay theirs once per H steps)."""
RULES = ("ssgd", "odsgd", "local_sgd", "dasgd", "cocodsgd", "overlap_local_sgd", "diloco", "streaming_diloco")


class _Launched:
    """The gradient communicator of the gradient rules: what the DDP hook launched during backward."""

    def __init__(self, launch: Callable[[], Any]) -> None:
        self._launch, self._pending = launch, None

    def launch(self) -> None:
        self._pending = self._launch()

    def take_launched(self) -> Any:
        pending, self._pending = self._pending, None
        return pending


def build_rule(name: str, module: torch.nn.Module, optimizer: torch.optim.Optimizer) -> tuple[Any, _Launched | None]:
    """The core rule ``name`` on ``module`` with free communication, and its gradient communicator if it has one."""
    from benchmarks.base.free_hook import FreeHook
    from lightning_delayed.core.dasgd import DaSGD, DaSGDConfig, cocodsgd_config
    from lightning_delayed.core.diloco import DiLoCo, DiLoCoConfig
    from lightning_delayed.core.local_sgd import LocalSGD, LocalSGDConfig
    from lightning_delayed.core.odsgd import ODSGD, ODSGDConfig
    from lightning_delayed.core.overlap_local_sgd import OverlapLocalSGD, OverlapLocalSGDConfig
    from lightning_delayed.core.ssgd import SynchronousSGD
    from lightning_delayed.core.streaming_diloco import StreamingDiLoCo, StreamingDiLoCoConfig, layer_fragments

    hook = FreeHook()
    params = [p for p in module.parameters() if p.requires_grad]
    buffers = [b for b in module.buffers() if b.is_floating_point()]
    x = [*params, *buffers]  # average_buffers=True, the default
    if name in ("ssgd", "odsgd"):
        grads = _Launched(lambda: hook.launch([p.grad for p in params], what="gradients"))
        if name == "ssgd":
            return SynchronousSGD(params, grads), grads
        return ODSGD(ODSGDConfig(), params, optimizer, grads), grads
    rules: dict[str, Callable[[], Any]] = {
        "local_sgd": lambda: LocalSGD(LocalSGDConfig(sync_every=SYNC_EVERY), x, optimizer, hook),
        "dasgd": lambda: DaSGD(DaSGDConfig(sync_every=SYNC_EVERY), x, optimizer, hook),
        "cocodsgd": lambda: DaSGD(cocodsgd_config(SYNC_EVERY), x, optimizer, hook),
        "overlap_local_sgd": lambda: OverlapLocalSGD(OverlapLocalSGDConfig(sync_every=SYNC_EVERY), x, optimizer, hook),
        "diloco": lambda: DiLoCo(DiLoCoConfig(sync_every=SYNC_EVERY), params, buffers, optimizer, hook),
        "streaming_diloco": lambda: StreamingDiLoCo(
            (cfg := StreamingDiLoCoConfig(sync_every=SYNC_EVERY)),
            params,
            buffers,
            optimizer,
            layer_fragments(module, params, cfg.num_fragments, cfg.fragments),
            hook,
        ),
    }
    return rules[name](), None


def time_steps(name: str | None, periods: int, warmup_periods: int = 1) -> float:
    """Mean seconds per optimizer step (hooks included) over ``periods`` whole periods of H steps."""
    import torchvision

    torch.manual_seed(0)
    module = torchvision.models.resnet18(num_classes=NUM_CLASSES)
    params = list(module.parameters())
    optimizer = torch.optim.SGD(params, lr=0.01, momentum=0.9)
    grads = [torch.randn_like(p).mul_(1e-3) for p in params]
    rule, launched = build_rule(name, module, optimizer) if name else (None, None)
    total, timed = 0.0, 0
    for k in range((warmup_periods + periods) * SYNC_EVERY):
        for p, g in zip(params, grads, strict=True):
            # What backward and DDP's copy-back leave, written into the existing .grad as DDP does: not timed.
            if p.grad is None:
                p.grad = g.clone()
            else:
                p.grad.copy_(g)
        start = time.perf_counter()
        if launched is not None:
            launched.launch()
        if rule is not None:
            rule.before_optimizer_step()
        optimizer.step()
        if rule is not None:
            rule.after_optimizer_step()
        elapsed = time.perf_counter() - start
        if k >= warmup_periods * SYNC_EVERY:
            total, timed = total + elapsed, timed + 1
    return total / timed


def pass_seconds(repeats: int = 9) -> float:
    """Median seconds of one elementwise pass over ResNet-18's parameters (``torch.add(a, b, out=c)``)."""
    import torchvision

    params = [p.detach() for p in torchvision.models.resnet18(num_classes=NUM_CLASSES).parameters()]
    a: list[Tensor] = [torch.randn_like(p) for p in params]
    out = [torch.empty_like(p) for p in params]
    times = []
    for _ in range(repeats + 2):
        start = time.perf_counter()
        for pi, ai, oi in zip(params, a, out, strict=True):
            torch.add(pi, ai, out=oi)
        times.append(time.perf_counter() - start)
    return statistics.median(times[2:])


def measure(rules: tuple[str, ...] = RULES, periods: int = 6, rounds: int = 3) -> dict[str, Any]:
    """Own work per step of every rule (median and min-max over interleaved rounds), in ms and in passes."""
    torch.set_num_threads(1)
    per_round: list[dict[str, float]] = []
    for _ in range(rounds):
        # The bare optimizer step is timed in every round, like compute-only in the other phases.
        row = {"optimizer": time_steps(None, periods)}
        row.update({name: time_steps(name, periods) for name in rules})
        per_round.append(row)
    one_pass = pass_seconds()
    cells: dict[str, Any] = {}
    for name in rules:
        own = [r[name] - r["optimizer"] for r in per_round]
        med = statistics.median(own)
        cells[name] = {"own_s": {"median": med, "min": min(own), "max": max(own)}, "passes": med / one_pass}
    return {
        "rules": list(rules),
        "periods": periods,
        "rounds": rounds,
        "sync_every": SYNC_EVERY,
        "optimizer_step_s": statistics.median(r["optimizer"] for r in per_round),
        "pass_s": one_pass,
        "rounds_s": per_round,
        "cells": cells,
    }


def table(d: dict[str, Any], compute_step_s: float | None) -> list[str]:
    """Markdown rows of the isolated own work; ``compute_step_s`` (the compute-only step) gives the % column."""
    lines = [
        "| rule | own work per step (ms) median [min-max] | whole-model passes | % of compute-only step |",
        "|---|---:|---:|---:|",
    ]
    for name in d["rules"]:
        c = d["cells"][name]
        own = c["own_s"]
        share = f"{100 * own['median'] / compute_step_s:.1f} %" if compute_step_s else ""
        lines.append(
            f"| `{name}` | {1000 * own['median']:.1f} [{1000 * own['min']:.1f}-{1000 * own['max']:.1f}] "
            f"| {c['passes']:.1f} | {share} |"
        )
    return lines


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.own_work", description=__doc__.split("\n")[0])
    p.add_argument("--rules", default=",".join(RULES))
    p.add_argument("--periods", type=int, default=6, help="timed periods of H steps per measurement")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds")
    p.add_argument("--json", type=Path, default=None, help="also write the result here")
    args = p.parse_args(argv)
    d = measure(tuple(args.rules.split(",")), args.periods, args.rounds)
    if args.json is not None:
        args.json.write_text(json.dumps(d, indent=1))
    print(f"one pass over ResNet-18: {1000 * d['pass_s']:.1f} ms; bare SGD step {1000 * d['optimizer_step_s']:.1f} ms")
    print("\n".join(table(d, None)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
