"""The one prompt formatter: Alpaca, Phi-3, the tokenizer's chat template (`chat`) and ChatML for
models without one (`chatml`).

The style a model was trained with is saved beside its adapter (`prompt_style.json`): for the chat
styles with the template's Jinja text and the token that ends a turn, so every later stage renders
prompts with the very template training used and stops where training taught the model to stop.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from instructkit.data.conversations import Message, earlier_turns
from instructkit.data.records import Record
from instructkit.errors import UserError
from instructkit.models.tokens import plain_messages, plain_text
from instructkit.runs.artifacts import read_json, write_json_atomic

STYLE_FILE = "prompt_style.json"
ALPACA_PREAMBLE = (
    "Below is an instruction that describes a task. "
    "Write a response that appropriately completes the request."
)
CHAT_STYLES = ("chat", "chatml")
# What comes between a record's instruction and its input in the user's turn (chat styles: a blank line).
INPUT_SEPARATORS = {"alpaca": "\n\n### Input:\n", "phi3": "\n"}
# ChatML's turn markers, or failing those a pair of turn tokens the vocabulary already has (Gemma's),
# written in ChatML's layout: a base model then learns the format without new, untrained embeddings.
CHATML_TOKENS = (("<|im_start|>", "<|im_end|>"), ("<start_of_turn>", "<end_of_turn>"))
CHATML = ("{{ BOS }}{% for message in messages %}{{ 'START' + message['role'] + '\\n' }}"
          "{% if message['role'] == 'assistant' %}{% generation %}{{ message['content'] + 'END' }}{% endgeneration %}"
          "{{ '\\n' }}{% else %}{{ message['content'] + 'END\\n' }}{% endif %}{% endfor %}"
          "{% if add_generation_prompt %}{{ 'STARTassistant\\n' }}{% endif %}")


# Text fields of a record, a pair or a rated answer: what a user or a model wrote, never markup
TEXT_FIELDS = ("instruction", "input", "output", "chosen", "rejected", "completion")


def as_text(item: dict, tokenizer) -> dict:
    """`item` (a record, a pair, a rated answer) with its text fields and turns as plain text for
    `tokenizer` (models/tokens.py: a control token's name in them is not that token)."""
    plain = {key: plain_text(value, tokenizer) if key in TEXT_FIELDS and isinstance(value, str) else value
             for key, value in item.items()}
    for key in ("messages", "history"):
        if isinstance(item.get(key), list):
            plain[key] = plain_messages(item[key], tokenizer)
    return plain


@dataclass(frozen=True)
class ChatTemplate:
    """A chat template as training used it: its Jinja text and the token that ends an assistant
    turn (the EOS the model learns, and the one every runtime stops on)."""

    jinja: str
    end_of_turn: str


@dataclass(frozen=True)
class PromptStyle:
    name: str
    stop_strings: tuple[str, ...]
    template: ChatTemplate | None = None  # chat styles: set by `bind` in stage 1, read back by `load_style`

    @property
    def is_chat(self) -> bool:
        return self.name in CHAT_STYLES

    @property
    def multi_turn(self) -> bool:
        """Whether the format has a place for earlier turns of a conversation: a chat template does;
        the Alpaca and Phi-3 formats were made for one instruction at a time (earlier turns are
        still written out before the new one, as FastChat does for such templates)."""
        return self.is_chat

    def prompt(self, record: Record, history: list[Message] = ()) -> str | list[Message]:
        """What the model sees before its answer to `record`, after `history` and the record's own
        earlier turns: a string, or chat messages for the chat styles."""
        earlier = list(history) + earlier_turns(record)
        if self.is_chat:
            return earlier + [{"role": "user", "content": self.user_text(record)}]
        system = earlier[0]["content"] if earlier and earlier[0]["role"] == "system" else None
        turns = earlier[1:] if system is not None else earlier
        exchanges = "".join(self._exchange(user["content"], answer["content"]) for user, answer in zip(turns[::2], turns[1::2]))
        if self.name == "alpaca":  # the preamble is Alpaca's system prompt: a conversation's own replaces it
            return (f"{ALPACA_PREAMBLE if system is None else system}\n\n{exchanges}"
                    f"### Instruction:\n{self.user_text(record)}\n\n### Response:\n")
        system_part = f"<|system|>\n{system}\n" if system is not None else ""
        return f"{system_part}{exchanges}<|user|>\n{self.user_text(record)}\n<|assistant|>\n"

    def user_text(self, record: Record) -> str:
        """The record's instruction and input as this style writes them in the user's turn: the one
        message a chat client sends for it (an exported template then renders what training saw)."""
        instruction, extra = record["instruction"], record.get("input", "")
        return f"{instruction}{INPUT_SEPARATORS.get(self.name, chr(10) * 2)}{extra}" if extra else instruction

    def _exchange(self, user: str, assistant: str) -> str:
        if self.name == "alpaca":
            return f"### Instruction:\n{user}\n\n### Response:\n{assistant}\n\n"
        return f"<|user|>\n{user}\n<|assistant|>\n{assistant}\n"

    def conversation(self, record: Record) -> list[Message]:
        """The whole conversation of a record, its answer last (chat styles)."""
        return self.prompt(record) + [{"role": "assistant", "content": record["output"]}]

    def training_example(self, record: Record, tokenizer) -> dict[str, Any]:
        """A TRL prompt-completion example for the text styles, its text as plain text for the
        `tokenizer` it trains with (`as_text`); TRL adds EOS and masks the prompt out of the loss.
        (The chat styles train on `token_example`, every answer of the conversation.)"""
        record = as_text(record, tokenizer)
        return {"prompt": self.prompt(record), "completion": record["output"]}

    def render_turn(self, history: list[Message], record: Record, tokenizer) -> str:
        """The prompt for `record` as the next user turn after `history` (and the record's own
        earlier turns), as text ready to tokenize with `encode`."""
        prompt = self.prompt(as_text(record, tokenizer), plain_messages(list(history), tokenizer))
        return prompt if isinstance(prompt, str) else self.apply(prompt, tokenizer, add_generation_prompt=True)

    def render(self, record: Record, tokenizer) -> str:
        return self.render_turn([], record, tokenizer)

    def apply(self, messages: list[Message], tokenizer, add_generation_prompt: bool) -> str:
        """Messages (their text already plain: `as_text`) through the saved template (the tokenizer's
        own for a style saved without one)."""
        return tokenizer.apply_chat_template(messages, chat_template=self.template.jinja if self.template else None,
                                             tokenize=False, add_generation_prompt=add_generation_prompt)

    def encode(self, text: str, tokenizer) -> list[int]:
        """Token ids of a rendered prompt: a chat template writes its own BOS; plain prompts get the
        tokenizer's, as TRL gave them in training."""
        return tokenizer(text, add_special_tokens=not self.is_chat)["input_ids"]

    def token_example(self, record: Record, tokenizer, max_tokens: int | None = None) -> dict[str, list[int]]:
        """A tokenized conversation for TRL with `completion_mask` on every assistant turn (its text
        and the template's end-of-turn token), the system and user turns masked out; the turns
        that start past `max_tokens` (which training truncates away) are not looked at, so a
        conversation of thousands of turns costs what its first `max_tokens` do.

        Each answer's span is where the conversation up to it, rendered with the generation prompt,
        ends, to where the conversation including it ends; a template that renders earlier turns
        differently once later ones follow (some drop reasoning from old turns) cannot be trained
        turn by turn, and is refused."""
        messages = self.conversation(as_text(record, tokenizer))
        ids = self.encode(self.apply(messages, tokenizer, add_generation_prompt=False), tokenizer)
        mask = [0] * len(ids)
        for turn, message in enumerate(messages):
            if message["role"] != "assistant":
                continue
            start = self.encode(self.apply(messages[:turn], tokenizer, add_generation_prompt=True), tokenizer)
            if max_tokens is not None and len(start) >= max_tokens:
                break
            end = self.encode(self.apply(messages[:turn + 1], tokenizer, add_generation_prompt=False), tokenizer)
            if ids[:len(start)] != start or ids[:len(end)] != end:
                raise UserError(f"the {self.name} template renders turn {turn} of a conversation differently once "
                                "later turns follow, so its answers cannot be learned turn by turn; "
                                "train with --prompt-style chatml")
            stop = tokenizer.convert_tokens_to_ids(self.stop_token(tokenizer))
            answer = ids[len(start):len(end)]
            # Up to the end-of-turn token, as a template's {% generation %} block marks it (not the newline after)
            length = len(answer) - answer[::-1].index(stop) if stop in answer else len(answer)
            mask[len(start):len(start) + length] = [1] * length
        return {"input_ids": ids, "completion_mask": mask}

    def stop_token(self, tokenizer) -> str:
        """The token training puts after each answer: the template's end of turn, or TRL's EOS."""
        return self.template.end_of_turn if self.template else tokenizer.eos_token

    def bind(self, tokenizer) -> PromptStyle:
        """This style with the template it trains with on `tokenizer` (stage 1): the tokenizer's own
        for `chat`, ChatML for `chatml`; the text styles need none."""
        if self.name == "chat":
            if not tokenizer.chat_template:
                raise UserError("--prompt-style chat needs a tokenizer with a chat template, and this model has none "
                                "(base models usually do not); use --prompt-style chatml, alpaca or phi3")
            # get_chat_template: the default one where a tokenizer names several
            return replace(self, template=ChatTemplate(tokenizer.get_chat_template(), _end_of_turn(tokenizer)))
        if self.name == "chatml":
            return replace(self, template=chatml_template(tokenizer))
        return self

    def save(self, folder: str | Path) -> None:
        saved: dict[str, Any] = {"prompt_style": self.name, "stop_strings": list(self.stop_strings)}
        if self.template:
            saved |= {"chat_template": self.template.jinja, "end_of_turn": self.template.end_of_turn}
        write_json_atomic(Path(folder) / STYLE_FILE, saved)


def chatml_template(tokenizer) -> ChatTemplate:
    """ChatML with the first pair of turn tokens the vocabulary has as single tokens, and the BOS
    the tokenizer puts first when it has one (Gemma is trained with it)."""
    vocabulary = tokenizer.get_vocab()
    for start, end in CHATML_TOKENS:
        # each must be one token in text too (a special token), or the model never writes the end
        if start in vocabulary and end in vocabulary and tokenizer(start + end, add_special_tokens=False)[
                "input_ids"] == [vocabulary[start], vocabulary[end]]:
            jinja = (CHATML.replace("{{ BOS }}", "{{ bos_token }}" if adds_bos(tokenizer) else "")
                     .replace("START", start).replace("END", end))
            return ChatTemplate(jinja, end)
    raise UserError("--prompt-style chatml writes ChatML with turn tokens the vocabulary already has "
                    f"({' or '.join('/'.join(pair) for pair in CHATML_TOKENS)}), and this tokenizer has neither pair; "
                    "use --prompt-style alpaca or phi3, or chat if the model has a chat template")


def adds_bos(tokenizer) -> bool:
    """Whether the tokenizer puts a BOS token first (as it did in training, for the text styles)."""
    return bool(tokenizer.bos_token) and tokenizer("a")["input_ids"][:1] == [tokenizer.bos_token_id]


def _end_of_turn(tokenizer) -> str:
    """The special token a chat template writes right after an assistant's text, else EOS."""
    marker = "\x00ANSWER\x00"
    text = tokenizer.apply_chat_template([{"role": "user", "content": "hi"}, {"role": "assistant", "content": marker}],
                                         tokenize=False)
    after = text[text.index(marker) + len(marker):] if marker in text else ""
    special = set(tokenizer.all_special_ids) | set(tokenizer.added_tokens_decoder)
    ids = [i for i in tokenizer(after, add_special_tokens=False)["input_ids"] if i in special]
    return tokenizer.convert_ids_to_tokens(ids[0]) if ids else tokenizer.eos_token


STYLES = {
    "alpaca": PromptStyle("alpaca", ("### Instruction:", "### Input:", "### Response:")),
    "phi3": PromptStyle("phi3", ("<|user|>", "<|assistant|>", "<|end|>")),
    "chat": PromptStyle("chat", ()),
    "chatml": PromptStyle("chatml", ()),
}


def get_style(name: str) -> PromptStyle:
    if name not in STYLES:
        raise UserError(f"unknown prompt style {name!r}; choose one of {', '.join(STYLES)}")
    return STYLES[name]


def load_style(folder: str | Path) -> PromptStyle:
    """The style saved with a checkpoint by stage 1, with its chat template (an adapter saved
    before templates were saved uses its tokenizer's own)."""
    path = Path(folder) / STYLE_FILE
    saved = read_json(path)
    name = saved.get("prompt_style") if isinstance(saved, dict) else None
    if name not in STYLES:
        raise UserError(f"{path}: 'prompt_style' must be one of {', '.join(STYLES)}, found {name!r}")
    style = STYLES[name]
    if not style.is_chat or ("chat_template" not in saved and name == "chat"):  # `chat` before 0.4.0: the tokenizer's own
        if "chat_template" in saved:
            raise UserError(f"{path}: a {name} style has no chat template; remove 'chat_template'")
        return style
    jinja, end = saved.get("chat_template"), saved.get("end_of_turn")
    if not (isinstance(jinja, str) and jinja.strip() and isinstance(end, str) and end):
        raise UserError(f"{path}: 'chat_template' and 'end_of_turn' must be non-empty text (stage 1 saves them)")
    return replace(style, template=ChatTemplate(jinja, end))
