"""Rank-side code of tests/distributed/test_sasgd_trust.py (run by :func:`tests.helpers.launch.run_ranks`)."""

from __future__ import annotations

import os
import time
from datetime import timedelta
from typing import Any

import lightning as L
import torch
import torch.distributed as dist

from lightning_delayed import SASGDStrategy
from lightning_delayed.comm import parameter_server as ps
from lightning_delayed.core.sasgd import SASGDConfig
from lightning_delayed.core.sasgd_server import ParameterServer
from tests.helpers.models import RegressionModule, params_of, rank, trainer
from tests.helpers.sockets import listening_sockets


class FrozenFirstLayer(RegressionModule):
    """The first layer frozen, and the optimizer built from ``self.parameters()`` all the same."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        for p in self.net[0].parameters():
            p.requires_grad_(False)

    def configure_optimizers(self) -> Any:
        return torch.optim.SGD(self.parameters(), lr=0.05, momentum=0.9, weight_decay=0.01)


def frozen_layer() -> dict[str, Any]:
    module = FrozenFirstLayer(n_batches=4)
    frozen_before = params_of(module.net[0])
    strategy = SASGDStrategy()
    trainer(strategy, max_epochs=1).fit(module)
    return {
        "frozen_before": frozen_before,
        "frozen_after": params_of(module.net[0]),
        "trainable": [p.detach().clone() for p in module.parameters() if p.requires_grad],
        "theta": None if strategy.server is None else [t.clone() for t in strategy.server.theta],
        "pushes": None if strategy.server is None else list(strategy.server.pushes_by_rank),
    }


class ForeignParameter(RegressionModule):
    def configure_optimizers(self) -> Any:
        # Kept in a list, so the module does not register it: a trainable tensor outside the module.
        self.strangers = [torch.nn.Parameter(torch.zeros(3, dtype=torch.float64))]
        return torch.optim.SGD([*self.parameters(), *self.strangers], lr=0.05)


def foreign_parameter() -> None:
    trainer(SASGDStrategy(), max_epochs=1).fit(ForeignParameter(n_batches=4))


def _mark(what: str, message: str = "") -> None:
    print(f"LD-{what}-AT {time.time():.3f} {message}".rstrip(), flush=True)


class DieAt(L.Callback):
    def __init__(self, step: int, dying_rank: int) -> None:
        self.step, self.dying_rank = step, dying_rank

    def on_train_batch_start(self, trainer: L.Trainer, *args: Any) -> None:
        if trainer.global_rank == self.dying_rank and trainer.global_step == self.step:
            _mark("DIED")
            os._exit(3)  # dies without a word, like a killed process


class SlowStep(RegressionModule):
    def __init__(self, slow_rank: int, slow_step: int, delay: float, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.slow_rank, self.slow_step, self.delay = slow_rank, slow_step, delay

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        if rank() == self.slow_rank and batch_idx == self.slow_step:
            time.sleep(self.delay)  # the injected slowness under test
        return super().training_step(batch, batch_idx)


def killed_worker(worker_timeout: float) -> None:
    """Rank 1 dies at step 3; rank 0 (the server) keeps stepping every 0.05 s until it notices."""
    module = SlowStep(slow_rank=0, slow_step=-1, delay=0.0, n_batches=4000)
    module.training_step = _paced(module.training_step)  # type: ignore[method-assign]
    try:
        trainer(SASGDStrategy(worker_timeout=worker_timeout), max_epochs=1, callbacks=[DieAt(3, 1)]).fit(module)
    except Exception as e:
        _mark("DETECTED", f"{type(e).__name__}: {e}")
        raise


def _paced(step: Any) -> Any:
    def paced(batch: Any, batch_idx: int) -> torch.Tensor:
        time.sleep(0.05)  # keeps the survivor's steps short but countable
        return step(batch, batch_idx)

    return paced


def slow_worker(worker_timeout: float, delay: float) -> dict[str, Any]:
    module = SlowStep(slow_rank=1, slow_step=2, delay=delay, n_batches=5)
    strategy = SASGDStrategy(worker_timeout=worker_timeout)
    trainer(strategy, max_epochs=1).fit(module)
    return {"pushes": None if strategy.server is None else list(strategy.server.pushes_by_rank)}


class NaNLoss(RegressionModule):
    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        loss = super().training_step(batch, batch_idx)
        return loss * float("nan") if rank() == 1 and batch_idx == 2 else loss


def nan_push() -> None:
    module = NaNLoss(n_batches=2000)
    module.training_step = _paced(module.training_step)  # type: ignore[method-assign]
    try:
        trainer(SASGDStrategy(worker_timeout=60.0), max_epochs=1).fit(module)
    except Exception as e:
        _mark("FAILED", f"{type(e).__name__}: {e}")
        raise


class ListenersAfterRPC(L.Callback):
    """The TCP listeners this rank holds before the strategy starts RPC and once training runs."""

    def __init__(self) -> None:
        self.before: set[tuple[str, int]] = set()
        self.during: set[tuple[str, int]] = set()

    def setup(self, *args: Any, **kwargs: Any) -> None:
        self.before = listening_sockets()

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        if trainer.global_step == 1:
            self.during = listening_sockets()


def listeners(master_addr: str, tp_ifname: str | None) -> dict[str, Any]:
    os.environ["MASTER_ADDR"] = master_addr  # read by Lightning when it sets up the process group
    os.environ.pop("GLOO_SOCKET_IFNAME", None)
    if tp_ifname is None:
        os.environ.pop("TP_SOCKET_IFNAME", None)
    else:
        os.environ["TP_SOCKET_IFNAME"] = tp_ifname
    probe = ListenersAfterRPC()
    trainer(SASGDStrategy(), max_steps=3, callbacks=[probe]).fit(RegressionModule(n_batches=3))
    return {
        "before": sorted(probe.before),
        "added": sorted(probe.during - probe.before),
        "tp_ifname": os.environ.get("TP_SOCKET_IFNAME"),
    }


def scripted_client() -> dict[str, Any]:
    """Rank 0: a parameter server and an honest worker. Rank 1: a peer sending malformed pushes."""
    r = int(os.environ["RANK"])
    dist.init_process_group("gloo", rank=r, world_size=2)
    theta = [torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64), torch.tensor([3.0], dtype=torch.float64)]
    server = None
    if r == 0:
        server = ParameterServer(SASGDConfig(), theta, torch.optim.SGD(theta, lr=0.1, momentum=0.9), 2)
        ps.install_server(server)
    ps.start_rpc(r, 2, os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), timedelta(seconds=60))
    client = ps.ServerClient(r, heartbeat_s=1.0)
    good = [torch.tensor([0.1, 0.2, 0.3], dtype=torch.float64), torch.tensor([1.0], dtype=torch.float64)]
    out: dict[str, Any] = {"refusals": [], "states": []}
    bad_pushes: list[tuple[Any, Any]] = [
        ([torch.tensor([5.0], dtype=torch.float64), good[1]], 0),  # wrong shape (would broadcast)
        ([good[0]], 0),  # too few tensors
        ([torch.ones(3, dtype=torch.int64), good[1]], 0),  # not floating point
        ([torch.tensor([float("nan"), 0.0, 0.0], dtype=torch.float64), good[1]], 0),
        ([good[0], torch.tensor([float("inf")], dtype=torch.float64)], 0),
        (good, 99),  # a version from the future
    ]
    client.push(good, 0) if r == 0 else None  # the honest worker makes version 1 (momentum state too)
    dist.barrier()
    if server is not None:
        out["states"].append(server.state_dict())
    dist.barrier()
    if r == 1:
        for grads, version in bad_pushes:
            try:
                client.push(grads, version)
            except Exception as e:
                out["refusals"].append((type(e).__name__, str(e)))
            else:
                out["refusals"].append(("accepted", ""))
    dist.barrier()
    if server is not None:
        out["states"].append(server.state_dict())
        client.push(good, server.version)  # the honest worker goes on
    dist.barrier()
    if r == 1:
        record, _, version, _ = client.push(good, 1)  # the peer, pushing right, is served as well
        out["last"] = (record.staleness, version)
    client.finish()
    if server is not None:
        out["states"].append(server.state_dict())
    ps.shutdown_rpc(graceful=True, timeout=30)
    return out


class BuffersAtTrainEnd(L.Callback):
    """This rank's own BatchNorm statistics, before the strategy's end of training averages them."""

    def __init__(self) -> None:
        self.buffers: list[torch.Tensor] = []

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.buffers = [b.detach().clone() for b in pl_module.buffers()]


def batchnorm() -> dict[str, Any]:
    module = RegressionModule(n_batches=4, batchnorm=True)
    own = BuffersAtTrainEnd()
    trainer(SASGDStrategy(), max_epochs=1, callbacks=[own]).fit(module)
    return {"own": own.buffers, "final": [b.detach().clone() for b in module.buffers()]}


def without_master_port() -> dict[str, Any]:
    """A process group started without MASTER_PORT (file:// rendezvous): RPC meets on its store all the same."""
    r = int(os.environ["RANK"])
    port = os.environ.pop("MASTER_PORT")
    dist.init_process_group("gloo", init_method=f"file://{os.environ['LD_TEST_TMP']}/pg-{port}", rank=r, world_size=2)
    theta = [torch.zeros(2, dtype=torch.float64)]
    server = None
    if r == 0:
        server = ParameterServer(SASGDConfig(), theta, torch.optim.SGD(theta, lr=1.0), 2)
        ps.install_server(server)
    ps.start_rpc(r, 2, os.environ["MASTER_ADDR"], None, timedelta(seconds=60))
    client = ps.ServerClient(r, heartbeat_s=1.0)
    dist.barrier()
    _, _, version, _ = client.push([torch.full((2,), float(r + 1), dtype=torch.float64)], 0)
    client.finish()
    ps.shutdown_rpc(graceful=True, timeout=30)
    return {"final": None if server is None else server.theta[0].clone(), "version": version}
