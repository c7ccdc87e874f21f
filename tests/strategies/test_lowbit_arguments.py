"""``compression="int8"``/``"int4"`` and ``block_size`` on every strategy: checked, wired, checkpointed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import lightning_delayed
from lightning_delayed import (
    AllReduceHook,
    ASGDStrategy,
    BlockQuantizer,
    DaSGDStrategy,
    DiLoCoStrategy,
    LowBitHook,
    SASGDStrategy,
    SSGDStrategy,
)
from lightning_delayed.comm.hooks import DDPGradientHook
from lightning_delayed.fabric import DelayedFabricStrategy
from lightning_delayed.strategies.checkpoint import algorithm_config
from tests.helpers.models import RegressionModule, SaveAt, trainer

LOW_BIT_STRATEGIES = [c for c in lightning_delayed.STRATEGIES if c not in (SASGDStrategy, ASGDStrategy)]
FABRIC_ALGORITHMS = [
    "ssgd",
    "odsgd",
    "local_sgd",
    "dasgd",
    "cocodsgd",
    "overlap_local_sgd",
    "diloco",
    "streaming_diloco",
]
BAD_BLOCK_SIZES = [0, -1, "a", True, 2.5, None]


@pytest.mark.parametrize("cls", lightning_delayed.STRATEGIES, ids=lambda c: c.strategy_name)
def test_an_unknown_compression_is_named(cls: type) -> None:
    with pytest.raises(
        ValueError, match=r"compression must be one of \('none', 'fp16', 'bf16', 'int8', 'int4'\), got 'int3'"
    ):
        cls(compression="int3")


@pytest.mark.parametrize("block_size", BAD_BLOCK_SIZES, ids=repr)
@pytest.mark.parametrize("cls", lightning_delayed.STRATEGIES, ids=lambda c: c.strategy_name)
def test_a_bad_block_size_is_named_with_the_fix(cls: type, block_size: Any) -> None:
    compression = "fp16" if cls in (SASGDStrategy, ASGDStrategy) else "int8"
    with pytest.raises(
        ValueError, match=rf"block_size must be an int >= 1 .*got {block_size!r}: pass e\.g\. block_size=64"
    ):
        cls(compression=compression, block_size=block_size)


@pytest.mark.parametrize("block_size", BAD_BLOCK_SIZES, ids=repr)
def test_fabric_checks_block_size_and_compression_alike(block_size: Any) -> None:
    with pytest.raises(ValueError, match=rf"block_size must be an int >= 1 .*got {block_size!r}"):
        DelayedFabricStrategy("diloco", compression="int4", block_size=block_size)
    with pytest.raises(ValueError, match=r"got 'int3'"):
        DelayedFabricStrategy("odsgd", compression="int3")


@pytest.mark.parametrize("compression", ["int8", "int4"])
@pytest.mark.parametrize("cls", LOW_BIT_STRATEGIES, ids=lambda c: c.strategy_name)
def test_low_bit_builds_a_low_bit_hook_around_the_default_or_given_hook(cls: type, compression: str) -> None:
    bits = {"int8": 8, "int4": 4}[compression]
    built = cls(compression=compression, block_size=16, error_feedback=False).build_communicator()
    assert isinstance(built, LowBitHook) and isinstance(built.compressor, BlockQuantizer)
    assert (built.compressor.bits, built.compressor.block_size, built.error_feedback) == (bits, 16, False)
    assert type(built.inner) is AllReduceHook  # the one-off full-precision averages
    mine = AllReduceHook(bucket_cap_mb=3)
    around = cls(compression=compression, comm_hook=mine).build_communicator()
    assert isinstance(around, LowBitHook) and around.inner is mine and around.error_feedback
    assert around.compressor.block_size == 64


@pytest.mark.parametrize("algorithm", FABRIC_ALGORITHMS)
def test_fabric_keeps_block_size(algorithm: str) -> None:
    strategy = DelayedFabricStrategy(algorithm, compression="int4", block_size=7)
    assert (strategy.compression, strategy.block_size) == ("int4", 7)


def test_ssgd_with_low_bit_uses_the_package_hook_not_ddps_all_reduce() -> None:
    strategy = SSGDStrategy(compression="int8")
    assert strategy.custom_communication
    trainer(strategy, devices=1, max_steps=2).fit(RegressionModule())
    assert isinstance(strategy.ddp_hook, DDPGradientHook) and strategy.ddp_hook.calls == 2
    assert isinstance(strategy.communicator, LowBitHook)


@pytest.mark.parametrize("cls", [SASGDStrategy, ASGDStrategy])
@pytest.mark.parametrize("compression", ["int8", "int4"])
def test_sasgd_refuses_low_bit_with_the_reason_and_the_fix(cls: type, compression: str) -> None:
    with pytest.raises(ValueError, match=rf"does not support compression='{compression}': .*reduce-scatter.*'fp16'"):
        cls(compression=compression)
    with pytest.warns(UserWarning, match=r"block_size=8 is ignored with compression='bf16'"):
        assert cls(compression="bf16", block_size=8).compression == "bf16"  # legal but pointless: a warning


def test_a_block_size_without_low_bit_warns_that_it_is_ignored() -> None:
    with pytest.warns(UserWarning, match=r"DiLoCoStrategy: block_size=32 is ignored with compression='none'"):
        DiLoCoStrategy(block_size=32)
    with pytest.warns(UserWarning, match=r"block_size=8 is ignored with compression='fp16'"):
        DelayedFabricStrategy("dasgd", compression="fp16", block_size=8)


def test_a_low_bit_hook_and_a_low_bit_compression_both_compress() -> None:
    with pytest.raises(ValueError, match=r"compression='int8' and comm_hook=LowBitHook.* both compress"):
        DaSGDStrategy(compression="int8", comm_hook=LowBitHook(BlockQuantizer(4)))


def test_block_size_is_part_of_the_saved_config_only_with_low_bit() -> None:
    assert algorithm_config(DaSGDStrategy(compression="int4", block_size=32))["block_size"] == 32
    with pytest.warns(UserWarning, match="is ignored"):
        assert "block_size" not in algorithm_config(DaSGDStrategy(compression="fp16", block_size=32))
    with pytest.warns(UserWarning, match="is ignored"):
        assert "block_size" not in algorithm_config(DaSGDStrategy(block_size=32))


@pytest.fixture(scope="module")
def int8_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("lowbit") / "int8.ckpt"
    strategy = DiLoCoStrategy(sync_every=2, compression="int8", block_size=16)
    trainer(strategy, devices=1, max_steps=3, callbacks=[SaveAt(2, str(path))]).fit(RegressionModule())
    return path


@pytest.mark.parametrize(
    ("changed", "named"),
    [
        ({"compression": "int8", "block_size": 8}, "block_size=16 (checkpoint) vs block_size=8 (this run)"),
        ({"compression": "int4", "block_size": 16}, "compression='int8' (checkpoint) vs compression='int4'"),
        ({"compression": "int8", "block_size": 16, "error_feedback": False}, "error_feedback=True (checkpoint)"),
    ],
)
def test_resume_with_another_low_bit_setting_is_refused(
    int8_checkpoint: Path, changed: dict[str, Any], named: str
) -> None:
    t = trainer(DiLoCoStrategy(sync_every=2, **changed), devices=1, max_steps=4)
    with pytest.raises(ValueError, match="written with other 'diloco' arguments") as err:
        t.fit(RegressionModule(), ckpt_path=str(int8_checkpoint))
    assert named in str(err.value)


def test_resume_with_the_same_low_bit_setting_goes_on(int8_checkpoint: Path) -> None:
    strategy = DiLoCoStrategy(sync_every=2, compression="int8", block_size=16)
    trainer(strategy, devices=1, max_steps=4).fit(RegressionModule(), ckpt_path=str(int8_checkpoint))
    assert strategy.algorithm is not None and strategy.algorithm.step == 4
    assert isinstance(strategy.communicator, LowBitHook) and strategy.communicator.residuals


def test_a_compressor_of_ones_own_trains_as_comm_hook(monkeypatch: pytest.MonkeyPatch) -> None:
    """examples/topk_compression.py behind a strategy (in-process: tests/comm leaves no process group behind)."""
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[2] / "examples"))
    from topk_compression import TopK

    hook = LowBitHook(TopK(0.1))
    strategy = DiLoCoStrategy(sync_every=2, comm_hook=hook)
    trainer(strategy, devices=1, max_steps=4).fit(RegressionModule())
    assert strategy.communicator is hook and sorted(hook.residuals) == [f"model/{i}" for i in range(4)]
