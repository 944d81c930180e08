"""Stage 4: a judge model scores every response 0-100 against the expected output, and compares the
two models pairwise when asked (`judge_scores.json`)."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .artifacts import manifest, output_lock, read_json, write_json_atomic
from .data import validate_records
from .errors import UserError
from .judge_prompts import (
    PAIRWISE_RETRY,
    SCORE_PREFILL,
    SCORE_RETRY,
    VERDICT_PREFILL,
    pairwise_prompt,
    parse_score,
    parse_verdict,
    score_prompt,
)
from .judges import Reply, load_judge
from .models import EMBEDDED_JUDGE
from .progress import ProgressLog
from .stats import agreement, describe, paired_difference, win_rate

SCORES_FILE = "judge_scores.json"
RESPONSE_FIELDS = {"base": "base_model_response", "finetuned": "finetuned_model_response"}
ORDERS = {"base_first": ("base", "finetuned"), "finetuned_first": ("finetuned", "base")}
LOW_COVERAGE = 0.5


@dataclass
class JudgeConfig:
    input: str = field(default="outputs/test_base_model.json", metadata={"help": "stage 2's responses to score"})
    judge: str = field(default=f"litgpt:{EMBEDDED_JUDGE}", metadata={"help": "litgpt:<model>, hf:<model> or openai:<model>"})
    judge_base_url: str = field(default="", metadata={"help": "an OpenAI-compatible server for openai: judges (vLLM, Ollama, litgpt serve); the key comes from OPENAI_API_KEY"})
    scoring: str = field(default="generate", metadata={"help": "generate: parse the judge's reply; probability: expected score from its token probabilities (hf: judges)", "choices": ["generate", "probability"]})
    pairwise: bool = field(default=False, metadata={"help": "also ask which answer is better, in both orders (MT-Bench style)"})
    compare_with: str = field(default="", metadata={"help": "another judge_scores.json or human_ratings.json to measure agreement with"})
    human: bool = field(default=False, metadata={"help": "rate responses yourself in the terminal (blind, shuffled) instead of running the judge"})
    limit: int = field(default=0, metadata={"help": "score only the first N records (0: all)"})
    batch_size: int = field(default=8, metadata={"help": "prompts per batch for local judges"})
    concurrency: int = field(default=4, metadata={"help": "requests in flight at once for openai: judges"})
    max_retries: int = field(default=4, metadata={"help": "retries per request on 429/5xx/timeouts (openai: judges, with backoff)"})
    request_timeout: float = field(default=60.0, metadata={"help": "seconds before one API request is abandoned and retried"})
    max_new_tokens: int = field(default=16, metadata={"help": "longest judge reply, in tokens (the reply is one number or word)"})
    seed: int = field(default=0, metadata={"help": "judge seed (API), human-rating order and bootstrap resampling"})
    output_dir: str = field(default="outputs", metadata={"help": f"where {SCORES_FILE}, human_ratings.json and report.html are written"})
    overwrite: bool = field(default=False, metadata={"help": "judge again even if the scores file is complete"})
    trust_remote_code: bool = field(default=False, metadata={"help": "allow model code from the hub for hf: judges"})


def read_responses(path: str) -> tuple[list[dict], list[str]]:
    """Stage 2's records, and the models that have responses in them."""
    raw = read_json(path)
    if not isinstance(raw, list):
        raise UserError(f"{path}: expected a JSON list of records, found a {type(raw).__name__}")
    records = validate_records(raw, path)
    problems = []
    for index, item in enumerate(raw):
        for model, key in RESPONSE_FIELDS.items():
            if key not in item:
                problems.append(f"{path}: record {index}: missing field '{key}' (rerun stage 2)")
            elif item[key] is not None and not isinstance(item[key], str):
                problems.append(f"{path}: record {index}: field '{key}' must be text or null, found {type(item[key]).__name__}")
            else:
                records[index][model] = item[key]
    if problems:
        raise UserError("\n".join(problems[:20]) + (f"\n... and {len(problems) - 20} more problems" if len(problems) > 20 else ""))
    models = [m for m in RESPONSE_FIELDS if any(r[m] is not None for r in records)]
    if not models:
        raise UserError(f"{path}: no record has a response to score")
    return records, models


