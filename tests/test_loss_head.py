"""The compact LM head gives TRL's loss, gradients and metrics while projecting only response tokens
(an equality of two computations, so on the tiny Llama: tests/tiny_models.py)."""

from __future__ import annotations

import pytest
import torch

import instructkit.train.loss_head as loss_head
from conftest import lora_sft_trainer, loss_grads_metrics


@pytest.fixture(scope="module")
def trainer(tiny_base, tiny_tokenizer, tmp_path_factory):
    return lora_sft_trainer(tiny_base, tiny_tokenizer, tmp_path_factory.mktemp("head"), n_records=16, batch_size=4)


def test_same_loss_gradients_and_metrics_as_trl_on_fewer_rows(trainer, monkeypatch):
    batch = next(iter(trainer.get_train_dataloader()))
    n_labels = int((batch["labels"][:, 1:] != -100).sum())
    assert n_labels < batch["labels"][:, 1:].numel() / 2, "the batch should be mostly prompt and padding"
    trl_loss, trl_grads, trl_metrics = loss_grads_metrics(trainer, batch)

    rows_projected = []
    kernel = loss_head.ChunkedLogProbFunction

    class Recording:  # TRL's kernel, counting the rows it projects
        @staticmethod
        def apply(hidden, *args):
            rows_projected.append(hidden.shape[0])
            return kernel.apply(hidden, *args)

    assert loss_head.use_compact_head(trainer), "a CPU run should get the compact head"
    monkeypatch.setattr(loss_head, "ChunkedLogProbFunction", Recording)
    loss, grads, metrics = loss_grads_metrics(trainer, batch)

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
