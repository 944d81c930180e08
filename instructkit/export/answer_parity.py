"""Proof that a shipped model answers as the trained one: each exported artifact answers a sample
of test records greedily, through the runtime that would serve it, and is compared with stage 2's
stored answers: the prompt's token ids, the answer's text, and where the two answers part."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from instructkit.data.prompts import PromptStyle
from instructkit.data.records import Record
from instructkit.export.templates import model_text
from instructkit.generate.generator import TransformersGenerator, clean_response

SHOWN_TOKENS = 3  # either side of the first differing token


@dataclass
class Answers:
    prompt_ids: list[list[int]]
    texts: list[str]


Runtime = Callable[[list[Record]], Answers]


def transformers_runtime(generator: TransformersGenerator, style: PromptStyle, max_new_tokens: int,
                         batches: list[list[Record]]) -> Runtime:
    """Answers as stage 2 made them: the same generator code, greedy, in stage 2's `batches` (each
    whole, the records outside the sample too: padding changes the arithmetic, and a near tie
    between two tokens can fall either way)."""

    def answer(records: list[Record]) -> Answers:
        texts: dict[int, str] = {}
        for batch in batches:
            replies, _ = generator.generate("base", [generator.render(style, r) for r in batch], max_new_tokens, style)
            texts |= {id(r): reply for r, reply in zip(batch, replies)}
        return Answers([generator.prompt_ids(style, r) for r in records], [texts[id(r)] for r in records])

    return answer


def llama_cpp_runtime(path: Path, style: PromptStyle, tokenizer, max_new_tokens: int, context: int = 4096) -> Runtime:
    """Answers through llama.cpp (llama-cpp-python): the GGUF's own tokenizer, greedy, no repeat
    penalty (llama-cpp-python's default of 1.1 is not what training or stage 2 did)."""
    from llama_cpp import Llama

    llm = Llama(model_path=str(path), n_ctx=context, n_threads=os.cpu_count(), verbose=False)

    def answer(records: list[Record]) -> Answers:
        ids, texts = [], []
        for record in records:
            # the text with BOS written out, its special tokens parsed: the ids the model was trained on
            prompt = llm.tokenize(model_text(style, record, tokenizer).encode(), add_bos=False, special=True)
            done = llm.create_completion(prompt, max_tokens=max_new_tokens, temperature=0.0, repeat_penalty=1.0,
                                         stop=list(style.stop_strings) or None)
            ids.append(prompt)
            texts.append(clean_response(done["choices"][0]["text"], style.stop_strings))
        return Answers(ids, texts)

    return answer


def compare_answers(name: str, runtime: Runtime, records: list[Record], stored: list[str],
                    trained_ids: list[list[int]], tokenizer) -> dict:
    """One artifact's answers against stage 2's: identical prompts and answers, counted; for each
    answer that differs, the first token where it does."""
    started = time.perf_counter()
    got = runtime(records)
    seconds = time.perf_counter() - started
    differences = []
    for index, (mine, theirs) in enumerate(zip(got.texts, stored)):
        if mine != theirs:
            differences.append({"record": index, **first_difference(theirs, mine, tokenizer),
                                "stage2_answer": theirs, "artifact_answer": mine})
    same_prompt = sum(a == b for a, b in zip(got.prompt_ids, trained_ids))
    return {"artifact": name, "records": len(records), "identical": len(records) - len(differences),
            "share_identical": round((len(records) - len(differences)) / len(records), 4) if records else None,
            "prompt_ids_identical": same_prompt, "differences": differences, "seconds": round(seconds, 1)}


def first_difference(stored: str, answer: str, tokenizer) -> dict:
    """The first token (of the trained tokenizer) at which `answer` parts from `stored`, with a few
    tokens either side."""
    a = tokenizer(stored, add_special_tokens=False)["input_ids"]
    b = tokenizer(answer, add_special_tokens=False)["input_ids"]
    at = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))

    def around(ids: list[int]) -> list[str]:
        return tokenizer.convert_ids_to_tokens(ids[max(0, at - SHOWN_TOKENS):at + SHOWN_TOKENS + 1])

    return {"first_differing_token": at, "stage2_tokens": around(a), "artifact_tokens": around(b),
            "stage2_token": tokenizer.convert_ids_to_tokens(a[at]) if at < len(a) else "(end)",
            "artifact_token": tokenizer.convert_ids_to_tokens(b[at]) if at < len(b) else "(end)"}
