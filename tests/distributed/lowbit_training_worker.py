"""Rank-side code of the int8/int4 strategy tests of odsgd and the averaging family (test_lowbit_training.py)."""

from __future__ import annotations

from typing import Any

from lightning_delayed import CommMonitor, ODSGDStrategy
from lightning_delayed.comm import stats as comm_stats
from tests.distributed.averaging_worker import fit as fit_averaging
from tests.helpers.models import Recorder, RegressionModule, params_of, trainer
from tests.helpers.reference import reference_averaging, reference_odsgd
from tests.helpers.reference_lowbit import BITS, LowBitReference


def _lowbit(case: dict[str, Any]) -> dict[str, Any]:
    return {"compression": case["compression"], "block_size": case.get("block_size", 64)}


def _reference_mean(case: dict[str, Any]) -> LowBitReference:
    return LowBitReference(BITS[case["compression"]], case.get("block_size", 64))


def odsgd(case: dict[str, Any]) -> dict[str, Any]:
    module = RegressionModule(opt=case["opt"])
    recorder, monitor = Recorder(), CommMonitor(log=False, keep_history=True)
    strategy = ODSGDStrategy(**case.get("args", {}), **_lowbit(case))
    before = comm_stats.comm_stats().snapshot()
    trainer(strategy, max_epochs=case["epochs"], callbacks=[recorder, monitor]).fit(module)
    ours = {
        "local": recorder.local,
        "global": recorder.consensus,
        "final": params_of(module),
        # per step the monitor counts what left the rank during it, which depends on the helper
        # thread's timing when the mean overlaps the next step; the fit's total does not
        "bytes": (comm_stats.comm_stats().snapshot() - before).bytes_sent,
    }
    reference = reference_odsgd(case["opt"], case["epochs"], **case.get("args", {}), lowbit=_reference_mean(case))
    return {"ours": ours, "reference": reference}


def averaging(case: dict[str, Any]) -> dict[str, Any]:
    ours = fit_averaging({**case, "args": {**case.get("args", {}), **_lowbit(case)}})
    reference = reference_averaging(
        case["kind"], case["opt"], case["epochs"], case.get("args", {}), lowbit=_reference_mean(case)
    )
    return {"ours": ours, "reference": reference}


def cases(odsgd_cases: list[dict[str, Any]], averaging_cases: list[dict[str, Any]]) -> dict[str, list[Any]]:
    return {"odsgd": [odsgd(c) for c in odsgd_cases], "averaging": [averaging(c) for c in averaging_cases]}
