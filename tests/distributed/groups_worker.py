"""Rank-side code of the worker-group distributed tests (4 gloo ranks = 2 workers x 2, or 2 ranks = 1 worker)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from lightning_delayed import (
    CoCoDSGDStrategy,
    CommMonitor,
    DaSGDStrategy,
    DiLoCoStrategy,
    LocalSGDStrategy,
    OverlapLocalSGDStrategy,
    SSGDStrategy,
    StreamingDiLoCoStrategy,
)
from lightning_delayed.strategies.base import DelayedStrategy
from tests.distributed.averaging_worker import StateRecorder
from tests.helpers import reference, reference_diloco
from tests.helpers.models import RegressionModule, SaveAt, rank, trainer
from tests.helpers.reference import full_state, reference_averaging
from tests.helpers.reference_diloco import reference_diloco as run_reference_diloco

CLASSES: dict[str, type[DelayedStrategy]] = {
    "local_sgd": LocalSGDStrategy,
    "dasgd": DaSGDStrategy,
    "cocodsgd": CoCoDSGDStrategy,
    "overlap_local_sgd": OverlapLocalSGDStrategy,
    "diloco": DiLoCoStrategy,
    "streaming_diloco": StreamingDiLoCoStrategy,
    "ssgd": SSGDStrategy,
}
DILOCO = ("diloco", "streaming_diloco")


def fit(case: dict[str, Any], group_size: int | None, **trainer_kwargs: Any) -> dict[str, Any]:
    module = RegressionModule(
        n_batches=case.get("n_batches", 4), opt=case["opt"], batchnorm=case.get("batchnorm", False)
    )
    if case.get("perturb"):
        # Each rank starts from other weights: fit must start every rank from rank 0's (the reference's).
        with torch.no_grad():
            for p in module.parameters():
                p.add_(0.01 * rank())
    recorder, monitor = StateRecorder(), CommMonitor(log=False, keep_history=True)
    args = dict(case.get("args", {}))
    if case.get("compression"):
        args["compression"] = case["compression"]
    if case.get("block_size"):
        args["block_size"] = case["block_size"]
    if group_size is not None:
        args["group_size"] = group_size
    strategy = CLASSES[case["kind"]](**args)
    ckpt_path = trainer_kwargs.pop("ckpt_path", None)
    callbacks = [recorder, monitor, *trainer_kwargs.pop("callbacks", [])]
    t = trainer(strategy, max_epochs=case["epochs"], callbacks=callbacks, **trainer_kwargs)
    t.fit(module, ckpt_path=ckpt_path)
    return {
        "local": recorder.local,
        "final": full_state(module),
        "val_params": module.val_params,
        "bytes": [r.bytes for r in monitor.history],
        "groups_after_teardown": getattr(strategy, "worker_groups", None) is not None,
    }


@contextlib.contextmanager
def worker_gradients(group_size: int) -> Iterator[None]:
    """Make the plain-loop reference step each rank on its worker's mean gradient (blocking all-reduce).

    Float buffers follow the worker's first rank after every backward (DDP's rule inside a worker).

    The reference's ``mean`` stays over all ranks: the G ranks of a worker hold the same tensors,
    so the mean over ranks is the mean over workers.
    """
    world, rank = dist.get_world_size(), dist.get_rank()
    intra = None
    for w in range(world // group_size):  # every rank creates every group, in the same order
        group = dist.new_group(list(range(w * group_size, (w + 1) * group_size)))
        if rank // group_size == w:
            intra = group
    original = reference.backward

    def backward(module: RegressionModule, micro: list[tuple[Any, Any]]) -> list[torch.Tensor]:
        original(module, micro)
        for p in module.parameters():
            assert p.grad is not None
            dist.all_reduce(p.grad, group=intra)
            p.grad.div_(group_size)
        with torch.no_grad():
            for b in module.buffers():
                if b.is_floating_point():
                    dist.broadcast(b, src=rank - rank % group_size, group=intra)
        return [p.grad.clone() for p in module.parameters() if p.grad is not None]

    reference.backward = backward  # type: ignore[assignment]
    reference_diloco.backward = backward  # type: ignore[assignment]
    try:
        yield
    finally:
        reference.backward = original  # type: ignore[assignment]
        reference_diloco.backward = original  # type: ignore[assignment]


def run_reference(case: dict[str, Any]) -> dict[str, Any] | None:
    if case.get("compression"):
        return None  # compared with each other (bit-identical workers), not with the exact reference
    bn = case.get("batchnorm", False)
    if case["kind"] in DILOCO:
        return run_reference_diloco(case["kind"], case["opt"], case["epochs"], case.get("args", {}), batchnorm=bn)
    return reference_averaging(case["kind"], case["opt"], case["epochs"], case.get("args", {}), batchnorm=bn)


def exactness(cases: list[dict[str, Any]], group_size: int) -> list[dict[str, Any]]:
    out = []
    for case in cases:
        ours = fit(case, group_size, **case.get("trainer", {}))
        with worker_gradients(group_size):
            ref = run_reference(case)
        out.append({"ours": ours, "reference": ref})
    return out


def resume(case: dict[str, Any], group_size: int, tmp: str, save_step: int) -> dict[str, Any]:
    """Uninterrupted vs (checkpoint at ``save_step``, resume); then resuming with another group_size is refused."""
    path = str(Path(tmp) / "grouped.ckpt")
    straight = fit(case, group_size)
    fit(case, group_size, callbacks=[SaveAt(save_step, path)])
    resumed = fit(case, group_size, ckpt_path=path)
    refusal = None
    try:
        fit(case, 1, ckpt_path=path)
    except ValueError as e:
        refusal = str(e)
    saved = torch.load(path, weights_only=False)
    return {
        "straight": straight["final"],
        "resumed": resumed["final"],
        "refusal": refusal,
        "saved_group_size": saved["lightning_delayed"]["group_size"],
    }


def one_worker_of_every_rank(cases: list[dict[str, Any]]) -> dict[str, Any]:
    """G = N for each of ``cases``, and ssgd on the same data: the weights after every step."""
    group_size = dist.get_world_size() if dist.is_initialized() else 2
    ssgd = fit({**cases[0], "kind": "ssgd", "args": {}}, None)["local"]
    return {"ssgd": ssgd, "grouped": [fit(case, group_size=group_size)["local"] for case in cases]}
