"""Reruns you can trust: a whole run in its own folder (stages 1-4 on the tiny random-weight Llama,
base and judge: the mechanics, not the weights, are tested here), reused while nothing
changed, redone stage by stage when stage 1 is retrained with another flag, and a killed retraining
that leaves the previous adapter in place. Plus the clear errors of bad inputs."""

import hashlib
import html
import json
import logging
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT, kill_at_checkpoint, run_stage
from instructkit.errors import UserError

STAGE1 = ["--max-steps", "2", "--batch-size", "2", "--eval-steps", "1", "--val-fraction", "0.02", "--lora-dropout", "0"]
STAGES = {  # script, arguments beyond --output-dir: small but real (stage 4's judge: see `stage`)
    2: ("part2_generate_test_responses.py", ["--limit", "2", "--max-new-tokens", "12", "--batch-size", "2"]),
    3: ("part3_benchmark_evaluation.py", ["--limit", "2"]),
    4: ("part4_local_evaluation.py", ["--limit", "2", "--scoring", "probability"]),
}
OUTPUTS = {2: "test_base_model.json", 3: "benchmark_results.json", 4: "judge_scores.json"}
POISON = {  # another run in ./outputs, damaged so that reading any of it fails loudly
    "data/test.json": "not json", "finetuned/adapter_config.json": "{", "finetuned/training_summary.json": "{",
    "finetuned/prompt_style.json": "{", "test_base_model.json": "[", "judge_scores.json": "{",
}


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    """The current directory of every command here: its ./outputs holds a damaged other run."""
    work = tmp_path_factory.mktemp("work")
    for name, text in POISON.items():
        (work / "outputs" / name).parent.mkdir(parents=True, exist_ok=True)
        (work / "outputs" / name).write_text(text)
    return work


def run_in(workdir: Path, script: str, *args: str) -> subprocess.CompletedProcess:
    result = run_stage(script, *args, cwd=workdir)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    return result


def stage(workdir: Path, run: Path, number: int, judge: str) -> subprocess.CompletedProcess:
    script, args = STAGES[number]
    return run_in(workdir, script, "--output-dir", str(run), *args, *(["--judge", f"hf:{judge}"] if number == 4 else []))


def _state(folder: Path) -> dict:
    return {p: (p.stat().st_mtime_ns, p.read_text()) for p in folder.rglob("*") if p.is_file()}


