"""Preference pairs from what a run's judges and people already said (stage 1b `--from-run`):
stage 4's pairwise verdicts that hold in both orders, 0-100 ratings (stage 4 `--human` and the
chat app) of two answers to one test record that differ by at least a margin, and the chat app's
"A better" choices; and, for KTO, single answers rated good or bad. Every pair and label keeps
where it came from (`source`); a judgement that gives none is counted with why."""

from __future__ import annotations

from collections import Counter, defaultdict
from itertools import combinations
from pathlib import Path

from instructkit.app.config import PLACEHOLDERS
from instructkit.data.preferences import Pair, text_problems
from instructkit.data.responses import RESPONSES_FILE, read_responses
from instructkit.errors import UserError, problems_error
from instructkit.judge.config import HUMAN_FILE, REFERENCE, SCORES_FILE
from instructkit.judge.human import read_human_ratings
from instructkit.runs.artifacts import read_json
from instructkit.runs.fingerprints import sha256_file

TIE = "tie"  # the chat app's choice when neither answer is better (else the better model's name)


def pairs_from_run(folder: str | Path, margin: float) -> tuple[list[Pair], dict[str, int]]:
    """The pairs a run folder's judge_scores.json and human_ratings.json hold, and how many
    judgements gave none, by reason."""
    folder = Path(folder)
    records = _records(folder)
    pairs: list[Pair] = []
    skipped: Counter = Counter()
    if (folder / SCORES_FILE).is_file():
        pairs += _judged(folder / SCORES_FILE, records, skipped)
    if (folder / HUMAN_FILE).is_file():
        pairs += _rated(folder / HUMAN_FILE, records, margin, skipped)
    if not pairs:
        found = [name for name in (SCORES_FILE, HUMAN_FILE) if (folder / name).is_file()]
        raise UserError(f"--from-run {folder}: no preference pairs in "
                        + (", ".join(str(folder / f) for f in found) if found else f"it (no {SCORES_FILE} or {HUMAN_FILE})")
                        + (f" ({', '.join(f'{n} {why}' for why, n in skipped.items())})" if skipped else "")
                        + "; run stage 4 with --pairwise, rate with --human or the chat app, or lower --rating-margin")
    return pairs, dict(skipped)


def _records(folder: Path) -> list[dict] | None:
    """Stage 2's test records and answers in the folder, or None."""
    path = folder / RESPONSES_FILE
    return read_responses(path)[0] if path.is_file() else None


def _rated_records(path: Path, saved: dict, records: list[dict] | None) -> list[dict] | None:
    """The records a ratings file's record-indexed ratings are of: stage 2's file, if it is still
    the one they rated (stage 2 rewrites it when a model is added)."""
    if records is None or saved.get("input_sha256") != sha256_file(path.parent / RESPONSES_FILE):
        return None
    return records


def _prompt(record: dict, records: list[dict] | None, index: int) -> dict:
    """A test record's prompt, with its earlier turns from stage 2's responses file when it has them."""
    prompt = {"instruction": record["instruction"], "input": record.get("input") or ""}
    if records and index < len(records) and records[index]["instruction"] == record["instruction"]:
        history = records[index].get("messages", [])[:-2]
        if history:
            prompt["history"] = history
    return prompt


def _answer(text) -> bool:
    """Whether `text` is an answer a model gave (not missing, not a page's placeholder)."""
    return isinstance(text, str) and bool(text.strip()) and not text.startswith(PLACEHOLDERS)


def _pair(prompt: dict, chosen, rejected, source: dict, skipped: Counter) -> list[Pair]:
    if not _answer(chosen) or not _answer(rejected):
        skipped["had no answer"] += 1
        return []
    if chosen.strip() == rejected.strip():
        skipped["had the same answer twice"] += 1
        return []
    return [{**prompt, "chosen": chosen, "rejected": rejected, "source": source}]


def _judged(path: Path, records: list[dict] | None, skipped: Counter) -> list[Pair]:
    """Stage 4's pairwise verdicts: a win or a loss in both orders (MT-Bench's rule); ties and
    verdicts that changed with the order give no pair."""
    scores = read_json(path)
    rows = scores.get("records") if isinstance(scores, dict) else None
    if not isinstance(rows, list):
        raise UserError(f"{path}: expected stage 4's judge scores (an object with 'records')")
    judge = (scores.get("judge") or {}).get("model") if isinstance(scores.get("judge"), dict) else None
    pairs, problems = [], []
    for number, row in enumerate(rows):
        if not isinstance(row, dict) or not isinstance(row.get("pairwise"), dict):
            continue
        # the prompt a pair trains on, checked as a pair file's is (a run folder may come from anyone)
        if found := text_problems(row, f"{path}: record {number}", ("instruction", "input"), optional=("input",)):
            problems += found
            continue
        for name, verdict in row["pairwise"].items():
            # a file from before pairs were named (one flat verdict) has no pair to read
            if ":" not in name or not isinstance(verdict, dict) or type(row.get("index")) is not int or row["index"] < 0:
                skipped["pairwise verdicts were in an older form"] += 1
                continue
            if verdict.get("outcome") not in ("win", "loss") or verdict.get("consistent") is not True:
                skipped["pairwise verdicts were ties or changed with the order"] += 1
                continue
            a, b = name.split(":", 1)
            answers = {m: row.get("output") if m == REFERENCE else (row.get("responses") or {}).get(m) for m in (a, b)}
            winner, loser = (a, b) if verdict["outcome"] == "win" else (b, a)
            source = {"file": str(path), "kind": "judge pairwise", "record": row["index"], "judge": judge,
                      "chosen_model": winner, "rejected_model": loser}
            pairs += _pair(_prompt(row, records, row["index"]), answers[winner], answers[loser], source, skipped)
    if problems:
        raise problems_error(problems)
    return pairs


