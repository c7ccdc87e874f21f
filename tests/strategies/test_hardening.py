"""Errors that must name their cause, on every rank (issue 10, items 5, 10, 17)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from lightning_delayed import CommunicationError, ODSGDStrategy
from lightning_delayed.comm.buckets import communication_errors
from tests.helpers.launch import run_ranks_expecting_failure
from tests.helpers.models import RegressionModule, trainer


class UnusedParameter(RegressionModule):
    def __init__(self) -> None:
        super().__init__()
        self.spare = nn.Linear(2, 2).double()  # never used by forward


@pytest.mark.parametrize("warmup_steps", [0, 2])
def test_odsgd_unused_parameters_error_names_cause_and_fix(warmup_steps: int) -> None:
    t = trainer(ODSGDStrategy(warmup_steps=warmup_steps), devices=1, max_steps=3)
    with pytest.raises(RuntimeError) as error:
        t.fit(UnusedParameter())
    message = str(error.value)
    assert "positions [4, 5] (shapes [(2, 2), (2,)]) of the module got no gradient" in message
    assert "not used to compute the loss" in message
    assert "find_unused_parameters=True" in message and "remove the unused parameters" in message
    assert "hook is not attached" not in message


def test_odsgd_with_find_unused_parameters_trains() -> None:
    module = UnusedParameter()
    spare = [p.detach().clone() for p in module.spare.parameters()]
    strategy = ODSGDStrategy(find_unused_parameters=True)
    trainer(strategy, devices=1, max_steps=3).fit(module)
    assert strategy.algorithm is not None and strategy.algorithm.step == 3
    for p, before in zip(module.spare.parameters(), spare, strict=True):
        assert torch.equal(p.detach(), before), "a parameter without gradient must not move"


def test_ssgd_nan_on_one_rank_raises_on_every_rank() -> None:
    outcome = run_ranks_expecting_failure(
        "tests.strategies.hardening_worker:nan_loss", strategy="ssgd", kwargs={}, nan_step=2, timeout=120
    )
    assert outcome.failure is not None and "did not finish" not in outcome.failure, "a rank hung"
    for rank, log in enumerate(outcome.logs):
        assert outcome.returncodes[rank] not in (0, None), f"rank {rank} finished"
        assert "NonFiniteReductionError: the all-reduced average of the gradients contains NaN or Inf" in log, (
            f"rank {rank}:\n{log[-3000:]}"
        )


# What holds the NaN after rank 1's NaN step: under ssgd the weights at once; under odsgd the pending
# mean (both ranks) and rank 1's local weights only, while W is still finite: the refusal is still
# taken on both ranks.
NAMED = {
    "ssgd": ["state_dict['net.0.weight']"],
    "odsgd": ["lightning_delayed['state']['pending_mean_grads'][0]", "lightning_delayed['local_states'][1]"],
}


@pytest.mark.parametrize("strategy", ["ssgd", "odsgd"])
def test_a_good_last_checkpoint_is_not_overwritten_by_nan_weights(tmp_path: Path, strategy: str) -> None:
    # check_finite=False lets the NaN through the reduction, so only the checkpoint guard stands in the way.
    outcome = run_ranks_expecting_failure(
        "tests.strategies.hardening_worker:nan_loss",
        strategy=strategy,
        kwargs={"check_finite": False},
        nan_step=2,
        ckpt_dir=str(tmp_path),
        timeout=120,
    )
    assert outcome.failure is not None and "did not finish" not in outcome.failure, "a rank hung"
    for rank, log in enumerate(outcome.logs):
        assert outcome.returncodes[rank] not in (0, None), f"rank {rank} finished"
        assert "NonFiniteCheckpointError: refusing to write the checkpoint" in log, f"rank {rank}:\n{log[-3000:]}"
        assert f"{tmp_path / 'last.ckpt'}" in log
        for name in NAMED[strategy]:
            assert name in log, f"rank {rank} does not name {name}"
    last = torch.load(tmp_path / "last.ckpt", weights_only=False)
    assert last["global_step"] == 2, "last.ckpt is not the one written before the NaN step"
    for name, tensor in last["state_dict"].items():
        assert torch.isfinite(tensor).all(), name


def test_a_dead_peer_under_ssgd_is_a_communication_error() -> None:
    # ssgd's all-reduce is DDP's own, inside backward; gloo's raw "Connection reset by peer" must be wrapped.
    outcome = run_ranks_expecting_failure("tests.strategies.strategy_worker:rank_dies", strategy="ssgd", timeout=120)
    assert outcome.failure is not None and "did not finish" not in outcome.failure, "a rank hung"
    assert outcome.returncodes[1] == 3
    assert outcome.returncodes[0] not in (0, None)
    assert (
        "CommunicationError: the all-reduce of the gradients failed: another rank has probably died" in outcome.logs[0]
    ), outcome.logs[0][-3000:]


def test_only_backend_failures_become_communication_errors() -> None:
    gloo = "[third_party/gloo/gloo/transport/tcp/pair.cc:545] Read error [127.0.0.1]:1: Connection reset by peer"
    broadcast = r"the broadcast of the buffers failed: .*Connection reset by peer"
    with pytest.raises(CommunicationError, match=broadcast), communication_errors("buffers", operation="broadcast"):
        raise RuntimeError(gloo)
    nccl = torch.distributed.DistBackendError("NCCL communicator was aborted")
    with (
        pytest.raises(CommunicationError, match="the all-reduce of the gradients failed"),
        communication_errors("gradients"),
    ):
        raise nccl
    user_error = RuntimeError("element 0 of tensors does not require grad and does not have a grad_fn")
    with pytest.raises(RuntimeError) as raised, communication_errors("gradients"):
        raise user_error
    assert raised.value is user_error
