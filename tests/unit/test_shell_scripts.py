"""Shell scripts under `set -o pipefail` must not end a pipeline early.

`cmd | head -1` (or `| grep -q`, `| grep -m`) closes the pipe after the first match;
`cmd` dies of SIGPIPE on its next write and, under pipefail, the pipeline fails with
141, depending on timing. That made a cold `make test` fail once
(`etcd --version | head -1` in hack/build-controlplane.sh)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
EARLY_EXIT = re.compile(r"\|\s*(head\b|grep\s+(-\w*[qm]\w*|--quiet|--max-count))")


def _scripts() -> list[Path]:
    found = [p for p in ROOT.rglob("*.sh") if ".venv" not in p.parts and ".git" not in p.parts]
    found += [p for p in (ROOT / ".ci").iterdir() if p.is_file()]
    return sorted(found)


def _offences(text: str) -> list[str]:
    if "pipefail" not in text:
        return []
    return [line.strip() for line in text.splitlines() if EARLY_EXIT.search(line.split("#", 1)[0])]


@pytest.mark.parametrize(
    ("line", "bad"),
    [
        ('"$bin/etcd" --version | head -1 >&2', True),
        ("ip link show | grep -q anytasktune0", True),
        ("go list -m all | grep -m1 kubernetes", True),
        ("sha256sum | cut -d' ' -f1", False),
        ("# never `| head` under pipefail", False),
    ],
)
def test_detects_early_exit_pipes(line: str, bad: bool) -> None:
    assert bool(_offences("set -o pipefail\n" + line)) is bad


def test_no_script_ends_a_pipe_early_under_pipefail() -> None:
    scripts = _scripts()
    assert any(p.name == "build-controlplane.sh" for p in scripts)
    offences = {str(p.relative_to(ROOT)): o for p in scripts if (o := _offences(p.read_text(errors="replace")))}
    assert offences == {}


def test_a_daemon_is_alive_the_moment_start_returns(tmp_path: Path) -> None:
    """hack/cluster: `start` backgrounds a daemon and `wait_for` checks `alive` (the PID's
    command line names the daemon) after its first probe. Until the forked shell has exec'd
    the daemon, that command line is the script's own: on a busy machine a probe refused at
    once made up.sh report "coredns exited" for a CoreDNS that was starting fine. Here the
    fork is held before its exec by its log being a FIFO that nobody reads for 0.3 s."""
    daemon = tmp_path / "fake-daemon"  # `sleep` under a daemon's name: its command line names it
    shutil.copy(shutil.which("sleep") or "/bin/sleep", daemon)
    script = tmp_path / "run.sh"  # a file, not `bash -c`: that command line would name the daemon too
    script.write_text(f"""
set -euo pipefail
source {ROOT}/hack/cluster/lib.sh
RUN={tmp_path}/run LOGS={tmp_path}/logs
mkdir -p "$RUN" "$LOGS"
mkfifo "$LOGS/fake-daemon.log"
(sleep 0.3; cat "$LOGS/fake-daemon.log" >/dev/null) &
start fake-daemon {daemon} 5
alive fake-daemon || {{ echo "not alive right after start"; exit 1; }}
kill "$(cat "$(pidfile fake-daemon)")"
""")
    proc = subprocess.run(["bash", str(script)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_a_daemon_does_not_inherit_the_lock_up_sh_holds(tmp_path: Path) -> None:
    """up.sh holds a lock while it runs (one up.sh or down.sh at a time, so a cluster still
    starting is never taken for a dead one). A daemon that inherited its descriptor would
    hold it for the cluster's life, and the next `make cluster` would wait forever."""
    daemon = tmp_path / "fake-daemon"
    shutil.copy(shutil.which("sleep") or "/bin/sleep", daemon)
    script = tmp_path / "run.sh"
    script.write_text(f"""
set -euo pipefail
source {ROOT}/hack/cluster/lib.sh
RUN={tmp_path}/run LOGS={tmp_path}/logs SCRIPTS_LOCK={tmp_path}/scripts.lock
mkdir -p "$RUN" "$LOGS"
hold_scripts_lock
start fake-daemon {daemon} 5
pid="$(cat "$(pidfile fake-daemon)")"
ls -l /proc/$$/fd | grep -q scripts.lock || {{ echo "the script does not hold the lock"; exit 1; }}
if ls -l /proc/$pid/fd | grep -q scripts.lock; then echo "the daemon holds the lock"; kill "$pid"; exit 1; fi
kill "$pid"
""")
    proc = subprocess.run(["bash", str(script)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
