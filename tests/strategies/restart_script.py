"""One rank of a torchrun job that may be restarted (tests/strategies/test_restart.py).

Usage: ``torchrun --standalone --nproc_per_node=2 --max-restarts=1 restart_script.py STRATEGY OUT KILL_AT``.
Trains with ``ModelCheckpoint(save_last=True)`` at every epoch end and ``ckpt_path="last"``. In the
first attempt (``TORCHELASTIC_RESTART_COUNT=0``) rank 1 dies without a word before optimizer step
``KILL_AT`` (``-1``: never); the restarted attempt resumes from ``last.ckpt``. Each rank saves its
final weights to ``OUT/final<rank>.pt``, and each attempt's restart count and first step to
``OUT/attempts<rank>.txt`` (``<count>:<step>`` lines).
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

import lightning_delayed
from tests.helpers.models import RegressionModule, params_of, trainer

STRATEGIES = {
    "odsgd": lambda: lightning_delayed.ODSGDStrategy(),
    "ssgd": lambda: lightning_delayed.SSGDStrategy(),
    "dasgd": lambda: lightning_delayed.DaSGDStrategy(sync_every=3, delay=1),
    "cocodsgd": lambda: lightning_delayed.CoCoDSGDStrategy(sync_every=3),
    "local_sgd": lambda: lightning_delayed.LocalSGDStrategy(sync_every=3),
}


class _DieAt(L.Callback):
    """Kills rank 1 before step ``step`` in the first attempt; records the step each attempt starts at."""

    def __init__(self, step: int, record: Path) -> None:
        self.step, self.record = step, record

    def on_train_start(self, trainer: L.Trainer, *args: Any) -> None:
        with open(self.record, "a") as f:
            f.write(f"{os.environ.get('TORCHELASTIC_RESTART_COUNT', 'none')}:{trainer.global_step}\n")

    def on_train_batch_start(self, trainer: L.Trainer, *args: Any) -> None:
        first_attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") == "0"
        if first_attempt and trainer.global_rank == 1 and trainer.global_step == self.step:
            os._exit(3)  # a killed rank: no exception, no clean-up


def main() -> None:
    strategy, out, kill_at = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3])
    torch.set_num_threads(1)
    rank = os.environ["RANK"]
    if os.environ.get("TORCHELASTIC_RESTART_COUNT") == "1" and rank == "0":
        # Rank 1 of the new attempt reaches the rendezvous first, so it always finds whatever the
        # store holds for rank 0 before rank 0 writes: the dead attempt's address, unless the keys
        # are per attempt. This makes the fault certain instead of a race (it hit 2 runs in 3).
        time.sleep(3)
    module = RegressionModule(n_batches=4, opt={"kind": "sgd", "lr": 0.05, "momentum": 0.9})
    checkpoints = ModelCheckpoint(dirpath=out / "ckpt", save_last=True, every_n_epochs=1, save_on_train_epoch_end=True)
    fit = trainer(
        STRATEGIES[strategy](),
        max_epochs=3,
        enable_checkpointing=True,
        callbacks=[checkpoints, _DieAt(kill_at, out / f"attempts{rank}.txt")],
    )
    fit.fit(module, ckpt_path="last")
    torch.save(params_of(module), out / f"final{rank}.pt")


if __name__ == "__main__":
    main()
