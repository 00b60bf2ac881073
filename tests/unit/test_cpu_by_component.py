"""hack/cpu_by_component.py: process accounting records to components."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "hack"))

import cpu_by_component as cbc  # noqa: E402


@pytest.mark.parametrize(("command", "component"), [
    ("ray::RayTrainWo", "Ray Train workers (the training)"),
    ("ray::TrainContr", "Ray Train's controller and helper actors"),
    ("ray::_Autoscali", "Ray Train's controller and helper actors"),
    ("ray::IDLE", "Ray's own processes (GCS, raylet, agents, dashboard modules, job supervisor)"),
    ("ray", "Ray's own processes (GCS, raylet, agents, dashboard modules, job supervisor)"),
    ("raylet", "Ray's own processes (GCS, raylet, agents, dashboard modules, job supervisor)"),
    ("ray-dashboard-N", "Ray's own processes (GCS, raylet, agents, dashboard modules, job supervisor)"),
    ("python3", "Python: pytest, the operator, CLIs, drivers run in-process"),
    ("kube-apiserver", "kube-apiserver"),
    ("kubectl", "kubectl and helm"),
    ("runc:[1:CHILD]", "the node: kubelet, containerd, runc, CNI, pause, CoreDNS"),
    ("containerd-shim", "the node: kubelet, containerd, runc, CNI, pause, CoreDNS"),
    ("weed", "S3 server (SeaweedFS)"),
    ("kworker/u8:1", "the kernel's threads"),
    ("rayx", cbc.OTHER),  # a whole name is matched whole
    ("bash", cbc.OTHER),
])
def test_a_command_name_belongs_to_one_component(command: str, component: str) -> None:
    assert cbc.component_of(command) == component


def test_dump_lines_give_user_plus_system_seconds_and_skip_what_is_not_a_record() -> None:
    lines = [
        "python          |v3| 17792.00|  2041.00|188219.00|     0|     0|5992448.00|191823872.00|   27059|   27051|S   X|",
        "kubectl         |v3|    11.00|     1.00|    30.00|     0|     0|  1000.00|     0.00|     1|     2|     |",
        "garbage",
        "x|v3|not-a-number|1|",
    ]
    assert cbc.parse_dump(lines) == [cbc.Record("python", 198.33), cbc.Record("kubectl", 0.12)]


def test_the_table_sums_by_component_largest_first_with_the_cores_use() -> None:
    records = [cbc.Record("kubectl", 1.0), cbc.Record("python", 6.0), cbc.Record("kubectl", 3.0)]
    text = cbc.table(records, wall_s=10.0, cores=2)
    rows = text.splitlines()
    assert rows[2] == "| Python: pytest, the operator, CLIs, drivers run in-process | 6.0 | 60.0% | 1 |"
    assert rows[3] == "| kubectl and helm | 4.0 | 40.0% | 2 |"
    assert rows[4] == "| **all** | **10.0** | 100% | 3 |"
    assert "50% of the cores busy" in text
