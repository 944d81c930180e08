"""What the judge is asked, and strict reading of what it answers.

Reference-guided single grading (the judge sees the expected output) and MT-Bench-style pairwise
comparison. A reply is read only when it is unambiguous; anything else is `None`, kept with its raw
text, and never turned into a number.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

SYSTEM = "You are a strict, fair grader of answers to instructions. You follow the requested reply format exactly."

SCORE_TEMPLATE = """Score the response to the instruction below on a scale from 0 to 100, where 100 means \
it is fully correct and complete and matches the expected output in substance, and 0 means it is \
wrong, off-topic or empty.

### Instruction:
{instruction}
{input_block}
### Expected output:
{expected}

### Response to score:
{response}

Reply with the integer score only."""

SCORE_RETRY = ("\n\nYour previous reply could not be read as a score. Reply with one integer from 0 to 100 "
               "and nothing else: no words, no punctuation.")

PAIRWISE_TEMPLATE = """Compare two responses to the instruction below{against}. \
Judge correctness first, then helpfulness; do not let the order of the responses or their length \
influence you.

### Instruction:
{instruction}
{input_block}{reference_block}
### Response A:
{response_a}

### Response B:
{response_b}

Which response is better? Reply with exactly one of: A, B, tie."""

PAIRWISE_RETRY = "\n\nYour previous reply could not be read. Reply with exactly one word: A, B or tie."

# Local judges get the start of their reply written for them, so that a small model continues with
# the number or the letter instead of answering the instruction itself (SmolLM2-135M does that).
# The parsers read "Score: 85" and "Verdict: A" as they read "85" and "A".
SCORE_PREFILL = "Score:"
VERDICT_PREFILL = "Verdict:"


def _input_block(record: dict) -> str:
    return f"\n### Input:\n{record['input']}\n" if record.get("input") else ""


def score_prompt(record: dict, response: str) -> str:
    return SCORE_TEMPLATE.format(instruction=record["instruction"], input_block=_input_block(record),
                                 expected=record["output"], response=response)


def pairwise_prompt(record: dict, response_a: str, response_b: str, with_reference: bool = True) -> str:
    """Without the reference when one of the two responses is the expected output itself (AlpacaEval's
    setup: a model against a reference answer, judged on their merits)."""
    reference = f"\n### Expected output:\n{record['output']}\n" if with_reference else ""
    return PAIRWISE_TEMPLATE.format(against=" against the expected output" if with_reference else "",
                                    instruction=record["instruction"], input_block=_input_block(record),
                                    reference_block=reference, response_a=response_a, response_b=response_b)


@dataclass(frozen=True)
class Parsed:
    value: int | str | None  # a score 0-100, a verdict "A"/"B"/"tie", or None
    how: str  # "exact", "first_line" or "unparsed" (with the reason)


# One integer, optionally labelled, in [[double brackets]] or written as "/100"; a full stop allowed.
_SCORE = re.compile(r"(?:score\s*[:=]?\s*)?(?:\[\[)?(\d{1,3})(?:\]\])?(?:\s*(?:/|out of)\s*100)?\s*\.?", re.IGNORECASE)
_VERDICT = re.compile(r"(?:verdict\s*[:=]?\s*)?(?:\[\[)?(?:response\s+)?(A|B|tie)(?:\]\])?\s*\.?", re.IGNORECASE)


def _strip_markup(line: str) -> str:
    """Markdown that API judges write around a score (`**Score:** 85`, `Score: **85**`, `## Score: 85`)."""
    return re.sub(r"[*_`]", "", line).strip().lstrip("#").strip("\"' ").strip()


def _first_line(text: str) -> str:
    return next((line for line in text.splitlines() if line.strip()), "")


def _parse(text: str | None, pattern: re.Pattern, convert, what: str) -> Parsed:
    """The whole reply must match; failing that, its first line alone (the rest read as reasons)."""
    if text is None or not text.strip():
        return Parsed(None, "unparsed: empty reply")
    for candidate, how in ((text, "exact"), (_first_line(text), "first_line")):
        match = pattern.fullmatch(_strip_markup(candidate))
        if match:
            value, problem = convert(match.group(1))
            return Parsed(value, how) if problem is None else Parsed(None, f"unparsed: {problem}")
    return Parsed(None, f"unparsed: no lone {what}")


def _score_value(digits: str) -> tuple[int | None, str | None]:
    value = int(digits)
    return (value, None) if 0 <= value <= 100 else (None, f"{value} is outside 0-100")


def _verdict_value(word: str) -> tuple[str, None]:
    return ("tie" if word.lower() == "tie" else word.upper()), None


def parse_score(text: str | None) -> Parsed:
    """'85', 'Score: 85', '**85**', '**Score:** 85', 'Score: [[85]]', '85/100', '85.' -> 85;
    '85\\nbecause...' -> 85 (first line);
    'between 70 and 80', '8.5', '150', '-5', '' -> None."""
    return _parse(text, _SCORE, _score_value, "score")


def parse_verdict(text: str | None) -> Parsed:
    """'A', '[[B]]', 'Response A', 'tie.' -> 'A'/'B'/'tie'; 'A or B', 'both' -> None."""
    return _parse(text, _VERDICT, _verdict_value, "verdict")
