"""Strategy tier: registry, construction-time validation, unsupported settings, failures, ssgd."""

from __future__ import annotations

from typing import Any

import lightning as L
import pytest
import torch
from lightning.pytorch.plugins.precision import MixedPrecision
from lightning.pytorch.strategies import StrategyRegistry

import lightning_delayed
from lightning_delayed import (
    AllReduceHook,
    CompressedHook,
    DaSGDStrategy,
    LocalSGDStrategy,
    ODSGDStrategy,
    SSGDStrategy,
)
from tests.helpers.launch import run_ranks, run_ranks_expecting_failure
from tests.helpers.models import RegressionModule, trainer

NAMES = lightning_delayed.strategy_names()


def test_every_strategy_is_registered_with_aliases() -> None:
    assert NAMES[:2] == ["ssgd", "odsgd"]
    for cls in lightning_delayed.STRATEGIES:
        for suffix, method in (("", "popen"), ("_spawn", "spawn"), ("_notebook", "fork")):
            entry = StrategyRegistry[cls.strategy_name + suffix]
            assert entry["strategy"] is cls
            assert entry["init_params"]["start_method"] == method


@pytest.mark.parametrize("name", NAMES)
def test_trainer_accepts_the_plain_name(name: str) -> None:
    t = L.Trainer(strategy=name, accelerator="cpu", devices=2, logger=False)
    assert type(t.strategy).strategy_name == name


def test_odsgd_arguments_reach_the_config() -> None:
    s = ODSGDStrategy(local_lr=0.01, dc_lambda=0.5, warmup_steps=200, bucket_cap_mb=4)
    assert (s.config.local_lr, s.config.dc_lambda, s.config.warmup_steps) == (0.01, 0.5, 200)
    assert s.bucket_cap_mb == 4.0 and s._ddp_kwargs["bucket_cap_mb"] == 4


