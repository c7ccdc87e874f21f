"""A peer that died is named by Lightning's own collectives too (issue 23, item 2).

When the first collective after a rank's death is one Lightning makes through the strategy
(``barrier``, ``broadcast``, ``reduce`` under ``self.log(sync_dist=True)``, ``all_gather``, and
ModelCheckpoint's file-exists ``reduce_boolean_decision``), every surviving rank raises the same
:class:`~lightning_delayed.CommunicationError` as the algorithm's own collectives, not gloo's raw
"Connection reset by peer", and stops within seconds.
"""

from __future__ import annotations

import re

import pytest

from tests.helpers.launch import run_ranks_expecting_failure

EXPECTED = {
    "barrier": "the barrier of the ranks at Lightning's barrier probe failed: another rank has probably died",
    "broadcast": "the broadcast of the object from rank 0 (Lightning's strategy.broadcast) failed: another rank",
    "reduce": "the all-reduce of the tensor of Lightning's strategy.reduce (self.log(sync_dist=True), "
    "ModelCheckpoint, EarlyStopping) failed: another rank has probably died",
    "all_gather": "the all-gather of the tensor of Lightning's strategy.all_gather failed: another rank",
    "checkpoint": "the all-reduce of the tensor of Lightning's strategy.reduce (self.log(sync_dist=True), "
    "ModelCheckpoint, EarlyStopping) failed: another rank has probably died",
}


# Three ranks (two survivors) where ModelCheckpoint and the barrier notice: every survivor raises the
# same message. Two ranks for the others, to keep the suite short (each launch costs ~20 s here).
WORLDS = {"checkpoint": 3, "barrier": 3}


@pytest.mark.parametrize("collective", sorted(EXPECTED))
def test_a_dead_peer_in_a_lightning_collective_is_a_communication_error_on_every_survivor(
    collective: str, tmp_path: object
) -> None:
    world = WORLDS.get(collective, 2)
    outcome = run_ranks_expecting_failure(
        "tests.strategies.dead_peer_worker:peer_dies_before",
        world_size=world,
        timeout=240,
        collective=collective,
        tmp=str(tmp_path),
    )
    assert outcome.failure is not None and "did not finish" not in outcome.failure, outcome.logs_text()
    assert outcome.returncodes[world - 1] == 3, outcome.logs_text()
    messages = []
    for r in range(world - 1):
        assert outcome.returncodes[r] not in (0, None), outcome.logs_text()
        found = re.findall(r"CommunicationError: (.*?) Backend error:", outcome.logs[r])
        assert found, f"rank {r} did not raise CommunicationError:\n{outcome.logs_text()}"
        messages.append(found[-1])
        assert EXPECTED[collective] in found[-1], found[-1]
    assert len(set(messages)) == 1, f"the survivors report the failure differently: {messages}"
