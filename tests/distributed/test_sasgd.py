"""SASGD on real ranks: asynchrony with a slowed rank, the end, checkpoints, a worker that dies."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from tests.helpers.launch import run_ranks, run_ranks_expecting_failure
from tests.helpers.models import build_net


def _pushes_before_last_of(history: list[tuple], rank: int) -> dict[int, int]:
    last = max(i for i, rec in enumerate(history) if rec[0] == rank)
    counts: dict[int, int] = {}
    for rec in history[: last + 1]:
        counts[rec[0]] = counts.get(rec[0], 0) + 1
    return counts


@pytest.mark.parametrize(("slow", "aware", "softsync"), [(1, True, None), (0, False, 1)], ids=["sasgd", "asgd-1soft"])
def test_a_slowed_rank_does_not_hold_the_fast_one_back(slow: int, aware: bool, softsync: int | None) -> None:
    steps, delay = 24, 0.15
    results = run_ranks(
        "tests.distributed.sasgd_worker:asynchrony",
        slow_rank=slow,
        delay=delay,
        steps=steps,
        aware=aware,
        softsync=softsync,
    )
    fast = 1 - slow
    server = results[0]["server"]
    history = server["history"]
    assert server["pushes_by_rank"] == [steps, steps]
    assert len(history) == 2 * steps

    # Real asynchrony: when the fast rank pushed its last gradient the slow one had pushed far fewer,
    # and the fast rank finished its steps long before the slow one.
    counts = _pushes_before_last_of(history, fast)
    assert counts[fast] == steps
    assert counts.get(slow, 0) <= steps // 2
    fast_time = results[fast]["last_batch_end"] - results[fast]["train_start"]
    slow_time = results[slow]["last_batch_end"] - results[slow]["train_start"]
    assert slow_time >= steps * delay
    assert fast_time < 0.6 * slow_time

    # The rule: staleness > 0 happened, the scale follows 1/max(sigma, 1) (or 1 for ASGD),
    # and the server made one update per c gradients.
    stalenesses = [rec[1] for rec in history]
    assert max(stalenesses) > 1
    for _, sigma, scale, _, _ in history:
        assert scale == (1.0 / max(sigma, 1) if aware else 1.0)
    c = 1 if softsync is None else 2 // softsync
    assert server["c"] == c
    assert server["version"] == 2 * steps // c
    assert [rec[4] for rec in history] == [(i + 1) % c == 0 for i in range(2 * steps)]

    # The slow rank's pushes carry the staleness the fast rank caused (it kept updating meanwhile).
    slow_sigma = [rec[1] for rec in history if rec[0] == slow]
    assert sum(slow_sigma) >= steps // (2 * c)

    # The update the server applied, not only the label it recorded: replaying every pushed gradient
    # in the server's order through the rule (SGD, lr 0.02) gives the server's final theta.
    theta = [p.detach().clone() for p in build_net().parameters()]
    acc = [torch.zeros_like(t) for t in theta]
    pushed = {r: iter(results[r]["pushed"]) for r in (0, 1)}
    for rank, sigma, _, _, applied in history:
        grads = next(pushed[rank])
        for a, g in zip(acc, grads, strict=True):
            a.add_(g / float(max(sigma, 1)) if aware else g)
        if applied:
            for t, a in zip(theta, acc, strict=True):
                t.add_(a / c, alpha=-0.02)
                a.zero_()
    for t, s in zip(theta, server["theta"], strict=True):
        assert (t - s).abs().max().item() <= 1e-12

    # The end: every rank holds the server's final theta.
    for res in results:
        for p, t in zip(res["params"], server["theta"], strict=True):
            assert torch.equal(p, t)
        assert res["worker_steps"] == steps

    # Visibility: staleness per step, server mean/max, and the end-of-training histogram.
    logged = results[0]["logged"]
    for key in ("sasgd/staleness", "sasgd/staleness_mean", "sasgd/staleness_max", "sasgd/staleness_max_total"):
        assert key in logged
    final = results[0]["final_metrics"]
    histogram = {int(k.rsplit("/", 1)[1]): v for k, v in final.items() if k.startswith("sasgd/staleness_hist/")}
    assert sum(histogram.values()) == 2 * steps
    expected: dict[int, float] = {}
    for sigma in stalenesses:
        expected[sigma] = expected.get(sigma, 0.0) + 1.0
    assert histogram == expected
    assert final["sasgd/staleness_max_total"] == max(stalenesses)
    assert final[f"sasgd/pushes/rank{slow}"] == steps


def test_checkpoint_holds_the_server_and_a_resumed_run_continues_from_it(tmp_path: Path) -> None:
    opt = {"kind": "sgd", "lr": 0.05, "momentum": 0.9, "step_lr": 3}
    ckpt = str(tmp_path / "sasgd.ckpt")
    first = run_ranks(
        "tests.distributed.sasgd_worker:resume",
        epochs=1,
        n_batches=6,
        save_step=4,
        opt=opt,
        resume_from=False,
        ckpt=ckpt,
    )
    saved = first[0]["saved_server"]
    assert saved["version"] == 8 and sum(saved["pushes_by_rank"]) == 8
    assert saved["optimizer"]["state"], "momentum buffers of the server's optimizer are saved"
    assert saved["schedulers"][0]["last_epoch"] == 8  # StepLR stepped once per server update
    for key, t in zip(["net.0.weight", "net.0.bias", "net.2.weight", "net.2.bias"], saved["theta"], strict=True):
        assert torch.equal(first[0]["saved_state_dict"][key], t), "the checkpoint's state_dict is the server's theta"

    second = run_ranks(
        "tests.distributed.sasgd_worker:resume",
        epochs=2,
        n_batches=6,
        save_step=-1,
        opt=opt,
        resume_from=True,
        ckpt=ckpt,
    )
    # The resumed server continued from the saved version: its first push (staleness 0) made version+1.
    first_resumed = second[0]["server"]["history"][0]
    assert (first_resumed[1], first_resumed[3]) == (0, saved["version"] + 1)
    # The checkpoint was taken at step 4 of 2 x 6: each worker makes the 8 remaining pushes and the
    # server keeps counting from the saved totals.
    end = second[0]["server"]
    assert end["pushes_by_rank"] == [p + 8 for p in saved["pushes_by_rank"]]
    assert end["version"] == saved["version"] + 16


def test_one_rank_resume_is_exact(tmp_path: Path) -> None:
    """With one worker the run is deterministic, so resuming must reproduce it exactly."""
    opt = {"kind": "sgd", "lr": 0.05, "momentum": 0.9, "step_lr": 3}
    kwargs = dict(n_batches=4, save_step=4, opt=opt, ckpt=str(tmp_path / "one.ckpt"))
    whole = run_ranks("tests.distributed.sasgd_worker:resume", world_size=1, epochs=3, resume_from=False, **kwargs)
    resumed = run_ranks("tests.distributed.sasgd_worker:resume", world_size=1, epochs=3, resume_from=True, **kwargs)
    assert resumed[0]["server"]["history"][0][3] == 5  # resumed at version 4
    for a, b in zip(whole[0]["params"], resumed[0]["params"], strict=True):
        assert (a - b).abs().max().item() <= 1e-12


@pytest.mark.parametrize(
    ("dying", "message"),
    [(1, "sasgd lost worker rank 1"), (0, "cannot reach the sasgd parameter server on rank 0")],
    ids=["worker", "server-rank"],
)
def test_a_dead_rank_stops_the_other_naming_it(dying: int, message: str) -> None:
    outcome = run_ranks_expecting_failure(
        "tests.distributed.sasgd_worker:worker_dies", die_at=3, worker_timeout=3.0, dying_rank=dying, timeout=120
    )
    assert outcome.failure is not None and "did not finish" not in outcome.failure, "a rank hung"
    survivor = 1 - dying
    assert outcome.returncodes[dying] == 3
    assert outcome.returncodes[survivor] not in (0, None)
    assert message in outcome.logs[survivor]
    # 400 steps of 0.05 s would take 20 s; the survivor stops within seconds of the death (timed
    # from the death itself: start-up on a loaded machine can take longer than the training).
    died = float(re.search(r"^LD-DIED-AT (\S+)", outcome.logs[dying], re.MULTILINE)[1])  # type: ignore[index]
    detected = float(re.search(r"^LD-DETECTED-AT (\S+)", outcome.logs[survivor], re.MULTILINE)[1])  # type: ignore[index]
    assert 0 <= detected - died < 15
