"""sasgd / asgd glue in one process: arguments, refused settings, the step path, validation, the end."""

from __future__ import annotations

from typing import Any

import lightning as L
import pytest
import torch
from lightning.pytorch.plugins.precision import MixedPrecision

from lightning_delayed import AllReduceHook, ASGDStrategy, SASGDStrategy
from tests.helpers.models import RegressionModule, params_of, trainer


@pytest.mark.parametrize(
    ("make", "error", "match"),
    [
        (lambda: SASGDStrategy(softsync=0), ValueError, r"softsync must be an integer n with 1 <= n <= N"),
        (lambda: SASGDStrategy(staleness_aware="no"), TypeError, r"staleness_aware must be True or False"),
        (lambda: SASGDStrategy(worker_timeout=-1.0), ValueError, r"worker_timeout must be > 0"),
        (lambda: SASGDStrategy(bucket_cap_mb=4), ValueError, r"bucket_cap_mb=4 does not apply"),
        (lambda: SASGDStrategy(comm_hook=AllReduceHook()), ValueError, r"comm_hook does not apply"),
        (
            lambda: SASGDStrategy(find_unused_parameters=True),
            ValueError,
            r"does not wrap the model in DistributedDataParallel, so \['find_unused_parameters'\]",
        ),
        (lambda: ASGDStrategy(staleness_aware=True), ValueError, r"use strategy='sasgd'"),
        (lambda: SASGDStrategy(compression="fp8"), ValueError, r"compression must be one of"),
    ],
)
def test_bad_arguments_are_refused_at_construction(make: Any, error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        make()


def test_ddp_defaults_from_lightning_cli_are_accepted() -> None:
    s = SASGDStrategy(find_unused_parameters=False, static_graph=False, ddp_comm_hook=None, broadcast_buffers=None)
    assert s.config.staleness_aware is True
    assert ASGDStrategy(softsync=1).config.staleness_aware is False


class Plateau(RegressionModule):
    def configure_optimizers(self) -> Any:
        opt = torch.optim.SGD(self.parameters(), lr=0.1)
        sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "monitor": "train_loss"}}


class Batches(L.Callback):
    def __init__(self) -> None:
        self.count = 0

    def on_train_batch_start(self, *args: Any) -> None:
        self.count += 1


FP16_WITH_SCALER = MixedPrecision("16-mixed", "cpu", scaler=torch.amp.GradScaler("cpu"))


@pytest.mark.parametrize(
    ("strategy", "module", "kwargs", "match"),
    [
        (lambda: SASGDStrategy(softsync=2), RegressionModule, {}, r"softsync=2 exceeds the number of workers N=1"),
        (SASGDStrategy, Plateau, {}, r"ReduceLROnPlateau is not supported"),
        (SASGDStrategy, RegressionModule, {"precision": None, "plugins": [FP16_WITH_SCALER]}, r"16-mixed"),
    ],
    ids=["softsync>N", "plateau", "16-mixed"],
)
def test_unsupported_settings_fail_before_the_first_step(strategy: Any, module: type, kwargs: dict, match: str) -> None:
    batches = Batches()
    t = trainer(strategy(), devices=1, max_steps=2, callbacks=[batches], **kwargs)
    with pytest.raises(ValueError, match=match):
        t.fit(module())
    assert batches.count == 0


class ValidationSeesServer(L.Callback):
    """At every validation, the module must hold the server's theta of that moment."""

    def __init__(self) -> None:
        self.checked = 0

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        strategy = trainer.strategy
        assert isinstance(strategy, SASGDStrategy) and strategy.server is not None
        for p, t in zip(pl_module.parameters(), strategy.server.theta, strict=True):
            assert torch.equal(p, t)
        self.checked += 1


def test_one_worker_is_plain_sgd_validates_on_theta_and_ends_holding_it() -> None:
    """With N=1 the staleness is always 0, so sasgd is the user's optimizer, step for step."""
    opt = {"kind": "sgd", "lr": 0.05, "momentum": 0.9, "step_lr": 2}
    module = RegressionModule(n_batches=4, opt=opt)
    strategy = SASGDStrategy()
    seen = ValidationSeesServer()
    trainer(strategy, devices=1, max_epochs=2, callbacks=[seen], limit_val_batches=1, val_check_interval=2).fit(module)
    assert seen.checked == 4
    server = strategy.server
    assert server is not None and server.version == 8 and dict(server.staleness_counts) == {0: 8}
    for p, t in zip(module.parameters(), server.theta, strict=True):
        assert torch.equal(p, t)

    ref = RegressionModule(n_batches=4, opt=opt)
    optimizer, scheduler = torch.optim.SGD(ref.parameters(), lr=0.05, momentum=0.9), None
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=2, gamma=0.5)
    for _ in range(2):
        for x, y in ref.train_dataloader():
            optimizer.zero_grad()
            torch.nn.functional.mse_loss(ref(x), y).backward()
            optimizer.step()
            scheduler.step()
    for a, b in zip(params_of(module), params_of(ref), strict=True):
        assert (a - b).abs().max().item() <= 1e-12
    # The worker's optimizer shows the server's learning rate (what an LR monitor reads).
    assert strategy.optimizers[0].param_groups[0]["lr"] == server.lrs()[0] == 0.05 * 0.5**4
