"""Rank-side code of the Fabric tests (run by tests.helpers.launch.run_ranks): a plain Fabric loop."""

from __future__ import annotations

from typing import Any

import torch
from lightning.fabric import Fabric
from torch import nn

import lightning_delayed.fabric as ldf
from lightning_delayed.fabric import DelayedFabricStrategy
from tests.helpers.models import build_net, build_optimizer, make_data, rank, world_size
from tests.helpers.reference import full_state, reference_averaging, reference_odsgd
from tests.helpers.reference_diloco import reference_diloco
from tests.helpers.reference_lowbit import BITS, LowBitReference

BATCH = 8


def fit(case: dict[str, Any], save: tuple[int, str] | None = None, resume_from: str | None = None) -> dict[str, Any]:
    """Train ``case`` with the user's loop: ``fabric.backward(loss)``, ``optimizer.step()``; record every step."""
    args = case.get("args", {})
    # A registry name alone (Fabric(strategy="odsgd")) or a configured strategy object.
    strategy: Any = case["kind"] if case.get("by_name") else DelayedFabricStrategy(case["kind"], **args)
    # Default precision: the model is float64 already, and precision="64-true" would cast the model's
    # output back to the default dtype (float32) before the loss, unlike the references.
    fabric = Fabric(accelerator="cpu", devices=world_size(), strategy=strategy)
    fabric.launch()
    net = build_net()
    model, optimizer = fabric.setup(net, build_optimizer(net.parameters(), case["opt"]))
    data = make_data(rank(), case.get("n_batches", 4), BATCH)
    per_epoch = [(data.tensors[0][i : i + BATCH], data.tensors[1][i : i + BATCH]) for i in range(0, len(data), BATCH)]
    steps = [b for _ in range(case["epochs"]) for b in per_epoch]
    start = 0
    if resume_from is not None:
        remainder = fabric.load(resume_from, {"model": model, "optimizer": optimizer})
        start = int(remainder["step"])
    local, consensus = [], []
    for k in range(start, len(steps)):
        x, y = steps[k]
        optimizer.zero_grad()
        fabric.backward(nn.functional.mse_loss(model(x), y))
        optimizer.step()
        local.append(full_state(net))
        with ldf.consensus(fabric):
            consensus.append(full_state(net))
        if save is not None and k + 1 == save[0]:
            fabric.save(save[1], {"model": model, "optimizer": optimizer, "step": k + 1})
    ldf.finish(fabric)
    out = {"local": local, "consensus": consensus, "final": full_state(net)}
    fabric.strategy.teardown()
    return out


def reference(case: dict[str, Any]) -> dict[str, Any]:
    kind, args, opt, epochs = case["kind"], case.get("args", {}), case["opt"], case["epochs"]
    if kind == "odsgd":
        return reference_odsgd(opt, epochs, **args)
    if kind == "diloco":
        return reference_diloco(kind, opt, epochs, args)
    return reference_averaging(kind, opt, epochs, args)


def exactness(cases: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{"ours": fit(case), "reference": reference(case)} for case in cases]


def resume(cases: list[dict[str, Any]], tmp: str, save_step: int) -> list[dict[str, Any]]:
    """Per case: uninterrupted run vs. (run and save at ``save_step``, then a fresh Fabric resumes to the end)."""
    out = []
    for i, case in enumerate(cases):
        path = f"{tmp}/fabric-{i}.ckpt"
        whole = fit(case, save=(save_step, path))
        resumed = fit(case, resume_from=path)
        out.append({"whole": whole, "resumed": resumed})
        torch.distributed.barrier()
    return out


def resume_with_other_arguments(case: dict[str, Any], tmp: str) -> str:
    """Save with ``case``'s arguments, then resume with another ``sync_every``: the refusal every rank sees."""
    path = f"{tmp}/fabric-args.ckpt"
    fit(case, save=(3, path))
    other = {**case, "args": {**case["args"], "sync_every": case["args"]["sync_every"] + 1}}
    try:
        fit(other, resume_from=path)
    except ValueError as e:
        return str(e)
    return "resumed"


def setup_warnings(kinds: list[str]) -> dict[str, Any]:
    """For each algorithm: the warnings ``fabric.setup`` gives, and whether DDP syncs buffers every forward."""
    import warnings

    out: dict[str, Any] = {}
    for kind in kinds:
        fabric = Fabric(accelerator="cpu", devices=world_size(), strategy=DelayedFabricStrategy(kind))
        fabric.launch()
        net = build_net()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            model, _ = fabric.setup(net, build_optimizer(net.parameters(), {"kind": "sgd", "lr": 0.1}))
        ddp = model._forward_module
        out[kind] = {"warnings": [str(w.message) for w in caught], "forward_sync_buffers": ddp.forward_sync_buffers}
        fabric.strategy.teardown()
    return out


def lowbit(cases: list[dict[str, Any]], tmp: str, save_step: int) -> list[dict[str, Any]]:
    """Per int8/int4 case: the run vs the reference with the low-bit mean, and a save/resume vs the whole run."""
    out = []
    for i, case in enumerate(cases):
        low = {"compression": case["compression"], "block_size": case["block_size"]}
        args = case.get("args", {})
        with_low = {**case, "args": {**args, **low}}
        path = f"{tmp}/fabric-lowbit-{i}.ckpt"
        whole = fit(with_low, save=(save_step, path))
        resumed = fit(with_low, resume_from=path)
        if case["kind"] == "diloco":
            ref = reference_diloco("diloco", case["opt"], case["epochs"], args, **low)
        else:
            lowbit_mean = LowBitReference(BITS[case["compression"]], case["block_size"])
            ref = reference_averaging(case["kind"], case["opt"], case["epochs"], args, lowbit=lowbit_mean)
        out.append({"whole": whole, "resumed": resumed, "reference": ref})
        torch.distributed.barrier()
    return out
