"""Dataset parsing, the deterministic held-out split and the data contract.

Every format is normalised into `Example.messages`: a tuple of (role, content)
turns with roles system/user/assistant that ends with an assistant turn (the
answer). Parsing never stops at the first bad record: all offenders are
collected, and `DataContractError` lists the first few as `file:line: reason`.

Pure Python (no torch): unit-tested directly.
"""

from __future__ import annotations

import hashlib
import json
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from anytasktune_contract.failures import DataContractError
from anytasktune_contract.trainspec import DataContractConfig, DatasetFormat

from .jsonrecords import decode, iter_records

MAX_LISTED_OFFENDERS = 5
ROLES = ("system", "user", "assistant")
SHAREGPT_ROLES = {
    "system": "system",
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "chatgpt": "assistant",
    "bing": "assistant",
    "bard": "assistant",
    "model": "assistant",
}


class RecordError(ValueError):
    """One bad record; `reason` is shown after `file:line:`."""


@dataclass(frozen=True)
class Example:
    messages: tuple[tuple[str, str], ...]
    line: int  # 1-based line of the record's start in the file
    index: int  # 1-based record number
    source: str = ""

    @property
    def location(self) -> str:
        return f"{self.source}:{self.line} (record {self.index})"

    @property
    def prompt(self) -> tuple[tuple[str, str], ...]:
        return self.messages[:-1]

    @property
    def answer(self) -> str:
        return self.messages[-1][1]

    def key(self) -> str:
        """Content hash of the normalised record (ignores position and source)."""
        canonical = json.dumps(self.messages, ensure_ascii=False, separators=(",", ":"))
        return hashlib.sha256(canonical.encode("utf-8")).hexdigest()

    def prompt_key(self) -> str:
        """Hash of the prompt turns, compared case- and whitespace-insensitively."""
        text = "\u241e".join(f"{r}:{normalize_for_overlap(c)}" for r, c in self.prompt)
        return hashlib.sha256(text.encode("utf-8")).hexdigest()


def normalize_for_overlap(text: str) -> str:
    return " ".join(unicodedata.normalize("NFKC", text).casefold().split())


# --- formats ----------------------------------------------------------------------
def _text(record: dict[str, Any], name: str, *, required: bool = True) -> str:
    if name not in record or record[name] is None:
        if required:
            raise RecordError(f"missing field {name!r}")
        return ""
    value = record[name]
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str):
        raise RecordError(f"field {name!r} must be a string, got {type(value).__name__}")
    if required and not value.strip():
        raise RecordError(f"field {name!r} is empty")
    return value


def _nonempty_list(record: dict[str, Any], field: str) -> list[Any]:
    value = record.get(field)
    if value is None:
        raise RecordError(f"missing field '{field}'")
    if not isinstance(value, list) or not value:
        raise RecordError(f"field '{field}' must be a non-empty list")
    return value


def _content(value: Any, where: str) -> str:
    if isinstance(value, list):  # OpenAI content parts
        parts = []
        for part in value:
            if isinstance(part, dict) and part.get("type", "text") == "text" and isinstance(part.get("text"), str):
                parts.append(part["text"])
            else:
                raise RecordError(f"{where}: only text content parts are supported")
        value = "".join(parts)
    if not isinstance(value, str):
        raise RecordError(f"{where}: content must be a string")
    if not value.strip():
        raise RecordError(f"{where}: content is empty")
    return value


def _check_turns(turns: list[tuple[str, str]], where: str) -> tuple[tuple[str, str], ...]:
    if not any(r == "user" for r, _ in turns):
        raise RecordError(f"{where} has no user turn")
    if turns[-1][0] != "assistant":
        raise RecordError(f"{where} must end with an assistant turn (the answer)")
    return tuple(turns)


