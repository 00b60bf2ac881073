"""Prompt masking: loss on answer tokens only, with and without a chat template."""

from __future__ import annotations

from typing import Any

import pytest

from anytasktune_trainjob import encoding as E

IGN = E.IGNORE_INDEX


def _answer_text(tok: Any, enc: E.Encoded) -> str:
    return tok.decode([i for i, lab in zip(enc.input_ids, enc.labels, strict=True) if lab != IGN])


def test_chat_template_masks_prompt_tokens(chat_tokenizer: Any) -> None:
    turns = [("user", "Classify\n\n这个手机很好"), ("assistant", "positive")]
    enc = E.encode(chat_tokenizer, turns, 256)
    assert chat_tokenizer.decode(enc.input_ids) == chat_tokenizer.apply_chat_template(
        [{"role": r, "content": c} for r, c in turns], tokenize=False)
    assert all(lab == IGN for lab in enc.labels[: enc.prompt_len])
    assert _answer_text(chat_tokenizer, enc) == "positive<|im_end|>\n"
    assert enc.labels[enc.prompt_len:] == enc.input_ids[enc.prompt_len:]
    assert not enc.truncated and enc.answer_tokens > 0


def test_multi_turn_trains_every_assistant_turn(chat_tokenizer: Any) -> None:
    turns = [("system", "be brief"), ("user", "question"), ("assistant", "answer"),
             ("user", "你好"), ("assistant", "世界")]
    enc = E.encode(chat_tokenizer, turns, 512)
    assert _answer_text(chat_tokenizer, enc) == "answer<|im_end|>\n世界<|im_end|>\n"
    prompt = chat_tokenizer.decode(enc.input_ids[: enc.prompt_len])
    assert prompt.endswith("<|im_start|>user\n你好<|im_end|>\n<|im_start|>assistant\n")


def test_plain_template_without_chat_template(plain_tokenizer: Any) -> None:
    enc = E.encode(plain_tokenizer, [("system", "Classify"), ("user", "good phone"), ("assistant", "positive")], 256)
    text = plain_tokenizer.decode(enc.input_ids)
    assert text == "Classify\n\n### Input:\ngood phone\n\n### Response:\npositive<|im_end|>"
    assert _answer_text(plain_tokenizer, enc) == "positive<|im_end|>"


def test_truncation_is_flagged_and_cut(chat_tokenizer: Any) -> None:
    turns = [("user", "question " * 40), ("assistant", "answer")]
    enc = E.encode(chat_tokenizer, turns, 16)
    assert enc.truncated and len(enc.input_ids) == 16 == len(enc.labels)
    assert enc.full_length > 16
    assert enc.answer_tokens == 0  # the answer was cut off entirely


def test_generation_prompt_matches_training_prefix(chat_tokenizer: Any) -> None:
    turns = [("user", "这个手机很好"), ("assistant", "positive")]
    enc = E.encode(chat_tokenizer, turns, 256)
    assert E.generation_prompt(chat_tokenizer, turns, 1000) == enc.input_ids[: enc.prompt_len]
    assert E.generation_prompt(chat_tokenizer, turns, 3) == enc.input_ids[enc.prompt_len - 3: enc.prompt_len]


def test_stop_ids_include_turn_end(chat_tokenizer: Any) -> None:
    assert chat_tokenizer.convert_tokens_to_ids("<|im_end|>") in E.stop_token_ids(chat_tokenizer)


@pytest.mark.parametrize(
    ("batch", "ids", "mask", "labels"),
    [
        ([([1, 2, 3], [IGN, 2, 3]), ([4], [4])],
         [[1, 2, 3], [4, 0, 0]], [[1, 1, 1], [1, 0, 0]], [[IGN, 2, 3], [4, IGN, IGN]]),
    ],
)
def test_pad_batch(batch: list, ids: list, mask: list, labels: list) -> None:
    assert E.pad_batch(batch, 0) == {"input_ids": ids, "attention_mask": mask, "labels": labels}


def test_left_pad() -> None:
    assert E.left_pad([[1, 2], [3]], 9) == {"input_ids": [[1, 2], [9, 3]], "attention_mask": [[1, 1], [0, 1]]}
