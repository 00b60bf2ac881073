"""Parsers of each format, error locations, the deterministic split and the data contract."""

from __future__ import annotations

import json

import pytest

from anytasktune_contract.failures import DataContractError
from anytasktune_contract.trainspec import DataContractConfig, DatasetFormat
from anytasktune_trainjob import data as D


def jsonl(*records: object) -> str:
    return "\n".join(r if isinstance(r, str) else json.dumps(r, ensure_ascii=False) for r in records) + "\n"


@pytest.mark.parametrize(
    ("fmt", "record", "instruction", "expected"),
    [
        ("alpaca", {"instruction": "Translate", "input": "你好", "output": "hello"}, "",
         (("user", "Translate\n\n你好"), ("assistant", "hello"))),
        ("alpaca", {"instruction": "Say hi", "input": "", "output": "hi"}, "",
         (("user", "Say hi"), ("assistant", "hi"))),
        ("alpaca", {"instruction": "Q", "output": "A", "system": "be brief"}, "",
         (("system", "be brief"), ("user", "Q"), ("assistant", "A"))),
        ("taskfinetune", {"input": "合同金额是多少？", "output": "100万元"}, "抽取金额",
         (("user", "抽取金额\n\n合同金额是多少？"), ("assistant", "100万元"))),
        ("taskfinetune", {"input": "x", "output": "y"}, "",
         (("user", "x"), ("assistant", "y"))),
        ("taskfinetune", {"input": 12, "output": 3.5}, "", (("user", "12"), ("assistant", "3.5"))),
        ("messages", {"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "q"},
                                   {"role": "assistant", "content": "a"}]}, "",
         (("system", "s"), ("user", "q"), ("assistant", "a"))),
        ("messages", {"messages": [{"role": "user", "content": [{"type": "text", "text": "多"},
                                                                {"type": "text", "text": "段"}]},
                                   {"role": "assistant", "content": "ok"}]}, "",
         (("user", "多段"), ("assistant", "ok"))),
        ("sharegpt", {"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "yo"},
                                        {"from": "human", "value": "again"}, {"from": "gpt", "value": "yes"}]},
         "", (("user", "hi"), ("assistant", "yo"), ("user", "again"), ("assistant", "yes"))),
        ("sharegpt", {"system": "sys", "conversations": [{"from": "user", "value": "q"},
                                                         {"from": "assistant", "value": "a"}]}, "",
         (("system", "sys"), ("user", "q"), ("assistant", "a"))),
    ],
)
def test_parse_record_formats(fmt: str, record: dict, instruction: str, expected: tuple) -> None:
    assert D.parse_record(record, fmt, instruction) == expected


@pytest.mark.parametrize(
    ("fmt", "record", "reason"),
    [
        ("alpaca", {"input": "x", "output": "y"}, "missing field 'instruction'"),
        ("alpaca", {"instruction": "x", "output": "  "}, "field 'output' is empty"),
        ("alpaca", {"instruction": ["x"], "output": "y"}, "must be a string"),
        ("taskfinetune", {"input": "x"}, "missing field 'output'"),
        ("taskfinetune", {"input": "", "output": "y"}, "field 'input' is empty"),
        ("taskfinetune", ["not", "an", "object"], "must be a JSON object"),
        ("messages", {"msgs": []}, "missing field 'messages'"),
        ("messages", {"messages": []}, "non-empty list"),
        ("messages", {"messages": [{"role": "user", "content": "q"}]}, "must end with an assistant turn"),
        ("messages", {"messages": [{"role": "bot", "content": "q"}]}, "role must be one of"),
        ("messages", {"messages": [{"role": "user", "content": ""}, {"role": "assistant", "content": "a"}]},
         "content is empty"),
        ("messages", {"messages": [{"role": "assistant", "content": "a"}]}, "no user turn"),
        ("sharegpt", {"conversations": [{"from": "alien", "value": "q"}]}, "unknown 'from'"),
        ("sharegpt", {"conversations": [{"from": "human", "value": "q"}, {"from": "gpt"}]},
         "content must be a string"),
    ],
)
def test_parse_record_errors(fmt: str, record: object, reason: str) -> None:
    with pytest.raises(D.RecordError, match=reason):
        D.parse_record(record, fmt)


def test_jsonl_errors_carry_file_and_line_numbers() -> None:
    text = jsonl({"input": "a", "output": "b"}, "", '{"input": "x", "output": ', {"input": "c"},
                 {"input": "d", "output": "e"})
    result = D.parse_dataset(text.encode(), DatasetFormat.taskfinetune, source="data.jsonl")
    assert result.total_records == 4  # the blank line is skipped, not counted
    assert [e.line for e in result.examples] == [1, 5]
    assert result.errors[0].startswith("data.jsonl:3: record 2: invalid JSON")
    assert result.errors[1] == "data.jsonl:4: record 3: missing field 'output'"