def test_one_folder_is_one_run_reused_while_unchanged_and_redone_after_retraining(workdir, tiny_llama):
    run = workdir / "runs" / "lr-test"
    poison_state = _state(workdir / "outputs")
    stage1 = [*STAGE1, "--base-model", tiny_llama]

    # 1. The whole pipeline with --output-dir alone: every stage reads the folder it writes.
    run_in(workdir, "part1_instruction_finetuning.py", "--output-dir", str(run), *stage1, "--lr", "2e-3")
    for number in STAGES:
        stage(workdir, run, number, tiny_llama)
    for number, name in OUTPUTS.items():
        meta = json.loads((run / name.replace(".json", ".meta.json")).read_text())
        paths = [entry["path"] for entry in meta["inputs"].values() if "sha256" in entry]
        assert paths and all(str(workdir / "outputs") not in p for p in paths), (number, paths)
    assert json.loads((run / OUTPUTS[2].replace(".json", ".meta.json")).read_text())["inputs"]["test_file"]["path"] == \
        str((run / "data" / "test.json").resolve())
    assert _state(workdir / "outputs") == poison_state

    # 2. Nothing changed: every stage reuses its output.
    before = {n: sha(run / name) for n, name in OUTPUTS.items()}
    for number in STAGES:
        assert "already finished" in stage(workdir, run, number, tiny_llama).stdout
    assert {n: sha(run / name) for n, name in OUTPUTS.items()} == before

    # 2b. A copy of the folder is the same run: nothing is redone there either (identity is content).
    copy = workdir / "runs" / "lr-test-copy"
    shutil.copytree(run, copy, symlinks=True)
    assert "already finished" in run_in(workdir, "part1_instruction_finetuning.py", "--output-dir", str(copy), *stage1,
                                        "--lr", "2e-3").stdout
    for number in STAGES:
        assert "already finished" in stage(workdir, copy, number, tiny_llama).stdout, number
    shutil.rmtree(copy)

    # 3. Retrain with another learning rate, killed after its first checkpoint: the old run stands.
    adapter = run / "finetuned" / "adapter_model.safetensors"
    old_adapter, old_summary = sha(adapter), (run / "finetuned" / "training_summary.json").read_text()
    command = [sys.executable, str(ROOT / "part1_instruction_finetuning.py"), "--output-dir", str(run), *stage1,
               "--lr", "1e-5"]
    kill_at_checkpoint(command, workdir, run, 1)
    assert sha(adapter) == old_adapter and (run / "finetuned" / "training_summary.json").read_text() == old_summary
    from peft import PeftModel

    from instructkit.models.loading import load_causal_lm
    from instructkit.models.references import resolve_model

    PeftModel.from_pretrained(load_causal_lm(resolve_model(tiny_llama)), run / "finetuned")  # the previous adapter still loads
    assert "already finished" in stage(workdir, run, 2, tiny_llama).stdout  # and later stages still stand on it

    # 4. The rerun resumes the retraining and swaps it in; the report flags what it invalidated.
    retrain = run_in(workdir, *command[1:])
    assert "settings changed since the adapter was trained (lr: 0.002 -> 1e-05): training again" in retrain.stdout
    summary = json.loads((run / "finetuned" / "training_summary.json").read_text())
    assert summary["resumed"] is True and summary["settings"]["lr"] == 1e-5 and summary["steps"] == 2
    assert sha(adapter) != old_adapter and not (run / ".stage1.partial").exists()
    assert not (run / "finetuned" / "checkpoints").exists()
    from instructkit.report.build import build_report

    page = build_report(run).read_text()
    assert page.count('class="stale"') == 4  # stage 2's records, stage 3, stage 4's task metrics and judge (on stage 2)
    assert f"{(run / 'finetuned').resolve()} changed since test_base_model.json was made" in page

    # 5. Each later stage says why and does its work again, keeping what the retraining cannot change:
    # the base model's responses, and the judge's scores of them.
    old_rows = json.loads((run / OUTPUTS[2]).read_text())
    second = stage(workdir, run, 2, tiny_llama).stdout
    assert "finetuned changed since test_base_model.json was made: generating again" in second
    assert "reusing the base model's 2 responses" in second
    rows = json.loads((run / OUTPUTS[2]).read_text())
    assert [r["base_model_response"] for r in rows] == [r["base_model_response"] for r in old_rows]
    assert [r["finetuned_model_response"] for r in rows] != [r["finetuned_model_response"] for r in old_rows], \
        "the retrained adapter answers differently"
    third = stage(workdir, run, 3, tiny_llama).stdout
    assert "finetuned changed since benchmark_results.json was made: evaluating again" in third
    assert "[base] reusing its evaluation" in third and "[base] lm-eval" not in third and "[finetuned] lm-eval" in third
    fourth = stage(workdir, run, 4, tiny_llama).stdout
    assert "test_base_model.json changed since judge_scores.json was made: judging again" in fourth
    assert "reusing 2 judgements" in fourth  # the base responses' scores; the finetuned ones are asked again
    meta = json.loads((run / "judge_scores.meta.json").read_text())
    assert meta["items_judged_this_run"] == 2
    assert 'class="stale"' not in (run / "report.html").read_text()
    assert _state(workdir / "outputs") == poison_state


def test_stage1_refusing_to_resume_writes_nothing(tmp_path):
    """Checkpoints of an interrupted run with other settings: refused before the split is written."""
    from instructkit.runs.fingerprints import reference_input
    from instructkit.train.config import DEFAULT_DATA
    from instructkit.train.sft import TrainingConfig, run_settings

    checkpoints = tmp_path / ".stage1.partial" / "finetuned" / "checkpoints"
    (checkpoints / "checkpoint-1").mkdir(parents=True)
    (checkpoints / "checkpoint-1" / "trainer_state.json").write_text("{}")
    (checkpoints / "run_config.json").write_text(json.dumps(
        {"settings": run_settings(TrainingConfig(max_steps=1, lr=9.0)), "inputs": {"data": reference_input(DEFAULT_DATA)}}))
    result = run_stage("part1_instruction_finetuning.py", "--output-dir", str(tmp_path), "--max-steps", "1")
    assert result.returncode == 2, result.stderr[-3000:]
    assert "holds checkpoints of an interrupted run with other settings (lr: 9.0 -> 0.0005" in result.stderr
    assert "--restart" in result.stderr
    assert not (tmp_path / "data").exists() and not (tmp_path / ".stage1.partial" / "data").exists()
    assert not (tmp_path / "finetuned").exists()


