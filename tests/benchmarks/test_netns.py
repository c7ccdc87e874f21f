"""The emulated link: command construction, cleanup on every failure path, and (as root) a real link."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Sequence

import pytest

from benchmarks.base import netns


class FakeRunner:
    """Records commands; fails (NetnsError) on the first command that starts with ``fail_on``."""

    def __init__(self, fail_on: Sequence[str] | None = None, namespaces: Sequence[str] = ()) -> None:
        self.fail_on = list(fail_on) if fail_on else None
        self.commands: list[list[str]] = []
        self.namespaces = list(namespaces)

    def __call__(self, cmd: Sequence[str]) -> str:
        cmd = list(cmd)
        self.commands.append(cmd)
        if self.fail_on is not None and cmd[: len(self.fail_on)] == self.fail_on:
            self.fail_on = None
            raise netns.NetnsError(f"`{' '.join(cmd)}` failed (exit 2): fake failure")
        if cmd == ["ip", "netns", "list"]:
            return "".join(f"{n} (id: {i})\n" for i, n in enumerate(self.namespaces))
        return ""

    def deleted(self) -> list[str]:
        return [c[3] for c in self.commands if c[:3] == ["ip", "netns", "del"]]

    def added(self) -> list[str]:
        return [c[3] for c in self.commands if c[:3] == ["ip", "netns", "add"]]


def test_parse_and_format_rate() -> None:
    assert netns.parse_rate("200mbit") == 200_000_000
    assert netns.parse_rate("1gbit") == 10**9
    assert netns.parse_rate("1.5Gbit") == 1_500_000_000
    assert netns.parse_rate("500kbit") == 500_000
    assert netns.parse_rate("unshaped") is None
    assert [netns.format_rate(r) for r in (None, 10**9, 200_000_000, 1_500_000_000)] == [
        "unshaped",
        "1gbit",
        "200mbit",
        "1500mbit",
    ]
    for bad in ("fast", "-5mbit", "0mbit", "200 furlongs"):
        with pytest.raises(ValueError, match="bandwidth"):
            netns.parse_rate(bad)


def test_commands_build_two_namespaces_a_veth_and_tbf_on_both_ends() -> None:
    link = netns.new_link()
    ns0, ns1 = link.namespaces
    assert ns0.startswith(f"{netns.PREFIX}-{os.getpid()}-") and ns0 != ns1
    cmds = netns.setup_commands(link)
    assert cmds[:2] == [["ip", "netns", "add", ns0], ["ip", "netns", "add", ns1]]
    assert [
        "ip",
        "link",
        "add",
        "ldveth0",
        "netns",
        ns0,
        "type",
        "veth",
        "peer",
        "name",
        "ldveth1",
        "netns",
        ns1,
    ] in cmds
    assert ["ip", "-n", ns0, "addr", "add", "10.77.0.1/24", "dev", "ldveth0"] in cmds
    assert ["ip", "-n", ns1, "addr", "add", "10.77.0.2/24", "dev", "ldveth1"] in cmds
    shape = netns.shape_commands(link, 200_000_000)
    assert [c[2] for c in shape] == [ns0, ns1]  # egress of both ends
    assert all(c[c.index("tbf") + 1 : c.index("tbf") + 3] == ["rate", "200000000bit"] for c in shape)
    assert [c[-1] for c in netns.shape_commands(link, None)] == ["root", "root"]
    assert link.exec_prefix(1) == ["ip", "netns", "exec", ns1]
    assert netns.LOOPBACK.exec_prefix(1) == [] and netns.LOOPBACK.master_addr == "127.0.0.1"


@pytest.mark.parametrize(
    ("fail_on", "expected_deleted"),
    [
        (["ip", "link", "add"], 2),  # both namespaces exist, the veth fails
        (["ip", "netns", "add"], 0),  # the very first command fails: nothing to remove
    ],
)
def test_setup_failure_removes_what_was_made(fail_on: list[str], expected_deleted: int) -> None:
    runner = FakeRunner(fail_on=fail_on)
    with pytest.raises(netns.NetnsError, match="fake failure"), netns.emulated_link(runner):
        raise AssertionError("the body must not run when set-up fails")
    made = runner.added()[:expected_deleted] if expected_deleted else []
    assert sorted(runner.deleted()) == sorted(made)
    assert len(runner.deleted()) == expected_deleted


def test_second_namespace_failure_removes_the_first() -> None:
    link_cmds: list[str] = []

    class FailSecondAdd(FakeRunner):
        def __call__(self, cmd: Sequence[str]) -> str:
            if list(cmd[:3]) == ["ip", "netns", "add"]:
                link_cmds.append(cmd[3])
                if len(link_cmds) == 2:
                    self.commands.append(list(cmd))
                    raise netns.NetnsError("second add failed")
            return super().__call__(cmd)

    runner = FailSecondAdd()
    with pytest.raises(netns.NetnsError, match="second add failed"), netns.emulated_link(runner):
        pass
    assert runner.deleted() == [link_cmds[0]]


@pytest.mark.parametrize("error", [RuntimeError("a run failed"), KeyboardInterrupt()])
def test_body_failure_and_interrupt_remove_both_namespaces(error: BaseException) -> None:
    runner = FakeRunner()
    with pytest.raises(type(error)), netns.emulated_link(runner) as shaped:
        shaped.shape(10**9)
        raise error
    assert sorted(runner.deleted()) == sorted(runner.added()) and len(runner.added()) == 2


def test_remove_stale_deletes_only_dead_runs_of_our_prefix() -> None:
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(dead.stdout)
    names = [
        f"{netns.PREFIX}-{dead_pid}-0-0",
        f"{netns.PREFIX}-{dead_pid}-0-1",
        f"{netns.PREFIX}-{os.getpid()}-0-0",  # this process: alive
        "someone-elses-namespace",
        f"{netns.PREFIX}-notapid",
    ]
    runner = FakeRunner(namespaces=names)
    assert netns.remove_stale(runner) == names[:2]
    assert runner.deleted() == names[:2]


def test_without_root_can_emulate_says_why(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    ok, why = netns.can_emulate()
    assert not ok and "root" in why


def test_loopback_cannot_be_shaped() -> None:
    shaped = netns.ShapedLink(netns.LOOPBACK, FakeRunner())
    shaped.shape(None)  # nothing to do
    with pytest.raises(netns.NetnsError, match="root"):
        shaped.shape(10**8)


SERVER = """
import socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], 29555)); s.listen(); print("ready", flush=True)
c, _ = s.accept(); n = 0
while True:
    d = c.recv(1 << 16)
    if not d:
        break
    n += len(d)
