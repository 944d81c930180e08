"""The run's prompt style written for the runtimes a model ships to, and the check that each
renders what training saw.

Two forms: a Jinja chat template (the merged model's tokenizer, the GGUF's `tokenizer.chat_template`,
which llama.cpp, LM Studio and vLLM apply) and an Ollama Modelfile `TEMPLATE` (Go template syntax).
The text styles get a Jinja template too, so a chat client's message (`PromptStyle.user_text`)
lands where training put the instruction. The Modelfile template is derived by rendering the
Jinja one around marker messages, so both come from the one template training used.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from jinja2 import TemplateError

from instructkit.data.conversations import Message, earlier_turns
from instructkit.data.prompts import ALPACA_PREAMBLE, PromptStyle, adds_bos
from instructkit.data.records import Record
from instructkit.errors import UserError

TEXT_TEMPLATES = {
    "alpaca": ("{{ BOS }}{% set turns = messages[1:] if messages[0]['role'] == 'system' else messages %}"
               "{% if messages[0]['role'] == 'system' %}{{ messages[0]['content'] }}{% else %}"
               f"{{{{ '{ALPACA_PREAMBLE}' }}}}{{% endif %}}{{{{ '\\n\\n' }}}}"
               "{% for message in turns %}{% if message['role'] == 'user' %}"
               "{{ '### Instruction:\\n' + message['content'] + '\\n\\n' }}"
               "{% else %}{{ '### Response:\\n' + message['content'] + '\\n\\n' }}{% endif %}{% endfor %}"
               "{% if add_generation_prompt %}{{ '### Response:\\n' }}{% endif %}"),
    "phi3": ("{{ BOS }}{% for message in messages %}"
             "{{ '<|' + message['role'] + '|>\\n' + message['content'] + '\\n' }}{% endfor %}"
             "{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}"),
}
# transformers' {% generation %} marks the trained span; no runtime needs it and some refuse it.
GENERATION_TAGS = re.compile(r"{%-?\s*(?:end)?generation\s*-?%}")
SYSTEM_MARK, USER_MARK, ANSWER_MARK = "\x00system\x00", "\x00user\x00", "\x00answer\x00"
MODELFILE_FORM = re.compile(r"(?s)(?:\{\{ if \.System \}\}(?P<system>.*?)(?:\{\{ else \}\}(?P<default>.*?))?\{\{ end \}\})?"
                            r"(?P<turn>.*?)\{\{ \.Response \}\}(?P<after>.*)")


def runtime_template(style: PromptStyle, tokenizer) -> str:
    """The Jinja chat template the exported model carries: training's own for the chat styles,
    the text style's format otherwise, with the BOS the tokenizer adds as its first token."""
    if style.template:
        return GENERATION_TAGS.sub("", style.template.jinja)
    if style.name == "chat":  # saved before templates were (0.4.0): the tokenizer's own
        return GENERATION_TAGS.sub("", tokenizer.get_chat_template())
    return TEXT_TEMPLATES[style.name].replace("{{ BOS }}", "{{ bos_token }}" if adds_bos(tokenizer) else "")


def runtime_messages(style: PromptStyle, record: Record) -> list[Message]:
    """The messages a chat client sends for `record`: its earlier turns, then the user's text."""
    return earlier_turns(record) + [{"role": "user", "content": style.user_text(record)}]


def model_text(style: PromptStyle, record: Record, tokenizer) -> str:
    """The text the model saw in training before the record's answer, BOS included as text (a chat
    template writes it; a text style's tokenizer adds it)."""
    text = style.render(record, tokenizer)
    return (tokenizer.bos_token or "") + text if not style.is_chat and adds_bos(tokenizer) else text


def modelfile_template(render: Callable[[list[Message], bool], str], bos: str) -> str:
    """The Go template Ollama renders a turn with (`.System`, `.Prompt`, `.Response`), cut out of
    the Jinja template's renderings of marker messages; Ollama adds the BOS itself."""

    def rendered(messages: list[Message], generation: bool = True) -> str:
        text = render(messages, generation)
        return text[len(bos):] if bos and text.startswith(bos) else text

    user = {"role": "user", "content": USER_MARK}
    plain = rendered([user])
    try:
        with_system = rendered([{"role": "system", "content": SYSTEM_MARK}, user])
    except TemplateError:  # a template that refuses a system turn (Mistral's, Gemma 2's): none in Ollama's either
        with_system = plain
    answered = rendered([user, {"role": "assistant", "content": ANSWER_MARK}], False)
    shared = 0  # the turn itself: the longest common end of both renderings
    while shared < min(len(with_system), len(plain)) and with_system[-1 - shared] == plain[-1 - shared]:
        shared += 1
    turn = plain[len(plain) - shared:]
    system_part, default_part = with_system[:len(with_system) - shared], plain[:len(plain) - shared]
    after = answered[answered.index(ANSWER_MARK) + len(ANSWER_MARK):] if ANSWER_MARK in answered else ""
    literal = "".join([system_part, default_part, turn, after])
    if "{{" in literal or USER_MARK not in turn:
        raise UserError("the chat template cannot be written as an Ollama TEMPLATE (its text holds '{{', or the "
                        "user's message is not in its last turn); use the GGUF's own chat template in Ollama")
    head = ""
    if SYSTEM_MARK in system_part:
        head = "{{ if .System }}" + system_part.replace(SYSTEM_MARK, "{{ .System }}")
        head += ("{{ else }}" + default_part if default_part else "") + "{{ end }}"
    return head + turn.replace(USER_MARK, "{{ .Prompt }}") + "{{ .Response }}" + after


def render_modelfile(template: str, system: str, prompt: str) -> str:
    """What Ollama gives the model for one user turn with `template` (as `modelfile_template`
    writes it), BOS left out: the text checked against training's."""
    form = MODELFILE_FORM.fullmatch(template)
    if form is None:
        raise ValueError(f"not a template modelfile_template writes: {template!r}")
    head = (form["system"] or "").replace("{{ .System }}", system) if system else form["default"] or ""
    return head + form["turn"].replace("{{ .Prompt }}", prompt)


def template_mismatches(style: PromptStyle, records: list[Record], tokenizer,
                        runtimes: dict[str, Callable[[Record], str | None]]) -> list[dict]:
    """Each runtime's rendering of each record that differs from training's (None: the runtime
    cannot render that record, e.g. Ollama's turn template for a conversation's later turns)."""
    found = []
    for index, record in enumerate(records):
        trained = model_text(style, record, tokenizer)
        for name, render in runtimes.items():
            text = render(record)
            if text is not None and text != trained:
                found.append({"runtime": name, "record": index, "trained": trained, "runtime_prompt": text})
    return found


def mismatch_error(found: list[dict], where: str) -> UserError:
    first = found[0]
    return UserError(f"template parity: {first['runtime']} renders record {first['record']} differently than training "
                     f"({len(found)} renderings differ; all in {where}).\ntraining: {first['trained']!r}\n"
                     f"{first['runtime']}: {first['runtime_prompt']!r}")
