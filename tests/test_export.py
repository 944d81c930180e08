"""Stage 6 (part6_export.py): the embedded finetune shipped as a merged model, an f16 GGUF file, an
Ollama Modelfile and a model card, each proven to answer as stage 2's finetune did; the served GGUF
evaluated by stage 2; the leaderboard tools' loaders reading our answer files. The q8_0 file, the
Modelfile's choice of the smallest file and a killed export resumed are mechanics, on the tiny
Llama (here and in test_preference_tuning's export of a preference adapter)."""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from conftest import ROOT, copy_run, free_port, run_stage
from instructkit.data.prompts import get_style
from instructkit.errors import UserError
from instructkit.export.config import ExportConfig, check
from instructkit.export.leaderboard import TEST_BENCH, read_leaderboard_sources, write_leaderboard_files
from instructkit.export.templates import (
    mismatch_error,
    model_text,
    modelfile_template,
    render_modelfile,
    runtime_messages,
    runtime_template,
    template_mismatches,
)
from instructkit.runs.artifacts import write_json_atomic

PARITY_RECORDS = 6
EXPORT_TYPES = ["--gguf-type", "f16"]
LLAMA_CPP = importlib.util.find_spec("llama_cpp") is not None
needs_llama_cpp = pytest.mark.skipif(not LLAMA_CPP, reason="llama-cpp-python is not installed: `make llama-cpp` "
                                     "builds it (make test does)")
RECORDS = [{"instruction": "Add 2 and 3.", "input": "", "output": "5"},
           {"instruction": "Translate to Spanish.", "input": "Good morning", "output": "Buenos días"},
           {"instruction": "And now?", "input": "", "output": "x",
            "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
                         {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "And now?"},
                         {"role": "assistant", "content": "x"}]}]


def word_tokenizer() -> PreTrainedTokenizerFast:
    """A small real tokenizer with a BOS it adds and Gemma's turn tokens, for the template checks."""
    words = ["<pad>", "<bos>", "<eos>", "<unk>", "<start_of_turn>", "<end_of_turn>"]
    backend = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    from tokenizers.processors import TemplateProcessing

    backend.post_processor = TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", 1)])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<bos>", eos_token="<eos>",
                                        unk_token="<unk>", pad_token="<pad>")
    tokenizer.add_special_tokens({"additional_special_tokens": ["<start_of_turn>", "<end_of_turn>"]})
    return tokenizer


def chat_render(tokenizer):
    return lambda messages, generation: tokenizer.apply_chat_template(messages, tokenize=False,
                                                                      add_generation_prompt=generation)


@pytest.mark.fast
@pytest.mark.parametrize("name", ["alpaca", "phi3", "chatml"])
def test_the_exported_templates_render_what_training_saw(name):
    tokenizer = word_tokenizer()
    style = get_style(name).bind(tokenizer)
    tokenizer.chat_template = runtime_template(style, tokenizer)
    ollama = modelfile_template(chat_render(tokenizer), tokenizer.bos_token)
    assert "<bos>" not in ollama  # Ollama adds the BOS itself
    runtimes = {"jinja": lambda r: tokenizer.apply_chat_template(runtime_messages(style, r), tokenize=False,
                                                                 add_generation_prompt=True)}
    assert template_mismatches(style, RECORDS, tokenizer, runtimes) == []
    for record in RECORDS[:2]:  # Ollama's turn template: one user turn
        assert "<bos>" + render_modelfile(ollama, "", style.user_text(record)) == model_text(style, record, tokenizer)
    with_system = {**RECORDS[0], "messages": [{"role": "system", "content": "Be brief."},
                                              {"role": "user", "content": "Add 2 and 3."}, {"role": "assistant", "content": "5"}]}
    assert "<bos>" + render_modelfile(ollama, "Be brief.", "Add 2 and 3.") == model_text(style, with_system, tokenizer)


