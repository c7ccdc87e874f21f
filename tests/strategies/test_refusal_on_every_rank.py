"""A set-up refusal on one rank ends every rank, with the same message, within seconds.

Without the agreement in ``DelayedStrategy.setup`` the refusing rank leaves alone: the other
rank goes on into DDP's parameter broadcast (or the RPC start-up of sasgd) and either waits for
the strategy's timeout (30 min by default) or fails with gloo's "Connection closed by peer",
which does not say what was wrong.
"""

from __future__ import annotations

import re

import pytest

from tests.helpers.launch import run_ranks_expecting_failure

# Generous for a loaded 2-core machine, where starting two processes that import Lightning takes
# most of it (30-60 s measured with other jobs running). A rank left waiting for the strategy's
# timeout (30 min) would hit the launcher's limit instead; the tight check is that both ranks stop
# within seconds of each other.
SECONDS = 150


@pytest.mark.parametrize(
    ("strategy", "module", "message"),
    [
        ("odsgd", "manual_on_rank1", "ODSGDStrategy needs automatic optimization"),
        ("local_sgd", "manual_on_rank1", "LocalSGDStrategy needs automatic optimization"),
        ("sasgd", "plateau_on_rank1", "ReduceLROnPlateau is not supported"),
    ],
)
def test_a_refusal_on_one_rank_stops_every_rank_with_the_same_message(strategy: str, module: str, message: str) -> None:
    outcome = run_ranks_expecting_failure(
        "tests.strategies.refusal_worker:one_rank_refuses", timeout=240, strategy=strategy, module=module
    )
    assert outcome.failure is not None and "did not finish" not in outcome.failure, outcome.logs_text()
    assert all(rc not in (0, None) for rc in outcome.returncodes), outcome.logs_text()
    for r, log in enumerate(outcome.logs):
        assert message in log, f"rank {r} did not report the refusal:\n{outcome.logs_text()}"
        assert "set-up refused on rank 1; every rank stops with this error" in log, outcome.logs_text()
    assert outcome.seconds < SECONDS, f"took {outcome.seconds:.1f} s\n{outcome.logs_text()}"
    # Both ranks stop together: neither waits for the other's timeout.
    stopped = [float(re.findall(r"LD_STOPPED_AT ([0-9.]+)", log)[-1]) for log in outcome.logs]
    assert max(stopped) - min(stopped) < 10, f"ranks stopped {max(stopped) - min(stopped):.1f} s apart"
