"""The benchmark method without processes: interleaving, per-round ratios, medians, the noise rule, budget, phases."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import pytest

from benchmarks import run
from benchmarks.base import schema
from benchmarks.report import metrics
from benchmarks.report import page as report
from benchmarks.workloads import throughput

if TYPE_CHECKING:
    from pathlib import Path

BATCH = 8


def entry(name: str, round_: int, sps: float, bw: str = "unshaped", nbytes: float = 1e6) -> dict[str, Any]:
    """A throughput run of 2 ranks with ``sps`` samples/s in all (each rank: half, step = batch / half)."""
    rank = {
        "samples_per_s": sps / 2,
        "step_s": BATCH / (sps / 2),
        "blocked_s_per_step": 0.0,
        "bytes_per_step": nbytes if name != "compute_only" else 0.0,
        "wire_bytes_per_step": None,
        "peak_rss_mb": 100.0,
    }
    return {
        "bandwidth": bw,
        "bps": None,
        "batch_size": BATCH,
        "strategy": name,
        "role": "compare",
        "round": round_,
        "status": "ok",
        "ranks": [rank, dict(rank)],
    }


SPS = {  # samples/s per round: (round 0, round 1)
    "ssgd": (100.0, 80.0),
    "odsgd": (90.0, 96.0),
    "local_sgd": (150.0, 150.0),
    "dasgd": (80.0, 70.0),
    "cocodsgd": (220.0, 170.0),  # x compute 1.10 and 1.06: faster than its bound, noise
    "compute_only": (200.0, 160.0),
}


def results(tmp_path: Path) -> dict[str, Any]:
    throughput = [entry(name, r, SPS[name][r]) for r in range(2) for name in SPS]
    return {
        "meta": {
            "date": "2026-11-22T02:00:00",
            "machine": {"cpu": "test cpu", "cores": 2, "memory_bytes": 2**30, "system": "Linux"},
            "versions": dict.fromkeys(("torch", "lightning", "torchvision", "lightning_delayed", "python"), "1"),
            "emulated": True,
            "fallback_reason": None,
            "quick": False,
            "bandwidths": ["unshaped"],
            "throughput_bandwidths": ["unshaped"],
            "steps": 24,
            "warmup": 3,
            "repeats": 2,
            "sync_every": 4,
            "strategy_kwargs": {},
            "epochs": 1,
            "seeds": [0],
            "target_acc": 0.9,
            "command": "python -m benchmarks.run",
            "json_path": str(tmp_path / "20261122-020000.json"),
        },
        "links": [
            {
                "bandwidth": "unshaped",
                "bps": None,
                "allreduce": {"nbytes": 50_000_000, "bytes_per_s": 1e9, "seconds_per_op": 0.05},
            }
        ],
        "throughput": throughput,
        "accuracy": [],
    }


def test_rounds_run_every_strategy_once_in_the_same_order() -> None:
    assert throughput.interleave(["a", "b", "c"], 2) == [(0, "a"), (0, "b"), (0, "c"), (1, "a"), (1, "b"), (1, "c")]


def test_ratios_are_taken_per_round_then_summarised_as_median_and_range(tmp_path: Path) -> None:
    rows = report.summarize(results(tmp_path))
    odsgd = [r for r in rows if r["strategy"] == "odsgd"]
    assert [r["round"] for r in odsgd] == [0, 1]
    assert [r["x_ssgd"] for r in odsgd] == pytest.approx([0.9, 1.2])  # 90/100 and 96/80, not 93/90
    assert [r["x_compute"] for r in odsgd] == pytest.approx([0.45, 0.6])
    cell = next(c for c in report.cells(rows) if c["strategy"] == "odsgd")
    assert cell["repeats"] == 2 and cell["failed"] == 0
    assert cell["x_ssgd"] == pytest.approx(1.05) and cell["x_ssgd_range"] == pytest.approx((0.9, 1.2))
    assert cell["samples_per_s"] == pytest.approx(93.0) and cell["samples_per_s_range"] == (90.0, 96.0)
    assert cell["x_limit"] == pytest.approx(0.525)  # the link (1 ms) is faster than compute: limit = compute
    assert report._spread(cell, "x_ssgd", ".2f") == "1.05 [0.90, 1.20]"


def test_a_cell_above_its_own_limit_is_noise_and_left_out_of_the_targets(tmp_path: Path) -> None:
    cells = {c["strategy"]: c for c in report.cells(report.summarize(results(tmp_path)))}
    assert cells["cocodsgd"]["x_limit"] == pytest.approx((1.1 + 1.0625) / 2)
    assert cells["cocodsgd"]["noise"] and not cells["odsgd"]["noise"] and not cells["compute_only"]["noise"]
    lines = report.targets(list(cells.values()), [])
    assert all("cocodsgd" not in measured for _, measured, _ in lines)
    (lock,) = [line for line in lines if "lock-step" in line[0]]
    assert "0.95x ssgd" in lock[0] and "sasgd" not in lock[0] and "streaming_diloco" in lock[0]
    assert lock[2] == "MISSED" and lock[1].startswith("min 0.84x (dasgd") and "below: dasgd" in lock[1]


def test_a_failed_repeat_is_counted_and_the_others_still_summarised(tmp_path: Path) -> None:
    data = results(tmp_path)
    data["throughput"].append({**entry("odsgd", 2, 1.0), "status": "failed", "ranks": []})
    cell = next(c for c in report.cells(report.summarize(data)) if c["strategy"] == "odsgd")
    assert cell["repeats"] == 2 and cell["failed"] == 1 and cell["samples_per_s"] == pytest.approx(93.0)


def test_latest_json_picks_only_dated_results(tmp_path: Path) -> None:
    for name in ("20261121-131116.json", "20261122-010203.json", "contention-20261123-000000.json", "groups_wire.json"):
        (tmp_path / name).write_text("{}")
    assert schema.latest(tmp_path).name == "20261122-010203.json"
    with pytest.raises(SystemExit, match="no results JSON"):
        schema.latest(tmp_path / "contention-only")


def test_budget_estimate_counts_start_up_and_warm_up_plus_steps_per_run() -> None:
    prev = {
        "links": [
            {"bandwidth": "unshaped", "allreduce": {"seconds_per_op": 0.1}, "batches": {"default": 32}},
            {"bandwidth": "1gbit", "allreduce": {"seconds_per_op": 0.5}, "batches": {"allreduce_eq_compute": 20}},
        ],
        "throughput": [
            {**entry("compute_only", 0, 80.0), "batch_size": 32},  # step 0.2 s
            {**entry("ssgd", 0, 80.0 / 3, bw="1gbit"), "batch_size": 20},  # step 0.6 s
            {**entry("compute_only", 0, 160.0, bw="1gbit"), "batch_size": 20},  # step 0.1 s
        ],
    }
    argv = ["--bandwidths", "unshaped,1gbit", "--throughput-bandwidths", "1gbit", "--strategies", "ssgd,compute_only"]
    args = run.parse_args([*argv, "--repeats", "2", "--steps", "4", "--warmup", "1", "--workloads", "throughput"])
    parts = throughput.estimate_throughput_s(args, throughput.strategy_list(args.strategies), prev)
    start = throughput.STARTUP_S
    assert parts["all-reduce"] == pytest.approx(start + 4 * 0.1 + start + 4 * 0.5)  # 1 warm-up + 3 timed ops
    assert parts["calibration"] == pytest.approx(2 * (start + 5 * 0.2))  # nearest batch of compute_only
    probe, rounds = start + 5 * 0.6, 2 * (start + 5 * 0.6 + start + 5 * 0.1)
    assert parts["throughput 1gbit"] == pytest.approx(probe + rounds)
    assert "throughput unshaped" not in parts  # all-reduce only there
    assert throughput.step_estimate(prev, "1gbit", 20, "odsgd") == pytest.approx(0.35)  # unknown: the link's median


def test_default_grid_is_a_subset_and_every_bandwidth_keeps_its_all_reduce() -> None:
    args = run.parse_args(["--workloads", "throughput"])
    assert (args.steps, args.warmup, args.repeats) == (24, 3, 3)
    assert args.rates == [None, 10**9, 2 * 10**8] and args.grid_rates == [None, 10**9]
    assert run.parse_args(["--bandwidths", "200mbit", "--workloads", "throughput"]).grid_rates == [2 * 10**8]


@pytest.fixture
def fake_phase(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(run.PHASES, "fake", "tests.benchmarks.fake_phase")
    monkeypatch.setitem(run.PHASES, "ghost", "tests.benchmarks.no_such_phase")


@pytest.mark.usefixtures("fake_phase")
def test_phases_register_options_run_in_order_write_json_and_render(tmp_path: Path) -> None:
    args = run.parse_args(["--workloads", "fake", "--fake-size", "3", "--out", str(tmp_path)])
    assert args.workload_list == ["fake"] and args.fake_size == 3
    data = results(tmp_path)
    run.measure(args, None, None, data)  # type: ignore[arg-type]  # the fake phase needs no link
    assert data["fake"] == {"size": 3, "seen_throughput": len(SPS) * 2}
    assert json.loads((tmp_path / "20261122-020000.json").read_text())["fake"]["size"] == 3
    docs = tmp_path / "docs" / "b.md"
    report.write_report(data, docs, run.phases())
    text = docs.read_text()
    assert "## Fake phase\n\nsize 3" in text and "| `cocodsgd` |" in text and "**noise**" in text
    assert "Left out as noise (median x limit > 1.05): `cocodsgd` (unshaped, B=8)." in text
    assert (docs.parent / "img" / "benchmarks_throughput.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.usefixtures("fake_phase")
def test_a_failing_phase_is_recorded_and_rendered_without_losing_the_rest(tmp_path: Path) -> None:
    args = run.parse_args(["--workloads", "fake", "--fake-size", "-1", "--out", str(tmp_path)])
    data = results(tmp_path)
    run.measure(args, None, None, data)  # type: ignore[arg-type]
    assert data["fake"]["status"] == "failed" and "fake phase asked to fail" in data["fake"]["error"]
    assert "fake" in json.loads((tmp_path / "20261122-020000.json").read_text())
    assert "RuntimeError: fake phase asked to fail" in "\n".join(report.phase_sections(data, tmp_path, run.phases()))


@pytest.mark.usefixtures("fake_phase")
def test_a_missing_phase_module_is_an_error_only_when_asked_for(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit):
        run.parse_args(["--workloads", "throughput,ghost"])
    assert "tests.benchmarks.no_such_phase" in capsys.readouterr().err
    monkeypatch.setattr(run, "DEFAULT_WORKLOADS", "throughput,ghost,fake")
    args = run.parse_args([])
    assert args.workload_list == ["throughput", "fake"] and args.skipped_phases == ["ghost"]
    assert run.parse_args(["--quick"]).workload_list == ["throughput", "fake"]


def test_the_bound_is_measured_like_the_strategies_so_it_is_exactly_its_own_limit(tmp_path: Path) -> None:
    data = results(tmp_path)
    bound = next(e for e in data["throughput"] if e["strategy"] == "compute_only")
    bound["ranks"][1] = {**bound["ranks"][1], "samples_per_s": 60.0, "step_s": BATCH / 60.0}  # ranks unequal
    cell = next(c for c in report.cells(report.summarize(data)) if c["strategy"] == "compute_only")
    assert cell["x_limit_range"] == pytest.approx((1.0, 1.0)) and not cell["noise"]


def test_a_lock_step_strategy_below_target_gets_a_when_not_to_use_sentence_with_its_own_cost(tmp_path: Path) -> None:
    rows = report.cells(report.summarize(results(tmp_path)))
    own_cost = {
        "cells": {"dasgd": {"own_cost": {"median": 0.12, "min": 0.1, "max": 0.2}}},
        "cpu_s_per_step": {"compute_only": {"main": 0.150}, "dasgd": {"main": 0.170}},
    }
    (sentence,) = report.when_not_to_use(rows, own_cost)  # dasgd only: odsgd is 1.05x, cocodsgd is noise
    assert sentence.startswith("`dasgd` ran at 0.84x `ssgd`") and "step is 2.00x the compute-only step" in sentence
    assert "+12.0 % of the compute-only step" in sentence and "+20 ms of main-thread CPU" in sentence
    assert report.when_not_to_use([r for r in rows if r["strategy"] != "dasgd"]) == []
    without_bound = {**results(tmp_path)}
    without_bound["throughput"] = [e for e in without_bound["throughput"] if e["strategy"] != "compute_only"]
    assert report.when_not_to_use(report.cells(report.summarize(without_bound))) == []  # no ratio to compute-only
    page = report.markdown(results(tmp_path), [])
    assert "## When not to use a strategy" in page and "`dasgd` ran at 0.84x" in page


def test_a_ratio_target_is_judged_only_at_a_setting_near_its_ratio() -> None:
    sets = [
        {"bandwidth": "unshaped", "batch_size": 32, "ssgd_over_compute": 2.9},
        {"bandwidth": "1gbit", "batch_size": 63, "ssgd_over_compute": 1.98},
    ]
    assert metrics.closest_setting(sets, 2.0) == sets[1]
    assert metrics.closest_setting(sets, 3.0) is None  # 1.98 is 34 % away; the unshaped link never stands for a setting
    odsgd = {"bandwidth": "1gbit", "batch_size": 63, "strategy": "odsgd", "samples_per_s": 1.0, "x_ssgd": 1.2}
    ssgd = {"bandwidth": "1gbit", "batch_size": 63, "strategy": "ssgd", "samples_per_s": 1.0, "x_compute": 1 / 1.98}
    lines = {t: (m, v) for t, m, v in report.targets([ssgd, odsgd], [])}
    assert lines["odsgd >= 1.25x ssgd where all-reduce ~ compute"][1] == "MISSED"
    assert lines["dasgd >= 2.0x ssgd where ssgd step ~ 3x compute"] == ("no such setting in this run", "not measured")


def test_a_phase_measured_again_alone_is_named_on_the_page(tmp_path: Path) -> None:
    data = results(tmp_path)
    data["meta"]["reruns"] = {"lm": {"command": "python -m benchmarks.lm", "date": "d", "seconds": 700, "why": "x."}}
    assert "Phase `lm` was measured again after this run, alone (`python -m benchmarks.lm`, d, 700 s): x." in (
        report.markdown(data, [])
    )


def test_every_default_phase_has_a_budget_estimate() -> None:
    """The budget printed at start covers the whole default run: no phase is left out of it."""

    args = run.parse_args([])
    for name in run.DEFAULT_WORKLOADS.split(","):
        if name == "throughput":
            continue  # estimated from the previous results by estimate_throughput_s
        phase = run.load_phase(name)
        assert phase is not None and phase.estimate_s(args) > 0, name
        from benchmarks.workloads.peer import runner as peer_runner
    from benchmarks.workloads.lm import runner as lm_runner

    assert lm_runner.estimate_s(args) == pytest.approx(8 * (lm_runner.SPAWN_S + 3 * (20.0 + lm_runner.RUN_OVERHEAD_S)))
    assert peer_runner.estimate_s(args) == pytest.approx(
        6 * 2 * (peer_runner.RUN_START_S + peer_runner.PEER_STEP_S * 64)
    )
