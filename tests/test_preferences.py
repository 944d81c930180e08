"""Preference data (stage 1b): every form read, malformed pairs refused by file, record and field,
the seeded split, the default pairs and what a run's judgements make into pairs."""

import json

import pytest

from conftest import ROOT
from instructkit.data.preferences import drop_repeats, load_pairs, prompt_key, prompt_record, split_pairs
from instructkit.data.prompts import get_style
from instructkit.errors import UserError
from instructkit.train.preference_config import DEFAULT_PAIRS

pytestmark = pytest.mark.fast

SHARED_PAIRS = ROOT.parent / "shared" / "data" / "instruction-data-with-preference.json"
SYSTEM = "You are a terse assistant."
USER, BETTER, WORSE = "What is 2 + 3?", "2 + 3 = 5.", "2 + 3 = 6."


def _write(tmp_path, name: str, records: list) -> str:
    path = tmp_path / name
    if name.endswith(".jsonl"):
        path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    else:
        path.write_text(json.dumps(records), encoding="utf-8")
    return str(path)


# One real-looking record per form, as each dataset publishes it.
FORMS = {
    "trl_text.jsonl": {"prompt": USER, "chosen": BETTER, "rejected": WORSE},
    "trl_conversational.json": {"prompt": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": USER}],
                                "chosen": [{"role": "assistant", "content": BETTER}],
                                "rejected": [{"role": "assistant", "content": WORSE}]},
    "llms_from_scratch.json": {"instruction": "Add the numbers.", "input": "2, 3", "output": "5",
                               "chosen": "The sum is 5.", "rejected": "The sum is 5, obviously."},
    "ultrafeedback.jsonl": {"prompt": USER, "prompt_id": "ab12", "score_chosen": 9.0, "score_rejected": 3.0,
                            "chosen": [{"role": "user", "content": USER}, {"role": "assistant", "content": BETTER}],
                            "rejected": [{"role": "user", "content": USER}, {"role": "assistant", "content": WORSE}]},
    "orca_dpo.json": {"system": SYSTEM, "question": USER, "chosen": BETTER, "rejected": WORSE},
}


@pytest.mark.parametrize("name", FORMS)
def test_every_form_is_read_into_one_shape(tmp_path, name):
    path = _write(tmp_path, name, [FORMS[name]])
    [pair] = load_pairs(path)
    assert pair["source"] == {"kind": "file", "file": path, "record": 0}
    if name == "llms_from_scratch.json":
        assert (pair["instruction"], pair["input"], pair["chosen"]) == ("Add the numbers.", "2, 3", "The sum is 5.")
        return
    assert (pair["instruction"], pair["input"], pair["chosen"], pair["rejected"]) == (USER, "", BETTER, WORSE)
    has_system = name in ("trl_conversational.json", "orca_dpo.json")
    assert pair.get("history", []) == ([{"role": "system", "content": SYSTEM}] if has_system else [])


def test_a_pair_is_asked_as_stage_1_asks_its_record():
    pair = {"instruction": USER, "input": "", "history": [{"role": "system", "content": SYSTEM}],
            "chosen": BETTER, "rejected": WORSE}
    record = prompt_record(pair)
    assert get_style("chatml").prompt(record) == [{"role": "system", "content": SYSTEM}, {"role": "user", "content": USER}]
    assert get_style("alpaca").prompt(record).startswith(SYSTEM)  # the system prompt replaces Alpaca's preamble
    assert prompt_key(record) == prompt_key(pair)  # a test record and a pair on it are recognised as one question


def test_multi_turn_ultrafeedback_keeps_the_earlier_turns(tmp_path):
    earlier = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]
    turns = earlier + [{"role": "user", "content": USER}]
    path = _write(tmp_path, "uf.json", [{"chosen": turns + [{"role": "assistant", "content": BETTER}],
                                         "rejected": turns + [{"role": "assistant", "content": WORSE}]}])
    [pair] = load_pairs(path)
    assert pair["history"] == earlier and pair["instruction"] == USER


