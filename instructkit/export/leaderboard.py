"""Stage 2's answers in the files the leaderboard tools read, so that a user with an API key runs
them on our outputs unchanged: AlpacaEval's `model_outputs.json` (`alpaca_eval --model_outputs`)
and FastChat's `data/<bench>/question.jsonl`, `model_answer/<model>.jsonl` and
`reference_answer/gpt-4.jsonl` (`gen_judgment.py --bench-name <bench>`)."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

from instructkit.data.prompts import get_style
from instructkit.data.questions import MT_RESPONSES_FILE, read_mt_responses
from instructkit.data.responses import RESPONSES_FILE, read_responses, response_field
from instructkit.runs.artifacts import write_json_atomic, write_text_atomic

TEST_BENCH = "instructkit_test"  # FastChat's bench name for this run's test split
MT_BENCH = "mt_bench"
REFERENCE_MODEL = "gpt-4"  # the name FastChat's judges look reference answers up under


@dataclass
class LeaderboardSources:
    """Stage 2's answers in a run folder, read and checked (they may come from someone else's run:
    a column's name becomes a file name); None: the file is not there."""
    test: tuple[list[dict], list[str]] | None
    mt_bench: tuple[list[dict], list[str]] | None


def read_leaderboard_sources(output_dir: Path) -> LeaderboardSources:
    """Read before any costly step, so that a bad file stops stage 6 at once."""
    responses, mt = output_dir / RESPONSES_FILE, output_dir / MT_RESPONSES_FILE
    return LeaderboardSources(read_responses(responses) if responses.is_file() else None,
                              read_mt_responses(mt) if mt.is_file() else None)


def write_leaderboard_files(sources: LeaderboardSources, target: Path, generator: dict[str, str]) -> dict:
    """Every model's answers in stage 2's files (`generator`: a model's name there -> its name in
    the tools) under `target`; what was written. FastChat asks every model to have answered every
    question, so its benches hold the questions all models answered (a null answer: a prompt too
    long for stage 2); AlpacaEval's files hold each model's answered ones."""
    written: dict = {}
    if sources.test:
        records, models = sources.test
        chat = get_style("chat")
        questions = [{"question_id": i + 1, "category": r.get("category") or "instruction", "turns": [chat.user_text(r)]}
                     for i, r in enumerate(records)]
        for model in models:
            name = generator.get(model, model)
            answered = [(q, r[model]) for q, r in zip(questions, records) if r[model] is not None]
            write_json_atomic(target / "alpaca_eval" / name / "model_outputs.json",
                              [{"instruction": q["turns"][0], "output": answer, "generator": name, "dataset": TEST_BENCH}
                               for q, answer in answered])
            written[name] = {"alpaca_eval": len(answered)}
        everywhere = [(q, r) for q, r in zip(questions, records) if all(r[m] is not None for m in models)]
        _fastchat_bench(target / "fastchat" / "data" / TEST_BENCH, [q for q, _ in everywhere],
                        {generator.get(m, m): [[r[m]] for _, r in everywhere] for m in models},
                        [[r["output"]] for _, r in everywhere])
        for model in models:
            written[generator.get(model, model)][TEST_BENCH] = len(everywhere)
    if sources.mt_bench:
        rows, models = sources.mt_bench
        complete = [row for row in rows if all(isinstance(row.get(response_field(m)), list)
                                               and None not in row[response_field(m)] for m in models)]
        _fastchat_bench(target / "fastchat" / "data" / MT_BENCH,
                        [{k: row[k] for k in ("question_id", "category", "turns") if k in row} for row in complete],
                        {generator.get(m, m): [row[response_field(m)] for row in complete] for m in models},
                        [row.get("reference") for row in complete])
        for model in models:
            written.setdefault(generator.get(model, model), {})[MT_BENCH] = len(complete)
    return written


def _fastchat_bench(bench: Path, questions: list[dict], answers: dict[str, list[list[str]]],
                    references: list[list[str] | None]) -> None:
    """One FastChat bench folder: the questions, each model's answers, the reference answers."""
    _write_jsonl(bench / "question.jsonl", questions)
    for name, turns in answers.items():
        _write_jsonl(bench / "model_answer" / f"{name}.jsonl",
                     [_fastchat_answer(q["question_id"], name, t) for q, t in zip(questions, turns)])
    _write_jsonl(bench / "reference_answer" / f"{REFERENCE_MODEL}.jsonl",
                 [_fastchat_answer(q["question_id"], REFERENCE_MODEL, ref) for q, ref in zip(questions, references) if ref])


def _fastchat_answer(question_id: int | str, model: str, turns: list[str]) -> dict:
    """One line of FastChat's model_answer file, as its gen_model_answer.py writes it."""
    return {"question_id": question_id, "answer_id": f"{model}-{question_id}", "model_id": model,
            "choices": [{"index": 0, "turns": turns}], "tstamp": time.time()}


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    write_text_atomic(path, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))
