"""The benchmark runner: argument checks, batch choice, strategy list, and a --quick smoke run."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from lightning.pytorch.strategies import Strategy

from benchmarks import run
from benchmarks.base.baselines import BASELINES, all_names, build_strategy
from benchmarks.workloads import throughput
from lightning_delayed import strategy_names


def test_every_registered_strategy_and_every_baseline_is_compared() -> None:
    names = all_names()
    assert names[: len(strategy_names())] == strategy_names()  # iterates over the registry
    assert set(BASELINES) <= set(names)
    for name in names:
        assert isinstance(build_strategy(name), Strategy), name
    with pytest.raises(ValueError, match="unknown strategy 'nope'"):
        build_strategy("nope")


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--bandwidths", "fast"], "bandwidth 'fast' is not understood"),
        (["--workloads", "speed"], "--workloads must list"),
        (["--steps", "0"], "--steps must be >= 1"),
        (["--batch-sizes", "0"], "--batch-sizes must be >= 1"),
    ],
)
def test_bad_arguments_are_refused_with_a_clear_message(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit):
        run.parse_args(argv)
    assert message in capsys.readouterr().err


def test_batch_choice_solves_the_compute_model() -> None:
    # compute-only step t(B) = 0.05 + 0.01 B; all-reduce 1.05 s -> t = A at B = 100, t = A/2 at B = 47.5
    assert throughput.choose_batches(0.05, 0.01, 1.05) == {"allreduce_eq_compute": 100, "ssgd_3x_compute": 48}
    assert throughput.choose_batches(0.05, 0.01, 0.01) == {"allreduce_eq_compute": 4, "ssgd_3x_compute": 4}  # clamped


def test_quick_run_without_root_falls_back_to_loopback_and_writes_json_markdown_and_plots(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    docs = tmp_path / "docs" / "benchmarks.md"
    # One strategy keeps it to three pairs of processes (all-reduce, throughput, digits); the monitor
    # and baseline tests cover the other families.
    argv = ["--quick", "--bandwidths", "unshaped,200mbit", "--strategies", "ssgd", "--workloads", "throughput,accuracy"]
    argv += ["--out", str(tmp_path / "results"), "--docs", str(docs), "--timeout", "240"]
    assert run.main(argv) == 0
    assert "need root" in capsys.readouterr().err and "loopback only" in docs.read_text()

    (result,) = (tmp_path / "results").glob("*.json")
    data = json.loads(result.read_text())
    assert data["meta"]["emulated"] is False and data["meta"]["bandwidths"] == ["unshaped"]
    (link,) = data["links"]
    assert link["allreduce"]["nbytes"] > 40e6 and link["allreduce"]["bytes_per_s"] > 0
    (tput,) = data["throughput"]
    assert tput["strategy"] == "ssgd" and tput["status"] == "ok" and tput["batch_size"] == 4
    for rank in tput["ranks"]:
        assert rank["samples_per_s"] > 0 and rank["bytes_per_step"] > 40e6 and rank["blocked_s_per_step"] >= 0
    (acc,) = data["accuracy"]
    assert acc["strategy"] == "ssgd" and acc["status"] == "ok"
    assert 0.0 <= acc["runs"][0]["epochs"][-1]["acc"] <= 1.0

    text = docs.read_text()
    assert "| `ssgd` |" in text and "torch " in text and "samples/s" in text
    for png in ("benchmarks_throughput.png", "benchmarks_accuracy.png"):
        assert (docs.parent / "img" / png).read_bytes()[:4] == b"\x89PNG"

    rebuilt = tmp_path / "again.md"
    assert run.main(["--report-only", "--out", str(tmp_path / "results"), "--docs", str(rebuilt)]) == 0
    assert rebuilt.read_text() == text
