"""LightningCLI with the strategies (plain name, class_path YAML), the digits example, DelayedLightningCLI errors."""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from lightning.pytorch.cli import LightningCLI

from examples.digits import DigitsCNN, DigitsDataModule
from lightning_delayed import AllReduceHook, CommHook, CompressedHook, ODSGDStrategy, SSGDStrategy
from tests.helpers.launch import child_env, run_ranks

REPO = Path(__file__).resolve().parents[2]
CLI = REPO / "examples" / "cli.py"
CONFIGS = REPO / "examples" / "configs"
TIMEOUT_S = 180


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = child_env(OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    proc = subprocess.run(
        [sys.executable, str(CLI), *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"examples/cli.py {' '.join(args)} exited with {proc.returncode}:\n{output[-6000:]}"
    return proc


@pytest.mark.parametrize(
    ("config", "expected_strategy"),
    [("odsgd.yaml", "odsgd"), ("odsgd_class_path.yaml", {"class_path": "lightning_delayed.ODSGDStrategy"})],
)
def test_cli_fit_two_ranks(config: str, expected_strategy: object, tmp_path: Path) -> None:
    proc = run_cli(
        "fit",
        "--config",
        str(CONFIGS / config),
        "--trainer.max_steps=3",
        "--trainer.limit_val_batches=1",
        "--trainer.num_sanity_val_steps=0",
        "--trainer.enable_progress_bar=false",
        f"--trainer.default_root_dir={tmp_path}",
    )
    output = proc.stdout + proc.stderr
    assert "Starting with 2 processes" in output
    assert "`max_steps=3` reached" in output
    saved = yaml.safe_load((tmp_path / "config.yaml").read_text())
    strategy = saved["trainer"]["strategy"]
    if isinstance(expected_strategy, dict):
        assert strategy["class_path"] == expected_strategy["class_path"]
        assert strategy["init_args"]["local_lr"] == 0.05
        assert strategy["init_args"]["warmup_steps"] == 20
    else:
        assert strategy == expected_strategy
    assert saved["trainer"]["devices"] == 2


def test_cli_print_config_shows_class_path_init_args() -> None:
    proc = run_cli("fit", "--config", str(CONFIGS / "odsgd_class_path.yaml"), "--print_config")
    printed = yaml.safe_load(proc.stdout)
    strategy = printed["trainer"]["strategy"]
    assert strategy["class_path"] == "lightning_delayed.ODSGDStrategy"
    assert strategy["init_args"]["local_lr"] == 0.05
    assert strategy["init_args"]["dc_lambda"] == 0.0
    assert strategy["init_args"]["warmup_steps"] == 20


def test_cli_instantiates_class_path_strategy_with_init_args(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "argv", ["cli.py"])
    cli = LightningCLI(
        DigitsCNN,
        DigitsDataModule,
        run=False,
        save_config_callback=None,
        args=["--config", str(CONFIGS / "odsgd_class_path.yaml"), "--trainer.devices=1"],
    )
    strategy = cli.trainer.strategy
    assert isinstance(strategy, ODSGDStrategy)
    assert strategy.config.local_lr == 0.05
    assert strategy.config.dc_lambda == 0.0
    assert strategy.config.warmup_steps == 20
    assert isinstance(cli.model, DigitsCNN)
    assert cli.model.lr == 0.05


def test_cli_plain_name_resolves_to_registered_strategy(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "argv", ["cli.py"])
    cli = LightningCLI(
        DigitsCNN,
        DigitsDataModule,
        run=False,
        save_config_callback=None,
        args=["--config", str(CONFIGS / "ssgd.yaml"), "--trainer.devices=1"],
    )
    assert isinstance(cli.trainer.strategy, SSGDStrategy)
    assert cli.datamodule.batch_size == 32


def test_digits_datamodule_split_and_shapes() -> None:
    data = DigitsDataModule(batch_size=16, seed=3)
    data.setup("fit")
    assert data.train_set is not None and data.test_set is not None
    train_x, train_y = data.train_set.tensors
    test_x, test_y = data.test_set.tensors
    assert train_x.shape == (1297, 1, 8, 8) and test_x.shape == (500, 1, 8, 8)
    assert train_x.dtype == torch.float32 and train_y.dtype == torch.int64
    assert float(train_x.min()) == 0.0 and float(train_x.max()) == 1.0
    assert set(train_y.tolist()) == set(range(10)) and set(test_y.tolist()) == set(range(10))

    # The split is a function of the seed alone: same seed, same test set; another seed, another.
    again = DigitsDataModule(seed=3)
    again.setup("fit")
    assert again.test_set is not None
    assert torch.equal(again.test_set.tensors[0], test_x)
    other = DigitsDataModule(seed=4)
    other.setup("fit")
    assert other.test_set is not None
    assert not torch.equal(other.test_set.tensors[0], test_x)

    x, y = next(iter(data.train_dataloader()))
    assert x.shape == (16, 1, 8, 8) and y.shape == (16,)
    assert len(data.test_dataloader().dataset) == 500


def test_digits_cnn_forward_and_one_sgd_step_lowers_loss() -> None:
    torch.manual_seed(0)
    data = DigitsDataModule(batch_size=64)
    data.setup("fit")
    x, y = next(iter(data.train_dataloader()))
    model = DigitsCNN(lr=0.05, momentum=0.0)
    logits = model(x)
    assert logits.shape == (64, 10)
    optimizer = model.configure_optimizers()
    assert isinstance(optimizer, torch.optim.SGD)
    loss_before = model.loss_fn(logits, y)
    loss_before.backward()
    optimizer.step()
    with torch.no_grad():
        loss_after = model.loss_fn(model(x), y)
    assert loss_after < loss_before


def assert_built_as_configured(obj: object, raw: dict[str, Any], where: str) -> None:
    """``obj`` is an instance of ``raw["class_path"]`` holding every ``init_args`` value (recursively)."""
    module, _, name = raw["class_path"].rpartition(".")
    assert type(obj) is getattr(importlib.import_module(module), name), where
    for name, value in (raw.get("init_args") or {}).items():
        held = getattr(getattr(obj, "config", None), name, getattr(obj, name, None))
        if isinstance(value, dict) and "class_path" in value:
            assert_built_as_configured(held, value, f"{where}.{name}")
        else:
            assert held == value, f"{where}: {name} is {held!r}, the YAML says {value!r}"


@pytest.mark.parametrize("config", sorted(p.name for p in CONFIGS.glob("*.yaml")))
def test_every_example_config_builds_its_strategy_with_its_arguments(
    config: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys, "argv", ["cli.py"])
    monkeypatch.syspath_prepend(str(REPO / "examples"))  # as examples/cli.py sees it: `custom_hook` imports
    raw = yaml.safe_load((CONFIGS / config).read_text())["trainer"]["strategy"]
    cli = LightningCLI(
        DigitsCNN,
        DigitsDataModule,
        run=False,
        save_config_callback=None,
        args=["--config", str(CONFIGS / config), "--trainer.devices=1"],
    )
    strategy = cli.trainer.strategy
    if isinstance(raw, str):
        assert type(strategy).strategy_name == raw
        return
    assert f"lightning_delayed.{type(strategy).__name__}" == raw["class_path"]
    assert_built_as_configured(strategy, raw, config)


def test_yaml_compression_and_custom_hook_reach_the_strategy(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "argv", ["cli.py"])
    monkeypatch.syspath_prepend(str(REPO / "examples"))
    built = {}
    for config in ("dasgd_bf16.yaml", "odsgd_custom_hook.yaml"):
        cli = LightningCLI(
            DigitsCNN,
            DigitsDataModule,
            run=False,
            save_config_callback=None,
            args=["--config", str(CONFIGS / config), "--trainer.devices=1"],
        )
        built[config] = cli.trainer.strategy
    assert built["dasgd_bf16.yaml"].compression == "bf16" and built["dasgd_bf16.yaml"].comm_hook is None
    hooked = built["odsgd_custom_hook.yaml"]
    assert isinstance(hooked.comm_hook, CommHook) and type(hooked.comm_hook).__name__ == "CountingHook"
    assert isinstance(hooked.comm_hook.inner, AllReduceHook) and hooked.comm_hook.inner.bucket_cap_mb == 4.0
    communicator = hooked.build_communicator()
    assert isinstance(communicator, CompressedHook) and communicator.inner is hooked.comm_hook


def test_custom_hook_from_yaml_trains_on_two_ranks() -> None:
    config = str(CONFIGS / "odsgd_custom_hook.yaml")
    results = run_ranks("tests.strategies.strategy_worker:cli_custom_hook", config=config, max_steps=3)
    for res in results:
        assert res["strategy"] == "ODSGDStrategy" and res["hook"] == "custom_hook.CountingHook"
        assert res["communicator"] == "CompressedHook" and res["inner_bucket_cap_mb"] == 4.0
        assert res["steps"] == 3
        # the hook saw every gradient bucket the DDP hook launched, as fp16 wire tensors only
        assert res["launches"] == {"gradients": res["ddp_hook_calls"]} and res["ddp_hook_calls"] >= 3
        assert res["bytes_sent"] == {"torch.float16": 3 * 2 * res["num_params"]}


# --- DelayedLightningCLI: every mistake in a strategy's init_args first, each with its suggestion ---

STRATEGY_NAMES = ["lightning_delayed.StreamingDiLoCoStrategy", "StreamingDiLoCoStrategy"]
"""The class by full ``class_path`` and by the short name jsonargparse resolves among Strategy's subclasses."""


def bad_config(tmp_path: Path, class_path: str, **init_args: object) -> str:
    config = {
        "trainer": {
            "accelerator": "cpu",
            "devices": 1,
            "strategy": {"class_path": class_path, "init_args": {"delay": 1, **init_args}},
        }
    }
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return str(path)


def delayed_cli_stderr(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], *args: str) -> list[str]:
    """The lines ``DelayedLightningCLI(..., args=args)`` writes to stderr before it exits with status 2."""
    from lightning_delayed.cli import DelayedLightningCLI

    monkeypatch.setattr(sys, "argv", ["cli.py"])
    capsys.readouterr()
    with pytest.raises(SystemExit) as info:
        DelayedLightningCLI(DigitsCNN, DigitsDataModule, run=False, save_config_callback=None, args=list(args))
    assert info.value.code == 2
    return capsys.readouterr().err.splitlines()


@pytest.mark.parametrize("class_path", STRATEGY_NAMES)
def test_delayed_cli_names_a_misspelled_init_arg_first_with_the_python_suggestion(
    class_path: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from lightning_delayed import StreamingDiLoCoStrategy

    lines = delayed_cli_stderr(monkeypatch, capsys, "--config", bad_config(tmp_path, class_path, num_fragmnts=2))
    with pytest.raises(TypeError) as python:
        StreamingDiLoCoStrategy(num_fragmnts=2)
    assert "did you mean 'num_fragments'?" in str(python.value)
    assert lines[0] == f"trainer.strategy.init_args.num_fragmnts: {python.value}", lines[:3]
    assert not any(line.startswith("usage:") for line in lines), lines[:3]


@pytest.mark.parametrize("class_path", STRATEGY_NAMES)
def test_delayed_cli_names_a_wrongly_typed_init_arg_first_with_the_expected_type(
    class_path: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    lines = delayed_cli_stderr(monkeypatch, capsys, "--config", bad_config(tmp_path, class_path, sync_every="eight"))
    assert lines[0] == "trainer.strategy.init_args.sync_every: StreamingDiLoCoStrategy expects int, got 'eight'"
    assert not any(line.startswith("usage:") for line in lines), lines[:3]


def test_delayed_cli_reports_every_init_arg_problem_before_anything_else() -> None:
    """The real command (examples/cli.py fit): a typo, a wrong type and a wrong Literal, all three, first."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        config = bad_config(
            Path(tmp), "lightning_delayed.StreamingDiLoCoStrategy", sync_every="eight", num_fragmnts=2, fragments="strd"
        )
        proc = subprocess.run(
            [sys.executable, str(CLI), "fit", "--config", config],
            cwd=REPO,
            env=child_env(OMP_NUM_THREADS="1", PYTHONPATH=str(REPO)),
            capture_output=True,
            text=True,
            timeout=TIMEOUT_S,
        )
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-4000:]
    lines = proc.stderr.splitlines()
    assert lines[0] == "trainer.strategy.init_args.sync_every: StreamingDiLoCoStrategy expects int, got 'eight'"
    assert lines[1].startswith("trainer.strategy.init_args.num_fragmnts: StreamingDiLoCoStrategy got an unexpected")
    assert "did you mean 'num_fragments'?" in lines[1]
    assert lines[2] == (
        "trainer.strategy.init_args.fragments: StreamingDiLoCoStrategy expects "
        "Literal['strided', 'sequential'], got 'strd'"
    )
    assert lines[3:] == ["tip: For details of accepted options run: cli.py fit --help"]


def test_delayed_cli_checks_init_args_given_on_the_command_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    lines = delayed_cli_stderr(
        monkeypatch,
        capsys,
        "--trainer.devices=1",
        "--trainer.strategy=StreamingDiLoCoStrategy",
        "--trainer.strategy.init_args.num_fragmnts=2",
    )
    assert lines[0].startswith("trainer.strategy.init_args.num_fragmnts: "), lines[:3]
    assert "did you mean 'num_fragments'?" in lines[0]


def test_delayed_cli_without_exit_on_error_raises_the_problems_as_the_message(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import argparse

    from lightning_delayed.cli import DelayedLightningCLI

    monkeypatch.setattr(sys, "argv", ["cli.py"])
    config = bad_config(tmp_path, "StreamingDiLoCoStrategy", sync_every="eight", num_fragmnts=2)
    with pytest.raises(argparse.ArgumentError) as info:
        DelayedLightningCLI(
            DigitsCNN,
            DigitsDataModule,
            run=False,
            save_config_callback=None,
            parser_kwargs={"exit_on_error": False},
            args=["--config", config],
        )
    lines = str(info.value).splitlines()
    assert [line.split(":")[0] for line in lines] == [
        "trainer.strategy.init_args.sync_every",
        "trainer.strategy.init_args.num_fragmnts",
    ]


def test_delayed_cli_leaves_other_mistakes_and_good_strategies_to_jsonargparse(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from lightning_delayed import StreamingDiLoCoStrategy
    from lightning_delayed.cli import DelayedLightningCLI

    lines = delayed_cli_stderr(
        monkeypatch, capsys, "--config", str(CONFIGS / "streaming_diloco.yaml"), "--model.lr=abc"
    )
    assert lines[0].startswith("usage:")
    assert 'error: Parser key "model.lr":' in lines
    cli = DelayedLightningCLI(
        DigitsCNN,
        DigitsDataModule,
        run=False,
        save_config_callback=None,
        args=["--config", str(CONFIGS / "streaming_diloco.yaml"), "--trainer.devices=1"],
    )
    assert isinstance(cli.trainer.strategy, StreamingDiLoCoStrategy)
    assert cli.trainer.strategy.config.sync_every == 8 and cli.trainer.strategy.config.num_fragments == 2


def test_delayed_cli_keeps_a_parser_class_of_ones_own_and_names_base_argument_types(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Arguments declared by DelayedStrategy and DDPStrategy are named with their type too."""
    from lightning.pytorch.cli import LightningArgumentParser

    from lightning_delayed.cli import DelayedArgumentParser, DelayedLightningCLI

    class MyParser(LightningArgumentParser):
        pass

    monkeypatch.setattr(sys, "argv", ["cli.py"])
    config = bad_config(tmp_path, "DiLoCoStrategy", check_finite="maybe", model_averaging_period="often")
    with pytest.raises(SystemExit):
        DelayedLightningCLI(DigitsCNN, DigitsDataModule, run=False, parser_class=MyParser, args=["--config", config])
    lines = capsys.readouterr().err.splitlines()
    # bad_config's `delay: 1` is not a DiLoCo argument (it is Streaming DiLoCo's)
    assert lines[0].startswith("trainer.strategy.init_args.delay: DiLoCoStrategy got an unexpected keyword argument")
    assert lines[1] == "trainer.strategy.init_args.check_finite: DiLoCoStrategy expects bool, got 'maybe'"
    assert lines[2] == (
        "trainer.strategy.init_args.model_averaging_period: DiLoCoStrategy expects Optional[int], got 'often'"
    )
    cli = DelayedLightningCLI(
        DigitsCNN,
        DigitsDataModule,
        run=False,
        save_config_callback=None,
        parser_class=MyParser,
        args=["--config", str(CONFIGS / "diloco.yaml"), "--trainer.devices=1"],
    )
    assert isinstance(cli.parser, MyParser) and isinstance(cli.parser, DelayedArgumentParser)
