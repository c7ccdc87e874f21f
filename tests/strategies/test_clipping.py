"""Gradient clipping bounds every weight change, under every lock-step strategy (issue 10, items 1-2)."""

from __future__ import annotations

import pytest

from tests.helpers.launch import run_ranks

LR, CLIP, STEPS = 0.1, 1e-6, 4
STRATEGIES = [
    ("ssgd", "ssgd", {}),
    ("odsgd", "odsgd", {}),
    ("odsgd-warmup", "odsgd", {"warmup_steps": 1}),
    ("local_sgd", "local_sgd", {"sync_every": 2}),
    ("dasgd", "dasgd", {"sync_every": 2}),
    ("cocodsgd", "cocodsgd", {"sync_every": 2}),
    ("overlap_local_sgd", "overlap_local_sgd", {"sync_every": 2}),
]
RUNS = [
    [f"{label}-{algorithm}", name, kwargs, algorithm]
    for label, name, kwargs in STRATEGIES
    for algorithm in ("norm", "value")
]


@pytest.fixture(scope="module")
def moves() -> list[dict[str, list[float]]]:
    return run_ranks(
        "tests.strategies.hardening_worker:clipped_moves", runs=RUNS, steps=STEPS, lr=LR, clip=CLIP, timeout=280
    )


@pytest.mark.parametrize("label", [run[0] for run in RUNS])
def test_no_step_moves_the_weights_more_than_clipping_allows(moves: list[dict[str, list[float]]], label: str) -> None:
    # Plain SGD, no momentum: a clipped step moves no weight by more than LR * CLIP (by norm or by
    # value), and every rule here combines such steps by sums and convex averages. So after s steps
    # no weight is further than s * LR * CLIP from where it started; the end of fit adds no step.
    # (Unclipped, one step of this loss moves the weights by about 1e3.)
    for rank, per_rank in enumerate(moves):
        seen = per_rank[label]
        assert len(seen) == STEPS + 1
        for s, move in enumerate(seen, start=1):
            allowed = min(s, STEPS) * LR * CLIP
            assert move <= allowed * (1 + 1e-9), (
                f"rank {rank}, {label}: moved {move:.3e} after {s} steps > {allowed:.1e}"
            )
        assert seen[-1] > 0.5 * LR * CLIP, f"rank {rank}, {label}: the weights did not move at all"
