"""Preference data for stage 1b: pairs of a better (`chosen`) and a worse (`rejected`) answer to one
prompt, read from TRL's, LLMs-from-scratch's, UltraFeedback's and Orca-DPO's forms, checked by
file, record and field (every problem at once), and made into one shape:

    {"instruction": ..., "input": ..., "history": [earlier turns, a system prompt first],
     "chosen": ..., "rejected": ..., "source": {where the pair came from}}

`history` is left out when there is none. `prompt_record(pair)` gives the record stage 1's prompt
styles render, so a pair is asked exactly as stage 1 trained and stage 2 asks.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

from instructkit.data.conversations import earlier_turns, order_problems, read_turns
from instructkit.data.records import Record, read_hub, read_raw_records, record_list
from instructkit.errors import UserError, not_unicode, problems_error

Pair = dict[str, Any]
# What each form holds besides `chosen` and `rejected`, as the error for a record that fits none says.
FORMS = ("TRL's prompt/chosen/rejected (text or turn lists)", "LLMs-from-scratch's instruction/input/chosen/rejected",
         "UltraFeedback's chosen/rejected conversations", "Orca-DPO's system/question/chosen/rejected")
TURN_FIELDS = ("role", "content")
SAME_ANSWER = " are the same answer; a pair needs two different ones"


def load_pairs(source: str, drop_identical: bool = False) -> list[Pair]:
    """The pairs of a .json/.jsonl file, or of a hub dataset (`owner/name`, or `owner/name:split`
    for another split than train: UltraFeedback-binarized's is train_prefs). A pair whose two
    answers are the same is an error, or with `drop_identical` left out, saying which."""
    path = Path(source).expanduser()
    if path.is_file():
        raw, label = record_list(read_raw_records(path), path), str(path)
    elif not path.exists() and "/" in source and not path.suffix:
        name, _, split = source.partition(":")
        raw, label = read_hub(name, split or "train"), source
    else:
        raise UserError(f"{source}: no such file; give a preference .json or .jsonl file ({'; '.join(FORMS)}) "
                        "or a hub dataset (owner/name[:split])")
    pairs, problems = pair_problems(raw, label)
    identical = [p for p in problems if p.endswith(SAME_ANSWER)]
    if drop_identical and identical and len(identical) == len(problems):
        shown = ", ".join(p.split(": ")[-2] for p in identical[:5])
        print(f"warning: {label}: {len(identical)} pairs have the same answer twice and are left out ({shown}"
              f"{', ...' if len(identical) > 5 else ''})")
    elif problems:
        hint = [f"({len(identical)} pairs have the same answer twice: --drop-identical leaves them out)"] if identical else []
        raise problems_error(problems + hint)
    return [pair for pair in pairs if pair["chosen"].strip() != pair["rejected"].strip()]


def source_kind(pair: Pair) -> str:
    """Where a pair came from, in a word: a file's pair that stage 0 made says how (file (sampled))."""
    source = pair["source"]
    made = source.get("made") or {}
    return f"{source['kind']} ({made['kind']})" if isinstance(made.get("kind"), str) else source["kind"]


def pair_problems(raw: list, label: str) -> tuple[list[Pair], list[str]]:
    """The pairs of a list of records, and one line per problem naming the record and the field."""
    if not raw:
        raise UserError(f"{label}: contains no records")
    pairs, problems = [], []
    for index, item in enumerate(raw):
        where = f"{label}: record {index}"
        if not isinstance(item, dict):
            problems.append(f"{where}: expected an object, found {type(item).__name__}")
            continue
        pair, found = _pair(item, where)
        problems += found
        if not found or all(p.endswith(SAME_ANSWER) for p in found):
            # A pair stage 0 made says how (`made`): its record, the models, the scores
            made = {"made": item["source"]} if isinstance(item.get("source"), dict) else {}
            pairs.append(pair | {"source": {"kind": "file", "file": label, "record": index, **made}})
    return pairs, problems


def _pair(item: dict, where: str) -> tuple[Pair, list[str]]:
    missing = [f"{where}: missing field '{key}'" for key in ("chosen", "rejected") if item.get(key) is None]
    if missing:
        return {}, missing
    chosen, rejected = item["chosen"], item["rejected"]
    if isinstance(chosen, list) or isinstance(rejected, list):
        pair, problems = _conversational(item, where)
        if problems:  # said of the turns: not again of the fields as text
            return {}, problems
    elif item.get("question") is not None:  # Orca-DPO
        history = [{"role": "system", "content": item["system"]}] if item.get("system") else []
        pair, problems = {"instruction": item["question"], "input": "", "history": history}, []
        problems += text_problems(item, where, ("question", "system"), optional=("system",))
    elif item.get("instruction") is not None:  # LLMs-from-scratch (its `output` is the original answer)
        pair = {"instruction": item["instruction"], "input": item.get("input") or ""}
        problems = text_problems(item, where, ("instruction", "input"), optional=("input",))
    elif item.get("prompt") is not None:  # TRL's standard form
        pair, problems = {"instruction": item["prompt"], "input": ""}, text_problems(item, where, ("prompt",))
    else:
        return {}, [f"{where}: no prompt: expected one of {'; '.join(FORMS)}"]
    if "chosen" not in pair:
        problems += text_problems(item, where, ("chosen", "rejected"))
        pair |= {"chosen": chosen, "rejected": rejected}
    if not problems and pair["chosen"].strip() == pair["rejected"].strip():
        problems.append(f"{where}: fields 'chosen' and 'rejected'{SAME_ANSWER}")
    if not pair.get("history"):
        pair.pop("history", None)
    return pair, problems


def text_problems(item: dict, where: str, fields: tuple[str, ...], optional: tuple[str, ...] = ()) -> list[str]:
    """One line per field of `item` that is not non-empty text (an `optional` one may be absent or empty)."""
    problems = []
    for field in fields:
        value = item.get(field)
        if value is None and field in optional:
            continue
        if value is None:
            problems.append(f"{where}: missing field '{field}'")
        elif not isinstance(value, str):
            problems.append(f"{where}: field '{field}' must be text, found {type(value).__name__}")
        elif not value.strip() and field not in optional:
            problems.append(f"{where}: field '{field}' is empty")
        elif why := not_unicode(value):
            problems.append(f"{where}: field '{field}' {why}")
    return problems


def _conversational(item: dict, where: str) -> tuple[Pair, list[str]]:
    """TRL's conversational form (prompt turns, chosen and rejected one assistant turn each) or
    UltraFeedback's (chosen and rejected whole conversations sharing all but their last turn)."""
    turns, problems = {}, []
    for field in ("chosen", "rejected"):
        turns[field], found = read_turns(item[field], where, field, TURN_FIELDS, {}, ordered=False)
        problems += found
    prompt = item.get("prompt")
    if isinstance(prompt, list):
        prompt_turns, found = read_turns(prompt, where, "prompt", TURN_FIELDS, {}, ordered=False)
        problems += found
    if problems:
        return {}, problems
    if isinstance(prompt, list):  # TRL: the answers are one assistant turn each
        for field in ("chosen", "rejected"):
            if [m["role"] for m in turns[field]] != ["assistant"]:
                problems.append(f"{where}: field '{field}' must be one assistant turn after the prompt's turns")
        conversation = prompt_turns + turns["chosen"][-1:]
    else:  # UltraFeedback: two whole conversations; their prompt (a text field there) is the shared turns
        if turns["chosen"][:-1] != turns["rejected"][:-1]:
            problems.append(f"{where}: fields 'chosen' and 'rejected' differ before their last turn; "
                            "a pair answers one conversation")
        for field in ("chosen", "rejected"):
            if turns[field][-1]["role"] != "assistant":
                problems.append(f"{where}: field '{field}' must end with the assistant's answer")
        conversation = turns["chosen"]
        if isinstance(prompt, str) and len(conversation) > 1 and prompt.strip() != conversation[-2]["content"].strip():
            problems.append(f"{where}: field 'prompt' differs from the last user turn of 'chosen'")
    if problems:
        return {}, problems
    problems = order_problems(conversation, where, "chosen" if not isinstance(prompt, list) else "prompt")
    if problems:
        return {}, problems
    return {"instruction": conversation[-2]["content"], "input": "", "history": conversation[:-2],
            "chosen": turns["chosen"][-1]["content"], "rejected": turns["rejected"][-1]["content"]}, []


def prompt_record(pair: Pair) -> Record:
    """The record a prompt style renders for a pair (or a KTO label): its earlier turns, then its
    instruction, its (chosen) answer last."""
    answer = pair["chosen"] if "chosen" in pair else pair["completion"]
    record: Record = {"instruction": pair["instruction"], "input": pair["input"], "output": answer}
    if pair.get("history"):
        record["messages"] = pair["history"] + [{"role": "user", "content": pair["instruction"]},
                                                {"role": "assistant", "content": answer}]
    return record


def prompt_key(record: Record) -> tuple:
    """What makes two prompts the same question: the user's turn as a chat model is sent it (an
    instruction and its input joined, as a conversation holds them) and the earlier exchanges; a
    system prompt does not make another question."""
    history = record.get("history") if "history" in record else earlier_turns(record)
    user = f"{record['instruction']}\n\n{record['input']}" if record["input"] else record["instruction"]
    return (user.strip(), tuple((m["role"], m["content"].strip()) for m in history or () if m["role"] != "system"))


def drop_repeats(pairs: list[Pair]) -> tuple[list[Pair], int]:
    """Pairs without exact repeats (same prompt, chosen and rejected), and how many were dropped."""
    seen, unique = set(), []
    for pair in pairs:  # (a KTO label: its answer and whether it is good)
        answers = (pair["chosen"].strip(), pair["rejected"].strip()) if "chosen" in pair else (pair["completion"].strip(), pair["label"])
        key = (prompt_key(pair), *answers)
        if key not in seen:
            seen.add(key)
            unique.append(pair)
    return unique, len(pairs) - len(unique)


def split_pairs(pairs: list[Pair], val_fraction: float, seed: int) -> tuple[list[Pair], list[Pair]]:
    """A seeded train/validation split that keeps every prompt's pairs (and KTO labels) on one side,
    so the held-out preference accuracy is measured on questions the model was not tuned on."""
    prompts = list(dict.fromkeys(prompt_key(p) for p in pairs))
    random.Random(seed).shuffle(prompts)
    n_val = round(len(prompts) * val_fraction)
    if val_fraction > 0 and n_val == 0 or n_val >= len(prompts):
        raise UserError(f"{len(pairs)} pairs ({len(prompts)} prompts) cannot be split into training and "
                        f"--val-fraction {val_fraction} validation pairs; give more pairs or change --val-fraction")
    held_out = set(prompts[:n_val])
    return [p for p in pairs if prompt_key(p) not in held_out], [p for p in pairs if prompt_key(p) in held_out]

