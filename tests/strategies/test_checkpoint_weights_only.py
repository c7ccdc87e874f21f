"""Every strategy's checkpoint holds only tensors and plain containers: ``torch.load(weights_only=True)``
reads it (docs/security.md), so loading a checkpoint never needs to unpickle arbitrary objects."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import lightning_delayed
from lightning_delayed.strategies.base import DelayedStrategy
from tests.helpers.models import RegressionModule, SaveAt, trainer

CASES = [(cls, compression) for cls in lightning_delayed.STRATEGIES for compression in ("none", "fp16")]


@pytest.mark.parametrize(
    ("cls", "compression"), CASES, ids=[f"{cls.strategy_name}-{compression}" for cls, compression in CASES]
)
def test_checkpoint_loads_with_weights_only(cls: type[DelayedStrategy], compression: str, tmp_path: Path) -> None:
    path = tmp_path / "mid.ckpt"
    module = RegressionModule(n_batches=4, opt={"kind": "sgd", "lr": 0.05, "momentum": 0.9, "step_lr": 2})
    trainer(cls(compression=compression), devices=1, max_steps=4, callbacks=[SaveAt(3, str(path))]).fit(module)
    checkpoint = torch.load(path, weights_only=True)
    algorithm = checkpoint["lightning_delayed"]
    assert algorithm["strategy"] == cls.strategy_name
    assert algorithm["state"] is not None and algorithm["local_states"] is not None
    if compression != "none" and cls.strategy_name in ("sasgd", "asgd"):
        assert algorithm["local_states"][0]["compressor"]["residuals"], "error-feedback residuals are saved"