@pytest.mark.fast
def test_a_chat_template_that_refuses_a_system_turn_gets_an_ollama_template_without_one():
    tokenizer = word_tokenizer()
    tokenizer.chat_template = ("{% for m in messages %}{% if m['role'] == 'system' %}{{ raise_exception('no system') }}"
                               "{% endif %}{{ '<start_of_turn>' + m['role'] + ' ' + m['content'] + '<end_of_turn>' }}"
                               "{% endfor %}{% if add_generation_prompt %}{{ '<start_of_turn>model ' }}{% endif %}")
    ollama = modelfile_template(chat_render(tokenizer), "")
    assert ollama == "<start_of_turn>user {{ .Prompt }}<end_of_turn><start_of_turn>model {{ .Response }}<end_of_turn>"
    assert render_modelfile(ollama, "", "Hi") == "<start_of_turn>user Hi<end_of_turn><start_of_turn>model "


@pytest.mark.fast
def test_a_template_that_renders_otherwise_is_refused_with_both_prompts():
    tokenizer = word_tokenizer()
    style = get_style("alpaca")
    tokenizer.chat_template = runtime_template(style, tokenizer).replace("### Response:", "### Answer:")
    found = template_mismatches(style, RECORDS, tokenizer, {"the GGUF": lambda r: tokenizer.apply_chat_template(
        runtime_messages(style, r), tokenize=False, add_generation_prompt=True)})
    assert [f["record"] for f in found] == [0, 1, 2]
    message = str(mismatch_error(found, "3 test records"))
    assert "the GGUF renders record 0 differently" in message
    assert "### Response:" in message and "### Answer:" in message  # both prompts shown


@pytest.mark.fast
def test_bad_export_settings_are_refused_before_anything_loads(tmp_path):
    with pytest.raises(UserError) as caught:
        check(ExportConfig(output_dir=str(tmp_path), gguf_type=["none", "f16"], serve=True, name="my model"))
    message = str(caught.value)
    assert "--gguf-type none means no GGUF file" in message and "--name 'my model'" in message
    with pytest.raises(UserError, match="run stage 1 first and then stage 1b"):
        check(ExportConfig(output_dir=str(tmp_path), model="preference"))
    (tmp_path / "finetuned").mkdir()
    (tmp_path / "finetuned" / "adapter_config.json").write_text("{}")
    with pytest.raises(UserError, match="training_summary.json is missing"):
        check(ExportConfig(output_dir=str(tmp_path)))
    (tmp_path / "finetuned" / "training_summary.json").write_text("{}")
    with pytest.raises(UserError, match="run stage 2 first, or pass --parity-records 0"):
        check(ExportConfig(output_dir=str(tmp_path)))
    check(ExportConfig(output_dir=str(tmp_path), parity_records=0))


@pytest.mark.fast
def test_alpaca_eval_and_fastchat_read_the_leaderboard_files(tmp_path):
    from alpaca_eval.utils import load_or_convert_to_dataframe
    from fastchat.llm_judge.common import Judge, check_data, load_model_answers, load_questions

    write_json_atomic(tmp_path / "test_base_model.json", [
        {**RECORDS[0], "base_model_response": "Six.", "finetuned_model_response": "Five."},
        {**RECORDS[1], "base_model_response": "Hola", "finetuned_model_response": None}])
    written = write_leaderboard_files(read_leaderboard_sources(tmp_path), tmp_path / "leaderboard", {"base": "run-base", "finetuned": "mine"})
    assert written == {"run-base": {"alpaca_eval": 2, TEST_BENCH: 1}, "mine": {"alpaca_eval": 1, TEST_BENCH: 1}}
    outputs = load_or_convert_to_dataframe(str(tmp_path / "leaderboard" / "alpaca_eval" / "mine" / "model_outputs.json"))
    assert outputs[["instruction", "output", "generator"]].values.tolist() == [["Add 2 and 3.", "Five.", "mine"]]
    base = load_or_convert_to_dataframe(str(tmp_path / "leaderboard" / "alpaca_eval" / "run-base" / "model_outputs.json"))
    assert base["instruction"].tolist() == ["Add 2 and 3.", "Translate to Spanish.\n\nGood morning"]
    bench = tmp_path / "leaderboard" / "fastchat" / "data" / TEST_BENCH
    questions = load_questions(str(bench / "question.jsonl"), None, None)
    answers = load_model_answers(str(bench / "model_answer"))
    references = load_model_answers(str(bench / "reference_answer"))
    # FastChat's gen_judgment refuses a bench where a model lacks an answer: record 2 has none from mine
    assert [q["question_id"] for q in questions] == [1]
    assert answers["mine"][1]["choices"][0]["turns"] == ["Five."] and 2 not in answers["mine"]
    assert references["gpt-4"][1]["choices"][0]["turns"] == ["5"]
    questions[0]["category"] = "math"  # a category FastChat grades against the reference answer
    check_data(questions, answers, references, ["mine", "run-base"],
               {"single-math": Judge("gpt-4", {"type": "single"}, ref_based=True)})