MALFORMED = [
    ("not an object", "just text", "record 0: expected an object"),
    ("rejected missing", {"prompt": USER, "chosen": BETTER}, "record 1: missing field 'rejected'"),
    ("chosen empty", {"prompt": USER, "chosen": "  ", "rejected": WORSE}, "record 2: field 'chosen' is empty"),
    ("the same answer twice", {"prompt": USER, "chosen": BETTER, "rejected": BETTER + " "},
     "record 3: fields 'chosen' and 'rejected' are the same answer"),
    ("an answer that is no text", {"instruction": USER, "chosen": 5, "rejected": WORSE},
     "record 4: field 'chosen' must be text, found int"),
    ("no prompt", {"chosen": BETTER, "rejected": WORSE}, "record 5: no prompt: expected one of"),
    ("conversations that differ before the answer",
     {"chosen": [{"role": "user", "content": USER}, {"role": "assistant", "content": BETTER}],
      "rejected": [{"role": "user", "content": "Another question"}, {"role": "assistant", "content": WORSE}]},
     "record 6: fields 'chosen' and 'rejected' differ before their last turn"),
    ("an answer turn from the user", {"prompt": [{"role": "user", "content": USER}],
                                      "chosen": [{"role": "user", "content": BETTER}],
                                      "rejected": [{"role": "assistant", "content": WORSE}]},
     "record 7: field 'chosen' must be one assistant turn"),
    ("a lone surrogate", {"question": "\ud800", "chosen": BETTER, "rejected": WORSE},
     "record 8: field 'question' holds a lone surrogate"),
    ("a turn with a bad role", {"prompt": [{"role": "robot", "content": USER}],
                                "chosen": [{"role": "assistant", "content": BETTER}],
                                "rejected": [{"role": "assistant", "content": WORSE}]},
     "record 9: prompt turn 0: field 'role' is 'robot'"),
]


def test_malformed_pairs_are_all_refused_at_once_by_file_record_and_field(tmp_path):
    path = _write(tmp_path, "bad.json", [record for _, record, _ in MALFORMED] + [FORMS["orca_dpo.json"]])
    with pytest.raises(UserError) as caught:
        load_pairs(path)
    message = str(caught.value)
    for what, _, expected in MALFORMED:
        assert f"{path}: {expected}" in message, what
    assert "record 10" not in message  # the good record is not named


def test_a_missing_file_names_the_forms(tmp_path):
    with pytest.raises(UserError, match="no such file; give a preference .json or .jsonl file"):
        load_pairs(str(tmp_path / "nothing.json"))


def test_split_keeps_each_prompt_on_one_side_and_is_seeded():
    pairs = [{"instruction": f"q{i // 2}", "input": "", "chosen": f"a{i}", "rejected": f"b{i}"} for i in range(40)]
    train, val = split_pairs(pairs, 0.25, seed=7)
    assert len(val) == 10 and len(train) == 30
    assert not {prompt_key(p) for p in train} & {prompt_key(p) for p in val}
    assert split_pairs(pairs, 0.25, seed=7) == (train, val) and split_pairs(pairs, 0.25, seed=8) != (train, val)
    with pytest.raises(UserError, match="cannot be split"):
        split_pairs(pairs[:2], 0.1, seed=7)
    unique, repeats = drop_repeats(pairs + pairs[:3])
    assert (len(unique), repeats) == (40, 3)


def test_default_pairs_are_right_against_plausibly_wrong():
    pairs = load_pairs(DEFAULT_PAIRS)
    records = json.loads((ROOT / "instructkit" / "data" / "default" / "instruction-data.json").read_text())
    assert len(pairs) == len(records) == 500
    assert [p["chosen"] for p in pairs] == [r["output"] for r in records]  # the correct answer is chosen
    assert all(p["rejected"] != p["chosen"] for p in pairs)
    by_instruction = {p["instruction"]: p for p in pairs}
    for instruction, pair in by_instruction.items():  # the wrong sums are computed, and wrong
        if instruction.startswith("What is ") and " + " in instruction:
            a, b = instruction.removeprefix("What is ").rstrip("?").split(" + ")
            wrong = int(pair["rejected"].split("= ")[1].rstrip("."))
            assert wrong != int(a) + int(b) and abs(wrong - (int(a) + int(b))) <= 10


