"""Loading a resolved model: its tokenizer, its weights in a precision, 4-bit for QLoRA (on a CUDA
GPU or a CPU: bitsandbytes has both backends), and the attention kernel the device is best at."""

from __future__ import annotations

import copy
import importlib.util
from collections import OrderedDict
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from instructkit.errors import UserError
from instructkit.models.references import ResolvedModel, hub_error

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase


def default_dtype() -> torch.dtype:
    if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32


def attention_implementation() -> str:
    """FlashAttention 2 on a CUDA GPU when flash-attn is installed, else PyTorch SDPA."""
    if torch.cuda.is_available() and importlib.util.find_spec("flash_attn") is not None:
        return "flash_attention_2"
    return "sdpa"


def qlora_settings(compute_dtype: torch.dtype) -> dict:
    """The 4-bit quantization QLoRA trains on (the QLoRA paper's recipe: NF4 with double
    quantization), as recorded in stage 1's settings and read back by stages 2, 3 and 5. The layers
    compute in `compute_dtype` (the run's --precision). Packed weights are stored as bf16 on every
    device, so that FSDP shards them with the bf16 LoRA parameters and one recipe runs everywhere."""
    return {"method": "bitsandbytes-4bit", "quant_type": "nf4", "double_quant": True,
            "compute_dtype": _name(compute_dtype), "storage_dtype": "bfloat16"}


def qlora_quantization(settings: dict):
    """transformers' BitsAndBytesConfig for recorded `qlora_settings`, once bitsandbytes is known to work here."""
    try:
        import bitsandbytes  # noqa: F401
    except ImportError as exc:  # a GPU install without it, or a broken wheel
        raise UserError(f"4-bit loading (QLoRA) needs bitsandbytes: pip install bitsandbytes ({exc})") from exc
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=settings["quant_type"],
        bnb_4bit_use_double_quant=settings["double_quant"],
        bnb_4bit_compute_dtype=getattr(torch, settings["compute_dtype"]),
        bnb_4bit_quant_storage=getattr(torch, settings["storage_dtype"]),
    )


def _name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


# Tokenizers this process loaded more than once, by folder version: stages load the same one several
# times (stage 6 per check, stage 2 per model in one process) and transformers 5 takes seconds to
# build Gemma's 262k vocabulary (it parses tokenizer.json, then rebuilds the backend from it); a copy
# takes a third of that. Kept from the second load on, so a process that loads one once pays no copy.
# Never for remote code: its tokenizer may not copy.
_SEEN: OrderedDict[tuple, None] = OrderedDict()
_KEPT: OrderedDict[tuple, object] = OrderedDict()

# transformers 5's tokenizer classes that keep the vocabulary and merges they built the backend from
# as Python objects no method reads after __init__ (read in its source); datasets pickles them into
# the fingerprint of every map over a function holding the tokenizer (TRL's dataset preparation
# runs several): Gemma's 262k tokens and 515k merges 2.8 s a hash, 0.4 s without them.
_BUILT_FROM_PYTHON_VOCABULARY = {"GemmaTokenizer", "LlamaTokenizer", "GPT2Tokenizer", "Qwen2Tokenizer"}


def _remember(store: OrderedDict, key: tuple, value, size: int) -> None:
    store[key] = value
    store.move_to_end(key)
    while len(store) > size:
        store.popitem(last=False)


def _folder_version(path: str) -> tuple | None:
    """A local model folder's files (and its extra chat templates) by name, inode, size and
    modification time; None for a hub id or a folder that changes while it is read."""
    folder = Path(path)
    if not folder.is_dir():
        return None
    try:
        files = [f for pattern in ("*", "additional_chat_templates/*") for f in folder.glob(pattern) if f.is_file()]
        return tuple(sorted((str(f.relative_to(folder)), s.st_ino, s.st_size, s.st_mtime_ns)
                            for f in files for s in [f.stat()]))
    except OSError:
        return None


def load_tokenizer(model: ResolvedModel, trust_remote_code: bool = False) -> PreTrainedTokenizerBase:
    """The model's tokenizer (pad token set), the caller's own to change."""
    version = None if trust_remote_code else _folder_version(model.path)
    key = (str(Path(model.path).resolve()), version)
    if version is not None and key in _KEPT:
        _KEPT.move_to_end(key)
        return copy.deepcopy(_KEPT[key])
    tokenizer = _load_tokenizer(model, trust_remote_code)
    if version is not None and key in _SEEN:
        _remember(_KEPT, key, copy.deepcopy(tokenizer), 2)
    elif version is not None:
        _remember(_SEEN, key, None, 64)
    return tokenizer


def _load_tokenizer(model: ResolvedModel, trust_remote_code: bool) -> PreTrainedTokenizerBase:
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(model.path, trust_remote_code=trust_remote_code)
    except OSError as exc:
        raise hub_error(model.reference, exc) from exc
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    kind = type(tokenizer)
    if kind.__name__ in _BUILT_FROM_PYTHON_VOCABULARY and kind.__module__.startswith("transformers.models."):
        for name in ("_vocab", "_merges"):
            tokenizer.__dict__.pop(name, None)
    return tokenizer


def load_causal_lm(model: ResolvedModel, *, quantization: dict | None = None, trust_remote_code: bool = False,
                   attention: str | None = None, dtype: torch.dtype | None = None):
    """The model's weights in `dtype` (default: bf16 on a GPU that has it, else fp32), 4-bit as
    `quantization` (`qlora_settings`) says when given; `attention` overrides the device's default
    attention kernel."""
    from transformers import AutoModelForCausalLM

    kwargs: dict = {
        "dtype": dtype or default_dtype(),
        "attn_implementation": attention or attention_implementation(),
        "trust_remote_code": trust_remote_code,
    }
    if quantization:
        kwargs |= quantized_loading(quantization)
    try:
        loaded = AutoModelForCausalLM.from_pretrained(model.path, **kwargs)
    except OSError as exc:
        raise hub_error(model.reference, exc) from exc
    contiguous_head_input(loaded)
    return loaded


def quantized_loading(quantization: dict) -> dict:
    """from_pretrained's arguments for a 4-bit base: bitsandbytes quantizes on the device it runs on."""
    return {"quantization_config": qlora_quantization(quantization),
            "device_map": {"": torch.cuda.current_device()} if torch.cuda.is_available() else "cpu"}


def contiguous_head_input(model) -> None:
    """Hand the output layer a contiguous input. With `logits_to_keep` transformers passes it a
    slice of the last positions; for a frozen weight (PEFT freezes it) PyTorch's matmul then cannot
    fold the batch into one matrix product, and in bf16 on a CPU it copies the whole weight once per
    batch row instead (8 x 262k x 640 for Gemma: 5 s of a 6 s forward pass, bench/precision.py)."""
    head = model.get_output_embeddings()
    if head is not None:
        head.register_forward_pre_hook(lambda module, args: (args[0].contiguous(), *args[1:]))
