"""Stage 4: a judge model scores every response 0-100 against the expected output, and compares the
two models pairwise when asked (`judge_scores.json`)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from instructkit.data.responses import read_responses, responses_path
from instructkit.errors import UserError
from instructkit.evaluate.metrics import resolve_metrics
from instructkit.evaluate.stats import (
    STEPS,
    agreement,
    describe,
    fmt,
    fmt_interval,
    length_controlled_win_rate,
    step_differences,
    win_rate,
)
from instructkit.evaluate.task_metrics import Earlier, task_metrics
from instructkit.judge.config import (
    EACH_STEP,
    NO_JUDGE,
    REFERENCE,
    SCORES_FILE,
    TASK_METRICS_FILE,
    JudgeConfig,
    check_settings,
    resolve_scoring,
)
from instructkit.judge.judges import load_judge
from instructkit.judge.prompts import (
    PAIRWISE_RETRY,
    SCORE_PREFILL,
    SCORE_RETRY,
    VERDICT_PREFILL,
    pairwise_prompt,
    parse_score,
    parse_verdict,
    score_prompt,
)
from instructkit.models.backends import Reply
from instructkit.models.precision import Precision, precision_setting, resolve_precision
from instructkit.models.references import backend_kind
from instructkit.runs.artifacts import manifest, output_lock, read_json
from instructkit.runs.fingerprints import path_input
from instructkit.runs.reuse import open_work

# What one judgement depends on besides the responses; and what else shapes the finished file.
JUDGEMENT_SETTINGS = ("judge", "judge_base_url", "scoring", "max_new_tokens", "seed", "trust_remote_code")
RUN_SETTINGS = ("pairwise", "limit")
LOW_COVERAGE = 0.5
WITH_CI, EQUAL = " 95% CI [{}, {}]", " (no interval: all values equal)"


def judge_precision(config: JudgeConfig) -> Precision | None:
    """The precision a local judge runs in; None for an API judge (the server decides)."""
    return None if backend_kind(config.judge) == "openai" else resolve_precision(config.precision, "inference")


def judgement_settings(config: JudgeConfig, precision: Precision | None) -> dict:
    """What the finished scores are fingerprinted with (scoring already resolved)."""
    settings = {k: v for k, v in asdict(config).items() if k in JUDGEMENT_SETTINGS + RUN_SETTINGS}
    return settings | (precision_setting(precision) if precision else {})


def judge_responses(config: JudgeConfig) -> Path:
    """Run stage 4's judging and return the path of `judge_scores.json`."""
    check_settings(config)
    config = replace(config, scoring=resolve_scoring(config))
    output_dir = Path(config.output_dir)
    responses = responses_path(config.output_dir, config.input)
    records, models = read_responses(responses)
    pairs = parse_pairs(config.pairwise, models)
    if config.limit > 0:
        records = records[:config.limit]
    other_scores = load_comparison(config.compare_with, records) if config.compare_with else None
    final_path = output_dir / SCORES_FILE

    inputs = {"responses": path_input(responses)}
    if config.compare_with:
        inputs["compare_with"] = path_input(config.compare_with)
    if config.judge == NO_JUDGE:
        with output_lock(output_dir, "judge"):
            path = write_task_metrics(config, records, models, {"responses": inputs["responses"]})
        print(f"--judge {NO_JUDGE}: no judge scores")
        return path
    precision = judge_precision(config)
    settings = judgement_settings(config, precision)
    settings["pairwise"] = ",".join(f"{a}:{b}" for a, b in pairs)  # however written (a YAML's `true` is finetuned:base)
    with output_lock(output_dir, "judge"):
        write_task_metrics(config, records, models, {"responses": inputs["responses"]})
        work = open_work(final_path, settings, inputs, overwrite=config.overwrite, restart=config.restart,
                         stage="stage 4 judging", verb="judging")
        if work.progress is None:
            print_summary(read_json(final_path), final_path)
            return final_path
        progress = work.progress
        # Batches of similar length waste less on padding (a CPU pays for every padded token).
        score_items = sorted([("score", m, i) for m in models for i, r in enumerate(records) if r[m] is not None],
                             key=lambda item: _length(records[item[2]], item[1]))
        pair_items = sorted([("pair", f"{a}:{b}", f"{first}_first", i) for a, b in pairs for i, r in enumerate(records)
                             if column(r, a) is not None and column(r, b) is not None for first in (a, b)],
                            key=lambda item: _length(records[item[3]], *item[1].split(":")))
        if not config.overwrite and _same_judge(work.finished, settings):
            needed = set(score_items + pair_items) - set(progress.done)
            reusable = [(key, value) for key, value in judged_items(read_json(final_path), records) if key in needed]
            if reusable:
                progress.add(reusable)
                print(f"reusing {len(reusable)} judgements from {final_path} (same judge and settings, "
                      "same record and response text)")
        judge = load_judge(config.judge, base_url=config.judge_base_url, concurrency=config.concurrency,
                           seed=config.seed, max_retries=config.max_retries, timeout=config.request_timeout,
                           trust_remote_code=config.trust_remote_code, scoring=config.scoring,
                           dtype=precision.dtype if precision else None)
        started = time.perf_counter()
        chunk = config.concurrency * 4 if backend_kind(config.judge) == "openai" else config.batch_size
        calls = sum(item not in progress.done for item in score_items + pair_items)
        with progress.attempt():
            progress.run(score_items, chunk, "scoring", lambda items: _score_batch(judge, config, records, items), failed)
            if pair_items:
                progress.run(pair_items, chunk, "pairwise", lambda items: _pair_batch(judge, config, records, items), failed)
        seconds = round(time.perf_counter() - started, 2)

        result = summarize(records, models, pairs, progress.results(), config, judge.describe(), other_scores)
        work.finish(result, manifest(
            stage="part4_local_evaluation", judge=judge.describe(), **(precision.describe() if precision else {}),
            input=str(responses),
            n_records=len(records), models=models, seconds_this_run=seconds, items_judged_this_run=calls,
        ))
    print_summary(result, final_path)
    return final_path