def test_default_pairs_file_matches_its_builder():
    import importlib.util

    spec = importlib.util.spec_from_file_location("build", ROOT / "instructkit" / "data" / "build_default_data.py")
    builder = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(builder)
    records = json.loads((ROOT / "instructkit" / "data" / "default" / "instruction-data.json").read_text())
    import random

    rng = random.Random(builder.SEED)
    expected = [builder.preference_pair(r, rng) for r in records]
    assert json.loads(open(DEFAULT_PAIRS, encoding="utf-8").read()) == expected, \
        "run `python -m instructkit.data.build_default_data` and commit the result"


@pytest.mark.skipif(not SHARED_PAIRS.is_file(), reason=f"the public pairs {SHARED_PAIRS} are not beside this checkout")
def test_the_llms_from_scratch_pairs_are_read():
    with pytest.raises(UserError) as caught:  # six of its pairs repeat the answer: refused, each named
        load_pairs(str(SHARED_PAIRS))
    assert "record 122: fields 'chosen' and 'rejected' are the same answer" in str(caught.value)
    assert "(6 pairs have the same answer twice: --drop-identical leaves them out)" in str(caught.value)
    pairs = load_pairs(str(SHARED_PAIRS), drop_identical=True)
    assert len(pairs) == 1094 and len(drop_repeats(pairs)[0]) == 1094
    assert pairs[122]["source"]["record"] == 123  # each pair still names its record in the file
    train, val = split_pairs(pairs, 0.1, seed=123)
    assert len(val) == pytest.approx(109, abs=2) and len(train) + len(val) == 1094


def _judged_run(tmp_path, verdicts: dict, ratings: list | None = None, chats: list | None = None):
    """A run folder as stages 2 and 4 and the chat app leave it: two test records and their answers,
    pairwise verdicts (by pair, per record), and ratings."""
    from instructkit.runs.fingerprints import sha256_file

    rows = [{"instruction": f"Question {i}?", "input": "", "output": f"Answer {i}.", "base_model_response": f"base {i}",
             "finetuned_model_response": f"tuned {i}"} for i in range(2)]
    responses = tmp_path / "test_base_model.json"
    responses.write_text(json.dumps(rows))
    records = [{"index": i, "instruction": r["instruction"], "input": "", "output": r["output"],
                "responses": {"base": r["base_model_response"], "finetuned": r["finetuned_model_response"]},
                "pairwise": {name: v[i] for name, v in verdicts.items()}} for i, r in enumerate(rows)]
    (tmp_path / "judge_scores.json").write_text(json.dumps({"judge": {"model": "j"}, "records": records}))
    if ratings is not None or chats is not None:
        (tmp_path / "human_ratings.json").write_text(json.dumps({
            "input": str(responses), "input_sha256": sha256_file(responses), "ratings": ratings or [],
            "chat_ratings": chats or []}))
    return tmp_path


def _verdict(outcome, consistent=True):
    return {"outcome": outcome, "consistent": consistent, "finetuned_first": {}, "base_first": {}}


def test_judge_verdicts_become_pairs_only_when_they_hold_in_both_orders(tmp_path):
    from instructkit.judge.pairs import pairs_from_run

    run = _judged_run(tmp_path, {"finetuned:base": [_verdict("win"), _verdict("tie", False)],
                                 "base:output": [_verdict("loss"), _verdict("tie")]})
    pairs, skipped = pairs_from_run(run, margin=20)
    assert [(p["instruction"], p["chosen"], p["rejected"]) for p in pairs] == [
        ("Question 0?", "tuned 0", "base 0"), ("Question 0?", "Answer 0.", "base 0")]  # a loss: B chosen
    assert pairs[1]["source"] == {"file": str(run / "judge_scores.json"), "kind": "judge pairwise", "record": 0,
                                  "judge": "j", "chosen_model": "output", "rejected_model": "base"}
    assert skipped == {"pairwise verdicts were ties or changed with the order": 2}


