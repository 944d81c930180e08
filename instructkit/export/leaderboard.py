"""Stage 2's answers in the files the leaderboard tools read, so that a user with an API key runs
them on our outputs unchanged: AlpacaEval's `model_outputs.json` (`alpaca_eval --model_outputs`)
and FastChat's `data/<bench>/question.jsonl` + `model_answer/<model>.jsonl` (`gen_judgment.py`)."""

from __future__ import annotations

import json
import time
from pathlib import Path

from instructkit.data.prompts import get_style
from instructkit.data.questions import MT_RESPONSES_FILE
from instructkit.data.responses import RESPONSES_FILE, read_responses, response_field
from instructkit.runs.artifacts import read_json, write_json_atomic, write_text_atomic

TEST_BENCH = "instructkit_test"  # FastChat's bench name for this run's test split
MT_BENCH = "mt_bench"


def write_leaderboard_files(output_dir: Path, target: Path, generator: dict[str, str]) -> dict:
    """Every model's answers in stage 2's files (`generator`: a model's name there -> its name in
    the tools) under `target`; what was written, and the unanswered (null) left out."""
    written: dict = {}
    responses = output_dir / RESPONSES_FILE
    if responses.is_file():
        records, models = read_responses(responses)
        chat = get_style("chat")
        questions = [{"question_id": i + 1, "category": r.get("category") or "instruction",
                      "turns": [chat.user_text(r)]} for i, r in enumerate(records)]
        bench = target / "fastchat" / "data" / TEST_BENCH
        _write_jsonl(bench / "question.jsonl", questions)
        for model in models:
            answered = [(q, r[model]) for q, r in zip(questions, records) if r[model] is not None]
            name = generator.get(model, model)
            write_json_atomic(target / "alpaca_eval" / name / "model_outputs.json",
                              [{"instruction": q["turns"][0], "output": answer, "generator": name, "dataset": TEST_BENCH}
                               for q, answer in answered])
            _write_jsonl(bench / "model_answer" / f"{name}.jsonl",
                         [_fastchat_answer(q["question_id"], name, [answer]) for q, answer in answered])
            written[name] = {"test_records": len(answered), "left_out_unanswered": len(records) - len(answered)}
    mt = output_dir / MT_RESPONSES_FILE
    if mt.is_file():
        rows = read_json(mt)
        bench = target / "fastchat" / "data" / MT_BENCH
        _write_jsonl(bench / "question.jsonl", [{k: row[k] for k in ("question_id", "category", "turns", "reference")
                                                 if k in row} for row in rows])
        for model, name in generator.items():
            answers = [(row["question_id"], row.get(response_field(model))) for row in rows]
            complete = [(qid, turns) for qid, turns in answers if isinstance(turns, list) and None not in turns]
            if complete:
                _write_jsonl(bench / "model_answer" / f"{name}.jsonl",
                             [_fastchat_answer(qid, name, turns) for qid, turns in complete])
                written.setdefault(name, {})["mt_bench_questions"] = len(complete)
    return written


def _fastchat_answer(question_id: int | str, model: str, turns: list[str]) -> dict:
    """One line of FastChat's model_answer file, as its gen_model_answer.py writes it."""
    return {"question_id": question_id, "answer_id": f"{model}-{question_id}", "model_id": model,
            "choices": [{"index": 0, "turns": turns}], "tstamp": time.time()}


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    write_text_atomic(path, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))
