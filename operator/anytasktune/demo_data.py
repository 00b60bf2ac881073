"""Seeded generator of the demo's legal task pool (Task-Fine-Tune style: a fixed task
instruction + input -> output), in English and Chinese.

Three sub-tasks whose answers follow rules a model must learn, with enough
combinatorial variety that held-out records are new combinations, not repeats:

- keyword-extraction: a case description -> the legal keywords it mentions (token F1)
- clause-risk: a contract clause -> low / medium / high risk (accuracy)
- case-split: a case description -> parties / facts / claims (ROUGE-L)

`python -m anytasktune.demo_data OUTDIR` writes keywords.jsonl, clause-risk.jsonl and
case-split.jsonl; the same seed always gives the same files.
"""

from __future__ import annotations

import json
import random
import sys
from collections.abc import Callable
from pathlib import Path

Record = dict[str, str]

PARTIES_EN = ["the tenant", "the landlord", "the employer", "the employee", "the buyer", "the seller", "the contractor",
              "the supplier", "the borrower", "the lender", "the franchisee", "the insurer"]
PARTIES_ZH = ["租客", "房东", "雇主", "员工", "买方", "卖方", "承包商", "供应商", "借款人", "贷款人", "加盟商", "保险公司"]

# (English keyword, Chinese keyword, English phrase mentioning it, Chinese phrase)
ISSUES = [
    ("breach of contract", "违约", "failed to deliver as the contract required", "未按合同约定交付"),
    ("unpaid wages", "拖欠工资", "did not pay three months of wages", "拖欠三个月工资"),
    ("security deposit", "押金", "kept the security deposit after moving out", "退租后扣留押金"),
    ("defective goods", "产品缺陷", "delivered defective goods", "交付了有缺陷的产品"),
    ("late payment", "逾期付款", "paid the invoice four months late", "逾期四个月付款"),
    ("wrongful dismissal", "违法解除", "was dismissed without notice", "被无故辞退"),
    ("trademark infringement", "商标侵权", "used a confusingly similar trademark", "使用了近似商标"),
    ("loan default", "贷款违约", "stopped repaying the loan", "停止偿还贷款"),
    ("property damage", "财产损害", "damaged the warehouse roof", "损坏了仓库屋顶"),
    ("insurance claim", "保险理赔", "refused to settle the insurance claim", "拒绝保险理赔"),
    ("non-compete clause", "竞业限制", "joined a competitor within one year", "一年内加入竞争对手"),
    ("overtime pay", "加班费", "never paid overtime", "从未支付加班费"),
]
REMEDIES_EN = ["compensation", "termination", "an injunction", "refund", "interest", "specific performance"]
REMEDIES_ZH = ["赔偿损失", "解除合同", "禁令", "退款", "利息", "继续履行"]
CITIES_EN = ["Shanghai", "Beijing", "Shenzhen", "Hangzhou", "Chengdu", "Wuhan", "Nanjing", "Xi'an"]
CITIES_ZH = ["上海", "北京", "深圳", "杭州", "成都", "武汉", "南京", "西安"]

INSTRUCTIONS = {
    "keyword-extraction": "Extract the legal keywords of the case, separated by commas. 提取案件的法律关键词，用逗号分隔。",
    "clause-risk": "Rate the legal risk of the contract clause: answer low, medium or high. 判断合同条款的法律风险：回答 低、中 或 高。",
    "case-split": "Split the case into parties, facts and claims. 将案件拆分为当事人、事实和诉求。",
}


def keyword_record(rng: random.Random) -> Record:
    a, b = rng.sample(range(len(PARTIES_EN)), 2)
    issues = rng.sample(ISSUES, rng.choice([1, 2]))
    remedy = rng.randrange(len(REMEDIES_EN))
    city = rng.randrange(len(CITIES_EN))
    if rng.random() < 0.5:
        facts = " and ".join(i[2] for i in issues)
        text = f"In {CITIES_EN[city]}, {PARTIES_EN[a]} sued {PARTIES_EN[b]}, who {facts}, seeking {REMEDIES_EN[remedy]}."
        keywords = [i[0] for i in issues] + [REMEDIES_EN[remedy]]
    else:
        facts = "并且".join(i[3] for i in issues)
        text = f"在{CITIES_ZH[city]}，{PARTIES_ZH[a]}起诉{PARTIES_ZH[b]}，对方{facts}，请求{REMEDIES_ZH[remedy]}。"
        keywords = [i[1] for i in issues] + [REMEDIES_ZH[remedy]]
    return {"input": text, "output": ", ".join(keywords)}


