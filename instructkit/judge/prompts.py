"""What the judge is asked, and strict reading of what it answers.

Reference-guided single grading (the judge sees the expected output) and MT-Bench-style pairwise
comparison. A reply is read only when it is unambiguous; anything else is `None`, kept with its raw
text, and never turned into a number.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from instructkit.data.conversations import earlier_turns

SYSTEM = "You are a strict, fair grader of answers to instructions. You follow the requested reply format exactly."

SCORE_TEMPLATE = """Score the response to the instruction below on a scale from 0 to 100, where 100 means \
it is fully correct and complete and matches the expected output in substance, and 0 means it is \
wrong, off-topic or empty.

{context_block}### Instruction:
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

{context_block}### Instruction:
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


def _context_block(record: dict) -> str:
    """A conversation's turns before the instruction (system prompt included): the judge needs them
    to judge an answer to "And in seconds?"; nothing for a single-turn record."""
    earlier = earlier_turns(record)
    if not earlier:
        return ""
    turns = "\n".join(f"{turn['role'].capitalize()}: {turn['content']}" for turn in earlier)
    return f"### Earlier in the conversation (context only: judge the response to the last instruction):\n{turns}\n\n"


def score_prompt(record: dict, response: str) -> str:
    return SCORE_TEMPLATE.format(context_block=_context_block(record), instruction=record["instruction"],
                                 input_block=_input_block(record), expected=record["output"], response=response)


def pairwise_prompt(record: dict, response_a: str, response_b: str, with_reference: bool = True) -> str:
    """Without the reference when one of the two responses is the expected output itself (AlpacaEval's
    setup: a model against a reference answer, judged on their merits)."""
    reference = f"\n### Expected output:\n{record['output']}\n" if with_reference else ""
    return PAIRWISE_TEMPLATE.format(against=" against the expected output" if with_reference else "",
                                    context_block=_context_block(record), instruction=record["instruction"],
                                    input_block=_input_block(record), reference_block=reference, response_a=response_a, response_b=response_b)


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


# MT-Bench's formats in our own words (the published prompts are in FastChat's judge_prompts.jsonl):
# a 1-10 rating written as [[rating]] after a short explanation, against a reference answer for
# math, reasoning and coding; for a second turn the whole conversation is shown and the last answer
# graded; pairwise verdicts as [[A]], [[B]] or [[C]] (a tie).
MT_SINGLE = """Act as an impartial judge of the answer an AI assistant gave to the user's {what} below. \
Weigh helpfulness, relevance, accuracy, depth, creativity and level of detail.{reference_rule} \
Explain your judgement briefly and objectively, then give a rating from 1 to 10 in exactly this \
form: [[rating]], for example: Rating: [[5]].

{body}"""

MT_PAIRWISE = """Act as an impartial judge of two AI assistants' answers to the user's {what} below, and \
decide which assistant answered better. Weigh helpfulness, relevance, accuracy, depth, creativity and \
level of detail.{reference_rule} Do not let the order in which the answers appear, their length or \
the assistants' names sway you. Explain your comparison briefly, then give your verdict in exactly \
this form: [[A]] if assistant A is better, [[B]] if assistant B is better, [[C]] for a tie.

{body}"""

MT_REFERENCE_RULE = (" A reference answer is given: compare the assistant's answer with it, and find and "
                     "correct any mistakes.")
MT_RATING_RETRY = "\n\nYour previous reply had no rating in the required form. End with: Rating: [[N]], N from 1 to 10."
MT_VERDICT_RETRY = "\n\nYour previous reply had no verdict in the required form. End with exactly one of [[A]], [[B]], [[C]]."
# Local judges: the reply starts inside the brackets, so a small model writes the number or letter.
MT_RATING_PREFILL = "Rating: [["
MT_VERDICT_PREFILL = "Verdict: [["


def _conversation(turns: list[str], answers: list[str], name: str) -> str:
    parts = []
    for question, answer in zip(turns, answers):
        parts.append(f"### User:\n{question}\n\n### {name}:\n{answer}")
    return "\n\n".join(parts)


