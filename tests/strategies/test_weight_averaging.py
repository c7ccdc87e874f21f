"""Callbacks that average or copy the module's weights, under every strategy (issue 23, item 1).

Lightning's ``StochasticWeightAveraging`` and ``WeightAveraging`` average the weights the module
holds on each rank. Only under ``ssgd`` are those the same on every rank after every step; under
``diloco`` (the reported case) the ranks ended ``fit`` with different weights, and under ``odsgd``
and ``sasgd``/``asgd`` the end of ``fit`` silently overwrote the average. So they work under
``ssgd`` (equal to Lightning's DDP) and are refused on every other strategy, naming the callback.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from lightning.pytorch.callbacks import (
    BatchSizeFinder,
    EMAWeightAveraging,
    LearningRateFinder,
    StochasticWeightAveraging,
)
from lightning.pytorch.utilities.exceptions import MisconfigurationException

import lightning_delayed
from lightning_delayed.strategies.base import DelayedStrategy
from tests.helpers.launch import run_ranks
from tests.helpers.models import RegressionModule, params_of, trainer


class WithLr(RegressionModule):
    """``self.lr``, the attribute ``LearningRateFinder`` tunes."""

    def __init__(self) -> None:
        super().__init__(n_batches=4)
        self.lr = 0.05

    def configure_optimizers(self) -> Any:
        return torch.optim.SGD(self.parameters(), lr=self.lr)


CALLBACKS = {
    "StochasticWeightAveraging": lambda: StochasticWeightAveraging(swa_lrs=1e-2, swa_epoch_start=1),
    "EMAWeightAveraging": lambda: EMAWeightAveraging(decay=0.9),
    "LearningRateFinder": lambda: LearningRateFinder(num_training_steps=8),
}
REFUSING = [cls for cls in lightning_delayed.STRATEGIES if cls is not lightning_delayed.SSGDStrategy]
CASES = [(cls, name) for cls in REFUSING for name in CALLBACKS]


@pytest.mark.parametrize(("cls", "callback"), CASES, ids=[f"{c.strategy_name}-{n}" for c, n in CASES])
def test_weight_copying_callbacks_are_refused_naming_the_callback(cls: type[DelayedStrategy], callback: str) -> None:
    module = WithLr()
    before = params_of(module)
    t = trainer(cls(), devices=1, max_epochs=2, callbacks=[CALLBACKS[callback]()])
    with pytest.raises(ValueError, match=f"{cls.__name__} does not support the {callback} callback") as error:
        t.fit(module)
    message = str(error.value)
    assert repr(cls.strategy_name) in message and "strategy='ssgd'" in message, message
    assert all(torch.equal(a, b) for a, b in zip(before, params_of(module), strict=True)), "refused before any step"


@pytest.mark.parametrize("callback", sorted(CALLBACKS))
def test_ssgd_runs_the_weight_copying_callbacks(callback: str) -> None:
    strategy = lightning_delayed.SSGDStrategy()
    trainer(strategy, devices=1, max_epochs=2, callbacks=[CALLBACKS[callback]()]).fit(WithLr())
    assert strategy.algorithm is not None and strategy.algorithm.step > 0


def test_batch_size_finder_is_refused_by_lightning_under_a_distributed_strategy() -> None:
    t = trainer(lightning_delayed.DiLoCoStrategy(), devices=1, max_epochs=1, callbacks=[BatchSizeFinder()])
    with pytest.raises(MisconfigurationException, match="not supported with distributed strategies"):
        t.fit(RegressionModule(n_batches=4))


def _equal(a: list[torch.Tensor], b: list[torch.Tensor]) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


@pytest.mark.parametrize("kind", ["swa", "ema"])
def test_weight_averaging_on_two_ranks_ssgd_equals_ddp_and_diloco_is_refused_on_every_rank(kind: str) -> None:
    runs: list[dict[str, Any]] = run_ranks("tests.strategies.weight_averaging_worker:weight_averaging", kind=kind)
    for r, run in enumerate(runs):
        assert isinstance(run["diloco"], str), f"rank {r}: diloco + {kind} was not refused"
        assert "DiLoCoStrategy does not support the" in run["diloco"], run["diloco"]
        assert "[set-up refused on rank 0, 1; every rank stops with this error]" in run["diloco"], run["diloco"]
    # ssgd: every rank ends fit with the same averaged weights, those of Lightning's DDP, bit for bit.
    assert _equal(runs[0]["ssgd"], runs[1]["ssgd"])
    for run in runs:
        assert _equal(run["ssgd"], run["ddp"])


def test_save_weights_only_saves_the_consensus_like_a_full_checkpoint(tmp_path: Any) -> None:
    """ModelCheckpoint(save_weights_only=True) mid-round holds what a full checkpoint holds: the consensus."""
    runs = run_ranks("tests.strategies.weight_averaging_worker:weights_only_checkpoints", tmp=str(tmp_path))
    run = runs[0]
    for name, saved in run.items():
        assert not saved["has_optimizer_states"], name
        assert saved["weights_only"].keys() == saved["full"].keys(), name
        for key, tensor in saved["weights_only"].items():
            assert torch.equal(tensor, saved["full"][key]), f"{name}: {key}"
    # Mid-round (step 3 of H = 4) the ranks' own weights differ, and the file holds neither rank's.
    for name in ("local_sgd", "diloco"):
        own = [r[name]["local"] for r in runs]
        key = next(iter(own[0]))
        assert not torch.equal(own[0][key], own[1][key]), name
        assert not torch.equal(run[name]["weights_only"][key], own[0][key]), name
