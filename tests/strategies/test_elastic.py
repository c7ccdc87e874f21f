"""Elastic torchrun jobs on emulated nodes: a node lost for good, a node that joins, a kill mid-sync.

Two elastic agents (``--nnodes=1:2 --nproc-per-node=1``, c10d rendezvous on this machine) each
emulate a node with its own snapshot directory. Node B kills its agent and itself before step 7
of DiLoCo (H = 4, mid-period); node A's worker fails in the next collective, its agent
re-rendezvouses at size 1 and the job resumes from the newest committed snapshot (step 6, taken
every 3 steps) by the resize rule of docs/algorithms/diloco.md.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from tests.helpers.launch import child_env, free_port

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "tests" / "strategies" / "elastic_script.py"
KILL_AT, SNAPSHOT_EVERY, MAX_STEPS = 7, 3, 12
BOUND_S = 240.0


def _agent(
    port: int, out: Path, node: str, *extra: str, fresh_store: bool = False, nnodes: str = "1:2", **env_extra: str
) -> subprocess.Popen[str]:
    env = child_env(OMP_NUM_THREADS="1", **env_extra)
    if fresh_store:
        # A node that joins a running job needs a store of each round's own (docs/elastic.md): with the
        # agent's shared store, torch 2.14's rank 0 does not publish the new round's MASTER_ADDR again.
        env["TORCH_DISABLE_SHARE_RDZV_TCP_STORE"] = "1"
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    cmd = [
        sys.executable, "-m", "torch.distributed.run", f"--nnodes={nnodes}", "--nproc-per-node=1",
        "--rdzv-backend=c10d", f"--rdzv-endpoint=127.0.0.1:{port}", "--rdzv-id=elastic-test",
        "--rdzv-conf=last_call_timeout=10", "--max-restarts=2", "--monitor-interval=0.5",
        str(SCRIPT), str(out), node, str(KILL_AT), *extra,
    ]  # fmt: skip
    log = open(out / f"agent{node}.log", "w")  # noqa: SIM115 - closed with the process
    return subprocess.Popen(
        cmd, env=env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )


def _listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def _stop(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)


def _assert_resumed_alone(tmp_path: Path) -> None:
    """Node A, alone after node B's loss, resumed from the newest snapshot by diloco's resize rule."""
    attempts = (tmp_path / "attemptsA.txt").read_text().split()
    assert attempts[0] == "0:2:0", attempts
    resumed = [line for line in attempts[1:] if line.split(":")[1] == "1"]
    assert resumed, f"node A never ran at size 1: {attempts}"
    restart, _, first_step = resumed[0].split(":")
    k = int(first_step)
    assert k == SNAPSHOT_EVERY * (KILL_AT // SNAPSHOT_EVERY), f"resumed from step {k}, not the newest snapshot"
    assert KILL_AT - k <= SNAPSHOT_EVERY, f"{KILL_AT - k} steps lost, more than every_n_steps={SNAPSHOT_EVERY}"
    assert (tmp_path / "attemptsB.txt").read_text().split() == ["0:2:0"], "node B must not come back"

    # The rule: x = theta = the saved theta, inner state of saved rank 0 (= 0 mod 2), k continues.
    snapshot = torch.load(tmp_path / "nodeA" / f"step-{k}.ckpt", weights_only=False)
    own = snapshot["lightning_delayed"]
    assert own["world_size"] == 2 and own["state"]["step"] == k
    start = torch.load(tmp_path / f"startA_{restart}_1_{k}.pt", weights_only=False)
    theta = own["state"]["global_params"]
    assert not torch.equal(own["local_states"][0]["tensors"][0], theta[0]), "the snapshot is mid-period"
    for i, (x, t, saved) in enumerate(zip(start["x"], start["theta"], theta, strict=True)):
        assert torch.equal(x, saved) and torch.equal(t, saved), f"parameter {i}: x and theta must be the saved theta"
    inner = own["local_states"][0]["optimizer"]["state"]
    for key, entry in start["optimizer"]["state"].items():
        assert torch.equal(entry["momentum_buffer"], inner[key]["momentum_buffer"]), f"inner state {key}"
    final = torch.load(tmp_path / "finalA.pt", weights_only=True)
    assert all(torch.isfinite(p).all() for p in final)


WAIT_AT = 10  # the survivor, alone, stops before step 10 until the new node's rendezvous restarts it


def _wait_until(ready: Callable[[], bool], a: subprocess.Popen[str], seconds: float, logs: Path) -> None:
    """Until ``ready()`` while agent A lives, at most ``seconds``: a bounded readiness poll, not a race fix."""
    deadline = time.monotonic() + seconds
    while not ready():
        assert a.poll() is None and time.monotonic() < deadline, (logs / "agentA.log").read_text()[-6000:]
        time.sleep(0.2)


def _wait_until_listening(port: int, a: subprocess.Popen[str], logs: Path) -> None:
    """Until agent A's rendezvous store listens (the other agents must find it), at most 60 s."""
    _wait_until(lambda: _listening(port), a, 60, logs)


