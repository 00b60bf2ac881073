"""Turn normalised turns into token ids with the loss on answer tokens only.

With a chat template the conversation is rendered incrementally: for each
assistant turn, render(turns[:i], add_generation_prompt=True) is the prompt and
render(turns[:i+1]) adds the answer; the difference is the trainable span. Each
span is tokenised on its own and concatenated, so the label mask lines up with
the tokens exactly. Templates that are not prefix-stable (e.g. ones that rewrite
earlier turns) fall back to training on the last answer only. Without a chat
template a plain prompt template is used (see PLAIN_*).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

IGNORE_INDEX = -100
PLAIN_SYSTEM = "{content}\n\n"
PLAIN_USER = "### Input:\n{content}\n\n### Response:\n"
PLAIN_TURN_SEP = "\n\n"

Turns = Sequence[tuple[str, str]]


@dataclass
class Encoded:
    input_ids: list[int]
    labels: list[int]
    prompt_len: int  # tokens before the final answer (the generation prompt for evaluation)
    truncated: bool  # longer than max_length before cutting
    full_length: int

    @property
    def answer_tokens(self) -> int:
        return sum(1 for x in self.labels if x != IGNORE_INDEX)


def _render(tokenizer: Any, turns: Turns, add_generation_prompt: bool) -> str:
    msgs = [{"role": r, "content": c} for r, c in turns]
    return str(tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=add_generation_prompt))


def has_chat_template(tokenizer: Any) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def segments(tokenizer: Any, turns: Turns) -> list[tuple[str, bool]]:
    """(text, trainable) pieces whose concatenation is the rendered conversation."""
    if not has_chat_template(tokenizer):
        return _plain_segments(tokenizer, turns)
    out: list[tuple[str, bool]] = []
    prev = ""
    stable = True
    for i, (role, _) in enumerate(turns):
        if role != "assistant":
            continue
        before = _render(tokenizer, turns[:i], True)
        after = _render(tokenizer, turns[: i + 1], False)
        if not before.startswith(prev) or not after.startswith(before) or len(after) == len(before):
            stable = False
            break
        out.append((before[len(prev):], False))
        out.append((after[len(before):], True))
        prev = after
    if stable:
        full = _render(tokenizer, turns, False)
        if full.startswith(prev):
            if len(full) > len(prev):
                out.append((full[len(prev):], False))
            return [(t, m) for t, m in out if t]
    # fallback: only the last answer is trained
    prompt = _render(tokenizer, turns[:-1], True)
    full = _render(tokenizer, turns, False)
    if full.startswith(prompt) and len(full) > len(prompt):
        return [(prompt, False), (full[len(prompt):], True)]
    eos = tokenizer.eos_token or ""
    return [(prompt, False), (turns[-1][1] + eos, True)]


def _plain_segments(tokenizer: Any, turns: Turns) -> list[tuple[str, bool]]:
    eos = tokenizer.eos_token or ""
    bos = tokenizer.bos_token or ""
    out: list[tuple[str, bool]] = []
    pending = bos
    for role, content in turns:
        if role == "system":
            pending += PLAIN_SYSTEM.format(content=content)
        elif role == "user":
            pending += PLAIN_USER.format(content=content)
        else:
            out.append((pending, False))
            out.append((content + eos, True))
            pending = PLAIN_TURN_SEP
    return [(t, m) for t, m in out if t]


def _ids(tokenizer: Any, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def encode(tokenizer: Any, turns: Turns, max_length: int) -> Encoded:
    """Token ids and labels (IGNORE_INDEX on prompt tokens), cut at max_length."""
    ids: list[int] = []
    labels: list[int] = []
    prompt_len = 0
    segs = segments(tokenizer, turns)
    last_trainable = max((i for i, (_, m) in enumerate(segs) if m), default=-1)
    for i, (text, trainable) in enumerate(segs):
        if i == last_trainable:
            prompt_len = len(ids)
        piece = _ids(tokenizer, text)
        ids.extend(piece)
        labels.extend(piece if trainable else [IGNORE_INDEX] * len(piece))
    full_length = len(ids)
    truncated = full_length > max_length
    return Encoded(ids[:max_length], labels[:max_length], prompt_len, truncated, full_length)


def generation_prompt(tokenizer: Any, turns: Turns, max_prompt_tokens: int) -> list[int]:
    """The prompt ids for generating the final answer (left-cut to max_prompt_tokens)."""
    segs = segments(tokenizer, turns)
    last_trainable = max((i for i, (_, m) in enumerate(segs) if m), default=len(segs))
    ids: list[int] = []
    for text, _ in segs[:last_trainable]:
        ids.extend(_ids(tokenizer, text))
    return ids[-max_prompt_tokens:] if max_prompt_tokens > 0 else ids


def stop_token_ids(tokenizer: Any) -> list[int]:
    """EOS plus the token that closes an assistant turn in the chat template."""
    stops: list[int] = []
    if tokenizer.eos_token_id is not None:
        stops.append(int(tokenizer.eos_token_id))
    if has_chat_template(tokenizer):
        marker = "\u2063ANSWER\u2063"
        try:
            segs = segments(tokenizer, [("user", "q"), ("assistant", marker)])
        except Exception:  # noqa: BLE001 - templates may reject odd input
            segs = []
        for text, trainable in segs:
            if trainable and marker in text:
                tail = text.split(marker, 1)[1]
                tail_ids = _ids(tokenizer, tail) if tail else []
                if tail_ids and tail_ids[0] not in stops:
                    stops.append(int(tail_ids[0]))
    return stops


def pad_batch(batch: list[tuple[list[int], list[int]]], pad_id: int) -> dict[str, list[list[int]]]:
    """Right-pad for training: input_ids, attention_mask, labels (IGNORE on pads)."""
    width = max(len(ids) for ids, _ in batch)
    out: dict[str, list[list[int]]] = {"input_ids": [], "attention_mask": [], "labels": []}
    for ids, labels in batch:
        pad = width - len(ids)
        out["input_ids"].append(list(ids) + [pad_id] * pad)
        out["attention_mask"].append([1] * len(ids) + [0] * pad)
        out["labels"].append(list(labels) + [IGNORE_INDEX] * pad)
    return out


def left_pad(prompts: list[list[int]], pad_id: int) -> dict[str, list[list[int]]]:
    """Left-pad prompts for batched generation."""
    width = max(len(p) for p in prompts)
    return {
        "input_ids": [[pad_id] * (width - len(p)) + list(p) for p in prompts],
        "attention_mask": [[0] * (width - len(p)) + [1] * len(p) for p in prompts],
    }


class TokenTable:
    """Ragged int32 sequences stored flat (cheap to pickle through Ray's object store)."""

    def __init__(self, seqs: list[list[int]]) -> None:
        import numpy as np

        lengths = [len(s) for s in seqs]
        self.offsets = np.zeros(len(seqs) + 1, dtype=np.int64)
        if seqs:
            self.offsets[1:] = np.cumsum(lengths)
        self.flat = np.asarray([x for s in seqs for x in s], dtype=np.int32)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, i: int) -> list[int]:
        return self.flat[self.offsets[i]:self.offsets[i + 1]].tolist()
