"""Careless input (issue 26): a setting out of range, a YAML value of the wrong type, a data file
that is odd in one of many ways, an output folder that cannot be written. Each is refused with
exit status 2 and one `error:` message naming the flag, file, record or field, before anything
loads or is written; never a traceback."""

import json
import os

import pytest

from instructkit.app.config import ChatConfig
from instructkit.app.config import check as check_chat
from instructkit.cli import build_parser, parse_config, run_stage
from instructkit.data.questions import read_questions
from instructkit.data.records import load_records, split_records
from instructkit.data.responses import read_responses
from instructkit.data.synthesis_config import SynthesisConfig
from instructkit.data.synthesis_config import check as check_synthesis
from instructkit.errors import UserError
from instructkit.evaluate.config import BenchmarkConfig
from instructkit.evaluate.config import check as check_benchmark
from instructkit.generate.config import GenerationConfig
from instructkit.generate.config import check as check_generation
from instructkit.judge.config import JudgeConfig
from instructkit.judge.config import check as check_judge
from instructkit.runs.artifacts import output_lock, read_json
from instructkit.train.config import TrainingConfig
from instructkit.train.config import check as check_training

pytestmark = pytest.mark.fast

STAGES = {"train": (TrainingConfig, check_training), "synthesis": (SynthesisConfig, check_synthesis),
          "generate": (GenerationConfig, check_generation), "benchmark": (BenchmarkConfig, check_benchmark),
          "judge": (JudgeConfig, check_judge), "chat": (ChatConfig, check_chat)}
RECORD = {"instruction": "Name a colour.", "input": "", "output": "Blue."}
QUESTION = {"question_id": 1, "category": "writing", "turns": ["Write a haiku."]}


def refusal(stage: str, args: list[str]) -> str:
    """The message a stage's parser and check give these flags (the check runs before torch loads)."""
    config_cls, check = STAGES[stage]
    with pytest.raises(UserError) as info:
        check(parse_config(build_parser(config_cls, ""), args))
    return str(info.value)


# --- A: settings out of range, named by their flag -------------------------------------------------

@pytest.mark.parametrize("stage, args, message", [
    ("train", ["--batch-size", "0"], "--batch-size must be at least 1 (got 0)"),
    ("train", ["--lr=-1e-3"], "--lr must be more than 0 (got -0.001)"),
    ("train", ["--lr", "nan"], "--lr must be a finite number (got nan)"),
    ("train", ["--grad-accum", "0"], "--grad-accum must be at least 1 (got 0)"),
    ("train", ["--lora-r", "0"], "--lora-r must be at least 1 (got 0)"),
    ("train", ["--val-fraction", "1.5"], "--val-fraction must be less than 1 (got 1.5)"),
    ("train", ["--test-fraction=-0.1"], "--test-fraction must be more than 0 (got -0.1)"),
    ("train", ["--val-fraction", "0.5", "--test-fraction", "0.5"], "must leave records to train on"),
    ("train", ["--epochs", "0"], "--epochs must be more than 0 when --max-steps is not set (got 0.0)"),
    ("train", ["--seed=-1"], "--seed must be at least 0 (got -1)"),
    ("synthesis", ["--temperature=-1"], "--temperature must be at least 0 (got -1.0)"),
    ("synthesis", ["--top-p", "0"], "--top-p must be more than 0 (got 0.0)"),
    ("synthesis", ["--top-p", "1.5"], "--top-p must be at most 1 (got 1.5)"),
    ("synthesis", ["--concurrency", "0"], "--concurrency must be at least 1 (got 0)"),
    ("synthesis", ["--max-words", "3"], "--max-words 3 must be more than --min-words 3"),
    ("generate", ["--max-new-tokens=-5"], "--max-new-tokens must be at least 1 (got -5)"),
    ("generate", ["--batch-size", "0"], "--batch-size must be at least 1 (got 0)"),
    ("generate", ["--max-retries=-1"], "--max-retries must be at least 0 (got -1)"),
    ("generate", ["--request-timeout", "0"], "--request-timeout must be more than 0 (got 0.0)"),
    ("benchmark", ["--limit=-3"], "--limit must be at least 0 (got -3)"),
    ("benchmark", ["--batch-size", "0"], "--batch-size '0': give a whole number of 1 or more, auto or auto:N"),
    ("judge", ["--batch-size", "0"], "--batch-size must be at least 1 (got 0)"),
    ("judge", ["--max-new-tokens", "0"], "--max-new-tokens must be at least 1 (got 0)"),
    ("chat", ["--port", "70000"], "--port must be at most 65535 (got 70000)"),
    ("chat", ["--max-queue", "0"], "--max-queue must be at least 1 (got 0)"),
])
def test_a_setting_out_of_range_is_refused_naming_its_flag(tmp_path, stage, args, message):
    assert message in refusal(stage, [*args, "--output-dir", str(tmp_path / "out")])
    assert not (tmp_path / "out").exists()


