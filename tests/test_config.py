"""The command line and the shared config pieces: every script answers --help and refuses a bad
input before torch loads; flags parse as TRL's parser parsed them; inputs are compared by content."""

import json
import os
import shutil
import subprocess
import sys

import pytest

from conftest import PROJECT_DATA, ROOT
from instructkit.cli import build_parser, parse_config
from instructkit.data.synthesis_config import SynthesisConfig
from instructkit.generate.config import GenerationConfig
from instructkit.judge.config import JudgeConfig
from instructkit.runs.fingerprints import path_input, same_input, same_settings, stale_on_disk
from instructkit.train.config import TrainingConfig

pytestmark = pytest.mark.fast

SCRIPTS = sorted(p.name for p in ROOT.glob("part[0-9]*_*.py"))  # part1b too
HEAVY = ("torch", "transformers", "trl", "peft", "datasets", "gradio", "lm_eval")


def _modules_after(script: str, *args: str) -> tuple[subprocess.CompletedProcess, set[str]]:
    """Run a stage script in-process in a fresh interpreter and list the heavy modules it imported."""
    code = (f"import runpy, sys; sys.argv = [{script!r}, *{list(args)!r}]\n"
            "try:\n    runpy.run_path(sys.argv[0], run_name='__main__')\n"
            "except SystemExit as exc:\n    code = exc.code\nelse:\n    code = 0\n"
            f"print('HEAVY', sorted(m for m in {HEAVY!r} if m in sys.modules)); sys.exit(code)")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    heavy = set(json.loads(done.stdout.rsplit("HEAVY ", 1)[1].replace("'", '"')))
    return done, heavy


@pytest.mark.parametrize("script", SCRIPTS)
def test_help_answers_without_importing_torch(script):
    done, heavy = _modules_after(script, "--help")
    assert done.returncode == 0 and "--output-dir" in done.stdout
    assert not heavy, f"{script} --help imported {heavy}"


@pytest.mark.parametrize("script, args, message", [
    ("part1_instruction_finetuning.py", ["--data", "BAD"], "record 0: missing field 'output'"),
    ("part2_generate_test_responses.py", ["--adapter", "NOWHERE"], "NOWHERE: no adapter_config.json"),
    ("part4_local_evaluation.py", ["--input", "BAD"], "record 0: missing field 'output'"),
    ("part4_local_evaluation.py", ["--judge", "openai:x", "--scoring", "probability"], "use an hf: judge"),
    ("part0_generate_instruction_data.py", ["--method", "curate"], "needs --data FILE"),
    ("part1b_preference_tuning.py", ["--data", "BAD"], "record 0: missing field 'chosen'"),
    ("part1b_preference_tuning.py", ["--adapter", "NOWHERE"], "NOWHERE: no adapter_config.json"),
    ("part1b_preference_tuning.py", ["--method", "kto", "--batch-size", "1", "--loss-type", "ipo"],
     "--loss-type ipo is not a kto loss; use one of kto, apo_zero_unpaired\n--method kto needs --batch-size 2"),
])
def test_bad_input_is_refused_before_torch_loads(tmp_path, script, args, message):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{"instruction": "x"}]))
    args = [str(bad) if a == "BAD" else str(tmp_path / a) if a == "NOWHERE" else a for a in args]
    done, heavy = _modules_after(script, *args, "--output-dir", str(tmp_path / "out"))
    assert done.returncode == 2 and message in done.stderr, done.stderr[-2000:]
    assert not heavy, f"{script} imported {heavy} before refusing"
    assert not (tmp_path / "out").exists()


def test_flags_parse_as_trl_parsed_them(tmp_path):
    parser = build_parser(TrainingConfig, "")
    config = parse_config(parser, ["--overwrite", "--no-padding-free", "--merge", "false", "--lr", "1e-3"])
    assert (config.overwrite, config.padding_free, config.merge, config.lr) == (True, False, False, 1e-3)
    compare = parse_config(build_parser(GenerationConfig, ""), ["--compare", "a=b", "c=d"]).compare
    assert compare == ["a=b", "c=d"]
    judge = build_parser(JudgeConfig, "")
    assert parse_config(judge, ["--pairwise"]).pairwise == "each-step"
    assert parse_config(judge, ["--pairwise", "a:b"]).pairwise == "a:b"
    assert parse_config(build_parser(SynthesisConfig, ""), ["--temperature", "none"]).temperature is None
    assert parse_config(build_parser(SynthesisConfig, ""), ["--temperature", "0.5"]).temperature == 0.5


def test_yaml_config_sets_defaults_that_flags_override_and_unknown_keys_are_refused(tmp_path, monkeypatch, capsys):
    good = tmp_path / "run.yaml"
    good.write_text("lr: 0.002\nmax_steps: 3\nenv:\n  INSTRUCTKIT_TEST_ENV: set\n")
    monkeypatch.delenv("INSTRUCTKIT_TEST_ENV", raising=False)
    config = parse_config(build_parser(TrainingConfig, ""), ["--config", str(good), "--max-steps", "5"])
    assert (config.lr, config.max_steps) == (0.002, 5)
    assert os.environ["INSTRUCTKIT_TEST_ENV"] == "set"
    for text, message in [("lr: 0.1\nlearning_rate: 3\n", "Unknown arguments from config file: ['--learning_rate']"),
                          ("lr: [unclosed\n", "not valid YAML"), ("- a list\n", "must contain a YAML mapping")]:
        good.write_text(text)
        with pytest.raises(SystemExit) as exit_:
            parse_config(build_parser(TrainingConfig, ""), ["--config", str(good)])
        assert exit_.value.code == 2 and message in capsys.readouterr().err


def test_a_file_or_folder_is_its_content(tmp_path):
    moved = tmp_path / "elsewhere" / "data.json"
    moved.parent.mkdir()
    shutil.copy(PROJECT_DATA, moved)
    assert same_input(path_input(PROJECT_DATA), path_input(moved))  # a moved checkout, a copied file
    moved.write_text("[]")
    assert not same_input(path_input(PROJECT_DATA), path_input(moved))
    # Two task folders whose YAMLs differ only in a subfolder are two inputs; equal ones are one.
    for name in ("a", "b", "c"):
        (tmp_path / name / "sub").mkdir(parents=True)
        (tmp_path / name / "sub" / "task.yaml").write_text("b" if name == "c" else name)
    assert not same_input(path_input(tmp_path / "a"), path_input(tmp_path / "b"))
    assert same_input(path_input(tmp_path / "b"), path_input(tmp_path / "c"))
    # A setting that only names an input file is judged through that file's fingerprint.
    assert same_settings({"data": "/old/checkout/x.json", "lr": 1}, {"data": "/new/x.json", "lr": 1})
    assert not same_settings({"data": "x.json", "lr": 1}, {"data": "x.json", "lr": 2})


def test_the_report_flags_an_input_that_changed_not_one_that_moved(tmp_path):
    data = tmp_path / "data.json"
    data.write_text("[1]")
    recorded = {"data": path_input(data)}
    assert stale_on_disk(recorded) == []
    data.write_text("[2]")
    assert len(stale_on_disk(recorded)) == 1
    data.unlink()
    assert stale_on_disk(recorded) == []
