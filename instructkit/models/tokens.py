"""Text that names a tokenizer's control tokens stays text: `<end_of_turn>`, `<|im_end|>` or `<eos>`
written in a record, a prompt, a chat message or a model's answer would otherwise be tokenized as
the control token itself (a record could teach a model to end its turn, a message close its own
turn and open a fake one). Each such name in text gets a zero-width space after its first
character, before any template renders it: every runtime then tokenizes it as text, and the
template's own control tokens, outside the text, stay what they are."""

from __future__ import annotations

import functools
import re
import weakref

BREAK = "\u200b"  # zero-width space
_PATTERNS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # tokenizer -> its control tokens' pattern


def _pattern(tokenizer) -> re.Pattern | None:
    if tokenizer not in _PATTERNS:
        names = {token.content for token in tokenizer.added_tokens_decoder.values() if token.special}
        _PATTERNS[tokenizer] = _compiled(tuple(sorted(n for n in names | set(tokenizer.all_special_tokens) if len(n) > 1)))
    return _PATTERNS[tokenizer]


@functools.lru_cache(maxsize=8)
def _compiled(names: tuple[str, ...]) -> re.Pattern | None:
    """One pattern per vocabulary of names (Gemma's 6,000 take 0.9 s to compile), longest first."""
    return re.compile("|".join(map(re.escape, sorted(names, key=len, reverse=True)))) if names else None


def plain_text(text: str, tokenizer) -> str:
    """`text` with every control token's name broken (idempotent: a broken name matches no more)."""
    pattern = _pattern(tokenizer)
    return pattern.sub(lambda found: found[0][0] + BREAK + found[0][1:], text) if pattern and text else text


def plain_messages(messages: list[dict], tokenizer) -> list[dict]:
    """Chat messages with their content as plain text."""
    return [{**m, "content": plain_text(m["content"], tokenizer)} if isinstance(m.get("content"), str) else m
            for m in messages]
