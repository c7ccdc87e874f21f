"""Life cycle of the strategies' process groups: created with the strategy's timeout, destroyed at
teardown, and rendezvoused on fresh store keys in every torchelastic attempt.

Three faults this module exists for:

* **Timeout.** ``dist.new_group`` without ``timeout`` gets torch's 30-minute default, whatever the
  strategy's ``timeout`` says; a stopped peer then holds an average in flight for 30 minutes.
  :func:`new_comm_group` passes the strategy's timeout.
* **Leak.** A group lives until it is destroyed: each gloo group keeps its worker threads and
  sockets (3 threads and 5 file descriptors per rank with two ranks), so a process that calls
  ``fit`` twenty times would hold twenty groups. :func:`destroy_comm_group` releases one.
* **Restarts.** Under ``torchrun --max-restarts`` every attempt's workers are clients of the *same*
  TCP store, which the elastic agent keeps alive across attempts (torch >= 2.4 shares the
  rendezvous store), and c10d no longer prefixes its keys per attempt (older torch used
  ``/worker/attempt_<TORCHELASTIC_RESTART_COUNT>``). Group names restart from the same counter in
  the new processes, so the new attempt finds the dead attempt's gloo addresses under its own keys:
  it connects to ports nobody listens on ("Gloo connectFullMesh failed ... Connection refused") or
  waits for peers that are gone (a hang in ``new_group``). :func:`init_elastic_default_group` puts
  the default group, and with it every group created from it, under a per-attempt prefix again.
"""

from __future__ import annotations

import atexit
import os
from typing import TYPE_CHECKING

import torch
import torch.distributed as dist
from torch.distributed import TCPStore  # type: ignore[attr-defined]
from torch.distributed.constants import default_pg_timeout
from torch.distributed.distributed_c10d import PrefixStore

from lightning_delayed._compat import is_live_group

if TYPE_CHECKING:
    from datetime import timedelta

ATTEMPT_PREFIX = "/worker/attempt_{attempt}"
"""Store prefix of one torchelastic attempt (the one torch itself used before 2.4)."""


def new_comm_group(backend: str, timeout: timedelta | None) -> dist.ProcessGroup:
    """A new group of all ranks on ``backend`` whose collectives fail after ``timeout`` (a collective call)."""
    group = dist.new_group(backend=backend, timeout=timeout)
    assert isinstance(group, dist.ProcessGroup)  # every rank is a member
    return group


def destroy_comm_group(group: dist.ProcessGroup | None) -> None:
    """Release ``group``'s threads and sockets (a local call: the peers need not take part).

    Nothing happens if the group was already destroyed, for example together with the default
    group by ``dist.destroy_process_group()``.
    """
    if group is None or not dist.is_initialized():
        return
    if not is_live_group(group):
        return
    dist.destroy_process_group(group)


def elastic_attempt() -> str | None:
    """This torchelastic attempt's number, when the workers share the agent's store; else ``None``."""
    if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != str(True):
        return None
    return os.environ.get("TORCHELASTIC_RESTART_COUNT")


def init_elastic_default_group(backend: str, timeout: timedelta | None, device_id: torch.device | None = None) -> bool:
    """Initialize the default group on the agent's store under this attempt's prefix.

    Does what ``dist.init_process_group(backend)`` does under torchelastic (a client of the agent's
    store at ``MASTER_ADDR:MASTER_PORT``, rank and world size from ``RANK`` and ``WORLD_SIZE``),
    except that every key lives under :data:`ATTEMPT_PREFIX`, so nothing a dead attempt wrote is
    read again. Returns ``False`` (and does nothing) outside torchelastic's shared store or when the
    default group is already up.
    """
    attempt = elastic_attempt()
    if attempt is None or dist.is_initialized():
        return False
    timeout = timeout if timeout is not None else default_pg_timeout
    world_size = int(os.environ["WORLD_SIZE"])
    store = TCPStore(
        host_name=os.environ["MASTER_ADDR"],
        port=int(os.environ["MASTER_PORT"]),
        world_size=world_size,
        is_master=False,
        timeout=timeout,
    )
    dist.init_process_group(
        backend,
        store=PrefixStore(ATTEMPT_PREFIX.format(attempt=attempt), store),
        rank=int(os.environ["RANK"]),
        world_size=world_size,
        timeout=timeout,
        device_id=device_id,
    )
    if backend == "nccl":
        # As Lightning does for the group it creates: NCCL warns about a group left at exit.
        atexit.register(_destroy_default_group)
    return True


def _destroy_default_group() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
