"""The LM head of stages 1's and 1b's losses, projected only at the positions where the loss is taken.

TRL's SFTTrainer computes the loss through a chunked "fused" LM head that never builds the
(batch, sequence, vocabulary) logits. On CUDA its Triton path scores only the positions with a label;
on every other device (CPU, Apple MPS) it scores every position, prompt and padding included, and
masks the result afterwards. With completion-only loss a response is about a fifth of a padded batch,
and gemma-3-270m's 262k-row head is most of a step's arithmetic, so a CPU step takes ~3x the time
it needs (bench/train_throughput.py measures it). This module gives those devices the compact path,
through TRL's own kernel, with the same loss, gradients and logged metrics.
"""

from __future__ import annotations

import types

import torch
from torch.distributed.tensor import DTensor
from trl import DPOTrainer, SFTTrainer
from trl.kernels import ChunkedLogProbFunction
from trl.trainer.utils import FusedCausalLMOutput

# Rows of the LM head per tile: TRL's own choice for this kernel.
VOCAB_CHUNK = 32768
# Logit transforms TRL's head handles that this one leaves to it (Granite, Falcon-H1, MPT, ...).
_SCALED_LOGITS = ("logit_scale", "output_multiplier", "lm_head_multiplier", "logits_scaling")


def supports_compact_head(model: torch.nn.Module) -> bool:
    """Whether `model` (the transformers model below any PEFT wrapper) is a plain causal LM whose
    logits are `lm_head(hidden)`, optionally soft-capped: the case the compact head reproduces."""
    config = model.config.get_text_config()
    return (
        not any(getattr(config, name, None) is not None for name in _SCALED_LOGITS)
        and not getattr(config, "output_router_logits", False)  # MoE aux loss: TRL's head adds it
        and model.get_output_embeddings() is not None
    )


def use_compact_head(trainer: SFTTrainer | DPOTrainer) -> bool:
    """Give the trainer's model the compact head where TRL's is not compact: every device but
    CUDA/XPU, where its Triton kernel already skips unlabelled positions. Returns whether it did
    (once per model: a second call finds it there)."""
    model = trainer.model.get_base_model() if hasattr(trainer.model, "get_base_model") else trainer.model
    if trainer.args.device.type in ("cuda", "xpu") or not supports_compact_head(model):
        return False
    if not getattr(model, "_compact_head", False):
        _patch_fused_forward(model)
        model._compact_head = True
    return True


def _patch_fused_forward(model: torch.nn.Module) -> None:
    """Wrap the fused LM head SFTTrainer put on `model` (below PEFT) so it projects only labelled
    positions. Anything this head does not cover (pre-shifted labels under sequence parallelism,
    sharded DTensor weights) goes to TRL's."""
    trl_forward = model.forward  # SFTTrainer's fused forward, bound to `model`
    softcap = getattr(model.config.get_text_config(), "final_logit_softcapping", None)

    def compact_forward(self, *args, fused_lm_head=False, labels=None, num_items_in_batch=None, **kwargs):
        head = self.get_output_embeddings()
        if not fused_lm_head or "shift_labels" in kwargs or isinstance(head.weight, DTensor):
            return trl_forward(*args, fused_lm_head=fused_lm_head, labels=labels,
                               num_items_in_batch=num_items_in_batch, **kwargs)
        kwargs["use_cache"] = False
        hidden = self.base_model(*args, **kwargs).last_hidden_state[:, :-1]
        labels = labels[:, 1:].to(hidden.device)
        mask = labels != -100
        per_token = ChunkedLogProbFunction.apply(
            hidden[mask], head.weight, head.bias, labels[mask], 1.0, VOCAB_CHUNK, softcap, 1.0,
            ("log_probs", "entropy", "mean_logits", "is_top1"),  # what SFTTrainer and DPOTrainer log
        )
        # masked_scatter keeps a batch without labels connected to the graph (a zero loss, not an error)
        log_probs, entropy, _, mean_logits, is_top1 = (
            None if x is None else x.new_zeros(mask.shape).masked_scatter(mask, x) for x in per_token
        )
        n_items = mask.sum().clamp(min=1) if num_items_in_batch is None else num_items_in_batch
        return FusedCausalLMOutput(loss=-log_probs.sum() / n_items, log_probs=log_probs, entropy=entropy,
                                   mean_logits=mean_logits, is_top1=is_top1, label_mask=mask)

    model.forward = types.MethodType(compact_forward, model)
