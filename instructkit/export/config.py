"""Stage 6's settings: which of the run's adapters ships, in which GGUF types, named how, and how
many test records prove that the shipped files answer as the trained model did."""

from __future__ import annotations

import importlib.util
import re
from dataclasses import dataclass
from pathlib import Path

from instructkit.config import Reruns, option, setting_problems
from instructkit.data.responses import PREFERENCE_MODEL, RESPONSES_FILE
from instructkit.errors import UserError, problems_error
from instructkit.models.references import PREFERENCE_DIR, run_adapter

EXPORT_DIR = "export"  # in the run folder
MANIFEST_FILE = "export.json"  # in the export folder, as the parity file and the staging folder
PARITY_FILE = "parity.json"
STAGING_DIR = ".stage6.partial"
GGUF_CHOICES = ("f16", "bf16", "q8_0", "none")
SHIPPED = ("finetuned", PREFERENCE_MODEL)
NAME_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")  # --name: letters, digits, '-', '_', '.'; it names files


@dataclass
class ExportConfig(Reruns):
    model: str = option("finetuned", "which of the run's models to ship: finetuned (stage 1's adapter) or preference (stage 1b's)", choices=list(SHIPPED))
    gguf_type: list[str] = option(["f16", "q8_0"], "GGUF files to write with llama.cpp's converter (f16, bf16, q8_0; none: the merged model only); the Modelfile uses the smallest", choices=list(GGUF_CHOICES))
    name: str = option("", "the model's name in the Modelfile, the model card and the leaderboard files (default: <run folder>-<model>)")
    system_prompt: str = option("", "a system prompt for the Modelfile's SYSTEM line (default: none; the prompt style's own, Alpaca's preamble for alpaca)")
    license: str = option("other", "the model card's license (the base model's license binds the finetune: gemma, llama3, apache-2.0, ...)")
    parity_records: int = option(20, "test records each exported file answers, greedy, compared with stage 2's answers (0: no answers compared)", minimum=0)
    serve: bool = option(False, "after the export, serve the GGUF on an OpenAI-compatible endpoint on 127.0.0.1 (llama.cpp's server, with llama-cpp-python installed) until Ctrl-C; stage 2 --compare shipped=openai:NAME --compare-base-url http://127.0.0.1:PORT/v1 evaluates it")
    port: int = option(8000, "the port --serve listens on", minimum=1, maximum=65535)


def shipped_adapter(config: ExportConfig) -> Path:
    """The adapter folder the export merges."""
    output_dir = Path(config.output_dir)
    return output_dir / PREFERENCE_DIR if config.model == PREFERENCE_MODEL else run_adapter(output_dir, "")


def export_name(config: ExportConfig) -> str:
    """--name, or `<run folder>-<model>` with what a file or Ollama name cannot hold replaced."""
    return config.name or safe_name(f"{Path(config.output_dir).resolve().name}-{config.model}").lstrip("-_.")


def safe_name(text: str) -> str:
    """`text` with what a file name or an Ollama model name cannot hold replaced by '-'."""
    return NAME_UNSAFE.sub("-", text)


def gguf_types(config: ExportConfig) -> list[str]:
    return [] if "none" in config.gguf_type else list(dict.fromkeys(config.gguf_type))


def check(config: ExportConfig) -> None:
    """Refuse bad settings and a run without the adapter or stage 2's answers before torch loads."""
    problems = setting_problems(config)
    if "none" in config.gguf_type and len(config.gguf_type) > 1:
        problems.append("--gguf-type none means no GGUF file; give it alone")
    if config.serve and not gguf_types(config):
        problems.append("--serve serves a GGUF file; give --gguf-type f16, bf16 or q8_0")
    if config.serve and (importlib.util.find_spec("llama_cpp") is None or importlib.util.find_spec("sse_starlette") is None):
        problems.append("--serve needs llama-cpp-python with its server: `make llama-cpp` builds it (about 6 minutes "
                        "on 2 cores), or pip install -r requirements-llama.txt")
    if config.name and (NAME_UNSAFE.search(config.name) or not config.name[0].isalnum()):
        problems.append(f"--name {config.name!r}: letters, digits, '-', '_' and '.', starting with a letter or digit "
                        "(it names files and the Ollama model)")
    if '"""' in config.system_prompt:
        problems.append('--system-prompt holds """, which the Modelfile cannot quote')
    if problems:
        raise problems_error(problems)
    adapter = shipped_adapter(config)
    if not (adapter / "adapter_config.json").is_file():
        raise UserError(f"{adapter}: no adapter_config.json; run stage 1 first"
                        + (" and then stage 1b, or export --model finetuned" if config.model == PREFERENCE_MODEL else ""))
    summary = run_adapter(Path(config.output_dir), "") / "training_summary.json"
    if not summary.is_file():
        raise UserError(f"{summary} is missing: the model card is made from it; run stage 1 to its end")
    responses = Path(config.output_dir) / RESPONSES_FILE
    if config.parity_records and not responses.is_file():
        raise UserError(f"{responses} is missing: the export compares the shipped model's answers with stage 2's; "
                        "run stage 2 first, or pass --parity-records 0")
