"""Ports for the servers we start (the embedded S3 server's listeners, the test control
plane's), and the identity of a running process (pid and start time), which tells a live
claim or owner from a stale one."""

from __future__ import annotations

import os
import socket
from pathlib import Path

# Ports for the servers we start: below the kernel's ephemeral range (32768+ by default),
# from which every outgoing connection takes its source port, so none can take a port we
# chose in the seconds before our server binds it, or while it is down for a restart. Also
# below Kubernetes' NodePort range (30000+) and above `make cluster`'s fixed ports (16xxx).
SERVER_PORTS = (20000, 30000)


# A chosen port stays claimed for the life of the process that chose it: a server of ours that
# restarts on its ports (an S3 outage in a test, an API server restart) leaves them unbound
# while it is down, and another process's free_ports could hand one out then (another test
# lane's control plane once did; the restart died, "bind: address already in use"). A claim
# is a file named after the port that holds the claimer's pid and process start time; a
# claim whose process is gone is stale and taken over. They live in the user's cache
# ($ANYTASKTUNE_CACHE/port-claims), not in /tmp, where nothing of ours stays.
def port_claims_dir() -> Path:
    from .basemodels import cache_dir

    return cache_dir() / "port-claims"


def process_identity(pid: int) -> str | None:
    """"<pid> <start time>" of a running process (the start time tells a reused pid apart);
    None for a process that has ended, a zombie included."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return None if fields[0] == "Z" else f"{pid} {fields[19]}"
    except (OSError, IndexError):
        return None


def _claim(claims: Path, port: int, me: str) -> bool:
    """Claim `port` for this process, unless a running process (this one included) holds it.
    Called with the claims folder locked."""
    path = claims / str(port)
    try:
        holder = path.read_text()
    except FileNotFoundError:
        holder = ""
    except OSError:
        return False
    try:
        held = bool(holder) and (holder == me or process_identity(int(holder.split()[0])) == holder)
    except ValueError:  # not a claim we wrote: take it over
        held = False
    if held:
        return False
    try:
        path.write_text(me)
    except OSError:
        return False
    return True


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """`count` distinct free TCP ports from SERVER_PORTS, picked at random (two servers
    started at once rarely pick alike), and claimed for this process (see port_claims_dir). All
    sockets stay bound until every port is chosen."""
    import fcntl
    import random

    picker = random.SystemRandom()
    sockets: list[socket.socket] = []
    me = process_identity(os.getpid()) or f"{os.getpid()} ?"
    claims = port_claims_dir()
    claims.mkdir(parents=True, exist_ok=True)
    with open(claims / ".lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            for _ in range(count * 100):
                if len(sockets) == count:
                    break
                s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                try:
                    s.bind((host, picker.randrange(*SERVER_PORTS)))
                except OSError:  # in use (or bound by one of ours just now)
                    s.close()
                    continue
                if not _claim(claims, int(s.getsockname()[1]), me):  # another running process chose it
                    s.close()
                    continue
                sockets.append(s)
            if len(sockets) < count:
                raise OSError(f"fewer than {count} free ports on {host} in {SERVER_PORTS[0]}-{SERVER_PORTS[1] - 1}")
            return [int(s.getsockname()[1]) for s in sockets]
        finally:
            for s in sockets:
                s.close()


def free_port(host: str = "127.0.0.1") -> int:
    return free_ports(1, host)[0]
