"""Template parity: the prompt an adapter was trained on against the prompt each runtime builds.

Stage 1 saves, for a few training records, the token ids of the prompt as training built it (the
conversation up to the last answer), and the token it put after every answer. Stages 1, 2 and 5
rebuild those prompts through their own path and compare ids, and check that their stop set holds
that token: a template or EOS that differs between training and inference (the failure users of
every finetuning tool report most) stops the stage with where it differs, instead of a model that
rambles past its answer.
"""

from __future__ import annotations

from collections.abc import Callable

from instructkit.data.prompts import STYLE_FILE, PromptStyle
from instructkit.data.records import Record
from instructkit.errors import UserError

PARITY_RECORDS = 4
PromptPath = Callable[[Record], list[int]]  # a record -> the prompt ids a runtime builds for it


def trained_prompt_ids(style: PromptStyle, record: Record, tokenizer) -> list[int]:
    """The ids training put before the record's last answer: the tokenized conversation for the
    chat styles; for the text styles, TRL's prompt + completion up to where it parts from the
    prompt tokenized alone (`common_prefix_length`: a token may merge across the boundary)."""
    if style.is_chat:
        example = style.token_example(record, tokenizer)
        mask = example["completion_mask"]
        end = len(mask) - mask[::-1].index(1)
        start = end
        while start > 0 and mask[start - 1]:
            start -= 1
        return example["input_ids"][:start]
    from trl.data_utils import common_prefix_length  # the rule TRL's prompt-completion path applies

    example = style.training_example(record, tokenizer)  # as stage 1 gave it to TRL
    prompt_ids = tokenizer(example["prompt"])["input_ids"]
    full = tokenizer(example["prompt"] + example["completion"])["input_ids"]
    return full[:common_prefix_length(prompt_ids, full)]


def parity_sample(style: PromptStyle, records: list[Record], tokenizer) -> dict:
    """What stage 1 saves in training_summary.json (`template_parity`)."""
    end = style.stop_token(tokenizer)
    return {"records": [{"record": record, "prompt_ids": trained_prompt_ids(style, record, tokenizer)}
                        for record in records[:PARITY_RECORDS]],
            "end_of_answer": end, "end_of_answer_id": tokenizer.convert_tokens_to_ids(end),
            "template": style.template is not None, "prefix": not style.is_chat}


def check_parity(saved: dict | None, paths: dict[str, PromptPath], stop_ids: list[int], tokenizer) -> dict:
    """Every path's prompt ids for the saved records equal training's, and `stop_ids` holds the
    token training ended answers with; a UserError that says which path differs and where, else
    what was checked (for the stage's manifest)."""
    if not saved:
        return {"checked": False, "reason": "the adapter was trained before stage 1 saved its prompts (0.4.0)"}
    for name, build in paths.items():
        for number, entry in enumerate(saved["records"]):
            built, trained = build(entry["record"]), entry["prompt_ids"]
            # Text styles: training's prompt may stop a token short of inference's, where TRL saw a
            # token merge across the boundary with the answer; all before it must agree.
            if (built[:len(trained)] if saved.get("prefix") else built) != trained:
                at = next((i for i, (a, b) in enumerate(zip(built, trained)) if a != b), min(len(built), len(trained)))
                cause = (f"The chat template in {STYLE_FILE} or the tokenizer changed since training"
                         if saved.get("template") else "The tokenizer changed since training")
                raise UserError(
                    f"template parity: {name} builds another prompt than the adapter was trained on "
                    f"(saved record {number}, token {at}: trained {_shown(trained, at, tokenizer)}, "
                    f"{name} {_shown(built, at, tokenizer)}). {cause}; restore it, or train again"
                )
    if saved["end_of_answer_id"] not in stop_ids:
        raise UserError(f"template parity: training ended every answer with {saved['end_of_answer']!r} "
                        f"(id {saved['end_of_answer_id']}), but generation stops on ids {sorted(stop_ids)} only: "
                        "the model would run past its answers")
    return {"checked": True, "records": len(saved["records"]), "paths": list(paths),
            "end_of_answer": saved["end_of_answer"], "stop_ids": sorted(stop_ids)}


def _shown(ids: list[int], at: int, tokenizer) -> str:
    """The tokens around position `at`, the one there bracketed."""
    if at >= len(ids):
        return f"ends after {len(ids)} tokens"
    tokens = tokenizer.convert_ids_to_tokens(ids[max(0, at - 3):at + 3])
    mark = min(at, 3)
    return " ".join(f"[{t!r}]" if i == mark else repr(t) for i, t in enumerate(tokens))


def stop_ids(generation_config, style: PromptStyle, tokenizer) -> list[int]:
    """What generation stops on: the model's EOS ids and the token the style ends answers with."""
    eos = generation_config.eos_token_id
    ids = [] if eos is None else [eos] if isinstance(eos, int) else list(eos)
    end = tokenizer.convert_tokens_to_ids(style.stop_token(tokenizer))
    return ids + [end] if isinstance(end, int) and end not in ids else ids
