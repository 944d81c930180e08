"""lm-eval's own Hugging Face model (`hf`), changed in one place: the output layer, and with it
lm-eval's log-softmax over the vocabulary, runs only at the positions lm-eval scores.

Stock `hf` projects every position of every request onto the vocabulary (262k rows for Gemma 3) and
takes a log-softmax of all of it, then keeps the continuation's few positions; on MMLU that is most
of stage 3's time (bench/benchmark_breakdown.py). Here the model is asked for the logits of only the
last positions of the batch (transformers' `logits_to_keep`), as many as the longest continuation
plus the most right-padding any row has; lm-eval's slicing already handles a logits tensor that is
shorter than the input (it was written for prefix-tuned models). Requests, batching, the one-token
logits cache, scoring and every task stay lm-eval's. Models whose forward takes no
`logits_to_keep`, and seq2seq models, fall back to the stock path. One addition: a QLoRA adapter's
base can be loaded in 4-bit (`qlora_base`, a BitsAndBytesConfig), and a chat-style finetune's saved
template replaces the tokenizer's (`chat_template_text`) for lm-eval's `apply_chat_template`.
"""

from __future__ import annotations

import inspect

import torch
from lm_eval.api.registry import register_model
from lm_eval.models.huggingface import HFLM

from instructkit.models.loading import contiguous_head_input

MODEL_NAME = "instructkit-hf"


@register_model(MODEL_NAME)
class ContinuationHFLM(HFLM):
    _longest_continuation: int | None = None

    def __init__(self, *args, chat_template_text: str | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        if chat_template_text:  # the finetune's saved template (stage 1's prompt_style.json)
            self.tokenizer.chat_template = chat_template_text
        model = self.model.get_base_model() if hasattr(self.model, "get_base_model") else self.model
        contiguous_head_input(model)

    def _create_model(self, pretrained, *args, quantization_config=None, qlora_base=None, **kwargs) -> None:
        # lm-eval sets `quantization_config` itself (from the model's config.json), so a 4-bit base
        # for a QLoRA adapter comes in under a name of our own.
        super()._create_model(pretrained, *args, quantization_config=qlora_base or quantization_config, **kwargs)

    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, override_bs: int | None = None):
        # Every batch of this call needs logits for at most this many positions past its padding.
        self._longest_continuation = max((len(continuation) for _, _, continuation in requests), default=None)
        try:
            return super()._loglikelihood_tokens(requests, disable_tqdm=disable_tqdm, override_bs=override_bs)
        finally:
            self._longest_continuation = None

    def _model_call(self, inps: torch.Tensor, attn_mask: torch.Tensor | None = None,
                    labels: torch.Tensor | None = None) -> torch.Tensor:
        if self._longest_continuation is None or attn_mask is not None or not self._keeps_logits():
            return super()._model_call(inps, attn_mask, labels)
        # lm-eval pads on the right with id 0: a row's tokens end at its last non-zero id. A real
        # trailing 0 only makes the row look shorter, which keeps more positions, never fewer.
        real = inps != 0
        lengths = inps.shape[1] - real.flip(1).int().argmax(dim=1)
        keep = min(inps.shape[1], int(inps.shape[1] - lengths.min()) + self._longest_continuation)
        with (torch.no_grad(), torch.autocast(device_type=self.device.type, dtype=self.mixed_precision_dtype,
                                              enabled=self.mixed_precision_dtype is not None)):
            return self.model(inps, logits_to_keep=keep).logits

    def _keeps_logits(self) -> bool:
        model = self.model.get_base_model() if hasattr(self.model, "get_base_model") else self.model
        return "logits_to_keep" in inspect.signature(model.forward).parameters
