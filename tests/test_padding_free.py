"""Padding-free batches: the same loss, gradients and metrics as padded ones under SDPA, the check
that tells whether a model's attention keeps records in one row apart, and what stage 1 does when
it does not. Equalities of two computations, so on the tiny models (tests/tiny_models.py)."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward

from conftest import lora_sft_trainer, loss_grads_metrics, run_stage
from instructkit.errors import UserError
from instructkit.models.loading import load_causal_lm
from instructkit.train.loss_head import use_compact_head
from instructkit.train.padding_free import padding_free_collator, records_stay_apart
from instructkit.train.sft import TrainingConfig, _padding_free

# An attention kernel with no mask support of its own: transformers hands it no mask, so it runs plain
# causal attention over the whole row, as custom kernels that ignore packing do.
AttentionInterface.register("unmasked_sdpa", sdpa_attention_forward)


@pytest.fixture(scope="module")
def trainer(tiny_base, tiny_tokenizer, tmp_path_factory):
    return lora_sft_trainer(tiny_base, tiny_tokenizer, tmp_path_factory.mktemp("padding_free"), n_records=8)


@pytest.fixture(scope="module")
def mixing_model(tiny_base):
    model = load_causal_lm(tiny_base)
    model.set_attn_implementation("unmasked_sdpa")
    return model


def _assert_same(result, reference):
    loss, grads, metrics = result
    assert loss == pytest.approx(reference[0], rel=1e-5)
    assert grads.keys() == reference[1].keys() and len(grads) > 0
    for name, grad in grads.items():
        torch.testing.assert_close(grad, reference[1][name], rtol=1e-4, atol=1e-6, msg=name)
    assert metrics == pytest.approx(reference[2], rel=1e-4)


def test_padding_free_batch_gives_the_padded_batch_loss_gradients_and_metrics(trainer, tiny_tokenizer):
    rows = [trainer.train_dataset[i] for i in range(8)]
    padded = trainer.data_collator(rows)
    free = padding_free_collator(tiny_tokenizer)(rows)
    n_tokens = sum(len(row["input_ids"]) for row in rows)
    assert free["input_ids"].shape == (1, n_tokens)
    assert n_tokens < 0.8 * padded["input_ids"].numel(), "the padded batch should carry padding to save"

    reference = loss_grads_metrics(trainer, padded)
    _assert_same(loss_grads_metrics(trainer, free), reference)  # TRL's LM head
    assert use_compact_head(trainer)
    _assert_same(loss_grads_metrics(trainer, free), reference)  # stage 1 as shipped on a CPU


def test_the_check_tells_attention_that_keeps_records_apart_from_attention_that_mixes_them(
        trainer, mixing_model, tiny_tokenizer):
    assert trainer.model.config._attn_implementation == "sdpa"
    assert records_stay_apart(trainer.model, tiny_tokenizer)
    assert not records_stay_apart(mixing_model, tiny_tokenizer)
    assert trainer.model.training, "the check restores training mode"


def test_where_attention_mixes_records_packing_is_refused_and_batches_stay_padded(
        mixing_model, tiny_tokenizer, capsys):
    with pytest.raises(UserError, match=r"--packing: under this model's attention \(unmasked_sdpa\)"):
        _padding_free(TrainingConfig(packing=True), mixing_model, tiny_tokenizer)
    assert _padding_free(TrainingConfig(), mixing_model, tiny_tokenizer) is False
    assert "padded batches" in capsys.readouterr().out
    assert _padding_free(TrainingConfig(padding_free=False), mixing_model, tiny_tokenizer) is False


def test_packing_trains_under_sdpa(tmp_path, tiny_gemma):
    """Mechanics, on the tiny Gemma 3: packed rows under its sliding-window and global layers."""
    result = run_stage("part1_instruction_finetuning.py", "--packing", "--max-steps", "2", "--batch-size", "2",
                       "--max-length", "256", "--val-fraction", "0", "--output-dir", str(tmp_path),
                       "--base-model", tiny_gemma)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((tmp_path / "finetuned" / "training_summary.json").read_text())
    assert summary["padding_free"] is True and summary["steps"] == 2
    # Best-fit-decreasing fills each 256-token row with several records (~56 tokens each on average):
    # 2 steps of 2 rows carry far more than the 4 records an unpacked run would see.
    assert summary["train_tokens"] > 0.75 * 2 * 2 * 256
