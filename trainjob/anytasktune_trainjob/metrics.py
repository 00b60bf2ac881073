"""Task metrics: pure functions of (prediction, reference) strings.

Text is NFKC-normalised, case-folded and stripped of punctuation. Tokens are
words for alphabetic scripts and single characters for CJK (so token F1 and
ROUGE-L are character-level on Chinese text).
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from collections.abc import Callable, Sequence

from anytasktune_contract.trainspec import Metric

_CJK = (
    "\u2e80-\u2fdf\u3040-\u30ff\u3100-\u312f\u3130-\u318f\u31a0-\u31bf\u3400-\u4dbf"
    "\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff"
)
_TOKEN = re.compile(rf"[{_CJK}]|[^\s{_CJK}]+")


def _strip_punct(text: str) -> str:
    return "".join(" " if unicodedata.category(ch).startswith(("P", "S")) else ch for ch in text)


def normalize(text: str) -> str:
    text = unicodedata.normalize("NFKC", text).casefold()
    return " ".join(_strip_punct(text).split())


def tokens(text: str) -> list[str]:
    return _TOKEN.findall(normalize(text))


def exact_match(prediction: str, reference: str) -> float:
    return float(normalize(prediction) == normalize(reference))


def f1(prediction: str, reference: str) -> float:
    pred, ref = tokens(prediction), tokens(reference)
    if not pred and not ref:
        return 1.0
    if not pred or not ref:
        return 0.0
    common = sum((Counter(pred) & Counter(ref)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(pred), common / len(ref)
    return 2 * precision * recall / (precision + recall)


def _lcs(a: Sequence[str], b: Sequence[str]) -> int:
    if len(a) < len(b):
        a, b = b, a
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b, start=1):
            cur.append(prev[j - 1] + 1 if x == y else max(prev[j], cur[j - 1]))
        prev = cur
    return prev[-1]


def rouge_l(prediction: str, reference: str) -> float:
    pred, ref = tokens(prediction), tokens(reference)
    if not pred and not ref:
        return 1.0
    if not pred or not ref:
        return 0.0
    lcs = _lcs(pred, ref)
    if lcs == 0:
        return 0.0
    precision, recall = lcs / len(pred), lcs / len(ref)
    return 2 * precision * recall / (precision + recall)


def normalize_label(text: str) -> str:
    """A classification label: first non-empty line, normalised, without spaces."""
    first = next((ln for ln in text.strip().splitlines() if ln.strip()), "")
    return normalize(first).replace(" ", "")


def accuracy(prediction: str, reference: str) -> float:
    return float(normalize_label(prediction) == normalize_label(reference))


METRIC_FUNCTIONS: dict[Metric, Callable[[str, str], float]] = {
    Metric.exact_match: exact_match,
    Metric.f1: f1,
    Metric.rouge_l: rouge_l,
    Metric.accuracy: accuracy,
}


def score(metric: Metric | str, predictions: Sequence[str], references: Sequence[str]) -> float:
    """Mean of the per-sample metric (0.0 for no samples)."""
    if len(predictions) != len(references):
        raise ValueError("predictions and references differ in length")
    if not predictions:
        return 0.0
    fn = METRIC_FUNCTIONS[Metric(metric)]
    return sum(fn(p, r) for p, r in zip(predictions, references, strict=True)) / len(predictions)


def lift(base: dict[str, float], adapter: dict[str, float]) -> dict[str, float]:
    """adapter - base for every shared key (for eval_loss, negative is better)."""
    return {k: adapter[k] - base[k] for k in adapter if k in base}
