"""SASGD on real ranks against faults and untrusted input: frozen layers, a killed or slow worker, a NaN
push, malformed pushes from a scripted peer, and the address the RPC agent listens on."""

from __future__ import annotations

import re

import pytest
import torch

from tests.helpers.launch import run_ranks, run_ranks_expecting_failure
from tests.helpers.models import build_net
from tests.helpers.sockets import WILDCARDS, local_ipv4_interfaces


def _marks(log: str, what: str) -> list[tuple[float, str]]:
    return [(float(m[1]), m[2]) for m in re.finditer(rf"^LD-{what}-AT (\S+) ?(.*)$", log, re.MULTILINE)]


def test_a_frozen_layer_in_the_optimizer_trains_on_two_ranks() -> None:
    results = run_ranks("tests.distributed.sasgd_trust_worker:frozen_layer")
    theta = results[0]["theta"]
    assert results[0]["pushes"] == [4, 4]
    initial = list(build_net()[0].parameters())
    for res in results:
        for before, after, init in zip(res["frozen_before"], res["frozen_after"], initial, strict=True):
            assert torch.equal(before, after) and torch.equal(after, init.detach())
        for p, t in zip(res["trainable"], theta, strict=True):
            assert torch.equal(p, t)
    assert not torch.equal(theta[0], build_net()[2].weight.detach())  # training did move


def test_a_refusal_on_the_server_rank_reaches_every_rank() -> None:
    outcome = run_ranks_expecting_failure("tests.distributed.sasgd_trust_worker:foreign_parameter", timeout=120)
    assert outcome.failure is not None and "did not finish" not in outcome.failure
    for r in (0, 1):
        assert outcome.returncodes[r] not in (0, None)
        assert "that are not parameters of the module" in outcome.logs[r], outcome.logs_text()
        assert "Connection closed by peer" not in outcome.logs[r]


def test_a_killed_worker_is_detected_in_seconds_not_after_worker_timeout() -> None:
    outcome = run_ranks_expecting_failure(
        "tests.distributed.sasgd_trust_worker:killed_worker", worker_timeout=60.0, timeout=180
    )
    assert outcome.failure is not None and "did not finish" not in outcome.failure, outcome.logs_text()
    ((died, _),) = _marks(outcome.logs[1], "DIED")
    ((detected, message),) = _marks(outcome.logs[0], "DETECTED")
    seconds = detected - died
    print(f"sasgd: killed worker detected after {seconds:.2f} s (worker_timeout=60 s)")
    assert "WorkerLostError: sasgd lost worker rank 1" in message
    assert "its connection closed" in message and "process exited or was killed" in message
    assert 0 <= seconds < 15, f"detected {seconds:.1f} s after the kill"


def test_a_worker_slower_than_worker_timeout_is_not_lost() -> None:
    # One step of rank 1 takes 3x worker_timeout; its heartbeats go on meanwhile.
    results = run_ranks("tests.distributed.sasgd_trust_worker:slow_worker", worker_timeout=2.0, delay=6.0)
    assert results[0]["pushes"] == [5, 5]


def test_a_nan_push_reports_the_servers_reason_on_both_ranks() -> None:
    outcome = run_ranks_expecting_failure("tests.distributed.sasgd_trust_worker:nan_push", timeout=180)
    assert outcome.failure is not None and "did not finish" not in outcome.failure, outcome.logs_text()
    ((_, pusher),) = _marks(outcome.logs[1], "FAILED")
    assert pusher.startswith("NonFiniteReductionError: the sasgd parameter server on rank 0 refused rank 1's push")
    assert "rank 1 pushed a gradient with NaN or Inf" in pusher
    assert "cannot reach" not in pusher and "probably died" not in pusher
    ((_, server),) = _marks(outcome.logs[0], "FAILED")
    assert "sasgd lost worker rank 1" in server
    assert "rank 1: it stopped on an error" in server or "its connection closed" in server


