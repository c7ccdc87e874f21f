"""Small deterministic models and data shared by the distributed and strategy tests."""

from __future__ import annotations

import os
from typing import Any

import lightning as L
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def make_data(rank: int, n_batches: int, batch_size: int, in_dim: int = 6, out_dim: int = 3) -> TensorDataset:
    """A fixed regression set per rank: ranks see different data, every epoch the same order."""
    gen = torch.Generator().manual_seed(1000 + rank)
    x = torch.randn(n_batches * batch_size, in_dim, generator=gen, dtype=torch.float64)
    y = torch.randn(n_batches * batch_size, out_dim, generator=gen, dtype=torch.float64)
    return TensorDataset(x, y)


def build_net(in_dim: int = 6, hidden: int = 5, out_dim: int = 3, batchnorm: bool = False) -> nn.Module:
    torch.manual_seed(0)
    layers: list[nn.Module] = [nn.Linear(in_dim, hidden)]
    if batchnorm:
        layers.append(nn.BatchNorm1d(hidden))
    layers += [nn.Tanh(), nn.Linear(hidden, out_dim)]
    return nn.Sequential(*layers).double()


def build_optimizer(params: Any, opt: dict[str, Any]) -> torch.optim.Optimizer:
    kind = opt.get("kind", "sgd")
    if kind == "sgd":
        return torch.optim.SGD(
            params, lr=opt.get("lr", 0.05), momentum=opt.get("momentum", 0.9), weight_decay=opt.get("wd", 0.0)
        )
    if kind == "adam":
        return torch.optim.Adam(params, lr=opt.get("lr", 0.01))
    if kind == "adamw":
        return torch.optim.AdamW(params, lr=opt.get("lr", 0.01), weight_decay=opt.get("wd", 0.01))
    raise ValueError(kind)


def build_scheduler(optimizer: torch.optim.Optimizer, opt: dict[str, Any]) -> Any:
    if opt.get("step_lr"):
        return torch.optim.lr_scheduler.StepLR(optimizer, step_size=opt["step_lr"], gamma=0.5)
    return None


class RegressionModule(L.LightningModule):
    """MSE regression on :func:`make_data`; records what validation saw."""

    def __init__(
        self,
        n_batches: int = 4,
        batch_size: int = 8,
        opt: dict[str, Any] | None = None,
        batchnorm: bool = False,
        batch_sizes: list[int] | None = None,
    ) -> None:
        super().__init__()
        self.net = build_net(batchnorm=batchnorm)
        self.n_batches = n_batches
        self.batch_size = batch_sizes[rank()] if batch_sizes else batch_size
        self.opt = opt or {}
        self.val_params: list[list[torch.Tensor]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        return nn.functional.mse_loss(self(x), y)

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        if batch_idx == 0:
            self.val_params.append([p.detach().clone() for p in self.parameters()])
        x, y = batch
        self.log("val_loss", nn.functional.mse_loss(self(x), y), sync_dist=True)

    def configure_optimizers(self) -> Any:
        optimizer = build_optimizer(self.parameters(), self.opt)
        scheduler = build_scheduler(optimizer, self.opt)
        if scheduler is None:
            return optimizer
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def train_dataloader(self) -> DataLoader:
        return DataLoader(make_data(rank(), self.n_batches, self.batch_size), batch_size=self.batch_size)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(make_data(50 + rank(), 2, self.batch_size), batch_size=self.batch_size)


class Recorder(L.Callback):
    """Records the module's weights (and the consensus, when the algorithm has one) after every step."""

    def __init__(self) -> None:
        self.local: list[list[torch.Tensor]] = []
        self.consensus: list[list[torch.Tensor] | None] = []

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        if trainer.fit_loop._should_accumulate():
            return
        self.local.append([p.detach().clone() for p in pl_module.parameters()])
        algorithm = getattr(trainer.strategy, "algorithm", None)
        global_params = getattr(algorithm, "global_params", None)
        self.consensus.append(None if global_params is None else [t.clone() for t in global_params])


class SaveAt(L.Callback):
    """Saves a checkpoint on every rank (a matched collective) after optimizer step ``step``."""

    def __init__(self, step: int, path: str) -> None:
        self.step, self.path = step, path

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        if trainer.global_step == self.step:
            trainer.save_checkpoint(self.path)


def trainer(strategy: Any, **kwargs: Any) -> L.Trainer:
    defaults: dict[str, Any] = dict(
        accelerator="cpu",
        devices=world_size(),
        precision="64-true",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        use_distributed_sampler=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
    )
    defaults.update(kwargs)
    return L.Trainer(strategy=strategy, **defaults)


def params_of(module: torch.nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in module.parameters()]


def world_size() -> int:
    # Lightning's environment deletes WORLD_SIZE at teardown, so the launcher sets a copy.
    return int(os.environ.get("LD_WORLD_SIZE", "1"))
