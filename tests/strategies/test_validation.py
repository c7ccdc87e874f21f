"""Construction-time refusals of every registered strategy class, driven by one table.

Each row is (strategy class, keyword arguments, exception type, fragment of the message). The
table holds, for every strategy: NaN and infinity for each of its float arguments, a tiny
``worker_timeout``, ``timeout`` given as a bare number, and a misspelled keyword with the
suggestion. :func:`test_the_table_covers_every_float_argument` keeps the table complete: a new
float argument without its NaN and infinity rows fails it.
"""

from __future__ import annotations

import inspect
import math
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

import lightning_delayed
from examples.digits import DigitsCNN, DigitsDataModule
from lightning_delayed import (
    CoCoDSGDStrategy,
    DaSGDStrategy,
    LocalSGDStrategy,
    ODSGDStrategy,
    OverlapLocalSGDStrategy,
    SSGDStrategy,
)
from lightning_delayed.core.dasgd import DaSGDConfig
from lightning_delayed.core.odsgd import ODSGDConfig
from lightning_delayed.core.overlap_local_sgd import OverlapLocalSGDConfig
from lightning_delayed.core.sasgd import SASGDConfig
from lightning_delayed.strategies.base import DelayedStrategy
from lightning_delayed.strategies.diloco import DiLoCoStrategy, StreamingDiLoCoStrategy
from lightning_delayed.strategies.sasgd import ASGDStrategy, SASGDStrategy

NAN, INF = math.nan, math.inf
PARAMETER_SERVER = (SASGDStrategy, ASGDStrategy)
DDP_WRAPPED = tuple(c for c in lightning_delayed.STRATEGIES if c not in PARAMETER_SERVER)

Row = tuple[type, dict[str, Any], type, str]


def _non_finite(cls: type, name: str, fragment: str | None = None) -> list[Row]:
    fragment = fragment or f"{name} must be a finite number"
    return [(cls, {name: v}, ValueError, f"{fragment}, got {v!r}") for v in (NAN, INF, -INF)]


def _common(cls: type) -> list[Row]:
    rows: list[Row] = [
        (cls, {"timeout": 30}, TypeError, "pass timeout=timedelta(seconds=30)"),
        (cls, {"timeout": 1.5}, TypeError, "pass timeout=timedelta(seconds=1.5)"),
        (cls, {"timeout": timedelta(seconds=-1)}, ValueError, "timeout must be a positive datetime.timedelta"),
        (cls, {"timeout": "30"}, TypeError, "timeout must be a datetime.timedelta or None, got '30'"),
        (cls, {"find_unused_parameter": True}, TypeError, "did you mean 'find_unused_parameters'?"),
        (cls, {"gradient_as_bucket_vew": True}, TypeError, "did you mean 'gradient_as_bucket_view'?"),
        (cls, {"compresion": "fp16"}, TypeError, "did you mean 'compression'?"),
        (
            cls,
            {"xyzzy_qux": 1},
            TypeError,
            f"{cls.__name__} got an unexpected keyword argument 'xyzzy_qux'. ",
        ),
        (cls, {"device_ids": [0]}, TypeError, "Lightning sets it from Trainer(devices=...)"),
    ]
    if cls in DDP_WRAPPED:
        rows += _non_finite(cls, "bucket_cap_mb")
        rows.append((cls, {"bucket_cap_mb": "25"}, TypeError, "bucket_cap_mb must be a number of MiB > 0, got '25'"))
    else:  # no buckets at all: any value but the default is refused
        rows += [(cls, {"bucket_cap_mb": v}, ValueError, f"bucket_cap_mb={v!r} does not apply") for v in (NAN, INF)]
    return rows


