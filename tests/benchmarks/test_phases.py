"""The phase registry and the GPU path of the runner, without processes, network or GPU."""

from __future__ import annotations

import ast
import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from benchmarks import run
from benchmarks.base import netns
from benchmarks.base.launch import Runner
from benchmarks.base.phase import Phase

if TYPE_CHECKING:
    from collections.abc import Iterator

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
FLOORS = {"base": 0, "workloads": 1, "report": 2, "run": 3}
"""benchmarks/<floor>/...: a module may import its own floor and those below, never one above."""


@pytest.mark.parametrize("name", list(run.PHASES))
def test_every_registered_phase_declares_itself_once_with_every_attribute(name: str) -> None:
    phase = run.load_phase(name)
    assert isinstance(phase, Phase) and phase.name == name
    for field in dataclasses.fields(Phase):
        assert getattr(phase, field.name), (name, field.name)
    assert phase.writes[0] == name
    args = run.parse_args([])
    assert phase.estimate_s(args) > 0


def test_a_workload_is_one_module_and_one_line(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setitem(run.PHASES, "fake", "tests.benchmarks.fake_phase")  # the one line
    assert run.parse_args(["--workloads", "fake", "--fake-size", "2"]).fake_size == 2
    assert "fake" in run.phases() and isinstance(run.phases()["fake"], Phase)


def test_a_module_declaring_another_name_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(run.PHASES, "other", "tests.benchmarks.fake_phase")
    with pytest.raises(TypeError, match=r"must declare PHASE = Phase\(name='other'"):
        run.load_phase("other")


def test_a_phase_must_write_its_own_results_key() -> None:
    with pytest.raises(ValueError, match="writes must start with its results key 'x'"):
        Phase(name="x", add_args=print, measure=print, section=print, estimate_s=print, writes=("y",))  # type: ignore[arg-type]


def _imports(path: Path) -> Iterator[str]:
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            yield node.module
        elif isinstance(node, ast.Import):
            yield from (a.name for a in node.names)


def _floor(module: str) -> int | None:
    parts = module.split(".")
    if parts[0] != "benchmarks" or len(parts) < 2:
        return None
    return FLOORS.get(parts[1])


@pytest.mark.parametrize(
    "path", sorted(p for p in BENCHMARKS.rglob("*.py") if p.parent.name != "results"), ids=lambda p: p.name
)
def test_no_module_imports_a_floor_above_its_own(path: Path) -> None:
    rel = path.relative_to(BENCHMARKS.parent).with_suffix("")
    own = _floor(".".join(rel.parts))
    above = [m for m in _imports(path) if (f := _floor(m)) is not None and own is not None and f > own]
    assert not above, f"{rel} (floor {own}) imports {above}"


# ------------------------------------------------------------------------------------------- GPU


def test_gpu_runs_skip_link_emulation_and_give_each_rank_its_device(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import torch
    import torch.distributed as dist

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(dist, "is_nccl_available", lambda: True)
    monkeypatch.setattr(netns, "can_emulate", lambda: (True, "root"))  # even as root: no namespaces
    args = run.parse_args(["--accelerator", "gpu", "--workloads", "throughput"])
    emulate, why = run.link_plan(args)
    assert not emulate and "NCCL" in why and "no link emulation" in why
    runner = Runner(netns.LOOPBACK, tmp_path, 1.0, accelerator=args.accelerator)
    envs = [runner.env(rank, 2, 29500) for rank in range(2)]
    assert [e["CUDA_VISIBLE_DEVICES"] for e in envs] == ["0", "1"]
    assert all(e["LD_BENCH_ACCELERATOR"] == "gpu" for e in envs)
    with pytest.raises(ValueError, match="without link emulation"):
        Runner(netns.new_link(), tmp_path, 1.0, accelerator="gpu")


def test_the_gpu_worker_builds_a_one_device_gpu_trainer(monkeypatch: pytest.MonkeyPatch) -> None:
    import lightning.pytorch as pl

    from benchmarks.base import rank

    seen: dict[str, object] = {}
    monkeypatch.setattr(pl, "Trainer", lambda **kw: seen.update(kw))
    monkeypatch.setenv("LD_BENCH_ACCELERATOR", "gpu")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    rank.bench_trainer("ssgd")
    assert (seen["accelerator"], seen["devices"], seen["num_nodes"]) == ("gpu", 1, 2)
    assert rank.backend() == "nccl"
    monkeypatch.setenv("LD_BENCH_ACCELERATOR", "cpu")
    rank.bench_trainer("ssgd")
    assert seen["accelerator"] == "cpu" and rank.backend() == "gloo"


def test_asking_for_gpus_where_there_are_none_is_refused(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit):
        run.parse_args(["--accelerator", "gpu"])
    assert "--accelerator gpu: no CUDA device here" in capsys.readouterr().err


def test_the_page_says_when_no_gpu_was_lent_and_how_a_gpu_run_differs() -> None:
    from benchmarks.base import schema
    from benchmarks.report import page

    data = schema.load(schema.latest(BENCHMARKS / "results"))
    assert "accelerator" not in data["meta"]  # older than --accelerator: cpu
    cpu = page.markdown(data, [])
    assert "No GPU was lent for these figures" in cpu and "one compute thread each" in cpu
    data["meta"].update(accelerator="gpu", emulated=False, fallback_reason="--accelerator gpu")
    gpu = page.markdown(data, [])
    assert "No GPU was lent" not in gpu
    assert "2 ranks, one CUDA device each, NCCL, on the GPUs' own interconnect, not emulated" in gpu


@pytest.mark.parametrize(
    "path", sorted(p for p in BENCHMARKS.rglob("*.py") if p.parent.name != "results"), ids=lambda p: p.name
)
def test_no_module_is_over_about_400_lines(path: Path) -> None:
    assert len(path.read_text().splitlines()) <= 400, path.relative_to(BENCHMARKS.parent)


def test_a_gpu_run_never_builds_namespaces_and_records_why(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import json

    import torch
    import torch.distributed as dist

    from benchmarks.base import launch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(dist, "is_nccl_available", lambda: True)
    monkeypatch.setattr(netns, "can_emulate", lambda: (True, "root"))

    def no_namespaces(*a: object, **k: object) -> None:
        raise AssertionError("a GPU run must not emulate links")

    monkeypatch.setattr(netns, "emulated_link", no_namespaces)
    monkeypatch.setattr(launch.netns, "remove_stale", no_namespaces)
    seen: list[Runner] = []
    monkeypatch.setattr(run, "measure", lambda args, shaped, runner, out: seen.append(runner))
    monkeypatch.setattr(run, "print_budget", lambda args: None)
    argv = ["--accelerator", "gpu", "--workloads", "throughput", "--bandwidths", "unshaped,200mbit"]
    assert run.main([*argv, "--out", str(tmp_path), "--docs", str(tmp_path / "b.md")]) == 0
    (runner,) = seen
    assert runner.accelerator == "gpu" and not runner.link.emulated
    (path,) = tmp_path.glob("2*.json")
    meta = json.loads(path.read_text())["meta"]
    assert meta["accelerator"] == "gpu" and meta["emulated"] is False and "no link emulation" in meta["fallback_reason"]
    assert meta["bandwidths"] == ["unshaped"]
    assert "NOTE: --accelerator gpu: NCCL over the GPUs' own interconnect" in capsys.readouterr().err
    assert "one CUDA device each, NCCL" in (tmp_path / "b.md").read_text()
