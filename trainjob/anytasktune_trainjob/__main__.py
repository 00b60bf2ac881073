"""`python -m anytasktune_trainjob --spec <path | s3://bucket/key>` (or the spec JSON
in $ANYTASKTUNE_SPEC, or base64 in $ANYTASKTUNE_SPEC_B64). On failure the LAST line printed is
`anytasktune_contract.trainspec.failure_line(...)` and the exit code is the class's code."""

from __future__ import annotations

import argparse
import base64
import binascii
import json
import os
import signal
import sys
import threading
import traceback
from pathlib import Path
from typing import Any

from anytasktune_contract.failures import FailureClass, InvalidSpecError, TrainJobError, classify, failure_line
from anytasktune_contract.trainspec import DEADLINE_ENV, SPEC_B64_ENV, SPEC_ENV, TrainJobSpec


def load_spec(ref: str | None) -> TrainJobSpec:
    from pydantic import ValidationError

    if ref:
        if ref.startswith("s3://"):
            from anytasktune_contract.storage import StorageSettings

            from .store import open_store, retry_budget_from_env

            endpoint = os.environ.get("ANYTASKTUNE_S3_ENDPOINT") or os.environ.get("AWS_ENDPOINT_URL")
            region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
            store = open_store(StorageSettings(endpoint, region, "auto"), retry_budget_from_env())
            text = store.get_bytes(ref)[0].decode("utf-8")
        else:
            path = Path(ref)
            if not path.is_file():
                raise InvalidSpecError(f"spec file not found: {ref}")
            text = path.read_text(encoding="utf-8")
    elif os.environ.get(SPEC_ENV):
        text = os.environ[SPEC_ENV]
    elif os.environ.get(SPEC_B64_ENV):
        try:
            text = base64.b64decode(os.environ[SPEC_B64_ENV], validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError) as exc:
            raise InvalidSpecError(f"${SPEC_B64_ENV} is not base64 of UTF-8 JSON: {exc}") from None
    else:
        raise InvalidSpecError(f"no spec: pass --spec <path|s3://…> or set ${SPEC_ENV} (or ${SPEC_B64_ENV})")
    try:
        return TrainJobSpec.from_json(text)
    except ValidationError as exc:
        raise InvalidSpecError(f"invalid spec: {exc}") from None
    except ValueError as exc:
        raise InvalidSpecError(f"invalid spec JSON: {exc}") from None


def stop_at_deadline(value: str) -> threading.Timer:
    """$ANYTASKTUNE_DEADLINE_SECONDS (a Shared-cluster RayJob's activeDeadlineSeconds): KubeRay
    marks such a RayJob Failed at its deadline but does not stop its Ray job, which would keep
    a worker pod of the shared cluster from the retry. So the driver stops itself, a little
    after KubeRay's clock (which started before the driver did); its Ray Train workers go with it."""
    try:
        seconds = float(value)
    except ValueError:
        raise InvalidSpecError(f"${DEADLINE_ENV} is not a number of seconds: {value!r}") from None

    def expire() -> None:
        message = f"activeDeadlineSeconds ({seconds:g} s) passed: the driver stops its Ray job"
        print(f"[anytasktune] error: {message}", file=sys.stderr, flush=True)
        print(failure_line(FailureClass.DeadlineExceeded, message), flush=True)
        os._exit(FailureClass.DeadlineExceeded.exit_code)

    timer = threading.Timer(seconds, expire)
    timer.daemon = True
    timer.start()
    return timer


def _on_sigterm(signum: int, frame: Any) -> None:
    raise TrainJobError(f"terminated by signal {signum}", FailureClass.Preempted)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m anytasktune_trainjob", description=__doc__)
    parser.add_argument("--spec", help=f"spec JSON file or s3:// uri (default: ${SPEC_ENV})")
    parser.add_argument("--ray-address", default=None, help="Ray cluster (default: $RAY_ADDRESS or local)")
    parser.add_argument("--check-data", action="store_true",
                        help="only parse the dataset and check the data contract, then exit")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        if os.environ.get(DEADLINE_ENV):
            stop_at_deadline(os.environ[DEADLINE_ENV])
        spec = load_spec(args.spec)
        print(f"[anytasktune] spec {spec.taskFineTune}/{spec.subtask} {spec.spec_id()} -> {spec.outputPrefix}/",
              flush=True)
        if args.check_data:
            from anytasktune_contract.storage import StorageSettings

            from .runner import prepare_data
            from .store import open_store, retry_budget_from_env

            prepared = prepare_data(spec, open_store(StorageSettings.from_spec(spec.storage), retry_budget_from_env()))
            print(json.dumps({"dataset": prepared.dataset, "dataContract": prepared.contract.as_dict()},
                             ensure_ascii=False, indent=2))
            return 0
        from .runner import run

        result = run(spec, ray_address=args.ray_address)
        print(f"[anytasktune] manifest: {result.manifest_uri}", flush=True)
        return 0
    except BaseException as exc:  # noqa: BLE001 - every failure ends with the marker line
        if isinstance(exc, SystemExit) and exc.code in (0, None):
            raise
        cls, message = classify(exc)
        if not isinstance(exc, TrainJobError):
            traceback.print_exc(file=sys.stderr)
        else:
            print(f"[anytasktune] error: {message}", file=sys.stderr)
        sys.stderr.flush()
        print(failure_line(cls, message), flush=True)
        os._exit(cls.exit_code)


if __name__ == "__main__":
    sys.exit(main())
