"""The one prompt formatter: Alpaca, Phi-3 and the tokenizer's chat template.

The style a model was trained with is saved beside its adapter (`prompt_style.json`) and read back
by later stages, so training and generation can never format prompts differently.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .artifacts import read_json, write_json_atomic
from .data import Record
from .errors import UserError

STYLE_FILE = "prompt_style.json"
ALPACA_PREAMBLE = (
    "Below is an instruction that describes a task. "
    "Write a response that appropriately completes the request."
)


@dataclass(frozen=True)
class PromptStyle:
    name: str
    stop_strings: tuple[str, ...]

    def prompt(self, record: Record) -> str | list[dict[str, str]]:
        """What the model sees before its response: a string, or chat messages for `chat`."""
        instruction, extra = record["instruction"], record.get("input", "")
        if self.name == "alpaca":
            input_part = f"\n\n### Input:\n{extra}" if extra else ""
            return f"{ALPACA_PREAMBLE}\n\n### Instruction:\n{instruction}{input_part}\n\n### Response:\n"
        if self.name == "phi3":
            input_part = f"\n{extra}" if extra else ""
            return f"<|user|>\n{instruction}{input_part}\n<|assistant|>\n"
        return [{"role": "user", "content": f"{instruction}\n\n{extra}" if extra else instruction}]

    def training_example(self, record: Record) -> dict[str, Any]:
        """A TRL prompt-completion example; TRL adds EOS and masks the prompt out of the loss."""
        if self.name == "chat":
            return {"prompt": self.prompt(record), "completion": [{"role": "assistant", "content": record["output"]}]}
        return {"prompt": self.prompt(record), "completion": record["output"]}

    def render(self, record: Record, tokenizer) -> str:
        """The prompt as text, ready to tokenize for generation."""
        prompt = self.prompt(record)
        if isinstance(prompt, str):
            return prompt
        return tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)

    @property
    def multi_turn(self) -> bool:
        """Whether earlier turns reach the model: only a chat template has a place for them; the
        Alpaca and Phi-3 formats were trained on one instruction at a time."""
        return self.name == "chat"

    def render_turn(self, history: list[dict[str, str]], record: Record, tokenizer) -> str:
        """The prompt for `record` as the next user turn after `history` (alternating user and
        assistant messages); for one-instruction styles the history is not part of the prompt."""
        if not self.multi_turn or not history:
            return self.render(record, tokenizer)
        messages = history + self.prompt(record)
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    def check_tokenizer(self, tokenizer) -> None:
        if self.name == "chat" and not tokenizer.chat_template:
            raise UserError(
                "--prompt-style chat needs a tokenizer with a chat template, and this model has none "
                "(base models usually do not); use --prompt-style alpaca or phi3"
            )

    def save(self, folder: str | Path) -> None:
        write_json_atomic(Path(folder) / STYLE_FILE, {"prompt_style": self.name, "stop_strings": list(self.stop_strings)})


STYLES = {
    "alpaca": PromptStyle("alpaca", ("### Instruction:", "### Input:", "### Response:")),
    "phi3": PromptStyle("phi3", ("<|user|>", "<|assistant|>", "<|end|>")),
    "chat": PromptStyle("chat", ()),
}


def get_style(name: str) -> PromptStyle:
    if name not in STYLES:
        raise UserError(f"unknown prompt style {name!r}; choose one of {', '.join(STYLES)}")
    return STYLES[name]


def load_style(folder: str | Path) -> PromptStyle:
    """The style saved with a checkpoint by stage 1."""
    path = Path(folder) / STYLE_FILE
    return get_style(read_json(path)["prompt_style"])