def file_sha256(path: str) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def judge_responses(config: JudgeConfig) -> Path:
    """Run stage 4's judging and return the path of `judge_scores.json`."""
    if config.scoring == "probability" and not config.judge.startswith("hf:"):
        raise UserError("--scoring probability reads the judge's token probabilities: use an hf: judge "
                        f"(for example --judge hf:{EMBEDDED_JUDGE})")
    if config.batch_size < 1 or config.concurrency < 1:
        raise UserError("--batch-size and --concurrency must be at least 1")
    records, models = read_responses(config.input)
    if config.limit > 0:
        records = records[:config.limit]
    other_scores = load_comparison(config.compare_with, records) if config.compare_with else None
    output_dir = Path(config.output_dir)
    final_path = output_dir / SCORES_FILE

    progress_path = output_dir / f".{SCORES_FILE}.progress.jsonl"
    with output_lock(output_dir, "judge"):
        if final_path.is_file() and not config.overwrite:
            progress_path.unlink(missing_ok=True)  # left by a run killed between its last two steps
            print(f"stage 4 judging already finished: {final_path} (pass --overwrite to judge again)")
            print_summary(read_json(final_path), final_path)
            return final_path
        settings = {k: v for k, v in asdict(config).items()
                    if k not in ("overwrite", "output_dir", "human", "compare_with", "concurrency", "request_timeout", "batch_size")}
        settings["input_sha256"] = file_sha256(config.input)
        if config.overwrite:
            progress_path.unlink(missing_ok=True)
        progress = ProgressLog(progress_path, settings)
        judge = load_judge(config.judge, base_url=config.judge_base_url, concurrency=config.concurrency,
                           seed=config.seed, max_retries=config.max_retries, timeout=config.request_timeout,
                           trust_remote_code=config.trust_remote_code)
        started = time.perf_counter()
        chunk = config.concurrency * 4 if config.judge.startswith("openai:") else config.batch_size
        # Batches of similar length waste less on padding (a CPU pays for every padded token).
        score_items = sorted([("score", m, i) for m in models for i, r in enumerate(records) if r[m] is not None],
                             key=lambda item: _length(records[item[2]], item[1]))
        pair_items = []
        if config.pairwise and len(models) == 2:
            pair_items = sorted([("pair", order, i) for i in range(len(records)) for order in ORDERS],
                                key=lambda item: _length(records[item[2]], *models))
        calls = sum(item not in progress.done for item in score_items + pair_items)
        try:
            _run(score_items, progress, chunk, "scoring", lambda items: _score_batch(judge, config, records, items))
            if pair_items:
                _run(pair_items, progress, chunk, "pairwise", lambda items: _pair_batch(judge, config, records, items))
        except UserError:
            if not progress.done:  # stopped before any judgement (a refused key): leave nothing behind
                progress.remove()
            raise
        seconds = round(time.perf_counter() - started, 2)

        result = summarize(records, models, progress.done, config, judge.describe(), other_scores)
        write_json_atomic(output_dir / SCORES_FILE.replace(".json", ".meta.json"), manifest(
            stage="part4_local_evaluation", settings=settings, judge=judge.describe(),
            n_records=len(records), models=models, seconds_this_run=seconds,
            items_judged_this_run=calls,
        ))
        write_json_atomic(final_path, result)
        progress.remove()
    print_summary(result, final_path)
    return final_path


def _length(record: dict, *models: str) -> int:
    return sum(len(record[key] or "") for key in ("instruction", "input", "output", *models))


