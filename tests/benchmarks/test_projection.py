"""The scaling phase's model, fits, validation and projection (pure functions, no processes)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from benchmarks.workloads.scaling import cells as pc
from benchmarks.workloads.scaling import fit as pf
from benchmarks.workloads.scaling import model as pm
from benchmarks.workloads.scaling import projection as pp
from benchmarks.workloads.scaling import report as ps
from benchmarks.workloads.scaling import runner as pmeas
from benchmarks.workloads.scaling import worker as pw


def test_ring_allreduce_time() -> None:
    assert pm.ring_allreduce_s(1e6, 1, 1e8, 1e-3) == 0.0
    assert pm.ring_allreduce_s(1e6, 2, 1e8, 1e-3) == pytest.approx(1e6 / 1e8 + 2e-3)
    assert pm.ring_allreduce_s(1e6, 4, 1e8, 1e-3) == pytest.approx(1.5 * 1e6 / 1e8 + 6e-3)
    # the bandwidth term tends to 2 bytes / beta, the latency term grows linearly
    assert pm.ring_allreduce_s(1e6, 1024, 1e8, 0.0) == pytest.approx(2 * 1023 / 1024 * 1e-2)
    for bad in ((1e6, 0, 1e8, 0.0), (1e6, 2, 0.0, 0.0), (1e6, 2, 1e8, -1.0)):
        with pytest.raises(ValueError):
            pm.ring_allreduce_s(*bad)


def _const(t: float) -> Any:
    return lambda nbytes: t * nbytes / 100.0  # T_ar(100 bytes) = t


@pytest.mark.parametrize(
    ("strategy", "t_ar", "expected"),
    [
        ("compute_only", 5.0, 1.0),
        ("ssgd", 0.2, 1.2),  # one bucket: ready when backward ends, nothing hides
        ("ddp", 2.0, 3.0),
        ("odsgd", 0.8, 1.0),  # hides behind a whole step
        ("odsgd", 3.0, 3.0),
        ("local_sgd", 2.0, 1.5),  # blocking, once per H = 4 steps
        ("post_local_sgd", 2.0, 1.5),
        ("diloco", 2.0, 1.5),
        ("dasgd", 3.0, 1.0 + 2.0 / 4),  # d = 1 step hides 1 s of it
        ("cocodsgd", 3.0, 1.0),  # the whole period (4 s) hides it
        ("overlap_local_sgd", 6.0, 1.0 + 2.0 / 4),
        ("streaming_diloco", 6.0, 1.0 + 2 * (3.0 - 1.0) / 4),  # 2 fragments of 3 s, each hiding 1 s
    ],
)
def test_step_time_rules(strategy: str, t_ar: float, expected: float) -> None:
    got = pm.step_time(strategy, 1.0, _const(t_ar), 100.0, sync_every=4, delay=1, fragments=2, buckets=[100.0])
    assert got == pytest.approx(expected)


def test_ddp_buckets_follow_the_first_and_cap_sizes() -> None:
    mib = 1024 * 1024
    assert pm.ddp_buckets([0.5 * mib, 0.6 * mib, 10 * mib, 20 * mib, 3 * mib]) == [1.1 * mib, 30 * mib, 3 * mib]
    assert pm.ddp_buckets([2.0, 3.0], first=4.0, cap=10.0) == [5.0]
    assert pm.even_buckets(60 * mib) == [1 * mib, 25 * mib, 25 * mib, 9 * mib]
    assert pm.even_buckets(0.5 * mib) == [0.5 * mib]


def test_ddp_exposed_time_of_the_buckets() -> None:
    ar = _const(1.0)  # T_ar(100 bytes) = 1 s
    # one bucket is ready when backward ends: all of it is exposed
    assert pm.ddp_exposed_s(3.0, ar, [100.0]) == pytest.approx(1.0)
    # backward = [1, 3]; bucket 1 (50 B) ready at 2, done at 2.5; bucket 2 ready at 3, done at 3.5
    assert pm.ddp_exposed_s(3.0, ar, [50.0, 50.0]) == pytest.approx(0.5)
    # a slow link: bucket 2 waits for bucket 1 (ready 2, done 2 + 5 = 7), then 7 + 5 = 12
    assert pm.ddp_exposed_s(3.0, _const(10.0), [50.0, 50.0]) == pytest.approx(9.0)
    # a big bucket ready late (2.8, done 3.7) delays the small last one (ready 3, done 3.8)
    assert pm.ddp_exposed_s(3.0, ar, [90.0, 10.0]) == pytest.approx(0.8)
    assert pm.ddp_exposed_s(3.0, ar, []) == 0.0


def test_measured_ready_profile_and_its_buckets() -> None:
    import torch

    model = torch.nn.Sequential(torch.nn.Linear(8, 300_000), torch.nn.ReLU(), torch.nn.Linear(300_000, 2))
    prof = pm.ready_profile(model, torch.randn(4, 8), torch.tensor([0, 1, 0, 1]))
    assert sorted(prof["param_bytes"]) == sorted(q.numel() * 4 for q in model.parameters())
    assert prof["param_bytes"][0] == 8 and 0 < prof["backward_share"] < 1  # the last layer's bias is made first
    assert prof["ready"] == sorted(prof["ready"]) and prof["ready"][0] >= 0 and prof["ready"][-1] <= 1
    # the buckets of a profile: ready when their last gradient is
    fake = {"param_bytes": [0.5e6, 0.6e6, 3e7, 1e6], "ready": [0.1, 0.2, 0.5, 0.9], "backward_share": 0.5}
    assert pm.profile_buckets(fake) == ([1.1e6, 3e7, 1e6], [0.2, 0.5, 0.9])
    ar = _const(0.5 / 2e4)  # T_ar(2 MB) = 0.5 s; backward = [0.5, 1] of a 1 s step
    prof = {"param_bytes": [2e6, 2e6], "ready": [0.2, 1.0], "backward_share": 0.5}
    assert pm.step_time("ssgd", 1.0, ar, 4e6, profile=prof) == pytest.approx(1.6)  # 0.6 to 1.1, then 1.1 to 1.6


def test_step_time_cpu_term_and_errors() -> None:
    free = _const(0.0)
    assert pm.step_time("ssgd", 1.0, free, 100.0, cpu_s_per_byte=0.01) == pytest.approx(2.0)
    assert pm.step_time("cocodsgd", 1.0, free, 100.0, sync_every=4, cpu_s_per_byte=0.01) == pytest.approx(1.25)
    assert pm.step_time("compute_only", 1.0, free, 100.0, cpu_s_per_byte=0.01) == 1.0
    with pytest.raises(ValueError, match="not modelled"):
        pm.step_time("sasgd", 1.0, free, 100.0)
    with pytest.raises(ValueError, match="sync_every"):
        pm.step_time("local_sgd", 1.0, free, 100.0, sync_every=0)


def test_fit_link_recovers_latency_and_bandwidth() -> None:
    alpha, beta = 2e-4, 5e7
    points = [(b, n, pm.ring_allreduce_s(b, n, beta, alpha)) for b in pw.SWEEP_SIZES for n in (2, 4)]
    fit = pf.fit_link(points)
    assert fit["latency_s"] == pytest.approx(alpha, rel=1e-6)
    assert fit["bytes_per_s"] == pytest.approx(beta, rel=1e-6)
    assert fit["median_rel_error"] == pytest.approx(0.0, abs=1e-9)
    # a negative intercept (noise) is clamped: latency 0, bandwidth through the origin
    noisy = pf.fit_link([(1e6, 2, 0.009), (1e7, 2, 0.1)])
    assert noisy["latency_s"] == 0.0 and noisy["bytes_per_s"] > 0
    with pytest.raises(ValueError, match="at least 2"):
        pf.fit_link([(1e6, 2, 0.01)])


def test_sweep_sizes_span_4kb_to_45mb() -> None:
    sizes = pw.SWEEP_SIZES
    assert len(sizes) == 8 and sizes[0] == 4096 and 44e6 < sizes[-1] < 46e6
    assert all(b % 4 == 0 for b in sizes) and list(sizes) == sorted(sizes)


def test_fit_line_and_overlap() -> None:
    assert pf.fit_line([(16, 0.2), (64, 0.5), (32, 0.3)])["b"] > 0
    line = pf.fit_line([(16, 0.2), (64, 0.44)])
    assert line["a"] == pytest.approx(0.12) and line["b"] == pytest.approx(0.005)
    with pytest.raises(ValueError):
        pf.fit_line([(16, 0.2), (16, 0.3)])
    kappa = 1e-9
    cells = [(p, 4e7, p + kappa * 4e7) for p in (1.0, 0.5, 2.0, 3.0)]
    assert pf.fit_kappa(cells) == pytest.approx(kappa)
    assert pf.fit_kappa([(1.0, 4e7, 1.0)]) == 0.0
    assert pf.fit_kappa([]) == 0.0


PARAM_BYTES = [0.5e6, 1e6, 2e7, 2.35e7]  # DDP buckets of 1.5 MB and 43.5 MB


def _synthetic_data() -> dict[str, Any]:
    """Throughput cells generated by the model itself (kappa = 0): validation must find zero error."""
    beta, nbytes = 2.5e7, 4.5e7

    def cell(bw: str, batch: int, name: str, step: float) -> dict[str, Any]:
        return {"bandwidth": bw, "batch_size": batch, "strategy": name, "role": "compare", "status": "ok",
                "ranks": [{"step_s": step}, {"step_s": step * 0.99}]}  # fmt: skip

    cells = []
    for batch, t_c in ((64, 0.5), (256, 2.0)):
        for name in ("compute_only", "ssgd", "ddp", "odsgd", "local_sgd", "dasgd", "cocodsgd"):
            ar = lambda b: pm.ring_allreduce_s(b, 2, beta, 0.0)  # noqa: E731
            buckets = pm.ddp_buckets(PARAM_BYTES)
            cells.append(cell("200mbit", batch, name, pm.step_time(name, t_c, ar, nbytes, 4, buckets=buckets)))
    return {
        "meta": {"sync_every": 4},
        "links": [{"bandwidth": "200mbit", "bps": 2e8, "allreduce": {"nbytes": nbytes, "bytes_per_s": beta}}],
        "throughput": cells,
        "scaling": {"resnet18_param_bytes": PARAM_BYTES},
    }


def test_validation_on_cells_the_model_generated() -> None:
    data = _synthetic_data()
    cells, kappa = pc.validation_cells(data)
    assert kappa == 0.0
    assert len(cells) == 14 and max(abs(c["error"]) for c in cells) < 1e-6
    summary = pc.error_summary(cells)
    assert summary["cells"] == 12  # compute_only is the model's input, not a prediction
    assert summary["within_15pct"] == 12
    # compute-only time comes from the cell at the same batch
    assert pc.compute_time(data, "200mbit", 256) == pytest.approx(2.0)
    # without a throughput phase in this run, the copy of an earlier run's cells is used, and named
    base = {k: data[k] for k in ("throughput", "links")} | {"calibration": None, "meta": {}, "source": "old.json"}
    moved = {"meta": {}, "throughput": [], "scaling": {"base": base, "resnet18_param_bytes": PARAM_BYTES}}
    assert pc.throughput_source(moved)["source"] == "old.json"
    again, _ = pc.validation_cells(moved)
    assert len(again) == 14 and max(abs(c["error"]) for c in again) < 1e-6


def test_validation_judges_each_cell_by_the_median_of_its_repeats() -> None:
    data = _synthetic_data()
    exact = next(c for c in data["throughput"] if c["strategy"] == "dasgd" and c["batch_size"] == 64)
    step = exact["ranks"][0]["step_s"]
    # Two more repeats of the cell, one slow and one fast, around the exact one; the slow one first in the list.
    data["throughput"].insert(data["throughput"].index(exact), {**exact, "ranks": [{"step_s": step * 1.5}]})
    data["throughput"].append({**exact, "ranks": [{"step_s": step * 0.5}]})
    cells, _ = pc.validation_cells(data)
    assert len(cells) == 14  # still one cell per (link, batch, strategy, role)
    dasgd = next(c for c in cells if c["strategy"] == "dasgd" and c["batch_size"] == 64)
    assert dasgd["repeats"] == 3 and dasgd["measured_s"] == pytest.approx(step)
    assert dasgd["min_s"] == pytest.approx(step * 0.5) and dasgd["max_s"] == pytest.approx(step * 1.5)
    assert abs(dasgd["error"]) < 1e-6


def test_own_work_adds_measured_passes_scaled_to_the_model() -> None:
    data = _synthetic_data()
    nbytes = data["links"][0]["allreduce"]["nbytes"]
    assert pc.own_work_s(data, "odsgd", nbytes) == 0.0  # not measured: no term
    data["own_cost"] = {"own_work": {"pass_s": 0.01, "cells": {"odsgd": {"passes": 3.0}, "ssgd": {"passes": 2.0}}}}
    assert pc.own_work_s(data, "odsgd", nbytes) == pytest.approx(0.03)
    assert pc.own_work_s(data, "odsgd", nbytes / 10) == pytest.approx(0.003)  # a smaller model: fewer bytes a pass
    assert pc.own_work_s(data, "ssgd", nbytes) == 0.0  # real ssgd reduces through DDP's own C++ path
    free = _const(0.0)
    assert pm.step_time("odsgd", 1.0, free, 100.0, own_s=0.03) == pytest.approx(1.03)
    assert pm.step_time("ssgd", 1.0, free, 100.0, own_s=0.03) == pytest.approx(1.0)
    # Communication overlaps the own work like compute: cocodsgd's average hides behind H (t_c + w).
    assert pm.step_time("cocodsgd", 1.0, _const(4.1), 100.0, sync_every=4, own_s=0.03) == pytest.approx(1.03)
    # Validation adds it: where compute hides the all-reduce (batch 256) odsgd is predicted 3 passes slower;
    # where the all-reduce is longer than the step (batch 64) the own work hides behind it.
    cells, _ = pc.validation_cells(data)
    odsgd = {c["batch_size"]: c for c in cells if c["strategy"] == "odsgd"}
    assert odsgd[256]["predicted_s"] == pytest.approx(odsgd[256]["measured_s"] + 0.03, rel=1e-6)
    assert odsgd[64]["predicted_s"] == pytest.approx(odsgd[64]["measured_s"], rel=1e-6)


def test_cluster_cells_use_their_own_fit() -> None:
    fit = {"latency_s": 1e-3, "bytes_per_s": 5e7}
    nbytes, t_c = 1e7, 0.3
    ar = lambda b: pm.ring_allreduce_s(b, 4, 5e7, 1e-3)  # noqa: E731
    data = {
        "scaling": {
            "cluster": {
                "world": 4,
                "bandwidth": "500mbit",
                "batch_size": 64,
                "sync_every": 4,
                "model_bytes": nbytes,
                "fit": fit,
                "cells": [
                    {"strategy": s, "status": "ok", "ranks": [{"step_s": pm.step_time(s, t_c, ar, nbytes)}]}
                    for s in ("compute_only", "odsgd", "local_sgd")
                ]
                + [
                    {"strategy": "ssgd", "status": "ok", "repeats_s": [9.0, pm.step_time("ssgd", t_c, ar, nbytes), 0.1]}
                ],
            }
        }
    }
    cells = pc.cluster_cells(data, 0.0)
    assert [c["world"] for c in cells] == [4, 4, 4, 4]
    assert max(abs(c["error"]) for c in cells) < 1e-9  # ssgd: the median of its repeats
    assert (cells[-1]["min_s"], cells[-1]["max_s"], cells[-1]["repeats"]) == (0.1, 9.0, 3)


def test_contention_scales_kappa_from_two_ranks() -> None:
    assert pc.contention(2, 2) == pytest.approx(1.0)  # where kappa is fitted
    assert pc.contention(4, 2) == pytest.approx(1.5 * 2)  # ring bytes x ranks per core
    assert pc.contention(4, 8) == pytest.approx(1.5)
    assert pc.contention(4, None) == pytest.approx(1.5)


def test_cluster_cells_from_interleaved_runs() -> None:
    def rank(steps: dict[tuple[int, str], float]) -> dict[str, Any]:
        return {"runs": [{"round": r, "strategy": s, "step_s": t} for (r, s), t in steps.items()]}

    ranks = [
        rank({(0, "a"): 1.0, (0, "b"): 2.0, (1, "a"): 1.2, (1, "b"): 2.5, (2, "a"): 1.1, (2, "b"): 2.0}),
        rank({(0, "a"): 1.5, (0, "b"): 1.0, (1, "a"): 1.0, (1, "b"): 2.0, (2, "a"): 0.9, (2, "b"): 2.2}),
    ]
    a, b, c = pmeas.cluster_from_runs(ranks, ["a", "b", "c"])
    assert a["repeats_s"] == [1.5, 1.2, 1.1]  # each round: the slowest rank
    assert b["repeats_s"] == [2.0, 2.5, 2.2] and pc.cell_stats(b) == {
        "median_s": 2.2,
        "min_s": 2.0,
        "max_s": 2.5,
        "n": 3,
    }
    assert c["status"] == "failed"


def test_projection_rows_and_section(tmp_path: Path) -> None:
    rows = pp.project(0.95)
    assert len(rows) == len(pp.PROJECTION_MODELS) * len(pp.PROJECTION_LINKS) * len(pp.PROJECTION_N)
    for r in rows:
        # with kappa = 0 the whole-period overlap is never slower than ssgd, blocking local SGD or dasgd
        assert r["cocodsgd"] >= max(1.0, r["local_sgd"], r["dasgd"])
    big = [r for r in rows if r["model"] == "1B params" and r["link"] == "10 Gbit/s"]
    assert big[-1]["cocodsgd"] > big[0]["odsgd"] > 1.0  # communication-bound: hiding pays
    md = ps.section(_synthetic_data(), tmp_path)
    assert md.startswith("## ") and "PROJECTION" in md and "img/benchmarks_projection.png" in md
    assert (tmp_path / "benchmarks_projection.png").stat().st_size > 0
