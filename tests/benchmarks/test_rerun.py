"""One link's grid measured again: merged into a full run in place of its own, the earlier cells beside it."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

from benchmarks import rerun as cli
from benchmarks import run
from benchmarks.base import schema
from benchmarks.report import page
from benchmarks.report.metrics import cells, summarize
from benchmarks.report.rerun import detail, merge

RESULTS = Path(__file__).resolve().parents[2] / "benchmarks" / "results"
FULL = RESULTS / "20261122-052931.json"  # the full run of round 2: 200mbit has no grid
ROUND1 = RESULTS / "20261121-131116.json"  # round 1: a 200mbit grid, one repeat
MERGED = RESULTS / "20261203-170816.json"  # round 2 with the 200mbit grid measured again (2026-12-03)


@pytest.fixture(scope="module")
def files() -> tuple[dict[str, Any], dict[str, Any]]:
    return schema.load(FULL, run.PHASES), schema.load(ROUND1)


def _as_rerun(round1: dict[str, Any], base: dict[str, Any]) -> dict[str, Any]:
    """Round 1's file dressed as a rerun of the grid with the base's method (repeats, steps)."""
    out = copy.deepcopy(round1)
    out["meta"].update(
        repeats=base["meta"]["repeats"], steps=base["meta"]["steps"], json_path="/tmp/grid/20261203-170816.json"
    )
    return out


def test_the_rerun_grid_replaces_that_link_only_and_says_so(files: tuple[dict[str, Any], dict[str, Any]]) -> None:
    base, round1 = files
    again = _as_rerun(round1, base)
    merged = merge(base, again, "200mbit", "the grid was old", previous=round1, previous_source=ROUND1.name)
    schema.validate(merged, "merged", run.PHASES)
    on = [e for e in merged["throughput"] if e["bandwidth"] == "200mbit"]
    assert on == [e for e in again["throughput"] if e["bandwidth"] == "200mbit"] and on
    others = [e for e in merged["throughput"] if e["bandwidth"] != "200mbit"]
    assert others == [e for e in base["throughput"] if e["bandwidth"] != "200mbit"]
    link = {x["bandwidth"]: x for x in merged["links"]}
    assert link["200mbit"] == next(x for x in again["links"] if x["bandwidth"] == "200mbit")
    assert [x["bandwidth"] for x in merged["links"]] == base["meta"]["bandwidths"]
    assert merged["meta"]["throughput_bandwidths"] == ["unshaped", "1gbit", "200mbit"]
    assert merged["meta"]["reruns"]["throughput 200mbit"]["why"].startswith("the grid was old")
    assert "peer" in merged["meta"]["reruns"] and merged["lm"] == base["lm"]
    assert base["meta"]["throughput_bandwidths"] == ["unshaped", "1gbit"]  # the base is not changed


def test_the_earlier_cells_are_the_metrics_of_the_earlier_runs(files: tuple[dict[str, Any], dict[str, Any]]) -> None:
    base, round1 = files
    merged = merge(base, _as_rerun(round1, base), "200mbit", "why", previous=round1, previous_source=ROUND1.name)
    was = merged["throughput_before"]
    want = [c for c in cells(summarize(round1)) if c["bandwidth"] == "200mbit"]
    assert len(was["cells"]) == len(want) > 0
    for got, c in zip(was["cells"], want, strict=True):
        assert (got["strategy"], got["batch_size"], got["x_ssgd"]) == (c["strategy"], c["batch_size"], c["x_ssgd"])
    assert was["batches"] == {"allreduce_eq_compute": 512, "ssgd_3x_compute": 290} and was["repeats"] == 1
    assert was["steps"] == 8


def test_the_page_shows_both_grids_side_by_side(files: tuple[dict[str, Any], dict[str, Any]]) -> None:
    base, round1 = files
    merged = merge(base, _as_rerun(round1, base), "200mbit", "why", previous=round1, previous_source=ROUND1.name)
    text = page.markdown(merged, [])
    assert "The throughput grid on 200mbit was measured again after this run, alone" in text
    assert "### 200mbit, batch 512 per rank" in text  # the grid itself, in the throughput section
    assert f"### 200mbit: this measurement next to the earlier one ({ROUND1.name}" in text
    assert "#### `allreduce_eq_compute`: batch 512 then" in text and "#### `ssgd_3x_compute`: batch 290 then" in text
    row = next(line for line in text.splitlines() if line.startswith("| `ssgd` | ") and "+0.00" in line)
    assert row.count("1.00") >= 2  # ssgd is 1.00x itself, then and now
    assert "this measurement next to" not in page.markdown(base, [])


def test_a_rerun_of_another_method_or_without_the_link_is_refused(
    files: tuple[dict[str, Any], dict[str, Any]],
) -> None:
    base, round1 = files
    with pytest.raises(SystemExit, match=r"repeats/steps \(1/8\) differ from the base's \(3/24\)"):
        merge(base, round1, "200mbit", "why")
    with pytest.raises(SystemExit, match="the rerun has no throughput grid on 50mbit"):
        merge(base, _as_rerun(round1, base), "50mbit", "why")


def test_the_command_writes_the_merged_file_under_the_rerun_stamp_and_the_page(
    files: tuple[dict[str, Any], dict[str, Any]], tmp_path: Path
) -> None:
    base, round1 = files
    again = tmp_path / "again.json"
    schema.write(again, _as_rerun(round1, base))
    docs = tmp_path / "docs" / "benchmarks.md"
    args = ["--base", str(FULL), "--rerun", str(again), "--previous", str(ROUND1), "--bandwidth", "200mbit"]
    assert cli.main([*args, "--why", "old", "--out", str(tmp_path), "--docs", str(docs)]) == 0
    merged = schema.load(tmp_path / "20261203-170816.json", run.PHASES)
    assert merged["meta"]["json_path"] == str(tmp_path / "20261203-170816.json")
    assert "this measurement next to the earlier one" in docs.read_text()


def _with_cpu_split(data: dict[str, Any]) -> dict[str, Any]:
    """``data`` as if run with --cpu-split: each rank's split is (main, gloo, other) = step x (0.8, 0.3, 0.01)."""
    out = copy.deepcopy(data)
    for e in out["throughput"]:
        for r in e.get("ranks", []):
            r["cpu_split_s_per_step"] = {"main": 0.8 * r["step_s"], "gloo": 0.3 * r["step_s"], "other": 0.01}
    return out