def test_malformed_pushes_from_a_peer_are_refused_and_the_server_goes_on() -> None:
    rank0, rank1 = run_ranks("tests.distributed.sasgd_trust_worker:scripted_client")
    kinds = [k for k, _ in rank1["refusals"]]
    assert kinds == [
        "ValueError",
        "ValueError",
        "TypeError",
        "NonFiniteReductionError",
        "NonFiniteReductionError",
        "ValueError",
    ]
    messages = [m for _, m in rank1["refusals"]]
    for m in messages:
        assert m.startswith("the sasgd parameter server on rank 0 refused rank 1's push: ")
    assert "shape (1,) for parameter 0 of shape (3,)" in messages[0]
    assert "pushed 1 gradients for 2 parameters" in messages[1]
    assert "torch.int64" in messages[2]
    assert "NaN or Inf" in messages[3] and "NaN or Inf" in messages[4]
    assert "version 99, but the server is at 1" in messages[5]
    before, after, end = rank0["states"]
    for key in ("version", "acc_count", "pushes_by_rank", "staleness_counts"):
        assert before[key] == after[key], key
    for x, y in zip(before["theta"] + before["acc"], after["theta"] + after["acc"], strict=True):
        assert torch.equal(x, y)
    # The honest worker and the peer, pushing right, both went on: versions 2 and 3.
    assert end["version"] == 3 and end["pushes_by_rank"] == [2, 1]
    assert rank1["last"] == (1, 3)


def _listener_cases() -> list[tuple[str, str | None, str, str]]:
    """(MASTER_ADDR, TP_SOCKET_IFNAME, the interface and the address the RPC agent must listen on)."""
    cases: list[tuple[str, str | None, str, str]] = [("127.0.0.1", None, "lo", "127.0.0.1")]
    for name, address in local_ipv4_interfaces()[:1]:
        cases.append((address, None, name, address))  # follows MASTER_ADDR off loopback (the host name says 127.0.0.1)
        cases.append(("127.0.0.1", name, name, address))  # the user's TP_SOCKET_IFNAME wins
    return cases


@pytest.mark.parametrize(("master_addr", "tp_ifname", "interface", "expected"), _listener_cases())
def test_the_rpc_agent_listens_on_one_interface_not_on_every_one(
    master_addr: str, tp_ifname: str | None, interface: str, expected: str
) -> None:
    results = run_ranks("tests.distributed.sasgd_trust_worker:listeners", master_addr=master_addr, tp_ifname=tp_ifname)
    for r, res in enumerate(results):
        added = res["added"]
        assert added, f"rank {r}: starting RPC opened no listener?"
        assert not [a for a in added if a[0] in WILDCARDS], f"rank {r} listens on a wildcard address: {added}"
        assert expected in {a[0] for a in added}, f"rank {r}: the RPC agent is not on {expected}: {added}"
        assert res["tp_ifname"] == interface


def test_batchnorm_statistics_end_averaged_over_the_ranks() -> None:
    results = run_ranks("tests.distributed.sasgd_trust_worker:batchnorm")
    own0, own1 = results[0]["own"], results[1]["own"]
    floats = [k for k, b in enumerate(own0) if b.is_floating_point()]
    assert len(floats) == 2  # running_mean, running_var
    for k in floats:
        assert not torch.equal(own0[k], own1[k]), "the ranks saw different data, so their statistics differ"
        mean = (own0[k] + own1[k]) / 2
        for res in results:
            torch.testing.assert_close(res["final"][k], mean, rtol=0, atol=1e-15)


def test_rpc_starts_on_a_process_group_made_without_master_port() -> None:
    rank0, _ = run_ranks("tests.distributed.sasgd_trust_worker:without_master_port")
    # Both pushes (1 and 2) computed at version 0 and applied with lr 1: staleness 0 and 1, so
    # divisors max(0, 1) = max(1, 1) = 1 whichever came first.
    assert torch.equal(rank0["final"], torch.full((2,), -3.0, dtype=torch.float64))
