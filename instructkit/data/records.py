"""Instruction data: loading (Alpaca JSON/JSONL/CSV, Dolly, hub datasets), validation that names
the file, record and field of every problem, and the seeded train/val/test split."""

from __future__ import annotations

import csv
import io
import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from instructkit.errors import UserError, problems_error

FIELDS = ("instruction", "input", "output")
DOLLY_FIELDS = {"context": "input", "response": "output"}
HUB_DATASETS = {"alpaca": "tatsu-lab/alpaca", "dolly": "databricks/databricks-dolly-15k"}

Record = dict[str, str]
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
    """Records with exactly `instruction`, `input`, `output` from a file or a hub dataset name.

    Dolly's `context`/`response` become `input`/`output`. Every problem in the file is reported at
    once in one `UserError`, each line naming the file, the record index and the field.
    """
    path = Path(source).expanduser()
    if path.is_file():
        raw, label = read_raw_records(path), str(path)
    elif source in HUB_DATASETS or (not path.exists() and "/" in source and not path.suffix):
        raw, label = _read_hub(HUB_DATASETS.get(source, source)), HUB_DATASETS.get(source, source)
    else:
        raise UserError(
            f"{source}: no such file; give an Alpaca/Dolly .json, .jsonl or .csv file, "
            f"or a hub dataset ({', '.join(HUB_DATASETS)} or owner/name)"
        )
    return validate_records(raw, label)


def _read_text(path: Path) -> str:
    try:
        text = path.read_bytes().decode("utf-8-sig")  # a BOM is common in files saved by Excel
    except UnicodeDecodeError as exc:
        raise UserError(f"{path}: not valid UTF-8 (byte {exc.start})") from exc
    if not text.strip():
        raise UserError(f"{path}: file is empty")
    return text


def read_raw_records(path: Path) -> list[Any]:
    text = _read_text(path)
    suffix = path.suffix.lower()
    if suffix == ".csv":
        return _read_csv(path, text)
    if suffix == ".jsonl":
        records = []
        for line_number, line in enumerate(text.splitlines(), start=1):
            if line.strip():
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError as exc:
                    raise UserError(f"{path}: line {line_number} is not valid JSON ({exc.msg})") from exc
        return records
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UserError(f"{path}: not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})") from exc
    if not isinstance(data, list):
        raise UserError(f"{path}: expected a JSON list of records, found a {type(data).__name__}")
    return data


def _read_csv(path: Path, text: str) -> list[dict[str, str]]:
    reader = csv.DictReader(io.StringIO(text))
    columns = set(reader.fieldnames or [])
    if not ({"instruction", "output"} <= columns or {"instruction", "response"} <= columns):
        raise UserError(
            f"{path}: CSV header {sorted(columns)} lacks the columns instruction and output "
            "(or Dolly's instruction, context, response)"
        )
    return list(reader)


def _read_hub(name: str) -> list[dict[str, Any]]:
    import datasets

    try:
        dataset = datasets.load_dataset(name, split="train")
    except Exception as exc:  # the hub client raises many types when offline
        raise UserError(
            f"could not load dataset {name!r} from the Hugging Face hub: {type(exc).__name__}: {exc}. "
            "Without the hub, pass a local Alpaca/Dolly .json, .jsonl or .csv file with --data."
        ) from exc
    return list(dataset)


def validate_records(raw: list[Any], label: str) -> list[Record]:
    problems: list[str] = []
    records: list[Record] = []
    if not raw:
        raise UserError(f"{label}: contains no records")
    for index, item in enumerate(raw):
        if not isinstance(item, dict):
            problems.append(f"{label}: record {index}: expected an object, found {type(item).__name__}")
            continue
        item = {DOLLY_FIELDS.get(key, key): value for key, value in item.items()}
        record: Record = {}
        for field in FIELDS:
            value = item.get(field, "" if field == "input" else None)
            if value is None and field == "input":
                value = ""
            if value is None:
                problems.append(f"{label}: record {index}: missing field '{field}'")
            elif not isinstance(value, str):
                problems.append(f"{label}: record {index}: field '{field}' must be text, found {type(value).__name__}")
            elif field != "input" and not value.strip():
                problems.append(f"{label}: record {index}: field '{field}' is empty")
            else:
                record[field] = value
        category = item.get("category")  # optional (Dolly has it): the report breaks results down by it
        if category is not None and not (isinstance(category, str) and category.strip()):
            problems.append(f"{label}: record {index}: field 'category' must be non-empty text, found {category!r}")
        elif category is not None:
            record["category"] = category
        if all(field in record for field in FIELDS):
            records.append(record)
    if problems:
        raise problems_error(problems)
    return records


def drop_duplicates(records: list[Record]) -> tuple[list[Record], list[tuple[int, int]]]:
    """Records without exact repeats (same instruction, input and output, ignoring surrounding
    whitespace), and (index dropped, index kept) for each repeat: a repeat could land in both the
    training and the test split and make the test score a memory test."""
    first_seen: dict[tuple[str, str, str], int] = {}
    unique, repeats = [], []
    for index, record in enumerate(records):
        key = (record["instruction"].strip(), record["input"].strip(), record["output"].strip())
        if key in first_seen:
            repeats.append((index, first_seen[key]))
        else:
            first_seen[key] = index
            unique.append(record)
    return unique, repeats


def split_records(records: list[Record], val_fraction: float, test_fraction: float, seed: int) -> Split:
    """Shuffle with `seed` and cut into train/val/test; the same seed gives the same split."""
    if not 0 <= val_fraction < 1 or not 0 <= test_fraction < 1 or val_fraction + test_fraction >= 1:
        raise UserError(f"--val-fraction {val_fraction} and --test-fraction {test_fraction} must leave records to train on")
    shuffled = list(records)
    random.Random(seed).shuffle(shuffled)
    n_test = round(len(shuffled) * test_fraction)
    n_val = round(len(shuffled) * val_fraction)
    if val_fraction > 0 and n_val == 0 or len(shuffled) - n_test - n_val < 1:
        raise UserError(f"{len(records)} records are too few for val {val_fraction} and test {test_fraction}")
    return Split(
        train=shuffled[n_test + n_val:],
        val=shuffled[n_test:n_test + n_val],
        test=shuffled[:n_test],
    )