def write_task_metrics(config: JudgeConfig, records: list[dict], models: list[str], inputs: dict) -> Path:
    """`task_metrics.json`: the --metric metrics, exact match, ROUGE-L, chrF and BLEU, per record and
    per model (seconds of work for the text metrics, so it always runs before the judge); a rerun
    computes only the values whose metric, record or response changed."""
    final_path = Path(config.output_dir) / TASK_METRICS_FILE
    metrics = resolve_metrics(config.metric, Path(config.sql_databases), config.metric_time_limit)
    for metric in metrics:  # with what the records point to (the databases they run on)
        metric.fingerprint |= metric.inputs(records)
    inputs = inputs | {f"metric {m.name}": m.fingerprint for m in metrics}
    work = open_work(final_path, {"seed": config.seed, "limit": config.limit, "metrics": config.metric}, inputs,
                     overwrite=config.overwrite, restart=False, stage="task metrics", verb="computing them")
    if work.progress is None:
        result = read_json(final_path)
    else:
        earlier = Earlier(None if config.overwrite else work.finished and read_json(final_path))
        try:
            result = task_metrics(records, models, config.seed, metrics, str(inputs["responses"]["path"]), earlier,
                                  asked=metrics[:len(config.metric)])
        finally:
            for metric in metrics:
                metric.close()
        if earlier.reused:
            print(f"reused {earlier.reused} metric results from {final_path} (same metric, record and response)")
        work.finish(result, manifest(stage="part4_local_evaluation", n_records=len(records), models=models))
    print_task_metrics(result, final_path)
    return final_path


def print_task_metrics(result: dict, path: Path) -> None:
    names, labels = result["metrics"], result["labels"]
    print(f"\n== task metrics against the expected output (0-100, no judge needed): {path}")
    print(f"  {'':18s}" + "".join(f"{labels[m]:>26s}" for m in names))
    for model, summary in result["summary"].items():
        print(f"  {model:18s}" + "".join(f"{fmt(summary[m]['mean'], '.1f') + fmt_interval(summary[m], '.1f', ' [{}, {}]'):>26s}" for m in names))
    for step, (before, after) in STEPS.items():
        for metric, d in result.get(step, {}).items():
            if d["mean"] is not None:
                test = f", McNemar p = {d['mcnemar']['p_value']:.3g}" if d.get("mcnemar") else ""
                print(f"  {after} - {before} {labels[metric]}: {d['mean']:+.1f}"
                      f"{fmt_interval(d, '.1f', WITH_CI, EQUAL)} over {d['n_pairs']} pairs{test}")


def _same_judge(finished: dict | None, settings: dict) -> bool:
    """Whether a finished run's judgements were made the way this run would make them (a new
    --pairwise, --limit or --compare-with changes what is asked, not the answers)."""
    return finished is not None and all((finished.get("settings") or {}).get(k) == settings[k] for k in JUDGEMENT_SETTINGS)


