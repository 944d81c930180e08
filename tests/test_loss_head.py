"""The compact LM head gives TRL's loss, gradients and metrics while projecting only response tokens."""

from __future__ import annotations

import pytest
import torch
from datasets import Dataset
from peft import LoraConfig
from trl import SFTConfig, SFTTrainer

import instructkit.loss_head as loss_head
from instructkit.data import load_records
from instructkit.models import load_causal_lm
from instructkit.prompts import get_style
from instructkit.training import DEFAULT_DATA


@pytest.fixture(scope="module")
def trainer(base_model, base_tokenizer, tmp_path_factory):
    style = get_style("alpaca")
    examples = [style.training_example(r) for r in load_records(DEFAULT_DATA)[:16]]
    args = SFTConfig(output_dir=str(tmp_path_factory.mktemp("head")), per_device_train_batch_size=4, max_length=128,
                     completion_only_loss=True, use_cpu=True, report_to="none", gradient_checkpointing=False)
    torch.manual_seed(0)
    return SFTTrainer(model=load_causal_lm(base_model), args=args, train_dataset=Dataset.from_list(examples),
                      processing_class=base_tokenizer,
                      peft_config=LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules="all-linear",
                                             task_type="CAUSAL_LM"))


def _loss_grads_metrics(trainer, batch):
    trainer.model.zero_grad()
    trainer.model.train()
    trainer._metrics["train"].clear()
    loss = trainer.compute_loss(trainer.model, dict(batch))
    loss.backward()
    grads = {n: p.grad.clone() for n, p in trainer.model.named_parameters() if p.grad is not None}
    metrics = {k: v[-1] for k, v in trainer._metrics["train"].items() if k in ("entropy", "mean_token_accuracy")}
    return loss.item(), grads, metrics


def test_same_loss_gradients_and_metrics_as_trl_on_fewer_rows(trainer, monkeypatch):
    batch = next(iter(trainer.get_train_dataloader()))
    n_labels = int((batch["labels"][:, 1:] != -100).sum())
    assert n_labels < batch["labels"][:, 1:].numel() / 2, "the batch should be mostly prompt and padding"
    trl_loss, trl_grads, trl_metrics = _loss_grads_metrics(trainer, batch)

    rows_projected = []
    kernel = loss_head.ChunkedLogProbFunction

    class Recording:  # TRL's kernel, counting the rows it projects
        @staticmethod
        def apply(hidden, *args):
            rows_projected.append(hidden.shape[0])
            return kernel.apply(hidden, *args)

    assert loss_head.use_compact_head(trainer), "a CPU run of gemma-3 should get the compact head"
    monkeypatch.setattr(loss_head, "ChunkedLogProbFunction", Recording)
    loss, grads, metrics = _loss_grads_metrics(trainer, batch)

    assert rows_projected == [n_labels]
    assert loss == pytest.approx(trl_loss, rel=1e-5)
    assert grads.keys() == trl_grads.keys() and len(grads) > 0
    for name, grad in grads.items():
        torch.testing.assert_close(grad, trl_grads[name], rtol=1e-4, atol=1e-6, msg=name)
    assert metrics == pytest.approx(trl_metrics, rel=1e-4)

    # Without fused_lm_head (generation, plain forward) the model still returns full logits.
    with torch.no_grad():
        logits = trainer.model(input_ids=batch["input_ids"][:1, :5]).logits
    assert logits.shape[:2] == (1, 5)