def _rated(path: Path, records: list[dict] | None, margin: float, skipped: Counter) -> list[Pair]:
    """0-100 ratings of two answers to one test record that differ by `margin` or more (a record's
    several ratings of one answer averaged; equal ones never), and the chat app's "A better" choices."""
    saved = read_human_ratings(path)
    pairs = []
    rated = _rated_records(path, saved, records)
    if saved["ratings"] and rated is None:
        skipped[f"ratings were of another {RESPONSES_FILE} than the one there now"] += len(saved["ratings"])
    given: dict[int, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for rating in saved["ratings"] if rated is not None else ():
        given[rating["index"]][rating["model"]].append(rating["rating"])
    for index, by_model in sorted(given.items()):
        if index >= len(rated):
            skipped["ratings named a record the responses file does not have"] += 1
            continue
        record = rated[index]
        means = {m: sum(v) / len(v) for m, v in by_model.items()}
        for a, b in combinations(sorted(means), 2):
            if abs(means[a] - means[b]) < margin or means[a] == means[b]:
                skipped[f"pairs of ratings differed by less than {margin:g}"] += 1
                continue
            winner, loser = (a, b) if means[a] > means[b] else (b, a)
            source = {"file": str(path), "kind": "human ratings", "record": index, "chosen_model": winner,
                      "rejected_model": loser, "ratings": {winner: means[winner], loser: means[loser]}}
            pairs += _pair(_prompt(record, rated, index), record.get(winner), record.get(loser), source, skipped)
    for number, entry in enumerate(saved.get("chat_ratings", [])):
        winner = entry["preference"]
        if winner is None or winner == TIE:
            continue  # a rating without a choice, or a tie
        if entry["history_turns"]:  # the app keeps the exchange, not the turns before it
            skipped["chat choices came after earlier turns"] += 1
            continue
        prompt = _chat_prompt(entry, rated)
        for loser in sorted(m for m in entry["answers"] if m != winner):
            source = {"file": str(path), "kind": "chat preference", "chat_rating": number, "chosen_model": winner,
                      "rejected_model": loser, "record": entry["record_index"]}
            pairs += _pair(prompt, entry["answers"].get(winner), entry["answers"][loser], source, skipped)
    return pairs


def _chat_prompt(entry: dict, records: list[dict] | None) -> dict:
    """What a chat exchange asked: a test record picked as the example (with its system prompt and
    earlier turns), else the message as typed."""
    index = entry["record_index"]
    if index is not None and records is not None and index < len(records):
        return _prompt(records[index], records, index)
    return {"instruction": entry["message"], "input": entry["input"]}


def labels_from_run(folder: str | Path, good: float, bad: float) -> list[dict]:
    """Single answers a person rated `good` or higher (desirable) or `bad` or lower (undesirable):
    stage 4 --human's and the chat app's ratings, of stored test answers and of free messages."""
    folder = Path(folder)
    path = folder / HUMAN_FILE
    if not path.is_file():
        return []
    saved = read_human_ratings(path)
    rated = _rated_records(path, saved, _records(folder))
    labels = []

    def label(prompt: dict, answer, rating: float, source: dict) -> None:
        if _answer(answer) and (rating >= good or rating <= bad):
            labels.append({**prompt, "completion": answer, "label": rating >= good,
                           "source": {"file": str(path), **source, "rating": rating}})

    for rating in saved["ratings"] if rated is not None else ():
        if rating["index"] < len(rated):
            record = rated[rating["index"]]
            label(_prompt(record, rated, rating["index"]), record.get(rating["model"]), rating["rating"],
                  {"kind": "human rating", "record": rating["index"], "model": rating["model"]})
    for number, entry in enumerate(saved.get("chat_ratings", [])):
        if entry["history_turns"] or entry["record_index"] is not None:
            continue  # after earlier turns, or a test record's stored answer (in `ratings` above)
        for model, rating in entry["ratings"].items():
            label(_chat_prompt(entry, None), entry["answers"].get(model), rating,
                  {"kind": "chat rating", "chat_rating": number, "model": model})
    return labels
