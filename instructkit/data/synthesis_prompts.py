"""Stage 0's prompts and the strict readers of their replies: Self-Instruct's steps (new tasks from
examples, is it a classification task, an instance input-first or output-first) and reflection.
Our own wording of the published formats; a reply that does not follow its format reads as None,
never as a half-parsed record."""

from __future__ import annotations

import re
from dataclasses import dataclass

NO_INPUT = "<none>"
# How an instance reply starts, by whether the task is a classification (the prompt's last line).
INSTANCE_PREFILL = {True: "Label:", False: "Input:"}


@dataclass(frozen=True)
class SeedTask:
    instruction: str
    input: str
    output: str
    is_classification: bool | None  # None: not known (seeds given as an Alpaca file)


def new_tasks_prompt(examples: list[str]) -> str:
    listed = "\n".join(f"Task {n}: {text}" for n, text in enumerate(examples, start=1))
    return (f"Below are {len(examples)} tasks that people ask an AI assistant to do. Continue the list with new "
            "tasks: each one instruction that a text-only assistant can carry out, different from the ones above "
            "and from each other in topic and in kind (questions, rewriting, classification, writing, "
            "explanation, reasoning, code). Number them as above, one task per line.\n\n"
            f"{listed}\nTask {len(examples) + 1}:")


_TASK_NUMBER = re.compile(r"(?im)^[ \t*#]*(?:task[ \t]*)?\d{1,3}[ \t]*[:.)][ \t]*")


def read_new_tasks(reply: str, truncated: bool) -> list[str]:
    """The tasks in a reply to `new_tasks_prompt`: text before the first number continues the open
    "Task N:", each numbered line after starts one. A task ends at a blank line. A reply cut off by
    the token limit loses its last task, which may be cut too."""
    pieces = _TASK_NUMBER.split(reply)
    tasks = [" ".join(piece.strip().split("\n\n")[0].split()) for piece in pieces]
    if truncated and tasks:
        tasks.pop()
    return [task for task in tasks if task]


def classification_prompt(instruction: str, examples: list[SeedTask]) -> str:
    shots = "\n\n".join(f"Task: {e.instruction}\nAnswer: {'Yes' if e.is_classification else 'No'}" for e in examples)
    return ("Can each task be answered with one label from a small fixed set (for example positive or negative, "
            "yes or no, true or false, or one of a few named categories)? Answer Yes or No.\n\n"
            f"{shots}\n\nTask: {instruction}\nAnswer:")


def read_yes_no(reply: str) -> bool | None:
    found = re.match(r"\W*(yes|no)\b", reply, re.IGNORECASE)
    return None if found is None else found.group(1).lower() == "yes"


def _shown_input(text: str) -> str:
    return text if text.strip() else NO_INPUT


def instance_prompt(instruction: str, example: SeedTask, classification: bool) -> str:
    """Input-first for most tasks; output-first (the label, then an input that has it) for
    classification, so that the labels do not all come out the same."""
    if classification:
        return ("The task below sorts its input into one of a few labels. First choose one of the possible labels, "
                "then write an input that has that label. Reply in the format of the example.\n\n"
                f"Example\nTask: {example.instruction}\nLabel: {example.output}\nInput: {_shown_input(example.input)}\n\n"
                f"Task: {instruction}\n{INSTANCE_PREFILL[True]}")
    return ("Write one example for the task below: the input it is applied to, then the correct output. If the task "
            f"needs no input, write Input: {NO_INPUT}. Reply in the format of the example.\n\n"
            f"Example\nTask: {example.instruction}\nInput: {_shown_input(example.input)}\nOutput: {example.output}\n\n"
            f"Task: {instruction}\n{INSTANCE_PREFILL[False]}")


_END_OF_EXAMPLE = re.compile(r"\n\s*(?:Task|Example)\b.*", re.DOTALL | re.IGNORECASE)


def read_instance(reply: str, classification: bool) -> tuple[str, str] | None:
    """(input, output) from a reply to `instance_prompt`, or None when it does not have both parts.
    The reply may or may not repeat the prompt's last label ("Input:" / "Label:")."""
    first, second = ("Label", "Input") if classification else ("Input", "Output")
    text = _END_OF_EXAMPLE.sub("", reply.strip())
    text = re.sub(rf"^\s*{first}\s*:", "", text, flags=re.IGNORECASE)
    found = re.match(rf"(.*?)\n?\s*{second}\s*:(.*)", text, re.DOTALL | re.IGNORECASE)
    if found is None:
        return None
    a, b = found.group(1).strip(), found.group(2).strip()
    if re.search(r"(?im)^\s*(?:input|output|label)\s*:", b):  # a second example run on: not one clear instance
        return None
    label, given = (a, b) if classification else (b, a)
    if given.lower() in (NO_INPUT, "none", "n/a", "<noinput>", ""):
        given = ""
    return given, label


def _sections(record: dict) -> str:
    return (f"[Instruction]\n{record['instruction']}\n[Input]\n{record['input']}\n"
            f"[Response]\n{record['output']}")


def reflect_instruction_prompt(record: dict) -> str:
    return ("Here is an instruction (with its input, if any) and a response from a dataset for training an AI "
            "assistant. Improve the pair: make the instruction clearer and more specific, and more demanding where "
            "that makes it a better test of an assistant; then write a high-quality response to your improved "
            "instruction: correct, complete and well organised.\n\n"
            f"{_sections(record)}\n\nReply in exactly this format and nothing else:\n"
            "[Instruction]\nthe improved instruction\n[Input]\nits input, or nothing\n[Response]\nthe response\n[End]")


def reflect_response_prompt(record: dict) -> str:
    return ("Here is an instruction (with its input, if any) and a response from a dataset for training an AI "
            "assistant. Rewrite the response so that it is correct, complete, helpful and well organised, keeping "
            "what is right in it.\n\n"
            f"{_sections(record)}\n\nReply in exactly this format and nothing else:\n[Response]\nthe improved response\n[End]")


def read_reflection(reply: str, fields: tuple[str, ...]) -> dict[str, str] | None:
    """The named sections of a reflection reply ("instruction", "input", "output"), or None when the
    reply lacks its [End] mark, a section, or text where text is needed."""
    if "[End]" not in reply:
        return None
    body = reply[:reply.index("[End]")]
    names = {"instruction": "Instruction", "input": "Input", "output": "Response"}
    markers = [f"[{names[f]}]" for f in fields]
    found: dict[str, str] = {}
    for n, (field, marker) in enumerate(zip(fields, markers)):
        if marker not in body:
            return None
        start = body.index(marker) + len(marker)
        end = body.index(markers[n + 1], start) if n + 1 < len(markers) and markers[n + 1] in body[start:] else len(body)
        found[field] = body[start:end].strip()
    if any(not found[f] for f in fields if f != "input"):
        return None
    return found
