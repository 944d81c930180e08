"""Conversational records: OpenAI `messages`, ShareGPT `conversations` and TRL's prompt-completion
form, checked turn by turn and made into one shape.

A conversation record keeps its whole conversation in `messages` (`role`: system, user or
assistant; `content`: text), an optional system turn first, then user and assistant turns in turn,
ending with the assistant's answer. It also carries the fields every stage reads from a record:
`instruction` (the last user turn), `input` ("") and `output` (the last answer), so judges, metrics
and the report treat it as the single-turn record of its last exchange. An Alpaca record has no
`messages` and stays exactly as it was.
"""

from __future__ import annotations

import reprlib
from typing import Any

from instructkit.errors import not_unicode

ROLES = ("system", "user", "assistant")
SHAREGPT_ROLES = {"system": "system", "human": "user", "gpt": "assistant"}
# The keys that make a record conversational, per format, with the names its turns use.
FORMATS = {
    "messages": ("role", "content"),
    "conversations": ("from", "value"),  # ShareGPT
    "prompt": ("role", "content"),  # TRL's prompt-completion (text, or lists of role/content turns)
}

Message = dict[str, str]


def _formats(item: dict) -> list[str]:
    """The conversation keys a record has. A key holding null is absent (a hub dataset's rows hold
    every column, null where a row has none), and `prompt` counts only with `completion`, or
    without an `instruction` (an Alpaca file may carry a `prompt` column of its own)."""
    found = [key for key in FORMATS if item.get(key) is not None]
    if "prompt" in found and item.get("completion") is None and item.get("instruction") is not None:
        found.remove("prompt")
    return found


def is_conversation(item: dict) -> bool:
    return bool(_formats(item))


def conversation_problems(item: dict, where: str) -> tuple[list[Message], list[str]]:
    """The record's conversation as `messages`, and one line per problem, each naming the record,
    the turn (counted from 0) and the field."""
    formats = _formats(item)
    if len(formats) > 1:
        return [], [f"{where}: has both '{formats[0]}' and '{formats[1]}'; a record holds one conversation"]
    if formats == ["prompt"]:
        if "completion" not in item:
            return [], [f"{where}: field 'prompt' without 'completion' (TRL's prompt-completion form has both)"]
        prompt, completion = item["prompt"], item["completion"]
        if isinstance(prompt, str) and isinstance(completion, str):
            problems = [f"{where}: field '{name}' {why}" for name, text in (("prompt", prompt), ("completion", completion))
                        if (why := "is empty" if not text.strip() else not_unicode(text))]
            return [{"role": "user", "content": prompt}, {"role": "assistant", "content": completion}], problems
        if not (isinstance(prompt, list) and isinstance(completion, list)):
            return [], [f"{where}: fields 'prompt' and 'completion' must both be text or both be lists of turns"]
        messages, problems = read_turns(prompt, where, "prompt", FORMATS["prompt"], {}, ordered=False)
        answer, more = read_turns(completion, where, "completion", FORMATS["prompt"], {}, ordered=False)
        if not more and [m["role"] for m in answer] != ["assistant"]:
            more = [f"{where}: field 'completion' must be one assistant turn"]
        if not problems and messages[-1]["role"] != "user":
            problems = [f"{where}: prompt turn {len(messages) - 1}: field 'prompt' must end with a user turn"]
        if problems or more:
            return [], problems + more
        return messages + answer, order_problems(messages + answer, where, "prompt")
    key = formats[0]
    names = SHAREGPT_ROLES if key == "conversations" else {}
    return read_turns(item[key], where, key, FORMATS[key], names)


def read_turns(turns: Any, where: str, key: str, fields: tuple[str, str], role_names: dict[str, str],
           ordered: bool = True) -> tuple[list[Message], list[str]]:
    role_field, text_field = fields
    if not isinstance(turns, list) or not turns:
        return [], [f"{where}: field '{key}' must be a non-empty list of turns, found {reprlib.repr(turns)}"]
    allowed = role_names or {role: role for role in ROLES}
    messages: list[Message] = []
    problems: list[str] = []
    for index, turn in enumerate(turns):
        at = f"{where}: {key} turn {index}"
        if not isinstance(turn, dict):
            problems.append(f"{at}: expected an object with '{role_field}' and '{text_field}', found {type(turn).__name__}")
            continue
        unknown = sorted(key for key, value in turn.items() if key not in fields and value is not None)
        if unknown:
            problems.append(f"{at}: unknown field '{unknown[0]}' (a turn has '{role_field}' and '{text_field}')")
        role, text = turn.get(role_field), turn.get(text_field)
        if not isinstance(role, str) or role not in allowed:
            problems.append(f"{at}: field '{role_field}' is {reprlib.repr(role)}; use {', '.join(allowed)}")
        if text is None:
            problems.append(f"{at}: missing field '{text_field}'")
        elif not isinstance(text, str):
            problems.append(f"{at}: field '{text_field}' must be text, found {type(text).__name__}")
        elif not text.strip():
            problems.append(f"{at}: field '{text_field}' is empty")
        elif why := not_unicode(text):
            problems.append(f"{at}: field '{text_field}' {why}")
        if isinstance(role, str) and role in allowed and isinstance(text, str):
            messages.append({"role": allowed[role], "content": text})
    if problems or not ordered:
        return ([] if problems else messages), problems
    return messages, order_problems(messages, where, key)


def order_problems(messages: list[Message], where: str, key: str) -> list[str]:
    """A system turn first at most, then user and assistant turns in turn, ending on an answer."""
    problems = []
    expected = "user"
    for index, message in enumerate(messages):
        role = message["role"]
        if role == "system":
            if index:
                problems.append(f"{where}: {key} turn {index}: a system turn may only come first")
            continue
        if role != expected:
            after = messages[index - 1]["role"] if index else "the start"
            problems.append(f"{where}: {key} turn {index}: {role} turn after {after}; "
                            "user and assistant turns alternate, starting with the user")
            break
        expected = "assistant" if role == "user" else "user"
    if not problems and messages[-1]["role"] != "assistant":
        problems.append(f"{where}: {key} turn {len(messages) - 1}: the conversation ends on a {messages[-1]['role']} "
                        "turn; it must end with the assistant's answer (the one to learn)")
    return problems


def conversation_record(messages: list[Message]) -> dict[str, Any]:
    """The record of a checked conversation: its last exchange as instruction and output, the whole
    conversation in `messages`."""
    return {"instruction": messages[-2]["content"], "input": "", "output": messages[-1]["content"],
            "messages": messages}


def earlier_turns(record: dict) -> list[Message]:
    """The turns before a record's last user turn (system prompt included): none for Alpaca records."""
    return list(record.get("messages", [])[:-2])

