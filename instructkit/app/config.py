"""Stage 5's settings: the chat page, where it listens, and the models it shows."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from instructkit.config import (
    PRECISIONS,
    APIRetries,
    CompareModels,
    Finetune,
    LocalModel,
    PromptLimit,
    RunFolder,
    setting_problems,
)
from instructkit.data.responses import RESPONSES_FILE
from instructkit.errors import problems_error
from instructkit.models.references import require_adapter, run_adapter

# What a column shows in place of an answer (kept with a rating, never taken for a model's answer).
STOPPED, NOT_ANSWERED, NO_ANSWER = "(stopped)", "(not answered: ", "(no answer: see the app's log)"
PLACEHOLDERS = (STOPPED, NOT_ANSWERED, NO_ANSWER)


@dataclass
class ChatConfig(RunFolder, Finetune, LocalModel, PromptLimit, CompareModels, APIRetries):
    compare: list[str] = field(default_factory=list, metadata={"help": "more models in more columns, NAME=MODEL as in stage 2 (default: the ones stage 2 compared, from its .meta.json)"})
    precision: str = field(default="auto", metadata={"help": "fp32 or bf16 weights, as stage 2 --precision (auto picks what stage 2 picks on this machine, so that live answers can match its stored ones)", "choices": list(PRECISIONS)})
    test_file: str = field(default="", metadata={"help": f"records offered as examples when there is no {RESPONSES_FILE} (default: <output-dir>/data/test.json)"})
    host: str = field(default="127.0.0.1", metadata={"help": "address to serve on; 0.0.0.0 lets other machines in (there is no login)"})
    port: int = field(default=7860, metadata={"help": "port to serve on", "minimum": 1, "maximum": 65535})
    share: bool = field(default=False, metadata={"help": "also open a public gradio.live link (needs the internet; anyone with the link can use your models)"})
    max_new_tokens: int = field(default=128, metadata={"help": "the answer length the page starts with", "minimum": 1})
    max_queue: int = field(default=16, metadata={"help": "messages that may wait for the model at once; more are turned away", "minimum": 1})
    screenshot: str = field(default="", metadata={"help": "instead of serving: open the page in headless Chromium, send the first example, save a PNG here and exit"})


def check(config: ChatConfig) -> None:
    """Refuse bad settings and a missing adapter before torch and Gradio load (a run folder that
    cannot be written is fine: the page reads it, and writes only when a rating is saved)."""
    if problems := setting_problems(config, writes=False):
        raise problems_error(problems)
    if not config.merged:
        require_adapter(run_adapter(Path(config.output_dir), config.adapter))
