"""Transport of the SASGD parameter server over ``torch.distributed.rpc`` (TensorPipe).

The server object (:class:`~lightning_delayed.core.sasgd_server.ParameterServer`) lives in the
process of the server rank (rank 0), beside that rank's worker. Other workers reach it with
``rpc_sync``; the server rank's own worker calls it directly (same process, no serialization). The RPC
functions below run on the server's RPC thread pool, one thread per request, and the server
object serializes them with its lock.

A worker is lost in one of two ways, told apart (``docs/algorithms/sasgd.md``):

* **dead**: its process exited. The server keeps one call outstanding on every other worker
  (:class:`LivenessWatch`); when the worker's process ends, the kernel closes its connection and
  that call fails at once, so the server knows within a fraction of a second.
* **silent**: its process is connected but has sent no push or heartbeat for ``worker_timeout``
  seconds (stopped, hung, or cut off by the network). A slow step is not silence: every worker
  sends heartbeats from a thread of its own.

The server answers a call it refuses (a malformed or non-finite push, a lost peer) with the error
itself rather than raising through RPC, so the worker reports the server's reason, never a
transport failure, and every call here turns a real transport failure into a
:class:`~lightning_delayed.comm.buckets.CommunicationError` that names the unreachable rank.
"""

from __future__ import annotations

import contextlib
import functools
import os
import secrets
import threading
from collections.abc import Callable, Sequence
from datetime import timedelta
from typing import TYPE_CHECKING, Any, TypeVar

import torch.distributed as dist
import torch.distributed.rpc as rpc
from torch import Tensor

from lightning_delayed._compat import tensorpipe_transport_options as _tensorpipe_options
from lightning_delayed.comm.buckets import CommunicationError, NonFiniteReductionError
from lightning_delayed.comm.rpc_network import pin_rpc_interface, rendezvous_url
from lightning_delayed.comm.stats import blocked, record_sent

if TYPE_CHECKING:
    from collections.abc import Sequence
    from datetime import timedelta

SERVER_RANK = 0

_SERVER: Any = None
"""The :class:`~lightning_delayed.core.sasgd_server.ParameterServer` of this process (server rank only)."""


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

_F = TypeVar("_F", bound=Callable[..., Any])
_OK, _REFUSED = "ok", "refused"
_REFUSALS: dict[str, type[Exception]] = {
    "WorkerLostError": WorkerLostError,
    "NonFiniteReductionError": NonFiniteReductionError,
    "ValueError": ValueError,
    "TypeError": TypeError,
}
"""Errors of the server that the worker re-raises as the same type; any other becomes a RuntimeError."""


def _answers_refusals(func: _F) -> _F:
    """Run ``func`` on the server; return ``("ok", result)`` or ``("refused", error type, message)``.

    An exception raised through RPC reaches the caller as a ``RuntimeError``-like error that cannot
    be told from a broken connection; the envelope keeps the server's reason intact.
    """

    @functools.wraps(func)
    def answer(*args: Any) -> tuple[Any, ...]:
        try:
            return _OK, func(*args)
        except Exception as e:  # every refusal goes back to the caller, none kills the RPC thread
            return _REFUSED, type(e).__name__, str(e)

    return answer  # type: ignore[return-value]


@_answers_refusals
def _serve_push(rank: int, grads: list[Tensor], version: int) -> tuple[Any, list[Tensor], int, list[float]]:
    server = _server()
    record = server.push(rank, grads, version)
    theta, current = server.pull()
    return record, theta, current, server.lrs()


@_answers_refusals
def _serve_pull(rank: int) -> tuple[list[Tensor], int, list[float]]:
    server = _server()
    server.heartbeat(rank)
    theta, version = server.pull()
    return theta, version, server.lrs()


def _serve_heartbeat(rank: int) -> None:
    # Fire-and-forget (rpc_async, nobody waits): a bad rank is the server's to ignore.
    with contextlib.suppress(ValueError, TypeError, RuntimeError):
        _server().heartbeat(rank)


@_answers_refusals
def _serve_epoch_done(rank: int) -> None:
    _server().epoch_done(rank)


@_answers_refusals
def _serve_done(rank: int) -> None:
    _server().done(rank)


@_answers_refusals
def _serve_wait_all_done(rank: int, timeout: float) -> bool:
    return bool(_server().wait_all_done(rank, timeout))


# ---------------------------------------------------------------------- functions run on the workers

