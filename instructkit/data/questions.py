"""MT-Bench-style multi-turn questions (FastChat's `question.jsonl`): read and checked here, answered
turn by turn by stage 2 (`--questions`), each model seeing its own earlier answers, and graded per
turn by stage 4 (`--rubric mt-bench`). The real 80 MT-Bench questions are in FastChat's repository
(fastchat/llm_judge/data/mt_bench/question.jsonl); `instructkit/data/default/mt_bench_sample.jsonl` (`--questions mt-bench-sample`) is a small set of
our own in the same format."""

from __future__ import annotations

from pathlib import Path

from instructkit.data import packaged
from instructkit.data.responses import COLUMN_NAME, SUFFIX, response_columns, response_field
from instructkit.errors import UserError, not_unicode, problems_error
from instructkit.runs.artifacts import parse_json, read_json, read_text

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
        problems += _question_problems(item, where)
        question_id = item.get("question_id")
        if isinstance(question_id, int | str) and not isinstance(question_id, bool):
            if question_id in seen:
                problems.append(f"{where}: question_id {question_id} appears twice")
            seen.add(question_id)
        reference = item.get("reference")
        questions.append({"question_id": question_id, "category": item.get("category"),
                          "turns": item.get("turns"), **({"reference": reference} if reference is not None else {})})
    if problems:
        raise problems_error(problems)
    if not questions:
        raise UserError(f"{path}: contains no questions")
    return questions


def _question_problems(item: dict, where: str) -> list[str]:
    """What is wrong with one question (or one answered question of stage 2's file)."""
    problems = []
    turns, reference = item.get("turns"), item.get("reference")
    if not isinstance(item.get("question_id"), int | str) or isinstance(item.get("question_id"), bool):
        problems.append(f"{where}: field 'question_id' must be a number or text")
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
    return problems


def read_mt_responses(path: str | Path) -> tuple[list[dict], list[str]]:
    """Stage 2's answered conversations (`mt_bench_responses.json`: each question with a
    `<model>_model_response` list of one answer or null per turn), checked as the questions file
    is, and the models with a column; stages 4 and 6 read it only through here, since a run folder
    may come from someone else (a column's name becomes a file name in stage 6)."""
    rows = read_json(path)
    if not isinstance(rows, list) or not rows:
        raise UserError(f"{path}: expected the JSON list stage 2 --questions writes")
    problems = [f"{path}: question {index}: expected an object, found {type(row).__name__}"
                for index, row in enumerate(rows) if not isinstance(row, dict)]
    if problems:
        raise problems_error(problems)
    models = response_columns(key for row in rows for key in row if key.endswith(SUFFIX))
    problems += [f"{path}: field '{response_field(model)}' is not a model's response column (a model's name is "
                 "lower-case letters, digits and _)" for model in models if not COLUMN_NAME.match(model)]
    for index, row in enumerate(rows):
        where = f"{path}: question {index}"
        problems += _question_problems(row, where)
        turns = row.get("turns") if isinstance(row.get("turns"), list) else []
        for model in models:
            answers = row.get(response_field(model))
            if answers is not None and (not isinstance(answers, list) or len(answers) != len(turns)
                                        or not all(a is None or isinstance(a, str) for a in answers)):
                problems.append(f"{where}: field '{response_field(model)}' must list one answer (text or null) per turn")
            elif answers is not None:
                problems += [f"{where}: field '{response_field(model)}' turn {turn} {why}"
                             for turn, a in enumerate(answers) if isinstance(a, str) and (why := not_unicode(a))]
    if problems:
        raise problems_error(problems)
    # a model stage 2 did not run has a column of nulls
    return rows, [m for m in models if any(a is not None for row in rows for a in row.get(response_field(m)) or [])]


def uses_reference(question: dict) -> bool:
    return question.get("reference") is not None and question["category"] in REFERENCE_CATEGORIES