@pytest.mark.parametrize(
    ("make", "error", "match"),
    [
        (lambda: ODSGDStrategy(local_lr=-0.1), ValueError, r"local_lr .* got -0\.1"),
        (lambda: ODSGDStrategy(dc_lambda=-1), ValueError, r"dc_lambda .* got -1"),
        (lambda: ODSGDStrategy(warmup_steps=-3), ValueError, r"warmup_steps .* got -3"),
        (lambda: SSGDStrategy(bucket_cap_mb=0), ValueError, r"bucket_cap_mb .* got 0"),
        (lambda: SSGDStrategy(check_finite="yes"), TypeError, r"check_finite .* got 'yes'"),
        (
            lambda: ODSGDStrategy(process_group_backend="mpi"),
            ValueError,
            r"process_group_backend='mpi'.*gloo",
        ),
        (lambda: ODSGDStrategy(ddp_comm_hook=print), ValueError, r"does not accept \['ddp_comm_hook'\].*comm_hook="),
        (lambda: SSGDStrategy(compression="fp8"), ValueError, r"compression must be one of .*'int4'\), got 'fp8'"),
        (lambda: LocalSGDStrategy(error_feedback="no"), ValueError, r"error_feedback must be True or False, got 'no'"),
        (lambda: ODSGDStrategy(comm_hook=print), TypeError, r"comm_hook must be a lightning_delayed\.CommHook"),
        (
            lambda: DaSGDStrategy(compression="bf16", comm_hook=CompressedHook()),
            ValueError,
            r"compression='bf16' and comm_hook=.* both compress",
        ),
        (lambda: SSGDStrategy(model_averaging_period=4), ValueError, r"model_averaging_period"),
    ],
)
def test_bad_arguments_are_refused_at_construction(make: Any, error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        make()


class TwoOptimizers(RegressionModule):
    def configure_optimizers(self) -> Any:
        return [
            torch.optim.SGD(self.net[0].parameters(), lr=0.1),
            torch.optim.SGD(self.net[2].parameters(), lr=0.1),
        ]

    def training_step(self, batch: Any, batch_idx: int) -> Any:
        return None


class Manual(RegressionModule):
    def __init__(self) -> None:
        super().__init__()
        self.automatic_optimization = False


class Steps(L.Callback):
    def __init__(self) -> None:
        self.batches = 0

    def on_train_batch_start(self, *args: Any) -> None:
        self.batches += 1


# On CPU Lightning maps precision="16-mixed" to bf16; an explicit plugin keeps fp16 and its scaler.
FP16_WITH_SCALER = MixedPrecision("16-mixed", "cpu", scaler=torch.amp.GradScaler("cpu"))


class ManualTwoOptimizers(TwoOptimizers):
    def __init__(self) -> None:
        super().__init__()
        self.automatic_optimization = False


@pytest.mark.parametrize(
    ("module", "kwargs", "error", "match"),
    [
        # Lightning itself refuses several optimizers under automatic optimization, before step 0
        (TwoOptimizers, {}, RuntimeError, r"multiple optimizers is only supported with manual optimization"),
        (ManualTwoOptimizers, {}, ValueError, r"needs automatic optimization"),
        (Manual, {}, ValueError, r"needs automatic optimization"),
        (
            RegressionModule,
            {"precision": None, "plugins": [FP16_WITH_SCALER]},
            ValueError,
            r"does not support precision='16-mixed'",
        ),
    ],
    ids=["two-optimizers", "manual-two-optimizers", "manual", "16-mixed"],
)
def test_unsupported_settings_fail_before_the_first_step(module: type, kwargs: dict, error: type, match: str) -> None:
    steps = Steps()
    t = trainer(ODSGDStrategy(), devices=1, max_steps=2, callbacks=[steps], **kwargs)
    with pytest.raises(error, match=match):
        t.fit(module())
    assert steps.batches == 0


def test_compression_and_comm_hook_compose_into_the_communicator() -> None:
    default = ODSGDStrategy(bucket_cap_mb=4, check_finite=False).build_communicator()
    assert isinstance(default, AllReduceHook) and (default.bucket_cap_mb, default.check_finite) == (4.0, False)
    mine = AllReduceHook(bucket_cap_mb=2)
    wrapped = DaSGDStrategy(compression="bf16", error_feedback=False, comm_hook=mine).build_communicator()
    assert isinstance(wrapped, CompressedHook) and wrapped.inner is mine
    assert (wrapped.compression, wrapped.error_feedback) == ("bf16", False)
    assert SSGDStrategy(comm_hook=mine).custom_communication and not SSGDStrategy().custom_communication


def test_hook_is_attached_and_called_on_cpu() -> None:
    strategy = ODSGDStrategy()
    trainer(strategy, devices=1, max_steps=3).fit(RegressionModule())
    assert strategy.ddp_hook is not None and strategy.ddp_hook.calls >= 3
    assert strategy.algorithm is not None and strategy.algorithm.step == 3


@pytest.mark.parametrize("compression", ["none", "fp16", "int8", "int4"])
def test_ssgd_matches_plain_synchronous_sgd(compression: str) -> None:
    results = run_ranks(
        "tests.strategies.strategy_worker:ssgd_exactness",
        opt={"kind": "sgd", "lr": 0.05, "momentum": 0.9},
        epochs=2,
        compression=compression,
    )
    for res in results:
        # DDP's own C++ reduction without compression; the package's hook (with error feedback) with it
        assert (res["hook_calls"] is None) == (compression == "none")
        assert len(res["ours"]) == len(res["reference"]) == 8
        for a, b in zip(res["ours"], res["reference"], strict=True):
            for x, y in zip(a, b, strict=True):
                assert (x - y).abs().max().item() <= 1e-10
    for x, y in zip(results[0]["ours"][-1], results[1]["ours"][-1], strict=True):
        assert torch.equal(x, y)


def test_a_dead_rank_stops_the_others_with_a_clear_error() -> None:
    outcome = run_ranks_expecting_failure("tests.strategies.strategy_worker:rank_dies", strategy="odsgd", timeout=120)
    assert outcome.failure is not None and "did not finish" not in outcome.failure, "a rank hung"
    assert outcome.returncodes[1] == 3
    assert outcome.returncodes[0] not in (0, None)
    assert "all-reduce of the gradients failed: another rank has probably died" in outcome.logs[0]
