"""Rank-side code of the resume tests: mid-epoch resume, per-rank buffers, other rank counts, load failures."""

from __future__ import annotations

import copy
import os
import warnings
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torch.distributed as dist

from lightning_delayed import (
    CoCoDSGDStrategy,
    DaSGDStrategy,
    DiLoCoStrategy,
    LocalSGDStrategy,
    ODSGDStrategy,
    OverlapLocalSGDStrategy,
    SASGDStrategy,
    SSGDStrategy,
    StreamingDiLoCoStrategy,
)
from tests.helpers.models import RegressionModule, SaveAt, rank, trainer
from tests.helpers.reference import full_state

CLASSES: dict[str, Any] = {
    "ssgd": SSGDStrategy,
    "odsgd": ODSGDStrategy,
    "local_sgd": LocalSGDStrategy,
    "dasgd": DaSGDStrategy,
    "cocodsgd": CoCoDSGDStrategy,
    "overlap_local_sgd": OverlapLocalSGDStrategy,
    "sasgd": SASGDStrategy,
    "diloco": DiLoCoStrategy,
    "streaming_diloco": StreamingDiLoCoStrategy,
}


class ResumableBatches:
    """One epoch of fixed batches that resumes mid-epoch (Lightning's ``state_dict``/``load_state_dict``).

    The position saved is the number of optimizer steps taken in the current epoch (no gradient
    accumulation here): Lightning prefetches a batch, so the iterator's own count would be one ahead.
    """

    def __init__(self, batches: list[tuple[torch.Tensor, torch.Tensor]], module: L.LightningModule) -> None:
        self.batches, self.module, self._start = batches, module, 0

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self) -> Any:
        start, self._start = self._start, 0
        yield from self.batches[start:]

    def state_dict(self) -> dict[str, int]:
        return {"consumed": self.module.trainer.global_step % len(self.batches)}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self._start = int(state["consumed"])


class ResumableRegression(RegressionModule):
    """:class:`RegressionModule` whose batches may vary in size within an epoch, per rank."""

    def __init__(self, sizes: list[list[int]] | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.sizes = sizes[rank()] if sizes else [self.batch_size] * self.n_batches

    def train_dataloader(self) -> Any:
        gen = torch.Generator().manual_seed(1000 + rank())
        batches = []
        for size in self.sizes:
            x = torch.randn(size, 6, generator=gen, dtype=torch.float64)
            batches.append((x, torch.randn(size, 3, generator=gen, dtype=torch.float64)))
        return ResumableBatches(batches, self)


class StepStates(L.Callback):
    """Every parameter and buffer after each optimizer step; the state at the first batch of the fit."""

    def __init__(self) -> None:
        self.after: list[list[torch.Tensor]] = []
        self.start: dict[str, Any] | None = None

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        if self.start is None:
            algorithm = trainer.strategy.algorithm  # type: ignore[attr-defined]
            optimizer = copy.deepcopy(trainer.optimizers[0].state_dict())  # live tensors otherwise
            self.start = {"state": full_state(pl_module), "step": algorithm.step, "optimizer": optimizer}

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        self.after.append(full_state(pl_module))


def _module(case: dict[str, Any]) -> ResumableRegression:
    return ResumableRegression(
        sizes=case.get("sizes"),
        n_batches=case.get("n_batches", 4),
        opt=case["opt"],
        batchnorm=case.get("batchnorm", False),
        batch_sizes=case.get("batch_sizes"),
    )


def _fit(case: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
    module = _module(case)
    states = StepStates()
    callbacks = [states, *kwargs.pop("callbacks", [])]
    ckpt_path = kwargs.pop("ckpt_path", None)
    limits = {"max_steps": kwargs.pop("max_steps")} if "max_steps" in kwargs else {"max_epochs": case["epochs"]}
    t = trainer(CLASSES[case["kind"]](**case.get("args", {})), callbacks=callbacks, **limits, **kwargs)
    t.fit(module, ckpt_path=ckpt_path)
    return {"after": states.after, "start": states.start, "final": full_state(module), "steps": t.global_step}


def resume(cases: list[dict[str, Any]], tmp: str) -> list[dict[str, Any]]:
    """Per case: the uninterrupted run, and a run saved at ``save_step`` then resumed to the same end."""
    out = []
    for i, case in enumerate(cases):
        path = str(Path(tmp) / f"resume{i}.ckpt")
        straight = _fit(case)
        _fit(case, callbacks=[SaveAt(case["save_step"], path)], max_steps=case["save_step"])
        resumed = _fit(case, ckpt_path=path)
        out.append({"straight": straight, "resumed": resumed})
    return out


def write(cases: list[dict[str, Any]], tmp: str) -> None:
    """Per case: a checkpoint at ``save_step`` on this number of ranks, at ``<tmp>/<name>.ckpt``."""
    for case in cases:
        path = str(Path(tmp) / f"{case['name']}.ckpt")
        _fit(case, callbacks=[SaveAt(case["save_step"], path)], max_steps=case["save_step"])


def resume_resized(cases: list[dict[str, Any]], tmp: str, more_steps: int) -> list[dict[str, Any]]:
    """Per case: resume ``<tmp>/<name>.ckpt`` on this number of ranks; the restored state, warnings, errors."""
    out = []
    for case in cases:
        path = str(Path(tmp) / f"{case['name']}.ckpt")
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                result = _fit(case, ckpt_path=path, max_steps=case["save_step"] + more_steps)
            except ValueError as e:
                result = {"error": str(e)}
        result["warnings"] = [str(w.message) for w in caught if "Resuming" in str(w.message)]
        out.append(result)
    return out


def corrupt_on_rank1(tmp: str) -> None:
    """Rank 1 resumes from a truncated copy of the checkpoint rank 0 resumes from: both must raise."""
    case = {"kind": "dasgd", "opt": {"kind": "sgd", "lr": 0.05}, "args": {"sync_every": 2}}
    good = Path(tmp) / "good.ckpt"
    _fit(case, callbacks=[SaveAt(2, str(good))], max_steps=2)
    path = good
    if rank() == 1:
        path = Path(tmp) / "rank1.ckpt"
        path.write_bytes(good.read_bytes()[:1000])
    dist.barrier()
    _fit(case, ckpt_path=str(path), max_steps=4)
    torch.save("finished", os.path.join(tmp, f"finished{rank()}"))
