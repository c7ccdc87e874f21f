"""Where the sasgd RPC agent listens, and how its ranks meet without opening a port of their own.

Two things, both about what the parameter server exposes on the network (see ``docs/security.md``):

* **The interface.** TensorPipe's TCP transport listens on one address, chosen once per process from
  ``$TP_SOCKET_IFNAME`` or else from the host name, which on many machines resolves to a public
  address. :func:`pin_rpc_interface` names the interface before the agent starts: the user's
  ``TP_SOCKET_IFNAME``, else the first of ``GLOO_SOCKET_IFNAME``, else the interface this host uses
  to reach ``MASTER_ADDR`` (the one the ranks already talk over). The port is the kernel's choice
  (port 0), so no other process can take it between choice and bind.
* **The rendezvous.** ``rpc.init_rpc`` meets its peers through a store named by a URL. Binding a
  port for a new store (``tcp://``) would open a second, wildcard listener; :func:`rendezvous_url`
  instead hands the RPC agent a prefix of the store the default process group already uses.
"""

from __future__ import annotations

import os
import socket
import struct
import threading
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlparse

from torch.distributed import PrefixStore, Store, TCPStore  # type: ignore[attr-defined]
from torch.distributed.rendezvous import register_rendezvous_handler

from lightning_delayed._compat import default_store

if TYPE_CHECKING:
    from collections.abc import Iterator
    from datetime import timedelta

TP_IFNAME_ENV = "TP_SOCKET_IFNAME"
GLOO_IFNAME_ENV = "GLOO_SOCKET_IFNAME"
_SCHEME = "lightning-delayed-store"
_STORES: dict[str, Store] = {}
_LOCK = threading.Lock()
_registered = False


# ---------------------------------------------------------------------- the interface


def interface_address(name: str) -> str | None:
    """The IPv4 address of the local interface ``name``, or ``None`` (unknown name, no IPv4, not Linux)."""
    try:
        import fcntl
    except ImportError:  # not a Unix: no SIOCGIFADDR
        return None
    siocgifaddr = 0x8915
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            packed = fcntl.ioctl(s.fileno(), siocgifaddr, struct.pack("256s", name.encode()[:15]))
        except OSError:
            return None
    return socket.inet_ntoa(packed[20:24])


def interface_for(address: str) -> str | None:
    """The name of the local interface this host uses to reach ``address`` (IPv4), or ``None``.

    For an address of this host that is the interface holding it (``127.0.0.1`` gives ``lo``).
    """
    try:
        target = socket.getaddrinfo(address, None, socket.AF_INET, socket.SOCK_DGRAM)[0][4][0]
        # connect() on a UDP socket sends nothing: it only asks the kernel for the route's source address.
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect((target, 9))
            local = s.getsockname()[0]
    except OSError:
        return None
    for _, name in socket.if_nameindex():
        if interface_address(name) == local:
            return name
    return None


def pin_rpc_interface(master_addr: str) -> str | None:
    """Set ``TP_SOCKET_IFNAME`` (unless the user did) so the RPC agent listens on one private interface.

    Returns the interface the agent will use, or ``None`` where none could be found (the agent then
    falls back to TensorPipe's own guess from the host name). TensorPipe reads the variable once per
    process, when the first agent starts, so this must run before the first ``init_rpc``.
    """
    named = os.environ.get(TP_IFNAME_ENV, "").strip()
    if named:
        return named
    gloo = os.environ.get(GLOO_IFNAME_ENV, "").split(",")[0].strip()
    name = gloo or interface_for(master_addr)
    if name:
        os.environ[TP_IFNAME_ENV] = name
    return name


# ---------------------------------------------------------------------- the rendezvous


def _handler(url: str, **kwargs: Any) -> Iterator[tuple[Store, int, int]]:
    parsed = urlparse(url)
    query = parse_qs(parsed.query)
    with _LOCK:
        store = _STORES.pop(parsed.netloc)
    yield store, int(query["rank"][0]), int(query["world_size"][0])


def rendezvous_url(token: str, master_addr: str, master_port: int | None, timeout: timedelta) -> str:
    """An ``init_method`` for ``rpc.init_rpc`` that meets on the default process group's store.

    Every rank connects as a client to the store already listening on ``master_addr:master_port``
    (the one ``init_process_group`` made, through Lightning, which always sets ``MASTER_PORT``) and
    uses keys under a prefix of its own, ``token``, which must be the same on every rank and new for
    every start of the agent. Without a port (a process group the user started some other way), the
    default group's own store object is used.
    """
    global _registered
    if master_port:
        store: Store = TCPStore(master_addr, master_port, is_master=False, timeout=timeout, wait_for_workers=False)
    else:
        store = default_store()  # private in torch: no public accessor
    with _LOCK:
        if not _registered:
            register_rendezvous_handler(_SCHEME, _handler)
            _registered = True
        _STORES[token] = PrefixStore(f"lightning_delayed/sasgd/{token}/", store)
    return f"{_SCHEME}://{token}"
