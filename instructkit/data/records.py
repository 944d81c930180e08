"""Instruction data: loading (Alpaca JSON/JSONL/CSV, Dolly, conversations, hub datasets), validation that names
the file, record and field of every problem, and the seeded train/val/test split."""

from __future__ import annotations

import csv
import io
import math
import random
import reprlib
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from instructkit.data.conversations import conversation_problems, conversation_record, earlier_turns, is_conversation
from instructkit.data.databases import schema
from instructkit.errors import UserError, not_unicode, problems_error
from instructkit.runs.artifacts import parse_json, read_text

FIELDS = ("instruction", "input", "output")
SPIDER_DATABASES = "database"  # Spider's folder of <db_id>/<db_id>.sqlite, beside its question files
# Other datasets' names for our fields: Dolly's context/response (they must agree with ours where
# both are given; sql-create-context names its schema `context` too)
ALIASES = {"context": "input", "response": "output"}
# ... and names read only where ours are absent (elsewhere a record may hold a `question` or an
# `answer` of its own): sql-create-context's question/answer, and Spider's query (for a record with a db_id)
STAND_INS = {"question": "instruction", "answer": "output"}
# Optional text a record may carry: a kind of task (the report breaks results down by it) and the
# database a text-to-SQL record's query runs on (stage 4's sql-execution)
OPTIONAL_FIELDS = ("category", "db_id")
HUB_DATASETS = {"alpaca": "tatsu-lab/alpaca", "dolly": "databricks/databricks-dolly-15k"}

Record = dict[str, Any]  # instruction, input, output (text), optional category, and `messages` for a conversation
SPLIT_DIR = "data"  # stage 1 writes the split it used to <output-dir>/data/{train,val,test}.json


def split_file(output_dir: str | Path, name: str, given: str = "") -> Path:
    """A file of stage 1's split in the run folder (`name`: train, val or test), or the one given."""
    return Path(given or Path(output_dir) / SPLIT_DIR / f"{name}.json")


@dataclass(frozen=True)
class Split:
    train: list[Record]
    val: list[Record]
    test: list[Record]


def load_records(source: str) -> list[Record]:
    """Records with `instruction`, `input`, `output` from a file or a hub dataset name.

    Dolly's `context`/`response` become `input`/`output`; a conversation (OpenAI `messages`,
    ShareGPT `conversations`, TRL's `prompt`/`completion`) also keeps its turns in `messages`. Every problem in the file is reported at
    once in one `UserError`, each line naming the file, the record index and the field.
    """
    path = Path(source).expanduser()
    if path.is_file():
        raw, label = read_raw_records(path), str(path)
        raw = _spider_schemas(raw, path.parent / SPIDER_DATABASES, label)
    elif source in HUB_DATASETS or (not path.exists() and "/" in source and not path.suffix):
        raw, label = read_hub(HUB_DATASETS.get(source, source)), HUB_DATASETS.get(source, source)
    else:
        raise UserError(
            f"{source}: no such file; give an Alpaca/Dolly .json, .jsonl or .csv file or a "
            f"conversations .json/.jsonl (messages, ShareGPT, prompt-completion), "
            f"or a hub dataset ({', '.join(HUB_DATASETS)} or owner/name)"
        )
    return validate_records(raw, label)


def _spider_schemas(raw: Any, folder: Path, label: str) -> Any:
    """Spider's records (`question`, `query`, `db_id`) hold no schema: it is read from the database
    Spider ships beside them (database/<db_id>/<db_id>.sqlite) and given as `context`, the CREATE
    TABLE statements sql-create-context's records carry, so that stage 1 trains with it in the prompt."""
    if not isinstance(raw, list):
        return raw
    problems, schemas = [], {}
    for index, item in enumerate(raw):
        if not (isinstance(item, dict) and "query" in item and isinstance(item.get("db_id"), str)
                and "instruction" not in item and item.get("context") is None and item.get("input") is None):
            continue
        database = folder / item["db_id"] / f"{item['db_id']}.sqlite"
        if item["db_id"] not in schemas and database.is_file():
            try:
                schemas[item["db_id"]] = schema(database)
            except sqlite3.Error as exc:
                problems.append(f"{label}: record {index}: {database} is not a readable SQLite database ({exc})")
                continue
        if item["db_id"] in schemas:
            raw[index] = {**item, "context": schemas[item["db_id"]]}
        else:
            problems.append(f"{label}: record {index}: a Spider record (question, query, db_id) holds no schema, and "
                            f"{database} is missing: keep Spider's database/ folder beside the file, or give the "
                            "record a 'context' with its CREATE TABLE statements")
    if problems:
        raise problems_error(problems)
    return raw


