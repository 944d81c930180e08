"""Judge-free task metrics: how close each response is to the expected output, by exact match
(normalized), ROUGE-L, chrF and BLEU. They run in seconds, need no model, and on a laptop are the
verdict to lead with: a small local judge cannot grade, while ROUGE-L against the expected output
ranks responses much as a strong judge does where answers have one right form.

Every metric is on a 0-100 scale (exact match: 100 or 0 per record, so its mean is a percentage).
Scores come from maintained libraries: rouge-score (ROUGE-L F, its default tokenizer, no stemming)
and sacrebleu (chrF with its defaults; BLEU per sentence with sacrebleu's exponential smoothing,
since sentence BLEU without smoothing is 0 for most short answers, and the corpus BLEU beside it).
Sentence BLEU stays noisy on short answers ("Cats sleep." against "Rivers flow north." scores about
20 for the shared full stop): read ROUGE-L and chrF first.
"""

from __future__ import annotations

import functools
import re
import string
from collections.abc import Sequence

import sacrebleu
from rouge_score import rouge_scorer

from instructkit.evaluate.stats import describe, step_differences

METRIC_NAMES = {"exact_match": "exact match", "rouge_l": "ROUGE-L", "chrf": "chrF", "bleu": "BLEU"}
METRICS = tuple(METRIC_NAMES)
_ARTICLES = re.compile(r"\b(a|an|the)\b")
_SCORER = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)


def normalize(text: str) -> str:
    """SQuAD's answer normalization: lower case, no punctuation, no articles, single spaces."""
    text = "".join(ch for ch in text.lower() if ch not in string.punctuation)
    return " ".join(_ARTICLES.sub(" ", text).split())


def record_metrics(response: str, reference: str) -> dict[str, float]:
    return {
        "exact_match": 100.0 * (normalize(response) == normalize(reference)),
        "rouge_l": round(100 * _SCORER.score(reference, response)["rougeL"].fmeasure, 4),
        "chrf": round(sacrebleu.sentence_chrf(response, [reference]).score, 4),
        "bleu": round(sacrebleu.sentence_bleu(response, [reference]).score, 4),
    }


def task_metrics(records: Sequence[dict], models: Sequence[str], seed: int) -> dict:
    """Per record and per model the four metrics against `output`; per model their means with 95%
    bootstrap intervals and the corpus BLEU and chrF; finetuned - base paired per record."""
    per_record = []
    for index, record in enumerate(records):
        row = {"index": index}
        for model in models:
            response = record.get(model)
            row[model] = record_metrics(response, record["output"]) if response is not None else None
        per_record.append(row)

    def column(model: str, metric: str) -> list[float | None]:
        return [row[model][metric] if row[model] else None for row in per_record]

    summary: dict = {}
    for model in models:
        answered = [r for r in records if r.get(model) is not None]
        hypotheses, references = [r[model] for r in answered], [[r["output"] for r in answered]]
        summary[model] = {metric: describe(column(model, metric), seed) for metric in METRICS}
        summary[model]["corpus"] = {
            "bleu": round(sacrebleu.corpus_bleu(hypotheses, references).score, 4) if answered else None,
            "chrf": round(sacrebleu.corpus_chrf(hypotheses, references).score, 4) if answered else None,
        }
    result = {"metrics": list(METRICS), "scale": "0-100", "summary": summary, "records": per_record}
    for metric in METRICS:  # finetuned - base, preference - finetuned
        for name, difference in step_differences(models, functools.partial(column, metric=metric), seed).items():
            result.setdefault(name, {})[metric] = difference
    return result
