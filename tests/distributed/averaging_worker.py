"""Rank-side code of the model-averaging distributed tests (run by tests.helpers.launch.run_ranks)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import torch
import torch.distributed as dist

from lightning_delayed import CoCoDSGDStrategy, DaSGDStrategy, LocalSGDStrategy, OverlapLocalSGDStrategy
from lightning_delayed.strategies.averaging import AveragingStrategy
from tests.helpers.models import RegressionModule, SaveAt, trainer
from tests.helpers.reference import full_state, reference_averaging

CLASSES: dict[str, type[AveragingStrategy]] = {
    "local_sgd": LocalSGDStrategy,
    "dasgd": DaSGDStrategy,
    "cocodsgd": CoCoDSGDStrategy,
    "overlap_local_sgd": OverlapLocalSGDStrategy,
}

_all_reduce_calls = 0


def _install_all_reduce_counter() -> None:
    """Count every Python-level ``torch.distributed.all_reduce`` (the package's buckets use it)."""
    global _all_reduce_calls
    if getattr(dist.all_reduce, "_ld_counting", False):
        return
    original = dist.all_reduce

    def counting(*args: Any, **kwargs: Any) -> Any:
        global _all_reduce_calls
        _all_reduce_calls += 1
        return original(*args, **kwargs)

    counting._ld_counting = True  # type: ignore[attr-defined]
    dist.all_reduce = counting  # type: ignore[assignment]


class StateRecorder(L.Callback):
    """Parameters and buffers after every optimizer step, and the all-reduces issued during it."""

    def __init__(self) -> None:
        self.local: list[list[torch.Tensor]] = []
        self.all_reduces: list[int] = []
        self._seen = 0
        self._micro = 0

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        if self._micro == 0:
            self._seen = _all_reduce_calls  # count from the first micro-batch of this optimizer step
        self._micro += 1

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        if trainer.fit_loop._should_accumulate():
            return
        self.local.append(full_state(pl_module))
        self.all_reduces.append(_all_reduce_calls - self._seen)
        self._micro = 0


def fit(case: dict[str, Any], **trainer_kwargs: Any) -> dict[str, Any]:
    _install_all_reduce_counter()
    module = RegressionModule(
        n_batches=case.get("n_batches", 4),
        opt=case["opt"],
        batchnorm=case.get("batchnorm", False),
        batch_sizes=case.get("batch_sizes"),
    )
    recorder = StateRecorder()
    strategy = CLASSES[case["kind"]](**case.get("args", {}))
    callbacks = [recorder, *trainer_kwargs.pop("callbacks", [])]
    ckpt_path = trainer_kwargs.pop("ckpt_path", None)
    t = trainer(strategy, max_epochs=case["epochs"], callbacks=callbacks, **trainer_kwargs)
    t.fit(module, ckpt_path=ckpt_path)
    assert strategy.algorithm is not None
    return {
        "local": recorder.local,
        "all_reduces": recorder.all_reduces,
        "final": full_state(module),
        "hook_calls": strategy.ddp_hook.calls,
        "forward_sync_buffers": strategy._ddp_kwargs.get("forward_sync_buffers"),
        "val_params": module.val_params,
        "steps": strategy.algorithm.step,
    }


def exactness(cases: list[dict[str, Any]]) -> list[dict[str, Any]]:
    results = []
    for case in cases:
        accumulate = case.get("accumulate", 1)
        ours = fit(case, accumulate_grad_batches=accumulate)
        reference = reference_averaging(
            case["kind"],
            case["opt"],
            case["epochs"],
            case.get("args", {}),
            accumulate=accumulate,
            n_batches=case.get("n_batches", 4),
            batchnorm=case.get("batchnorm", False),
            batch_sizes=case.get("batch_sizes"),
        )
        results.append({"ours": ours, "reference": reference})
    return results


def resume(cases: list[dict[str, Any]], tmp: str, save_step: int) -> list[dict[str, Any]]:
    """Per case: uninterrupted run vs. (run to the checkpoint at ``save_step``, then resume to the end)."""
    out = []
    for i, case in enumerate(cases):
        path = str(Path(tmp) / f"averaging{i}.ckpt")
        straight = fit(case)
        fit(case, callbacks=[SaveAt(save_step, path)])
        resumed = fit(case, ckpt_path=path)
        saved = torch.load(path, weights_only=False)
        out.append({"straight": straight["final"], "resumed": resumed["final"], "checkpoint": saved})
    return out


def validation(cases: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per case: the same run with and without validation every 2 steps."""
    out = []
    for case in cases:
        plain = fit(case)
        validated = fit(case, limit_val_batches=2, val_check_interval=2, num_sanity_val_steps=1)
        out.append({"plain": plain, "validated": validated})
    return out
