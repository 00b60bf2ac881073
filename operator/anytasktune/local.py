"""Local mode: `anytasktune run FILE` trains a TaskFineTune on this machine.

The same validation, the same planner and the same trainjob as in a cluster. What
changes is only what stands in for the cluster's parts:

- a RayJob becomes a trainjob subprocess (`python -m anytasktune_trainjob --spec …`),
  all of them drivers on one local Ray cluster started here;
- S3 is an embedded SeaweedFS server on loopback (unless --s3-endpoint is given);
  datasets given as local paths are uploaded to it, and adapters are copied back
  into a local folder the user can open.

The planner sees each subprocess as an ObservedJob (running / succeeded / failed with
the tail of its output as the message), so retries, backoff, failure classes and the
parallelism limit behave exactly as the operator's.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from anytasktune.config import OperatorConfig
from anytasktune.plan import DeleteJob, Launch, ObservedJob, Plan, format_time, plan, subtasks_needing_manifest
from anytasktune.render import LABEL_ATTEMPT, LABEL_RUN_ID, LABEL_SUBTASK, SPEC_FILE
from anytasktune.spec import Phase, TaskFineTune
from anytasktune.validation import Problem, line_of, load_documents, validate_object
from anytasktune_contract.trainspec import TrainJobSpec, metrics_for

LOCAL_BUCKET = "anytasktune-local"
PROGRESS_RE = re.compile(
    r"step (?P<step>\d+)/(?P<total>\d+) epoch \d+ loss (?P<loss>[\d.]+) lr \S+ tok/s (?P<toks>[\d,]+) eta (?P<eta>[\d:]+)"
)
LOCAL_CONFIG = OperatorConfig(retry_backoff_seconds=5, retry_backoff_max_seconds=60)


class LocalError(Exception):
    """A problem the user can fix (printed without a traceback)."""

    def __init__(self, message: str, problems: list[Problem] | None = None):
        super().__init__(message)
        self.problems = problems or []


# --- preparing the resource for this machine ---------------------------------


@dataclass
class Prepared:
    obj: dict[str, Any]  # the TaskFineTune, local paths replaced by their S3 locations
    uploads: dict[str, Path] = field(default_factory=dict)  # s3 uri -> local file or folder


def _is_local(uri: str) -> bool:
    return not uri.startswith("s3://")


def prepare(path: Path, base_model: str | None = None, resolve_models: bool = True) -> Prepared:
    """Validate the file as the API server would, after mapping local paths to the
    S3 locations local mode uploads them to. Raises LocalError with file:line problems.
    With resolve_models, a known baseModel.id is prepared in the model cache."""
    try:
        docs = [d for d in load_documents(path) if isinstance(d.obj, dict) and d.obj.get("kind") == "TaskFineTune"]
    except Exception as err:  # noqa: BLE001 - YAML errors become a user message
        raise LocalError(f"{path}: {err}") from err
    if len(docs) != 1:
        raise LocalError(f"{path}: expected exactly one TaskFineTune, found {len(docs)}")
    doc = docs[0]
    obj = copy.deepcopy(doc.obj)
    uploads: dict[str, Path] = {}
    problems: list[Problem] = []
    name = (obj.get("metadata") or {}).get("name", "local")
    for i, sub in enumerate((obj.get("spec") or {}).get("subtasks") or []):
        uri = (sub.get("dataset") or {}).get("uri", "")
        if isinstance(uri, str) and uri and _is_local(uri):
            local = (path.parent / uri.removeprefix("file://")).resolve()
            target = f"s3://{LOCAL_BUCKET}/datasets/{name}/{sub.get('name', i)}/{local.name}"
            sub["dataset"]["uri"] = target  # even when missing: one problem per mistake
            if local.is_file():
                uploads[target] = local
            else:
                line = line_of(doc.node, ("spec", "subtasks", i, "dataset", "uri"))
                problems.append(Problem(str(path), line, f"spec.subtasks[{i}].dataset.uri", f"no such file: {local}"))
    spec = obj.get("spec") or {}
    model = spec.get("baseModel") or {}
    if base_model:
        spec["baseModel"] = model = {"uri": str(Path(base_model).resolve())}
    if isinstance(model.get("uri"), str) and _is_local(model["uri"]):
        folder = Path(model["uri"]).expanduser().resolve()
        if not (folder / "config.json").is_file():
            line = line_of(doc.node, ("spec", "baseModel", "uri"))
            problems.append(Problem(str(path), line, "spec.baseModel.uri", f"not a model folder (no config.json): {folder}"))
        else:
            target = f"s3://{LOCAL_BUCKET}/models/{folder.name}/"
            model["uri"] = target
            uploads[target] = folder
    elif model.get("id") and not model.get("cachePath") and resolve_models:
        from anytasktune.basemodels import hf_home, resolve_local_model

        if resolve_local_model(model["id"]) is not None:
            model["cachePath"] = str(hf_home())
    problems += validate_object(obj, str(path), doc.node)
    if problems:
        raise LocalError("\n".join(map(str, problems)), problems)
    return Prepared(obj, uploads)


def point_at(obj: dict[str, Any], endpoint: str) -> dict[str, Any]:
    """The resource as local mode runs it: every S3 access goes to `endpoint`."""
    out = copy.deepcopy(obj)
    storage = out["spec"]["storage"]
    storage.update(endpoint=endpoint, addressingStyle="path")
    storage.pop("credentialsSecret", None)  # local credentials come from the environment
    # Every worker gets an equal share of this machine's cores (all of them for one worker).
    cluster = out["spec"].setdefault("cluster", {})
    workers = int(cluster.get("workers", 1))
    cluster["cpusPerWorker"] = str(max((os.cpu_count() or 1) // workers, 1))
    out["metadata"].update(namespace="local", uid="local", generation=1)
    return out


# --- a trainjob subprocess standing in for a RayJob --------------------------


@dataclass
class LocalJob:
    name: str
    subtask: str
    run_id: str
    attempt: int
    proc: subprocess.Popen[str]
    log_path: Path
    started: str
    ended: str | None = None
    tail: list[str] = field(default_factory=list)
    progress: dict[str, Any] = field(default_factory=dict)
    stage: str = "starting"

    def observed(self) -> ObservedJob:
        code = self.proc.poll()
        if code is None:
            status = ("Running", "RUNNING")
        elif code == 0:
            status = ("Complete", "SUCCEEDED")
        else:
            status = ("Failed", "FAILED")
        if code is not None and self.ended is None:
            self.ended = format_time(datetime.now(timezone.utc))
        return ObservedJob(
            name=self.name, subtask=self.subtask, run_id=self.run_id, attempt=self.attempt,
            deployment_status=status[0], job_status=status[1],
            message="\n".join(self.tail[-30:]) if code else "", start_time=self.started, end_time=self.ended,
        )

    def follow(self) -> None:
        """Read the subprocess output: keep the tail, parse progress, write the log."""
        assert self.proc.stdout is not None
        with open(self.log_path, "a", encoding="utf-8") as log:
            for line in self.proc.stdout:
                log.write(line)
                log.flush()
                line = line.rstrip("\n")
                self.tail = (self.tail + [line])[-200:]
                if (m := PROGRESS_RE.search(line)) is not None:
                    self.stage = "training"
                    self.progress = {"step": int(m["step"]), "total": int(m["total"]), "loss": float(m["loss"]),
                                     "tokens_per_s": float(m["toks"].replace(",", "")), "eta": m["eta"]}
                elif "evaluat" in line.lower() and "[anytasktune]" in line:
                    self.stage = "evaluating"
                elif "data contract passed" in line:
                    self.stage = "data ok"


# --- the run -----------------------------------------------------------------


@dataclass
class Outcome:
    status: dict[str, Any]
    manifests: dict[str, dict[str, Any]]
    local_copies: dict[str, Path]
    wall_seconds: float


class LocalRun:
    def __init__(self, obj: dict[str, Any], workdir: Path, env: dict[str, str], ray_address: str, show_progress: bool):
        self.obj = obj
        self.workdir = workdir
        self.env = env
        self.ray_address = ray_address
        self.jobs: dict[str, LocalJob] = {}
        self.manifests: dict[str, dict[str, Any]] = {}
        self.status: dict[str, Any] = {}
        self.show_progress = show_progress

    def _launch(self, launch: Launch) -> None:
        """What the operator would put in a ConfigMap and a RayJob becomes a file and a process."""
        spec_path = self.workdir / "specs" / f"{launch.name}.json"
        spec_path.parent.mkdir(parents=True, exist_ok=True)
        spec_path.write_text(launch.configmap["data"][SPEC_FILE], encoding="utf-8")
        log_path = self.workdir / "logs" / f"{launch.name}.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        proc = subprocess.Popen(
            [sys.executable, "-m", "anytasktune_trainjob", "--spec", str(spec_path), "--ray-address", self.ray_address],
            env=self.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, encoding="utf-8", errors="replace",
            start_new_session=True,  # Ctrl-C reaches us first; we stop the children cleanly
        )
        labels = launch.configmap["metadata"]["labels"]
        job = LocalJob(launch.name, labels[LABEL_SUBTASK], labels[LABEL_RUN_ID], int(labels[LABEL_ATTEMPT]), proc, log_path,
                       format_time(datetime.now(timezone.utc)))
        threading.Thread(target=job.follow, daemon=True).start()
        self.jobs[launch.name] = job

    def _stop(self, name: str) -> None:
        job = self.jobs.get(name)
        if job is not None and job.proc.poll() is None:
            os.killpg(job.proc.pid, signal.SIGTERM)

    def stop_all(self, grace: float = 20.0) -> None:
        for name in self.jobs:
            self._stop(name)
        deadline = time.monotonic() + grace
        for job in self.jobs.values():
            try:
                job.proc.wait(timeout=max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                os.killpg(job.proc.pid, signal.SIGKILL)

    def step(self) -> Plan:
        obj = {**self.obj, "status": self.status}
        observed = [j.observed() for j in self.jobs.values()]
        now = datetime.now(timezone.utc)
        result = plan(obj, observed, self.manifests, now, LOCAL_CONFIG)
        adapters = subtasks_needing_manifest(result.status)
        if adapters and self._read_manifests(adapters):
            result = plan(obj, observed, self.manifests, now, LOCAL_CONFIG)
        for action in result.actions:
            if isinstance(action, Launch):
                self._launch(action)
            elif isinstance(action, DeleteJob):
                self._stop(action.name)
        self.status = result.status.model_dump(mode="json", exclude_none=True)
        return result

    def _read_manifests(self, adapters: dict[str, str]) -> bool:
        """Read manifest.json of succeeded runs; True when any was read."""
        store = local_storage(self.obj["spec"]["storage"]["endpoint"])
        read = False
        for name, prefix in adapters.items():
            try:
                self.manifests[name] = json.loads(store.get_bytes(prefix + "manifest.json")[0])
                read = True
            except Exception:  # noqa: BLE001 - reported in the summary as "no score"
                pass
        return read

    def run(self) -> None:
        from anytasktune.localui import Progress

        with Progress(self, enabled=self.show_progress) as ui:
            while True:
                result = self.step()
                for e in result.events:
                    ui.event(e.type, e.reason, e.message)
                ui.refresh()
                finished = result.status.phase in (Phase.Succeeded, Phase.Failed, Phase.Invalid)
                if finished and not any(j.proc.poll() is None for j in self.jobs.values()):
                    return
                time.sleep(1.0)


@contextmanager
def local_ray(num_cpus: int | None = None) -> Iterator[str]:
    """A Ray cluster for this run: every trainjob subprocess is a driver on it."""
    # One machine: keep every Ray process on loopback, and keep Ray's token
    # authentication on; drivers started later inherit both settings from this env.
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    os.environ.setdefault("RAY_AUTH_MODE", "token")
    import ray

    ctx: Any = ray.init(num_cpus=num_cpus or os.cpu_count() or 2, include_dashboard=False, log_to_driver=False,
                   configure_logging=False)
    try:
        yield ctx.address_info["gcs_address"]
    finally:
        ray.shutdown()


@contextmanager
def s3_server(workdir: Path, endpoint: str | None) -> Iterator[tuple[str, dict[str, str]]]:
    """(endpoint, environment with credentials): the given endpoint, or an embedded SeaweedFS."""
    if endpoint:
        yield endpoint, {}
        return
    from anytasktune.s3server import EmbeddedS3

    data = workdir / "s3"
    data.mkdir(parents=True, exist_ok=True)
    # A fixed secret per workdir: a rerun reuses the data (and checkpoints) it left.
    secret_file = workdir / ".s3-secret"
    if not secret_file.exists():
        secret_file.write_text(os.urandom(16).hex())
    server = EmbeddedS3(data, secret_key=secret_file.read_text().strip()).start()
    try:
        yield server.endpoint, server.env()
    finally:
        server.stop()


def _buckets(obj: dict[str, Any], uploads: dict[str, Path]) -> set[str]:
    uris = [obj["spec"]["storage"]["output"], *uploads]
    return {u.removeprefix("s3://").split("/", 1)[0] for u in uris}


def local_storage(endpoint: str) -> Any:
    """The trainjob's own S3 facade (retries, bucket/key in errors), credentials from the environment."""
    from anytasktune_contract.storage import ObjectStore, StorageSettings

    return ObjectStore(StorageSettings(endpoint, os.environ.get("AWS_REGION", "us-east-1"), "path"))