def test_every_setting_problem_is_reported_at_once_and_max_steps_makes_epochs_moot(tmp_path):
    lines = refusal("train", ["--batch-size", "0", "--lora-r", "0", "--lr", "0"]).splitlines()
    assert lines == ["--batch-size must be at least 1 (got 0)", "--lr must be more than 0 (got 0.0)",
                     "--lora-r must be at least 1 (got 0)"]
    check_training(parse_config(build_parser(TrainingConfig, ""), ["--epochs", "0", "--max-steps", "3",
                                                                     "--output-dir", str(tmp_path / "out")]))


def test_a_bad_setting_exits_2_with_one_error_line_and_writes_nothing(tmp_path, capsys):
    main = __import__("part1_instruction_finetuning").main
    code = run_stage(main, build_parser(TrainingConfig, ""), ["--batch-size", "0", "--output-dir", str(tmp_path / "out")])
    assert code == 2
    assert capsys.readouterr().err == "error: --batch-size must be at least 1 (got 0)\n"
    assert not (tmp_path / "out").exists()


# --- B: YAML values are typed as flags are -------------------------------------------------------

def yaml_config(tmp_path, text: str, config_cls: type = TrainingConfig, *args: str):
    path = tmp_path / "run.yaml"
    path.write_text(text, encoding="utf-8")
    return parse_config(build_parser(config_cls, ""), ["--config", str(path), *args])


@pytest.mark.parametrize("text, message", [
    ("max_steps: [1, 2]\n", "max_steps: expected a whole number, got [1, 2]"),
    ("batch_size: 2.5\n", "batch_size: expected a whole number, got 2.5"),
    ("batch_size: true\n", "batch_size: expected a whole number, got True"),
    ('lr: "abc"\n', "lr: expected a number, got 'abc'"),
    ("merge: [true]\n", "merge: expected true or false, got [True]"),
    ("seed: null\n", "seed: expected a whole number, got None"),
    ("data: {a: 1}\n", "data: expected text, got {'a': 1}"),
    ("precision: fp16\n", "precision: 'fp16' is not one of auto, fp32, bf16"),
])
def test_a_yaml_value_of_the_wrong_type_is_refused_naming_file_and_key(tmp_path, text, message):
    with pytest.raises(UserError) as info:
        yaml_config(tmp_path, text)
    assert f"{tmp_path / 'run.yaml'}: {message}" in str(info.value)


def test_yaml_values_become_their_fields_types(tmp_path):
    config = yaml_config(tmp_path, "lr: 1\nbase_model: 7\n")
    assert (config.lr, type(config.lr), config.base_model) == (1.0, float, "7")
    config = yaml_config(tmp_path, "compare: small=gpt2\n", GenerationConfig)
    assert config.compare == ["small=gpt2"]  # one item stands for a list
    assert yaml_config(tmp_path, "temperature: null\n", SynthesisConfig).temperature is None
    assert yaml_config(tmp_path, "pairwise: true\n", JudgeConfig).pairwise == "each-step"  # the flag alone
    assert yaml_config(tmp_path, "pairwise: false\n", JudgeConfig).pairwise == ""
    # Range rules do not care where a value came from.
    with pytest.raises(UserError, match=r"--batch-size must be at least 1 \(got 0\)"):
        check_training(yaml_config(tmp_path, "batch_size: 0\n", TrainingConfig, "--output-dir", str(tmp_path / "o")))


