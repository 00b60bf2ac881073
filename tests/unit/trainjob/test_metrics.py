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


# --- normalisation bias: the same answer written differently scores the same ---------

@pytest.mark.parametrize(
    ("variant", "canonical"),
    [
        ("HIGH", "high"),                                   # case
        ("high.", "high"),                                  # trailing punctuation
        ("“high”", "high"),                                 # curly quotes
        ("ｈｉｇｈ", "high"),                                # full-width letters
        ("high\u200b", "high"),                             # zero-width space
        ("\ufeffhigh", "high"),                             # byte-order mark
        ("high\u3000risk", "high risk"),                    # ideographic space
        ("甲方，乙方；丙方。", "甲方,乙方;丙方"),                # Chinese vs English separators
        ("甲方、乙方", "甲方 乙方"),                            # enumeration comma vs space
        ("甲方 乙方", "甲方乙方"),                              # a space between CJK words
        ("金额 100 万元", "金额100万元"),                       # spaces around numbers in Chinese
        ("1,000,000 yuan", "1000000 yuan"),                 # thousands separators
        ("１２３", "123"),                                   # full-width digits
        ("**Medium**", "medium"),                           # markdown emphasis
        ("follow-up", "follow up"),                         # hyphen
    ],
)
def test_normalisation_removes_writing_differences(variant: str, canonical: str) -> None:
    assert M.normalize(variant) == M.normalize(canonical)
    assert M.exact_match(variant, canonical) == 1.0
    assert M.f1(variant, canonical) == 1.0 and M.rouge_l(variant, canonical) == 1.0


@pytest.mark.parametrize(("a", "b"), [("high", "higher"), ("1,0000", "10000"), ("甲方", "乙方"), ("low", "below")])
def test_normalisation_keeps_real_differences(a: str, b: str) -> None:
    assert M.exact_match(a, b) == 0.0


# --- classification: the label of a free-form answer ------------------------------------

RISK_LABELS = M.learn_labels(["low", "medium", "high", "低", "中", "高"] * 3 + ["high", "高"])


def test_learn_labels_from_training_answers() -> None:
    assert set(RISK_LABELS) == {"low", "medium", "high", "低", "中", "高"}
    assert RISK_LABELS[:2] == ["high", "高"]  # most frequent first
    assert M.learn_labels(["High", "high.", "LOW", "low"]) == ["high", "low"]  # normalised
    assert M.learn_labels([f"answer {i}" for i in range(40)]) == []  # free text: no label set
    assert M.learn_labels(["only"] * 10) == []  # one label is no classification


@pytest.mark.parametrize(
    ("answer", "label"),
    [
        ("high", "high"),
        ("The risk is HIGH.", "high"),
        ("Risk level: medium", "medium"),
        ("I would rate it low to medium.", "low"),               # first label mentioned
        ("highly unusual clause, but low risk", "low"),          # whole words: "highly" is not "high"
        ("The clause is below market; risk: medium", "medium"),  # "below" is not "low"
        ("ＨＩＧＨ", "high"),                                     # full-width
        ("**Medium** risk", "medium"),
        ("高风险", "高"),                                          # Chinese has no word boundaries
        ("风险等级：中。", "中"),
        ("这个条款的风险是低的", "低"),
        ("No rating given.", None),
        ("", None),
    ],
)
def test_extract_label(answer: str, label: str | None) -> None:
    assert M.extract_label(answer, RISK_LABELS) == label


def test_extract_label_prefers_the_longest_label_at_the_same_place() -> None:
    assert M.extract_label("very low risk", ["low", "very low"]) == "very low"


@pytest.mark.parametrize(
    ("pred", "ref", "acc"),
    [
        ("The risk is high.", "high", 1.0),
        ("high", "high", 1.0),
        ("Rating: LOW", "low", 1.0),
        ("风险：高。", "高", 1.0),
        ("This clause carries medium risk", "high", 0.0),
        ("I cannot tell.", "low", 0.0),
        ("low\nbecause the notice period is long", "low", 1.0),
    ],
)
def test_accuracy_reads_the_label_of_free_form_answers(pred: str, ref: str, acc: float) -> None:
    assert M.accuracy(pred, ref, RISK_LABELS) == acc


def test_base_and_adapter_are_scored_the_same_way() -> None:
    """The old first-line rule gave a sentence answer 0 even when it named the right
    label: the base model looked worse than chance on a three-label task."""
    refs = ["high", "low", "中"]
    base = ["The risk of this clause is high.", "Low risk.", "风险为中等"]
    adapter = ["high", "low", "中"]
    assert M.score("accuracy", base, refs) == 0.0  # without the label set (the old behaviour)
    assert M.score("accuracy", base, refs, RISK_LABELS) == 1.0
    assert M.score("accuracy", adapter, refs, RISK_LABELS) == 1.0
    assert M.per_record("accuracy", base, refs, RISK_LABELS) == [1.0, 1.0, 1.0]
