"""Extra models that answer stage 2's test split beside the base and its finetune
(`--compare NAME=MODEL`): any model transformers loads, a `.gguf` file, another run's adapter, or a
model served behind an OpenAI-compatible API. Each answers in its own prompt format: an instruct
model through its chat template, an adapter in the style it was trained with, a plain base model
in this run's style."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from instructkit.data.prompts import STYLE_FILE, PromptStyle, get_style, load_style
from instructkit.data.responses import COLUMN_NAME, PREFERENCE_MODEL, RESERVED_NAMES
from instructkit.errors import UserError, problems_error
from instructkit.models.backends import OpenAIBackend
from instructkit.models.references import backend_kind, base_reference, resolve_model, trained_quantization
from instructkit.runs.fingerprints import model_input, path_input


@dataclass(frozen=True)
class CompareModel:
    name: str
    reference: str  # as the user wrote it: a model reference, an adapter folder, or openai:<model>

    @property
    def kind(self) -> str:
        if backend_kind(self.reference) == "openai":
            return "openai"
        return "adapter" if (Path(self.reference).expanduser() / "adapter_config.json").is_file() else "model"


def parse_compare(specs: list[str]) -> list[CompareModel]:
    """NAME=MODEL pairs, every problem reported at once."""
    problems, models = [], []
    for spec in specs:
        name, sep, reference = spec.partition("=")
        if not sep or not reference:
            problems.append(f"--compare {spec!r}: write NAME=MODEL (for example smol=smollm2-135m-instruct)")
        elif not COLUMN_NAME.match(name) or name in RESERVED_NAMES:
            problems.append(f"--compare {spec!r}: the name must be lower-case letters, digits and _, and not "
                            f"{', '.join(RESERVED_NAMES)} (it becomes the column {name}_model_response)")
        elif name in [m.name for m in models]:
            problems.append(f"--compare {spec!r}: the name {name} is given twice")
        else:
            models.append(CompareModel(name, reference))
    if problems:
        raise problems_error(problems)
    return models


def with_preference_model(compared: list[CompareModel], preference: Path | None) -> list[CompareModel]:
    """The compare models after stage 1b's adapter (`RunModels.preference`), if any: stages 2 and 5
    answer with it as `preference` without being asked."""
    return [CompareModel(PREFERENCE_MODEL, str(preference)), *compared] if preference else compared


def compare_input(model: CompareModel, base_url: str) -> dict:
    """What a compare model's answers are made from, for the rerun rule."""
    if model.kind == "openai":
        return {"reference": model.reference, "source": "openai", "base_url": base_url or "https://api.openai.com/v1"}
    if model.kind == "adapter":
        return path_input(model.reference)
    return model_input(resolve_model(model.reference))


@dataclass(frozen=True)
class FailedRequest:
    """A served model's request that got no answer: kept out of the progress log, asked again by
    the next run (a refusal or a refused prompt is an answer: no text, stored as null)."""

    error: str


class OpenAIGenerator:
    """A served model answering through its own chat format, greedy, concurrently."""

    def __init__(self, model: str, base_url: str, concurrency: int, max_retries: int, timeout: float):
        self.backend = OpenAIBackend(model, base_url, concurrency=concurrency, seed=0, max_retries=max_retries,
                                     timeout=timeout, role="compare model", flag="--compare")

    def render(self, style: PromptStyle, record: dict, history: list[dict[str, str]] = ()) -> list[dict[str, str]]:
        return list(history) + get_style("chat").prompt(record)

    def lengths(self, prompts: list) -> list[int]:
        return [len(p[-1]["content"]) for p in prompts]

    def generate(self, role: str, prompts: list, max_new_tokens: int, style: PromptStyle) -> tuple[list[str | None], int]:
        replies = self.backend.chat(prompts, max_new_tokens)
        for reply in replies:
            if reply.error:
                print(f"warning: a compare model request failed: {reply.error}")
        return [FailedRequest(reply.error) if reply.failed else reply.text
                for reply in replies], 0  # the server's token counts are not read

    def prompt_limit(self, max_prompt_tokens: int, max_new_tokens: int) -> int | None:
        return None  # the server knows its model's context and refuses a longer prompt itself


def load_compare(model: CompareModel, run_style: PromptStyle, generator_cls, *, base_url: str, concurrency: int,
                 max_retries: int, timeout: float, trust_remote_code: bool, dtype=None):
    """(generator, the role it answers in, its prompt style): one load per model, local ones in `dtype`."""
    if model.kind == "openai":
        if not model.reference.removeprefix("openai:"):
            raise UserError(f"--compare {model.name}={model.reference}: write openai:<model>")
        return (OpenAIGenerator(model.reference.removeprefix("openai:"), base_url, concurrency, max_retries, timeout),
                "base", get_style("chat"))
    if model.kind == "adapter":
        folder = Path(model.reference).expanduser()
        style = load_style(folder) if (folder / STYLE_FILE).is_file() else run_style
        base = resolve_model(base_reference("", folder))
        return (generator_cls(base, folder, "", trust_remote_code, ["finetuned"], dtype, trained_quantization(folder)),
                "finetuned", style)
    generator = generator_cls(resolve_model(model.reference), None, "", trust_remote_code, ["base"], dtype)
    if generator.tokenizer.chat_template:
        return generator, "base", get_style("chat")
    if not run_style.is_chat:
        return generator, "base", run_style
    # The run's format, written for this model's vocabulary: ChatML has to be built from its own tokens
    try:
        return generator, "base", get_style("chatml").bind(generator.tokenizer)
    except UserError as exc:
        raise UserError(f"--compare {model.name}: {model.reference} has no chat template and no ChatML turn tokens, "
                        f"so it cannot be asked in this run's {run_style.name} format; compare an instruct model, "
                        "or compare it in a run with a text prompt style (alpaca, phi3)") from exc
