"""Rank-side code of the DiLoCo / Streaming DiLoCo distributed tests (run by tests.helpers.launch.run_ranks)."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader

from lightning_delayed import CommMonitor, DiLoCoStrategy, LocalSGDStrategy, StreamingDiLoCoStrategy
from lightning_delayed.core.diloco import DiLoCoBase
from lightning_delayed.strategies.base import DelayedStrategy
from tests.distributed.averaging_worker import StateRecorder, _install_all_reduce_counter
from tests.helpers.models import RegressionModule, SaveAt, trainer
from tests.helpers.reference import full_state, reference_averaging
from tests.helpers.reference_diloco import reference_diloco

CLASSES: dict[str, type[DelayedStrategy]] = {
    "diloco": DiLoCoStrategy,
    "streaming_diloco": StreamingDiLoCoStrategy,
    "local_sgd": LocalSGDStrategy,
}


class ResumableLoader:
    """A loader Lightning can resume mid-epoch: its state is the number of batches training consumed.

    (Lightning prefetches a batch, so counting what the iterator yielded would skip one on resume.)
    """

    def __init__(self, loader: DataLoader, consumed: list[int]) -> None:
        self.loader, self.consumed, self.skip = loader, consumed, 0

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[Any]:
        skip, self.skip = self.skip, 0
        self.consumed[0] = skip
        return itertools.islice(iter(self.loader), skip, None)

    def state_dict(self) -> dict[str, Any]:
        return {"consumed": self.consumed[0]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.skip = int(state["consumed"])


class ResumableModule(RegressionModule):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.consumed = [0]

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        self.consumed[0] += 1
        return super().training_step(batch, batch_idx)

    def train_dataloader(self) -> Any:
        return ResumableLoader(super().train_dataloader(), self.consumed)


class ThetaRecorder(L.Callback):
    """``theta`` after every optimizer step (the algorithm's global copy)."""

    def __init__(self) -> None:
        self.theta: list[list[torch.Tensor]] = []

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        if trainer.fit_loop._should_accumulate():
            return
        algorithm = trainer.strategy.algorithm  # type: ignore[attr-defined]
        assert isinstance(algorithm, DiLoCoBase)
        self.theta.append([t.clone() for t in algorithm.global_params])


def fit(case: dict[str, Any], **trainer_kwargs: Any) -> dict[str, Any]:
    _install_all_reduce_counter()
    module = (ResumableModule if case.get("resumable") else RegressionModule)(
        n_batches=case.get("n_batches", 4), opt=case["opt"], batchnorm=case.get("batchnorm", False)
    )
    recorder, monitor = StateRecorder(), CommMonitor(log=False, keep_history=True)
    callbacks: list[L.Callback] = [recorder, monitor]
    thetas = None
    if case["kind"] != "local_sgd":
        thetas = ThetaRecorder()
        callbacks.append(thetas)
    strategy = CLASSES[case["kind"]](
        **case.get("args", {}),
        compression=case.get("compression", "none"),
        block_size=case.get("block_size", 64),
        error_feedback=case.get("error_feedback", True),
    )
    ckpt_path = trainer_kwargs.pop("ckpt_path", None)
    callbacks += trainer_kwargs.pop("callbacks", [])
    t = trainer(strategy, max_epochs=case["epochs"], callbacks=callbacks, **trainer_kwargs)
    t.fit(module, ckpt_path=ckpt_path)
    assert strategy.algorithm is not None
    return {
        "local": recorder.local,
        "all_reduces": recorder.all_reduces,
        "bytes": [r.bytes for r in monitor.history],
        "theta": None if thetas is None else thetas.theta,
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
        ref_kind, ref_args = case.get("reference", (case["kind"], case.get("args", {})))
        reference_of = reference_averaging if ref_kind == "local_sgd" else reference_diloco
        extra = (
            {}
            if ref_kind == "local_sgd"
            else {
                "compression": case.get("compression", "none"),
                "block_size": case.get("block_size", 64),
                "error_feedback": case.get("error_feedback", True),
            }
        )
        reference = reference_of(
            ref_kind,
            case["opt"],
            case["epochs"],
            ref_args,
            accumulate=accumulate,
            n_batches=case.get("n_batches", 4),
            batchnorm=case.get("batchnorm", False),
            **extra,
        )
        results.append({"ours": ours, "reference": reference})
    return results


def same_as(cases: list[tuple[dict[str, Any], dict[str, Any]]]) -> list[dict[str, Any]]:
    """Per pair: two strategies that must give the same trajectory."""
    return [{"a": fit(a), "b": fit(b)} for a, b in cases]


def resume(cases: list[dict[str, Any]], tmp: str, save_step: int) -> list[dict[str, Any]]:
    """Per case: uninterrupted run vs. (run to the checkpoint at ``save_step``, then resume to the end)."""
    out = []
    for i, case in enumerate(cases):
        path = str(Path(tmp) / f"diloco{i}.ckpt")
        straight = fit(case)
        fit(case, callbacks=[SaveAt(save_step, path)])
        resumed = fit(case, ckpt_path=path)
        saved = torch.load(path, weights_only=False)
        out.append(
            {
                "straight": straight,
                "resumed": resumed,
                "checkpoint": {"lightning_delayed": saved["lightning_delayed"], "state_dict": saved["state_dict"]},
            }
        )
    return out


def validation(cases: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per case: the same run with and without validation every 2 steps."""
    out = []
    for case in cases:
        plain = fit(case)
        validated = fit(case, limit_val_batches=2, val_check_interval=2, num_sanity_val_steps=1)
        out.append({"plain": plain, "validated": validated})
    return out