def judged_items(scores: dict, records: list[dict]) -> list[tuple[tuple, dict]]:
    """The judgements a finished judge_scores.json holds that still apply: those whose prompt would
    be the same today (same instruction, input, expected output and response text). After a
    retraining, the base model's scores are kept and the finetuned model's are asked again."""
    items = []
    for row in scores["records"]:
        index = row["index"]
        if index >= len(records) or any(row[k] != records[index][k] for k in ("instruction", "input", "output")):
            continue
        same = {model: text == records[index].get(model) for model, text in row["responses"].items()}
        for model, entry in row["scores"].items():
            if same.get(model) and entry.get("parse") != "no response" and not failed(entry):
                items.append((("score", model, index), {"value": entry["score"],
                                                        **{k: v for k, v in entry.items() if k != "score"}}))
        for name, pair in (row.get("pairwise") or {}).items():
            if ":" not in name or not isinstance(pair, dict):  # an older file's single pair: asked again
                continue
            if all(same.get(c, c == REFERENCE) for c in name.split(":")):
                items += [(("pair", name, order, index), pair[order]) for order in pair
                          if order.endswith("_first") and pair[order] and not failed(pair[order])]
    return items


def parse_pairs(spec: str, models: list[str]) -> list[tuple[str, str]]:
    """--pairwise's pairs of response columns, checked against the columns the responses have."""
    spec = str(spec)  # `pairwise: true` in a YAML config of the version where it was a switch
    if spec in ("", "False", "false"):
        return []
    if spec in ("True", "true", EACH_STEP):  # alone: each training step against the model it started from
        steps = [f"{after}:{before}" for before, after in STEPS.values() if before in models and after in models]
        spec = ",".join(steps) or "finetuned:base"  # (refused below, naming the columns there are)
    columns = [*models, REFERENCE]
    pairs = []
    for part in spec.split(","):
        a, sep, b = part.strip().partition(":")
        if not sep or a == b or a not in columns or b not in columns:
            raise UserError(f"--pairwise {part.strip()!r}: write A:B with two different columns of {', '.join(columns)} "
                            f"({REFERENCE}: the expected answer); several pairs separated by commas")
        pairs.append((a, b))
    return pairs


def column(record: dict, name: str) -> str | None:
    """A response column's text in a record, or the expected output for the reference column."""
    return record["output"] if name == REFERENCE else record.get(name)


def _length(record: dict, *models: str) -> int:
    return sum(len(column(record, key) or "") for key in ("instruction", "input", "output", *models))


def read_with_retry(judge, prompts: list[str], retry_suffix: str, parse, max_new_tokens: int,
                     prefill: str) -> Iterator[dict]:
    """Ask, parse strictly, and ask once more with a stricter instruction where the reply was unreadable."""
    replies = judge.replies(prompts, max_new_tokens, prefill)
    entries = [_entry(reply, parse) for reply in replies]
    again = [i for i, e in enumerate(entries) if e["value"] is None and replies[i].error is None]
    if again:
        retried = judge.replies([prompts[i] + retry_suffix for i in again], max_new_tokens, prefill)
        for i, reply in zip(again, retried):
            entries[i] = {**_entry(reply, parse), "first_reply": entries[i]["reply"], "retried": True}
    return iter(entries)


def failed(entry: dict) -> bool:
    """A judgement the server never gave (asked again by the next run)."""
    return bool(entry.get("failed"))


def _entry(reply: Reply, parse) -> dict:
    if reply.error is not None:
        return {"value": None, "parse": "error", "reply": None, "error": reply.error, **({"failed": True} if reply.failed else {})}
    parsed = parse(reply.text)
    return {"value": parsed.value, "parse": parsed.how, "reply": reply.text}


def _score_batch(judge, config: JudgeConfig, records: list[dict], items: list[tuple]) -> list[tuple[tuple, Any]]:
    prompts = [score_prompt(records[i], records[i][model]) for _, model, i in items]
    if config.scoring == "probability":
        scores = judge.expected_scores(prompts, SCORE_PREFILL)
        return [(item, {"value": round(expected, 2) if expected is not None else None, "parse": "probability",
                        "coverage": round(coverage, 4)}) for item, (expected, coverage) in zip(items, scores)]
    return list(zip(items, read_with_retry(judge, prompts, SCORE_RETRY, parse_score, config.max_new_tokens,
                                                   SCORE_PREFILL)))


