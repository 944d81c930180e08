"""Config pieces the stages share, each flag's help written once. A stage's config dataclass (in
its package's `config.py`) inherits the pieces it needs and adds its own fields; dataclass fields
become flags (`instructkit.cli`). These modules import nothing heavy, so `--help` and the refusal
of a bad setting answer before torch loads."""

from __future__ import annotations

import math
import operator
from dataclasses import dataclass, field, fields

from instructkit.errors import not_unicode
from instructkit.runs.artifacts import output_dir_problem

PRECISIONS = ("auto", "fp32", "bf16")
MODEL_CHOICES = ("both", "base", "finetuned")
# Bounds a number field may carry in its metadata: the rule, and how a message says it.
BOUNDS = {"minimum": (operator.ge, "at least"), "exclusive_minimum": (operator.gt, "more than"),
          "maximum": (operator.le, "at most"), "exclusive_maximum": (operator.lt, "less than")}
SEED = {"minimum": 0, "maximum": 2**32 - 1}  # what numpy's seeding (and so transformers' set_seed) takes


def option(default, help: str, **extra):
    """A dataclass field that becomes a flag with this help text, argparse extras (choices, nargs,
    const) and bounds (BOUNDS: minimum=1, exclusive_minimum=0, ...; checked by `setting_problems`)."""
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata={"help": help, **extra})
    return field(default=default, metadata={"help": help, **extra})


def setting_problems(config: object, writes: bool = True) -> list[str]:
    """Each setting outside its field's bounds, each number that is not finite and each text that
    is not Unicode, named by its flag: flags and --config values alike, after parsing; and, for a
    stage that `writes`, an --output-dir it could not write to."""
    problems = []
    if writes and (problem := output_dir_problem(config.output_dir)):
        problems.append(problem)
    for f in fields(config):
        flag = f"--{f.name.replace('_', '-')}"
        value = getattr(config, f.name)
        bad_text = next((why for text in (value if isinstance(value, list) else [value])
                         if isinstance(text, str) and (why := not_unicode(text))), None)
        if bad_text:
            problems.append(f"{flag} {bad_text}")
        if isinstance(value, bool) or not isinstance(value, int | float):
            continue
        if not math.isfinite(value):
            problems.append(f"{flag} must be a finite number (got {value})")
            continue
        for key, (holds, words) in BOUNDS.items():
            if key in f.metadata and not holds(value, f.metadata[key]):
                problems.append(f"{flag} must be {words} {f.metadata[key]} (got {value})")
    return problems


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
    unquantized_base: bool = option(False, "after QLoRA the base loads in 4-bit NF4, as it was trained (recorded); this loads it unquantized instead")


@dataclass
class PromptLimit:
    """Prompts a local model is asked: one too long is not cut, since that would change the question."""

    max_prompt_tokens: int = option(2048, "a prompt longer than this (or than the model's context less the answer's tokens) is not answered: stage 2 stores null and counts it in the manifest, the chat page says so; 0: only the model's context", minimum=0)


@dataclass
class APIRetries:
    """Requests to an OpenAI-compatible server: the key comes from OPENAI_API_KEY only."""

    max_retries: int = option(4, "retries per request to an OpenAI-compatible server on 429/5xx/timeouts, with backoff", minimum=0)
    request_timeout: float = option(120.0, "seconds before one API request is abandoned and retried", exclusive_minimum=0)


@dataclass
class APIClient(APIRetries):
    """Requests sent in batches: several in flight at once."""

    concurrency: int = option(4, "requests in flight at once to an OpenAI-compatible server", minimum=1)


@dataclass
class CompareModels:
    """Models answering beside base and finetune (stage 2 writes them, the chat app shows them)."""

    compare: list[str] = option([], "more models that answer too, NAME=MODEL each: an embedded name, hub id, model folder, merged finetune, .gguf file, another run's adapter folder, or openai:<model> (with --compare-base-url); writes <NAME>_model_response")
    compare_base_url: str = option("", "the OpenAI-compatible server of openai: compare models (the key comes from OPENAI_API_KEY)")
