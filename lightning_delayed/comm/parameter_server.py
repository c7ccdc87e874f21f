"""Transport of the SASGD parameter server over ``torch.distributed.rpc`` (TensorPipe).

The server object (:class:`~lightning_delayed.core.sasgd.ParameterServer`) lives in the process of
the server rank (rank 0), beside that rank's worker. Other workers reach it with ``rpc_sync``;
the server rank's own worker calls it directly (same process, no serialization). The RPC
functions below run on the server's RPC thread pool, one thread per request, and the server
object serializes them with its lock.

Every worker also runs a heartbeat thread, so the server can tell a dead worker (no heartbeat for
``worker_timeout`` seconds) from a slow one, and every call here turns a transport failure into a
:class:`~lightning_delayed.comm.buckets.CommunicationError` that names the unreachable rank.
"""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

import torch.distributed as dist
import torch.distributed.rpc as rpc
from torch import Tensor

from lightning_delayed.comm.buckets import CommunicationError
from lightning_delayed.comm.stats import blocked, record_sent

SERVER_RANK = 0

_SERVER: Any = None
"""The :class:`~lightning_delayed.core.sasgd.ParameterServer` of this process (server rank only)."""


class WorkerLostError(RuntimeError):
    """A worker stopped talking to the parameter server before it finished."""