def _pair_batch(judge, config: JudgeConfig, records: list[dict], items: list[tuple]) -> list[tuple[tuple, Any]]:
    """Each item shows one column first: ("pair", "A:B", "B_first", i). A pair with the expected
    answer in it is judged without the expected answer shown as the reference (it is one of the two)."""
    prompts = []
    for _, name, order, i in items:
        a, b = name.split(":")
        first = order.removesuffix("_first")
        second = b if first == a else a
        prompts.append(pairwise_prompt(records[i], column(records[i], first), column(records[i], second),
                                       with_reference=REFERENCE not in (a, b)))
    return list(zip(items, read_with_retry(judge, prompts, PAIRWISE_RETRY, parse_verdict, config.max_new_tokens,
                                                   VERDICT_PREFILL)))


def pairwise_outcome(a_first: str | None, b_first: str | None) -> dict:
    """A's result against B from two verdicts: 'A'/'B'/'tie' with A shown first, then with B shown first.

    A verdict that changes with the order is a tie, flagged inconsistent (MT-Bench's rule).
    """
    if a_first is None or b_first is None:
        return {"outcome": None, "consistent": None}
    winner = {"A": "a", "B": "b", "tie": "tie"}[a_first]
    winner_swapped = {"A": "b", "B": "a", "tie": "tie"}[b_first]
    if winner != winner_swapped:
        return {"outcome": "tie", "consistent": False}
    return {"outcome": {"a": "win", "b": "loss", "tie": "tie"}[winner], "consistent": True}


def summarize(records: list[dict], models: list[str], pairs: list[tuple[str, str]], done: dict, config: JudgeConfig,
              judge: dict, other_scores: dict | None) -> dict:
    """The artifact: per record every score with its raw reply; per model the summary; per pair the verdicts."""
    rows, scores = [], {m: [] for m in models}
    outcomes: dict[str, list] = {f"{a}:{b}": [] for a, b in pairs}
    for i, record in enumerate(records):
        row = {"index": i, "instruction": record["instruction"], "input": record["input"], "output": record["output"],
               "responses": {m: record[m] for m in models}, "scores": {}}
        for model in models:
            entry = done.get(("score", model, i)) or {"value": None, "parse": "no response"}
            row["scores"][model] = {"score": entry["value"], **{k: v for k, v in entry.items() if k != "value"}}
            scores[model].append(entry["value"])
        if pairs:
            row["pairwise"] = {}
        for a, b in pairs:
            name, orders = f"{a}:{b}", (f"{a}_first", f"{b}_first")
            verdicts = {order: done.get(("pair", name, order, i)) for order in orders}
            outcome = pairwise_outcome(*(verdicts[o]["value"] if verdicts[o] else None for o in orders))
            row["pairwise"][name] = {**outcome, **verdicts}
            outcomes[name].append((outcome, column(record, a), column(record, b)))
        rows.append(row)

    summary: dict[str, Any] = {m: describe(scores[m], config.seed) for m in models}
    if config.scoring == "probability":
        for model in models:
            coverages = [r["scores"][model].get("coverage") for r in rows if r["scores"][model].get("coverage") is not None]
            summary[model]["mean_probability_on_a_score"] = round(sum(coverages) / len(coverages), 4) if coverages else None
    summary |= step_differences(models, scores.get, config.seed)  # finetuned - base, preference - finetuned
    return {
        "judge": {**judge, "scoring": config.scoring, "seed": config.seed},
        "input": str(responses_path(config.output_dir, config.input)),
        "summary": summary,
        "pairwise": {name: summarize_pairwise(name, judged) for name, judged in outcomes.items()} or None,
        "agreement": compare_scores(rows, other_scores) if other_scores else None,
        "records": rows,
    }


def summarize_pairwise(name: str, outcomes: list[tuple[dict, str | None, str | None]]) -> dict:
    """A's record against B over (outcome from A's side, A's text, B's text), one per record."""
    a, b = name.split(":")
    judged = [o for o, _, _ in outcomes if o["outcome"] is not None]
    words = [len(text_a.split()) - len(text_b.split()) for o, text_a, text_b in outcomes if o["outcome"] is not None]
    answered = [(text_a, text_b) for _, text_a, text_b in outcomes if text_a is not None and text_b is not None]
    counts = {k: sum(o["outcome"] == k for o in judged) for k in ("win", "tie", "loss")}
    value = {"win": 1.0, "tie": 0.5, "loss": 0.0}
    inconsistent = sum(o["consistent"] is False for o in judged)
    return {
        "a": a, "b": b, "wins": counts["win"], "ties": counts["tie"], "losses": counts["loss"],
        "n_judged": len(judged), "n_total": len(outcomes),
        **win_rate([value[o["outcome"]] for o in judged]),
        "length_controlled": length_controlled_win_rate([value[o["outcome"]] for o in judged], words),
        "inconsistent": inconsistent,
        "flip_rate": round(inconsistent / len(judged), 4) if judged else None,
        "mean_response_words": {a: round(sum(len(x.split()) for x, _ in answered) / max(len(answered), 1), 1),
                                b: round(sum(len(y.split()) for _, y in answered) / max(len(answered), 1), 1)},
        "note": f"the win rate is {a}'s against {b} and counts a tie as half a win; judges tend to favour longer "
                "answers, so compare the lengths",
    }


