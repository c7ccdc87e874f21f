"""``group_size`` at construction, from YAML, and the set-up refusal on every rank."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from lightning.pytorch.cli import LightningCLI

import lightning_delayed as ld
from examples.digits import DigitsCNN, DigitsDataModule
from tests.helpers.launch import run_ranks

REPO = Path(__file__).resolve().parents[2]
GROUPED = [
    ld.LocalSGDStrategy,
    ld.DaSGDStrategy,
    ld.CoCoDSGDStrategy,
    ld.OverlapLocalSGDStrategy,
    ld.DiLoCoStrategy,
    ld.StreamingDiLoCoStrategy,
]
UNGROUPED = [ld.ODSGDStrategy, ld.SASGDStrategy, ld.ASGDStrategy, ld.SSGDStrategy]


@pytest.mark.parametrize("cls", GROUPED, ids=lambda c: c.__name__)
def test_every_averaging_strategy_takes_group_size(cls: type[Any]) -> None:
    assert cls().group_size == 1
    assert cls(group_size=4).group_size == 4
    assert cls(group_size="node").group_size == "node"
    for bad in (0, -1, 2.0, True, "nodes", None):
        with pytest.raises(ValueError, match=r"group_size must be an int >= 1 .* got"):
            cls(group_size=bad)
    with pytest.raises(ValueError, match=r"process_group=.* and group_size=2 both choose DDP's process group"):
        cls(group_size=2, process_group=object())


@pytest.mark.parametrize("cls", UNGROUPED, ids=lambda c: c.__name__)
def test_gradient_strategies_refuse_group_size(cls: type[Any]) -> None:
    cls(group_size=1)  # the default, accepted
    with pytest.raises(ValueError, match=rf"{cls.__name__} does not support group_size=2: .*Worker groups are"):
        cls(group_size=2)
    with pytest.raises(ValueError, match="does not support group_size='node'"):
        cls(group_size="node")


@pytest.mark.parametrize("cls", UNGROUPED, ids=lambda c: c.__name__)
@pytest.mark.parametrize("bad", [0, -1, "abc", None, True, 2.0])
def test_gradient_strategies_name_an_invalid_group_size_as_invalid_first(cls: type[Any], bad: Any) -> None:
    # Not "does not support group_size=0: ...", which reads as a limit of the algorithm.
    with pytest.raises(ValueError) as info:
        cls(group_size=bad)
    message = str(info.value)
    assert message.startswith(f"{cls.__name__}: group_size must be an int >= 1 (ranks per worker)"), message
    assert f"got {bad!r}" in message and "takes only group_size=1 (the default)" in message
    assert "does not support" not in message


@pytest.mark.parametrize("value", [2, "node"])
def test_group_size_from_yaml(value: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "argv", ["cli.py"])
    monkeypatch.syspath_prepend(str(REPO / "examples"))
    config = tmp_path / "diloco_groups.yaml"
    strategy = {"class_path": "lightning_delayed.DiLoCoStrategy", "init_args": {"sync_every": 8, "group_size": value}}
    config.write_text(yaml.safe_dump({"trainer": {"strategy": strategy}}))
    cli = LightningCLI(
        DigitsCNN,
        DigitsDataModule,
        run=False,
        save_config_callback=None,
        args=["--config", str(config), "--trainer.devices=1"],
    )
    built = cli.trainer.strategy
    assert isinstance(built, ld.DiLoCoStrategy)
    assert built.group_size == value and built.config.sync_every == 8


def test_group_size_not_dividing_the_world_is_refused_on_every_rank() -> None:
    messages = run_ranks("tests.strategies.groups_strategy_worker:indivisible", group_size=3)
    for rank, message in enumerate(messages):
        assert "group_size=3 must divide the world size 2" in message, f"rank {rank}: {message}"
