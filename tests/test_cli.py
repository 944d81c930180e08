"""The stage-1 command line: --help, YAML config with flag overrides, and bad input that exits
non-zero with a message naming file, record and field, writing nothing."""

import json

import pytest

from conftest import run_script
from instructkit.cli import build_parser, parse_config, run_stage
from instructkit.train.sft import TrainingConfig


def test_help_lists_every_flag():
    result = run_script("part1_instruction_finetuning.py", "--help")
    assert result.returncode == 0
    for flag in ("--base-model", "--data", "--prompt-style", "--output-dir", "--epochs", "--max-steps", "--batch-size",
                 "--grad-accum", "--lr", "--max-length", "--lora-r", "--lora-alpha", "--qlora", "--packing", "--padding-free",
                 "--val-fraction", "--test-fraction", "--seed", "--merge", "--restart", "--overwrite", "--config",
                 "--early-stopping-patience"):
        assert flag in result.stdout, flag
    assert "python part1_instruction_finetuning.py --base-model meta-llama/Meta-Llama-3-8B" in result.stdout


@pytest.mark.fast
def test_yaml_config_is_overridden_by_flags(tmp_path):
    config_file = tmp_path / "run.yaml"
    config_file.write_text("lr: 0.002\nlora_r: 4\nprompt_style: phi3\n")
    config = parse_config(build_parser(TrainingConfig, ""), ["--config", str(config_file), "--lora-r", "8"])
    assert (config.lr, config.lora_r, config.prompt_style) == (0.002, 8, "phi3")


@pytest.mark.fast
def test_a_list_flag_adds_up_when_repeated_and_replaces_the_files_list(tmp_path):
    from instructkit.judge.config import JudgeConfig

    parser = build_parser(JudgeConfig, "")
    assert parse_config(parser, ["--metric", "bleu", "--metric", "chrf", "rouge_l"]).metric == ["bleu", "chrf", "rouge_l"]
    config_file = tmp_path / "run.yaml"
    config_file.write_text("metric: [sql-execution]\n")
    assert parse_config(build_parser(JudgeConfig, ""), ["--config", str(config_file)]).metric == ["sql-execution"]
    flagged = parse_config(build_parser(JudgeConfig, ""), ["--config", str(config_file), "--metric", "bleu", "--metric", "chrf"])
    assert flagged.metric == ["bleu", "chrf"]
    assert parse_config(build_parser(JudgeConfig, ""), []).metric == []
    parser = build_parser(JudgeConfig, "")  # one parser, parsed twice (a namespace's address can be reused)
    for _ in range(2):
        assert parse_config(parser, ["--config", str(config_file), "--metric", "bleu"]).metric == ["bleu"]


@pytest.mark.fast
def test_yaml_with_an_unknown_key_is_rejected(tmp_path, capsys):
    config_file = tmp_path / "run.yaml"
    config_file.write_text("learning_rate_typo: 0.1\n")
    with pytest.raises(SystemExit) as info:
        parse_config(build_parser(TrainingConfig, ""), ["--config", str(config_file)])
    assert info.value.code == 2
    assert "learning_rate_typo" in capsys.readouterr().err


@pytest.mark.fast
@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("", "file is empty"),
        ("[{oops", "not valid JSON"),
        ('[{"input": "", "output": "y"}]', "record 0: missing field 'instruction'"),
        ('[{"instruction": "x", "input": "", "output": 42}]', "record 0: field 'output' must be text, found int"),
    ],
)
def test_malformed_data_exits_2_and_writes_nothing(tmp_path, capsys, content, expected):
    data = tmp_path / "bad.json"
    data.write_text(content)
    out = tmp_path / "outputs"
    main = __import__("part1_instruction_finetuning").main
    code = run_stage(main, build_parser(TrainingConfig, ""), ["--data", str(data), "--output-dir", str(out)])
    assert code == 2
    err = capsys.readouterr().err
    assert str(data) in err and expected in err
    assert not out.exists()


def test_bad_input_through_the_real_script(tmp_path):
    data = tmp_path / "bad.json"
    data.write_text(json.dumps([{"instruction": "ok", "output": "ok"}, {"instruction": None, "output": "y"}]))
    result = run_script("part1_instruction_finetuning.py", "--data", str(data), "--output-dir", str(tmp_path / "o"))
    assert result.returncode == 2
    assert f"{data}: record 1: missing field 'instruction'" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "o").exists()


@pytest.mark.fast
def test_unknown_base_model_is_a_clear_error(tmp_path, capsys):
    main = __import__("part1_instruction_finetuning").main
    code = run_stage(main, build_parser(TrainingConfig, ""), ["--base-model", "no-such-model", "--output-dir", str(tmp_path / "o")])
    assert code == 2
    assert "model 'no-such-model' is not an embedded name" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


@pytest.mark.fast
def test_report_to_a_tracker_that_is_not_installed_is_a_clear_error(tmp_path, capsys):
    import importlib.util

    if importlib.util.find_spec("tensorboard") is not None:
        pytest.skip("tensorboard is installed here; the message is for a machine without it")
    main = __import__("part1_instruction_finetuning").main
    code = run_stage(main, build_parser(TrainingConfig, ""), ["--report-to", "tensorboard", "--output-dir", str(tmp_path / "o")])
    assert code == 2
    assert "--report-to tensorboard needs the tensorboard package: pip install tensorboard" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