def _run(items: list[tuple], progress: ProgressLog, chunk: int, label: str,
         work: Callable[[list[tuple]], list[tuple[tuple, Any]]]) -> None:
    """Do the items the progress log lacks, `chunk` at a time, logging each chunk as it finishes."""
    todo = [item for item in items if item not in progress.done]
    for start in range(0, len(todo), chunk):
        progress.add(work(todo[start:start + chunk]))
        print(f"[{label}] {len(items) - len(todo) + min(start + chunk, len(todo))}/{len(items)}", flush=True)


def _read_with_retry(judge, prompts: list[str], retry_suffix: str, parse, max_new_tokens: int,
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


def _entry(reply: Reply, parse) -> dict:
    if reply.error is not None:
        return {"value": None, "parse": "error", "reply": None, "error": reply.error}
    parsed = parse(reply.text)
    return {"value": parsed.value, "parse": parsed.how, "reply": reply.text}


def _score_batch(judge, config: JudgeConfig, records: list[dict], items: list[tuple]) -> list[tuple[tuple, Any]]:
    prompts = [score_prompt(records[i], records[i][model]) for _, model, i in items]
    if config.scoring == "probability":
        scores = judge.expected_scores(prompts, SCORE_PREFILL)
        return [(item, {"value": round(expected, 2) if expected is not None else None, "parse": "probability",
                        "coverage": round(coverage, 4)}) for item, (expected, coverage) in zip(items, scores)]
    return list(zip(items, _read_with_retry(judge, prompts, SCORE_RETRY, parse_score, config.max_new_tokens,
                                                   SCORE_PREFILL)))


def _pair_batch(judge, config: JudgeConfig, records: list[dict], items: list[tuple]) -> list[tuple[tuple, Any]]:
    prompts = [pairwise_prompt(records[i], records[i][ORDERS[order][0]], records[i][ORDERS[order][1]])
               for _, order, i in items]
    return list(zip(items, _read_with_retry(judge, prompts, PAIRWISE_RETRY, parse_verdict, config.max_new_tokens,
                                                   VERDICT_PREFILL)))


def pairwise_outcome(base_first: str | None, finetuned_first: str | None) -> dict:
    """Finetuned's result from two verdicts: 'A'/'B'/'tie' with base as A, then with finetuned as A.

    A verdict that changes with the order is a tie, flagged inconsistent (MT-Bench's rule).
    """
    if base_first is None or finetuned_first is None:
        return {"outcome": None, "consistent": None}
    winner = {"A": "base", "B": "finetuned", "tie": "tie"}[base_first]
    winner_swapped = {"A": "finetuned", "B": "base", "tie": "tie"}[finetuned_first]
    if winner != winner_swapped:
        return {"outcome": "tie", "consistent": False}
    return {"outcome": {"finetuned": "win", "base": "loss", "tie": "tie"}[winner], "consistent": True}


def summarize(records: list[dict], models: list[str], done: dict, config: JudgeConfig, judge: dict,
              other_scores: dict | None) -> dict:
    """The artifact: per record every score with its raw reply; per model the summary."""
    rows, scores = [], {m: [] for m in models}
    outcomes = []
    for i, record in enumerate(records):
        row = {"index": i, "instruction": record["instruction"], "input": record["input"], "output": record["output"],
               "responses": {m: record[m] for m in models}, "scores": {}}
        for model in models:
            entry = done.get(("score", model, i)) or {"value": None, "parse": "no response"}
            row["scores"][model] = {"score": entry["value"], **{k: v for k, v in entry.items() if k != "value"}}
            scores[model].append(entry["value"])
        if config.pairwise and len(models) == 2:
            verdicts = {order: done.get(("pair", order, i)) for order in ORDERS}
            outcome = pairwise_outcome(*(verdicts[o]["value"] if verdicts[o] else None for o in ORDERS))
            row["pairwise"] = {**outcome, **{order: verdicts[order] for order in ORDERS}}
            outcomes.append(outcome)
        rows.append(row)

    summary: dict[str, Any] = {m: describe(scores[m], config.seed) for m in models}
    if config.scoring == "probability":
        for model in models:
            coverages = [r["scores"][model].get("coverage") for r in rows if r["scores"][model].get("coverage") is not None]
            summary[model]["mean_probability_on_a_score"] = round(sum(coverages) / len(coverages), 4) if coverages else None
    if len(models) == 2:
        summary["finetuned_minus_base"] = paired_difference(scores["base"], scores["finetuned"], config.seed)
    return {
        "judge": {**judge, "scoring": config.scoring, "seed": config.seed},
        "input": config.input,
        "summary": summary,
        "pairwise": summarize_pairwise(outcomes, records, config.seed) if outcomes else None,
        "agreement": compare_scores(rows, other_scores) if other_scores else None,
        "records": rows,
    }


def summarize_pairwise(outcomes: list[dict], records: list[dict], seed: int) -> dict:
    judged = [o for o in outcomes if o["outcome"] is not None]
    counts = {k: sum(o["outcome"] == k for o in judged) for k in ("win", "tie", "loss")}
    value = {"win": 1.0, "tie": 0.5, "loss": 0.0}
    inconsistent = sum(o["consistent"] is False for o in judged)
    return {
        "finetuned_wins": counts["win"], "ties": counts["tie"], "finetuned_losses": counts["loss"],
        "n_judged": len(judged), "n_total": len(outcomes),
        **win_rate([value[o["outcome"]] for o in judged], seed),
        "inconsistent": inconsistent,
        "flip_rate": round(inconsistent / len(judged), 4) if judged else None,
        "mean_response_words": {m: round(sum(len(r[m].split()) for r in records if r[m]) / len(records), 1)
                                for m in RESPONSE_FIELDS},
        "note": "win rate counts a tie as half a win; judges tend to favour longer answers, so compare the lengths",
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
    elif isinstance(data, dict) and isinstance(data.get("ratings"), list):
        for rating in data["ratings"]:
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


def _fmt(value: float | None, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def _fmt_ci(ci: list | tuple | None, spec: str) -> str:
    return f" 95% CI [{format(ci[0], spec)}, {format(ci[1], spec)}]" if ci else ""


def print_summary(result: dict, path: Path) -> None:
    print(f"\n== stage 4: judge {result['judge']['kind']}:{result['judge']['model']} ({result['judge']['scoring']})")
    for model, s in result["summary"].items():
        if model == "finetuned_minus_base":
            print(f"  finetuned - base: {s['mean']:+.1f}{_fmt_ci(s['ci95'], '.1f')} over {s['n_pairs']} pairs"
                  if s["mean"] is not None else "  finetuned - base: no record has both scores")
            continue
        print(f"  {model}: mean {_fmt(s['mean'], '.1f')}{_fmt_ci(s['ci95'], '.1f')}, scored {s['n_scored']}/{s['n_total']}")
        coverage = s.get("mean_probability_on_a_score")
        if coverage is not None and coverage < LOW_COVERAGE:
            print(f"  warning: the judge puts only {coverage:.0%} of its probability on a score for {model}; "
                  "a judge this unsure says little")
    if result["pairwise"]:
        p = result["pairwise"]
        print(f"  pairwise: finetuned wins {p['finetuned_wins']}, ties {p['ties']}, losses {p['finetuned_losses']}; "
              f"win rate {_fmt(p['win_rate'], '.2f')}{_fmt_ci(p['ci95'], '.2f')}; "
              f"order flips {p['inconsistent']}/{p['n_judged']}")
        print(f"  mean response length (judges favour longer answers): base {p['mean_response_words']['base']} words, "
              f"finetuned {p['mean_response_words']['finetuned']}")
    if result["agreement"]:
        a = result["agreement"]
        print(f"  agreement with --compare-with: Spearman {a['spearman']}, Pearson {a['pearson']}, "
              f"mean |difference| {a['mean_absolute_difference']} over {a['n']}")
    print(f"scores: {path}")
