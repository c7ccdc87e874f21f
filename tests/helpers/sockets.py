"""The TCP sockets this process listens on, read from ``/proc`` (Linux), for tests of what ranks expose."""

from __future__ import annotations

import os
import socket

WILDCARDS = ("0.0.0.0", "::")


def _decode(hex_address: str, v6: bool) -> tuple[str, int]:
    host, port = hex_address.split(":")
    raw = bytes.fromhex(host)
    # /proc prints each 32-bit word of the address in host (little-endian) byte order.
    raw = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
    return socket.inet_ntop(socket.AF_INET6 if v6 else socket.AF_INET, raw), int(port, 16)


def listening_sockets() -> set[tuple[str, int]]:
    """``(address, port)`` of every TCP socket in LISTEN state that this process holds."""
    inodes = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:  # closed meanwhile
            continue
        if target.startswith("socket:["):
            inodes.add(target[len("socket:[") : -1])
    found = set()
    for table, v6 in (("/proc/net/tcp", False), ("/proc/net/tcp6", True)):
        if not os.path.exists(table):
            continue
        with open(table) as f:
            next(f)
            for line in f:
                fields = line.split()
                if fields[3] == "0A" and fields[9] in inodes:  # 0A: LISTEN
                    found.add(_decode(fields[1], v6))
    return found


def local_ipv4_interfaces() -> list[tuple[str, str]]:
    """``(name, address)`` of this host's IPv4 interfaces other than loopback (what a multi-node run uses)."""
    from lightning_delayed.comm.rpc_network import interface_address

    found = []
    for _, name in socket.if_nameindex():
        address = interface_address(name)
        if address is not None and not address.startswith("127."):
            found.append((name, address))
    return found