def read_raw_records(path: Path) -> list[Any]:
    text = read_text(path)
    if not text.strip():
        raise UserError(f"{path}: file is empty")
    suffix = path.suffix.lower()
    if suffix == ".csv":
        return _read_csv(path, text)
    if suffix == ".jsonl":
        # Lines end at \n only: splitlines() would also cut at a U+2028 that a JSON string may hold.
        return [parse_json(line, path, number) for number, line in enumerate(text.split("\n"), start=1) if line.strip()]
    return record_list(parse_json(text, path), path)


def record_list(raw: Any, label: str | Path) -> list[Any]:
    if not isinstance(raw, list):
        found = {dict: "an object", str: "a string", bool: "true or false", type(None): "null"}.get(type(raw), "a number")
        raise UserError(f"{label}: expected a JSON list of records, found {found}")
    return raw


def _read_csv(path: Path, text: str) -> list[dict[str, str]]:
    reader = csv.DictReader(io.StringIO(text, newline=""))
    try:
        header = reader.fieldnames or []
        columns = set(header)
        if not ({"instruction", "output"} <= columns or {"instruction", "response"} <= columns):
            raise UserError(
                f"{path}: CSV header {sorted(columns)} lacks the columns instruction and output "
                "(or Dolly's instruction, context, response)"
            )
        if len(columns) < len(header):
            raise UserError(f"{path}: CSV header names a column twice: {', '.join(header)}")
        rows, problems = [], []
        for row in reader:
            if None in row:  # DictReader files the fields past the header's under None, and would drop them
                problems.append(f"{path}: record {len(rows)} (line {reader.line_num}): {len(header) + len(row[None])} "
                                f"fields, but the header has {len(header)} columns")
            rows.append(row)
    except csv.Error as exc:
        raise UserError(f"{path}: line {reader.line_num}: not valid CSV ({exc})") from exc
    if problems:
        raise problems_error(problems)
    return rows


def read_hub(name: str, split: str = "train") -> list[dict[str, Any]]:
    import datasets

    try:
        dataset = datasets.load_dataset(name, split=split)
    except Exception as exc:  # the hub client raises many types when offline
        raise UserError(
            f"could not load dataset {name!r} from the Hugging Face hub: {type(exc).__name__}: {exc}. "
            "Without the hub, pass a local file with --data (--help lists the forms it reads)."
        ) from exc
    return list(dataset)


def validate_records(raw: Any, label: str | Path) -> list[Record]:
    """The records of a JSON list, or a UserError listing every problem by record and field."""
    records, problems = record_problems(raw, label)
    if problems:
        raise problems_error(problems)
    return records


def record_problems(raw: Any, label: str | Path) -> tuple[list[Record], list[str]]:
    """The valid records of a JSON list, and one line per problem (for a reader that adds its own)."""
    problems: list[str] = []
    records: list[Record] = []
    if not record_list(raw, label):
        raise UserError(f"{label}: contains no records")
    for index, item in enumerate(raw):
        if not isinstance(item, dict):
            problems.append(f"{label}: record {index}: expected an object, found {type(item).__name__}")
            continue
        if is_conversation(item):
            record, found = _conversation(item, f"{label}: record {index}")
            problems += found
        else:
            record, found = _single_turn(item, f"{label}: record {index}")
            problems += found
        for name in OPTIONAL_FIELDS:
            value = item.get(name)
            if value is not None and not (isinstance(value, str) and value.strip()):
                problems.append(f"{label}: record {index}: field '{name}' must be non-empty text, found {reprlib.repr(value)}")
            elif value is not None and (why := not_unicode(value)):
                problems.append(f"{label}: record {index}: field '{name}' {why}")
            elif value is not None:
                record[name] = value
        if all(field in record for field in FIELDS):
            records.append(record)
    return records, problems


