"""Rank-side code of the strategy-tier tests."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import lightning as L
import torch

from lightning_delayed import SSGDStrategy
from tests.helpers.models import Recorder, RegressionModule, params_of, trainer
from tests.helpers.reference import backward, batches, compressed_mean, mean
from tests.helpers.reference_lowbit import BITS, LowBitReference


def ssgd_exactness(opt: dict[str, Any], epochs: int, compression: str = "none") -> dict[str, Any]:
    module = RegressionModule(opt=opt)
    recorder = Recorder()
    strategy = SSGDStrategy(compression=compression)
    trainer(strategy, max_epochs=epochs, callbacks=[recorder]).fit(module)
    ref = RegressionModule(opt=opt)
    optimizer = ref.configure_optimizers()
    residuals = [torch.zeros_like(p) for p in ref.parameters()]
    lowbit = LowBitReference(BITS[compression], 64) if compression in BITS else None
    history = []
    for micro in batches(ref, epochs, 1):
        g = backward(ref, micro)
        if lowbit is not None:
            averaged = lowbit.mean(g, [f"grad/{i}" for i in range(len(g))])
        else:
            averaged = mean(g) if compression == "none" else compressed_mean(g, residuals, compression)
        for p, gb in zip(ref.parameters(), averaged, strict=True):
            p.grad = gb
        optimizer.step()
        history.append(params_of(ref))
    hook_calls = None if strategy.ddp_hook is None else strategy.ddp_hook.calls
    return {"ours": recorder.local, "reference": history, "hook_calls": hook_calls}


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


EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def cli_custom_hook(config: str, max_steps: int) -> dict[str, Any]:
    """LightningCLI on this rank from a YAML that gives the strategy a hook by class_path; fit a few steps."""
    sys.path.insert(0, str(EXAMPLES))  # as when running examples/cli.py: `custom_hook` and `digits` import
    from digits import DigitsCNN, DigitsDataModule
    from lightning.pytorch.cli import LightningCLI

    cli = LightningCLI(
        DigitsCNN,
        DigitsDataModule,
        run=False,
        save_config_callback=None,
        args=[
            "--config",
            config,
            f"--trainer.max_steps={max_steps}",
            "--trainer.limit_val_batches=0",
            "--trainer.enable_progress_bar=false",
            "--trainer.enable_model_summary=false",
        ],
    )
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    strategy = cli.trainer.strategy
    hook = strategy.comm_hook
    return {
        "strategy": type(strategy).__name__,
        "hook": f"{type(hook).__module__}.{type(hook).__qualname__}",
        "communicator": type(strategy.communicator).__name__,
        "inner_bucket_cap_mb": hook.inner.bucket_cap_mb,
        "launches": dict(hook.launches),
        "bytes_sent": dict(hook.bytes_sent),
        "ddp_hook_calls": strategy.ddp_hook.calls,
        "num_params": sum(p.numel() for p in cli.model.parameters()),
        "steps": cli.trainer.global_step,
    }


def digits_accuracy(runs: list[list[str]], epochs: int) -> dict[str, float]:
    """Test accuracy on the bundled digits after ``epochs`` epochs, per ``[strategy, compression]``."""
    sys.path.insert(0, str(EXAMPLES))
    from digits import DigitsCNN, DigitsDataModule

    import lightning_delayed

    classes = {cls.strategy_name: cls for cls in lightning_delayed.STRATEGIES}
    accuracy = {}
    for name, compression in runs:
        L.seed_everything(0, verbose=False)
        t = L.Trainer(
            accelerator="cpu",
            devices=2,
            strategy=classes[name](compression=compression),
            max_epochs=epochs,
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            limit_val_batches=0,
        )
        model, data = DigitsCNN(lr=0.05, momentum=0.9), DigitsDataModule(batch_size=32)
        t.fit(model, datamodule=data)
        accuracy[f"{name}-{compression}"] = float(t.test(model, datamodule=data, verbose=False)[0]["test_acc"])
    return accuracy
