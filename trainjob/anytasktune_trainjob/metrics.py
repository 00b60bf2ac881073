"""Task metrics: pure functions of (prediction, reference) strings, the same for the
base model, the adapter and a general model.

Normalisation (`normalize`), applied to both sides before any comparison:
NFKC (full-width letters, digits, punctuation and spaces become their ASCII forms),
case folding, format characters (zero-width spaces, BOM) removed, thousands
separators between digits removed ("1,000" = "1000"), punctuation and symbols
(ASCII and CJK: "，。、；：" …) become spaces, runs of whitespace collapse, and a
space next to a CJK character is dropped ("甲方 乙方" = "甲方乙方").

Tokens are words for alphabetic scripts and single characters for CJK (so token F1
and ROUGE-L are character-level on Chinese text).

Classification (`accuracy`) compares labels, not sentences: with the label set
learned from the training answers (`learn_labels`), the label of an answer is the
first label it mentions (`extract_label`), so "The risk is high." and "风险：高。"
score like the bare "high" and "高".
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from collections.abc import Callable, Sequence
from functools import partial

from anytasktune_contract.trainspec import Metric

_CJK = (
    "\u2e80-\u2fdf\u3040-\u30ff\u3100-\u312f\u3130-\u318f\u31a0-\u31bf\u3400-\u4dbf"
    "\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff"
)
_TOKEN = re.compile(rf"[{_CJK}]|[^\s{_CJK}]+")
_CJK_CHAR = re.compile(rf"[{_CJK}]")
_SPACE_NEAR_CJK = re.compile(rf"(?<=[{_CJK}]) | (?=[{_CJK}])")
_DIGIT_GROUP = re.compile(r"(?<=\d),(?=\d{3}(?!\d))")
MAX_LABELS = 32  # more distinct training answers than this: not a label set


def _strip_punct(text: str) -> str:
    out = []
    for ch in text:
        cat = unicodedata.category(ch)
        if cat == "Cf":  # zero-width space, joiners, BOM: invisible, never meaningful here
            continue
        out.append(" " if cat.startswith(("P", "S")) else ch)
    return "".join(out)


def normalize(text: str) -> str:
    text = unicodedata.normalize("NFKC", text).casefold()
    text = _DIGIT_GROUP.sub("", text)
    text = " ".join(_strip_punct(text).split())
    return _SPACE_NEAR_CJK.sub("", text)


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


# --- classification ------------------------------------------------------------


def normalize_label(text: str) -> str:
    """A classification answer without a label set: its first non-empty line, normalised."""
    first = next((ln for ln in text.strip().splitlines() if ln.strip()), "")
    return normalize(first).replace(" ", "")


def learn_labels(answers: Sequence[str]) -> list[str]:
    """The label set of a classification dataset: its distinct normalised training
    answers, most frequent first. Empty when the answers do not look like labels
    (more than MAX_LABELS distinct ones, or fewer than two records per label)."""
    counts = Counter(normalize(a) for a in answers if normalize(a))
    if not 2 <= len(counts) <= MAX_LABELS or len(answers) < 2 * len(counts):
        return []
    return [label for label, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))]


def _is_word_char(ch: str) -> bool:
    return ch.isalnum() and _CJK_CHAR.match(ch) is None


def _first_position(text: str, label: str) -> int:
    """Where `label` is first mentioned in normalised `text`, or -1. A label with
    letters or digits must stand as whole words ("high" is not in "highly"); a CJK
    label may sit inside a word (Chinese has no spaces: "高" is in "高风险")."""
    start = text.find(label)
    while start >= 0:
        end = start + len(label)
        before = text[start - 1] if start > 0 else ""
        after = text[end] if end < len(text) else ""
        edges_ok = not (_is_word_char(label[0]) and before and _is_word_char(before)) and \
            not (_is_word_char(label[-1]) and after and _is_word_char(after))
        if edges_ok:
            return start
        start = text.find(label, start + 1)
    return -1


def extract_label(text: str, labels: Sequence[str]) -> str | None:
    """The first label of `labels` mentioned in `text` (the longest one when two start
    at the same place: "very low" before "low"), or None."""
    norm = normalize(text)
    found = [(pos, -len(label), label) for label in labels if (pos := _first_position(norm, label)) >= 0]
    return min(found)[2] if found else None


def accuracy(prediction: str, reference: str, labels: Sequence[str] = ()) -> float:
    """1.0 when the answer names the reference's label. With a label set, both sides
    are read with `extract_label` (falling back to the first line when an answer
    names no label); without one, first lines are compared."""
    if labels:
        pred = extract_label(prediction, labels) or normalize_label(prediction)
        ref = extract_label(reference, labels) or normalize_label(reference)
        return float(pred.replace(" ", "") == ref.replace(" ", ""))
    return float(normalize_label(prediction) == normalize_label(reference))


# --- scoring ---------------------------------------------------------------------

METRIC_FUNCTIONS: dict[Metric, Callable[[str, str], float]] = {
    Metric.exact_match: exact_match,
    Metric.f1: f1,
    Metric.rouge_l: rouge_l,
    Metric.accuracy: accuracy,
}


def metric_function(metric: Metric | str, labels: Sequence[str] = ()) -> Callable[[str, str], float]:
    m = Metric(metric)
    return partial(accuracy, labels=tuple(labels)) if m == Metric.accuracy else METRIC_FUNCTIONS[m]


def per_record(metric: Metric | str, predictions: Sequence[str], references: Sequence[str],
               labels: Sequence[str] = ()) -> list[float]:
    """The metric of every record, in order (what the bootstrap resamples)."""
    if len(predictions) != len(references):
        raise ValueError("predictions and references differ in length")
    fn = metric_function(metric, labels)
    return [fn(p, r) for p, r in zip(predictions, references, strict=True)]


def score(metric: Metric | str, predictions: Sequence[str], references: Sequence[str],
          labels: Sequence[str] = ()) -> float:
    """Mean of the per-record metric (0.0 for no records)."""
    values = per_record(metric, predictions, references, labels)
    return sum(values) / len(values) if values else 0.0


def lift(base: dict[str, float], adapter: dict[str, float]) -> dict[str, float]:
    """adapter - base for every shared key (for eval_loss, negative is better)."""
    return {k: adapter[k] - base[k] for k in adapter if k in base}
