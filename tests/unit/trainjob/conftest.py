from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "fixtures"))


@pytest.fixture(scope="session")
def chat_tokenizer() -> Any:
    import tinymodel

    texts = tinymodel.training_texts(tinymodel.sentiment_records(40), "Classify the sentiment")
    return tinymodel.build_tokenizer(texts + ["question answer 你好 世界"], vocab_size=300)


@pytest.fixture(scope="session")
def plain_tokenizer(chat_tokenizer: Any) -> Any:
    import copy

    tok = copy.deepcopy(chat_tokenizer)
    tok.chat_template = None
    return tok
