"""Files we did not write: a checkpoint that would run code when unpickled, a run folder copied
elsewhere, the progress log of a run that crashed on a bad setting, and failed requests that must
not pass for results. Each case is one a user or an attacker met (issue 26)."""

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch

from conftest import ROOT
from instructkit.errors import UserError
from instructkit.judge.judges import litgpt_checkpoint
from instructkit.runs.fingerprints import path_input, same_input
from instructkit.runs.reuse import meta_path, open_work, progress_path


class RunsCode:
    """Unpickling this runs a shell command: what a hostile lit_model.pth holds."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture
def hostile_checkpoint(tmp_path):
    folder = tmp_path / "judge"
    folder.mkdir()
    marker = tmp_path / "code-ran"
    torch.save({"model": {"weight": torch.zeros(2), "payload": RunsCode(marker)}}, folder / "lit_model.pth")
    (folder / "model_config.yaml").write_text("name: pythia-14m\n")
    return folder, marker


@pytest.mark.fast
def test_a_checkpoint_that_would_run_code_is_refused_before_it_is_read(hostile_checkpoint):
    folder, marker = hostile_checkpoint
    with pytest.raises(UserError) as error:
        litgpt_checkpoint(str(folder))
    message = str(error.value)
    assert str(folder / "lit_model.pth") in message and "posix.system" in message and "--trust-remote-code" in message
    assert not marker.exists()


@pytest.mark.fast
def test_a_checkpoint_of_plain_tensors_is_accepted_and_trust_lifts_the_check(tmp_path, hostile_checkpoint):
    plain = tmp_path / "plain"
    plain.mkdir()
    torch.save({"model": {"transformer.wte.weight": torch.zeros(4, 2)}}, plain / "lit_model.pth")
    assert litgpt_checkpoint(str(plain)) == plain
    folder, marker = hostile_checkpoint
    assert litgpt_checkpoint(str(folder), trust_remote_code=True) == folder  # the user's word: not inspected
    assert not marker.exists()


def test_stage4_refuses_a_hostile_litgpt_judge_with_exit_2_and_runs_nothing(hostile_checkpoint, tmp_path):
    folder, marker = hostile_checkpoint
    responses = tmp_path / "responses.json"
    responses.write_text(json.dumps([{"instruction": "Say hi.", "input": "", "output": "Hi.",
                                      "base_model_response": "Hi.", "finetuned_model_response": "Hello."}]))
    result = subprocess.run([sys.executable, str(ROOT / "part4_local_evaluation.py"), "--input", str(responses),
                             "--output-dir", str(tmp_path / "out"), "--judge", f"litgpt:{folder}"],
                            cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2, result.stderr[-2000:]
    assert "holds more than tensors" in result.stderr and "Traceback" not in result.stderr
    assert not marker.exists() and not (tmp_path / "out" / "judge_scores.json").exists()


@pytest.mark.fast
def test_a_copied_folder_is_the_same_input_and_a_changed_nested_file_is_not(tmp_path):
    adapter = tmp_path / "run1" / "finetuned"
    (adapter / "checkpoints" / "checkpoint-2").mkdir(parents=True)
    (adapter / "adapter_model.safetensors").write_bytes(b"weights")
    (adapter / "adapter_config.json").write_text("{}")
    (adapter / "checkpoints" / "checkpoint-2" / "optimizer.bin").write_bytes(b"state")  # an artifact of its own
    tasks = tmp_path / "tasks"
    (tasks / "common").mkdir(parents=True)
    (tasks / "task.yaml").write_text("include: common/base.yaml\n")
    (tasks / "common" / "base.yaml").write_text("num_fewshot: 0\n")

    recorded = path_input(adapter)
    shutil.copytree(tmp_path / "run1", tmp_path / "run2")
    assert same_input(recorded, path_input(tmp_path / "run2" / "finetuned"))
    (tmp_path / "run2" / "finetuned" / "checkpoints" / "checkpoint-2" / "optimizer.bin").write_bytes(b"other")
    assert same_input(recorded, path_input(tmp_path / "run2" / "finetuned"))
    (tmp_path / "run2" / "finetuned" / "adapter_config.json").write_text('{"r": 8}')
    assert not same_input(recorded, path_input(tmp_path / "run2" / "finetuned"))

    before = path_input(tasks)
    (tasks / "common" / "base.yaml").write_text("num_fewshot: 5\n")  # an included file deeper down
    assert not same_input(before, path_input(tasks))


def _open(final, settings, **flags):
    return open_work(final, settings, {"data": {"path": "x", "sha256": "1"}}, overwrite=flags.get("overwrite", False),
                     restart=False, stage="test stage", verb="working")


@pytest.mark.fast
def test_a_log_without_results_from_other_settings_blocks_nothing(tmp_path, capsys):
    final = tmp_path / "out.json"
    _open(final, {"batch_size": 0})  # a run that crashed on its bad setting before any result
    work = _open(final, {"batch_size": 1})
    assert "holds no results: starting afresh" in capsys.readouterr().out
    work.progress.settle([(("a",), "done")], failed=lambda v: False)
    with pytest.raises(UserError, match="partial results made with other settings"):
        _open(final, {"batch_size": 2})  # with a result in it, the log is worth keeping


@pytest.mark.fast
def test_failed_requests_are_not_results_and_the_rerun_asks_only_them(tmp_path, capsys):
    final = tmp_path / "out.json"
    failed = lambda value: "error" in value  # noqa: E731
    work = _open(final, {"n": 1})
    work.progress.settle([(("a",), {"value": 1}), (("b",), {"error": "APIConnectionError: refused"})], failed)
    assert work.progress.results() == {("a",): {"value": 1}, ("b",): {"error": "APIConnectionError: refused"}}
    work.finish({"a": 1, "b": None}, {})
    assert "1 requests got no answer (APIConnectionError: refused)" in capsys.readouterr().out
    assert json.loads(meta_path(final).read_text())["failed_items"] == 1 and progress_path(final).is_file()

    again = _open(final, {"n": 1})
    assert again.progress is not None, "an output with failed requests is not finished"
    assert set(again.progress.done) == {("a",)}  # what was answered is kept
    assert "1 requests got no answer when out.json was made" in capsys.readouterr().out
    again.progress.settle([(("b",), {"error": "APIConnectionError: refused"})], failed)
    with pytest.raises(UserError, match="every request of this run failed"):
        again.finish({"a": 1, "b": None}, {})
    third = _open(final, {"n": 1})
    third.progress.settle([(("b",), {"value": 2})], failed)
    third.finish({"a": 1, "b": 2}, {})
    assert "failed_items" not in json.loads(meta_path(final).read_text()) and not progress_path(final).exists()
    assert _open(final, {"n": 1}).progress is None  # finished at last


@pytest.mark.fast
def test_a_hand_cut_artifact_costs_its_section_not_the_report(tmp_path):
    from instructkit.report.build import build_report

    (tmp_path / "judge_scores.json").write_text('{"records": []}')  # no "judge", no "summary"
    (tmp_path / "task_metrics.json").write_text('{"summary": {"base": 7}}')
    page = build_report(tmp_path).read_text()
    assert page.count("is not as its stage writes it") == 2 and "KeyError: &#x27;judge&#x27;" in page
    assert "Training (stage 1)" in page and "has not run here" in page  # the other sections stand
