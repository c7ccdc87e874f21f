r"""A new delayed algorithm on the public API: Pipe-SGD, one-step-delayed gradient averaging.

Li, Yu, Li, Avestimehr, Kim, Schwing. *Pipe-SGD: A Decentralized Pipelined SGD Framework for Distributed
Deep Net Training.* NeurIPS 2018, arXiv:1811.03619. The gradient all-reduce of step k runs during step k+1, and
the update applies it one step late, with no local compensation (OD-SGD's local step):

.. math::

    x_{k+1} = \mathrm{opt.step}(x_k, \mathrm{mean}(g_{k-1})) \qquad \text{(step 0: no update)}

At step 0 nothing has arrived, so the optimizer skips the step (``p.grad = None``). At the end
of training the last mean is applied. Every rank applies the same means to the same weights, so
the replicas stay identical and the module's weights are the consensus.

Run it (2 CPU processes on the scikit-learn digits)::

    OMP_NUM_THREADS=1 python examples/custom_algorithm.py --compression fp16

Tutorial: docs/extending.md. The whole algorithm is the two classes below.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import lightning.pytorch as pl
from torch import Tensor
from torch.optim import Optimizer

from lightning_delayed import (
    DDPGradientHook,
    DelayedAlgorithm,
    DelayedStrategy,
    GradientCommunicator,
    register_strategy,
)
from lightning_delayed.comm.buckets import Completed, Pending
from lightning_delayed.strategies.base import refuse_grad_scaler


class PipeSGD(DelayedAlgorithm):
    """The rule: step with the mean gradient launched one step earlier."""

    def __init__(self, params: Sequence[Tensor], optimizer: Optimizer, grad_comm: GradientCommunicator) -> None:
        super().__init__()
        self.params, self.optimizer, self.grad_comm = list(params), optimizer, grad_comm
        self.pending: Pending | None = None  # mean(g_{k-1}), in flight

    def before_optimizer_step(self) -> None:
        launched = self.grad_comm.take_launched()  # mean(g_k), launched bucket by bucket during backward
        if launched is None:
            raise RuntimeError("Pipe-SGD: no gradient average was launched; is the DDP hook attached?")
        previous, self.pending = self.pending, launched
        means = previous.wait() if previous is not None else [None] * len(self.params)
        for p, g in zip(self.params, means, strict=True):
            p.grad = g  # None at step 0: the optimizer skips the update

    def after_optimizer_step(self) -> None:
        self.step += 1

    def finish(self) -> None:
        if self.pending is not None:
            for p, g in zip(self.params, self.pending.wait(), strict=True):
                p.grad = g
            self.optimizer.step()
            self.pending = None

    def state_dict(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "pending": None if self.pending is None else [t.clone() for t in self.pending.wait()],
        }

    def load_state_dict(self, state: dict[str, Any], local_state: dict[str, Any]) -> None:
        super().load_state_dict(state, local_state)
        saved = state["pending"]
        self.pending = None if saved is None else Completed([t.to(p) for t, p in zip(saved, self.params, strict=True)])


@register_strategy
class PipeSGDStrategy(DelayedStrategy):
    """``Trainer(strategy="pipesgd")``: Pipe-SGD. Accepts every DelayedStrategy argument (``compression``...)."""

    strategy_name = "pipesgd"

    def validate_trainer(self, trainer: pl.Trainer) -> None:
        refuse_grad_scaler(self, trainer)  # a delayed gradient cannot be unscaled with today's loss scale

    def build_ddp_hook(self, params: Sequence[Tensor]) -> DDPGradientHook:
        return self.gradient_hook(params)  # launches mean(g) per bucket through self.communicator

    def build_algorithm(self, params: Sequence[Tensor], optimizer: Optimizer) -> DelayedAlgorithm:
        return PipeSGD(params, optimizer, self.ddp_hook)


def main() -> None:
    import argparse

    import torch
    from digits import DATA_DESCRIPTION, DigitsCNN, DigitsDataModule  # examples/ is on sys.path when run as a script

    parser = argparse.ArgumentParser(description="Train the digits CNN with Pipe-SGD on 2 CPU processes.")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--compression", choices=["none", "fp16", "bf16"], default="none")
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--momentum", type=float, default=0.9)
    args = parser.parse_args()
    torch.set_num_threads(1)
    pl.seed_everything(0, verbose=False)
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=2,
        strategy=PipeSGDStrategy(compression=args.compression),  # or strategy="pipesgd"
        max_epochs=args.epochs,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    model, data = DigitsCNN(lr=args.lr, momentum=args.momentum), DigitsDataModule(batch_size=32)
    trainer.fit(model, data)
    result = trainer.test(model, data, verbose=False)[0]
    if trainer.global_rank == 0:
        print(f"pipesgd (compression={args.compression}) on {DATA_DESCRIPTION}: test_acc={result['test_acc']:.4f}")
    if torch.distributed.is_initialized():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
