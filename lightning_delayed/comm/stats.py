"""Process-wide communication counters: bytes communicated, time blocked, staleness.

Every collective this package launches goes through :mod:`lightning_delayed.comm.buckets`
(``launch_flat_all_reduce`` counts the bytes of the buffer it reduces, ``wait_work`` times the
blocking wait), so one counter object per process sees all of them. One process is one rank, so
the counters are per rank. :class:`lightning_delayed.CommMonitor` reads them around every
optimizer step and logs the differences.

Code outside ``comm/`` that communicates by other means (the RPC parameter server of ``sasgd``,
a benchmark baseline) reports through the same three functions:

* :func:`record_sent` ``(nbytes)``: payload bytes this rank handed to the network (for an
  all-reduce: the size of the reduced buffer; a ring all-reduce over ``n`` ranks puts
  ``2 (n - 1) / n`` times that on the wire);
* :func:`blocked` (a context manager) or :func:`record_blocked` ``(seconds)``: time the training
  loop spent waiting for communication to finish;
* :func:`record_staleness` ``(value)``: the staleness of one gradient or average that was applied
  (in the algorithm's own unit, e.g. server versions for ``sasgd``). This is the monitor's
  **staleness protocol**: a strategy that knows staleness calls it once per applied update, on the
  rank where the update is applied; the monitor logs the mean and maximum of the values recorded
  during each step.

The counters are guarded by a lock, so RPC or gloo callback threads may record too.
"""

from __future__ import annotations

import contextlib
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Iterator


@dataclass(frozen=True)
class CommCounters:
    """A snapshot of :class:`CommStats`; subtract two snapshots to get what happened in between."""

    bytes_sent: int = 0
    collectives: int = 0
    seconds_blocked: float = 0.0

    def __sub__(self, other: CommCounters) -> CommCounters:
        return CommCounters(
            bytes_sent=self.bytes_sent - other.bytes_sent,
            collectives=self.collectives - other.collectives,
            seconds_blocked=self.seconds_blocked - other.seconds_blocked,
        )


@dataclass
class CommStats:
    """Running totals of one process (rank). Use the module functions rather than a new instance.

    Attributes:
        bytes_sent: payload bytes handed to collectives or other transports.
        collectives: number of collectives (or messages) launched.
        seconds_blocked: seconds spent waiting for communication.
    """

    bytes_sent: int = 0
    collectives: int = 0
    seconds_blocked: float = 0.0
    _staleness: list[float] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def record_sent(self, nbytes: int, collectives: int = 1) -> None:
        if nbytes < 0:
            raise ValueError(f"nbytes must be >= 0, got {nbytes!r}")
        with self._lock:
            self.bytes_sent += int(nbytes)
            self.collectives += collectives

    def record_blocked(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError(f"seconds must be >= 0, got {seconds!r}")
        with self._lock:
            self.seconds_blocked += float(seconds)

    def record_staleness(self, value: float) -> None:
        if value < 0:
            raise ValueError(f"staleness must be >= 0, got {value!r}")
        with self._lock:
            self._staleness.append(float(value))

    def snapshot(self) -> CommCounters:
        with self._lock:
            return CommCounters(self.bytes_sent, self.collectives, self.seconds_blocked)

    def drain_staleness(self) -> list[float]:
        """The staleness values recorded since the previous call (and forget them)."""
        with self._lock:
            values, self._staleness = self._staleness, []
        return values

    def reset(self) -> None:
        with self._lock:
            self.bytes_sent = 0
            self.collectives = 0
            self.seconds_blocked = 0.0
            self._staleness = []


_STATS = CommStats()


def comm_stats() -> CommStats:
    """The counters of this process."""
    return _STATS


def record_sent(nbytes: int, collectives: int = 1) -> None:
    """Count ``nbytes`` payload bytes handed to the network by this rank."""
    _STATS.record_sent(nbytes, collectives)


def record_blocked(seconds: float) -> None:
    """Count ``seconds`` the training loop waited for communication."""
    _STATS.record_blocked(seconds)


def record_staleness(value: float) -> None:
    """Record the staleness of one applied update (see the module docstring)."""
    _STATS.record_staleness(value)


_THREAD = threading.local()


@contextlib.contextmanager
def background() -> Iterator[None]:
    """Mark the body as running off the training loop: :func:`blocked` inside it counts nothing.

    A helper thread that waits for one collective to launch the next (the cross-worker phase of
    :class:`~lightning_delayed.comm.groups.ShardedHook`) is not the training loop waiting.
    """
    previous = getattr(_THREAD, "background", False)
    _THREAD.background = True
    try:
        yield
    finally:
        _THREAD.background = previous


@contextlib.contextmanager
def blocked() -> Iterator[None]:
    """Time the body as blocked on communication (also when it raises); nothing inside :func:`background`."""
    if getattr(_THREAD, "background", False):
        yield
        return
    start = time.perf_counter()
    try:
        yield
    finally:
        _STATS.record_blocked(time.perf_counter() - start)
