"""Strategy tier of ``diloco`` / ``streaming_diloco``: construction errors, set-up refusal, CLI, registry."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import yaml
from lightning.pytorch.strategies import StrategyRegistry

import lightning_delayed
from lightning_delayed import DiLoCoStrategy, StreamingDiLoCoStrategy
from tests.helpers.launch import child_env, run_ranks
from tests.helpers.models import RegressionModule, trainer

REPO = Path(__file__).resolve().parents[2]
CONFIGS = REPO / "examples" / "configs"


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: DiLoCoStrategy(sync_every=0), r"sync_every \(tau\) must be an integer >= 1, got 0"),
        (lambda: StreamingDiLoCoStrategy(sync_every=-2), r"sync_every \(tau\) must be an integer >= 1, got -2"),
        (
            lambda: StreamingDiLoCoStrategy(sync_every=10, num_fragments=3),
            r"num_fragments \(P\) must divide sync_every=10",
        ),
        (lambda: StreamingDiLoCoStrategy(sync_every=4, delay=4), r"delay \(tau\) .* 0 <= delay < sync_every=4, got 4"),
        (lambda: StreamingDiLoCoStrategy(delay=-1), r"delay \(tau\) .* got -1"),
        (lambda: StreamingDiLoCoStrategy(alpha=1.01), r"alpha must be a number in \[0, 1\], got 1.01"),
        (lambda: StreamingDiLoCoStrategy(alpha=float("nan")), r"alpha must be a number in \[0, 1\], got nan"),
        (lambda: DiLoCoStrategy(outer_lr=0), r"outer_lr \(eta_o\) must be a finite number > 0, got 0"),
        (lambda: DiLoCoStrategy(outer_lr=float("inf")), r"outer_lr \(eta_o\) must be a finite number > 0, got inf"),
        (lambda: StreamingDiLoCoStrategy(outer_lr=float("nan")), r"outer_lr .* got nan"),
        (lambda: DiLoCoStrategy(outer_momentum=1.0), r"outer_momentum \(mu\) must be a number in \[0, 1\), got 1.0"),
        (lambda: DiLoCoStrategy(outer_momentum=float("nan")), r"outer_momentum .* got nan"),
        (lambda: StreamingDiLoCoStrategy(outer_momentum=-0.5), r"outer_momentum .* got -0.5"),
        (lambda: DiLoCoStrategy(nesterov="yes"), r"nesterov must be True or False, got 'yes'"),
        (
            lambda: StreamingDiLoCoStrategy(fragments="random"),
            r"fragments must be one of \('strided', 'sequential'\), got 'random'",
        ),
        (lambda: DiLoCoStrategy(average_buffers=0), r"average_buffers must be True or False, got 0"),
        (lambda: DiLoCoStrategy(compression="int3"), r"compression must be one of .*got .int3."),
    ],
)
def test_bad_arguments_are_refused_at_construction(make: Any, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        make()


def test_arguments_reach_the_config_and_defaults_are_the_papers() -> None:
    d = DiLoCoStrategy()
    assert (d.config.sync_every, d.config.outer_lr, d.config.outer_momentum, d.config.nesterov) == (50, 0.7, 0.9, True)
    assert d._ddp_kwargs["forward_sync_buffers"] is False and "broadcast_buffers" not in d._ddp_kwargs
    s = StreamingDiLoCoStrategy(sync_every=6, num_fragments=3, delay=2, alpha=0.25, fragments="sequential")
    assert (s.config.num_fragments, s.config.delay, s.config.alpha, s.config.fragments) == (3, 2, 0.25, "sequential")
    assert StreamingDiLoCoStrategy().config.num_fragments == 2


def test_registered_with_aliases_and_exported() -> None:
    for cls in (DiLoCoStrategy, StreamingDiLoCoStrategy):
        assert cls in lightning_delayed.STRATEGIES and cls.__name__ in lightning_delayed.__all__
        for suffix, method in (("", "popen"), ("_spawn", "spawn"), ("_notebook", "fork")):
            entry = StrategyRegistry[cls.strategy_name + suffix]
            assert entry["strategy"] is cls and entry["init_params"]["start_method"] == method
        t = L.Trainer(strategy=cls.strategy_name, accelerator="cpu", devices=2, logger=False)
        assert type(t.strategy) is cls


class Steps(L.Callback):
    def __init__(self) -> None:
        self.batches = 0

    def on_train_batch_start(self, *args: Any) -> None:
        self.batches += 1


def test_fewer_layers_than_fragments_is_refused_at_setup_with_the_layer_count() -> None:
    steps = Steps()
    t = trainer(StreamingDiLoCoStrategy(sync_every=4, num_fragments=4), devices=1, max_steps=2, callbacks=[steps])
    # Linear, Tanh, Linear: two layers own parameters
    with pytest.raises(ValueError, match=r"at least num_fragments=4 layers .* the model has 2"):
        t.fit(RegressionModule())
    assert steps.batches == 0


def test_setup_refusal_happens_on_every_rank() -> None:
    results = run_ranks("tests.strategies.diloco_strategy_worker:refused_on_every_rank", timeout=120)
    assert all("the model has 2" in r for r in results), results


def test_single_device_trains_and_ends_on_theta() -> None:
    strategy = DiLoCoStrategy(sync_every=3)
    module = RegressionModule()
    trainer(strategy, devices=1, max_steps=4).fit(module)
    assert strategy.ddp_hook is not None and strategy.ddp_hook.calls == 4
    algorithm = strategy.algorithm
    assert algorithm is not None and algorithm.step == 4
    # 4 % 3 != 0: one more synchronisation at the end, after which x == theta
    assert all(p.detach().equal(t) for p, t in zip(module.parameters(), algorithm.global_params, strict=True))


def _run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = child_env(OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    proc = subprocess.run(
        [sys.executable, str(REPO / "examples" / "cli.py"), *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        ("diloco.yaml", {"sync_every": 8, "outer_lr": 0.7, "outer_momentum": 0.9, "nesterov": True}),
        (
            "streaming_diloco.yaml",
            {
                "sync_every": 8,
                "num_fragments": 2,
                "delay": 1,
                "alpha": 0.5,
                "fragments": "strided",
                "compression": "fp16",
            },
        ),
    ],
)
def test_print_config_shows_the_typed_arguments(config: str, expected: dict[str, Any]) -> None:
    printed = yaml.safe_load(_run_cli("fit", "--config", str(CONFIGS / config), "--print_config").stdout)
    init_args = printed["trainer"]["strategy"]["init_args"]
    for name, value in expected.items():
        assert init_args[name] == value, name


def test_cli_streaming_yaml_trains_two_ranks_with_fp16_pseudo_gradients(tmp_path: Path) -> None:
    proc = _run_cli(
        "fit",
        "--config",
        str(CONFIGS / "streaming_diloco.yaml"),
        "--trainer.max_steps=5",
        "--trainer.limit_val_batches=1",
        "--trainer.num_sanity_val_steps=0",
        "--trainer.enable_progress_bar=false",
        f"--trainer.default_root_dir={tmp_path}",
    )
    output = proc.stdout + proc.stderr
    assert "Starting with 2 processes" in output and "`max_steps=5` reached" in output
    saved = yaml.safe_load((tmp_path / "config.yaml").read_text())
    assert saved["trainer"]["strategy"]["class_path"] == "lightning_delayed.StreamingDiLoCoStrategy"
