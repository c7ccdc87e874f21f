"""Rank-side code of the one-rank refusal tests: a setting that differs on rank 1 only."""

from __future__ import annotations

import time
from typing import Any

import torch

import lightning_delayed  # noqa: F401  (registers the strategy names)
from tests.helpers.models import RegressionModule, rank, trainer


class ManualOnRank1(RegressionModule):
    """Manual optimization on rank 1 only: refused in the strategy's checks before DDP wraps the module."""

    def __init__(self) -> None:
        super().__init__()
        if rank() == 1:
            self.automatic_optimization = False


class PlateauOnRank1(RegressionModule):
    """ReduceLROnPlateau on rank 1 only: refused by sasgd after Lightning set up the optimizers."""

    def configure_optimizers(self) -> Any:
        optimizer = torch.optim.SGD(self.parameters(), lr=0.01)
        if rank() != 1:
            return optimizer
        plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": plateau, "monitor": "train_loss"}}


MODULES = {"manual_on_rank1": ManualOnRank1, "plateau_on_rank1": PlateauOnRank1}


def one_rank_refuses(strategy: str, module: str) -> None:
    try:
        trainer(strategy, max_steps=2).fit(MODULES[module]())
    except Exception:
        # When this rank stopped (wall clock: the ranks are processes on one machine).
        print(f"LD_STOPPED_AT {time.time():.3f}", flush=True)
        raise
