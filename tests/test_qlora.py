"""QLoRA on the CPU as on a GPU: stage 1 trains on a 4-bit NF4 base (bitsandbytes' CPU backend), and
every later stage loads that base as it was trained. Mechanics, so on the tiny Llama (the
architecture of the Llama 3 8B QLoRA recipe, SmolLM2's tokenizer, random weights; tests/tiny_models.py)."""

import json

import pytest
import torch

from conftest import run_stage
from instructkit.app.chat import ChatSession
from instructkit.app.config import ChatConfig
from instructkit.models.loading import load_causal_lm, qlora_settings
from instructkit.models.precision import resolve_precision
from instructkit.models.references import resolve_model

QLORA_ARGS = ["--qlora", "--max-steps", "6", "--batch-size", "4", "--lr", "1e-2", "--eval-steps", "3",
              "--lora-dropout", "0"]


@pytest.fixture(scope="module")
def qlora_args(tiny_llama) -> list[str]:
    return [*QLORA_ARGS, "--base-model", tiny_llama]


@pytest.fixture(scope="module")
def qlora_run(tmp_path_factory, qlora_args):
    run = tmp_path_factory.mktemp("qlora")
    result = run_stage("part1_instruction_finetuning.py", "--output-dir", str(run), *qlora_args, "--merge")
    assert result.returncode == 0, result.stderr[-3000:]
    return run


@pytest.fixture(scope="module")
def summary(qlora_run):
    return json.loads((qlora_run / "finetuned" / "training_summary.json").read_text())


def test_qlora_trains_on_a_4bit_nf4_base_and_the_loss_falls(summary):
    compute = "bfloat16" if resolve_precision("auto", "training").name == "bf16" else "float32"  # as --precision
    assert summary["settings"]["quantization"] == {"method": "bitsandbytes-4bit", "quant_type": "nf4",
                                                   "double_quant": True, "compute_dtype": compute,
                                                   "storage_dtype": "bfloat16"}
    losses = [p["loss"] for p in summary["val_loss"]]
    assert summary["val_loss_after"] < summary["val_loss_before"] - 0.1, losses
    assert summary["tokens_per_second"] > 0