def _conversation(item: dict, where: str) -> tuple[Record, list[str]]:
    """A `messages`, ShareGPT or prompt-completion record; the fields derived from its last exchange
    may be present (stage 1's split files hold them) but must agree with it."""
    messages, problems = conversation_problems(item, where)
    if problems:
        return {}, problems
    record = conversation_record(messages)
    what = {"instruction": "the conversation's last user turn", "input": "'' (a conversation has no input)",
            "output": "the conversation's last answer"}
    problems = [f"{where}: field '{field}' differs from {what[field]}"
                for field in FIELDS if item.get(field) is not None and item[field] != record[field]]
    return record, problems


def _single_turn(item: dict, where: str) -> tuple[Record, list[str]]:
    """An Alpaca or Dolly record."""
    problems = [f"{where}: fields '{field}' and '{alias}' (Dolly's name for it) differ; keep one"
                for alias, field in ALIASES.items() if alias in item and field in item and item[alias] != item[field]]
    item = {**{ALIASES[key]: value for key, value in item.items() if key in ALIASES},
            **{key: value for key, value in item.items() if key not in ALIASES}}
    stand_ins = STAND_INS | ({"query": "output"} if "db_id" in item else {})
    for name, field in stand_ins.items():
        if name in item and field not in item:
            item[field] = item[name]
    record: Record = {}
    for field in FIELDS:
        value = item.get(field, "" if field == "input" else None)
        if value is None and field == "input":
            value = ""
        if value is None:
            problems.append(f"{where}: missing field '{field}'")
        elif not isinstance(value, str):
            problems.append(f"{where}: field '{field}' must be text, found {type(value).__name__}")
        elif field != "input" and not value.strip():
            problems.append(f"{where}: field '{field}' is empty")
        elif why := not_unicode(value):
            problems.append(f"{where}: field '{field}' {why}")
        else:
            record[field] = value
    return record, problems


def drop_duplicates(records: list[Record]) -> tuple[list[Record], list[tuple[int, int]]]:
    """Records without exact repeats (same instruction, input and output, ignoring surrounding
    whitespace), and (index dropped, index kept) for each repeat: a repeat could land in both the
    training and the test split and make the test score a memory test."""
    first_seen: dict[tuple, int] = {}
    unique, repeats = [], []
    for index, record in enumerate(records):
        earlier = tuple((m["role"], m["content"].strip()) for m in earlier_turns(record))
        key = (record["instruction"].strip(), record["input"].strip(), record["output"].strip(), earlier)
        if key in first_seen:
            repeats.append((index, first_seen[key]))
        else:
            first_seen[key] = index
            unique.append(record)
    return unique, repeats


def split_fraction_problem(val_fraction: float, test_fraction: float) -> str | None:
    """Why the split's fractions cannot be cut (before any record is read), or None."""
    if not 0 <= val_fraction < 1 or not 0 < test_fraction < 1 or val_fraction + test_fraction >= 1:
        return f"--val-fraction {val_fraction} and --test-fraction {test_fraction} must leave records to train on"
    return None


def split_records(records: list[Record], val_fraction: float, test_fraction: float, seed: int) -> Split:
    """Shuffle with `seed` and cut into train/val/test; the same seed gives the same split. The test
    split, the training split and (unless --val-fraction is 0) the validation split get a record each."""
    if problem := split_fraction_problem(val_fraction, test_fraction):
        raise UserError(problem)
    shuffled = list(records)
    random.Random(seed).shuffle(shuffled)
    n_test = round(len(shuffled) * test_fraction)
    n_val = round(len(shuffled) * val_fraction)
    n_train = len(shuffled) - n_test - n_val
    one = math.ceil(1000 / max(len(records), 1)) / 1000  # the smallest fraction (to 3 places) that rounds to a record
    hint = f"{one} or more gives it one" if one < 1 else "too few records to give it one"
    empty = [f"--{flag}-fraction {fraction} gives the {name} split none ({hint})"
             for flag, name, fraction, count in (("test", "test", test_fraction, n_test),
                                                 ("val", "validation", val_fraction, n_val))
             if count == 0 and fraction > 0]
    if n_train < 1:
        empty.append("none is left to train on (lower --val-fraction or --test-fraction, or give more records)")
    if empty:
        raise UserError(f"{len(records)} records would split into {n_train} to train on, {n_val} for validation and "
                        f"{n_test} for testing: " + "; ".join(empty))
    return Split(
        train=shuffled[n_test + n_val:],
        val=shuffled[n_test:n_test + n_val],
        test=shuffled[:n_test],
    )
