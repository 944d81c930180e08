"""Stage 4 `--rubric mt-bench`: every model's answer to every turn of stage 2's `--questions`
conversations graded 1-10 in MT-Bench's [[rating]] format (against the reference answer for math,
reasoning and coding), and pairs of models compared per turn in both orders with [[A]]/[[B]]/[[C]]
verdicts; per model, per turn and per category means with 95% intervals (`mt_bench_scores.json`)."""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from instructkit.data.questions import MT_RESPONSES_FILE, read_mt_responses, uses_reference
from instructkit.data.responses import response_field
from instructkit.errors import UserError
from instructkit.evaluate.stats import describe, fmt
from instructkit.judge.config import MT_SCORES_FILE, REFERENCE, JudgeConfig
from instructkit.judge.judges import load_judge
from instructkit.judge.prompts import (
    MT_RATING_PREFILL,
    MT_RATING_RETRY,
    MT_VERDICT_PREFILL,
    MT_VERDICT_RETRY,
    mt_pairwise_prompt,
    mt_single_prompt,
    parse_mt_rating,
    parse_mt_verdict,
)
from instructkit.judge.scoring import (
    failed,
    judge_precision,
    judgement_settings,
    pairwise_outcome,
    parse_pairs,
    read_with_retry,
    summarize_pairwise,
)
from instructkit.models.references import backend_kind
from instructkit.runs.artifacts import manifest, output_lock, read_json
from instructkit.runs.fingerprints import path_input
from instructkit.runs.reuse import open_work

# An API judge explains before it rates (MT-Bench's format); a local one is prefilled to the number.
API_JUDGE_MIN_TOKENS = 512


def answers_of(row: dict, model: str) -> list[str | None]:
    return row.get(response_field(model)) or [None] * len(row["turns"])


def judge_mt_bench(config: JudgeConfig) -> Path:
    """Grade every answered turn, and the pairs asked for, resumably; return `mt_bench_scores.json`."""
    output_dir = Path(config.output_dir)
    source = Path(config.input or output_dir / MT_RESPONSES_FILE)
    if not source.is_file():
        raise UserError(f"{source} not found: run stage 2 with --questions FILE.jsonl first (--rubric mt-bench "
                        "grades multi-turn answers)")
    rows, models = read_mt_responses(source)
    if not models:
        raise UserError(f"{source}: no question has answers to grade (run stage 2 with --questions)")
    pairs = parse_pairs(config.pairwise, models)
    if any(REFERENCE in pair for pair in pairs):
        raise UserError(f"--rubric mt-bench compares models; '{REFERENCE}' (a test record's expected answer) is not a "
                        "column here: MT-Bench's reference answers guide the grading instead")
    if config.limit > 0:
        rows = rows[:config.limit]
    if config.scoring == "probability":
        raise UserError("--rubric mt-bench reads the judge's written [[rating]]; --scoring probability is for the "
                        "default rubric")
    config = replace(config, scoring="generate")
    final_path = output_dir / MT_SCORES_FILE
    precision = judge_precision(config)
    settings = judgement_settings(config, precision)
    settings.update(pairwise=",".join(f"{a}:{b}" for a, b in pairs), rubric="mt-bench")
    with output_lock(output_dir, "judge"):
        work = open_work(final_path, settings, {"responses": path_input(source)}, overwrite=config.overwrite,
                         restart=config.restart, stage="stage 4 MT-Bench grading", verb="grading")
        if work.progress is None:
            print_mt_summary(read_json(final_path), final_path)
            return final_path
        progress = work.progress
        score_items = [("score", m, i, t) for i, row in enumerate(rows) for m in models
                       for t, answer in enumerate(answers_of(row, m)) if answer is not None]
        pair_items = [("pair", f"{a}:{b}", f"{first}_first", i, t) for a, b in pairs for i, row in enumerate(rows)
                      for t in range(len(row["turns"]))
                      if answers_of(row, a)[t] is not None and answers_of(row, b)[t] is not None for first in (a, b)]
        judge = load_judge(config.judge, base_url=config.judge_base_url, concurrency=config.concurrency,
                           seed=config.seed, max_retries=config.max_retries, timeout=config.request_timeout,
                           trust_remote_code=config.trust_remote_code, dtype=precision.dtype if precision else None)
        api = backend_kind(config.judge) == "openai"
        max_new_tokens = max(config.max_new_tokens, API_JUDGE_MIN_TOKENS) if api else config.max_new_tokens
        chunk = config.concurrency * 4 if api else config.batch_size
        started = time.perf_counter()

        def grade(items: list[tuple]) -> list[tuple[tuple, Any]]:
            prompts = [mt_single_prompt(rows[i]["turns"], answers_of(rows[i], m), t, _reference(rows[i]))
                       for _, m, i, t in items]
            return list(zip(items, read_with_retry(judge, prompts, MT_RATING_RETRY, parse_mt_rating, max_new_tokens,
                                                    "" if api else MT_RATING_PREFILL)))

        def compare(items: list[tuple]) -> list[tuple[tuple, Any]]:
            prompts = []
            for _, name, order, i, t in items:
                a, b = name.split(":")
                first, second = (a, b) if order == f"{a}_first" else (b, a)
                prompts.append(mt_pairwise_prompt(rows[i]["turns"], answers_of(rows[i], first), answers_of(rows[i], second),
                                                  t, _reference(rows[i])))
            return list(zip(items, read_with_retry(judge, prompts, MT_VERDICT_RETRY, parse_mt_verdict, max_new_tokens,
                                                    "" if api else MT_VERDICT_PREFILL)))

        with progress.attempt():
            progress.run(score_items, chunk, "MT-Bench grading", grade, failed)
            if pair_items:
                progress.run(pair_items, chunk, "MT-Bench pairwise", compare, failed)
        result = summarize_mt(rows, models, pairs, progress.results(), config.seed, {**judge.describe(), "seed": config.seed})
        result["input"] = str(source)
        work.finish(result, manifest(stage="part4_local_evaluation", rubric="mt-bench", judge=judge.describe(),
                                     **(precision.describe() if precision else {}),
                                     input=str(source), n_questions=len(rows), models=models,
                                     seconds_this_run=round(time.perf_counter() - started, 2)))
    print_mt_summary(result, final_path)
    return final_path