def test_json_array_records_have_line_numbers() -> None:
    text = '[\n  {"input": "a", "output": "b"},\n  {"input": "中文",\n   "output": ""},\n  {"input": "c", "output": "d"}\n]\n'
    result = D.parse_dataset(text, "taskfinetune", source="arr.json")
    assert [(e.line, e.index) for e in result.examples] == [(2, 1), (5, 3)]
    assert result.errors == ["arr.json:3: record 2: field 'output' is empty"]


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ('[{"input": "a", "output": "b"} {"input": "c"}]', "expected ',' or ']'"),
        ('[{"input": "a", "output": "b"},\n {"input": ]', "invalid JSON"),
        ('[{"input": "a", "output": "b"},', "unterminated array"),
    ],
)
def test_broken_json_arrays(text: str, error: str) -> None:
    result = D.parse_dataset(text, "taskfinetune", source="x.json")
    assert len(result.examples) == 1
    assert error in result.errors[0]


def test_empty_array_and_bom() -> None:
    assert D.parse_dataset("[ ]", "alpaca").total_records == 0
    res = D.parse_dataset("\ufeff" + jsonl({"input": "a", "output": "b"}), "taskfinetune")
    assert len(res.examples) == 1


def test_invalid_utf8_is_reported_with_line() -> None:
    blob = jsonl({"input": "a", "output": "b"}).encode() + b'{"input": "\xff\xfe"}\n'
    res = D.parse_dataset(blob, "taskfinetune", source="bad.jsonl")
    assert len(res.errors) == 1 and res.errors[0].startswith("bad.jsonl:2: not valid UTF-8 (byte offset ")


def _examples(n: int) -> list[D.Example]:
    return [D.Example((("user", f"question {i}"), ("assistant", f"answer {i}")), i + 1, i + 1, "d.jsonl")
            for i in range(n)]


def test_split_is_deterministic_and_order_independent() -> None:
    exs = _examples(400)
    train, held = D.split_examples(exs, 0.2)
    train2, held2 = D.split_examples(list(reversed(exs)), 0.2)
    assert {e.key() for e in held} == {e.key() for e in held2}
    assert len(train) + len(held) == 400
    assert 50 <= len(held) <= 110  # ~20%
    assert not {e.key() for e in train} & {e.key() for e in held}


def test_split_holds_out_at_least_one_record() -> None:
    train, held = D.split_examples(_examples(3), 0.01)
    assert len(held) == 1 and len(train) == 2


def test_contract_duplicates_overlap_and_min_samples() -> None:
    exs = _examples(20)
    dup = D.Example(exs[0].messages, 30, 21, "d.jsonl")
    cfg = DataContractConfig(minSamples=25, maxDuplicateFraction=0.0)
    finding = D.check_duplicates(exs + [dup], cfg)
    assert not finding.ok and finding.count == 1
    assert finding.offenders == ["d.jsonl:30 (record 21): duplicate of d.jsonl:1"]
    assert D.check_duplicates(exs + [dup], DataContractConfig(maxDuplicateFraction=0.1)).ok

    other_answer = D.Example((("user", "QUESTION  1"), ("assistant", "different")), 40, 22, "d.jsonl")
    overlap = D.check_overlap(exs, [other_answer], cfg)
    assert not overlap.ok and "held-out prompt also in train at d.jsonl:2" in overlap.offenders[0]
    assert D.check_overlap(exs[:10], exs[10:], cfg).ok

    assert not D.check_min_samples(exs, cfg).ok
    assert D.check_min_samples(exs, DataContractConfig(minSamples=20)).ok


def test_contract_truncation_fraction() -> None:
    exs = _examples(20)
    cfg = DataContractConfig(maxTruncatedFraction=0.05)
    assert D.check_truncation(exs[:1], 20, cfg, 128).ok  # 5% allowed
    bad = D.check_truncation(exs[:2], 20, cfg, 128)
    assert not bad.ok and bad.offenders[0] == "d.jsonl:1 (record 1): longer than 128 tokens"


def test_contract_error_message_lists_first_offenders() -> None:
    result = D.parse_dataset(jsonl(*[{"input": f"x{i}"} for i in range(8)]), "taskfinetune", source="f.jsonl")
    report = D.ContractReport([D.check_parse(result)])
    with pytest.raises(DataContractError) as err:
        report.raise_if_violated("s3://b/f.jsonl")
    msg = err.value.message
    assert msg.startswith("data contract violated for s3://b/f.jsonl: [records] 8 of 8 records are invalid")
    assert "f.jsonl:1: record 1: missing field 'output'" in msg and "f.jsonl:5:" in msg
    assert "f.jsonl:6:" not in msg and "(+3 more)" in msg
    assert err.value.exit_code == 3
    assert report.as_dict()["passed"] is False
