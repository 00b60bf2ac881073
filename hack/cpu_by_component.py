"""Where a command's CPU went, by component, from the kernel's process accounting.

    sudo bash hack/cpu-by-component.sh -- make test      # or: CI=true bash .ci/run

The script turns BSD process accounting on (Debian's `acct`) for the command's run, then this
module reads the records (`dump-acct`: one per process that exited, its user and system time)
and prints a table. Accounting is machine-wide: everything that exits while it is on is
counted, containers' processes included, and a process still running at the end is not.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from collections.abc import Iterable
from dataclasses import dataclass

TICKS_PER_S = 100  # acct v3 records times in AHZ ticks

# (component, whole command names, command-name prefixes); the first match wins. Ray names an
# actor's process `ray::<Class>`, cut to 15 characters like every name here; Ray Train's own
# actors are listed apart from its workers, which run the training.
COMPONENTS: tuple[tuple[str, frozenset[str], tuple[str, ...]], ...] = (
    ("Ray Train workers (the training)", frozenset(), ("ray::RayTrainWo",)),
    ("Ray Train's controller and helper actors", frozenset(),
     ("ray::TrainContr", "ray::PlacementG", "ray::DatasetMan", "ray::Synchroniz", "ray::Preemption", "ray::_Autoscali")),
    ("Ray's own processes (GCS, raylet, agents, dashboard modules, job supervisor)",
     frozenset({"ray", "raylet", "gcs_server"}), ("ray::", "ray-dashboard")),
    ("Python: pytest, the operator, CLIs, drivers run in-process", frozenset({"python", "python3"}), ()),
    ("kube-apiserver", frozenset({"kube-apiserver"}), ()),
    ("etcd", frozenset({"etcd"}), ()),
    ("kube-controller-manager, scheduler, proxy", frozenset({"kube-controller", "kube-scheduler", "kube-proxy"}), ()),
    ("kubectl and helm", frozenset({"kubectl", "helm"}), ()),
    ("the node: kubelet, containerd, runc, CNI, pause, CoreDNS",
     frozenset({"kubelet", "containerd", "containerd-shim", "pause", "coredns", "bridge", "loopback", "host-local"}),
     ("runc",)),
    ("KubeRay and Kueue (both named manager)", frozenset({"manager"}), ()),
    ("S3 server (SeaweedFS)", frozenset({"weed"}), ()),
    ("the kernel's threads", frozenset(), ("kworker", "kdamond", "ksoftirqd")),
)
OTHER = "other (shells, builds, tools)"


@dataclass(frozen=True)
class Record:
    command: str
    cpu_s: float


def parse_dump(lines: Iterable[str]) -> list[Record]:
    """Records from `dump-acct` lines: command|version|utime|stime|etime|..."""
    records = []
    for line in lines:
        fields = line.split("|")
        if len(fields) < 4:
            continue
        try:
            cpu = (float(fields[2]) + float(fields[3])) / TICKS_PER_S
        except ValueError:
            continue
        records.append(Record(fields[0].strip(), cpu))
    return records


def component_of(command: str) -> str:
    for name, whole, prefixes in COMPONENTS:
        if command in whole or command.startswith(prefixes):
            return name
    return OTHER


def table(records: list[Record], wall_s: float | None, cores: int) -> str:
    cpu: dict[str, float] = {}
    count: dict[str, int] = {}
    for r in records:
        c = component_of(r.command)
        cpu[c] = cpu.get(c, 0.0) + r.cpu_s
        count[c] = count.get(c, 0) + 1
    total = sum(cpu.values()) or 1.0
    out = ["| component | CPU (s) | share | processes |", "|---|---|---|---|"]
    for c in sorted(cpu, key=lambda k: -cpu[k]):
        out.append(f"| {c} | {cpu[c]:,.1f} | {100 * cpu[c] / total:.1f}% | {count[c]:,} |")
    out.append(f"| **all** | **{total:,.1f}** | 100% | {sum(count.values()):,} |")
    if wall_s:
        out.append("")
        out.append(f"wall {wall_s / 60:.1f} min on {cores} cores: {total / (wall_s * cores):.0%} of the cores busy "
                   f"with processes that exited (a lower bound: a process still running is not counted)")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("pacct", help="the accounting file the run wrote")
    ap.add_argument("--wall", type=float, help="the run's wall time in seconds (for the cores' use)")
    ap.add_argument("--cores", type=int, default=2)
    args = ap.parse_args(argv)
    dump = subprocess.run(["dump-acct", args.pacct], capture_output=True, text=True, check=True).stdout
    print(table(parse_dump(dump.splitlines()), args.wall, args.cores))
    return 0


if __name__ == "__main__":
    sys.exit(main())