# --- clear errors instead of tracebacks or silence -------------------------------------------------

def _responses(path: Path) -> Path:
    path.write_text(json.dumps([{"instruction": "Name a colour.", "input": "", "output": "Blue.",
                                 "base_model_response": "Red.", "finetuned_model_response": "Blue."}]))
    return path


@pytest.mark.fast
@pytest.mark.parametrize("ratings, expected", [
    ({"ratings": [{"index": 0, "model": "finetuned"}]}, "rating 0: missing field 'rating'"),
    ({"ratings": [{"index": 0, "model": "Other model", "rating": 50}]}, "rating 0: field 'model' is 'Other model'"),
    ({"ratings": [{"index": -1, "model": "base", "rating": 50}]}, "rating 0: field 'index' is -1"),
    ({"ratings": [{"index": 0, "model": "base", "rating": "good"}]}, "rating 0: field 'rating' is 'good'"),
    ({"ratings": [{"index": 0, "model": "base", "rating": 50}, "70"]}, "rating 1: expected an object, found str"),
    ({"scores": []}, "expected an object with a 'ratings' list"),
])
def test_malformed_human_ratings_name_the_file_the_entry_and_the_field(tmp_path, ratings, expected):
    from instructkit.judge.human import read_human_ratings
    from instructkit.report.build import build_report

    bad = tmp_path / "human_ratings.json"
    bad.write_text(json.dumps(ratings))
    with pytest.raises(UserError, match=re.escape(f"{bad}: {expected}")):
        read_human_ratings(bad)
    assert html.escape(expected) in build_report(tmp_path).read_text()  # the page shows the problem instead of failing


def test_malformed_human_ratings_stop_stage4_before_any_work(tmp_path):
    bad = tmp_path / "human_ratings.json"
    bad.write_text(json.dumps({"ratings": [{"index": 0, "model": "finetuned"}]}))
    responses = _responses(tmp_path / "responses.json")
    for args in (["--compare-with", str(bad), "--output-dir", str(tmp_path / "o")], ["--human", "--output-dir", str(tmp_path)]):
        result = run_stage("part4_local_evaluation.py", "--input", str(responses), *args, input="q\n")
        assert result.returncode == 2 and "Traceback" not in result.stderr
        assert f"{bad}: rating 0: missing field 'rating'" in result.stderr, result.stderr
    assert not (tmp_path / "o").exists()


@pytest.mark.fast
def test_offline_mmlu_row_without_four_choices_names_file_and_row(tmp_path, monkeypatch):
    from instructkit.evaluate import benchmark

    questions = tmp_path / "questions"
    questions.mkdir()
    (questions / "philosophy_test.csv").write_text('"Q1?",a,b,c,d,A\n"Q2?",a,b,c,B\n')
    monkeypatch.setattr(benchmark, "mmlu_questions_dir", lambda: questions)
    with pytest.raises(UserError, match=r"philosophy_test.csv: row 2: expected a question, four choices and an answer"):
        benchmark.resolve_tasks(benchmark.BenchmarkConfig(), offline=True, workdir=tmp_path / "tasks")


@pytest.mark.fast
def test_hub_failure_keeps_the_underlying_error(monkeypatch):
    import datasets

    from instructkit.data.records import load_records

    def unreachable(*args, **kwargs):
        raise ConnectionError("Couldn't reach 'someone/some-data' on the Hub (LocalEntryNotFoundError)")

    monkeypatch.setattr(datasets, "load_dataset", unreachable)
    with pytest.raises(UserError, match=r"ConnectionError: Couldn't reach 'someone/some-data' on the Hub"):
        load_records("someone/some-data")


@pytest.mark.fast
def test_bitsandbytes_optional_kernel_notice_does_not_reach_users(caplog):
    import instructkit  # noqa: F401  (installs the filter)

    logger = logging.getLogger("bitsandbytes.backends.cpu.ops")
    with caplog.at_level(logging.WARNING):
        logger.warning("Failed to load CPU gemm_4bit_forward from kernels-community: %s.", "No module named 'kernels'")
        logger.warning("a real bitsandbytes warning")
    assert [r.getMessage() for r in caplog.records] == ["a real bitsandbytes warning"]
