"""One node of an elastic torchrun job (tests/strategies/test_elastic.py).

Usage: ``torchrun --nnodes=1:2 --nproc-per-node=1 --rdzv-backend=c10d ... elastic_script.py OUT NODE
KILL_AT`` (one agent per emulated node). Trains ``diloco`` (H = 4) for 12 steps with
``ElasticSnapshots(every_n_steps=3)`` in ``OUT/node<NODE>`` (this node's "local disk", every
snapshot kept for the test to read). In the first attempt, node ``B`` kills its own elastic agent
and then itself before optimizer step ``KILL_AT``: the node is gone for good. Each attempt appends
``<restart count>:<world size>:<first step>`` to ``OUT/attempts<NODE>.txt`` and saves what it starts
from (x, theta, the inner optimizer state) to ``OUT/start<NODE>_<restart count>.pt``; the survivor
saves its final weights to ``OUT/final<NODE>.pt``.
"""

from __future__ import annotations

import copy
import os
import signal
import sys
from pathlib import Path
from typing import Any

import lightning as L
import torch

import lightning_delayed
from tests.helpers.models import RegressionModule, params_of, trainer

SYNC_EVERY, SNAPSHOT_EVERY, MAX_STEPS = 4, 3, 12


class _Record(L.Callback):
    def __init__(self, out: Path, node: str, kill_at: int) -> None:
        self.out, self.node, self.kill_at = out, node, kill_at
        self.restart = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
        self.started = False

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        if not self.started:
            self.started = True
            algorithm = trainer.strategy.algorithm  # type: ignore[attr-defined]
            with open(self.out / f"attempts{self.node}.txt", "a") as f:
                f.write(f"{self.restart}:{trainer.world_size}:{trainer.global_step}\n")
            start = {
                "x": params_of(pl_module),
                "theta": [t.clone() for t in algorithm.global_params],
                "optimizer": copy.deepcopy(trainer.optimizers[0].state_dict()),
                "rank": trainer.global_rank,
            }
            torch.save(start, self.out / f"start{self.node}_{self.restart}.pt")
        if self.restart == "0" and self.node == "B" and trainer.global_step == self.kill_at:
            os.kill(os.getppid(), signal.SIGKILL)  # the elastic agent: this node does not come back
            os._exit(3)


def main() -> None:
    out, node, kill_at = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
    torch.set_num_threads(1)
    world = int(os.environ["WORLD_SIZE"])
    module = RegressionModule(n_batches=MAX_STEPS, opt={"kind": "sgd", "lr": 0.05, "momentum": 0.9})
    fit = trainer(
        lightning_delayed.DiLoCoStrategy(sync_every=SYNC_EVERY),
        devices=1,
        num_nodes=world,
        max_steps=MAX_STEPS,
        callbacks=[
            lightning_delayed.ElasticSnapshots(SNAPSHOT_EVERY, out / f"node{node}", keep=5),
            _Record(out, node, kill_at),
        ],
    )
    fit.fit(module)
    torch.save(params_of(module), out / f"final{node}.pt")


if __name__ == "__main__":
    main()
