"""The shared pieces of the benchmark workers that fit several times in one process, and those workers run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.base.rank import FitEnvironment, bench_trainer
from tests.helpers.launch import REPO, child_env, free_port


def test_fit_environment_puts_back_what_a_teardown_deleted_or_changed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "1")
    monkeypatch.delenv("LD_BENCH_TEST_LATER", raising=False)
    env = FitEnvironment()
    monkeypatch.delenv("WORLD_SIZE")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    monkeypatch.setenv("LD_BENCH_TEST_LATER", "x")
    env.restore()
    assert os.environ["WORLD_SIZE"] == "2" and os.environ["LOCAL_WORLD_SIZE"] == "1"
    assert os.environ["LD_BENCH_TEST_LATER"] == "x"  # set since the snapshot: left alone


def test_bench_trainer_holds_the_common_arguments_and_takes_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WORLD_SIZE", "1")
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    trainer = bench_trainer("auto", max_steps=3)
    assert trainer.max_steps == 3 and trainer.logger is None and trainer.checkpoint_callback is None
    assert trainer.limit_val_batches == 0 and trainer.num_sanity_val_steps == 0
    assert not trainer._accelerator_connector.use_distributed_sampler
    assert trainer.num_devices == 1 and trainer.num_nodes == 1
    trainer = bench_trainer("auto", limit_val_batches=None, use_distributed_sampler=True)
    assert trainer.limit_val_batches == 1.0 and trainer._accelerator_connector.use_distributed_sampler


def _worker(module: str, extra: list[str], result: Path) -> dict[str, object]:
    env = child_env(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()), WORLD_SIZE="1", RANK="0", LOCAL_RANK="0",
        OMP_NUM_THREADS="1", PYTHONPATH=str(REPO),
    )  # fmt: skip
    cmd = [sys.executable, "-m", module, "--worker", "--result", str(result), *extra]
    proc = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(Path(f"{result}.rank0.json").read_text())


def test_own_cost_worker_runs_every_fit_of_every_round_in_one_process(tmp_path: Path) -> None:
    extra = ["--task", "own_cost", "--strategies", "ssgd", "--steps", "4", "--warmup", "1", "--repeats", "2"]
    out = _worker("benchmarks.workloads.own_cost.cli", [*extra, "--batch-size", "2"], tmp_path / "r")
    assert [[f["name"] for f in r] for r in out["rounds"]] == [["compute_only", "ssgd", "compute_only"]] * 2
    for fit in (f for r in out["rounds"] for f in r):
        assert fit["step_s"] > 0 and fit["mean_step_s"] > 0 and fit["cpu_s_per_step"]


def test_projection_mlp_worker_runs_every_strategy_of_every_round_in_one_process(tmp_path: Path) -> None:
    extra = ["--task", "mlp", "--strategy", "ssgd,compute_only", "--rounds", "2", "--steps", "2", "--warmup", "1"]
    out = _worker("benchmarks.workloads.scaling.cli", [*extra, "--batch-size", "4"], tmp_path / "r")
    assert [(r["round"], r["strategy"]) for r in out["runs"]] == [
        (0, "ssgd"),
        (0, "compute_only"),
        (1, "ssgd"),
        (1, "compute_only"),
    ]
    assert all(r["step_s"] > 0 for r in out["runs"])