def parse_record(record: Any, fmt: DatasetFormat | str, instruction: str = "") -> tuple[tuple[str, str], ...]:
    """Normalise one record into (role, content) turns; raises RecordError."""
    fmt = DatasetFormat(fmt)
    if not isinstance(record, dict):
        raise RecordError(f"record must be a JSON object, got {type(record).__name__}")
    if fmt is DatasetFormat.alpaca:
        instr = _text(record, "instruction")
        inp = _text(record, "input", required=False)
        out = _text(record, "output")
        system = _text(record, "system", required=False)
        user = f"{instr}\n\n{inp}" if inp.strip() else instr
        turns = ([("system", system)] if system.strip() else []) + [("user", user), ("assistant", out)]
        return tuple(turns)
    if fmt is DatasetFormat.taskfinetune:
        inp = _text(record, "input")
        out = _text(record, "output")
        user = f"{instruction.strip()}\n\n{inp}" if instruction.strip() else inp
        return (("user", user), ("assistant", out))
    if fmt is DatasetFormat.messages:
        msgs = _nonempty_list(record, "messages")
        turns = []
        for i, m in enumerate(msgs):
            where = f"messages[{i}]"
            if not isinstance(m, dict):
                raise RecordError(f"{where} must be an object")
            role = m.get("role")
            if role not in ROLES:
                raise RecordError(f"{where}: role must be one of {', '.join(ROLES)}, got {role!r}")
            turns.append((role, _content(m.get("content"), where)))
        return _check_turns(turns, "messages")
    if fmt is DatasetFormat.sharegpt:
        convs = _nonempty_list(record, "conversations")
        turns = []
        top_system = record.get("system")
        if isinstance(top_system, str) and top_system.strip():
            turns.append(("system", top_system))
        for i, c in enumerate(convs):
            where = f"conversations[{i}]"
            if not isinstance(c, dict):
                raise RecordError(f"{where} must be an object")
            who = c.get("from")
            role = SHAREGPT_ROLES.get(str(who).lower()) if isinstance(who, str) else None
            if role is None:
                raise RecordError(f"{where}: unknown 'from' {who!r} (human/gpt/system)")
            turns.append((role, _content(c.get("value"), where)))
        return _check_turns(turns, "conversations")
    raise RecordError(f"unsupported format {fmt!r}")  # pragma: no cover


@dataclass
class ParseResult:
    examples: list[Example]
    errors: list[str]  # "file:line: reason"
    total_records: int


def _unpaired_surrogate(messages: tuple[tuple[str, str], ...]) -> str | None:
    """A lone UTF-16 surrogate (a JSON escape such as "\\ud800" with no pair) cannot be
    encoded as UTF-8: it would break the tokenizer and every hash downstream."""
    for _, content in messages:
        for ch in content:
            if "\ud800" <= ch <= "\udfff":
                return f"text has an unpaired UTF-16 surrogate (\\u{ord(ch):04x})"
    return None


def parse_dataset(text: str | bytes, fmt: DatasetFormat | str, *, source: str = "dataset",
                  instruction: str = "") -> ParseResult:
    """Every record of a file, normalised; never raises on the file's content: what is
    wrong becomes `errors` ("source:line: ..."), each naming the file and the line."""
    if isinstance(text, bytes):
        decoded, problem = decode(text)
        if decoded is None:
            assert problem is not None
            return ParseResult([], [f"{source}:{problem[0]}: {problem[1]}"], 0)
        text = decoded
    examples: list[Example] = []
    errors: list[str] = []
    total = 0
    for line, number, value, error in iter_records(text):
        total += 1
        if error is None:
            try:
                messages = parse_record(value, fmt, instruction)
                error = _unpaired_surrogate(messages)
            except RecordError as exc:
                error = str(exc)
        if error is not None:
            errors.append(f"{source}:{line}: record {number}: {error}")
            continue
        examples.append(Example(messages, line, number, source))
    return ParseResult(examples, errors, total)


# --- split -----------------------------------------------------------------------
def holdout_score(example: Example) -> float:
    """A uniform number in [0, 1) from the record's content hash."""
    return int(example.key()[:16], 16) / float(1 << 64)


def split_examples(examples: list[Example], holdout: float) -> tuple[list[Example], list[Example]]:
    """Deterministic train / held-out split by record hash: the same record always
    lands in the same split, whatever the file order. At least one record is held
    out when there are two or more."""
    train: list[Example] = []
    held: list[Example] = []
    for ex in examples:
        (held if holdout_score(ex) < holdout else train).append(ex)
    if not held and len(train) >= 2 and holdout > 0:
        pick = min(train, key=holdout_score)
        train = [e for e in train if e is not pick]
        held = [pick]
    return train, held


