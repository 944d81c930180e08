"""MT-Bench style: FastChat's question.jsonl through stage 2 (every model answers turn by turn with
its own earlier answers in the conversation) and stage 4 --rubric mt-bench (1-10 per turn, against
the reference for math, reasoning and coding; pairwise [[A]]/[[B]]/[[C]] in both orders), with
per-turn and per-category means in mt_bench_scores.json and the report."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import EchoChat, JSONHandler, LocalServer, run_stage
from instructkit.data import packaged
from instructkit.data.prompts import get_style
from instructkit.data.questions import read_questions
from instructkit.errors import UserError
from instructkit.judge.prompts import mt_single_prompt, parse_mt_rating, parse_mt_verdict

SAMPLE = Path(packaged("mt_bench_sample.jsonl"))


@pytest.mark.fast
@pytest.mark.parametrize("reply, rating", [
    ("The answer is right. Rating: [[8]]", 8), ("Rating: [[ 7]]", 7), ("[[8.5]]", 8.5), ("[[9]] ... [[9]]", 9),
    ("Rating: 8", None), ("[[11]]", None), ("[[0]]", None), ("[[3]] then [[4]]", None), ("", None)])
def test_mt_rating_is_read_only_from_one_bracketed_value_in_range(reply, rating):
    assert parse_mt_rating(reply).value == rating


@pytest.mark.fast
@pytest.mark.parametrize("reply, verdict", [("[[A]]", "A"), ("so [[B]].", "B"), ("[[C]]", "tie"),
                                            ("Verdict: [[ A]]", "A"), ("A", None), ("[[A]] or [[B]]", None)])
def test_mt_verdict_is_read_only_from_one_bracketed_letter(reply, verdict):
    assert parse_mt_verdict(reply).value == verdict


@pytest.mark.fast
def test_questions_file_is_checked_line_by_line(tmp_path):
    assert [q["category"] for q in read_questions(SAMPLE)][:4] == ["writing", "roleplay", "reasoning", "math"]
    bad = tmp_path / "question.jsonl"
    bad.write_text('{"question_id": 1, "category": "math", "turns": ["a", "b"], "reference": ["x"]}\n'
                   'not json\n{"question_id": 1, "category": "", "turns": []}\n')
    with pytest.raises(UserError) as error:
        read_questions(bad)
    message = str(error.value)
    for expected in ("line 1: field 'reference' must be a list of 2 texts", "line 2: not valid JSON",
                     "line 3: question_id 1 appears twice", "line 3: field 'category'", "line 3: field 'turns'"):
        assert expected in message


def test_second_turn_prompt_carries_the_first_exchange_in_each_style(base_tokenizer, judge_model):
    from instructkit.models.loading import load_tokenizer

    history = [{"role": "user", "content": "What is 2 + 2?"}, {"role": "assistant", "content": "4."}]
    record = {"instruction": "And times 3?", "input": ""}
    alpaca = get_style("alpaca").render_turn(history, record, base_tokenizer)
    assert alpaca.count("Below is an instruction") == 1
    assert alpaca.endswith("### Instruction:\nWhat is 2 + 2?\n\n### Response:\n4.\n\n### Instruction:\nAnd times 3?\n\n### Response:\n")
    assert get_style("phi3").render_turn(history, record, base_tokenizer) == (
        "<|user|>\nWhat is 2 + 2?\n<|assistant|>\n4.\n<|user|>\nAnd times 3?\n<|assistant|>\n")
    chat = get_style("chat").render_turn(history, record, load_tokenizer(judge_model))  # an instruct model's template
    assert chat.index("What is 2 + 2?") < chat.index("4.") < chat.index("And times 3?")
    # Reference-guided grading of a second turn shows the whole conversation and both references.
    prompt = mt_single_prompt(["q1", "q2"], ["a1", "a2"], 1, ["r1", "r2"])
    assert "Turn 1: r1" in prompt and "Turn 2: r2" in prompt and prompt.index("a1") < prompt.index("q2") < prompt.index("a2")




class RubricJudge(JSONHandler):
    """Rates 9 with a reference answer shown, else 4 in turn 1 and 6 in turn 2; prefers assistant A
    in turn 1 (so both orders disagree) and calls turn 2 a tie."""

    def do_POST(self):
        prompt = self.chat_messages()[-1]["content"]
        if "two AI assistants" in prompt:
            self.reply_chat("Both fine. [[A]]" if "[Assistant A's answer]" in prompt else "Equal. [[C]]")
        else:
            rating = 9 if "[Reference answer" in prompt else 6 if "in turn 2" in prompt else 4
            self.reply_chat(f"Short reason. Rating: [[{rating}]]")


def test_two_turn_questions_through_stages_2_and_4(trained_run, tmp_path, local_servers):
    echo, judge = local_servers(LocalServer, handler=EchoChat), local_servers(LocalServer, handler=RubricJudge)
    result = run_stage("part2_generate_test_responses.py", "--adapter", str(trained_run / "finetuned"),
                       "--output-dir", str(tmp_path), "--questions", str(SAMPLE), "--limit", "3",
                       "--max-new-tokens", "12", "--compare", "echo=openai:echo", "--compare-base-url", echo.url)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = json.loads((tmp_path / "mt_bench_responses.json").read_text())
    assert [r["category"] for r in rows] == ["writing", "roleplay", "reasoning"]
    for row in rows:
        assert all(len(row[f"{m}_model_response"]) == 2 for m in ("base", "finetuned", "echo"))
        # Turn 2 is asked after turn 1 and the model's own answer to it.
        assert row["echo_model_response"][1] == f"3 messages; last: {row['turns'][1]}"
    assert "[finetuned turn 2]" in result.stdout

    result = run_stage("part4_local_evaluation.py", "--output-dir", str(tmp_path), "--rubric", "mt-bench",
                       "--judge", "openai:judge", "--judge-base-url", judge.url, "--pairwise", "finetuned:echo")
    assert result.returncode == 0, result.stderr[-3000:]
    scores = json.loads((tmp_path / "mt_bench_scores.json").read_text())
    for model in ("base", "finetuned", "echo"):
        s = scores["summary"][model]
        assert (s["turns"]["1"]["mean"], s["turns"]["2"]["mean"]) == (pytest.approx(17 / 3, abs=1e-3), 7.0)
        assert {c: v["mean"] for c, v in s["categories"].items()} == {"writing": 5.0, "roleplay": 5.0, "reasoning": 9.0}
        assert s["n_scored"] == 6
    assert [r["reference_guided"] for r in scores["records"]] == [False, False, True]
    pair = scores["pairwise"]["finetuned:echo"]
    assert (pair["n_judged"], pair["ties"], pair["inconsistent"]) == (6, 6, 3)  # turn 1 flips with the order
    turn_one = scores["records"][0]["pairwise"]["finetuned:echo"][0]
    assert turn_one["finetuned_first"]["value"] == turn_one["echo_first"]["value"] == "A"
    assert turn_one["consistent"] is False

    from bs4 import BeautifulSoup

    page = BeautifulSoup((tmp_path / "report.html").read_text(), "html.parser")
    assert page.find(id="mt-finetuned").find_all("td")[1].get_text() == f"{17 / 3:.2f}"
    assert page.find(id="mt-category-reasoning").find("td").get_text().startswith("9.00")
    assert page.find("img", alt="MT-Bench ratings per category") and page.find(id="mt-pair-finetuned:echo")
