"""Task metrics, table-driven, Chinese and English."""

from __future__ import annotations

import pytest

from anytasktune_contract.trainspec import EvaluationConfig, Metric, TaskType, metrics_for
from anytasktune_trainjob import metrics as M


@pytest.mark.parametrize(
    ("text", "tokens"),
    [
        ("Hello, World!", ["hello", "world"]),
        ("合同金额100万元", ["合", "同", "金", "额", "100", "万", "元"]),
        ("  ＡＢＣ  def ", ["abc", "def"]),  # NFKC folds full-width letters
        ("今天是 Monday。", ["今", "天", "是", "monday"]),
        ("", []),
    ],
)
def test_tokens(text: str, tokens: list[str]) -> None:
    assert M.tokens(text) == tokens


@pytest.mark.parametrize(
    ("pred", "ref", "em", "f1", "rouge"),
    [
        ("Paris", "paris.", 1.0, 1.0, 1.0),
        ("the capital is Paris", "Paris", 0.0, 0.4, 0.4),
        ("北京", "北京市", 0.0, 0.8, 0.8),
        ("上海", "北京", 0.0, 0.0, 0.0),
        ("a b c d", "a c", 0.0, 2 / 3, 2 / 3),
        ("c b a", "a b c", 0.0, 1.0, 1 / 3),  # F1 ignores order, ROUGE-L does not
        ("", "", 1.0, 1.0, 1.0),
        ("", "x", 0.0, 0.0, 0.0),
        ("甲方：张三", "甲方: 张三", 1.0, 1.0, 1.0),  # full-width punctuation
    ],
)
def test_em_f1_rouge(pred: str, ref: str, em: float, f1: float, rouge: float) -> None:
    assert M.exact_match(pred, ref) == em
    assert M.f1(pred, ref) == pytest.approx(f1)
    assert M.rouge_l(pred, ref) == pytest.approx(rouge)


@pytest.mark.parametrize(
    ("pred", "ref", "acc"),
    [
        ("Positive", "positive", 1.0),
        ("positive.\nBecause the review says so", "positive", 1.0),
        ("  NEGATIVE!", "negative", 1.0),
        ("正面。", "正面", 1.0),
        ("负面", "正面", 0.0),
        ("not positive", "positive", 0.0),
        ("", "positive", 0.0),
    ],
)
def test_accuracy_labels(pred: str, ref: str, acc: float) -> None:
    assert M.accuracy(pred, ref) == acc


def test_score_and_lift() -> None:
    assert M.score(Metric.accuracy, ["a", "b"], ["a", "c"]) == 0.5
    assert M.score("f1", [], []) == 0.0
    with pytest.raises(ValueError):
        M.score("f1", ["a"], [])
    assert M.lift({"eval_loss": 2.0, "f1": 0.25}, {"eval_loss": 1.5, "f1": 0.75}) == {"eval_loss": -0.5, "f1": 0.5}


@pytest.mark.parametrize(
    ("task", "metric"),
    [(TaskType.extraction, Metric.f1), (TaskType.classification, Metric.accuracy),
     (TaskType.generation, Metric.rouge_l), (TaskType.rewriting, Metric.rouge_l),
     (TaskType.exact, Metric.exact_match)],
)
def test_every_default_metric_has_a_function(task: TaskType, metric: Metric) -> None:
    (chosen,) = metrics_for(EvaluationConfig(), task)
    assert chosen == metric and chosen in M.METRIC_FUNCTIONS