def _reference(row: dict) -> list[str] | None:
    return row["reference"] if uses_reference(row) else None


def summarize_mt(rows: list[dict], models: list[str], pairs: list[tuple[str, str]], done: dict, seed: int,
                 judge: dict) -> dict:
    """Per question every turn's rating with the judge's reply; per model the mean overall, per turn
    and per category (each with a 95% bootstrap interval); per pair the verdicts over all turns."""
    records, ratings = [], {m: [] for m in models}  # (turn, category, rating)
    outcomes: dict[str, list] = {f"{a}:{b}": [] for a, b in pairs}
    for i, row in enumerate(rows):
        record = {k: row[k] for k in ("question_id", "category", "turns") if k in row}
        record.update(reference_guided=uses_reference(row), answers={m: answers_of(row, m) for m in models}, scores={})
        for model in models:
            record["scores"][model] = []
            for t in range(len(row["turns"])):
                entry = done.get(("score", model, i, t)) or {"value": None, "parse": "no answer"}
                record["scores"][model].append({"score": entry["value"], **{k: v for k, v in entry.items() if k != "value"}})
                ratings[model].append((t + 1, row["category"], entry["value"]))
        if pairs:
            record["pairwise"] = {}
        for a, b in pairs:
            name, per_turn = f"{a}:{b}", []
            for t in range(len(row["turns"])):
                verdicts = {o: done.get(("pair", name, o, i, t)) for o in (f"{a}_first", f"{b}_first")}
                outcome = pairwise_outcome(*(v["value"] if v else None for v in verdicts.values()))
                per_turn.append({**outcome, **verdicts})
                outcomes[name].append((outcome, answers_of(row, a)[t], answers_of(row, b)[t]))
            record["pairwise"][name] = per_turn
        records.append(record)
    summary = {}
    for model, values in ratings.items():
        turns = sorted({t for t, _, _ in values})
        categories = sorted({c for _, c, _ in values})
        summary[model] = {
            **describe([v for _, _, v in values], seed),
            "turns": {str(t): describe([v for turn, _, v in values if turn == t], seed) for t in turns},
            "categories": {c: describe([v for _, cat, v in values if cat == c], seed) for c in categories},
        }
    return {"judge": judge, "rubric": "mt-bench", "scale": "1-10", "summary": summary,
            "pairwise": {name: summarize_pairwise(name, judged) for name, judged in outcomes.items()} or None,
            "records": records}


def print_mt_summary(result: dict, path: Path) -> None:
    print(f"\n== stage 4 MT-Bench: judge {result['judge']['kind']}:{result['judge']['model']} (1-10)")
    for model, s in result["summary"].items():
        turns = ", ".join(f"turn {t} {fmt(v['mean'], '.2f')}" for t, v in s["turns"].items())
        print(f"  {model}: mean {fmt(s['mean'], '.2f')} ({turns}), rated {s['n_scored']}/{s['n_total']}")
    for p in (result["pairwise"] or {}).values():
        print(f"  pairwise {p['a']} vs {p['b']}: wins {p['wins']}, ties {p['ties']}, losses {p['losses']}; "
              f"order flips {p['inconsistent']}/{p['n_judged']}")
    print(f"scores: {path}")


