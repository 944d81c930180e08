"""Config pieces the stages share, each flag's help written once. A stage's config dataclass (in
its package's `config.py`) inherits the pieces it needs and adds its own fields; dataclass fields
become flags (`instructkit.cli`). These modules import nothing heavy, so `--help` and the refusal
of a bad setting answer before torch loads."""

from __future__ import annotations

from dataclasses import dataclass, field

PRECISIONS = ("auto", "fp32", "bf16")
MODEL_CHOICES = ("both", "base", "finetuned")


def option(default, help: str, **extra):
    """A dataclass field that becomes a flag with this help text (and argparse extras: choices, nargs, const)."""
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata={"help": help, **extra})
    return field(default=default, metadata={"help": help, **extra})


@dataclass
class RunFolder:
    """One folder is one run: every stage reads its inputs from it and writes its outputs to it."""

    output_dir: str = option("outputs", "the run folder: the stage reads the earlier stages' files from it and writes its own to it")


@dataclass
class Reruns(RunFolder):
    """A stage whose finished output is reused on a rerun and whose partial work is resumed."""

    overwrite: bool = option(False, "do the work again although the finished output matches its inputs and settings (partial results of such a run are kept and resumed)")
    restart: bool = option(False, "discard partial results of an interrupted run instead of resuming them")


@dataclass
class LocalModel:
    """Models this process loads."""

    trust_remote_code: bool = option(False, "allow model code from the hub (only for models you trust)")
    precision: str = option("auto", "fp32 or bf16 weights; auto: bf16 on a GPU that has it, and on a CPU whatever bench/precision.py measured faster there (recorded with the reason beside the stage's results)", choices=list(PRECISIONS))


@dataclass
class Finetune:
    """The finetuned model a stage after stage 1 uses, and its base."""

    adapter: str = option("", "stage 1's adapter folder (default: <output-dir>/finetuned)")
    base_model: str = option("", "base model reference (default: the one stage 1 trained on)")
    merged: str = option("", "a merged finetuned model folder to use instead of base + adapter")


@dataclass
class APIRetries:
    """Requests to an OpenAI-compatible server: the key comes from OPENAI_API_KEY only."""

    max_retries: int = option(4, "retries per request to an OpenAI-compatible server on 429/5xx/timeouts, with backoff")
    request_timeout: float = option(120.0, "seconds before one API request is abandoned and retried")


@dataclass
class APIClient(APIRetries):
    """Requests sent in batches: several in flight at once."""

    concurrency: int = option(4, "requests in flight at once to an OpenAI-compatible server")


@dataclass
class CompareModels:
    """Models answering beside base and finetune (stage 2 writes them, the chat app shows them)."""

    compare: list[str] = option([], "more models that answer too, NAME=MODEL each: an embedded name, hub id, model folder, merged finetune, .gguf file, another run's adapter folder, or openai:<model> (with --compare-base-url); writes <NAME>_model_response")
    compare_base_url: str = option("", "the OpenAI-compatible server of openai: compare models (the key comes from OPENAI_API_KEY)")
