"""Local mode, the command: `anytasktune run FILE` and `anytasktune datasets check FILE`.

The same validation, the same planner, the same executor loop and the same trainjob
as in a cluster; `staging` stands in for the cluster's storage, `supervisor` for its
RayJobs, `presentation` shows progress and the summary table.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from anytasktune.executor import ManifestReads
from anytasktune.local.staging import LocalError, copy_out, copy_registry, point_at, prepare, s3_server, stage, trainjob_env
from anytasktune.local.supervisor import LOCAL_CONFIG, LocalExecutor, local_ray, run_until_done
from anytasktune.resolve import resolve_subtask
from anytasktune.spec import Phase, TaskFineTune


@dataclass
class Outcome:
    status: dict[str, Any]
    manifests: dict[str, dict[str, Any]]  # the full manifest.json of each published adapter
    local_copies: dict[str, Path]
    wall_seconds: float


def run_file(path: Path, workdir: Path, *, s3_endpoint: str | None = None, base_model: str | None = None,
             show_progress: bool = True) -> Outcome:
    from anytasktune.local.presentation import Progress

    t0 = time.monotonic()
    prepared = prepare(path, base_model)
    name = prepared.obj["metadata"]["name"]
    workdir = workdir.resolve() / name
    workdir.mkdir(parents=True, exist_ok=True)
    with s3_server(workdir, s3_endpoint) as (endpoint, s3_env):
        store = stage(endpoint, s3_env, prepared)
        obj = point_at(prepared.obj, endpoint)
        env = trainjob_env(s3_env)
        # Ray's worker processes are children of the Ray cluster started here, not of
        # the trainjob driver: they must find their settings in this environment
        # (in a cluster, every Ray pod gets them from the pod spec instead).
        os.environ.update({k: v for k, v in env.items() if k.startswith(("DS_", "TORCH_", "HF_", "TRANSFORMERS_"))})
        with local_ray() as ray_address:
            env.update({k: v for k, v in os.environ.items() if k.startswith("RAY_")})
            executor = LocalExecutor(workdir, env, ray_address, store, ManifestReads(LOCAL_CONFIG.manifest_backoff), lambda e: None)
            with Progress(executor, enabled=show_progress) as ui:
                executor.on_event = ui.event
                try:
                    run_until_done(obj, executor, ui.refresh)
                except KeyboardInterrupt:
                    executor.stop_all()
                    raise
        copies = copy_out(store, executor.status, workdir / "adapters")
        copy_registry(store, obj, workdir / "index.json")
    manifests = {sub: json.loads((folder / "manifest.json").read_text()) for sub, folder in copies.items()
                 if (folder / "manifest.json").is_file()}
    (workdir / "status.json").write_text(json.dumps(executor.status, indent=2, ensure_ascii=False))
    return Outcome(executor.status, manifests, copies, time.monotonic() - t0)


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def main(args: argparse.Namespace) -> int:
    from anytasktune.local.presentation import print_summary, summary_rows

    signal.signal(signal.SIGTERM, _interrupt)  # `kill`, systemd, CI timeouts: stop as cleanly as Ctrl-C
    workdir = Path(args.workdir or "out")
    try:
        outcome = run_file(Path(args.file), workdir, s3_endpoint=args.s3_endpoint, base_model=args.base_model,
                           show_progress=not args.no_progress and args.output == "text")
    except LocalError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\ninterrupted: stopped every sub-task; run the same command again to resume from checkpoints",
              file=sys.stderr)
        return 130
    rows = summary_rows(outcome.status, outcome.manifests, outcome.local_copies)
    phase = outcome.status.get("phase", "")
    if args.output == "json":
        print(json.dumps({"phase": phase, "wallSeconds": round(outcome.wall_seconds, 1), "subtasks": rows}, indent=2, ensure_ascii=False))
    else:
        print_summary(rows, phase, outcome.wall_seconds)
    if phase == Phase.Suspended.value:
        print("suspended: spec.suspend is true, so nothing runs; set it to false and run again to resume "
              "(each sub-task continues from its last checkpoint)", file=sys.stderr)
        return 0
    failed = [r["subtask"] for r in rows if r["phase"] != "Succeeded"]
    if failed:
        print(f"error: sub-task(s) failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


def datasets_check(args: argparse.Namespace) -> int:
    """Run each sub-task's data contract (the trainjob's own code) without training."""
    try:
        results = _check_each_subtask(Path(args.file), args.s3_endpoint)
    except LocalError as err:  # a bad file, or its workdir's S3 server held by a run
        print(f"error: {err}", file=sys.stderr)
        return 1
    if args.output == "json":
        print(json.dumps(results, indent=2, ensure_ascii=False))
    else:
        for r in results:
            if r["ok"]:
                contract = json.loads(r["detail"][r["detail"].index("{"):])
                print(f"{r['subtask']}: ok ({json.dumps(contract.get('dataContract', {}), ensure_ascii=False)[:200]})")
            else:
                print(f"{r['subtask']}: {r['detail']}", file=sys.stderr)
    return 0 if all(r["ok"] for r in results) else 1


def _check_each_subtask(path: Path, s3_endpoint: str | None) -> list[dict[str, Any]]:
    """Each sub-task's data contract, run by the trainjob's own code against the staged data."""
    prepared = prepare(path)
    workdir = Path("out").resolve() / prepared.obj["metadata"]["name"]
    workdir.mkdir(parents=True, exist_ok=True)
    results: list[dict[str, Any]] = []
    with s3_server(workdir, s3_endpoint) as (endpoint, s3_env):
        stage(endpoint, s3_env, prepared)
        obj = point_at(prepared.obj, endpoint)
        model = TaskFineTune.model_validate({"metadata": obj["metadata"], "spec": obj["spec"]})
        env = trainjob_env(s3_env)
        for sub in model.spec.subtasks:
            spec = resolve_subtask(model.metadata["name"], "local", model.spec, sub)
            proc = subprocess.run([sys.executable, "-m", "anytasktune_trainjob", "--check-data"], env={**env, "ANYTASKTUNE_SPEC": spec.to_json()},
                                  capture_output=True, text=True)
            ok = proc.returncode == 0
            last = (proc.stdout.strip().splitlines() or [""])[-1]
            results.append({"subtask": sub.name, "ok": ok, "detail": proc.stdout if ok else last})
    return results
