"""Blind human ratings in the terminal: one response at a time, model name hidden, order shuffled;
every rating is saved as it is given, so quitting and rerunning picks up where you stopped."""

from __future__ import annotations

import random
import reprlib
import textwrap
from collections.abc import Callable
from pathlib import Path

from instructkit.data.responses import COLUMN_NAME, read_responses, responses_path
from instructkit.errors import UserError, problems_error
from instructkit.evaluate.stats import describe
from instructkit.judge.config import HUMAN_FILE, JudgeConfig
from instructkit.runs.artifacts import output_lock, read_json, write_json_atomic
from instructkit.runs.fingerprints import sha256_file


def _show(label: str, text: str) -> str:
    body = "\n".join(textwrap.fill(line, 100, subsequent_indent="  ") or "" for line in (text or "(empty)").splitlines())
    return f"\n--- {label}\n{body}"


def rate_in_terminal(config: JudgeConfig, ask: Callable[[str], str] = input) -> Path:
    """Ask for a 0-100 rating of each unrated response; 's' skips, 'q' (or end of input) stops."""
    responses = responses_path(config.output_dir, config.input)
    records, models = read_responses(responses)
    if config.limit > 0:
        records = records[:config.limit]
    output_dir = Path(config.output_dir)
    path = output_dir / HUMAN_FILE
    digest = sha256_file(responses)
    with output_lock(output_dir, "human"):
        saved = _open_ratings(path, responses, digest)
        if saved.get("input_sha256") != digest:
            raise UserError(f"{path} holds ratings of another responses file ({saved.get('input')}); "
                            "move it away to rate this one")
        items = [(model, i) for i, record in enumerate(records) for model in models if record[model] is not None]
        random.Random(config.seed).shuffle(items)  # blind: the model is never shown, the order says nothing
        rated = {(r["model"], r["index"]) for r in saved["ratings"]}
        todo = [item for item in items if item not in rated]
        print(f"{len(rated)} of {len(items)} responses rated; {len(todo)} to go. "
              "Type a rating 0-100 and Enter; s skips, q saves and quits.")
        for number, (model, index) in enumerate(todo, start=1):
            record = records[index]
            print(f"\n===== response {len(rated) + number} of {len(items)} (record {index})")
            print(_show("Instruction", record["instruction"]))
            if record["input"]:
                print(_show("Input", record["input"]))
            print(_show("Expected output", record["output"]))
            print(_show("Response", record[model]))
            rating = _ask_rating(ask)
            if rating == "quit":
                break
            if rating == "skip":
                continue
            saved["ratings"].append({"index": index, "model": model, "instruction": record["instruction"], "rating": rating})
            write_json_atomic(path, saved)
    for model in models:
        values = [r["rating"] for r in saved["ratings"] if r["model"] == model]
        s = describe(values, config.seed)
        print(f"  {model}: {s['n_scored']} rated" + (f", mean {s['mean']:.1f}" if values else ""))
    print(f"human ratings: {path}")
    return path


def save_chat_rating(output_dir: Path, responses: Path, entry: dict, indexed: dict[str, int]) -> list[str]:
    """Add one rating from the chat app (stage 5) to `human_ratings.json`, atomically and under the
    same lock as --human. The whole exchange goes to `chat_ratings`; the 0-100 ratings in `indexed`
    (model -> rating) also go to `ratings`, the list stage 4 and the report read, because they rate
    a test record's stored response (the app checked that its live answer is the stored one).
    Returns what could not be added there, and why."""
    path = output_dir / HUMAN_FILE
    digest = sha256_file(responses) if responses.is_file() else None
    notes = []
    with output_lock(output_dir, "human", timeout=10):
        saved = _open_ratings(path, responses, digest)
        if indexed and saved.get("input_sha256") != digest:
            notes.append(f"{path} rates another responses file ({saved.get('input')}): kept with the chat only")
        else:
            for model, rating in indexed.items():
                saved["ratings"].append({"index": entry["record_index"], "model": model,
                                         "instruction": entry["message"], "rating": rating, "source": "chat app"})
        saved.setdefault("chat_ratings", []).append(entry)
        write_json_atomic(path, saved)
    return notes


