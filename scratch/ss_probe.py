from __future__ import annotations
import subprocess, os
from typing import Any
import lightning as L
from lightning_delayed.registry import *  # noqa
import lightning_delayed  # noqa
from tests.helpers.models import RegressionModule, trainer

class SS(L.Callback):
    def __init__(self): self.out = ""
    def on_train_batch_end(self, trainer, *a):
        if trainer.global_step == 2:
            if trainer.global_rank == 0:
                self.out = subprocess.run(["ss", "-ltnp"], capture_output=True, text=True).stdout
            trainer.strategy.barrier() if trainer.strategy.strategy_name != "sasgd" else None

def probe(strategy: str) -> Any:
    cb = SS()
    trainer(strategy, max_steps=4, callbacks=[cb]).fit(RegressionModule(n_batches=4))
    return {"ss": cb.out, "pid": os.getpid(), "mp": os.environ["MASTER_PORT"]}
