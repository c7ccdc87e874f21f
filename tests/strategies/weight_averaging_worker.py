"""Rank-side code of the weight-averaging callback tests (SWA and EMA on 2 ranks)."""

from __future__ import annotations

from typing import Any

import lightning as L
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


class _OwnWeightsAt(L.Callback):
    """The module's own state on this rank after optimizer step ``step``."""

    def __init__(self, step: int) -> None:
        self.step = step
        self.state: dict[str, torch.Tensor] = {}

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        if trainer.global_step == self.step:
            self.state = {k: v.detach().clone() for k, v in pl_module.state_dict().items()}


def weights_only_checkpoints(tmp: str) -> dict[str, Any]:
    """For every strategy: the state_dict of ModelCheckpoint(save_weights_only=True) and of a full save, step 3."""
    from pathlib import Path

    from lightning.pytorch.callbacks import ModelCheckpoint

    from tests.helpers.models import SaveAt

    out = {}
    for cls in lightning_delayed.STRATEGIES:
        name = cls.strategy_name
        weights_dir, full = Path(tmp) / name / "weights", Path(tmp) / name / "full.ckpt"
        saver = ModelCheckpoint(dirpath=weights_dir, save_weights_only=True, every_n_train_steps=3, save_top_k=-1)
        module = RegressionModule(n_batches=4, opt=OPT)
        strategy = cls(sync_every=4) if "sync_every" in cls.__init__.__code__.co_varnames else cls()
        own = _OwnWeightsAt(3)
        callbacks = [own, SaveAt(3, str(full)), saver]
        trainer(strategy, max_steps=3, callbacks=callbacks, enable_checkpointing=True).fit(module)
        (weights,) = sorted(weights_dir.glob("*.ckpt"))
        saved = torch.load(weights, weights_only=True)
        out[name] = {
            "weights_only": saved["state_dict"],
            "has_optimizer_states": "optimizer_states" in saved,
            "full": torch.load(full, weights_only=True)["state_dict"],
            "local": own.state,
        }
    return out
