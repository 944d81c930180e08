"""Stage 2: what only real weights show (the finetune answers otherwise than the base, cleanly) on
the embedded model and conftest.trained_run's adapter; the mechanics (the file and its sidecar, a
killed run resumed, reuse, limits, refusals, merged weights, decoding in spans) on the tiny Llama's
run, conftest.tiny_trained_run."""

import importlib.util
import json
import shutil
import sys
from pathlib import Path

import pytest

from conftest import ROOT, answered, kill_when, run_stage, stage2_args
from instructkit.generate.generator import clean_response, length_sorted_batches

# The test record's own fields as the split has them (our default data names each record's category),
# then the two responses.
KEYS = ["instruction", "input", "output", "category", "base_model_response", "finetuned_model_response"]



def test_one_record_per_test_record_in_order_with_its_fields_and_both_responses(tiny_trained_run, tiny_responses_dir):
    rows = json.loads((tiny_responses_dir / "test_base_model.json").read_text())
    test = json.loads((tiny_trained_run / "data" / "test.json").read_text())[:6]
    assert [list(row) for row in rows] == [KEYS] * 6
    assert [{k: row[k] for k in KEYS[:4]} for row in rows] == test
    assert all(isinstance(row["base_model_response"], str) and isinstance(row["finetuned_model_response"], str) for row in rows)


def test_finetuned_responses_differ_from_base(responses_dir):
    rows = json.loads((responses_dir / "test_base_model.json").read_text())
    assert sum(row["base_model_response"] != row["finetuned_model_response"] for row in rows) >= 3


def test_responses_are_clean(responses_dir):
    for row in json.loads((responses_dir / "test_base_model.json").read_text()):
        for key in ("base_model_response", "finetuned_model_response"):
            assert "### Instruction:" not in row[key] and "### Response:" not in row[key]
            assert row[key] == row[key].strip()
            assert not row[key].startswith("Below is an instruction"), "prompt echo must be removed"


def test_sidecar_holds_settings_timings_and_versions(tiny_responses_dir):
    meta = json.loads((tiny_responses_dir / "test_base_model.meta.json").read_text())
    assert meta["settings"]["max_new_tokens"] == 32 and meta["settings"]["limit"] == 6
    assert meta["prompt_style"] == "alpaca" and meta["n_records"] == 6
    assert set(meta["timings"]) == {"base", "finetuned"}
    assert meta["timings"]["base"]["generated_tokens"] > 0
    assert meta["versions"]["transformers"]
    assert not list(tiny_responses_dir.glob(".*progress*")), "the progress file is removed once the output is final"


# Enough batches that a kill lands mid-run even on the tiny model (about 50 ms a record); two records
# a batch, so that a resume must keep the batches the whole turn's lengths made.
KILL_RECORDS = 24
KILL_ARGS = ["--limit", str(KILL_RECORDS), "--max-new-tokens", "32", "--batch-size", "2"]


@pytest.fixture(scope="module")
def uninterrupted(tiny_trained_run, tmp_path_factory) -> Path:
    """Stage 2 with KILL_ARGS on the tiny run, never interrupted: what a resumed run must equal."""
    return answered(tiny_trained_run, tmp_path_factory.mktemp("uninterrupted"), *KILL_ARGS)


