"""Rank-side code of the Pipe-SGD example's distributed tests (run by tests.helpers.launch.run_ranks)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from examples.custom_algorithm import PipeSGDStrategy  # the import registers "pipesgd"
from tests.helpers.models import Recorder, RegressionModule, SaveAt, params_of, trainer
from tests.helpers.reference import reference_pipesgd


def fit_pipesgd(case: dict[str, Any], **trainer_kwargs: Any) -> dict[str, Any]:
    module = RegressionModule(n_batches=case.get("n_batches", 4), opt=case["opt"])
    recorder = Recorder()
    args = case.get("args", {})
    # By registry name when there are no arguments: the example's registration must have worked.
    strategy: Any = PipeSGDStrategy(**args) if args else "pipesgd"
    callbacks = [recorder, *trainer_kwargs.pop("callbacks", [])]
    ckpt_path = trainer_kwargs.pop("ckpt_path", None)
    t = trainer(strategy, max_epochs=case["epochs"], callbacks=callbacks, **trainer_kwargs)
    t.fit(module, ckpt_path=ckpt_path)
    return {
        "local": recorder.local,
        "final": params_of(module),
        "hook_calls": t.strategy.ddp_hook.calls,
        "strategy": type(t.strategy).__name__,
        "steps": t.strategy.algorithm.step,
    }


def exactness(cases: list[dict[str, Any]]) -> list[dict[str, Any]]:
    results = []
    for case in cases:
        accumulate = case.get("accumulate", 1)
        ours = fit_pipesgd(case, accumulate_grad_batches=accumulate)
        reference = reference_pipesgd(
            case["opt"],
            case["epochs"],
            accumulate=accumulate,
            n_batches=case.get("n_batches", 4),
            compression=case.get("args", {}).get("compression", "none"),
        )
        results.append({"ours": ours, "reference": reference})
    return results


def resume(case: dict[str, Any], tmp: str, save_step: int) -> dict[str, Any]:
    """Uninterrupted run vs. (run to the checkpoint at ``save_step``, then resume to the end)."""
    path = str(Path(tmp) / "pipesgd.ckpt")
    straight = fit_pipesgd(case)
    fit_pipesgd(case, callbacks=[SaveAt(save_step, path)])
    resumed = fit_pipesgd(case, ckpt_path=path)
    saved = torch.load(path, weights_only=False)
    return {"straight": straight["final"], "resumed": resumed["final"], "checkpoint": saved}