def test_the_base_loads_as_4bit_nf4_with_double_quantization_and_the_adapter_on_it(qlora_run, tiny_llama):
    import bitsandbytes as bnb
    from peft import PeftModel

    model = load_causal_lm(resolve_model(tiny_llama), quantization=qlora_settings(torch.float32))
    layers = [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert len(layers) >= 7 * model.config.num_hidden_layers  # q, k, v, o, gate, up, down in each layer
    state = layers[0].weight.quant_state
    assert state.quant_type == "nf4" and state.nested, "double quantization quantizes the scales too"
    tuned = PeftModel.from_pretrained(model, qlora_run / "finetuned")
    assert any("lora_A" in name for name, _ in tuned.named_parameters())


def test_merge_after_qlora_dequantizes_and_counts_equal_answers(qlora_run, summary):
    from transformers import AutoModelForCausalLM

    merged = AutoModelForCausalLM.from_pretrained(qlora_run / "finetuned" / "merged")
    assert not getattr(merged, "is_loaded_in_4bit", False)
    agreement = summary["merged_agrees_with_4bit"]
    assert agreement["n_records"] == 8 and 0 <= agreement["equal"] <= 8


@pytest.fixture(scope="module")
def stage2_qlora(qlora_run):
    result = run_stage("part2_generate_test_responses.py", "--output-dir", str(qlora_run), "--limit", "3",
                       "--max-new-tokens", "24")
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads((qlora_run / "test_base_model.json").read_text())


def test_stage2_answers_on_the_4bit_base_and_records_it(qlora_run, stage2_qlora):
    meta = json.loads((qlora_run / "test_base_model.meta.json").read_text())
    assert meta["settings"]["base_quantization"]["quant_type"] == "nf4"
    assert all(row["finetuned_model_response"] and row["base_model_response"] for row in stage2_qlora)
    unquantized = run_stage("part2_generate_test_responses.py", "--output-dir", str(qlora_run), "--limit", "3",
                            "--max-new-tokens", "24", "--unquantized-base")
    assert unquantized.returncode == 0 and "settings changed" in unquantized.stdout  # never mixed with the 4-bit answers
    meta = json.loads((qlora_run / "test_base_model.meta.json").read_text())
    assert "base_quantization" not in meta["settings"]


def test_the_chat_app_answers_as_stage2_on_the_4bit_base(qlora_run, stage2_qlora):
    session = ChatSession(ChatConfig(output_dir=str(qlora_run)))
    record = {k: stage2_qlora[0][k] for k in ("instruction", "input")}
    settings = {"temperature": 0.0, "top_p": 1.0, "max_new_tokens": 24, "seed": 0}
    *_, answers = session.answer({}, record, settings, "test")
    assert answers["finetuned"] == stage2_qlora[0]["finetuned_model_response"]
    assert answers["base"] == stage2_qlora[0]["base_model_response"]


def test_stage3_evaluates_on_the_4bit_base(qlora_run):
    result = run_stage("part3_benchmark_evaluation.py", "--output-dir", str(qlora_run), "--limit", "4")
    assert result.returncode == 0, result.stderr[-3000:]
    meta = json.loads((qlora_run / "benchmark_results.meta.json").read_text())
    assert meta["settings"]["base_quantization"]["quant_type"] == "nf4"
    results = json.loads((qlora_run / "benchmark_results.json").read_text())
    assert set(results["models"]) == {"base", "finetuned"}


def test_a_qlora_adapter_exports_merged_into_the_unquantized_base(qlora_run, stage2_qlora):
    """Stage 6 merges the adapter into the full-precision weights and compares with stage 2's answers
    on the 4-bit base: NF4's rounding is gone, so the count is measured, not required."""
    from transformers import AutoModelForCausalLM

    result = run_stage("part6_export.py", "--output-dir", str(qlora_run), "--gguf-type", "none", "--parity-records", "2")
    assert result.returncode == 0, result.stderr[-3000:]
    merged = AutoModelForCausalLM.from_pretrained(qlora_run / "export" / "merged")
    assert not getattr(merged, "is_loaded_in_4bit", False)
    parity = json.loads((qlora_run / "export" / "parity.json").read_text())
    assert [a["artifact"] for a in parity["artifacts"]] == ["merged/ (transformers)"]
    assert parity["artifacts"][0]["records"] == 2 and parity["artifacts"][0]["prompt_ids_identical"] == 2
    card = (qlora_run / "export" / "README.md").read_text()
    assert "- qlora" in card and "on a 4-bit base (QLoRA, merged into the unquantized weights)" in card
    assert not list((qlora_run / "export").glob("*.gguf")) and not (qlora_run / "export" / "Modelfile").exists()


def test_a_rerun_is_reused_and_dropping_qlora_trains_again_saying_why(qlora_run, qlora_args):  # last: it retrains the folder
    again = run_stage("part1_instruction_finetuning.py", "--output-dir", str(qlora_run), *qlora_args, "--merge")
    assert again.returncode == 0 and "stage 1 already finished" in again.stdout
    lora = run_stage("part1_instruction_finetuning.py", "--output-dir", str(qlora_run),
                     *[a for a in qlora_args if a != "--qlora"], "--max-steps", "1")  # one step says enough
    assert lora.returncode == 0, lora.stderr[-3000:]
    assert "settings changed since the adapter was trained (" in lora.stdout
    assert "qlora: True -> False; quantization: {'method': 'bitsandbytes-4bit'" in lora.stdout
    summary = json.loads((qlora_run / "finetuned" / "training_summary.json").read_text())
    assert "quantization" not in summary["settings"]
