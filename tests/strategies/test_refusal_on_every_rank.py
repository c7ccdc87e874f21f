"""A set-up refusal on one rank ends every rank, with the same message, within seconds.

Without the agreement in ``DelayedStrategy.setup`` the refusing rank leaves alone: the other
rank goes on into DDP's parameter broadcast (or the RPC start-up of sasgd) and either waits for
the strategy's timeout (30 min by default) or fails with gloo's "Connection closed by peer",
which does not say what was wrong.
"""

from __future__ import annotations

import pytest

from tests.helpers.launch import run_ranks_expecting_failure

# Generous for a loaded 2-core machine: starting two Python processes that import Lightning
# takes most of it. A rank left waiting would hit the launcher's 180 s limit instead.
SECONDS = 90


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
        "tests.strategies.refusal_worker:one_rank_refuses", timeout=180, strategy=strategy, module=module
    )
    assert outcome.failure is not None and "did not finish" not in outcome.failure, outcome.logs_text()
    assert all(rc not in (0, None) for rc in outcome.returncodes), outcome.logs_text()
    for r, log in enumerate(outcome.logs):
        assert message in log, f"rank {r} did not report the refusal:\n{outcome.logs_text()}"
        assert "set-up refused on rank 1; every rank stops with this error" in log, outcome.logs_text()
    assert outcome.seconds < SECONDS, f"took {outcome.seconds:.1f} s\n{outcome.logs_text()}"
