"""Rank-side code of the DiLoCo resize tests: what the resumed run starts from, and its first step."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import lightning as L

from tests.distributed.resume_worker import _fit


class ResizeRecord(L.Callback):
    """At the first batch of the fit: theta, the fragments in flight, the outer states; the first gradient."""

    def __init__(self) -> None:
        self.start: dict[str, Any] | None = None
        self.grads: list[Any] | None = None

    def on_train_batch_start(self, trainer: L.Trainer, *args: Any) -> None:
        if self.start is None:
            algorithm = trainer.strategy.algorithm  # type: ignore[attr-defined]
            self.start = {
                "theta": [t.clone() for t in algorithm.global_params],
                "pending": len(getattr(algorithm, "pending", [])),
                "outer": [copy.deepcopy(o.state_dict()) for o in algorithm.outer_optimizers],
            }

    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        if self.grads is None:
            self.grads = [p.grad.detach().clone() for p in pl_module.parameters()]


def resume(cases: list[dict[str, Any]], tmp: str, more_steps: int) -> list[dict[str, Any]]:
    """Per case: resume ``<tmp>/<name>.ckpt`` on this number of ranks for ``more_steps`` steps."""
    out = []
    for case in cases:
        record = ResizeRecord()
        path = str(Path(tmp) / f"{case['name']}.ckpt")
        result = _fit(case, ckpt_path=path, max_steps=case["save_step"] + more_steps, callbacks=[record])
        out.append({**result, "record": record.start, "grads": record.grads})
    return out