def _nbytes(tensors: Sequence[Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def worker_name(rank: int) -> str:
    return f"sasgd_worker{rank}"


def _server() -> Any:
    if _SERVER is None:
        raise RuntimeError("no SASGD parameter server runs in this process (it lives on rank 0)")
    return _SERVER


# ---------------------------------------------------------------------- functions run on the server


def _serve_push(rank: int, grads: list[Tensor], version: int) -> tuple[Any, list[Tensor], int, list[float]]:
    server = _server()
    record = server.push(rank, grads, version)
    theta, current = server.pull()
    return record, theta, current, server.lrs()


def _serve_pull(rank: int) -> tuple[list[Tensor], int, list[float]]:
    server = _server()
    server.heartbeat(rank)
    theta, version = server.pull()
    return theta, version, server.lrs()


def _serve_heartbeat(rank: int) -> None:
    _server().heartbeat(rank)


def _serve_epoch_done(rank: int) -> None:
    _server().epoch_done(rank)


def _serve_done(rank: int) -> None:
    _server().done(rank)


def _serve_wait_all_done(rank: int, timeout: float) -> bool:
    return bool(_server().wait_all_done(rank, timeout))


# ---------------------------------------------------------------------- agent life cycle


def start_rpc(rank: int, world_size: int, master_addr: str, timeout: timedelta) -> None:
    """Start this process's RPC agent. Collective over the default process group (picks the port)."""
    port = [0]
    if rank == SERVER_RANK:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("", 0))
            port[0] = int(s.getsockname()[1])
    dist.broadcast_object_list(port, src=SERVER_RANK)
    options = rpc.TensorPipeRpcBackendOptions(
        init_method=f"tcp://{master_addr}:{port[0]}",
        rpc_timeout=timeout.total_seconds(),
        num_worker_threads=max(16, 2 * world_size + 4),
        **tensorpipe_transport_options(),  # type: ignore[arg-type]
    )
    rpc.init_rpc(worker_name(rank), rank=rank, world_size=world_size, rpc_backend_options=options)


RPC_TRANSPORTS_ENV = "LD_RPC_TRANSPORTS"


def tensorpipe_transport_options() -> dict[str, list[str]]:
    """TensorPipe transports from ``$LD_RPC_TRANSPORTS`` (e.g. ``uv``), else TensorPipe's own choice.

    By default TensorPipe moves tensors between processes on the same host through shared memory
    (``shm`` transport, ``cma`` channel), bypassing the network. That is right for a real node, but
    ranks that emulate separate nodes on one machine (``benchmarks/``: network namespaces joined by
    a shaped veth) must use TCP: ``LD_RPC_TRANSPORTS=uv`` selects it, with the ``basic`` channel so
    tensor payloads travel over the same TCP connection.
    """
    value = os.environ.get(RPC_TRANSPORTS_ENV, "").strip()
    if not value:
        return {}
    transports = [t.strip() for t in value.split(",") if t.strip()]
    return {"_transports": transports, "_channels": ["basic"]}


def install_server(server: Any) -> None:
    global _SERVER
    _SERVER = server


def shutdown_rpc(graceful: bool, timeout: float) -> None:
    """Stop the RPC agent.

    ``graceful`` first waits (up to ``timeout`` seconds) until every worker has reached its own
    shutdown, serving their last calls meanwhile; on an error path (``graceful=False``) the peers
    may be dead, so the agent stops at once.
    """
    try:
        if graceful:
            try:
                rpc.shutdown(graceful=True, timeout=timeout)
            except RuntimeError as e:
                rpc.shutdown(graceful=False)
                raise CommunicationError(
                    f"sasgd: not every worker reached the end of training within {timeout:g} s after the others; "
                    f"one has probably died (check the other ranks' logs). RPC error: {e}"
                ) from e
        else:
            rpc.shutdown(graceful=False)
    finally:
        install_server(None)
        # torch keeps the store of the last tcp:// rendezvous in a module global until the next
        # init_rpc (on the server rank a TCPStore server: a thread and its sockets); drop it too.
        if hasattr(rpc, "rendezvous_iterator"):
            setattr(rpc, "rendezvous_iterator", None)  # noqa: B010 - typed as a generator, None is its "unset"


# ---------------------------------------------------------------------- the worker's side


class ServerClient:
    """How worker ``rank`` talks to the server: direct calls on the server's rank, RPC elsewhere.

    Args:
        rank: this worker's rank.
        heartbeat_s: seconds between heartbeats.
    """

    def __init__(self, rank: int, heartbeat_s: float) -> None:
        self.rank = rank
        self.heartbeat_s = heartbeat_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def local(self) -> bool:
        return self.rank == SERVER_RANK

    def _call(self, func: Any, *args: Any) -> Any:
        if self.local:
            return func(*args)
        try:
            return rpc.rpc_sync(worker_name(SERVER_RANK), func, args=args)
        except WorkerLostError:
            raise
        except RuntimeError as e:
            if "lost worker rank" in str(e):
                raise WorkerLostError(str(e)) from e
            raise CommunicationError(
                f"rank {self.rank} cannot reach the sasgd parameter server on rank {SERVER_RANK}: it has probably "
                f"died or stopped responding (check rank {SERVER_RANK}'s log for the first error), or the network "
                f"broke, or the strategy's `timeout` expired. RPC error: {e}"
            ) from e

    def push(self, grads: Sequence[Tensor], version: int) -> tuple[Any, list[Tensor], int, list[float]]:
        """Push a gradient of ``version``; get the server's record, ``theta``, its version and LRs.

        Counted in :mod:`~lightning_delayed.comm.stats`: the whole call is time blocked on
        communication; the bytes are the gradient sent plus ``theta`` received (none on the server's
        own rank, whose worker calls the server in-process).
        """
        with blocked():
            result: tuple[Any, list[Tensor], int, list[float]] = self._call(
                _serve_push, self.rank, list(grads), version
            )
        if not self.local:
            record_sent(_nbytes(grads) + _nbytes(result[1]))
        return result

    def pull(self) -> tuple[list[Tensor], int, list[float]]:
        result: tuple[list[Tensor], int, list[float]] = self._call(_serve_pull, self.rank)
        return result

    def epoch_done(self) -> None:
        self._call(_serve_epoch_done, self.rank)

    def finish(self, poll_s: float = 5.0) -> None:
        """Say this worker is done, then wait until every worker is (or one is lost)."""
        self._call(_serve_done, self.rank)
        while not self._call(_serve_wait_all_done, self.rank, poll_s):
            pass

    # ------------------------------------------------------------------ heartbeat

    def start_heartbeat(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._beat, name=f"sasgd-heartbeat-{self.rank}", daemon=True)
        self._thread.start()

    def stop_heartbeat(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            try:
                if self.local:
                    _serve_heartbeat(self.rank)
                else:
                    rpc.rpc_async(worker_name(SERVER_RANK), _serve_heartbeat, args=(self.rank,))
            except Exception:  # a failed heartbeat shows up as an error on the next push
                return
