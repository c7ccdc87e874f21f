"""Rank-side code of the OD-SGD distributed tests (run by tests.helpers.launch.run_ranks)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from lightning_delayed import ODSGDStrategy
from tests.helpers.models import Recorder, RegressionModule, SaveAt, params_of, trainer
from tests.helpers.reference import reference_odsgd


def fit_odsgd(case: dict[str, Any], **trainer_kwargs: Any) -> dict[str, Any]:
    module = RegressionModule(n_batches=case.get("n_batches", 4), opt=case["opt"])
    recorder = Recorder()
    strategy = ODSGDStrategy(**case.get("args", {}))
    callbacks = [recorder, *trainer_kwargs.pop("callbacks", [])]
    ckpt_path = trainer_kwargs.pop("ckpt_path", None)
    t = trainer(strategy, max_epochs=case["epochs"], callbacks=callbacks, **trainer_kwargs)
    t.fit(module, ckpt_path=ckpt_path)
    return {
        "local": recorder.local,
        "global": recorder.consensus,
        "final": params_of(module),
        "hook_calls": strategy.ddp_hook.calls,
        "val_params": module.val_params,
        "steps": strategy.algorithm.step,
    }


def exactness(cases: list[dict[str, Any]]) -> list[dict[str, Any]]:
    results = []
    for case in cases:
        accumulate = case.get("accumulate", 1)
        ours = fit_odsgd(case, accumulate_grad_batches=accumulate)
        reference = reference_odsgd(
            case["opt"],
            case["epochs"],
            accumulate=accumulate,
            n_batches=case.get("n_batches", 4),
            **case.get("args", {}),
        )
        results.append({"ours": ours, "reference": reference})
    return results


def resume(case: dict[str, Any], tmp: str, save_step: int) -> dict[str, Any]:
    """Uninterrupted run vs. (run to the checkpoint at ``save_step``, then resume to the end)."""
    path = str(Path(tmp) / "odsgd.ckpt")
    straight = fit_odsgd(case)
    fit_odsgd(case, callbacks=[SaveAt(save_step, path)])
    resumed = fit_odsgd(case, ckpt_path=path)
    saved = torch.load(path, weights_only=True)
    return {"straight": straight["final"], "resumed": resumed["final"], "checkpoint": saved}


def validation(case: dict[str, Any]) -> dict[str, Any]:
    """The same run with and without validation every 2 steps."""
    plain = fit_odsgd(case)
    validated = fit_odsgd(case, limit_val_batches=2, val_check_interval=2, num_sanity_val_steps=1)
    return {"plain": plain, "validated": validated}
