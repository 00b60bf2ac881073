"""Ports for the servers we start (the embedded S3 server's eight listeners, the test
control plane's): all different, free, and outside the kernel's ephemeral range, from which
every outgoing connection takes its source port. A port chosen there can be taken by any
connection in the seconds before our server binds it, or while it is down for a restart;
`weed` then dies at start-up ("bind: address already in use")."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from anytasktune.ports import SERVER_PORTS, free_ports


def _ephemeral_range() -> tuple[int, int]:
    low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
    return int(low), int(high)


def test_free_ports_are_distinct_and_below_the_ephemeral_range() -> None:
    low, _ = _ephemeral_range()
    for _ in range(50):
        ports = free_ports(12)
        assert len(set(ports)) == 12
        assert all(SERVER_PORTS[0] <= p < SERVER_PORTS[1] and p < low for p in ports), ports


def test_a_port_in_use_is_never_handed_out() -> None:
    holders = []
    try:
        for port in range(SERVER_PORTS[0], SERVER_PORTS[0] + 200):
            s = socket.socket()
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                s.close()
                continue
            holders.append(s)
        held = {s.getsockname()[1] for s in holders}
        for _ in range(20):
            assert not held & set(free_ports(8))
    finally:
        for s in holders:
            s.close()


def test_ports_another_live_process_chose_are_not_handed_out_while_it_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    """A server that restarts on its ports (an S3 outage in a test, an API server restart)
    leaves them unbound while it is down; another lane's control plane once took one then,
    and the restart died ("bind: address already in use"). A chosen port stays claimed for
    the life of the process that chose it."""
    import subprocess
    import sys

    child = subprocess.Popen([sys.executable, "-c", "import sys; from anytasktune.ports import free_ports; "
                              "print(*free_ports(300), flush=True); sys.stdin.read()"],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None
        theirs = {int(p) for p in child.stdout.readline().split()}
        assert len(theirs) == 300  # closed in the child: free to bind, claimed all the same
        ours = {p for _ in range(5) for p in free_ports(100)}  # ~15 alike by chance, without claims
        assert not ours & theirs
    finally:
        child.communicate("")
    # the claimer is gone: its ports are free to choose again
    from anytasktune import ports

    for port in sorted(theirs)[:3]:
        monkeypatch.setattr(ports, "SERVER_PORTS", (port, port + 1))
        assert free_ports(1) == [port]


def test_a_port_taken_before_weed_binds_it_is_chosen_again(monkeypatch: pytest.MonkeyPatch) -> None:
    """The real `weed`: the first choice includes a port another program listens on."""
    from anytasktune import s3server

    blocker = socket.socket()
    blocker.bind(("127.0.0.1", 0))
    blocker.listen()
    choices: list[list[int]] = []
    real = s3server.free_ports

    def first_with_a_taken_port(count: int, host: str = "127.0.0.1") -> list[int]:
        ports = real(count, host)
        if not choices:
            ports[0] = blocker.getsockname()[1]  # the master's http port
        choices.append(ports)
        return ports

    monkeypatch.setattr(s3server, "free_ports", first_with_a_taken_port)
    try:
        with s3server.EmbeddedS3(buckets=["ports"]) as s3:
            assert len(choices) == 2, choices
            assert s3.port in choices[1]
            assert [b["Name"] for b in s3.client().list_buckets()["Buckets"]] == ["ports"]
            assert "address already in use" in s3.log_path.read_text(errors="replace")
    finally:
        blocker.close()


def test_a_stopped_server_leaves_nothing_in_the_temporary_directory() -> None:
    """The real `weed`: its glog files and its local unix sockets (named after its
    ports) used to pile up in /tmp, thousands of files over a test run."""
    import tempfile
    import time

    from anytasktune import s3server

    def ours(ports: set[str]) -> list[Path]:
        found = []
        for folder in {Path(tempfile.gettempdir()), Path("/tmp")}:
            found += [p for p in folder.glob("seaweedfs-*.sock") if p.stem.rsplit("-", 1)[-1] in ports]
            found += [p for p in folder.glob("weed.*") if p.stat().st_mtime >= started]
        return found

    started = time.time() - 1
    s3 = s3server.EmbeddedS3(buckets=["tidy"]).start()
    ports = {str(p) for pair in s3._ports.values() for p in pair}
    s3.stop(keep_data=True)  # a restart on the same ports works with the sockets gone
    s3.start()
    assert [b["Name"] for b in s3.client().list_buckets()["Buckets"]] == ["tidy"]
    s3.stop()
    assert ours(ports) == []
    assert not s3.data_dir.exists()
