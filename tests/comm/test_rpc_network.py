"""Which interface the sasgd RPC agent is pinned to: the user's TP_SOCKET_IFNAME, else GLOO_SOCKET_IFNAME,
else the interface that reaches MASTER_ADDR (docs/security.md)."""

from __future__ import annotations

import os

import pytest

from lightning_delayed.comm.rpc_network import interface_address, interface_for, pin_rpc_interface


def test_loopback_is_reached_through_lo() -> None:
    assert interface_for("127.0.0.1") == "lo"
    assert interface_address("lo") == "127.0.0.1"
    assert interface_address("no-such-interface0") is None


@pytest.mark.parametrize(
    ("tp", "gloo", "expected"),
    [
        ("eth7", "eth1,eth2", "eth7"),  # the user's TP_SOCKET_IFNAME wins and is left as it is
        (None, "eth1,eth2", "eth1"),  # else gloo's first interface: the one the user pinned for training
        (None, None, "lo"),  # else the interface that reaches MASTER_ADDR
        ("", " ", "lo"),  # empty values count as unset
    ],
)
def test_the_interface_follows_the_users_variables_first(
    monkeypatch: pytest.MonkeyPatch, tp: str | None, gloo: str | None, expected: str
) -> None:
    for name, value in (("TP_SOCKET_IFNAME", tp), ("GLOO_SOCKET_IFNAME", gloo)):
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, value)
    assert pin_rpc_interface("127.0.0.1") == expected
    assert os.environ["TP_SOCKET_IFNAME"] == expected
