"""Rank-side code of the hardening tests: gradient clipping, non-finite values, checkpoints."""

from __future__ import annotations

import os
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import lightning_delayed
from tests.helpers.models import RegressionModule, params_of, rank, trainer

CLASSES = {cls.strategy_name: cls for cls in lightning_delayed.STRATEGIES}


class BigLoss(L.LightningModule):
    """Lightning's BoringModel with the loss scaled by 1e4: every gradient is far above the clip value."""

    def __init__(self, lr: float) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.layer = nn.Linear(8, 2).double()
        self.lr = lr

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        return self.layer(batch[0]).sum() * 1e4

    def configure_optimizers(self) -> Any:
        return torch.optim.SGD(self.parameters(), lr=self.lr)

    def train_dataloader(self) -> DataLoader:
        gen = torch.Generator().manual_seed(100 + rank())  # every rank its own data
        return DataLoader(TensorDataset(torch.randn(16, 8, generator=gen, dtype=torch.float64)), batch_size=2)


class Moves(L.Callback):
    """The largest change of any weight since the start, after every optimizer step and after ``fit``."""

    def __init__(self) -> None:
        self.start: list[torch.Tensor] = []
        self.moves: list[float] = []

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.start = params_of(pl_module)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        self.moves.append(self.move(pl_module))

    def move(self, pl_module: L.LightningModule) -> float:
        return max((p.detach() - s).abs().max().item() for p, s in zip(pl_module.parameters(), self.start, strict=True))


def clipped_moves(runs: list[list[Any]], steps: int, lr: float, clip: float) -> dict[str, list[float]]:
    """Per ``[label, strategy name, strategy kwargs, clip algorithm]``: the moves after each step and after fit."""
    out = {}
    for label, name, kwargs, algorithm in runs:
        module, moves = BigLoss(lr), Moves()
        t = trainer(
            CLASSES[name](**kwargs),
            max_steps=steps,
            callbacks=[moves],
            gradient_clip_val=clip,
            gradient_clip_algorithm=algorithm,
        )
        t.fit(module)
        out[label] = [*moves.moves, moves.move(module)]
    return out


class NaNOnRank(RegressionModule):
    """Regression whose loss turns NaN on one rank at one optimizer step."""

    def __init__(self, nan_rank: int, nan_step: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.nan_rank, self.nan_step = nan_rank, nan_step

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        loss = super().training_step(batch, batch_idx)
        if rank() == self.nan_rank and self.trainer.global_step == self.nan_step:
            loss = loss * float("nan")
        return loss


def nan_loss(strategy: str, kwargs: dict[str, Any], nan_step: int, ckpt_dir: str | None = None) -> None:
    """Fit until rank 1's loss turns NaN at ``nan_step``; the error ends the run (the test reads the logs).

    With ``ckpt_dir``, ``last.ckpt`` is saved there after every step.
    """
    module = NaNOnRank(1, nan_step, n_batches=20, opt={"kind": "sgd", "lr": 0.01, "momentum": 0.9})
    callbacks: list[L.Callback] = []
    if ckpt_dir is not None:
        callbacks.append(ModelCheckpoint(dirpath=ckpt_dir, save_last=True, every_n_train_steps=1, save_top_k=0))
    strategy_object = CLASSES[strategy](**kwargs)
    trainer(strategy_object, max_epochs=1, callbacks=callbacks, enable_checkpointing=ckpt_dir is not None).fit(module)
    torch.save("finished", os.path.join(os.environ["LD_TEST_TMP"], f"finished{rank()}"))
