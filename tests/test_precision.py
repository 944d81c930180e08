"""--precision: the choice auto makes on this machine and why, bf16 weights where asked (with the
LoRA weights kept in fp32 for training), the choice in every manifest, and a changed precision
counted as a changed setting on a rerun."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from conftest import run_stage, stage2_args
from instructkit.errors import UserError
from instructkit.models.precision import earlier_default, precision_setting, resolve_precision
from instructkit.runs.artifacts import cpu_description
from instructkit.train.config import SUMMARY_FILE
from instructkit.train.sft import TrainingConfig, run_settings, train


@pytest.mark.fast
def test_auto_follows_the_device_and_the_measurements_and_says_why():
    """bf16 where bench/precision.py measured it faster on this kind of machine, fp32 elsewhere."""
    flags = set(cpu_description()["speed_flags"])
    for use in ("training", "inference"):
        chosen = resolve_precision("auto", use)
        if torch.cuda.is_available():
            expected = "bf16" if torch.cuda.is_bf16_supported() else "fp32"
        elif "amx_bf16" in flags:  # measured: training faster, decoding not
            expected = "bf16" if use == "training" else "fp32"
        elif "avx512_bf16" in flags:
            expected = "bf16"
        else:
            expected = "fp32"
            assert "no native bf16" in chosen.reason
        assert chosen.name == expected and chosen.reason.startswith("auto: ")
    assert resolve_precision("bf16", "inference").dtype == torch.bfloat16
    assert resolve_precision("fp32", "training").describe() == {"precision": "fp32", "precision_reason": "--precision fp32"}
    with pytest.raises(UserError, match="--precision 'fp16'"):
        resolve_precision("fp16", "training")


@pytest.mark.fast
def test_the_setting_is_recorded_only_where_it_departs_from_earlier_runs():
    """Runs finished before --precision existed ran in earlier_default(): they still stand."""
    other = "bf16" if earlier_default() == "fp32" else "fp32"
    assert "precision" not in run_settings(TrainingConfig(precision=earlier_default()))
    assert run_settings(TrainingConfig(precision=other))["precision"] == other
    assert precision_setting(resolve_precision(other, "inference")) == {"precision": other}


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU path: bf16 weights without autocast")
def test_bf16_training_stores_base_weights_in_bf16_and_lora_in_fp32(tmp_path, tiny_llama):
    """Two training steps of stage 1 with --precision bf16 (the first has the warm-up's zero rate), on
    the tiny Llama: the dtypes are the subject."""
    train(TrainingConfig(base_model=tiny_llama, output_dir=str(tmp_path), max_steps=2, batch_size=2, max_length=96,
                         eval_steps=2, val_fraction=0.01, precision="bf16"))
    summary = json.loads((tmp_path / "finetuned" / SUMMARY_FILE).read_text())
    assert (summary["precision"], summary["precision_reason"]) == ("bf16", "--precision bf16")
    assert summary["settings"]["precision"] == "bf16"
    assert summary["val_loss_after"] == pytest.approx(summary["val_loss_after"])  # a number, not NaN
    weights = load_file(tmp_path / "finetuned" / "adapter_model.safetensors")
    assert weights and all(w.dtype == torch.float32 for w in weights.values())
    assert any(w.abs().sum() > 0 for name, w in weights.items() if "lora_B" in name)  # the step trained them


def test_stage2_in_bf16_records_it_and_a_change_is_a_rerun(tiny_trained_run, tmp_path):
    args = [*stage2_args(tiny_trained_run, tmp_path), "--models", "base", "--limit", "2", "--max-new-tokens", "8"]
    result = run_stage("part2_generate_test_responses.py", *args, "--precision", "bf16")
    assert result.returncode == 0, result.stderr[-3000:]
    meta = json.loads((tmp_path / "test_base_model.meta.json").read_text())
    assert (meta["precision"], meta["precision_reason"]) == ("bf16", "--precision bf16")
    assert all(isinstance(r["base_model_response"], str) for r in json.loads((tmp_path / "test_base_model.json").read_text()))
    again = run_stage("part2_generate_test_responses.py", *args, "--precision", "fp32")
    assert again.returncode == 0, again.stderr[-3000:]
    assert "precision: 'bf16' -> None" in again.stdout or "precision: 'bf16' -> 'fp32'" in again.stdout
    assert json.loads((tmp_path / "test_base_model.meta.json").read_text())["precision"] == "fp32"
