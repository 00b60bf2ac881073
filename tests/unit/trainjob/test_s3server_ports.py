"""Free ports for the embedded S3 server's twelve listeners must all differ: a
collision makes `weed` die at start-up ("bind: address already in use")."""

from __future__ import annotations

from anytasktune.s3server import free_ports


def test_free_ports_are_distinct() -> None:
    for _ in range(50):
        ports = free_ports(12)
        assert len(set(ports)) == 12