def load_comparison(path: str, records: list[dict]) -> dict[tuple[str, int], float]:
    """Scores keyed by (model, record index) from another judge_scores.json or a human_ratings.json."""
    data = read_json(path)
    scores: dict[tuple[str, int], float] = {}
    if isinstance(data, dict) and isinstance(data.get("records"), list):
        for row in data["records"]:
            _check_same_record(path, row, records)
            for model, entry in row.get("scores", {}).items():
                if entry.get("score") is not None:
                    scores[(model, row["index"])] = entry["score"]
    elif isinstance(data, dict) and "ratings" in data:
        from instructkit.judge.human import read_human_ratings  # human.py builds on this module

        for rating in read_human_ratings(path)["ratings"]:
            _check_same_record(path, rating, records)
            scores[(rating["model"], rating["index"])] = rating["rating"]
    else:
        raise UserError(f"{path}: expected a judge_scores.json (with 'records') or a human_ratings.json (with 'ratings')")
    return scores


def _check_same_record(path: str, row: dict, records: list[dict]) -> None:
    index = row.get("index")
    if not isinstance(index, int):
        raise UserError(f"{path}: an entry has no integer 'index'")
    if index < len(records) and row.get("instruction") not in (None, records[index]["instruction"]):
        raise UserError(f"{path}: record {index}: field 'instruction' differs from the responses being judged "
                        "(scores of another test set?)")


def compare_scores(rows: list[dict], other: dict[tuple[str, int], float]) -> dict:
    pairs = [(row["scores"][m]["score"], other[(m, row["index"])]) for row in rows for m in row["scores"]
             if row["scores"][m]["score"] is not None and (m, row["index"]) in other]
    return agreement([a for a, _ in pairs], [b for _, b in pairs])


def print_summary(result: dict, path: Path) -> None:
    print(f"\n== stage 4: judge {result['judge']['kind']}:{result['judge']['model']} ({result['judge']['scoring']})")
    for model, s in result["summary"].items():
        if model in STEPS:
            step = " - ".join(STEPS[model][::-1])
            print(f"  {step}: {s['mean']:+.1f}{fmt_interval(s, '.1f', WITH_CI, EQUAL)} over {s['n_pairs']} pairs"
                  if s["mean"] is not None else f"  {step}: no record has both scores")
            continue
        print(f"  {model}: mean {fmt(s['mean'], '.1f')}{fmt_interval(s, '.1f', WITH_CI, EQUAL)}, scored {s['n_scored']}/{s['n_total']}")
        coverage = s.get("mean_probability_on_a_score")
        if coverage is not None and coverage < LOW_COVERAGE:
            print(f"  warning: the judge puts only {coverage:.0%} of its probability on a score for {model}; "
                  "a judge this unsure says little")
    for p in (result["pairwise"] or {}).values():
        print(f"  pairwise {p['a']} vs {p['b']}: {p['a']} wins {p['wins']}, ties {p['ties']}, losses {p['losses']}; "
              f"win rate {fmt(p['win_rate'], '.2f')}{fmt_interval(p, '.3f', WITH_CI, EQUAL)}, length-controlled "
              f"{fmt(p['length_controlled']['win_rate'], '.2f')}; order flips {p['inconsistent']}/{p['n_judged']}")
        print(f"  mean response length (judges favour longer answers): {p['a']} {p['mean_response_words'][p['a']]} "
              f"words, {p['b']} {p['mean_response_words'][p['b']]}")
    if result["agreement"]:
        a = result["agreement"]
        print(f"  agreement with --compare-with: Spearman {a['spearman']}, Pearson {a['pearson']}, "
              f"mean |difference| {a['mean_absolute_difference']} over {a['n']}")
    print(f"scores: {path}")
