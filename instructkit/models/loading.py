"""Loading a resolved model: its tokenizer, its weights in a precision, 4-bit for QLoRA, and the
attention kernel the device is best at."""

from __future__ import annotations

import importlib.util

import torch

from instructkit.errors import UserError
from instructkit.models.references import ResolvedModel, hub_error


def default_dtype() -> torch.dtype:
    if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32


def attention_implementation() -> str:
    """FlashAttention 2 on a CUDA GPU when flash-attn is installed, else PyTorch SDPA."""
    if torch.cuda.is_available() and importlib.util.find_spec("flash_attn") is not None:
        return "flash_attention_2"
    return "sdpa"


def qlora_quantization():
    """bitsandbytes NF4 with double quantization and bf16 compute: the QLoRA paper's recipe."""
    if not torch.cuda.is_available():
        raise UserError("--qlora needs a CUDA GPU (bitsandbytes 4-bit); drop --qlora to train LoRA on the CPU")
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.bfloat16,
        # Packed 4-bit weights stored as bf16 let FSDP shard them with the bf16 LoRA parameters.
        bnb_4bit_quant_storage=torch.bfloat16,
    )


def load_tokenizer(model: ResolvedModel, trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(model.path, trust_remote_code=trust_remote_code)
    except OSError as exc:
        raise hub_error(model.reference, exc) from exc
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_causal_lm(model: ResolvedModel, *, qlora: bool = False, trust_remote_code: bool = False,
                   attention: str | None = None, dtype: torch.dtype | None = None):
    """The model's weights in `dtype` (default: bf16 on a GPU that has it, else fp32), 4-bit when
    `qlora`; `attention` overrides the device's default attention kernel."""
    from transformers import AutoModelForCausalLM

    kwargs: dict = {
        "dtype": dtype or default_dtype(),
        "attn_implementation": attention or attention_implementation(),
        "trust_remote_code": trust_remote_code,
    }
    if qlora:
        kwargs["quantization_config"] = qlora_quantization()
        kwargs["device_map"] = {"": torch.cuda.current_device()}
    try:
        loaded = AutoModelForCausalLM.from_pretrained(model.path, **kwargs)
    except OSError as exc:
        raise hub_error(model.reference, exc) from exc
    contiguous_head_input(loaded)
    return loaded


def contiguous_head_input(model) -> None:
    """Hand the output layer a contiguous input. With `logits_to_keep` transformers passes it a
    slice of the last positions; for a frozen weight (PEFT freezes it) PyTorch's matmul then cannot
    fold the batch into one matrix product, and in bf16 on a CPU it copies the whole weight once per
    batch row instead (8 x 262k x 640 for Gemma: 5 s of a 6 s forward pass, bench/precision.py)."""
    head = model.get_output_embeddings()
    if head is not None:
        head.register_forward_pre_hook(lambda module, args: (args[0].contiguous(), *args[1:]))