print(n, flush=True)
"""
CLIENT = "import socket, sys; s = socket.create_connection((sys.argv[1], 29555)); s.sendall(b'x' * int(sys.argv[2]))"


def test_real_shaped_link_carries_traffic_at_the_rate_and_is_removed() -> None:
    ok, why = netns.can_emulate()
    if not ok:  # every machine of this project runs as root; elsewhere the refusal must say why
        assert "root" in why or "iproute2" in why
        return
    nbytes, rate = 2_000_000, 20_000_000  # 2 MB at 20 Mbit/s: at least ~0.8 s through the shaper
    with netns.emulated_link() as shaped:
        link = shaped.link
        assert set(link.namespaces) <= set(netns.list_namespaces())
        shaped.shape(rate)
        qdisc = netns.run_command(["tc", "-n", link.namespaces[1], "qdisc", "show", "dev", link.devices[1]])
        assert "tbf" in qdisc and "20Mbit" in qdisc
        server = subprocess.Popen(
            [*link.exec_prefix(0), sys.executable, "-c", SERVER, link.addresses[0]], stdout=subprocess.PIPE, text=True
        )
        try:
            assert server.stdout is not None and server.stdout.readline().strip() == "ready"
            start = time.perf_counter()
            subprocess.run(
                [*link.exec_prefix(1), sys.executable, "-c", CLIENT, link.addresses[0], str(nbytes)],
                check=True,
                timeout=60,
            )
            received = int(server.stdout.readline())
            elapsed = time.perf_counter() - start
        finally:
            server.kill()
            server.wait()
        assert received == nbytes
        assert elapsed >= 0.5 * nbytes * 8 / rate, f"{nbytes} bytes in {elapsed:.2f} s: faster than the tbf rate"
        names = link.namespaces
    assert not set(names) & set(netns.list_namespaces())


def test_cluster_commands_build_a_switch_and_shape_every_port() -> None:
    link = netns.new_cluster(4)
    *ranks, hub = link.namespaces
    assert len(ranks) == 4 and hub.endswith("-hub") and link.exec_prefix(3) == ["ip", "netns", "exec", ranks[3]]
    assert link.addresses == ("10.77.0.1", "10.77.0.2", "10.77.0.3", "10.77.0.4")
    cmds = netns.cluster_setup_commands(link)
    assert cmds[0] == ["ip", "netns", "add", hub]
    assert ["ip", "-n", hub, "link", "set", "ldport2", "master", netns.HUB_BRIDGE] in cmds
    assert ["ip", "-n", ranks[2], "addr", "add", "10.77.0.3/24", "dev", "ldveth2"] in cmds
    shape = netns.shape_commands(link, 500_000_000)
    # upload (rank end) and download (switch port) of every rank
    assert sorted((c[2], c[6]) for c in shape) == sorted(
        [*((ns, f"ldveth{r}") for r, ns in enumerate(ranks)), *((hub, f"ldport{r}") for r in range(4))]
    )
    with pytest.raises(ValueError, match="2 to 250"):
        netns.new_cluster(1)


def test_cluster_failure_removes_every_namespace_and_stale_hubs_are_found() -> None:
    runner = FakeRunner(fail_on=["ip", "-n"])  # fails right after the switch namespace: bridge creation
    with pytest.raises(netns.NetnsError), netns.emulated_cluster(3, runner):
        pass
    assert runner.deleted() == runner.added() and len(runner.added()) == 1
    runner = FakeRunner()
    with netns.emulated_cluster(3, runner) as shaped:
        assert len(runner.added()) == 4
        shaped.shape(10**8)
    assert sorted(runner.deleted()) == sorted(runner.added())
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    names = [f"{netns.PREFIX}-{int(dead.stdout)}-0-{s}" for s in ("0", "3", "hub")]
    assert netns.remove_stale(FakeRunner(namespaces=names)) == names
