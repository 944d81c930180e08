"""Our default dataset: schema, duplicates, coverage, and that the committed file is reproducible."""

import importlib.util
import json

import pytest

from conftest import PROJECT_DATA, ROOT
from instructkit.data.records import load_records

pytestmark = pytest.mark.fast

DATA = PROJECT_DATA


def _builder():
    spec = importlib.util.spec_from_file_location("build_default_data", ROOT / "instructkit" / "data" / "build_default_data.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_schema_size_and_inputs():
    records = load_records(str(DATA))  # the package's own validation
    raw = json.loads(DATA.read_text(encoding="utf-8"))
    assert all(set(r) == {"instruction", "input", "output", "category"} for r in raw)
    assert all(r["category"] == raw_r["category"] for r, raw_r in zip(records, raw))  # kept for the report
    assert len(records) >= 400
    assert sum(bool(r["input"]) for r in records) / len(records) >= 0.30
    assert all(len(r["output"]) < 200 for r in records), "outputs should stay concise"


def test_no_duplicates():
    records = load_records(str(DATA))
    keys = [(r["instruction"], r["input"]) for r in records]
    assert len(keys) == len(set(keys))


def test_coverage_of_task_kinds():
    groups = _builder().build()
    assert len(groups) >= 12
    assert all(len(records) >= 10 for records in groups.values()), {k: len(v) for k, v in groups.items()}


def test_committed_file_matches_builder():
    builder = _builder()
    expected = sorted(json.dumps(r, sort_keys=True) for group in builder.build().values() for r in group)
    actual = sorted(json.dumps(r, sort_keys=True) for r in json.loads(DATA.read_text(encoding="utf-8")))
    assert actual == expected, "run `python -m instructkit.data.build_default_data` and commit the result"


def test_computed_answers_are_right():
    builder = _builder()
    assert builder.number_words(342) == "three hundred and forty-two"
    assert builder.number_words(90) == "ninety"
    by_instruction = {r["instruction"]: r["output"] for g in builder.build().values() for r in g}
    for instruction, output in by_instruction.items():
        if instruction.startswith("What is ") and " + " in instruction:
            a, b = instruction.removeprefix("What is ").rstrip("?").split(" + ")
            assert output == f"{a} + {b} = {int(a) + int(b)}."
