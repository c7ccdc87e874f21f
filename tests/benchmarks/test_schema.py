"""The results schema: every real results file validates; a file missing a field is refused naming it."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from benchmarks import run
from benchmarks.base import schema

RESULTS = Path(__file__).resolve().parents[2] / "benchmarks" / "results"


@pytest.fixture(scope="module")
def newest() -> dict[str, Any]:
    return dict(json.loads(schema.latest(RESULTS).read_text()))


@pytest.mark.parametrize("path", sorted(p for p in RESULTS.glob("*.json") if schema.RESULT_NAME.fullmatch(p.name)))
def test_every_dated_results_file_validates_with_its_phases(path: Path) -> None:
    data = schema.load(path, run.PHASES)
    assert data["meta"]["machine"]["cores"] and data["throughput"]


def test_the_oldest_file_lacks_repeats_and_rounds_and_is_read_with_the_documented_defaults() -> None:
    oldest = schema.load(RESULTS / "20261121-131116.json")
    assert "repeats" not in oldest["meta"] and all("round" not in e for e in oldest["throughput"])
    assert schema.DEFAULTS == {"meta.repeats": 1, "meta.accelerator": "cpu", "throughput[].round": 0}


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda d: d["meta"].pop("machine"), "meta.machine: should be present: an object (Machine) (missing)"),
        (lambda d: d["meta"]["machine"].pop("cpu"), "meta.machine.cpu: should be present: a string (missing)"),
        (lambda d: d.pop("links"), "links: should be present: a list of object (Link) (missing)"),
        (lambda d: d["throughput"][3]["ranks"][1].pop("step_s"), "throughput[3].ranks[1].step_s: should be present"),
        (lambda d: d["throughput"][0].pop("ranks"), "throughput[0].ranks: should be present: the per-rank figures"),
        (lambda d: d["throughput"][0].update(status="failed"), "throughput[0].error: should be present: a string"),
        (lambda d: d["throughput"][0].update(batch_size="32"), "throughput[0].batch_size: should be an integer"),
        (lambda d: d["throughput"][0].update(role="warm-up"), 'throughput[0].role: should be "compare" or "calib'),
        (lambda d: d["meta"].update(emulated=1), "meta.emulated: should be true or false"),
        (lambda d: d["links"][0].update(allreduce={"nbytes": 1}), "links[0].allreduce.bytes_per_s: should be present"),
        (lambda d: d.update(lm=[1]), "lm: should be an object (the phase's section)"),
        (lambda d: d.update(lm={"status": "failed"}), "lm.error: should be a string, why the phase failed"),
    ],
)  # fmt: skip
def test_a_file_missing_or_mistyping_a_field_is_refused_naming_the_file_and_the_field(
    newest: dict[str, Any], tmp_path: Path, edit: Any, message: str
) -> None:
    data = copy.deepcopy(newest)
    edit(data)
    path = tmp_path / "20261122-052931.json"
    path.write_text(json.dumps(data))
    with pytest.raises(schema.SchemaError) as err:
        schema.load(path, run.PHASES)
    assert str(err.value).startswith(f"{path}: {message}"), str(err.value)


def test_a_failed_run_with_its_error_is_a_valid_record(newest: dict[str, Any]) -> None:
    data = copy.deepcopy(newest)
    cell = data["throughput"][0]
    del cell["ranks"]
    cell.update(status="failed", error="rank 1 exited with 1")
    schema.validate(data, "x.json")


def test_report_only_refuses_an_invalid_newest_file_instead_of_a_key_error(
    tmp_path: Path, newest: dict[str, Any]
) -> None:
    data = copy.deepcopy(newest)
    del data["meta"]["versions"]["torch"]
    (tmp_path / "20261201-000000.json").write_text(json.dumps(data))
    with pytest.raises(schema.SchemaError, match=r"20261201-000000\.json: meta\.versions\.torch: should be present"):
        run.main(["--report-only", "--out", str(tmp_path), "--docs", str(tmp_path / "b.md")])
    assert not (tmp_path / "b.md").exists()


def test_writing_an_invalid_record_keeps_it_aside_and_raises(tmp_path: Path, newest: dict[str, Any]) -> None:
    data = copy.deepcopy(newest)
    del data["meta"]["steps"]
    path = tmp_path / "20261201-000000.json"
    with pytest.raises(schema.SchemaError, match=r"meta\.steps"):
        schema.write(path, data)
    assert not path.exists() and json.loads((tmp_path / "20261201-000000.invalid.json").read_text()) == data
    with pytest.raises(SystemExit):  # not a dated name: no report picks it up
        schema.latest(tmp_path)
