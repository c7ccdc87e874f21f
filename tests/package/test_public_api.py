"""``lightning_delayed.__all__`` is the deliberate public surface, documented name by name."""

from __future__ import annotations

import re
import typing
from pathlib import Path

import pytest

import lightning_delayed
from lightning_delayed import CommHook, CommMonitor, DelayedStrategy

EXTENDING = Path(__file__).resolve().parents[2] / "docs" / "extending.md"


def documented_names() -> list[str]:
    """First-column names of the tables in the "## Public API" section of docs/extending.md."""
    text = EXTENDING.read_text()
    match = re.search(r"^## Public API\n(.*?)(?=^## |\Z)", text, flags=re.M | re.S)
    assert match is not None, "docs/extending.md has no '## Public API' section"
    return re.findall(r"^\| `([A-Za-z_][A-Za-z0-9_]*)` \|", match.group(1), flags=re.M)


def test_all_is_exactly_the_documented_list() -> None:
    documented = documented_names()
    assert len(documented) == len(set(documented)), "a name is documented twice"
    assert sorted(lightning_delayed.__all__) == sorted(documented)
    assert len(lightning_delayed.__all__) == len(set(lightning_delayed.__all__))


@pytest.mark.parametrize("name", lightning_delayed.__all__)
def test_every_public_name_resolves(name: str) -> None:
    obj = getattr(lightning_delayed, name)
    assert obj is not None
    namespace: dict[str, object] = {}
    exec(f"from lightning_delayed import {name}", namespace)
    assert namespace[name] is obj


@pytest.mark.parametrize(
    "name",
    [
        "Pending",
        "PendingAverage",
        "Completed",
        "launch_average",
        "refuse_grad_scaler",
        "cocodsgd_config",
        "ODSGD",
        "DaSGD",
        "LocalSGD",
        "OverlapLocalSGD",
        "ParameterServer",
        "SASGDWorker",
        "COMPRESSIONS",
        "DEFAULT_BUCKET_CAP_MB",
        "comm_stats",
        "CommStats",
    ],
)
def test_low_level_pieces_live_in_their_submodules(name: str) -> None:
    assert name not in lightning_delayed.__all__
    assert not hasattr(lightning_delayed, name)


def test_classes_lightningcli_builds_have_run_time_annotations() -> None:
    """LightningCLI resolves ``__init__`` annotations at run time: none may hide under TYPE_CHECKING."""
    for name in lightning_delayed.__all__:
        obj = getattr(lightning_delayed, name)
        if isinstance(obj, type) and issubclass(obj, (DelayedStrategy, CommHook, CommMonitor)):
            typing.get_type_hints(obj.__init__)
