"""Checkpoint integrity: unreadable and corrupt files, changed arguments, errors on every rank.

One-rank runs in this process (``devices=1``) for the file cases; a 2-rank run shows that a load
failure on one rank is raised on both, without a hang.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import torch

from lightning_delayed import AllReduceHook, DaSGDStrategy, ODSGDStrategy, OverlapLocalSGDStrategy
from lightning_delayed.strategies.base import CHECKPOINT_KEY
from lightning_delayed.strategies.checkpoint import CheckpointError, algorithm_config, checksum, config_mismatch
from tests.helpers.launch import run_ranks_expecting_failure
from tests.helpers.models import RegressionModule, SaveAt, trainer

DASGD_ARGS: dict[str, Any] = {"sync_every": 2, "delay": 1}


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(earlier, later) checkpoints of one dasgd run, written at steps 2 and 3 (an average in flight)."""
    root = tmp_path_factory.mktemp("ckpts")
    earlier, later = root / "step2.ckpt", root / "step3.ckpt"
    callbacks = [SaveAt(2, str(earlier)), SaveAt(3, str(later))]
    trainer(DaSGDStrategy(**DASGD_ARGS), max_steps=4, callbacks=callbacks).fit(RegressionModule())
    os.utime(earlier, (1_000_000, 1_000_000))  # the "previous" checkpoint, whatever the clock did
    return earlier, later


def _resume(path: Path, strategy: Any = None, max_steps: int = 5) -> Any:
    strategy = strategy if strategy is not None else DaSGDStrategy(**DASGD_ARGS)
    t = trainer(strategy, max_steps=max_steps)
    t.fit(RegressionModule(), ckpt_path=str(path))
    return strategy


def _copy(src: Path, dst: Path) -> Path:
    dst.write_bytes(src.read_bytes())
    return dst


def test_intact_checkpoint_resumes_and_carries_checksum_and_config(checkpoints: tuple[Path, Path]) -> None:
    _earlier, later = checkpoints
    saved = torch.load(later, weights_only=True)
    own = saved[CHECKPOINT_KEY]
    assert own["checksum"] == checksum(saved, CHECKPOINT_KEY)
    assert own["config"] == {**DASGD_ARGS, "weighting": "uniform", "average_buffers": True} | {
        "compression": "none",
        "comm_hook": None,
    }
    strategy = _resume(later)
    assert strategy.algorithm is not None and strategy.algorithm.step == 5