# records done when killed: 8 of base's 24; all 24 and 4 of finetuned's
@pytest.mark.parametrize("logged, overwrite", [(8, False), (KILL_RECORDS + 4, True)])
def test_killed_run_resumes_to_the_same_file(tiny_trained_run, uninterrupted, tmp_path, logged, overwrite):
    """SIGKILL once `logged` records are in the progress file; the rerun must equal the uninterrupted run.
    With --overwrite over a finished output, the rerun with --overwrite resumes too: the flag declines
    the finished file, never the partial work of the run it started."""
    extra = []
    if overwrite:
        for name in ("test_base_model.json", "test_base_model.meta.json"):
            shutil.copy(uninterrupted / name, tmp_path / name)
        extra = ["--overwrite"]
    args = [*stage2_args(tiny_trained_run, tmp_path), *KILL_ARGS, *extra]
    progress = tmp_path / ".test_base_model.json.progress.jsonl"
    kill_when([sys.executable, str(ROOT / "part2_generate_test_responses.py"), *args], ROOT,
              lambda: progress.is_file() and progress.read_text().count("\n") - 1 >= logged)  # after the settings line
    meta_path = tmp_path / "test_base_model.meta.json"
    assert overwrite or not (tmp_path / "test_base_model.json").exists(), "killed too late to test resuming"
    assert not overwrite or json.loads(meta_path.read_text()) == json.loads((uninterrupted / meta_path.name).read_text()), \
        "killed too late to test resuming"
    second = run_stage("part2_generate_test_responses.py", *args)  # the kill was the subject; the rerun is not
    assert second.returncode == 0, second.stderr[-3000:]
    assert "resuming from" in second.stdout
    meta = json.loads(meta_path.read_text())
    redone = sum(t.get("records_this_run", 0) for t in meta["timings"].values())
    assert 0 < redone <= 2 * KILL_RECORDS - logged, "the rerun must not redo finished batches"
    assert (tmp_path / "test_base_model.json").read_text() == (uninterrupted / "test_base_model.json").read_text()


def test_rerun_does_nothing_and_changed_settings_do_not_mix(tiny_trained_run, tiny_responses_dir, tmp_path):
    result = run_stage("part2_generate_test_responses.py", *stage2_args(tiny_trained_run, tiny_responses_dir))
    assert result.returncode == 0 and "stage 2 already finished" in result.stdout
    # A partial run with another --max-new-tokens, made from the same inputs: refused, not mixed in.
    meta = json.loads((tiny_responses_dir / "test_base_model.meta.json").read_text())
    progress = tmp_path / ".test_base_model.json.progress.jsonl"
    header = {"settings": {**meta["settings"], "max_new_tokens": 999}, "inputs": meta["inputs"], "run_id": "x"}
    progress.write_text(json.dumps(header) + "\n" + json.dumps({"key": ["base", 0], "value": "an answer"}) + "\n")
    result = run_stage("part2_generate_test_responses.py", *stage2_args(tiny_trained_run, tmp_path))
    assert result.returncode == 2
    assert "holds partial results made with other settings (max_new_tokens: 999 -> 32" in result.stderr
    assert "--restart" in result.stderr


def test_a_prompt_past_the_limit_is_not_answered_and_is_counted(tiny_trained_run, tmp_path):
    records = json.loads((tiny_trained_run / "data" / "test.json").read_text())[:2]
    records[1] = {**records[1], "instruction": "Summarize: " + "the quick brown fox jumps over it. " * 400}
    test_file = tmp_path / "test.json"
    test_file.write_text(json.dumps(records))
    result = run_stage("part2_generate_test_responses.py", "--test-file", str(test_file), "--output-dir", str(tmp_path),
                       "--adapter", str(tiny_trained_run / "finetuned"), "--max-new-tokens", "8", "--max-prompt-tokens", "256")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "1 prompts are longer than 256 tokens" in result.stdout
    rows = json.loads((tmp_path / "test_base_model.json").read_text())
    assert rows[0]["base_model_response"] is not None and rows[0]["finetuned_model_response"] is not None
    assert rows[1]["base_model_response"] is None and rows[1]["finetuned_model_response"] is None
    timings = json.loads((tmp_path / "test_base_model.meta.json").read_text())["timings"]
    assert {m: (t["prompt_limit_tokens"], t["prompts_over_limit"]) for m, t in timings.items()} == \
        {"base": (256, [1]), "finetuned": (256, [1])}


def test_missing_adapter_is_a_clear_error(tiny_trained_run, tmp_path):
    adapter = tmp_path / "adapter"
    shutil.copytree(tiny_trained_run / "finetuned", adapter, ignore=shutil.ignore_patterns("checkpoints", "merged"))
    (adapter / "adapter_config.json").unlink()
    result = run_stage("part2_generate_test_responses.py", "--adapter", str(adapter), "--output-dir", str(tmp_path / "o"),
                       "--test-file", str(tiny_trained_run / "data" / "test.json"))
    assert result.returncode == 2
    assert f"{adapter}: no adapter_config.json" in result.stderr
    assert not (tmp_path / "o").exists()


