"""Stage 2's responses file, the one place that reads and names it: one object per test record
(`instruction`, `input`, `output`, optional `category`) with a `<model>_model_response` field per
model that answered. Stage 4, the human rater, the chat app and the report read it through here."""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path

from instructkit.data.records import record_problems
from instructkit.errors import UserError, not_unicode, problems_error
from instructkit.runs.artifacts import read_json

RESPONSES_FILE = "test_base_model.json"  # the name LLMs-from-scratch gave it; it holds every model's responses
RESPONSE_FIELDS = {"base": "base_model_response", "finetuned": "finetuned_model_response"}
SUFFIX = "_model_response"
# A --compare model's name becomes a column: lower-case letters, digits and _, none of these.
COLUMN_NAME = re.compile(r"^[a-z][a-z0-9_]*$")
PREFERENCE_MODEL = "preference"  # stage 1b's adapter in the run folder: a column stages 2 and 5 add themselves
RESERVED_NAMES = ("base", "finetuned", PREFERENCE_MODEL, "output", "instruction", "input")


def response_field(model: str) -> str:
    """The field of a model's response in a record: base, finetuned, or a --compare model's name."""
    return RESPONSE_FIELDS.get(model, f"{model}{SUFFIX}")


def response_columns(keys: Iterable[str]) -> list[str]:
    """The models whose responses `keys` (a record's fields, or model names) hold: base and
    finetuned first, then the --compare models in the order given."""
    names = [key.removesuffix(SUFFIX) for key in keys]
    return list(RESPONSE_FIELDS) + [n for n in dict.fromkeys(names) if n not in RESPONSE_FIELDS]


def responses_path(output_dir: str | Path, given: str = "") -> Path:
    """Stage 2's responses: the file given (stage 4's --input), else the run folder's."""
    return Path(given or Path(output_dir) / RESPONSES_FILE)


def read_responses(path: str | Path) -> tuple[list[dict], list[str]]:
    """Stage 2's records, each with its responses under the model's name, and the models that
    have responses in them."""
    raw = read_json(path)
    records, problems = record_problems(raw, path)
    columns = response_columns(key for item in raw if isinstance(item, dict) for key in item if key.endswith(SUFFIX))
    problems += [f"{path}: field '{response_field(model)}' is not a model's response column (a model's name is "
                "lower-case letters, digits and _)" for model in columns if not COLUMN_NAME.match(model)]
    for index, item in enumerate(raw):
        for model in columns if isinstance(item, dict) else ():  # a record that is no object: named above
            key = response_field(model)
            if key not in item:
                problems.append(f"{path}: record {index}: missing field '{key}' (rerun stage 2)")
            elif item[key] is not None and not isinstance(item[key], str):
                problems.append(f"{path}: record {index}: field '{key}' must be text or null, found {type(item[key]).__name__}")
            elif item[key] is not None and (why := not_unicode(item[key])):
                problems.append(f"{path}: record {index}: field '{key}' {why}")
            elif not problems:
                records[index][model] = item[key]
    if problems:
        raise problems_error(problems)
    models = [m for m in columns if any(r[m] is not None for r in records)]
    if not models:
        raise UserError(f"{path}: no record has a response to score")
    return records, models
