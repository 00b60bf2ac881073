"""Property-based tests of the dataset parsers and the data contract (hypothesis).

Whatever a dataset file holds — arbitrary bytes, UTF-16/32 or Latin-1 text, BOMs, NUL
bytes, huge lines, deeply nested JSON, lone surrogates, records of several formats
mixed, JSON Lines after a JSON array — parsing never raises and never hangs, and the
data contract fails only with DataContractError; every error names the file and a
line that exists. Valid records always parse, at the line they start on.

Bounded: derandomized (the same examples every run), at most 150 examples per
property, no example database written; ~5 s in all.
"""

from __future__ import annotations

import json
import re
import time
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from anytasktune_contract.failures import DataContractError
from anytasktune_contract.trainspec import DataContractConfig, DatasetFormat
from anytasktune_trainjob import data as D

SOURCE = "src.jsonl"
URI = "s3://bucket/data/src.jsonl"
FORMATS = list(DatasetFormat)
PROPERTY = settings(max_examples=150, deadline=5000, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
LOCATED = re.compile(rf"^{re.escape(SOURCE)}:(\d+): ")


def _lines_in(blob: bytes | str) -> int:
    return (blob.count(b"\n") if isinstance(blob, bytes) else blob.count("\n")) + 1


def _check(blob: bytes | str, fmt: DatasetFormat) -> D.ParseResult:
    """Parse and run the whole contract: only DataContractError may come out, and every
    error names the file and a line of it."""
    parsed = D.parse_dataset(blob, fmt, source=SOURCE, instruction="Answer.")
    assert parsed.total_records >= len(parsed.examples) + len(parsed.errors) - 1  # a decode error has no record
    for error in parsed.errors:
        found = LOCATED.match(error)
        assert found, error
        assert 1 <= int(found.group(1)) <= _lines_in(blob), error
    for ex in parsed.examples:
        assert 1 <= ex.line <= _lines_in(blob) and ex.messages[-1][0] == "assistant"
    config = DataContractConfig(minSamples=1, maxDuplicateFraction=0.5)
    try:
        D.ContractReport([D.check_parse(parsed)]).raise_if_violated(URI)
    except DataContractError as exc:
        assert parsed.errors and parsed.errors[0] in str(exc)
    train, held = D.split_examples(parsed.examples, 0.2)
    report = D.ContractReport([D.check_duplicates(parsed.examples, config), D.check_overlap(train, held, config),
                               D.check_min_samples(train, config)])
    json.dumps(report.as_dict())
    try:
        report.raise_if_violated(URI)
    except DataContractError:
        pass
    return parsed


# --- anything at all --------------------------------------------------------------------
@PROPERTY
@given(st.binary(max_size=3000), st.sampled_from(FORMATS))
def test_arbitrary_bytes(blob: bytes, fmt: DatasetFormat) -> None:
    _check(blob, fmt)


JSONISH = st.text(alphabet=st.sampled_from(list('{}[]":,\\ \n\r\t0123456789.-+eEtrufalsn\x00\u2028\ufeffxy')),
                  max_size=400)


@PROPERTY
@given(JSONISH, st.sampled_from(FORMATS), st.booleans())
def test_json_like_text(text: str, fmt: DatasetFormat, as_bytes: bool) -> None:
    """Near-JSON: brackets, quotes, escapes, NULs, BOMs and line breaks in any order."""
    _check(text.encode() if as_bytes else text, fmt)


# --- valid records ----------------------------------------------------------------------
TEXT = st.text(min_size=1, max_size=40).filter(lambda s: s.strip() != "")


def _record(fmt: DatasetFormat, a: str, b: str) -> dict[str, Any]:
    if fmt is DatasetFormat.taskfinetune:
        return {"input": a, "output": b}
    if fmt is DatasetFormat.alpaca:
        return {"instruction": a, "input": "", "output": b}
    if fmt is DatasetFormat.messages:
        return {"messages": [{"role": "user", "content": a}, {"role": "assistant", "content": b}]}
    return {"conversations": [{"from": "human", "value": a}, {"from": "gpt", "value": b}]}


RECORDS = st.lists(st.tuples(TEXT, TEXT, st.integers(0, 2)), min_size=1, max_size=12)


@PROPERTY
@given(RECORDS, st.sampled_from(FORMATS), st.booleans(), st.booleans(), st.booleans())
def test_valid_json_lines_parse_at_their_lines(records: list[tuple[str, str, int]], fmt: DatasetFormat,
                                               crlf: bool, bom: bool, ascii_only: bool) -> None:
    """Any text (U+2028, U+0085, NUL escapes, CJK, emoji), blank lines, CRLF, a UTF-8 BOM."""
    lines, starts = [], []
    for a, b, blanks in records:
        lines += [""] * blanks
        starts.append(len(lines) + 1)
        lines.append(json.dumps(_record(fmt, a, b), ensure_ascii=ascii_only))
    text = ("\r\n" if crlf else "\n").join(lines)
    parsed = _check(("\ufeff" if bom else "").encode() + text.encode(), fmt)
    assert parsed.errors == []
    assert [ex.line for ex in parsed.examples] == starts
    assert [(ex.prompt[-1][1].endswith(a), ex.answer) for ex, (a, b, _) in zip(parsed.examples, records, strict=True)] \
        == [(True, b) for _, b, _ in records]


@PROPERTY
@given(RECORDS, st.sampled_from(FORMATS), st.integers(0, 4))
def test_valid_json_arrays_parse_at_their_lines(records: list[tuple[str, str, int]], fmt: DatasetFormat,
                                                indent: int) -> None:
    text = json.dumps([_record(fmt, a, b) for a, b, _ in records], indent=indent or None, ensure_ascii=False)
    parsed = _check(text, fmt)
    assert parsed.errors == [] and len(parsed.examples) == len(records)
    if indent:  # each record starts on its own line: line 2, then every record's height further
        heights = [len(json.dumps(_record(fmt, a, b), indent=indent, ensure_ascii=False).split("\n"))
                   for a, b, _ in records]
        assert [ex.line for ex in parsed.examples] == [2 + sum(heights[:i]) for i in range(len(records))]


# --- mixed formats and broken lines -----------------------------------------------------
LINE_KINDS = st.sampled_from(["record", "other-format", "array", "garbage", "blank", "nul", "truncated"])


@PROPERTY
@given(st.lists(st.tuples(LINE_KINDS, TEXT), min_size=1, max_size=15), st.sampled_from(FORMATS))
def test_mixed_lines_each_become_an_example_or_an_error_at_their_line(
        kinds: list[tuple[str, str]], fmt: DatasetFormat) -> None:
    other = FORMATS[(FORMATS.index(fmt) + 1) % len(FORMATS)]
    make = {
        "record": lambda t: json.dumps(_record(fmt, t, t)),
        "other-format": lambda t: json.dumps(_record(other, t, t)),
        "array": lambda t: json.dumps([t]),
        "garbage": lambda t: "not json " + t.replace("\n", " "),
        "blank": lambda t: "   ",
        "nul": lambda t: json.dumps(_record(fmt, t, t)).replace('"', '\x00"', 1),
        "truncated": lambda t: json.dumps(_record(fmt, t, t))[:-1],
    }
    lines = ["{}"] + [make[kind](t) for kind, t in kinds]  # "{}" first: never read as a JSON array
    parsed = _check("\n".join(lines).encode(), fmt)
    located = {ex.line for ex in parsed.examples} | {int(LOCATED.match(e).group(1)) for e in parsed.errors}  # type: ignore[union-attr]
    expected = {i + 1 for i, line in enumerate(lines) if line.strip()}
    assert located == expected and len(parsed.examples) + len(parsed.errors) == len(expected)
    good = {i + 2 for i, (kind, _) in enumerate(kinds) if kind == "record"}
    assert {ex.line for ex in parsed.examples} == good


def test_json_lines_after_a_json_array_are_not_dropped_silently() -> None:
    text = json.dumps([_record(DatasetFormat.taskfinetune, "a", "b")]) + "\n" + json.dumps({"input": "c", "output": "d"})
    parsed = _check(text, DatasetFormat.taskfinetune)
    assert len(parsed.examples) == 1
    assert parsed.errors == [f"{SOURCE}:2: record 2: invalid JSON: text after the end of the array"]


@pytest.mark.parametrize("text", ['[{"input": "a", "output": "b"}, ]', "[1 2]", "[", "[\n\n", "  [ ] ]"])
def test_broken_arrays_are_located(text: str) -> None:
    assert _check(text, DatasetFormat.taskfinetune).errors


# --- encodings ----------------------------------------------------------------------------
def _jsonl(texts: list[str]) -> str:
    return "".join(json.dumps({"input": t, "output": t}, ensure_ascii=False) + "\n" for t in texts)


@PROPERTY
@given(st.lists(TEXT, min_size=1, max_size=6), st.sampled_from(["utf-16", "utf-16-le", "utf-16-be", "utf-32",
                                                                   "latin-1", "cp1252", "gbk", "utf-8-sig"]))
def test_other_encodings_are_refused_with_a_location(texts: list[str], encoding: str) -> None:
    blob = _jsonl(texts).encode(encoding, errors="replace")
    parsed = _check(blob, DatasetFormat.taskfinetune)
    try:
        blob.decode("utf-8")
    except UnicodeDecodeError:
        assert len(parsed.errors) == 1 and not parsed.examples
        if encoding in ("utf-16", "utf-32"):  # with a byte-order mark: said plainly
            assert f"is {encoding.upper()} (byte-order mark" in parsed.errors[0]
        else:
            assert "not valid UTF-8 (byte offset" in parsed.errors[0]


def test_utf16_without_a_byte_order_mark_is_named() -> None:
    parsed = _check(_jsonl(["hello"]).encode("utf-16-le"), DatasetFormat.taskfinetune)
    assert parsed.errors and "NUL bytes: UTF-16 without a byte-order mark?" in parsed.errors[0]


def test_latin1_names_line_and_column() -> None:
    blob = _jsonl(["ok"]).encode() + '{"input": "café", "output": "x"}\n'.encode("latin-1")
    [error] = _check(blob, DatasetFormat.taskfinetune).errors
    assert error.startswith(f"{SOURCE}:2: not valid UTF-8 (byte offset 46, column 15, byte e9)")


def test_lone_surrogates_are_record_errors_not_crashes() -> None:
    text = '{"input": "\\ud800 x", "output": "y"}\n{"input": "\\ud83d\\ude00", "output": "pair"}\n'
    parsed = _check(text, DatasetFormat.taskfinetune)
    assert parsed.errors == [f"{SOURCE}:1: record 1: text has an unpaired UTF-16 surrogate (\\ud800)"]
    assert parsed.examples[0].answer == "pair"


# --- size ---------------------------------------------------------------------------------
@pytest.mark.parametrize("array", [False, True])
@pytest.mark.parametrize("depth", [50, 5_000, 200_000])
def test_deeply_nested_json_is_an_error_not_a_crash(depth: int, array: bool) -> None:
    nested = "[" * depth + "]" * depth
    text = (f'[{{"input": "a", "output": "b"}},\n{nested}]' if array
            else f'{{"input": "a", "output": "b"}}\n{{"input": {nested}, "output": "x"}}')
    t0 = time.monotonic()
    parsed = _check(text, DatasetFormat.taskfinetune)
    assert time.monotonic() - t0 < 10
    assert len(parsed.examples) == 1 and len(parsed.errors) == 1 and parsed.errors[0].startswith(f"{SOURCE}:2: ")
    if depth == 200_000:
        assert "nested too deeply" in parsed.errors[0]


def test_huge_lines_parse_in_bounded_time() -> None:
    big = "长" * 3_000_000  # one 9 MB line
    text = _jsonl(["a", big, "b"]) + '{"input": "n", "output": ' + "9" * 5000 + "}\n"
    t0 = time.monotonic()
    parsed = _check(text.encode(), DatasetFormat.taskfinetune)
    assert time.monotonic() - t0 < 20
    assert [ex.line for ex in parsed.examples] == [1, 2, 3] and len(parsed.examples[1].answer) == 3_000_000
    assert parsed.errors == [f"{SOURCE}:4: record 4: invalid JSON: Exceeds the limit (4300 digits) for integer string "
                             "conversion: value has 5000 digits; use sys.set_int_max_str_digits() to increase the limit"]
