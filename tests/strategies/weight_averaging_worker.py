"""Rank-side code of the weight-averaging callback tests (SWA and EMA on 2 ranks)."""

from __future__ import annotations

from typing import Any

import torch
from lightning.pytorch.callbacks import EMAWeightAveraging, StochasticWeightAveraging

import lightning_delayed
from tests.helpers.models import RegressionModule, params_of, trainer

OPT = {"kind": "sgd", "lr": 0.05, "momentum": 0.9}


def make_callback(kind: str) -> Any:
    if kind == "swa":
        return StochasticWeightAveraging(swa_lrs=1e-2, swa_epoch_start=1)
    return EMAWeightAveraging(decay=0.9)


def fit_with(strategy: Any, kind: str) -> list[torch.Tensor] | str:
    """The weights ``fit`` ends with (4 epochs of 4 steps), or the refusal's message."""
    torch.manual_seed(0)
    module = RegressionModule(n_batches=4, opt=OPT)
    try:
        trainer(strategy, max_epochs=4, callbacks=[make_callback(kind)]).fit(module)
    except ValueError as error:
        return str(error)
    return params_of(module)


def weight_averaging(kind: str) -> dict[str, Any]:
    """``ssgd``, Lightning's ``ddp`` and ``diloco`` (H = 4: the last step ends a round) with ``kind``."""
    return {
        "ssgd": fit_with("ssgd", kind),
        "ddp": fit_with("ddp", kind),
        "diloco": fit_with(lightning_delayed.DiLoCoStrategy(sync_every=4), kind),
    }