TABLE: list[Row] = [row for cls in lightning_delayed.STRATEGIES for row in _common(cls)]
TABLE += [
    *_non_finite(ODSGDStrategy, "local_lr"),
    *_non_finite(ODSGDStrategy, "dc_lambda"),
    (ODSGDStrategy, {"locl_lr": 0.1}, TypeError, "unexpected keyword argument 'locl_lr'; did you mean 'local_lr'?"),
    (ODSGDStrategy, {"dc_lamda": 0.1}, TypeError, "did you mean 'dc_lambda'?"),
    (ODSGDStrategy, {"warmup_step": 10}, TypeError, "did you mean 'warmup_steps'?"),
    *_non_finite(OverlapLocalSGDStrategy, "alpha"),
    *_non_finite(OverlapLocalSGDStrategy, "outer_momentum", "outer_momentum (beta) must be a finite number"),
    (OverlapLocalSGDStrategy, {"outer_momentm": 0.7}, TypeError, "did you mean 'outer_momentum'?"),
    (LocalSGDStrategy, {"sync_evry": 2}, TypeError, "did you mean 'sync_every'?"),
    (DaSGDStrategy, {"dealy": 1}, TypeError, "did you mean 'delay'?"),
    (CoCoDSGDStrategy, {"delay": 2}, TypeError, "CoCoDSGDStrategy fixes delay = sync_every"),
    (CoCoDSGDStrategy, {"delay": 4}, TypeError, "use DaSGDStrategy(sync_every=..., delay=...)"),
    (CoCoDSGDStrategy, {"weigting": "samples"}, TypeError, "did you mean 'weighting'?"),
]
for _cls in (DiLoCoStrategy, StreamingDiLoCoStrategy):
    TABLE += [
        *_non_finite(_cls, "outer_lr", "outer_lr (eta_o) must be a finite number > 0"),
        *_non_finite(_cls, "outer_momentum", "outer_momentum (mu) must be a number in [0, 1)"),
        (_cls, {"outer_lr": 0.0}, ValueError, "outer_lr (eta_o) must be a finite number > 0, got 0.0"),
        (_cls, {"nesterv": True}, TypeError, "did you mean 'nesterov'?"),
    ]
TABLE += [
    *_non_finite(StreamingDiLoCoStrategy, "alpha", "alpha must be a number in [0, 1]"),
    (StreamingDiLoCoStrategy, {"num_fragment": 2}, TypeError, "did you mean 'num_fragments'?"),
]
for _cls in PARAMETER_SERVER:
    TABLE += [
        *_non_finite(_cls, "worker_timeout"),
        (_cls, {"worker_timeout": 0.01}, ValueError, "worker_timeout=0.01 s is below the minimum of 1 s"),
        (_cls, {"worker_timeout": 0.5}, ValueError, "would then stop a healthy job"),
        (_cls, {"worker_timeout": 0}, ValueError, "worker_timeout must be > 0 seconds, got 0"),
        (_cls, {"worker_timeot": 30.0}, TypeError, "did you mean 'worker_timeout'?"),
        (_cls, {"softsyn": 2}, TypeError, "did you mean 'softsync'?"),
    ]


def _id(row: Row) -> str:
    cls, kwargs, _, _ = row
    return f"{cls.__name__}-" + "-".join(f"{k}={v!r}" for k, v in kwargs.items())


@pytest.mark.parametrize(("cls", "kwargs", "error", "fragment"), TABLE, ids=[_id(r) for r in TABLE])
def test_bad_values_are_refused_at_construction(cls: type, kwargs: dict[str, Any], error: type, fragment: str) -> None:
    with pytest.raises(error) as info:
        cls(**kwargs)
    assert type(info.value) is error
    assert fragment in str(info.value), f"{cls.__name__}({kwargs}) raised {info.value!r}"


def _float_arguments(cls: type) -> set[str]:
    """Arguments of ``cls`` (and of its bases down to DelayedStrategy) annotated with float or timedelta."""
    names = set()
    for klass in cls.__mro__:
        if issubclass(klass, DelayedStrategy) and "__init__" in vars(klass):
            for p in inspect.signature(vars(klass)["__init__"]).parameters.values():
                if "float" in str(p.annotation) or "timedelta" in str(p.annotation):
                    names.add(p.name)
    return names


@pytest.mark.parametrize("cls", lightning_delayed.STRATEGIES, ids=lambda c: c.__name__)
def test_the_table_covers_every_float_argument(cls: type) -> None:
    tried: dict[str, set[str]] = {}
    for row_cls, kwargs, _, _ in TABLE:
        if row_cls is cls:
            for name, value in kwargs.items():
                tried.setdefault(name, set()).add(repr(value))
    for name in _float_arguments(cls):
        if name == "timeout":
            assert {"30", "1.5"} <= tried[name], "timeout as a bare number must be in the table"
        else:
            assert {"nan", "inf"} <= tried.get(name, set()), f"{cls.__name__}.{name}: no NaN/inf row"


@pytest.mark.parametrize(
    ("make", "fragment"),
    [
        (lambda: ODSGDConfig(dc_lambda=NAN), "dc_lambda must be a finite number, got nan"),
        (lambda: ODSGDConfig(local_lr=INF), "local_lr must be a finite number, got inf"),
        (lambda: OverlapLocalSGDConfig(alpha=NAN), "alpha must be a finite number, got nan"),
        (lambda: OverlapLocalSGDConfig(outer_momentum=INF), "outer_momentum (beta) must be a finite number"),
        (lambda: SASGDConfig(worker_timeout=NAN), "worker_timeout must be a finite number, got nan"),
        (lambda: SASGDConfig(worker_timeout=0.2), "below the minimum of 1 s"),
    ],
)
def test_core_configs_refuse_non_finite_values(make: Any, fragment: str) -> None:
    with pytest.raises(ValueError) as info:
        make()
    assert fragment in str(info.value)


