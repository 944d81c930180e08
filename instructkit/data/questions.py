"""MT-Bench-style multi-turn questions (FastChat's `question.jsonl`): read and checked here, answered
turn by turn by stage 2 (`--questions`), each model seeing its own earlier answers, and graded per
turn by stage 4 (`--rubric mt-bench`). The real 80 MT-Bench questions are in FastChat's repository
(fastchat/llm_judge/data/mt_bench/question.jsonl); `instructkit/data/default/mt_bench_sample.jsonl` (`--questions mt-bench-sample`) is a small set of
our own in the same format."""

from __future__ import annotations

from pathlib import Path

from instructkit.data import packaged
from instructkit.errors import UserError, not_unicode, problems_error
from instructkit.runs.artifacts import parse_json, read_text

MT_RESPONSES_FILE = "mt_bench_responses.json"
# MT-Bench grades these against a reference answer (a judge that solves the problem itself errs).
REFERENCE_CATEGORIES = ("math", "reasoning", "coding")


EMBEDDED_QUESTIONS = "mt-bench-sample"


def questions_file(reference: str) -> Path:
    """`--questions`: a question.jsonl, or `mt-bench-sample` for the sample we ship."""
    return Path(packaged("mt_bench_sample.jsonl") if reference == EMBEDDED_QUESTIONS else reference)


def read_questions(path: str | Path) -> list[dict]:
    """Every question of a question.jsonl, checked line by line; every problem reported at once."""
    path = questions_file(str(path))
    problems, questions, seen = [], [], set()
    # Lines end at \n only: splitlines() would also cut at a U+2028 that a JSON string may hold.
    for number, line in enumerate(read_text(path).split("\n"), start=1):
        if not line.strip():
            continue
        where = f"{path}: line {number}"
        try:
            item = parse_json(line, path, number)
        except UserError as exc:
            problems.append(str(exc))
            continue
        if not isinstance(item, dict):
            problems.append(f"{where}: expected an object, found {type(item).__name__}")
            continue
        turns, reference = item.get("turns"), item.get("reference")
        if not isinstance(item.get("question_id"), int | str) or isinstance(item.get("question_id"), bool):
            problems.append(f"{where}: field 'question_id' must be a number or text")
        elif item["question_id"] in seen:
            problems.append(f"{where}: question_id {item['question_id']} appears twice")
        else:
            seen.add(item["question_id"])
        if not isinstance(item.get("category"), str) or not item["category"].strip():
            problems.append(f"{where}: field 'category' must be non-empty text")
        if not isinstance(turns, list) or not turns or not all(isinstance(t, str) and t.strip() for t in turns):
            problems.append(f"{where}: field 'turns' must be a list of one or more non-empty user messages")
        elif reference is not None and (not isinstance(reference, list) or len(reference) != len(turns)
                                        or not all(isinstance(r, str) for r in reference)):
            problems.append(f"{where}: field 'reference' must be a list of {len(turns)} texts, one per turn")
        problems += [f"{where}: field {name!r} {why}" for name in ("question_id", "category", "turns", "reference")
                     for text in (item.get(name) if isinstance(item.get(name), list) else [item.get(name)])
                     if isinstance(text, str) and (why := not_unicode(text))]
        questions.append({"question_id": item.get("question_id"), "category": item.get("category"),
                          "turns": turns, **({"reference": reference} if reference is not None else {})})
    if problems:
        raise problems_error(problems)
    if not questions:
        raise UserError(f"{path}: contains no questions")
    return questions


def uses_reference(question: dict) -> bool:
    return question.get("reference") is not None and question["category"] in REFERENCE_CATEGORIES
