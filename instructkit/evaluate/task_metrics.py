"""Judge-free task metrics: how close each response is to the expected output, by exact match
(normalized), ROUGE-L, chrF and BLEU, and by any metric asked for with stage 4's `--metric`
(text-to-SQL by execution, a user's own function; evaluate/metrics.py). The text metrics run in
seconds, need no model, and on a laptop are the verdict to lead with: a small local judge cannot
grade, while ROUGE-L against the expected output ranks responses much as a strong judge does where
answers have one right form.

Every metric is on a 0-100 scale (a pass/fail metric such as exact match is 100 or 0 per record,
so its mean is a percentage, and its paired differences get McNemar's test). The text metrics come
from maintained libraries: rouge-score (ROUGE-L F, its default tokenizer, no stemming) and
sacrebleu (chrF with its defaults; BLEU per sentence with sacrebleu's exponential smoothing, since
sentence BLEU without smoothing is 0 for most short answers, and the corpus BLEU beside it).
Sentence BLEU stays noisy on short answers ("Cats sleep." against "Rivers flow north." scores about
20 for the shared full stop): read ROUGE-L and chrF first.
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Sequence

from instructkit.errors import UserError
from instructkit.evaluate.metrics import RECORD_FIELDS, Metric, Scored, checked, score
from instructkit.evaluate.stats import STEPS, describe, mcnemar, step_differences

LEAD = "rouge_l"  # what the report breaks down by category and lists losses by, unless --metric names another


def cell_key(record: dict, response: str) -> str:
    """What a metric's value for one response depends on besides the metric: the record and the response."""
    fields = {k: record[k] for k in RECORD_FIELDS if k in record}
    return hashlib.sha256(json.dumps([fields, response], ensure_ascii=False, sort_keys=True).encode()).hexdigest()[:16]


class Earlier:
    """The values a finished task_metrics.json holds, reused where the metric (its fingerprint) and
    the record and response (their key) are the same: a rerun computes only what changed."""

    def __init__(self, result: dict | None):
        result = result if isinstance(result, dict) else {}
        self.fingerprints = result.get("fingerprints") or {}
        self.cells: dict[tuple[str, str], dict] = {}
        for row in result.get("records") or []:
            for model, key in (row.get("keys") or {}).items():
                if row.get(model) is not None:
                    self.cells[(model, key)] = {"values": row[model], "reasons": (row.get("reasons") or {}).get(model, {})}
        self.reused = 0

    def values(self, metric: Metric, model: str, key: str, where: str) -> dict[str, Scored] | None:
        """The metric's stored values for one response (checked again: the file is on disk), or None."""
        if self.fingerprints.get(metric.name) != metric.fingerprint or (model, key) not in self.cells:
            return None
        cell = self.cells[(model, key)]
        names = [n for n in cell["values"] if n == metric.name or n.startswith(f"{metric.name}.")]
        if not names:
            return None
        self.reused += 1
        return {n: checked(metric, Scored(cell["values"][n], cell["reasons"].get(n)), where) for n in names}


def task_metrics(records: Sequence[dict], models: Sequence[str], seed: int, metrics: Sequence[Metric], label: str,
                 earlier: Earlier | None = None, asked: Sequence[Metric] = ()) -> dict:
    """Per record and per model each metric (and why, where a metric says); per model the means
    with 95% bootstrap intervals and the corpus BLEU and chrF; each training step paired per record
    (McNemar's test for pass/fail metrics); the means per category. `asked` are the metrics given
    with --metric: the run leads with the first (else ROUGE-L), and each must score something;
    `label` names the responses file, for errors."""
    lead = asked[0].name if asked else LEAD
    earlier = earlier or Earlier(None)
    found_names: dict[str, dict[str, str]] = {m.name: {} for m in metrics}  # each metric's results and labels
    per_record = []
    for index, record in enumerate(records):
        row: dict = {"index": index, "keys": {}}
        for model in models:
            response = record.get(model)
            row[model] = None
            if response is None:
                continue
            key = row["keys"][model] = cell_key(record, response)
            values, reasons = {}, {}
            where = f"{label}: record {index}, model {model}"
            for metric in metrics:
                found = earlier.values(metric, model, key, where)
                found = score(metric, response, record, where, found_names[metric.name]) if found is None else found
                for name, scored in found.items():
                    found_names[metric.name].setdefault(name, metric.label if name == metric.name else name)
                    values[name] = scored.value
                    if scored.reason:
                        reasons[name] = scored.reason
            row[model] = values
            if reasons:
                row.setdefault("reasons", {})[model] = reasons
        per_record.append(row)
    labels = {name: text for metric in metrics for name, text in found_names[metric.name].items()}  # by metric
    names = list(labels)
    if not any(row["keys"] for row in per_record):
        raise UserError(f"{label}: no response to score")

    def column(model: str, metric: str) -> list[float | None]:
        return [(row[model] or {}).get(metric) for row in per_record]

    empty = [m.name for m in asked if not any(v is not None for name in found_names[m.name] for model in models
                                              for v in column(model, name))]
    if empty:
        raise UserError(f"--metric {', '.join(empty)} scored no response of {label}: every value was None")

    declared = {name: metric.pass_fail for metric in metrics for name in found_names[metric.name]}

    def is_pass_fail(name: str) -> bool:
        values = [v for model in models for v in column(model, name) if v is not None]
        return declared[name] if declared[name] is not None else bool(values) and all(v in (0.0, 100.0) for v in values)

    pass_fail = [name for name in names if is_pass_fail(name)]
    summary: dict = {}
    for model in models:
        answered = [r for r in records if r.get(model) is not None]
        summary[model] = {metric: describe(column(model, metric), seed) for metric in names}
        summary[model]["corpus"] = _corpus(answered, model)
    result = {"metrics": names, "lead": next(iter(found_names[lead])),
              "labels": labels, "pass_fail": pass_fail, "scale": "0-100", "summary": summary,
              "fingerprints": {m.name: m.fingerprint for m in metrics}, "records": per_record}
    for metric in names:  # finetuned - base, preference - finetuned
        for name, difference in step_differences(models, functools.partial(column, metric=metric), seed).items():
            if metric in pass_fail:
                before, after = STEPS[name]
                difference["mcnemar"] = mcnemar(*(
                    {i: v == 100.0 for i, v in enumerate(column(m, metric)) if v is not None} for m in (before, after)),
                    names=(before, after))
            result.setdefault(name, {})[metric] = difference
    result["by_category"] = _by_category(records, models, names, column)
    return result


def _corpus(answered: list[dict], model: str) -> dict:
    import sacrebleu

    hypotheses, references = [r[model] for r in answered], [[r["output"] for r in answered]]
    return {"bleu": round(sacrebleu.corpus_bleu(hypotheses, references).score, 4) if answered else None,
            "chrf": round(sacrebleu.corpus_chrf(hypotheses, references).score, 4) if answered else None}


def _by_category(records: Sequence[dict], models: Sequence[str], names: list[str], column) -> dict:
    """Each metric's mean per model per category (the records' `category`), where records have one."""
    groups: dict[str, list[int]] = {}
    for index, record in enumerate(records):
        if isinstance(record.get("category"), str):
            groups.setdefault(record["category"], []).append(index)
    return {category: {model: {metric: describe([column(model, metric)[i] for i in indexes], 0)["mean"]
                               for metric in names} for model in models}
            for category, indexes in sorted(groups.items())}