def test_ratings_and_chat_choices_become_pairs_and_bad_entries_are_named(tmp_path):
    from instructkit.judge.human import read_human_ratings
    from instructkit.judge.pairs import labels_from_run, pairs_from_run

    ratings = [{"index": 0, "model": "base", "rating": 20}, {"index": 0, "model": "finetuned", "rating": 60},
               {"index": 0, "model": "finetuned", "rating": 80},  # averaged: 70 against 20
               {"index": 1, "model": "base", "rating": 50}, {"index": 1, "model": "finetuned", "rating": 50}]
    chat = {"message": "Hi?", "input": "", "record_index": None, "history_turns": 0, "ratings": {}}
    chats = [chat | {"answers": {"base": "Hello.", "finetuned": "Hi there."}, "preference": "finetuned"},
             chat | {"answers": {"base": "Hello.", "finetuned": "(stopped)"}, "preference": "finetuned"},
             chat | {"answers": {"base": "Hello.", "finetuned": "Hey."}, "preference": "tie"},
             chat | {"answers": {"base": "Yes.", "finetuned": "No."}, "preference": "base", "history_turns": 2},
             chat | {"answers": {"finetuned": "Blue."}, "preference": None, "ratings": {"finetuned": 10}}]
    run = _judged_run(tmp_path, {}, ratings, chats)
    pairs, skipped = pairs_from_run(run, margin=20)
    assert [(p["source"]["kind"], p["chosen"], p["rejected"]) for p in pairs] == [
        ("human ratings", "tuned 0", "base 0"), ("chat preference", "Hi there.", "Hello.")]
    assert pairs[0]["source"]["ratings"] == {"finetuned": 70, "base": 20}
    assert skipped == {"pairs of ratings differed by less than 20": 1, "had no answer": 1,
                       "chat choices came after earlier turns": 1}
    labels = labels_from_run(run, good=70, bad=30)  # KTO: single ratings of 70 or more, 30 or less
    assert [(lab["completion"], lab["label"]) for lab in labels] == [("base 0", False), ("tuned 0", True), ("Blue.", False)]
    # stage 2 rewrote its file since: the ratings of it give no pair, the rest still do
    (run / "test_base_model.json").write_text((run / "test_base_model.json").read_text() + "\n")
    pairs, skipped = pairs_from_run(run, margin=20)
    assert [p["source"]["kind"] for p in pairs] == ["chat preference"]
    assert skipped["ratings were of another test_base_model.json than the one there now"] == 5
    # a hand-edited chat rating is refused by file, entry and field
    saved = json.loads((run / "human_ratings.json").read_text())
    saved["chat_ratings"][1]["ratings"] = {"base": "80"}
    saved["chat_ratings"][2]["answers"] = ["Hello."]
    (run / "human_ratings.json").write_text(json.dumps(saved))
    with pytest.raises(UserError) as caught:
        read_human_ratings(run / "human_ratings.json")
    assert f"{run / 'human_ratings.json'}: chat rating 1: field 'ratings' is {{'base': '80'}}; expected" in str(caught.value)
    assert "chat rating 2: field 'answers' is ['Hello.']; expected an object of model -> answer text" in str(caught.value)


def test_an_older_judge_file_gives_no_pairs_and_says_why(tmp_path):
    from instructkit.judge.pairs import pairs_from_run

    run = _judged_run(tmp_path, {})
    scores = json.loads((run / "judge_scores.json").read_text())
    for row in scores["records"]:  # one flat verdict per record, before pairs were named
        row["pairwise"] = {"outcome": "win", "consistent": True}
    (run / "judge_scores.json").write_text(json.dumps(scores))
    with pytest.raises(UserError, match=r"no preference pairs in .*judge_scores.json \(4 pairwise verdicts were in an older form\)"):
        pairs_from_run(run, margin=20)