def stage(endpoint: str, s3_env: dict[str, str], prepared: Prepared) -> Any:
    """Credentials into this process's environment (Ray's workers inherit them from here,
    and so does the S3 client), the buckets created, local files uploaded."""
    os.environ.update(s3_env)
    store = local_storage(endpoint)
    for bucket in sorted(_buckets(prepared.obj, prepared.uploads)):
        try:
            store.client.create_bucket(Bucket=bucket)
        except store.client.exceptions.BucketAlreadyOwnedByYou:
            pass
    for uri, local in prepared.uploads.items():
        if local.is_dir():
            store.upload_dir(local, uri)
        else:
            store.upload_file(local, uri)
    return store


def copy_out(store: Any, status: dict[str, Any], target: Path) -> dict[str, Path]:
    """Copy every published adapter folder to target/<subtask>/ so the user can open it."""
    copies: dict[str, Path] = {}
    for st in status.get("subtasks", []):
        if st.get("phase") == "Succeeded" and st.get("adapter"):
            store.download_prefix(st["adapter"], target / st["name"])
            copies[st["name"]] = target / st["name"]
    return copies


def trainjob_env(s3_env: dict[str, str]) -> dict[str, str]:
    env = {**os.environ, **s3_env, "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    env.setdefault("DS_ACCELERATOR", "cpu")
    cache = Path(env.get("ANYTASKTUNE_CACHE", Path.home() / ".cache" / "anytasktune"))
    env.setdefault("TORCH_EXTENSIONS_DIR", str(cache / "torch_extensions"))
    return env


def run_file(path: Path, workdir: Path, *, s3_endpoint: str | None = None, base_model: str | None = None,
             show_progress: bool = True) -> Outcome:
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
            run = LocalRun(obj, workdir, env, ray_address, show_progress)
            try:
                run.run()
            except KeyboardInterrupt:
                run.stop_all()
                raise
        copies = copy_out(store, run.status, workdir / "adapters")
    (workdir / "status.json").write_text(json.dumps(run.status, indent=2, ensure_ascii=False))
    return Outcome(run.status, run.manifests, copies, time.monotonic() - t0)


# --- the CLI's side ----------------------------------------------------------


def summary_rows(outcome: Outcome) -> list[dict[str, Any]]:
    rows = []
    for st in outcome.status.get("subtasks", []):
        manifest = outcome.manifests.get(st["name"], {})
        ev = manifest.get("evaluation", {})
        metric = task_metric(manifest)
        base, adapter = ev.get("base", {}).get(metric), ev.get("adapter", {}).get(metric)
        lift = ev.get("lift", {}).get(metric)
        loss = (ev.get("base", {}).get("eval_loss"), ev.get("adapter", {}).get("eval_loss"))
        train_s = (manifest.get("timings") or {}).get("totalSeconds")
        rows.append({
            "subtask": st["name"], "phase": st.get("phase"), "attempts": st.get("attempts", 0), "metric": metric,
            "base": base, "adapter_score": adapter, "lift": lift,
            "verdict": _verdict(st, lift), "train_seconds": train_s, "eval_loss": loss,
            "adapter": str(outcome.local_copies.get(st["name"], st.get("adapter") or "")),
            "message": st.get("message", "") if st.get("phase") != "Succeeded" else "",
        })
    return rows


CLEAR_LIFT = 0.05


def task_metric(manifest: dict[str, Any]) -> str:
    """The metric that says whether the adapter is better at its task (not the loss)."""
    if "spec" not in manifest:
        return ""
    spec = TrainJobSpec.model_validate(manifest["spec"])
    return metrics_for(spec.evaluation, spec.taskType)[0].value


def _verdict(st: dict[str, Any], lift: float | None) -> str:
    if st.get("phase") != "Succeeded":
        return "FAILED"
    if lift is None:
        return "no score"
    if lift >= CLEAR_LIFT:
        return "adapter wins"
    if lift > 0:
        return "small lift"
    return "NO LIFT"


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def main(args: argparse.Namespace) -> int:
    from anytasktune.localui import print_summary

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
    rows = summary_rows(outcome)
    if args.output == "json":
        print(json.dumps({"phase": outcome.status.get("phase"), "wallSeconds": round(outcome.wall_seconds, 1),
                          "subtasks": rows}, indent=2, ensure_ascii=False))
    else:
        print_summary(rows, outcome.status.get("phase", ""), outcome.wall_seconds)
    failed = [r["subtask"] for r in rows if r["phase"] != "Succeeded"]
    if failed:
        print(f"error: sub-task(s) failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


def datasets_check(args: argparse.Namespace) -> int:
    """Run each sub-task's data contract (the trainjob's own code) without training."""
    path = Path(args.file)
    try:
        prepared = prepare(path)
    except LocalError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    workdir = Path("out").resolve() / prepared.obj["metadata"]["name"]
    workdir.mkdir(parents=True, exist_ok=True)
    results: list[dict[str, Any]] = []
    with s3_server(workdir, args.s3_endpoint) as (endpoint, s3_env):
        stage(endpoint, s3_env, prepared)
        obj = point_at(prepared.obj, endpoint)
        model = TaskFineTune.model_validate({"metadata": obj["metadata"], "spec": obj["spec"]})
        from anytasktune.resolve import resolve_subtask

        env = trainjob_env(s3_env)
        for sub in model.spec.subtasks:
            spec = resolve_subtask(model.metadata["name"], "local", model.spec, sub)
            proc = subprocess.run([sys.executable, "-m", "anytasktune_trainjob", "--check-data"], env={**env, "ANYTASKTUNE_SPEC": spec.to_json()},
                                  capture_output=True, text=True)
            ok = proc.returncode == 0
            last = (proc.stdout.strip().splitlines() or [""])[-1]
            results.append({"subtask": sub.name, "ok": ok, "detail": proc.stdout if ok else last})
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
