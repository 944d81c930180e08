"""Loaders for every format, validation messages that name file/record/field, the seeded split."""

import csv
import json

import pytest

from conftest import SHARED_DATA, needs_shared_data
from instructkit.data.records import drop_duplicates, load_records, split_records, validate_records
from instructkit.errors import UserError

pytestmark = pytest.mark.fast

ALPACA = [
    {"instruction": "Name a colour.", "input": "", "output": "Blue."},
    {"instruction": "Add the numbers.", "input": "2, 3", "output": "5"},
]


def write(tmp_path, name, content, mode="w"):
    path = tmp_path / name
    if mode == "wb":
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    return path


def test_alpaca_json(tmp_path):
    path = write(tmp_path, "a.json", json.dumps(ALPACA))
    assert load_records(str(path)) == ALPACA


def test_jsonl(tmp_path):
    path = write(tmp_path, "a.jsonl", "\n".join(json.dumps(r) for r in ALPACA) + "\n\n")
    assert load_records(str(path)) == ALPACA


def test_csv(tmp_path):
    path = tmp_path / "a.csv"
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=["instruction", "input", "output"])
        writer.writeheader()
        writer.writerows(ALPACA)
    assert load_records(str(path)) == ALPACA


def test_dolly_json_and_csv_map_context_and_response(tmp_path):
    dolly = [{"instruction": "Who wrote it?", "context": "Orwell wrote 1984.", "response": "Orwell.", "category": "closed_qa"}]
    # Dolly's category is kept: the report breaks results down by it.
    expected = [{"instruction": "Who wrote it?", "input": "Orwell wrote 1984.", "output": "Orwell.", "category": "closed_qa"}]
    assert load_records(str(write(tmp_path, "d.json", json.dumps(dolly)))) == expected
    path = tmp_path / "d.csv"
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(dolly[0]))
        writer.writeheader()
        writer.writerows(dolly)
    assert load_records(str(path)) == expected


def test_a_category_that_is_not_text_is_named(tmp_path):
    path = write(tmp_path, "a.json", json.dumps([{"instruction": "Hi.", "output": "Hello.", "category": 3}]))
    with pytest.raises(UserError, match="record 0: field 'category' must be non-empty text"):
        load_records(str(path))


def test_missing_or_null_input_is_empty(tmp_path):
    path = write(tmp_path, "a.json", json.dumps([{"instruction": "Hi.", "output": "Hello."}, {"instruction": "Yo.", "input": None, "output": "Hey."}]))
    assert [r["input"] for r in load_records(str(path))] == ["", ""]


def test_utf8_bom_is_accepted(tmp_path):
    path = write(tmp_path, "bom.json", b"\xef\xbb\xbf" + json.dumps(ALPACA).encode(), mode="wb")
    assert load_records(str(path)) == ALPACA


@needs_shared_data
def test_shared_public_dataset_loads():
    records = load_records(str(SHARED_DATA))
    assert len(records) == 1100
    assert sum(bool(r["input"]) for r in records) == 325


@pytest.mark.parametrize(
    ("name", "content", "expected"),
    [
        ("empty.json", "", "file is empty"),
        ("notjson.json", "{not json", "not valid JSON (line 1"),
        ("object.json", json.dumps({"instruction": "x", "output": "y"}), "expected a JSON list of records, found an object"),
        ("emptylist.json", "[]", "contains no records"),
        ("noinstr.json", json.dumps([ALPACA[0], {"input": "", "output": "y"}]), "record 1: missing field 'instruction'"),
        ("number.json", json.dumps([{"instruction": "x", "input": 5, "output": "y"}]), "record 0: field 'input' must be text, found int"),
        ("nulloutput.json", json.dumps([{"instruction": "x", "output": None}]), "record 0: missing field 'output'"),
        ("blank.json", json.dumps([{"instruction": "  ", "output": "y"}]), "record 0: field 'instruction' is empty"),
        ("list.json", json.dumps([["a", "b"]]), "record 0: expected an object, found list"),
        ("bad.jsonl", '{"instruction": "x", "output": "y"}\n{oops\n', "line 2: not valid JSON (column 2"),
        ("nocol.csv", "instruction,input\nx,y\n", "lacks the columns instruction and output"),
    ],
)
def test_bad_files_name_file_record_and_field(tmp_path, name, content, expected):
    path = write(tmp_path, name, content)
    with pytest.raises(UserError) as info:
        load_records(str(path))
    assert str(path) in str(info.value)
    assert expected in str(info.value)


def test_invalid_utf8(tmp_path):
    path = write(tmp_path, "latin1.json", '[{"instruction": "caf\xe9", "output": "y"}]'.encode("latin-1"), mode="wb")
    with pytest.raises(UserError, match=r"not valid UTF-8 \(byte 21\)"):
        load_records(str(path))


def test_every_problem_is_reported_at_once():
    with pytest.raises(UserError) as info:
        validate_records([{"output": "a"}, {"instruction": "b", "output": 3}, {"instruction": "c", "output": "d"}], "f.json")
    lines = str(info.value).splitlines()
    assert lines == ["f.json: record 0: missing field 'instruction'", "f.json: record 1: field 'output' must be text, found int"]


def test_missing_file_and_unreachable_hub():
    with pytest.raises(UserError, match="no such file"):
        load_records("does-not-exist.json")
    with pytest.raises(UserError, match="could not load dataset 'tatsu-lab/alpaca' from the Hugging Face hub"):
        load_records("alpaca")  # HF_DATASETS_OFFLINE=1 in tests: the offline path is what we check


def test_exact_repeats_are_dropped_and_named():
    records = [*ALPACA, {"instruction": "Name a colour. ", "input": "", "output": "Blue."}, ALPACA[1],
               {"instruction": "Name a colour.", "input": "", "output": "Red."}]
    unique, repeats = drop_duplicates(records)
    assert unique == [*ALPACA, records[4]]  # a different answer is not a repeat
    assert repeats == [(2, 0), (3, 1)]


def test_split_is_deterministic_disjoint_and_complete():
    records = [{"instruction": f"q{i}", "input": "", "output": f"a{i}"} for i in range(200)]
    first = split_records(records, 0.05, 0.10, seed=7)
    again = split_records(records, 0.05, 0.10, seed=7)
    other = split_records(records, 0.05, 0.10, seed=8)
    assert first == again
    assert first.test != other.test
    assert (len(first.train), len(first.val), len(first.test)) == (170, 10, 20)
    keys = [r["instruction"] for part in (first.train, first.val, first.test) for r in part]
    assert sorted(keys) == sorted(r["instruction"] for r in records)


def test_split_rejects_fractions_that_leave_nothing_to_train():
    with pytest.raises(UserError):
        split_records(ALPACA, 0.5, 0.5, seed=1)
