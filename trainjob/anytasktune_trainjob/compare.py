"""The paper's comparison: a general model answers the same held-out prompts.

`evaluation.compareWith` names an OpenAI-compatible chat endpoint and model; the
driver sends every evaluated held-out record's prompt turns (system + user, exactly
the messages the base model and the adapter were prompted with) to
`POST <endpoint>/chat/completions` (`temperature: 0`, `max_tokens: maxNewTokens`),
`concurrency` at a time, with the key from $ANYTASKTUNE_COMPARE_API_KEY (a
secretKeyRef in the pod) as a Bearer token. The answers are scored by the same
metric functions (same normalisation, same label set), and the general model gets
per-record scores, intervals and the paired lift of the adapter over it.

Timeouts, connection errors, 429 (waiting `Retry-After`, at most 30 s) and 5xx are
retried `maxRetries` times with backoff; any other answer (401, 404, a malformed
body) fails at once. A failed comparison is recorded (`generalModel.status: Failed`
with the reason) and never fails the training.
"""

from __future__ import annotations

import json
import os
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any

from anytasktune_contract.trainspec import COMPARE_API_KEY_ENV, CompareWith, TrainJobSpec

from .intervals import metric_intervals, verdict
from .metrics import per_record

RETRYABLE = {408, 425, 429, 500, 502, 503, 504}
MAX_RETRY_AFTER = 30.0
BACKOFF = 0.5
ANSWERS_KEPT = 256
Messages = list[dict[str, str]]


class ComparisonError(Exception):
    """The general model could not answer every prompt."""


@dataclass
class Tally:
    requests: int = 0
    retries: int = 0
    rate_limited: int = 0
    reasons: list[str] = field(default_factory=list)


def _retry_after(err: urllib.error.HTTPError, attempt: int) -> float:
    try:
        return min(float(err.headers.get("Retry-After", "")), MAX_RETRY_AFTER)
    except (TypeError, ValueError):
        return min(BACKOFF * 2 ** attempt, MAX_RETRY_AFTER)


def _post(cfg: CompareWith, body: dict[str, Any], api_key: str | None) -> dict[str, Any]:
    headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {api_key}"} if api_key else {})}
    request = urllib.request.Request(f"{cfg.endpoint.rstrip('/')}/chat/completions", data=json.dumps(body).encode(),
                                     headers=headers, method="POST")
    with urllib.request.urlopen(request, timeout=cfg.timeoutSeconds) as resp:  # noqa: S310 - the spec's endpoint
        value = json.loads(resp.read())
    return value if isinstance(value, dict) else {}


def ask(cfg: CompareWith, messages: Messages, max_tokens: int, api_key: str | None, tally: Tally,
        sleep: Callable[[float], None] = time.sleep, stop: threading.Event | None = None) -> str:
    """One prompt's answer, with bounded retries of what may pass (none once `stop` is set)."""
    body = {"model": cfg.model, "messages": messages, "max_tokens": max_tokens, "temperature": 0}
    last = ""
    for attempt in range(cfg.maxRetries + 1):
        if stop is not None and stop.is_set():
            raise ComparisonError("cancelled: another prompt failed")
        tally.requests += 1
        try:
            reply = _post(cfg, body, api_key)
            return str(reply["choices"][0]["message"].get("content") or "").strip()
        except urllib.error.HTTPError as err:
            last = f"HTTP {err.code} {err.reason}"
            if err.code not in RETRYABLE:
                _stop(stop)
                raise ComparisonError(f"{cfg.endpoint}: {last} (not retried)") from None
            tally.rate_limited += err.code == 429
            delay = _retry_after(err, attempt)
        except (urllib.error.URLError, TimeoutError, ConnectionError, OSError) as err:
            last, delay = f"{type(err).__name__}: {getattr(err, 'reason', err)}", min(BACKOFF * 2 ** attempt, MAX_RETRY_AFTER)
        except (KeyError, IndexError, TypeError, ValueError) as err:
            _stop(stop)
            raise ComparisonError(f"{cfg.endpoint}: malformed response ({type(err).__name__}: {err})") from None
        if attempt < cfg.maxRetries:
            tally.retries += 1
            sleep(delay)
    _stop(stop)
    raise ComparisonError(f"{cfg.endpoint}: {last} after {cfg.maxRetries + 1} attempts")


def _stop(stop: threading.Event | None) -> None:
    if stop is not None:
        stop.set()


