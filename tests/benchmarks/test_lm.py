"""Pure logic of the language-model phase: time to target, summaries, and the markdown section."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from benchmarks.workloads.lm import common as lm_common
from benchmarks.workloads.lm import report as lm_report
from benchmarks.workloads.lm import runner as lm_runner

if TYPE_CHECKING:
    from pathlib import Path


def _points(*pairs: tuple[float, float]) -> list[dict[str, float]]:
    return [{"step": 10 * (i + 1), "wall_s": w, "loss": loss} for i, (w, loss) in enumerate(pairs)]


def test_time_to_target_is_the_first_validation_at_or_below_it() -> None:
    pts = _points((5.0, 3.0), (10.0, 2.5), (15.0, 2.2), (20.0, 2.6), (25.0, 2.1))
    assert lm_common.time_to_target(pts, 2.5) == 10.0  # "at" counts
    assert lm_common.time_to_target(pts, 2.3) == 15.0  # the first crossing, not the last
    assert lm_common.time_to_target(pts, 2.0) is None
    assert lm_common.time_to_target([], 9.0) is None


def test_spread_and_summary_report_not_reached_runs_with_their_final_loss() -> None:
    assert lm_common.spread([]) is None
    assert lm_common.spread([3.0, 1.0, 2.0]) == {"median": 2.0, "min": 1.0, "max": 3.0}
    entry = {
        "strategy": "ssgd",
        "runs": [
            {"seed": 0, "points": _points((4.0, 2.6), (8.0, 2.3)), "steps": 20, "wall_s": 8.0},
            {"seed": 1, "points": _points((4.0, 2.7), (8.0, 2.4)), "steps": 20, "wall_s": 10.0},
            {"seed": 2, "points": _points((3.0, 2.2), (6.0, 2.1)), "steps": 20, "wall_s": 6.0},
        ],
    }
    row = lm_common.summarize(entry, 2.3)
    assert (row["seeds"], row["reached"]) == (3, 2)
    assert row["time_to_target_s"] == {"median": 5.5, "min": 3.0, "max": 8.0}
    assert row["not_reached"] == [{"seed": 1, "final_loss": 2.4}]
    assert row["final_loss"] == {"median": 2.3, "min": 2.1, "max": 2.4}
    assert row["step_s"] == {"median": 0.4, "min": 0.3, "max": 0.5}


def test_sync_periods_and_options() -> None:
    assert lm_common.sync_every("diloco") == lm_common.sync_every("streaming_diloco") == lm_common.DILOCO_SYNC_EVERY
    assert lm_common.sync_every("cocodsgd") == lm_common.SYNC_EVERY
    p = argparse.ArgumentParser()
    lm_runner.add_args(p)
    args = p.parse_args([])
    assert args.lm_strategies.split(",") == list(lm_common.STRATEGIES)
    assert all(a.dest.startswith("lm_") for a in p._actions if a.dest != "help")


def test_section_renders_table_plot_and_failures(tmp_path: Path) -> None:
    run: dict[str, Any] = {
        "seed": 0,
        "initial_loss": 4.6,
        "points": _points((5.0, 2.6), (10.0, 2.2)),
        "steps": 20,
        "wall_s": 10.0,
    }
    data = {
        "lm": {
            "bandwidth": "200mbit",
            "emulated": True,
            "model": dict(lm_common.MODEL),
            "batch_size": 16,
            "optimizer": "AdamW",
            "sync_every": {"cocodsgd": 4, "diloco": 10},
            "seeds": [0],
            "max_steps": 400,
            "max_wall_s": 25.0,
            "val_every": 10,
            "val_windows": 64,
            "target_loss": 2.3,
            "data": {
                "source": "stdlib",
                "files": 1,
                "train_chars": 10,
                "val_chars": 2,
                "split": "crc",
                "vocab_size": 98,
                "sha256": "ab",
            },
            "entries": [
                {"strategy": "ssgd", "status": "ok", "runs": [run], "params": 1_400_000},
                {"strategy": "odsgd", "status": "failed", "error": "boom"},
            ],
        }
    }
    data["lm"]["summary"] = [lm_common.summarize(data["lm"]["entries"][0], 2.3)]
    text = lm_report.section(data, tmp_path)
    assert text.startswith("## ")
    assert "| `ssgd` | 1/1 | 10.0 (10.0-10.0) |" in text
    assert "| `odsgd` | failed |" in text
    assert "`diloco` 10" in text
    assert (tmp_path / "benchmarks_lm.png").stat().st_size > 0
    assert lm_report.section({}, tmp_path) == ""


def test_schedule_is_one_pair_per_strategy_or_seed_major() -> None:
    assert lm_common.schedule(["a", "b"], [0, 1], interleave=False) == [("a", [0, 1]), ("b", [0, 1])]
    assert lm_common.schedule(["a", "b"], [0, 1], interleave=True) == [("a", [0]), ("b", [0]), ("a", [1]), ("b", [1])]


def test_every_seed_of_a_worker_trains_although_lightning_drops_world_size_after_a_fit(tmp_path: Path) -> None:
    """Seeds run one after another in one process; Lightning's environment deletes WORLD_SIZE at teardown."""
    import json
    import subprocess
    import sys

    from tests.helpers.launch import REPO, child_env, free_port

    env = child_env(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()), WORLD_SIZE="1", RANK="0", LOCAL_RANK="0",
        OMP_NUM_THREADS="1", PYTHONPATH=str(REPO),
    )  # fmt: skip
    cmd = [
        sys.executable,
        "-m",
        "benchmarks.workloads.lm.cli",
        "--worker",
        "--strategy",
        "ssgd",
        "--result",
        str(tmp_path / "r"),
    ]
    cmd += ["--lm-seeds", "0,1", "--lm-max-steps", "2", "--lm-val-every", "1"]
    proc = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = json.loads((tmp_path / "r.rank0.json").read_text())["runs"]
    assert [(r["seed"], r["steps"], len(r["points"])) for r in runs] == [(0, 2, 2), (1, 2, 2)]