def test_valid_arguments_still_construct() -> None:
    s = SSGDStrategy(timeout=timedelta(seconds=30), find_unused_parameters=True, gradient_as_bucket_view=True)
    assert s._timeout == timedelta(seconds=30) and s._ddp_kwargs["find_unused_parameters"] is True
    assert ODSGDStrategy(local_lr=0.1, dc_lambda=0.5, static_graph=True).config.local_lr == 0.1
    assert CoCoDSGDStrategy(sync_every=3).config.delay == 3
    assert DaSGDConfig(sync_every=4, delay=4).delay == 4
    assert SASGDStrategy(worker_timeout=1.0, timeout=None).config.worker_timeout == 1.0
    # LightningCLI passes every DDP argument with its default; sasgd accepts those.
    assert ASGDStrategy(find_unused_parameters=False, static_graph=False).config.staleness_aware is False


CLI_CONFIG = str(Path(__file__).resolve().parents[2] / "examples" / "configs" / "odsgd_class_path.yaml")


@pytest.mark.parametrize(
    ("arg", "line"),
    [
        ("--trainer.strategy.init_args.dc_lambda=.nan", "dc_lambda must be a finite number, got nan"),
        ("--trainer.strategy.init_args.local_lr=.inf", "local_lr must be a finite number, got inf"),
        ("--trainer.strategy.init_args.local_lr=-1", "local_lr must be None (use the optimizer's current LR) or"),
        ("--trainer.strategy.init_args.bucket_cap_mb=.nan", "bucket_cap_mb must be a finite number, got nan"),
    ],
)
def test_cli_refuses_a_bad_value_in_the_first_line_of_the_error(
    arg: str, line: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Plain LightningCLI buries an ``__init__`` refusal inside jsonargparse's ``str | Strategy`` union
    report; ``DelayedLightningCLI`` (what examples/cli.py uses) raises the refusal alone, argument first."""
    from lightning_delayed.cli import DelayedLightningCLI

    monkeypatch.setattr(sys, "argv", ["cli.py"])
    with pytest.raises(ValueError) as info:
        DelayedLightningCLI(
            DigitsCNN,
            DigitsDataModule,
            run=False,
            save_config_callback=None,
            args=["--config", CLI_CONFIG, "--trainer.devices=1", arg],
        )
    first_line = str(info.value).splitlines()[0]
    assert first_line.startswith("trainer.strategy (lightning_delayed.ODSGDStrategy): "), first_line
    assert line in first_line
    assert info.value.__suppress_context__  # jsonargparse's report is not printed before it


def test_cli_strategy_refusal_is_reproduced_only_for_a_class_path() -> None:
    from jsonargparse import Namespace

    from lightning_delayed.cli import strategy_refusal

    by_name = Namespace(trainer=Namespace(strategy="odsgd"))
    assert strategy_refusal(by_name) is None
    good = Namespace(
        trainer=Namespace(strategy=Namespace(class_path="lightning_delayed.ODSGDStrategy", init_args=Namespace()))
    )
    assert strategy_refusal(good) is None
    bad = Namespace(
        trainer=Namespace(
            strategy=Namespace(class_path="lightning_delayed.DaSGDStrategy", init_args=Namespace(delay=9))
        )
    )
    refusal = strategy_refusal(bad)
    assert isinstance(refusal, ValueError) and "delay" in str(refusal)


def test_a_refusal_keeps_a_builtin_type_and_names_any_other() -> None:
    from lightning_delayed.strategies.checks import _same_type

    same = _same_type("builtins", "ValueError", "local_lr must be > 0 [set-up refused on rank 1]")
    assert type(same) is ValueError and str(same) == "local_lr must be > 0 [set-up refused on rank 1]"
    other = _same_type("my_package.errors", "MyError", "bad [set-up refused on rank 0]")
    assert type(other) is RuntimeError and str(other) == "my_package.errors.MyError: bad [set-up refused on rank 0]"
    # a builtin whose constructor takes other arguments still gives an error with the message
    odd = _same_type("builtins", "UnicodeDecodeError", "text")
    assert type(odd) is RuntimeError and "UnicodeDecodeError: text" in str(odd)


def test_a_refusal_on_a_single_process_is_the_original_error() -> None:
    from lightning_delayed.strategies.checks import refuse_on_every_rank

    original = ValueError("manual optimization")

    def check() -> None:
        raise original

    with pytest.raises(ValueError) as info:
        refuse_on_every_rank(check, "set-up")
    assert info.value is original
