"""Rank-side code of the strategy-tier tests."""

from __future__ import annotations

import os
from typing import Any

import lightning as L
import torch

from lightning_delayed import SSGDStrategy
from tests.helpers.models import Recorder, RegressionModule, params_of, trainer
from tests.helpers.reference import backward, batches, mean


def ssgd_exactness(opt: dict[str, Any], epochs: int) -> dict[str, Any]:
    module = RegressionModule(opt=opt)
    recorder = Recorder()
    trainer(SSGDStrategy(), max_epochs=epochs, callbacks=[recorder]).fit(module)
    ref = RegressionModule(opt=opt)
    optimizer = ref.configure_optimizers()
    history = []
    for micro in batches(ref, epochs, 1):
        for p, g in zip(ref.parameters(), mean(backward(ref, micro)), strict=True):
            p.grad = g
        optimizer.step()
        history.append(params_of(ref))
    return {"ours": recorder.local, "reference": history}


class _DieAt(L.Callback):
    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer: L.Trainer, *args: Any) -> None:
        if trainer.global_rank == 1 and trainer.global_step == self.step:
            os._exit(3)  # a rank that dies without a word, like a killed process


def rank_dies(strategy: str) -> None:
    module = RegressionModule(n_batches=50, opt={"kind": "sgd", "lr": 0.01, "momentum": 0.0})
    trainer(strategy, max_epochs=1, callbacks=[_DieAt(3)]).fit(module)
    torch.save("finished", os.path.join(os.environ["LD_TEST_TMP"], f"finished{os.environ['RANK']}"))