def test_vllm_engine_without_vllm_says_so(tiny_trained_run, tmp_path):
    if importlib.util.find_spec("vllm") is not None:
        pytest.skip("vllm is installed here")
    result = run_stage("part2_generate_test_responses.py", *stage2_args(tiny_trained_run, tmp_path), "--engine", "vllm")
    assert result.returncode == 2 and "--engine vllm needs vLLM" in result.stderr


@pytest.mark.fast
def test_clean_response_and_batching():
    stops = ("### Instruction:", "### Response:")
    assert clean_response("  Paris.\n\n### Instruction:\nMore", stops) == "Paris."
    assert clean_response("No marker here ", stops) == "No marker here"
    assert length_sorted_batches([5, 1, 4, 2, 3], 2) == [[1, 3], [4, 2], [0]]


def test_merged_model_answers_alone_without_loading_the_base(tiny_trained_run, tmp_path, tiny_llama):
    from instructkit.generate.generator import TransformersGenerator
    from instructkit.models.references import resolve_model

    merged = tiny_trained_run / "finetuned" / "merged"
    assert TransformersGenerator(resolve_model(tiny_llama), None, str(merged), False, ["finetuned"]).model is None

    # In fp32 both: bf16 weights would round W + BA and W apart before any answer is compared.
    for folder, extra in (("merged", ["--merged", str(merged)]), ("adapter", [])):
        result = run_stage("part2_generate_test_responses.py", *stage2_args(tiny_trained_run, tmp_path / folder),
                           *extra, "--models", "finetuned", "--precision", "fp32")
        assert result.returncode == 0, result.stderr[-3000:]
    rows = json.loads((tmp_path / "merged" / "test_base_model.json").read_text())
    adapter_rows = json.loads((tmp_path / "adapter" / "test_base_model.json").read_text())
    assert all(row["base_model_response"] is None for row in rows)
    # Greedy decoding from W + BA merged rounds differently from W x + B(A x); a near-tie may flip one answer.
    same = sum(row["finetuned_model_response"] == a["finetuned_model_response"] for row, a in zip(rows, adapter_rows))
    assert same >= len(rows) - 1, (rows, adapter_rows)


def test_finished_rows_leave_the_batch_and_the_answers_stay_the_same(trained_run, base_model):
    """Decoding in spans, the finished rows dropped between them with their KV-cache rows, gives
    the answers of one `generate` call over the whole batch (span longer than the answers). Real
    weights: random ones seldom end an answer, so no row would leave early."""
    from instructkit.data.prompts import load_style
    from instructkit.generate.generator import TransformersGenerator

    style = load_style(trained_run / "finetuned")
    records = json.loads((trained_run / "data" / "test.json").read_text())[:6]
    generator = TransformersGenerator(base_model, trained_run / "finetuned", "", False, ["base", "finetuned"])
    prompts = [generator.render(style, r) for r in records]
    rows_per_call = []
    generate = generator.model.generate

    def counting_generate(*args, **kwargs):  # the real generate; only the batch sizes are noted
        rows_per_call.append(kwargs["input_ids"].shape[0])
        return generate(*args, **kwargs)

    generator.model.generate = counting_generate
    for model in ("finetuned", "base"):
        generator.span, rows_per_call[:] = 1000, []
        whole, whole_tokens = generator.generate(model, prompts, 40, style)
        assert rows_per_call == [6]
        generator.span, rows_per_call[:] = 4, []
        spans, span_tokens = generator.generate(model, prompts, 40, style)
        assert spans == whole and span_tokens == whole_tokens
        assert rows_per_call[0] == 6 and len(rows_per_call) > 1
        assert rows_per_call == sorted(rows_per_call, reverse=True)
    assert rows_per_call[-1] < 6  # the base model's answers end at different steps: rows left early
