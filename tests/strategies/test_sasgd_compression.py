"""sasgd with compressed pushes: the server applies exactly the error-feedback rule of
docs/algorithms/sasgd.md (one worker, so the run is deterministic and comparable step by step)."""

from __future__ import annotations

import pytest
import torch

from lightning_delayed import SASGDStrategy
from tests.helpers.models import RegressionModule, params_of, trainer

WIRE = {"fp16": torch.float16, "bf16": torch.bfloat16}


def reference(compression: str, error_feedback: bool, epochs: int) -> list[torch.Tensor]:
    """Plain SGD on one process where every gradient goes through the wire dtype, with or without feedback."""
    ref = RegressionModule(n_batches=4)
    params = list(ref.parameters())
    optimizer = torch.optim.SGD(params, lr=0.05, momentum=0.9)
    residual = [torch.zeros_like(p) for p in params]
    for _ in range(epochs):
        for x, y in ref.train_dataloader():
            optimizer.zero_grad()
            torch.nn.functional.mse_loss(ref(x), y).backward()
            for k, p in enumerate(params):
                assert p.grad is not None
                corrected = p.grad + residual[k] if error_feedback else p.grad
                sent = corrected.to(WIRE[compression]).to(p.dtype)
                if error_feedback:
                    residual[k] = corrected - sent
                p.grad = sent
            optimizer.step()
    return params_of(ref)


@pytest.mark.parametrize("compression", ["bf16", "fp16"])
@pytest.mark.parametrize("error_feedback", [True, False])
def test_compressed_pushes_follow_the_rule(compression: str, error_feedback: bool) -> None:
    module = RegressionModule(n_batches=4, opt={"kind": "sgd", "lr": 0.05, "momentum": 0.9})
    strategy = SASGDStrategy(compression=compression, error_feedback=error_feedback)
    trainer(strategy, devices=1, max_epochs=3).fit(module)
    expected = reference(compression, error_feedback, epochs=3)
    other = reference(compression, not error_feedback, epochs=3)
    assert any((a - b).abs().max().item() > 1e-9 for a, b in zip(expected, other, strict=True)), "feedback matters"
    for got, want in zip(params_of(module), expected, strict=True):
        assert (got - want).abs().max().item() <= 1e-12
    worker = strategy.worker
    assert worker is not None and worker.compressor is not None
    assert bool(worker.compressor.residuals) is error_feedback
