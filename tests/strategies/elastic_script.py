"""One node of an elastic torchrun job (tests/strategies/test_elastic.py).

Usage: ``torchrun --nnodes=1:2 --nproc-per-node=1 --rdzv-backend=c10d ... elastic_script.py OUT NODE
KILL_AT [WAIT_AT]`` (one agent per emulated node). Trains ``diloco`` (H = 4) for 12 steps with
``ElasticSnapshots(every_n_steps=3)`` in ``OUT/node<NODE>`` (this node's "local disk", every
snapshot kept for the test to read). In the first attempt, node ``B`` kills its own elastic agent
and then itself before optimizer step ``KILL_AT``: the node is gone for good. Each attempt appends
``<restart count>:<world size>:<first step>`` to ``OUT/attempts<NODE>.txt`` and saves what it starts
from (x, theta, the inner optimizer state) to ``OUT/start<NODE>_<restart>_<world>_<step>.pt``; the survivor
saves its final weights to ``OUT/final<NODE>.pt``. With ``WAIT_AT`` (the grow-back test), a node
running alone stops before optimizer step ``WAIT_AT`` until its agent restarts it for the node that
joins (bounded: it fails after ``JOIN_BOUND_S``). ``LD_ELASTIC_STRATEGY=streaming_diloco`` trains
Streaming DiLoCo (H = 4, 2 fragments, delay 1) instead, and ``LD_ELASTIC_KILL_IN_STEP=1`` makes node
B die inside optimizer step ``KILL_AT + 1``, after its forward and backward, so that the others'
fragment launched in that step fails in flight (a kill during a sync).
"""

from __future__ import annotations

import copy
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch

import lightning_delayed
from tests.helpers.models import RegressionModule, params_of, trainer

SYNC_EVERY, SNAPSHOT_EVERY, MAX_STEPS = 4, 3, 12
JOIN_BOUND_S = 180.0


KILL_IN_STEP = os.environ.get("LD_ELASTIC_KILL_IN_STEP") == "1"


def _die() -> None:
    os.kill(os.getppid(), signal.SIGKILL)  # the elastic agent: this node does not come back
    os._exit(3)


def _strategy() -> Any:
    if os.environ.get("LD_ELASTIC_STRATEGY") == "streaming_diloco":
        return lightning_delayed.StreamingDiLoCoStrategy(sync_every=SYNC_EVERY, num_fragments=2, delay=1)
    return lightning_delayed.DiLoCoStrategy(sync_every=SYNC_EVERY)


class _Record(L.Callback):
    def __init__(self, out: Path, node: str, kill_at: int, wait_at: int | None) -> None:
        self.out, self.node, self.kill_at, self.wait_at = out, node, kill_at, wait_at
        self.restart = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
        self.started = False

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        if not self.started:
            self.started = True
            algorithm = trainer.strategy.algorithm  # type: ignore[attr-defined]
            with open(self.out / f"attempts{self.node}.txt", "a") as f:
                f.write(f"{self.restart}:{trainer.world_size}:{trainer.global_step}\n")
            start = {
                "pending": len(getattr(algorithm, "pending", [])),
                "x": params_of(pl_module),
                "theta": [t.clone() for t in algorithm.global_params],
                "optimizer": copy.deepcopy(trainer.optimizers[0].state_dict()),
                "rank": trainer.global_rank,
            }
            # One file per attempt line: a restart for a joining node keeps the restart count.
            torch.save(
                start, self.out / f"start{self.node}_{self.restart}_{trainer.world_size}_{trainer.global_step}.pt"
            )
        if self.restart == "0" and self.node == "B" and trainer.global_step == self.kill_at and not KILL_IN_STEP:
            _die()
        if self.wait_at is not None and trainer.world_size == 1 and trainer.global_step == self.wait_at:
            (self.out / f"alone{self.node}").write_text(str(trainer.global_step))  # the test starts node C now
            # Waits for an event outside this process: the agent kills this worker to re-rendezvous with
            # the node that joins. Bounded, so a node that never joins fails the run instead of hanging.
            deadline = time.monotonic() + JOIN_BOUND_S
            while time.monotonic() < deadline:
                time.sleep(0.2)  # bounded by JOIN_BOUND_S: waiting for the agent's restart, not a race
            raise RuntimeError(f"no node joined within {JOIN_BOUND_S} s")

    def on_before_optimizer_step(self, trainer: L.Trainer, *args: Any) -> None:
        if self.restart == "0" and self.node == "B" and trainer.global_step == self.kill_at and KILL_IN_STEP:
            _die()


def main() -> None:
    out, node, kill_at = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
    wait_at = int(sys.argv[4]) if len(sys.argv) > 4 else None
    torch.set_num_threads(1)
    world = int(os.environ["WORLD_SIZE"])
    module = RegressionModule(n_batches=MAX_STEPS, opt={"kind": "sgd", "lr": 0.05, "momentum": 0.9})
    fit = trainer(
        _strategy(),
        devices=1,
        num_nodes=world,
        max_steps=MAX_STEPS,
        callbacks=[
            lightning_delayed.ElasticSnapshots(SNAPSHOT_EVERY, out / f"node{node}", keep=5),
            _Record(out, node, kill_at, wait_at),
        ],
    )
    fit.fit(module)
    torch.save(params_of(module), out / f"final{node}.pt")


if __name__ == "__main__":
    main()