def test_a_cpu_split_run_is_a_section_of_its_own_with_the_threads_per_step(
    files: tuple[dict[str, Any], dict[str, Any]],
) -> None:
    base, round1 = files
    merged = merge(base, _as_rerun(round1, base), "200mbit", "why")
    small = _with_cpu_split(round1)
    merged["throughput_detail"] = detail(small, "split.json", "Where odsgd's time goes.")
    schema.validate(merged, "merged", run.PHASES)
    text = page.markdown(merged, [])
    assert "CPU by thread" in text and "Where odsgd's time goes. Measured alone:" in text
    cell = next(c for c in merged["throughput_detail"]["cells"] if c["strategy"] == "odsgd" and c["cpu_split"])
    row = next(line for line in text.splitlines() if line.startswith("| `odsgd` | ") and "gloo" not in line)
    main, gloo = cell["cpu_split"]["main"] * 1000, cell["cpu_split"]["gloo"] * 1000
    assert f"| {main:.0f} | {gloo:.0f} | 10 |" in text, row
    assert cell["cpu_split"]["main"] == pytest.approx(0.8 * cell["step_s"], rel=0.2)


def test_the_runner_asks_every_compared_run_for_the_cpu_split_when_given() -> None:
    from benchmarks.workloads import throughput

    seen: list[list[str]] = []

    class Runner:
        def run(self, task: str, argv: list[str]) -> list[dict[str, Any]]:
            seen.append([task, *argv])
            if task == "allreduce":
                return [{"nbytes": 8, "bytes_per_s": 1e9, "seconds_per_op": 1e-3}] * 2
            fig = {"samples_per_s": 10.0, "step_s": 0.1, "blocked_s_per_step": 0.0, "bytes_per_step": 0.0}
            return [{**fig, "peak_rss_mb": 1.0, "wire_bytes_per_step": None}] * 2

    class Link:
        def shape(self, rate: int | None) -> None:
            pass

    for flag, want in (([], False), (["--cpu-split"], True)):
        seen.clear()
        args = run.parse_args(["--bandwidths", "unshaped", "--strategies", "ssgd,odsgd", "--repeats", "1", *flag])
        out: dict[str, Any] = {"throughput": [], "links": []}
        throughput.measure(args, Link(), Runner(), out, lambda *a: None)  # type: ignore[arg-type]
        runs = [c for c in seen if c[0] == "throughput"]
        assert len(runs) == 2 and all(("--cpu-split" in c) == want for c in runs)


def test_the_side_by_side_heading_gives_the_same_ratio_as_the_grid_s_own_table() -> None:
    """Both read ssgd / compute off the cells' medians (a per-run value would be one round's)."""
    import re

    data = schema.load(MERGED, run.PHASES)
    text = page.markdown(data, [])
    for batch in data["links"][-1]["batches"].values():
        grid = re.search(rf"### 200mbit, batch {batch} per rank \(ssgd step / compute-only step = ([0-9.]+)\)", text)
        pair = re.search(rf"batch {batch} now \(ssgd / compute = ([0-9.]+)\)", text)
        assert grid and pair and grid.group(1) == pair.group(1), batch