@pytest.mark.parametrize("content, message", [
    (b"lr: [unclosed\n", "not valid YAML"),
    (b"lr: caf\xe9\n", "not valid YAML"),
    (b"[" * 100_000, "nested too deeply"),
    (b"env: {A: [1]}\n", "`env` should be a mapping"),
    (None, "cannot read"),
])
def test_a_broken_or_unreadable_yaml_exits_2_without_a_traceback(tmp_path, capsys, content, message):
    path = tmp_path / "run.yaml"
    if content is not None:
        path.write_bytes(content)
    main = __import__("part1_instruction_finetuning").main
    with pytest.raises(SystemExit) as exit_:
        run_stage(main, build_parser(TrainingConfig, ""), [f"--config={path}", "--output-dir", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and message in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_config_given_as_one_word_is_read(tmp_path):
    (tmp_path / "run.yaml").write_text("lr: 0.002\n")
    assert parse_config(build_parser(TrainingConfig, ""), [f"--config={tmp_path / 'run.yaml'}"]).lr == 0.002


# --- C: data files ---------------------------------------------------------------------------------

def test_json_nested_a_hundred_thousand_deep_is_refused_naming_the_file(tmp_path):
    deep = "[" * 100_000 + "]" * 100_000
    for name in ("deep.json", "deep.jsonl"):
        (tmp_path / name).write_text(deep)
    for read in (lambda: read_json(tmp_path / "deep.json"), lambda: load_records(str(tmp_path / "deep.json")),
                 lambda: load_records(str(tmp_path / "deep.jsonl")), lambda: read_questions(tmp_path / "deep.jsonl")):
        with pytest.raises(UserError, match="deep.jsonl?(: line 1)?: JSON nested too deeply to read"):
            read()


def test_a_utf8_bom_is_accepted_everywhere(tmp_path):
    bom = b"\xef\xbb\xbf"
    (tmp_path / "a.json").write_bytes(bom + json.dumps([RECORD]).encode())
    (tmp_path / "a.jsonl").write_bytes(bom + json.dumps(RECORD).encode() + b"\n")
    (tmp_path / "a.csv").write_bytes(bom + b"instruction,input,output\nName a colour.,,Blue.\n")
    (tmp_path / "q.jsonl").write_bytes(bom + json.dumps(QUESTION).encode() + b"\n")
    for name in ("a.json", "a.jsonl", "a.csv"):
        assert load_records(str(tmp_path / name)) == [RECORD]
    assert read_json(tmp_path / "a.json") == [RECORD]
    assert read_questions(tmp_path / "q.jsonl")[0]["turns"] == QUESTION["turns"]


def test_a_latin1_file_is_refused_as_not_utf8_naming_file_and_byte(tmp_path):
    (tmp_path / "q.jsonl").write_bytes(json.dumps({**QUESTION, "category": "café"}, ensure_ascii=False).encode("latin-1"))
    (tmp_path / "a.json").write_bytes(json.dumps([{**RECORD, "output": "café"}], ensure_ascii=False).encode("latin-1"))
    with pytest.raises(UserError, match=r"q\.jsonl: not valid UTF-8 \(byte 35\)"):
        read_questions(tmp_path / "q.jsonl")
    with pytest.raises(UserError, match=r"a\.json: not valid UTF-8 \(byte 62\)"):
        read_json(tmp_path / "a.json")


def test_a_lone_surrogate_is_refused_naming_file_record_and_field(tmp_path):
    (tmp_path / "a.json").write_text(json.dumps([RECORD, {**RECORD, "input": "\ud800"}]))
    (tmp_path / "q.jsonl").write_text(json.dumps({**QUESTION, "turns": ["fine", "x\udfff"]}) + "\n")
    (tmp_path / "r.json").write_text(json.dumps([{**RECORD, "base_model_response": "\udc80", "finetuned_model_response": "ok"}]))
    with pytest.raises(UserError, match=r"a\.json: record 1: field 'input' holds a lone surrogate \(\\ud800\) at character 0"):
        load_records(str(tmp_path / "a.json"))
    with pytest.raises(UserError, match=r"q\.jsonl: line 1: field 'turns' holds a lone surrogate \(\\udfff\) at character 1"):
        read_questions(tmp_path / "q.jsonl")
    with pytest.raises(UserError, match=r"r\.json: record 0: field 'base_model_response' holds a lone surrogate"):
        read_responses(tmp_path / "r.json")


def test_a_question_id_that_is_a_list_is_named(tmp_path):
    (tmp_path / "q.jsonl").write_text(json.dumps({**QUESTION, "question_id": [1]}) + "\n" + json.dumps(QUESTION) + "\n")
    with pytest.raises(UserError, match=r"q\.jsonl: line 1: field 'question_id' must be a number or text"):
        read_questions(tmp_path / "q.jsonl")


def test_a_jsonl_line_may_hold_a_unicode_line_separator(tmp_path):
    record = {**RECORD, "output": "Blue.\u2028Or red."}
    (tmp_path / "a.jsonl").write_text(json.dumps(record, ensure_ascii=False) + "\n", encoding="utf-8")
    (tmp_path / "q.jsonl").write_text(json.dumps({**QUESTION, "turns": ["a\u2028b"]}, ensure_ascii=False) + "\n",
                                      encoding="utf-8")
    assert load_records(str(tmp_path / "a.jsonl")) == [record]
    assert read_questions(tmp_path / "q.jsonl")[0]["turns"] == ["a\u2028b"]


def test_a_csv_row_with_more_fields_than_the_header_is_named(tmp_path):
    (tmp_path / "a.csv").write_text("instruction,input,output\nName a colour.,,Blue.\nAdd,2,5,extra\n")
    with pytest.raises(UserError, match=r"a\.csv: record 1 \(line 3\): 4 fields, but the header has 3 columns"):
        load_records(str(tmp_path / "a.csv"))


def test_alpaca_and_dolly_names_for_one_field_must_agree(tmp_path):
    (tmp_path / "a.json").write_text(json.dumps([{**RECORD, "response": "Blue."},
                                                 {**RECORD, "input": "x", "context": "y"}]))
    with pytest.raises(UserError) as info:
        load_records(str(tmp_path / "a.json"))
    assert str(info.value) == f"{tmp_path / 'a.json'}: record 1: fields 'input' and 'context' (Dolly's name for it) differ; keep one"


def test_a_test_file_that_is_no_list_is_named(tmp_path):
    (tmp_path / "out" / "data").mkdir(parents=True)
    (tmp_path / "out" / "data" / "test.json").write_text("5")
    with pytest.raises(UserError, match=r"test\.json: expected a JSON list of records, found a number"):
        check_generation(parse_config(build_parser(GenerationConfig, ""), ["--models", "base", "--output-dir",
                                                                           str(tmp_path / "out")]))


@pytest.mark.parametrize("n_records, args, message", [
    (30, ["--test-fraction", "0.01"], "30 records would split into 28 to train on, 2 for validation and 0 for testing: "
                                      "--test-fraction 0.01 gives the test split none (0.034 or more gives it one)"),
    (3, ["--test-fraction", "0.4"], "3 records would split into 2 to train on, 0 for validation and 1 for testing: "
                                    "--val-fraction 0.05 gives the validation split none (0.334 or more gives it one)"),
])
def test_an_empty_split_is_refused_before_anything_is_written(tmp_path, capsys, n_records, args, message):
    data = tmp_path / "data.json"
    data.write_text(json.dumps([{**RECORD, "instruction": f"Task {i}."} for i in range(n_records)]))
    main = __import__("part1_instruction_finetuning").main
    code = run_stage(main, build_parser(TrainingConfig, ""), ["--data", str(data), *args, "--output-dir", str(tmp_path / "out")])
    assert code == 2 and capsys.readouterr().err == f"error: {message}\n"
    assert not (tmp_path / "out").exists()
    records = [{**RECORD, "instruction": f"Task {i}."} for i in range(3)]
    assert len(split_records(records, 0, 0.4, seed=1).val) == 0  # --val-fraction 0: no validation split, as asked


# --- D: the output folder ---------------------------------------------------------------------------

@pytest.mark.parametrize("stage", ["train", "synthesis", "generate", "benchmark", "judge"])
def test_an_output_folder_under_a_file_is_refused_before_anything_loads(tmp_path, stage):
    (tmp_path / "file").write_text("not a folder")
    message = refusal(stage, ["--output-dir", str(tmp_path / "file" / "out")])
    assert f"--output-dir {tmp_path / 'file' / 'out'}: {tmp_path / 'file'} is a file, not a folder" in message


def test_the_output_lock_names_a_folder_it_cannot_make(tmp_path):
    (tmp_path / "file").write_text("not a folder")
    with pytest.raises(UserError, match="cannot create output folder .*file/out: Not a directory"):
        with output_lock(tmp_path / "file" / "out", "train"):
            pass


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes to any folder: the file-parent tests stand in")
def test_a_folder_that_cannot_be_written_is_named(tmp_path):
    folder = tmp_path / "read-only"
    folder.mkdir(mode=0o500)
    try:
        with pytest.raises(UserError, match="cannot write to output folder .*read-only"):
            with output_lock(folder, "train"):
                pass
        assert "cannot write to" in refusal("train", ["--output-dir", str(folder)])
    finally:
        folder.chmod(0o700)


@pytest.mark.fast
def test_every_problem_of_a_responses_file_is_named_at_once(tmp_path):
    path = tmp_path / "responses.json"
    path.write_text(json.dumps([
        {"input": "", "output": "a", "base_model_response": "x", "finetuned_model_response": "y"},
        {"instruction": "i", "input": "", "output": "a", "base_model_response": 5, "finetuned_model_response": "y"},
        "not a record",
        {"instruction": "i", "input": "", "output": "a", "finetuned_model_response": "y"}]))
    with pytest.raises(UserError) as error:
        read_responses(path)
    assert str(error.value).splitlines() == [
        f"{path}: record 0: missing field 'instruction'",
        f"{path}: record 2: expected an object, found str",
        f"{path}: record 1: field 'base_model_response' must be text or null, found int",
        f"{path}: record 3: missing field 'base_model_response' (rerun stage 2)"]