def _reference_block(reference: list[str] | None, turn: int) -> str:
    if reference is None:
        return ""
    if turn == 0:
        return f"[Reference answer]\n{reference[0]}\n[End of reference answer]\n\n"
    answers = "\n\n".join(f"Turn {t + 1}: {reference[t]}" for t in range(turn + 1))
    return f"[Reference answers]\n{answers}\n[End of reference answers]\n\n"


def mt_single_prompt(turns: list[str], answers: list[str], turn: int, reference: list[str] | None) -> str:
    """Grade the answer to user turn `turn` (0-based); from the second turn on, with the conversation."""
    if turn == 0:
        body = f"[Question]\n{turns[0]}\n\n{_reference_block(reference, 0)}[Assistant's answer]\n{answers[0]}\n[End of answer]"
        what = "question"
    else:
        body = (f"{_reference_block(reference, turn)}[Conversation]\n{_conversation(turns[:turn + 1], answers[:turn + 1], 'Assistant')}"
                "\n[End of conversation]")
        what = f"question in turn {turn + 1} (grade only the assistant's last answer)"
    return MT_SINGLE.format(what=what, reference_rule=MT_REFERENCE_RULE if reference else "", body=body)


def mt_pairwise_prompt(turns: list[str], answers_a: list[str], answers_b: list[str], turn: int,
                       reference: list[str] | None) -> str:
    """Compare two assistants' answers to user turn `turn`, each after its own conversation so far."""
    if turn == 0:
        body = (f"[Question]\n{turns[0]}\n\n{_reference_block(reference, 0)}[Assistant A's answer]\n{answers_a[0]}\n"
                f"[End of assistant A's answer]\n\n[Assistant B's answer]\n{answers_b[0]}\n[End of assistant B's answer]")
        what = "question"
    else:
        body = (f"{_reference_block(reference, turn)}[Conversation with assistant A]\n"
                f"{_conversation(turns[:turn + 1], answers_a[:turn + 1], 'Assistant A')}\n[End of conversation with assistant A]"
                f"\n\n[Conversation with assistant B]\n{_conversation(turns[:turn + 1], answers_b[:turn + 1], 'Assistant B')}"
                "\n[End of conversation with assistant B]")
        what = f"question in turn {turn + 1} (compare only the assistants' last answers)"
    return MT_PAIRWISE.format(what=what, reference_rule=MT_REFERENCE_RULE if reference else "", body=body)


_MT_RATING = re.compile(r"\[\[\s*(\d+(?:\.\d+)?)\s*\]\]")
_MT_VERDICT = re.compile(r"\[\[\s*([ABC])\s*\]\]")


def _one_bracketed(text: str | None, pattern: re.Pattern, what: str) -> tuple[str | None, str]:
    """The single value written in [[double brackets]]; two different ones are ambiguous."""
    if text is None or not text.strip():
        return None, "unparsed: empty reply"
    found = set(pattern.findall(text))
    if len(found) == 1:
        return found.pop(), "bracketed"
    return None, f"unparsed: {'no' if not found else 'more than one'} {what} in [[ ]]"


def parse_mt_rating(text: str | None) -> Parsed:
    """'... Rating: [[7]]', '[[ 8.5 ]]' -> 7, 8.5; no [[n]], two different ones, or outside 1-10 -> None."""
    value, how = _one_bracketed(text, _MT_RATING, "rating")
    if value is None:
        return Parsed(None, how)
    rating = float(value)
    if not 1 <= rating <= 10:
        return Parsed(None, f"unparsed: {value} is outside 1-10")
    return Parsed(int(rating) if rating.is_integer() else rating, how)


def parse_mt_verdict(text: str | None) -> Parsed:
    """'[[A]]', '[[B]]' -> 'A', 'B'; '[[C]]' -> 'tie'; none or several different -> None."""
    value, how = _one_bracketed(text, _MT_VERDICT, "verdict")
    return Parsed(None if value is None else {"A": "A", "B": "B", "C": "tie"}[value], how)