@pytest.mark.timeout(int(BOUND_S) * 2)
def test_a_node_started_again_grows_the_job_back_from_the_snapshot(tmp_path: Path) -> None:
    port = free_port()
    a = _agent(port, tmp_path, "A", str(WAIT_AT), fresh_store=True)
    procs = [a]
    try:
        _wait_until_listening(port, a, tmp_path)
        procs.append(_agent(port, tmp_path, "B", fresh_store=True))
        _wait_until((tmp_path / "aloneA").exists, a, BOUND_S, tmp_path)  # B is gone and A runs alone
        procs.append(_agent(port, tmp_path, "C", fresh_store=True))  # a new node, with an empty snapshot directory
        with contextlib.suppress(subprocess.TimeoutExpired):
            a.wait(timeout=BOUND_S)
        logs = "\n".join(f"--- {p.name}\n{p.read_text()[-6000:]}" for p in sorted(tmp_path.glob("agent*.log")))
        assert a.returncode == 0, f"agent A did not finish ({a.returncode})\n{logs}"
        procs[2].wait(timeout=60)
        assert procs[2].returncode == 0, f"agent C did not finish\n{logs}"
    finally:
        for proc in procs:
            _stop(proc)
    _assert_resumed_alone(tmp_path)  # first the loss: B gone for good, A resumes at size 1
    attempts_a = [line.split(":") for line in (tmp_path / "attemptsA.txt").read_text().split()]
    attempts_c = [line.split(":") for line in (tmp_path / "attemptsC.txt").read_text().split()]
    assert [w for _, w, _ in attempts_a][:2] == ["2", "1"], attempts_a
    grown = attempts_a[-1]
    assert grown[1] == "2", f"the job never grew back to 2 nodes: {attempts_a}"
    alone_at = int((tmp_path / "aloneA").read_text())
    k = int(grown[2])
    assert k == SNAPSHOT_EVERY * (alone_at // SNAPSHOT_EVERY), f"grew back from step {k}, not the newest snapshot"
    assert attempts_c == [[attempts_c[0][0], "2", str(k)]], f"node C did not start from step {k}: {attempts_c}"
    # Node C got the committed snapshot from A (it had none) and both started from its theta (1 -> 2 ranks).
    assert (tmp_path / "nodeC" / f"step-{k}.ok").exists()
    theta = torch.load(tmp_path / "nodeA" / f"step-{k}.ckpt", weights_only=False)["lightning_delayed"]["state"]
    starts = [
        torch.load(tmp_path / f"start{node}_{restart}_2_{k}.pt", weights_only=False)
        for node, restart in (("A", grown[0]), ("C", attempts_c[0][0]))
    ]
    for start in starts:
        for x, saved in zip(start["x"], theta["global_params"], strict=True):
            assert torch.equal(x, saved), "a rank of the grown job did not start from the saved theta"
    final_a = torch.load(tmp_path / "finalA.pt", weights_only=True)
    final_c = torch.load(tmp_path / "finalC.pt", weights_only=True)
    assert all(torch.equal(x, y) for x, y in zip(final_a, final_c, strict=True)), "the ranks end fit unequal"


@pytest.mark.timeout(int(BOUND_S) + 60)
def test_one_of_three_killed_during_a_fragment_sync_the_two_resume_by_the_rule(tmp_path: Path) -> None:
    """streaming_diloco (H = 4, 2 fragments, delay 1) on 3 nodes; B dies inside step 8, so the survivors'
    fragment launched in that step fails in flight. A and C resume at size 2 from step 6, whose snapshot
    holds a fragment in flight: dropped; x = theta; new rank r' takes saved rank r' mod 3's inner state."""
    port = free_port()
    env = {"LD_ELASTIC_STRATEGY": "streaming_diloco", "LD_ELASTIC_KILL_IN_STEP": "1"}
    a = _agent(port, tmp_path, "A", nnodes="2:3", **env)
    procs = [a]
    try:
        _wait_until_listening(port, a, tmp_path)
        procs += [_agent(port, tmp_path, node, nnodes="2:3", **env) for node in ("B", "C")]
        with contextlib.suppress(subprocess.TimeoutExpired):
            a.wait(timeout=BOUND_S)
            procs[2].wait(timeout=60)
        logs = "\n".join(f"--- {p.name}\n{p.read_text()[-6000:]}" for p in sorted(tmp_path.glob("agent*.log")))
        assert a.returncode == 0 and procs[2].returncode == 0, f"a surviving agent did not finish\n{logs}"
        for node in ("A", "C"):  # what ended the first attempt: the fragment's average in flight
            log = (tmp_path / f"agent{node}.log").read_text()
            assert "CommunicationError: the all-reduce of the pseudo-gradients failed" in log, logs
    finally:
        for proc in procs:
            _stop(proc)
    k = SNAPSHOT_EVERY * (KILL_AT // SNAPSHOT_EVERY)
    for node in ("A", "C"):
        attempts = (tmp_path / f"attempts{node}.txt").read_text().split()
        assert attempts == ["0:3:0", f"1:2:{k}"], f"node {node}: {attempts}"
    assert (tmp_path / "attemptsB.txt").read_text().split() == ["0:3:0"]
    saved = torch.load(tmp_path / "nodeA" / f"step-{k}.ckpt", weights_only=False)["lightning_delayed"]
    assert saved["world_size"] == 3 and saved["state"]["step"] == k
    assert saved["state"]["pending"], "the snapshot must hold a fragment in flight"
    theta = saved["state"]["global_params"]
    for node in ("A", "C"):
        start = torch.load(tmp_path / f"start{node}_1_2_{k}.pt", weights_only=False)
        assert start["pending"] == 0, f"node {node}: the fragment in flight must be dropped"
        for i, (x, t) in enumerate(zip(start["x"], theta, strict=True)):
            assert torch.equal(x, t) and torch.equal(start["theta"][i], t), f"node {node}: parameter {i} is not theta"
        inner = saved["local_states"][start["rank"] % 3]["optimizer"]["state"]
        for key, entry in start["optimizer"]["state"].items():
            assert torch.equal(entry["momentum_buffer"], inner[key]["momentum_buffer"]), f"node {node}: {key}"
    final_a = torch.load(tmp_path / "finalA.pt", weights_only=True)
    final_c = torch.load(tmp_path / "finalC.pt", weights_only=True)
    assert all(torch.equal(x, y) and torch.isfinite(x).all() for x, y in zip(final_a, final_c, strict=True))