# Clause features and the risk they carry; the label is the highest risk present.
RISK_FEATURES = [
    ("high", "with unlimited liability for all indirect losses", "对一切间接损失承担无限责任"),
    ("high", "and waives every right to terminate", "并放弃全部解除权"),
    ("high", "may change the price at any time without notice", "可随时调整价格且无需通知"),
    ("medium", "with a penalty of 20% of the contract value", "违约金为合同金额的20%"),
    ("medium", "renewing automatically unless cancelled in writing", "除非书面取消否则自动续期"),
    ("medium", "with disputes settled by arbitration abroad", "争议提交境外仲裁"),
    ("low", "with 30 days written notice for termination", "提前30天书面通知可解除"),
    ("low", "with liability capped at the fees paid", "责任以已付费用为上限"),
    ("low", "governed by the law of the place of performance", "适用履行地法律"),
]
SUBJECTS_EN = ["The supplier shall deliver the goods monthly", "The tenant shall pay rent quarterly",
               "The contractor shall finish the works by June", "The licensee may use the software",
               "The borrower shall repay in twelve instalments", "The agent shall market the products"]
SUBJECTS_ZH = ["供应商应每月交付货物", "租客应按季度支付租金", "承包商应于六月前完工", "被许可人可使用该软件", "借款人应分十二期还款", "代理商应推广产品"]
RISK_ORDER = {"low": 0, "medium": 1, "high": 2}
RISK_ZH = {"low": "低", "medium": "中", "high": "高"}


def clause_record(rng: random.Random) -> Record:
    features = rng.sample(RISK_FEATURES, rng.choice([1, 2]))
    label = max((f[0] for f in features), key=RISK_ORDER.__getitem__)
    subject = rng.randrange(len(SUBJECTS_EN))
    if rng.random() < 0.5:
        text = f"{SUBJECTS_EN[subject]}, " + ", ".join(f[1] for f in features) + "."
        return {"input": text, "output": label}
    text = f"{SUBJECTS_ZH[subject]}，" + "，".join(f[2] for f in features) + "。"
    return {"input": text, "output": RISK_ZH[label]}


def case_split_record(rng: random.Random) -> Record:
    a, b = rng.sample(range(len(PARTIES_EN)), 2)
    issue = rng.choice(ISSUES)
    remedy = rng.randrange(len(REMEDIES_EN))
    city = rng.randrange(len(CITIES_EN))
    if rng.random() < 0.5:
        text = f"{PARTIES_EN[a].capitalize()} from {CITIES_EN[city]} says {PARTIES_EN[b]} {issue[2]} and asks for {REMEDIES_EN[remedy]}."
        out = f"Parties: {PARTIES_EN[a]}; {PARTIES_EN[b]}\nFacts: {PARTIES_EN[b]} {issue[2]}\nClaims: {REMEDIES_EN[remedy]}"
    else:
        text = f"{CITIES_ZH[city]}的{PARTIES_ZH[a]}称{PARTIES_ZH[b]}{issue[3]}，要求{REMEDIES_ZH[remedy]}。"
        out = f"当事人：{PARTIES_ZH[a]}；{PARTIES_ZH[b]}\n事实：{PARTIES_ZH[b]}{issue[3]}\n诉求：{REMEDIES_ZH[remedy]}"
    return {"input": text, "output": out}


GENERATORS: dict[str, tuple[str, Callable[[random.Random], Record]]] = {
    "keyword-extraction": ("keywords.jsonl", keyword_record),
    "clause-risk": ("clause-risk.jsonl", clause_record),
    "case-split": ("case-split.jsonl", case_split_record),
}


def generate(make: Callable[[random.Random], Record], count: int, seed: int) -> list[Record]:
    """`count` distinct records (duplicates would break the data contract)."""
    rng = random.Random(seed)
    seen: set[str] = set()
    records: list[Record] = []
    for _ in range(count * 50):
        rec = make(rng)
        if rec["input"] not in seen:
            seen.add(rec["input"])
            records.append(rec)
            if len(records) == count:
                return records
    raise ValueError(f"only {len(records)} distinct records; the generator lacks variety for {count}")


def write_all(outdir: Path, count: int = 320, seed: int = 2407) -> dict[str, Path]:
    outdir.mkdir(parents=True, exist_ok=True)
    paths = {}
    for i, (subtask, (filename, make)) in enumerate(GENERATORS.items()):
        path = outdir / filename
        lines = [json.dumps(r, ensure_ascii=False) for r in generate(make, count, seed + i)]
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
        paths[subtask] = path
    return paths


if __name__ == "__main__":
    target = Path(sys.argv[1] if len(sys.argv) > 1 else "examples/legal-demo/data")
    for name, p in write_all(target).items():
        print(f"{name}: {p}")