_RELEASE = threading.Event()
"""Set when this process's worker is done or stopping: ends the server's liveness call."""
_RELEASE_REASON = ["done"]
_RELEASE_LOCK = threading.Lock()
DONE, STOPPING = "done", "stopping"


def _release(reason: str) -> None:
    with _RELEASE_LOCK:
        if not _RELEASE.is_set():
            _RELEASE_REASON[0] = reason
            _RELEASE.set()


def _hold_until_released() -> str:
    _RELEASE.wait()
    return _RELEASE_REASON[0]


class LivenessWatch:
    """On the server's rank: one outstanding call on every other worker, failing when its process dies.

    The call (:func:`_hold_until_released`) returns once the worker is done, or says the worker is
    stopping on an error; it fails when the connection to the worker breaks. In the last two cases
    the server marks that worker lost at once.
    """

    def __init__(self, server: Any, world_size: int) -> None:
        self.server = server
        self.ranks = [r for r in range(world_size) if r != SERVER_RANK]

    def start(self) -> None:
        for r in self.ranks:
            # timeout=0: no RPC timeout; a slow or stopped worker keeps the call pending, only a
            # closed connection (or the worker's release) ends it.
            future = rpc.rpc_async(worker_name(r), _hold_until_released, timeout=0)
            future.add_done_callback(functools.partial(self._ended, r))

    def _ended(self, rank: int, future: Any) -> None:
        try:
            reason = future.wait()
        except Exception as e:  # runs on an RPC thread: record it, raise nothing there
            detail = str(e).splitlines()[0] if str(e) else type(e).__name__
            self.server.connection_lost(rank, f"its connection closed ({detail}): its process exited or was killed")
            return
        if reason == STOPPING:  # a no-op for a worker that said it was done
            self.server.connection_lost(rank, "it stopped on an error before finishing training")


# ---------------------------------------------------------------------- agent life cycle


def start_rpc(rank: int, world_size: int, master_addr: str, master_port: int | None, timeout: timedelta) -> str | None:
    """Start this process's RPC agent. Collective over the default process group.

    The agent listens on one interface (:func:`~lightning_delayed.comm.rpc_network.pin_rpc_interface`)
    at a port the kernel picks, and meets its peers on the default process group's store; it opens
    no port of its own choosing. Returns the interface name (``None`` where TensorPipe guesses).
    """
    token = [secrets.token_hex(8) if rank == SERVER_RANK else ""]
    dist.broadcast_object_list(token, src=SERVER_RANK)
    interface = pin_rpc_interface(master_addr)
    _RELEASE.clear()
    options = rpc.TensorPipeRpcBackendOptions(
        init_method=rendezvous_url(str(token[0]), master_addr, master_port, timeout),
        rpc_timeout=timeout.total_seconds(),
        num_worker_threads=max(16, 2 * world_size + 4),
        **tensorpipe_transport_options(),  # type: ignore[arg-type]
    )
    rpc.init_rpc(worker_name(rank), rank=rank, world_size=world_size, rpc_backend_options=options)
    return interface


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
    return _tensorpipe_options(transports, ["basic"])


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
            return func.__wrapped__(*args)  # same process: the server's own exception, traceback and all
        try:
            answer = rpc.rpc_sync(worker_name(SERVER_RANK), func, args=args)
        except RuntimeError as e:
            raise CommunicationError(
                f"rank {self.rank} cannot reach the sasgd parameter server on rank {SERVER_RANK}: it has probably "
                f"died or stopped responding (check rank {SERVER_RANK}'s log for the first error), or the network "
                f"broke, or the strategy's `timeout` expired. RPC error: {e}"
            ) from e
        if answer[0] == _OK:
            return answer[1]
        kind, message = answer[1], answer[2]
        if kind == "WorkerLostError":
            raise WorkerLostError(message)
        raise _REFUSALS.get(kind, RuntimeError)(
            f"the sasgd parameter server on rank {SERVER_RANK} refused rank {self.rank}'s "
            f"{func.__name__.removeprefix('_serve_')}: {kind}: {message}"
        )

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
        _release(DONE)  # the server knows this worker is done: end its liveness call
        while not self._call(_serve_wait_all_done, self.rank, poll_s):
            pass

    # ------------------------------------------------------------------ heartbeat

    def start_heartbeat(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._beat, name=f"sasgd-heartbeat-{self.rank}", daemon=True)
        self._thread.start()

    def stop_heartbeat(self) -> None:
        self._stop.set()
        # The liveness call must return before this agent shuts down (shutdown waits for it); if
        # the worker did not finish, it tells the server so at once.
        _release(STOPPING)
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
