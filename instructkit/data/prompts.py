"""The one prompt formatter: Alpaca, Phi-3 and the tokenizer's chat template.

The style a model was trained with is saved beside its adapter (`prompt_style.json`) and read back
by later stages, so training and generation can never format prompts differently.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from instructkit.data.records import Record
from instructkit.errors import UserError
from instructkit.runs.artifacts import read_json, write_json_atomic

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
        """Whether the format has a place for earlier turns of a conversation: a chat template does;
        the Alpaca and Phi-3 formats were trained on one instruction at a time (earlier turns can
        still be written out before the new one, as FastChat does for such templates)."""
        return self.name == "chat"

    def render_turn(self, history: list[dict[str, str]], record: Record, tokenizer) -> str:
        """The prompt for `record` as the next user turn after `history` (alternating user and
        assistant messages): through the chat template, or with the earlier exchanges written out
        in this format before the new instruction."""
        if not history:
            return self.render(record, tokenizer)
        if self.name == "chat":
            return tokenizer.apply_chat_template(history + self.prompt(record), tokenize=False,
                                                 add_generation_prompt=True)
        earlier = "".join(self._exchange(user["content"], assistant["content"])
                          for user, assistant in zip(history[::2], history[1::2]))
        current = self.prompt(record)
        if self.name == "alpaca":  # one preamble, then every exchange
            return current.replace(f"{ALPACA_PREAMBLE}\n\n", f"{ALPACA_PREAMBLE}\n\n{earlier}", 1)
        return earlier + current

    def _exchange(self, user: str, assistant: str) -> str:
        if self.name == "alpaca":
            return f"### Instruction:\n{user}\n\n### Response:\n{assistant}\n\n"
        return f"<|user|>\n{user}\n<|assistant|>\n{assistant}\n"

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