@pytest.mark.parametrize("damage", ["empty", "truncated", "garbage"])
def test_unreadable_file_names_it_and_the_previous_checkpoint(
    checkpoints: tuple[Path, Path], tmp_path: Path, damage: str
) -> None:
    earlier, later = checkpoints
    bad = _copy(later, earlier.parent / f"{damage}.ckpt")
    data = later.read_bytes()
    bad.write_bytes({"empty": b"", "truncated": data[: len(data) // 2], "garbage": b"not a checkpoint" * 10}[damage])
    try:
        with pytest.raises(CheckpointError) as err:
            _resume(bad)
        message = str(err.value)
        assert str(bad) in message and "empty, truncated or not a checkpoint" in message
        # the suggestion: the newest other checkpoint beside it
        assert f"e.g. the newest other one in that directory: {later}" in message
    finally:
        bad.unlink()


def _overwrite(path: Path, tensor: torch.Tensor) -> None:
    """Change the first element of ``tensor`` where its bytes first occur in the (uncompressed) zip."""
    data = bytearray(path.read_bytes())
    needle = tensor.contiguous().numpy().tobytes()
    at = data.find(needle)
    assert at >= 0
    data[at : at + 8] = (tensor.reshape(-1)[0] + 1.0).numpy().tobytes()
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("where", ["model", "snapshot", "optimizer"])
def test_overwritten_tensor_bytes_fail_the_checksum(checkpoints: tuple[Path, Path], tmp_path: Path, where: str) -> None:
    _, later = checkpoints
    bad = _copy(later, tmp_path / "bad.ckpt")
    saved = torch.load(later, weights_only=True)
    target = {
        "model": saved["state_dict"]["net.0.weight"],
        "snapshot": saved[CHECKPOINT_KEY]["local_states"][0]["snapshot"][2],
        "optimizer": saved["optimizer_states"][0]["state"][1]["momentum_buffer"],
    }[where]
    _overwrite(bad, target)
    torch.load(bad, weights_only=True)  # torch itself notices nothing
    with pytest.raises(CheckpointError, match=rf"the checkpoint {bad} is corrupt: the sha256 of its tensors"):
        _resume(bad)


@pytest.mark.parametrize(
    ("strategy", "changed"),
    [
        (DaSGDStrategy(sync_every=2, delay=2), "delay=1 (checkpoint) vs delay=2 (this run)"),
        (DaSGDStrategy(sync_every=4, delay=1), "sync_every=2 (checkpoint) vs sync_every=4 (this run)"),
        (DaSGDStrategy(**DASGD_ARGS, compression="bf16"), "compression='none' (checkpoint) vs compression='bf16'"),
        (DaSGDStrategy(**DASGD_ARGS, weighting="samples"), "weighting='uniform' (checkpoint) vs weighting='samples'"),
    ],
)
def test_changed_arguments_are_refused_naming_old_and_new(
    checkpoints: tuple[Path, Path], strategy: Any, changed: str
) -> None:
    _, later = checkpoints
    with pytest.raises(ValueError, match="written with other 'dasgd' arguments") as err:
        _resume(later, strategy)
    assert changed in str(err.value) and str(later) in str(err.value)


def test_changed_arguments_may_still_validate(checkpoints: tuple[Path, Path]) -> None:
    """Only resuming training is refused: validating the checkpoint's weights needs no algorithm state."""
    _, later = checkpoints
    t = trainer(DaSGDStrategy(sync_every=4, delay=3), limit_val_batches=1)
    assert t.validate(RegressionModule(), ckpt_path=str(later), verbose=False)


def test_config_comparison_rules() -> None:
    assert config_mismatch({"alpha": 0.6, "sync_every": 2}, {"alpha": 0.6, "sync_every": 2}) == []
    assert config_mismatch({"dc_lambda": 0.0}, {"dc_lambda": 0.1}) == [
        "dc_lambda=0.0 (checkpoint) vs dc_lambda=0.1 (this run)"
    ]
    # operational settings may change; arguments only one side knows (other versions) are skipped
    assert config_mismatch({"worker_timeout": 60.0, "old": 1}, {"worker_timeout": 5.0, "new": 2}) == []
    # what is stored: every argument of the algorithm, and the communication
    odsgd = algorithm_config(ODSGDStrategy(dc_lambda=0.1, compression="fp16", error_feedback=False))
    assert odsgd == {
        "local_lr": None,
        "dc_lambda": 0.1,
        "warmup_steps": 0,
        "compression": "fp16",
        "error_feedback": False,
        "comm_hook": None,
    }
    overlap = algorithm_config(OverlapLocalSGDStrategy(alpha=0.3, comm_hook=AllReduceHook()))
    assert overlap["alpha"] == 0.3 and overlap["comm_hook"] == "lightning_delayed.comm.communicator.AllReduceHook"


def test_checkpoint_without_checksum_or_config_still_resumes(checkpoints: tuple[Path, Path], tmp_path: Path) -> None:
    """Files written before checksums existed: nothing to verify, nothing to compare."""
    _, later = checkpoints
    saved = torch.load(later, weights_only=True)
    del saved[CHECKPOINT_KEY]["checksum"], saved[CHECKPOINT_KEY]["config"]
    old = tmp_path / "old.ckpt"
    torch.save(saved, old)
    strategy = _resume(old, DaSGDStrategy(sync_every=2, delay=2))
    assert strategy.algorithm is not None and strategy.algorithm.step == 5


def test_a_load_failure_on_one_rank_is_raised_on_every_rank(tmp_path: Path) -> None:
    outcome = run_ranks_expecting_failure(
        "tests.distributed.resume_worker:corrupt_on_rank1", tmp=str(tmp_path), timeout=180
    )
    assert outcome.failure is not None and "did not finish" not in outcome.failure, "a rank hung"
    assert all(rc not in (0, None) for rc in outcome.returncodes), outcome.returncodes
    assert "cannot read the checkpoint" in outcome.logs[1] and "rank1.ckpt" in outcome.logs[1]
    assert "rank 1 could not resume from the checkpoint" in outcome.logs[0]
    assert "CheckpointError: cannot read the checkpoint" in outcome.logs[0]