@pytest.mark.fast
def test_mt_bench_answers_become_a_fastchat_bench_of_the_models_that_answered(tmp_path):
    from fastchat.llm_judge.common import load_model_answers, load_questions

    write_json_atomic(tmp_path / "mt_bench_responses.json", [  # stage 2 --questions --models finetuned
        {"question_id": 81, "category": "math", "turns": ["2+2?", "And 3+3?"], "reference": ["4", "6"],
         "base_model_response": [None, None], "finetuned_model_response": ["4", "6"]}])
    written = write_leaderboard_files(read_leaderboard_sources(tmp_path), tmp_path / "lb", {"base": "run-base", "finetuned": "mine"})
    assert written == {"mine": {"mt_bench": 1}}
    bench = tmp_path / "lb" / "fastchat" / "data" / "mt_bench"
    assert [q["turns"] for q in load_questions(str(bench / "question.jsonl"), None, None)] == [["2+2?", "And 3+3?"]]
    assert load_model_answers(str(bench / "model_answer"))["mine"][81]["choices"][0]["turns"] == ["4", "6"]
    assert load_model_answers(str(bench / "reference_answer"))["gpt-4"][81]["choices"][0]["turns"] == ["4", "6"]


@pytest.fixture(scope="module")
def export_run(trained_run, tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    """Stage 2 (finetuned, PARITY_RECORDS records) and stage 6 in a copy of the trained run: the f16 GGUF alone,
    the file whose answers real weights can hold to stage 2's (q8_0's rounding may move some)."""
    run = tmp_path_factory.mktemp("export-run")
    shutil.copytree(trained_run / "finetuned", run / "finetuned", ignore=shutil.ignore_patterns("merged"))
    shutil.copytree(trained_run / "data", run / "data")
    answered = run_stage("part2_generate_test_responses.py", "--output-dir", str(run), "--models", "finetuned",
                         "--limit", str(PARITY_RECORDS), "--max-new-tokens", "32")
    assert answered.returncode == 0, answered.stderr[-3000:]
    exported = run_stage("part6_export.py", "--output-dir", str(run), "--parity-records", str(PARITY_RECORDS),
                         "--name", "tiny", *EXPORT_TYPES)
    assert exported.returncode == 0, exported.stderr[-3000:]
    return run, exported


@pytest.fixture(scope="module")
def merged_tokenizer(export_run):
    """The exported merged model's tokenizer, loaded once (Gemma's takes seconds to load)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(export_run[0] / "export" / "merged")


def test_the_merged_model_carries_the_runs_template_and_stops_where_training_did(export_run, merged_tokenizer):
    from transformers import AutoConfig, GenerationConfig

    from instructkit.data.prompts import load_style

    run, _ = export_run
    merged = run / "export" / "merged"
    tokenizer = merged_tokenizer
    style = load_style(run / "finetuned")
    assert tokenizer.chat_template == runtime_template(style, tokenizer)
    end = tokenizer.convert_tokens_to_ids(style.stop_token(tokenizer))
    assert GenerationConfig.from_pretrained(merged).eos_token_id[0] == end == tokenizer.eos_token_id
    assert AutoConfig.from_pretrained(merged).model_type == "gemma3_text"
    assert list(merged.glob("*.safetensors"))


def test_the_gguf_file_names_the_architecture_and_carries_the_template_and_eos(export_run, merged_tokenizer):
    from instructkit.export.gguf_files import gguf_metadata

    run, _ = export_run
    tokenizer = merged_tokenizer
    metadata = gguf_metadata(run / "export" / "tiny-f16.gguf")
    assert metadata["architecture"] == "gemma3" and metadata["file_type"] == 1  # llama.cpp's LlamaFileType
    assert metadata["chat_template"] == tokenizer.chat_template
    assert (metadata["eos_token"], metadata["eos_token_id"]) == (tokenizer.eos_token, tokenizer.eos_token_id)
    assert metadata["add_bos_token"] is True and metadata["vocabulary"] == 262144
    assert (metadata["bos_token"], metadata["bos_token_id"]) == (tokenizer.bos_token, tokenizer.bos_token_id)


def test_the_modelfile_uses_the_gguf_the_runs_template_and_every_stop(export_run, merged_tokenizer):
    from instructkit.data.prompts import load_style

    run, _ = export_run
    text = (run / "export" / "Modelfile").read_text()
    assert "FROM ./tiny-f16.gguf\n" in text
    template = text.split('TEMPLATE """', 1)[1].split('"""', 1)[0]
    style = load_style(run / "finetuned")
    tokenizer = merged_tokenizer
    records = json.loads((run / "data" / "test.json").read_text())[:5]
    for record in records:
        assert tokenizer.bos_token + render_modelfile(template, "", style.user_text(record)) == model_text(
            style, record, tokenizer)
    stops = [json.loads(line.removeprefix("PARAMETER stop ")) for line in text.splitlines() if line.startswith("PARAMETER stop")]
    assert stops == [*style.stop_strings, "<eos>"]


def test_each_shipped_file_answers_as_stage2s_finetune(export_run):
    run, exported = export_run
    parity = json.loads((run / "export" / "parity.json").read_text())
    by_name = {a["artifact"]: a for a in parity["artifacts"]}
    expected = ["merged/ (transformers)", "tiny-f16.gguf (transformers)"]
    if LLAMA_CPP:
        expected += ["tiny-f16.gguf (llama.cpp)"]
    assert sorted(by_name) == sorted(expected)
    assert all(a["records"] == PARITY_RECORDS for a in by_name.values())
    assert by_name["merged/ (transformers)"]["identical"] >= PARITY_RECORDS - 1
    assert by_name["tiny-f16.gguf (transformers)"]["identical"] >= PARITY_RECORDS - 1
    for name in ("merged/ (transformers)", "tiny-f16.gguf (transformers)"):
        assert by_name[name]["prompt_ids_identical"] == PARITY_RECORDS, name
    for artifact in by_name.values():
        for difference in artifact["differences"]:
            assert difference["stage2_answer"] != difference["artifact_answer"]
            assert isinstance(difference["first_differing_token"], int)
    assert "tiny-f16.gguf (transformers)" in exported.stdout  # the share is printed per artifact
    assert not list((run / "export").glob(".parity-*"))
    card = (run / "export" / "README.md").read_text()
    metadata = yaml.safe_load(card.split("---")[1])
    assert metadata["license"] == "other" and {"instructkit", "lora", "gguf"} <= set(metadata["tags"])
    assert "base_model" not in metadata  # the embedded model is no hub id
    assert f"| tiny-f16.gguf (transformers) | {by_name['tiny-f16.gguf (transformers)']['identical']}/{PARITY_RECORDS} |" in card


def test_a_rerun_keeps_the_costly_files_and_writes_the_card_again(export_run):
    run, _ = export_run
    converted = (run / "export" / "tiny-f16.gguf").stat().st_mtime_ns
    again = run_stage("part6_export.py", "--output-dir", str(run), "--parity-records", str(PARITY_RECORDS),
                      "--name", "tiny", *EXPORT_TYPES, "--license", "gemma")
    assert again.returncode == 0, again.stderr[-3000:]
    assert "reusing the merged model, GGUF files and parity answers" in again.stdout
    assert "answering" not in again.stdout and "converting" not in again.stdout
    assert (run / "export" / "tiny-f16.gguf").stat().st_mtime_ns == converted
    assert yaml.safe_load((run / "export" / "README.md").read_text().split("---")[1])["license"] == "gemma"
    assert not (run / ".stage6.partial").exists()


@needs_llama_cpp
def test_the_server_answers_without_a_repeat_penalty_unless_asked():
    from llama_cpp.server.types import CreateChatCompletionRequest, CreateCompletionRequest

    from instructkit.export.serve import unpenalised_requests

    unpenalised_requests()
    assert CreateChatCompletionRequest(messages=[{"role": "user", "content": "hi"}]).repeat_penalty == 1.0
    assert CreateCompletionRequest(prompt="hi").repeat_penalty == 1.0
    assert CreateCompletionRequest(prompt="hi", repeat_penalty=1.3).repeat_penalty == 1.3


@needs_llama_cpp
def test_the_served_gguf_is_evaluated_by_stage2_like_any_model(export_run, tmp_path):
    from instructkit.export.serve import server_command

    run, _ = export_run
    stored = {row["instruction"] + row["input"]: row["finetuned_model_response"]
              for row in json.loads((run / "test_base_model.json").read_text())}
    port = free_port()
    with (tmp_path / "server.log").open("w") as log:
        server = subprocess.Popen(server_command(run / "export" / "tiny-f16.gguf", "tiny", port),
                                  stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline, models = time.time() + 120, None
        while models is None and time.time() < deadline:
            try:
                models = json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models", timeout=2))
            except OSError:
                if server.poll() is not None:
                    pytest.fail((tmp_path / "server.log").read_text()[-2000:])
                time.sleep(1)
        if models is None:
            pytest.fail("llama.cpp's server did not answer within 2 minutes")
        assert [m["id"] for m in models["data"]] == ["tiny"]
        served = run_stage("part2_generate_test_responses.py", "--output-dir", str(tmp_path), "--models", "base",
                           "--test-file", str(run / "data" / "test.json"), "--adapter", str(run / "finetuned"),
                           "--limit", str(PARITY_RECORDS), "--max-new-tokens", "32", "--compare", "shipped=openai:tiny",
                           "--compare-base-url", f"http://127.0.0.1:{port}/v1")
    finally:
        server.terminate()
        server.wait(30)
    assert served.returncode == 0, served.stderr[-3000:]
    rows = json.loads((tmp_path / "test_base_model.json").read_text())
    assert len(rows) == PARITY_RECORDS and all(row["shipped_model_response"] for row in rows)
    # A chat client sends instruction and input as one message, so only records without an input
    # are prompted exactly as in training: there the served model (greedy, no repeat penalty: the
    # server is started with none) answers as stage 2's finetune did.
    plain = [row for row in rows if not row.get("input")]
    same = sum(row["shipped_model_response"] == stored[row["instruction"]] for row in plain)
    assert plain and same >= len(plain) - 1, (same, len(plain))


def test_a_killed_export_resumes_without_redoing_finished_work(tiny_trained_run, tmp_path):
    """Mechanics, so on the tiny Llama: killed once its merged model is saved, the rerun keeps it."""
    import signal

    run = copy_run(tiny_trained_run, tmp_path / "run")
    answered = run_stage("part2_generate_test_responses.py", "--output-dir", str(run), "--models", "finetuned",
                         "--limit", "2", "--max-new-tokens", "8")
    assert answered.returncode == 0, answered.stderr[-3000:]
    args = ["--output-dir", str(run), "--name", "tiny", "--gguf-type", "q8_0", "--parity-records", "2"]
    first = subprocess.Popen([sys.executable, str(ROOT / "part6_export.py"), *args], cwd=ROOT,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    merged = run / ".stage6.partial" / "export" / "merged" / "config.json"
    deadline = time.time() + 600
    while not merged.exists() and first.poll() is None and time.time() < deadline:
        time.sleep(0.1)
    first.send_signal(signal.SIGKILL)
    first.wait()
    assert merged.exists(), "the export ended before its merged model was saved"
    assert not (run / "export").exists(), "killed too late to test resuming"
    made = merged.stat().st_mtime_ns
    second = run_stage("part6_export.py", *args)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "resuming the export begun" in second.stdout and "merging" not in second.stdout
    assert (run / "export" / "merged" / "config.json").stat().st_mtime_ns == made
    assert sorted(p.name for p in (run / "export").glob("*.gguf")) == ["tiny-q8_0.gguf"]
    assert json.loads((run / "export" / "parity.json").read_text())["records"] == 2