def _open_ratings(path: Path, responses: Path, digest: str | None) -> dict:
    """The ratings file, new or as saved; one that holds only free chats (stage 5) so far takes on
    the responses file that record-indexed ratings are of."""
    saved = read_human_ratings(path) if path.is_file() else {"input": None, "input_sha256": None, "ratings": []}
    if saved.get("input_sha256") is None and not saved["ratings"]:
        saved.update(input=str(responses) if digest else None, input_sha256=digest)
    return saved


def read_human_ratings(path: str | Path) -> dict:
    """A human_ratings.json, checked entry by entry: a hand-edited file gets a message naming the
    file, the entry and the field instead of a traceback later."""
    data = read_json(path)
    if not isinstance(data, dict) or not isinstance(data.get("ratings"), list):
        raise UserError(f"{path}: expected an object with a 'ratings' list (the file stage 4 --human writes)")
    problems = []
    for number, rating in enumerate(data["ratings"]):
        if not isinstance(rating, dict):
            problems.append(f"{path}: rating {number}: expected an object, found {type(rating).__name__}")
            continue
        checks = {
            "index": lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 0,
            "model": lambda v: isinstance(v, str) and bool(COLUMN_NAME.match(v)),
            "rating": _is_rating,
        }
        for field, valid in checks.items():
            if field not in rating:
                problems.append(f"{path}: rating {number}: missing field '{field}'")
            elif not valid(rating[field]):
                problems.append(f"{path}: rating {number}: field '{field}' is {reprlib.repr(rating[field])}; expected "
                                + {"index": "a record index (0 or more)", "model": "a response column (base, finetuned or a compare model's name)",
                                   "rating": "a number from 0 to 100"}[field])
    chats = data.setdefault("chat_ratings", [])
    if not isinstance(chats, list):
        problems.append(f"{path}: field 'chat_ratings' must be a list (of the chat app's rated exchanges)")
    for number, entry in enumerate(chats if isinstance(chats, list) else ()):
        problems += _chat_rating_problems(entry, f"{path}: chat rating {number}")
    if problems:
        raise problems_error(problems)
    return data


def _is_rating(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and 0 <= value <= 100


def _chat_rating_problems(entry, where: str) -> list[str]:
    """What is wrong with one exchange the chat app saved (stage 1b reads them as preferences)."""
    if not isinstance(entry, dict):
        return [f"{where}: expected an object, found {type(entry).__name__}"]
    entry.setdefault("history_turns", 0)  # saved before the app counted earlier turns
    entry.setdefault("input", "")
    checks = {
        "message": (lambda v: isinstance(v, str) and bool(v.strip()), "the message as typed (non-empty text)"),
        "input": (lambda v: isinstance(v, str), "text"),
        "record_index": (lambda v: v is None or (type(v) is int and v >= 0), "null or a record index (0 or more)"),
        "history_turns": (lambda v: type(v) is int and v >= 0, "a count of earlier exchanges (0 or more)"),
        "answers": (lambda v: isinstance(v, dict) and all(isinstance(t, str) for t in v.values()), "an object of model -> answer text"),
        "preference": (lambda v: v is None or isinstance(v, str), "null or the better model's name (or tie)"),
        "ratings": (lambda v: isinstance(v, dict) and all(_is_rating(r) for r in v.values()), "an object of model -> rating from 0 to 100"),
    }
    return [f"{where}: missing field '{field}'" if field not in entry
            else f"{where}: field '{field}' is {reprlib.repr(entry[field])}; expected {expected}"
            for field, (valid, expected) in checks.items() if field not in entry or not valid(entry[field])]


def _ask_rating(ask: Callable[[str], str]) -> int | str:
    while True:
        try:
            answer = ask("rating 0-100 (s skip, q quit): ").strip().lower()
        except EOFError:
            return "quit"
        if answer in ("q", "quit"):
            return "quit"
        if answer in ("s", "skip"):
            return "skip"
        if answer.isdigit() and 0 <= int(answer) <= 100:
            return int(answer)
        print("  please type a whole number from 0 to 100, s or q")