# --- contract --------------------------------------------------------------------
@dataclass
class Finding:
    rule: str
    ok: bool
    count: int
    total: int
    limit: float | int | None
    message: str
    offenders: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "rule": self.rule, "ok": self.ok, "count": self.count, "total": self.total,
            "limit": self.limit, "message": self.message, "offenders": self.offenders[:MAX_LISTED_OFFENDERS],
        }


@dataclass
class ContractReport:
    findings: list[Finding]

    @property
    def ok(self) -> bool:
        return all(f.ok for f in self.findings)

    def violations(self) -> list[Finding]:
        return [f for f in self.findings if not f.ok]

    def as_dict(self) -> dict[str, Any]:
        return {"passed": self.ok, "findings": [f.as_dict() for f in self.findings]}

    def raise_if_violated(self, uri: str) -> None:
        bad = self.violations()
        if not bad:
            return
        parts = []
        for f in bad:
            listed = "; ".join(f.offenders[:MAX_LISTED_OFFENDERS])
            more = f" (+{len(f.offenders) - MAX_LISTED_OFFENDERS} more)" if len(f.offenders) > MAX_LISTED_OFFENDERS else ""
            parts.append(f"[{f.rule}] {f.message}" + (f": {listed}{more}" if listed else ""))
        raise DataContractError(f"data contract violated for {uri}: " + " | ".join(parts))


def _fraction(count: int, total: int) -> float:
    return count / total if total else 0.0


def check_parse(result: ParseResult) -> Finding:
    return Finding(
        rule="records",
        ok=not result.errors,
        count=len(result.errors),
        total=result.total_records,
        limit=0,
        message=(f"{len(result.errors)} of {result.total_records} records are invalid" if result.errors
                 else f"{result.total_records} records parsed"),
        offenders=list(result.errors),
    )


def check_duplicates(examples: list[Example], config: DataContractConfig) -> Finding:
    first: dict[str, Example] = {}
    offenders = []
    for ex in examples:
        k = ex.key()
        if k in first:
            offenders.append(f"{ex.location}: duplicate of {first[k].source}:{first[k].line}")
        else:
            first[k] = ex
    frac = _fraction(len(offenders), len(examples))
    ok = frac <= config.maxDuplicateFraction
    return Finding("duplicates", ok, len(offenders), len(examples), config.maxDuplicateFraction,
                   f"{len(offenders)} duplicate records ({frac:.1%}, max {config.maxDuplicateFraction:.1%})",
                   offenders)


def check_overlap(train: list[Example], held: list[Example], config: DataContractConfig) -> Finding:
    """Held-out records whose prompt also appears in train (same prompt, other
    answer): they would leak the evaluation. Limited by maxDuplicateFraction."""
    train_prompts: dict[str, Example] = {}
    for ex in train:
        train_prompts.setdefault(ex.prompt_key(), ex)
    offenders = []
    for ex in held:
        hit = train_prompts.get(ex.prompt_key())
        if hit is not None:
            offenders.append(f"{ex.location}: held-out prompt also in train at {hit.source}:{hit.line}")
    frac = _fraction(len(offenders), len(held))
    ok = frac <= config.maxDuplicateFraction
    return Finding("overlap", ok, len(offenders), len(held), config.maxDuplicateFraction,
                   f"{len(offenders)} held-out records share a prompt with train ({frac:.1%}, "
                   f"max {config.maxDuplicateFraction:.1%})", offenders)


def check_min_samples(train: list[Example], config: DataContractConfig) -> Finding:
    ok = len(train) >= config.minSamples
    return Finding("minSamples", ok, len(train), len(train), config.minSamples,
                   f"{len(train)} training records (min {config.minSamples})")


def check_truncation(truncated: Iterable[Example], total: int, config: DataContractConfig,
                     max_seq_length: int) -> Finding:
    truncated = list(truncated)
    frac = _fraction(len(truncated), total)
    ok = frac <= config.maxTruncatedFraction
    return Finding("truncation", ok, len(truncated), total, config.maxTruncatedFraction,
                   f"{len(truncated)} records longer than maxSeqLength={max_seq_length} tokens "
                   f"({frac:.1%}, max {config.maxTruncatedFraction:.1%})",
                   [f"{ex.location}: longer than {max_seq_length} tokens" for ex in truncated])
