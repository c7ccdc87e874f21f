"""An emulated two-node cluster on one machine: two network namespaces joined by a shaped veth pair.

::

    ns <prefix>-<pid>-<n>-0                         ns <prefix>-<pid>-<n>-1
    ldveth0 10.77.0.1/24  <======== veth ========>  ldveth1 10.77.0.2/24
    tc tbf rate R (egress)                          tc tbf rate R (egress)

Rank ``r`` runs inside namespace ``r`` (``ip netns exec``) and talks to the other rank only over
the veth, so every byte of every collective crosses a link of the chosen bandwidth in both
directions. ``tbf`` shapes egress only, hence one qdisc on each end. ``netem`` (latency, loss) is
not used: it is not available on the machine this was written for.

:func:`emulated_link` is a context manager that deletes every namespace it created, also when the
body raises or is interrupted (deleting a namespace deletes its veth end and qdisc). Names carry
the creating process's pid, so :func:`remove_stale` can delete what an earlier run that was killed
left behind without touching the namespaces of a run that is still going.

Everything needs root (``CAP_NET_ADMIN``). :func:`can_emulate` says whether this process may;
the runner falls back to loopback (unshaped, both ranks in the root namespace) when it may not.

:func:`emulated_cluster` builds ``n`` ranks behind one switch, for runs on more than 2 ranks::

    ns <...>-0  ldveth0 10.77.0.1 ==veth== ldport0 -+
    ns <...>-1  ldveth1 10.77.0.2 ==veth== ldport1 -+- bridge ldbr0 in ns <...>-hub
    ...                                             |
    tc tbf rate R on every rank's end (its upload) and on every switch port (its download)

so each rank is a node with a NIC of rate ``R`` in each direction, as on a switched cluster.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import re
import shutil
import subprocess
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

PREFIX = "ldbench"
DEVICES = ("ldveth0", "ldveth1")
ADDRESSES = ("10.77.0.1", "10.77.0.2")
PREFIX_LEN = 24
TBF_LATENCY_MS = 100
"""Longest time a packet may wait in the tbf queue (sets the queue length); drops beyond it."""

Runner = Callable[[Sequence[str]], str]
"""Runs one command, returns its stdout, raises :class:`NetnsError` when it fails."""

_counter = itertools.count()


class NetnsError(RuntimeError):
    """A namespace, veth or qdisc command failed."""


def run_command(cmd: Sequence[str]) -> str:
    """The real runner: ``subprocess.run`` with a clear error naming the command and its stderr."""
    try:
        proc = subprocess.run(list(cmd), capture_output=True, text=True, check=False, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise NetnsError(f"`{' '.join(cmd)}` could not run: {e}") from e
    if proc.returncode != 0:
        raise NetnsError(f"`{' '.join(cmd)}` failed (exit {proc.returncode}): {proc.stderr.strip()}")
    return proc.stdout


_RATE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(|k|m|g)(?:bit|bps|b)?(?:/s)?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "k": 10**3, "m": 10**6, "g": 10**9}
UNSHAPED = ("unshaped", "none", "inf")


def parse_rate(text: str) -> int | None:
    """``"200mbit"`` -> 200_000_000 (bits/s); ``"unshaped"`` -> None. Units: bit, kbit, mbit, gbit."""
    if not isinstance(text, str):
        raise TypeError(f"a bandwidth must be a string like '200mbit' or 'unshaped', got {text!r}")
    if text.strip().lower() in UNSHAPED:
        return None
    m = _RATE.match(text)
    if m is None or float(m.group(1)) <= 0:
        raise ValueError(
            f"bandwidth {text!r} is not understood: use a positive rate in bit/s with an optional unit, like "
            "'200mbit', '1gbit', '500kbit', or 'unshaped' for no shaping"
        )
    return round(float(m.group(1)) * _UNITS[m.group(2).lower()])


def format_rate(bps: int | None) -> str:
    if bps is None:
        return "unshaped"
    for unit, scale in (("gbit", 10**9), ("mbit", 10**6), ("kbit", 10**3)):
        if bps >= scale and bps % scale == 0:
            return f"{bps // scale}{unit}"
    return f"{bps}bit"


def tbf_burst_bytes(bps: int) -> int:
    """Bucket size: at least one 250 Hz timer tick of traffic, and at least 32 KiB (several MTUs)."""
    return max(32 * 1024, bps // 8 // 250)


@dataclass(frozen=True)
class Link:
    """Where the two ranks run and how they reach each other.

    ``namespaces`` is empty for the loopback fallback (both ranks in the current namespace).
    """

    namespaces: tuple[str, ...]
    devices: tuple[str, ...]
    addresses: tuple[str, ...]
    shaped_ends: tuple[tuple[str, str], ...] = ()
    """(namespace, device) pairs whose egress is shaped; empty: every rank's end (the pair's veth)."""

    @property
    def emulated(self) -> bool:
        return bool(self.namespaces)

    def exec_prefix(self, rank: int) -> list[str]:
        """Prepend to a command to run it as rank ``rank`` (inside its namespace)."""
        return ["ip", "netns", "exec", self.namespaces[rank]] if self.emulated else []

    @property
    def master_addr(self) -> str:
        return self.addresses[0]


LOOPBACK = Link(namespaces=(), devices=("lo", "lo"), addresses=("127.0.0.1", "127.0.0.1"))


def new_link(prefix: str = PREFIX) -> Link:
    n = next(_counter)
    return Link(
        namespaces=(f"{prefix}-{os.getpid()}-{n}-0", f"{prefix}-{os.getpid()}-{n}-1"),
        devices=DEVICES,
        addresses=ADDRESSES,
    )


HUB_BRIDGE = "ldbr0"


def new_cluster(n: int, prefix: str = PREFIX) -> Link:
    """``n`` rank namespaces (``<prefix>-<pid>-<k>-<rank>``) and a switch namespace (``...-hub``), last."""
    if not 2 <= n <= 250:
        raise ValueError(f"an emulated cluster has 2 to 250 ranks, got {n}")
    k = next(_counter)
    ranks = tuple(f"{prefix}-{os.getpid()}-{k}-{r}" for r in range(n))
    hub = f"{prefix}-{os.getpid()}-{k}-hub"
    devices = tuple(f"ldveth{r}" for r in range(n))
    return Link(
        namespaces=(*ranks, hub),
        devices=devices,
        addresses=tuple(f"10.77.0.{r + 1}" for r in range(n)),
        shaped_ends=(*zip(ranks, devices, strict=True), *((hub, f"ldport{r}") for r in range(n))),
    )


def cluster_setup_commands(link: Link) -> list[list[str]]:
    """Commands that build a :func:`new_cluster`: the switch namespace and bridge, then one veth per rank."""
    hub = link.namespaces[-1]
    cmds = [["ip", "netns", "add", hub]]
    cmds.append(["ip", "-n", hub, "link", "add", HUB_BRIDGE, "type", "bridge"])
    cmds.append(["ip", "-n", hub, "link", "set", HUB_BRIDGE, "up"])
    for r, (ns, dev, addr) in enumerate(zip(link.namespaces[:-1], link.devices, link.addresses, strict=True)):
        port = f"ldport{r}"
        cmds.append(["ip", "netns", "add", ns])
        cmds.append(["ip", "link", "add", dev, "netns", ns, "type", "veth", "peer", "name", port, "netns", hub])
        cmds.append(["ip", "-n", hub, "link", "set", port, "master", HUB_BRIDGE])
        cmds.append(["ip", "-n", hub, "link", "set", port, "up"])
        cmds.append(["ip", "-n", ns, "addr", "add", f"{addr}/{PREFIX_LEN}", "dev", dev])
        cmds.append(["ip", "-n", ns, "link", "set", dev, "up"])
        cmds.append(["ip", "-n", ns, "link", "set", "lo", "up"])
    return cmds


def setup_commands(link: Link) -> list[list[str]]:
    """Commands that build ``link``, in order; each namespace is created by its own first command."""
    ns0, ns1 = link.namespaces
    d0, d1 = link.devices
    cmds = [["ip", "netns", "add", ns0], ["ip", "netns", "add", ns1]]
    cmds.append(["ip", "link", "add", d0, "netns", ns0, "type", "veth", "peer", "name", d1, "netns", ns1])
    for ns, dev, addr in ((ns0, d0, link.addresses[0]), (ns1, d1, link.addresses[1])):
        cmds.append(["ip", "-n", ns, "addr", "add", f"{addr}/{PREFIX_LEN}", "dev", dev])
        cmds.append(["ip", "-n", ns, "link", "set", dev, "up"])
        cmds.append(["ip", "-n", ns, "link", "set", "lo", "up"])
    return cmds


def shape_commands(link: Link, bps: int | None) -> list[list[str]]:
    """Commands that set both ends to ``bps`` bit/s (``tc qdisc replace``), or remove shaping (None)."""
    cmds = []
    for ns, dev in link.shaped_ends or zip(link.namespaces, link.devices, strict=True):
        if bps is None:
            cmds.append(["tc", "-n", ns, "qdisc", "del", "dev", dev, "root"])
        else:
            tbf = ["tbf", "rate", f"{bps}bit", "burst", f"{tbf_burst_bytes(bps)}b", "latency", f"{TBF_LATENCY_MS}ms"]
            cmds.append(["tc", "-n", ns, "qdisc", "replace", "dev", dev, "root", *tbf])
    return cmds


def teardown_commands(namespaces: Sequence[str]) -> list[list[str]]:
    """Deleting a namespace deletes the veth end inside it (and with it the peer) and its qdisc."""
    return [["ip", "netns", "del", ns] for ns in reversed(namespaces)]


class ShapedLink:
    """A live :class:`Link` whose bandwidth can be changed between runs."""

    def __init__(self, link: Link, runner: Runner) -> None:
        self.link = link
        self.runner = runner
        self.bps: int | None = None

    def shape(self, bps: int | None) -> None:
        if not self.link.emulated:
            if bps is not None:
                raise NetnsError("the loopback fallback cannot be shaped: run as root for emulated links")
            return
        if bps is None and self.bps is None:
            return
        for cmd in shape_commands(self.link, bps):
            self.runner(cmd)
        self.bps = bps


@contextlib.contextmanager
def emulated_link(runner: Runner = run_command, prefix: str = PREFIX) -> Iterator[ShapedLink]:
    """Create two namespaces joined by a veth pair; delete them on exit, whatever happens.

    Raises:
        NetnsError: a command failed (after removing what was already made).
    """
    link = new_link(prefix)
    with _built(link, setup_commands(link), runner) as shaped:
        yield shaped


@contextlib.contextmanager
def emulated_cluster(n: int, runner: Runner = run_command, prefix: str = PREFIX) -> Iterator[ShapedLink]:
    """``n`` ranks behind one emulated switch (module docstring); deleted on exit, whatever happens."""
    link = new_cluster(n, prefix)
    with _built(link, cluster_setup_commands(link), runner) as shaped:
        yield shaped


@contextlib.contextmanager
def _built(link: Link, setup: list[list[str]], runner: Runner) -> Iterator[ShapedLink]:
    made: list[str] = []
    try:
        for cmd in setup:
            runner(cmd)
            if cmd[:3] == ["ip", "netns", "add"]:
                made.append(cmd[3])
        yield ShapedLink(link, runner)
    finally:
        errors = []
        for cmd in teardown_commands(made):
            try:
                runner(cmd)
            except NetnsError as e:  # keep deleting the others
                errors.append(str(e))
        if errors:
            raise NetnsError("could not remove every namespace: " + "; ".join(errors))


def list_namespaces(runner: Runner = run_command) -> list[str]:
    out = runner(["ip", "netns", "list"])
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale(runner: Runner = run_command, prefix: str = PREFIX) -> list[str]:
    """Delete namespaces named ``<prefix>-<pid>-...`` whose creating process no longer exists."""
    pattern = re.compile(rf"^{re.escape(prefix)}-(\d+)-\d+-(\d+|hub)$")
    removed = []
    for name in list_namespaces(runner):
        m = pattern.match(name)
        if m and not _pid_alive(int(m.group(1))):
            runner(["ip", "netns", "del", name])
            removed.append(name)
    return removed


def can_emulate() -> tuple[bool, str]:
    """Whether this process may create namespaces, veths and qdiscs; if not, why."""
    if os.geteuid() != 0:
        return False, "emulated links need root (network namespaces, veth and tc need CAP_NET_ADMIN)"
    missing = [tool for tool in ("ip", "tc") if shutil.which(tool) is None]
    if missing:
        return False, f"emulated links need the tools {missing} (package iproute2)"
    return True, ""