def general_answers(cfg: CompareWith, prompts: Sequence[Messages], max_tokens: int,
                    sleep: Callable[[float], None] = time.sleep) -> tuple[list[str], Tally]:
    """Every prompt's answer in order; the first failure cancels the rest."""
    key, tally, stop = os.environ.get(COMPARE_API_KEY_ENV) or None, Tally(), threading.Event()
    with ThreadPoolExecutor(cfg.concurrency) as pool:
        futures = [pool.submit(ask, cfg, list(p), max_tokens, key, tally, sleep, stop) for p in prompts]
        done, _ = wait(futures, return_when=FIRST_EXCEPTION)
        failed = next((f for f in done if f.exception() is not None), None)
        if failed is not None:
            for f in futures:
                f.cancel()
            errors = [f.exception() for f in done if f.exception() is not None]
            first = next((e for e in errors if "cancelled" not in str(e)), errors[0])
            raise first  # type: ignore[misc]
    return [f.result() for f in futures], tally


def comparison_inputs(examples: Sequence[Any]) -> dict[str, Any]:
    """What the comparison needs of the evaluated held-out records, in order."""
    return {"messages": [[{"role": r, "content": c} for r, c in ex.prompt] for ex in examples],
            "keys": [ex.key()[:16] for ex in examples]}


def compared(spec: TrainJobSpec, evaluation: dict[str, Any], held: dict[str, Any],
             log: Callable[[str], None] = print) -> dict[str, Any]:
    """`evaluation` with the general model's scores, intervals and the adapter's lift over
    it — or, when the comparison fails, with the reason (the training stands)."""
    cfg = spec.evaluation.compareWith
    if cfg is None:
        return evaluation
    info: dict[str, Any] = {"endpoint": cfg.endpoint, "model": cfg.model}
    started = time.monotonic()
    try:
        answers, tally = general_answers(cfg, held["messages"], spec.evaluation.maxNewTokens)
    except ComparisonError as err:
        log(f"[anytasktune] general-model comparison with {cfg.model} failed (the training stands): {err}")
        return {**evaluation, "general": {}, "generalModel": {**info, "status": "Failed", "message": str(err)[:500]}}
    labels = evaluation.get("classLabels") or ()
    records = {m: {**cols, "general": per_record(m, answers, held["references"], labels)}
               for m, cols in (evaluation.get("perRecord") or {}).items()}
    general = {m: sum(c["general"]) / len(c["general"]) if c["general"] else 0.0 for m, c in records.items()}
    intervals = metric_intervals(records)
    metric = evaluation["metrics"][0]
    log(f"[anytasktune] general model {cfg.model}: {metric} {general.get(metric, 0.0):.4f} "
        f"({tally.requests} requests, {tally.retries} retried)")
    return {**evaluation, "general": general, "perRecord": records, "intervals": intervals,
            "versusGeneral": verdict(intervals.get(metric, {}).get("liftOverGeneral"), 0.0),
            "answers": {**(evaluation.get("answers") or {}), "general": answers[:ANSWERS_KEPT]},
            "generalModel": {**info, "status": "Succeeded", "requests": tally.requests, "retries": tally.retries,
                             "rateLimited": tally.rate_limited, "seconds": round(time.monotonic() - started, 2)}}


def needs_comparison(spec: TrainJobSpec, evaluation: dict[str, Any]) -> bool:
    """A reused run compares again when compareWith names another endpoint or model, or failed."""
    cfg = spec.evaluation.compareWith
    done = evaluation.get("generalModel") or {}
    return cfg is not None and (done.get("status") != "Succeeded" or done.get("endpoint") != cfg.endpoint
                                or done.get("model") != cfg.model)


def held_again(spec: TrainJobSpec, storage: Any, keys: Sequence[str]) -> dict[str, Any]:
    """A reused run's evaluated held-out records, found again in its dataset by key
    (the dataset is the same content: the run identity says so)."""
    from pathlib import Path

    from anytasktune_contract.storage import is_s3_uri

    from . import data as D

    uri = spec.dataset.uri
    blob = storage.get_bytes(uri)[0] if is_s3_uri(uri) else Path(uri.removeprefix("file://")).read_bytes()
    parsed = D.parse_dataset(blob, spec.dataset.format, source=uri.rsplit("/", 1)[-1], instruction=spec.instruction)
    by_key = {ex.key()[:16]: ex for ex in parsed.examples}
    missing = [k for k in keys if k not in by_key]
    if missing or not keys:
        raise ComparisonError(f"the run's held-out records are not in {uri} ({len(missing)} of {len(keys)} missing)")
    examples = [by_key[k] for k in keys]
    return {**comparison_inputs(examples), "references": [ex.answer for ex in examples]}


def compared_again(spec: TrainJobSpec, storage: Any, evaluation: dict[str, Any],
                   log: Callable[[str], None] = print) -> dict[str, Any]:
    """A reused run's evaluation with the general model compared under today's compareWith."""
    try:
        held = held_again(spec, storage, evaluation.get("recordKeys") or [])
    except ComparisonError as err:
        info = {"endpoint": spec.evaluation.compareWith.endpoint, "model": spec.evaluation.compareWith.model} \
            if spec.evaluation.compareWith else {}
        return {**evaluation, "general": {}, "generalModel": {**info, "status": "Failed", "message": str(err)}}
    return compared(spec, evaluation, held, log)
