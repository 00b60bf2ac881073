"""`anytasktune`: validate, render, run locally, inspect status, check datasets, run the operator.

Exit codes: 0 success, 1 a check failed (invalid resource, failed sub-task), 2 usage
error. Errors go to stderr; user errors never print a traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from collections.abc import Sequence
from datetime import datetime, timezone
from typing import Any

import yaml

from anytasktune.actions import Launch
from anytasktune.config import OperatorConfig
from anytasktune.plan import plan
from anytasktune.render import spec_json_of
from anytasktune.spec import GROUP, PLURAL, VERSION, Phase, TaskFineTune
from anytasktune.validation import Problem, load_documents, validate_file
from anytasktune_contract.failures import FailureClass

PLACEHOLDER_UID = "00000000-0000-0000-0000-000000000000"


class _ReviewDumper(yaml.SafeDumper):
    """YAML for humans: multi-line strings as literal blocks."""


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.Node:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_ReviewDumper.add_representer(str, _str)


def to_yaml(data: Any, *, many: bool = False) -> str:
    dump = yaml.dump_all if many else yaml.dump
    return dump(data, Dumper=_ReviewDumper, sort_keys=False, allow_unicode=True)  # type: ignore[no-any-return, operator]


class UserError(Exception):
    """A problem the user can fix; printed without a traceback."""


def _emit(data: Any, output: str) -> None:
    if output == "json":
        print(json.dumps(data, indent=2, ensure_ascii=False))
    else:
        print(to_yaml(data), end="")


def load_taskfinetunes(path: str) -> list[TaskFineTune]:
    """Parse and validate every TaskFineTune of a file, or raise UserError with file:line problems."""
    problems = validate_file(path)
    if problems:
        raise UserError("\n".join(str(p) for p in problems))
    return [TaskFineTune.model_validate({k: v for k, v in d.obj.items() if k != "status"}) for d in load_documents(path)]


def _validate_local(path: str) -> list[Problem]:
    """As `anytasktune run` sees the file: local dataset/model paths allowed."""
    from pathlib import Path

    from anytasktune.local.staging import LocalError, prepare

    try:
        prepare(Path(path), resolve_models=False)
    except LocalError as err:
        return err.problems or [Problem(path, 1, "", str(err))]
    return []


def cmd_validate(args: argparse.Namespace) -> int:
    check = _validate_local if args.local else validate_file
    results: dict[str, list[Problem]] = {f: check(f) for f in args.files}
    bad = sum(1 for p in results.values() if p)
    if args.output == "json":
        _emit([{"file": f, "valid": not p, "problems": [vars(x) for x in p]} for f, p in results.items()], "json")
    else:
        for f, problems in results.items():
            if problems:
                for p in problems:
                    print(p, file=sys.stderr)
            else:
                print(f"{f}: valid")
    return 1 if bad else 0


def render_children(tft: TaskFineTune, namespace: str, config: OperatorConfig) -> list[dict[str, Any]]:
    """The first attempt's children of every sub-task: what the planner launches on an
    empty namespace, with every sub-task given a slot."""
    spec = {**tft.spec.model_dump(mode="json", exclude_none=True), "maxParallelSubtasks": len(tft.spec.subtasks), "suspend": False}
    obj = {"metadata": {**tft.metadata, "namespace": namespace, "uid": PLACEHOLDER_UID}, "spec": spec}
    result = plan(obj, [], {}, datetime.now(timezone.utc), config)
    invalid = [f"{s.name}: {s.message}" for s in result.status.subtasks if s.failureClass == FailureClass.InvalidSpec.value]
    if invalid or result.status.phase == Phase.Invalid:
        raise UserError("; ".join(invalid) or next(c.message for c in result.status.conditions if c.type == "Degraded"))
    return [a.rayjob for a in result.actions if isinstance(a, Launch)]


def cmd_render(args: argparse.Namespace) -> int:
    config = OperatorConfig.from_env()
    if args.image:
        config = OperatorConfig(**{**vars(config), "training_image": args.image})
    objects: list[dict[str, Any]] = []
    for tft in load_taskfinetunes(args.file):
        namespace = args.namespace or tft.metadata.get("namespace") or "default"
        objects += render_children(tft, namespace, config)
    if args.output == "json":
        _emit({"apiVersion": "v1", "kind": "List", "items": objects}, "json")
    else:
        print("# Children the operator creates for the first attempt of each sub-task.")
        print(f"# ownerReferences carry a placeholder uid ({PLACEHOLDER_UID}); the operator uses the real one.")
        for obj in objects:  # the spec travels as base64: shown decoded, for the reviewer
            print(f"---\n# {obj['metadata']['name']}: its training spec (base64 in spec.runtimeEnvYAML), decoded:")
            print("\n".join(f"#   {line}" for line in spec_json_of(obj).splitlines()))
            print(to_yaml(obj), end="")
    return 0


def _status_rows(obj: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for s in (obj.get("status") or {}).get("subtasks", []):
        m = s.get("metrics") or {}
        rows.append({
            "taskfinetune": obj["metadata"]["name"],
            "subtask": s["name"],
            "phase": s.get("phase", ""),
            "attempts": s.get("attempts", 0),
            "base": m.get("base", {}),
            "adapter_score": m.get("adapter", {}),
            "lift": m.get("lift", {}),
            "intervals": {k: v.get("lift") for k, v in (m.get("intervals") or {}).items() if v.get("lift")},
            "verdict": m.get("verdict", ""),
            "run": f"{(s.get('outcome') or '').lower()} {s.get('runId') or ''}".strip() or "-",
            "registry": {True: "active", False: "not promoted"}.get(s.get("promoted"), "-"),
            "adapter": s.get("adapter") or "",
            "message": s.get("message", ""),
        })
    return rows


def _fmt_scores(scores: dict[str, float], signed: bool = False, intervals: dict[str, list[float]] | None = None) -> str:
    def one(k: str, v: float) -> str:
        ci = (intervals or {}).get(k)
        return (f"{k}={v:+.3f}" if signed else f"{k}={v:.3f}") + (f"[{ci[0]:+.2f},{ci[1]:+.2f}]" if ci else "")
    return " ".join(one(k, v) for k, v in sorted(scores.items())) or "-"


def print_table(rows: list[dict[str, str]], columns: Sequence[str]) -> None:
    widths = {c: max([len(c), *(len(str(r[c])) for r in rows)]) for c in columns}
    print("  ".join(c.upper().ljust(widths[c]) for c in columns))
    for r in rows:
        print("  ".join(str(r[c]).ljust(widths[c]) for c in columns))


def cmd_status(args: argparse.Namespace) -> int:
    try:
        import kubernetes
    except ImportError as err:
        raise UserError("`status` needs the operator extra: pip install 'anytasktune[operator]'") from err
    try:
        kubernetes.config.load_kube_config(context=args.context)
    except Exception as err:  # noqa: BLE001 - any kubeconfig problem is a user error here
        raise UserError(f"cannot load kubeconfig: {err}") from err
    api = kubernetes.client.CustomObjectsApi()
    namespace = args.namespace or "default"
    try:
        if args.name:
            items = [api.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, args.name)]
        else:
            items = api.list_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL).get("items", [])  # type: ignore[attr-defined]
    except kubernetes.client.rest.ApiException as err:
        raise UserError(f"cannot read TaskFineTunes in namespace {namespace}: {err.status} {err.reason}") from err
    rows = [r for obj in items for r in _status_rows(obj)]  # type: ignore[arg-type]
    if args.output == "json":
        _emit(rows, "json")
        return 0
    if not rows:
        print(f"no sub-task status yet in namespace {namespace}", file=sys.stderr)
        return 0
    table = [{**r, "base": _fmt_scores(r["base"]), "adapter_score": _fmt_scores(r["adapter_score"]),
              "lift": _fmt_scores(r["lift"], True, r["intervals"]), "verdict": r["verdict"] or "-"} for r in rows]
    print_table(table, ["taskfinetune", "subtask", "phase", "attempts", "run", "base", "adapter_score", "lift", "verdict",
                        "registry", "adapter"])
    return 0


def _registry_from_cluster(args: argparse.Namespace) -> tuple[dict[str, Any], str | None]:
    """The TaskFineTune's registry, found through its spec.storage, read with the caller's S3 credentials."""
    from anytasktune_contract.storage import ObjectStore, StorageSettings

    api = _custom_objects_api(args.context)
    namespace = args.namespace or "default"
    try:
        obj: dict[str, Any] = api.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, args.name)  # type: ignore[assignment]
    except Exception as err:  # noqa: BLE001 - any API problem is the user's to fix
        raise UserError(f"cannot read TaskFineTune {namespace}/{args.name}: {getattr(err, 'status', '')} {getattr(err, 'reason', err)}") from err
    storage = TaskFineTune.model_validate({k: v for k, v in obj.items() if k != "status"}).spec.storage
    uri = f"{storage.output.rstrip('/')}/{args.name}/index.json"
    endpoint = args.s3_endpoint or storage.endpoint
    try:
        body = ObjectStore(StorageSettings(endpoint, storage.region, storage.addressingStyle), attempts=2).get_bytes(uri)[0]
    except Exception as err:  # noqa: BLE001 - missing registry, no access: say which
        raise UserError(f"cannot read the registry {uri}: {err}") from err
    return json.loads(body), endpoint


def _read_registry(args: argparse.Namespace) -> tuple[dict[str, Any], str | None]:
    from pathlib import Path

    if args.registry and args.registry.startswith("s3://"):
        from anytasktune_contract.storage import ObjectStore, StorageSettings

        store = ObjectStore(StorageSettings(args.s3_endpoint, os.environ.get("AWS_REGION", "us-east-1"), "path"), attempts=2)
        return json.loads(store.get_bytes(args.registry)[0]), args.s3_endpoint
    local = Path(args.registry) if args.registry else Path(args.workdir) / args.name / "index.json" if args.workdir else None
    if local is None:
        return _registry_from_cluster(args)
    if not local.is_file():
        raise UserError(f"no registry at {local}" + (" (has `anytasktune run` finished there?)" if args.workdir else ""))
    return json.loads(local.read_text()), args.s3_endpoint


def cmd_serve_config(args: argparse.Namespace) -> int:
    from anytasktune.serving import ServingError, render_text, serve_config

    registry, endpoint = _read_registry(args)
    try:
        config = serve_config(registry, base_model=args.base_model, endpoint=endpoint)
    except ServingError as err:
        raise UserError(str(err)) from err
    if args.output == "json":
        _emit(config, "json")
    else:
        print(render_text(config), end="")
    return 0


def _custom_objects_api(context: str | None) -> Any:
    try:
        import kubernetes
    except ImportError as err:
        raise UserError("this command needs the operator extra: pip install 'anytasktune[operator]'") from err
    try:
        kubernetes.config.load_kube_config(context=context)
    except Exception as err:  # noqa: BLE001 - any kubeconfig problem is a user error here
        raise UserError(f"cannot load kubeconfig: {err}") from err
    return kubernetes.client.CustomObjectsApi()


def cmd_operator(args: argparse.Namespace) -> int:
    argv = [sys.executable, "-m", "kopf", "run", "--standalone", "-m", "anytasktune.handlers"]
    namespaces = args.namespace or list(OperatorConfig.from_env().watch_namespaces)
    if namespaces:
        os.environ["ANYTASKTUNE_NAMESPACES"] = ",".join(namespaces)  # the resync loop lists these only
        for ns in namespaces:
            argv += ["--namespace", ns]
    else:
        argv.append("--all-namespaces")
    if args.verbose:
        argv.append("--verbose")
    os.execv(sys.executable, argv)
    return 0  # not reached


def cmd_run(args: argparse.Namespace) -> int:
    from anytasktune.local import command as local_mode

    return local_mode.main(args)


def cmd_datasets_check(args: argparse.Namespace) -> int:
    from anytasktune.local import command as local_mode

    return local_mode.datasets_check(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="anytasktune", description="Fine-tune one LoRA adapter per sub-task of a domain (Task-Fine-Tune).")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("validate", help="check TaskFineTune files as the API server would (schema + CEL rules)")
    p.add_argument("files", nargs="+", metavar="FILE")
    p.add_argument("--local", action="store_true", help="validate for local mode: dataset and model URIs may be local paths")
    p.add_argument("-o", "--output", choices=["text", "json"], default="text")
    p.set_defaults(func=cmd_validate)

    p = sub.add_parser("render", help="print the RayJobs the operator would create (each carries its training spec), for review")
    p.add_argument("file", metavar="FILE")
    p.add_argument("-n", "--namespace", help="namespace of the children (default: the resource's, else 'default')")
    p.add_argument("--image", help="training image (default: ANYTASKTUNE_TRAINING_IMAGE or the release's image)")
    p.add_argument("-o", "--output", choices=["yaml", "json"], default="yaml")
    p.set_defaults(func=cmd_render)

    p = sub.add_parser("run", help="train every sub-task on this machine: local Ray, embedded S3, same planner")
    p.add_argument("file", metavar="FILE")
    p.add_argument("--workdir", default=None, help="where the embedded S3 keeps its data and adapters are copied (default: ./out)")
    p.add_argument("--s3-endpoint", default=None, help="use this S3 endpoint instead of starting an embedded one")
    p.add_argument("--base-model", default=None, help="local model folder to use instead of spec.baseModel")
    p.add_argument("--no-progress", action="store_true", help="plain log lines instead of progress bars")
    p.add_argument("-o", "--output", choices=["text", "json"], default="text")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("status", help="table of sub-tasks (phase, attempts, metrics, adapter) from a cluster")
    p.add_argument("name", nargs="?", help="a TaskFineTune (default: all in the namespace)")
    p.add_argument("-n", "--namespace")
    p.add_argument("--context", help="kubeconfig context")
    p.add_argument("-o", "--output", choices=["text", "json"], default="text")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("serve-config", help="vLLM multi-LoRA and LoRAX configuration for a TaskFineTune's active adapters")
    p.add_argument("name", metavar="NAME", help="the TaskFineTune")
    p.add_argument("-n", "--namespace")
    p.add_argument("--context", help="kubeconfig context")
    p.add_argument("--workdir", help="read local mode's copy: WORKDIR/NAME/index.json (e.g. out)")
    p.add_argument("--registry", help="an index.json file or its s3:// uri, instead of the cluster")
    p.add_argument("--s3-endpoint", default=None, help="S3 endpoint for the registry and the printed commands")
    p.add_argument("--base-model", default=None, help="serve on this base model (path or id) instead of the recorded one")
    p.add_argument("-o", "--output", choices=["text", "json"], default="text")
    p.set_defaults(func=cmd_serve_config)

    p = sub.add_parser("datasets", help="dataset tools")
    dsub = p.add_subparsers(dest="datasets_command", required=True, metavar="COMMAND")
    d = dsub.add_parser("check", help="run each sub-task's data contract without training")
    d.add_argument("file", metavar="FILE")
    d.add_argument("--s3-endpoint", default=None)
    d.add_argument("-o", "--output", choices=["text", "json"], default="text")
    d.set_defaults(func=cmd_datasets_check)

    p = sub.add_parser("operator", help="run the operator (kopf) against the current kubeconfig or in-cluster")
    p.add_argument("-n", "--namespace", action="append", help="watch only these namespaces (repeatable; default: all)")
    p.add_argument("-v", "--verbose", action="store_true")
    p.set_defaults(func=cmd_operator)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader went away (`anytasktune render FILE | head`): stop quietly, with the code a
        # shell gives a process that SIGPIPE ended. stdout goes to /dev/null so that Python's
        # flush at exit does not fail on the same pipe.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 128 + signal.SIGPIPE


if __name__ == "__main__":
    raise SystemExit(main())
