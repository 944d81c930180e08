"""Conversational data (OpenAI messages, ShareGPT, TRL prompt-completion) and one chat template from
training to every runtime: every answer learned, the template saved with the adapter, and the
prompts stages 2 and 5 build checked against the ones training built."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from html import unescape

import pytest

from conftest import ROOT, chat_app_served, run_stage
from instructkit.data.conversations import earlier_turns
from instructkit.data.parity import check_parity, parity_sample
from instructkit.data.prompts import ChatTemplate, get_style, load_style
from instructkit.data.records import load_records, validate_records
from instructkit.errors import UserError

CONVERSATIONS = ROOT / "instructkit" / "data" / "default" / "conversation-data.json"
THREE_TURNS = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Name a colour."},
               {"role": "assistant", "content": "Blue."}, {"role": "user", "content": "Another one?"},
               {"role": "assistant", "content": "Green."}]


@pytest.mark.fast
def test_the_formats_people_have_become_one_conversation_record():
    turns = [{"role": "user", "content": "Name a colour."}, {"role": "assistant", "content": "Blue."}]
    sharegpt = [{"from": "human", "value": "Name a colour."}, {"from": "gpt", "value": "Blue."}]
    records = validate_records([{"messages": turns}, {"conversations": sharegpt},
                                {"prompt": "Name a colour.", "completion": "Blue."},
                                {"prompt": turns[:1], "completion": turns[1:]}], "f.json")
    assert all(r == {"instruction": "Name a colour.", "input": "", "output": "Blue.", "messages": turns} for r in records)
    # A record stage 1 wrote to its split is read back as it was; an Alpaca record gains nothing.
    assert validate_records(records, "train.json") == records
    assert validate_records([{"instruction": "Name a colour.", "output": "Blue."}], "a.json") == [
        {"instruction": "Name a colour.", "input": "", "output": "Blue."}]


MALFORMED = [  # (record, what the message must say)
    ({"messages": [{"role": "bot", "content": "hi"}, {"role": "assistant", "content": "a"}]},
     "record 0: messages turn 0: field 'role' is 'bot'"),
    ({"messages": [{"role": "user", "content": "  "}, {"role": "assistant", "content": "a"}]},
     "record 1: messages turn 0: field 'content' is empty"),
    ({"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}, {"role": "user", "content": "c"}]},
     "record 2: messages turn 2: the conversation ends on a user turn"),
    ({"messages": [{"role": "user", "content": ["a"]}, {"role": "assistant", "content": "b"}]},
     "record 3: messages turn 0: field 'content' must be text, found list"),
    ({"messages": [{"role": "user", "content": "a", "weight": 0}, {"role": "assistant", "content": "b"}]},
     "record 4: messages turn 0: unknown field 'weight'"),
    ({"conversations": [{"from": "user", "value": "a"}, {"from": "gpt", "value": "b"}]},
     "record 5: conversations turn 0: field 'from' is 'user'; use system, human, gpt"),
    ({"conversations": [{"from": "human", "value": "a"}, {"from": "human", "value": "b"}]},
     "record 6: conversations turn 1: user turn after user"),
    ({"messages": [{"role": "user", "content": "a"}, {"role": "system", "content": "s"}, {"role": "assistant", "content": "b"}]},
     "record 7: messages turn 1: a system turn may only come first"),
    ({"messages": [{"role": "user"}, {"role": "assistant", "content": "b"}]},
     "record 8: messages turn 0: missing field 'content'"),
    ({"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}], "conversations": []},
     "record 9: has both 'messages' and 'conversations'"),
    ({"messages": [{"role": "assistant", "content": "b"}]}, "record 10: messages turn 0: assistant turn after the start"),
    ({"messages": ["hello"]}, "record 11: messages turn 0: expected an object"),
    ({"conversations": [{"from": "human", "value": "a"}, {"from": "gpt", "value": "\ud800"}]},
     "record 12: conversations turn 1: field 'value' holds a lone surrogate"),
    ({"prompt": "a"}, "record 13: field 'prompt' without 'completion'"),
]


@pytest.mark.fast
def test_malformed_conversations_are_refused_naming_record_turn_and_field_all_at_once(tmp_path):
    path = tmp_path / "chats.jsonl"
    path.write_text("\n".join(json.dumps(record) for record, _ in MALFORMED), encoding="utf-8")
    with pytest.raises(UserError) as refused:
        load_records(str(path))
    for _, message in MALFORMED:
        assert f"{path}: {message}" in str(refused.value)


@pytest.mark.fast
def test_text_styles_write_out_a_conversations_system_prompt_and_earlier_turns():
    record = validate_records([{"messages": THREE_TURNS}], "f.json")[0]
    assert get_style("alpaca").prompt(record) == (
        "Be brief.\n\n### Instruction:\nName a colour.\n\n### Response:\nBlue.\n\n"
        "### Instruction:\nAnother one?\n\n### Response:\n")
    assert get_style("phi3").prompt(record) == (
        "<|system|>\nBe brief.\n<|user|>\nName a colour.\n<|assistant|>\nBlue.\n<|user|>\nAnother one?\n<|assistant|>\n")
    assert get_style("chat").prompt(record) == THREE_TURNS[:-1]


def test_every_answer_of_a_three_turn_conversation_is_learned_and_nothing_else(base_tokenizer):
    style = get_style("chatml").bind(base_tokenizer)  # gemma-3-270m: no chat template, turn tokens in its vocabulary
    record = validate_records([{"messages": THREE_TURNS}], "f.json")[0]
    example = style.token_example(record, base_tokenizer)
    # The expectation built by hand, piece by piece: (text, learned?)
    pieces = [("<bos><start_of_turn>system\nBe brief.<end_of_turn>\n<start_of_turn>user\nName a colour.<end_of_turn>\n"
               "<start_of_turn>assistant\n", 0), ("Blue.<end_of_turn>", 1),
              ("\n<start_of_turn>user\nAnother one?<end_of_turn>\n<start_of_turn>assistant\n", 0),
              ("Green.<end_of_turn>", 1), ("\n", 0)]
    ids, mask = [], []
    for text, learned in pieces:
        piece = base_tokenizer(text, add_special_tokens=False)["input_ids"]
        ids += piece
        mask += [learned] * len(piece)
    assert example == {"input_ids": ids, "completion_mask": mask}


def test_a_template_that_rewrites_earlier_turns_cannot_be_trained_turn_by_turn(base_tokenizer):
    chatml = get_style("chatml").bind(base_tokenizer)
    # Like templates that drop an earlier answer's reasoning: only the last answer is written whole.
    rewriting = chatml.template.jinja.replace("message['content'] + '<end_of_turn>' }}",
                                              "(message['content'] if loop.last else '...') + '<end_of_turn>' }}")
    style = replace(chatml, name="chat", template=ChatTemplate(rewriting, "<end_of_turn>"))
    record = validate_records([{"messages": THREE_TURNS}], "f.json")[0]
    with pytest.raises(UserError, match="renders turn 2 of a conversation differently"):
        style.token_example(record, base_tokenizer)


def test_parity_names_the_path_and_token_where_an_edited_template_differs(base_tokenizer):
    trained = get_style("chatml").bind(base_tokenizer)
    records = validate_records([{"messages": THREE_TURNS}, {"instruction": "Name a fruit.", "output": "Apple."}], "f.json")
    saved = parity_sample(trained, records, base_tokenizer)
    end = base_tokenizer.convert_tokens_to_ids("<end_of_turn>")

    def path(style):
        return {"the chat app": lambda record: style.encode(style.render(record, base_tokenizer), base_tokenizer)}

    assert check_parity(saved, path(trained), [1, end], base_tokenizer)["checked"]
    edited = replace(trained, template=replace(trained.template, jinja=trained.template.jinja.replace(
        "'<start_of_turn>assistant\\n'", "'<start_of_turn>model\\n'")))  # Gemma's own role name, by hand
    with pytest.raises(UserError, match=r"the chat app builds another prompt .*saved record 0, token 34: "
                                        r"trained .*\['assistant'\].*the chat app .*\['model'\]"):
        check_parity(saved, path(edited), [1, end], base_tokenizer)
    with pytest.raises(UserError, match="training ended every answer with '<end_of_turn>'"):
        check_parity(saved, path(trained), [1], base_tokenizer)


@pytest.mark.fast
def test_the_default_conversations_are_the_default_records_with_system_prompts_and_second_turns():
    conversations = load_records(str(CONVERSATIONS))
    single = load_records(str(ROOT / "instructkit" / "data" / "default" / "instruction-data.json"))
    assert len(conversations) == len(single)
    firsts = [c["messages"][1 if c["messages"][0]["role"] == "system" else 0] for c in conversations]
    assert [f["content"] for f in firsts] == [f"{r['instruction']}\n\n{r['input']}" if r["input"] else r["instruction"]
                                              for r in single]
    assert sum(c["messages"][0]["role"] == "system" for c in conversations) == 100
    two_turn = [c for c in conversations if len(earlier_turns(c)) >= 2]
    assert len(two_turn) >= 30
    follow = next(c for c in two_turn if c["instruction"] == "Now add 10 to that.")
    first = follow["messages"][-4]["content"]  # What is a + b?
    a, b = (int(n) for n in first.removeprefix("What is ").rstrip("?").split(" + "))
    assert follow["output"] == f"{a + b} + 10 = {a + b + 10}."


# --- the whole path on the embedded base model ---------------------------------------------------

MAX_NEW_TOKENS = 24


@pytest.fixture(scope="module")
def chatml_run(tmp_path_factory):
    """Stage 1 in chatml on a messages file of 20 default conversations (system prompts, two-turn
    records), 4 of them the test split; then stage 2 answers those one at a time."""
    folder = tmp_path_factory.mktemp("chatml")
    chats = json.loads(CONVERSATIONS.read_text(encoding="utf-8"))
    two_turn = [c for c in chats if len(c["messages"]) > 3][:12]
    with_system = [c for c in chats if c["messages"][0]["role"] == "system" and len(c["messages"]) == 3][:8]
    data = folder / "chats.json"
    data.write_text(json.dumps(two_turn + with_system), encoding="utf-8")
    trained = run_stage("part1_instruction_finetuning.py", "--data", str(data), "--prompt-style", "chatml",
                        "--max-steps", "16", "--batch-size", "4", "--lr", "2e-3", "--val-fraction", "0",
                        "--test-fraction", "0.2", "--lora-dropout", "0", "--output-dir", str(folder))
    assert trained.returncode == 0, trained.stderr[-3000:]
    answered = run_stage("part2_generate_test_responses.py", "--output-dir", str(folder), "--batch-size", "1",
                         "--max-new-tokens", str(MAX_NEW_TOKENS))
    assert answered.returncode == 0, answered.stderr[-3000:]
    return folder


def test_chatml_training_saves_its_template_and_stage_2_checks_it(chatml_run):
    adapter = chatml_run / "finetuned"
    style = load_style(adapter)
    assert style.name == "chatml" and style.template.end_of_turn == "<end_of_turn>"
    assert "<start_of_turn>" in style.template.jinja
    # The adapter's tokenizer carries the same template, for runtimes that read it from there.
    from transformers import AutoTokenizer

    assert AutoTokenizer.from_pretrained(adapter).chat_template == style.template.jinja
    summary = json.loads((adapter / "training_summary.json").read_text())
    assert summary["template_parity_check"]["checked"] and summary["template_parity"]["end_of_answer"] == "<end_of_turn>"
    meta = json.loads((chatml_run / "test_base_model.meta.json").read_text())
    assert meta["template_parity"]["checked"] and meta["template_parity"]["paths"] == ["stage 2 (transformers)"]
    test = json.loads((chatml_run / "data" / "test.json").read_text())
    assert any(earlier_turns(r) for r in test), "the test split should hold a multi-turn record"


def test_the_finetune_learned_to_stop(chatml_run):
    import torch

    from instructkit.generate.generator import TransformersGenerator
    from instructkit.models.references import base_reference, resolve_model

    adapter = chatml_run / "finetuned"
    style = load_style(adapter)
    generator = TransformersGenerator(resolve_model(base_reference("", adapter)), adapter, "", False, ["finetuned"])
    end = generator.tokenizer.convert_tokens_to_ids("<end_of_turn>")
    for record in json.loads((chatml_run / "data" / "train.json").read_text())[:3]:
        ids = torch.tensor([generator.prompt_ids(style, record)])
        with torch.inference_mode():
            out = generator.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=64,
                                           do_sample=False, eos_token_id=generator.stop_ids(style))
        new = out[0, ids.shape[1]:].tolist()
        assert new[-1] == end and len(new) < 64, generator.tokenizer.decode(new)  # it ends its turn itself


def test_the_chat_app_answers_picked_conversations_as_stage_2(chatml_run):
    """Through the running page's API: picking a multi-turn test record loads its earlier turns
    (system prompt included), and the greedy answers to its last message are stage 2's."""
    from gradio_client import Client
    from test_chat_app import text_of

    with chat_app_served(chatml_run / "app.log", "--output-dir", str(chatml_run),
                         "--max-new-tokens", str(MAX_NEW_TOKENS)) as url:
        assert "template parity: the page builds the prompts the adapter was trained on" in (
            chatml_run / "app.log").read_text()
        stored = json.loads((chatml_run / "test_base_model.json").read_text())
        greedy = (0, 1, MAX_NEW_TOKENS, 0)  # temperature, top-p, max new tokens, seed
        multi = [i for i, record in enumerate(stored) if earlier_turns(record)]
        assert multi, "the test split should hold a multi-turn record"
        for index in multi[:1] + [i for i in range(len(stored)) if i not in multi][:1]:
            client = Client(url, verbose=False)  # a fresh page: its own conversation
            message, extra, _, base, finetuned = client.predict(index, api_name="/pick")
            record = stored[index]
            assert (message, extra) == (record["instruction"], "")  # a conversation record has no input
            shown = [m for m in earlier_turns(record) if m["role"] != "system"]
            assert [unescape(text_of(m)) for m in finetuned] == [m["content"] for m in shown]  # the page shows text
            base, finetuned, status = client.predict(message, "", *greedy, api_name="/chat")
            assert status.startswith("Answered in")
            assert unescape(text_of(base[-1])) == record["base_model_response"]
            assert unescape(text_of(finetuned[-1])) == record["finetuned_model_response"]


def test_an_edited_template_stops_stage_2_saying_where_and_writes_nothing(chatml_run, tmp_path):
    adapter = tmp_path / "finetuned"
    shutil.copytree(chatml_run / "finetuned", adapter)
    saved = json.loads((adapter / "prompt_style.json").read_text())
    saved["chat_template"] = saved["chat_template"].replace("'<start_of_turn>assistant\\n'", "'<start_of_turn>model\\n'")
    (adapter / "prompt_style.json").write_text(json.dumps(saved))
    result = run_stage("part2_generate_test_responses.py", "--output-dir", str(tmp_path), "--adapter", str(adapter),
                       "--test-file", str(chatml_run / "data" / "test.json"), "--max-new-tokens", "8")
    assert result.returncode == 2, result.stderr[-3000:]
    assert "template parity: stage 2 (transformers) builds another prompt than the adapter was trained on" in result.stderr
    assert "['model']" in result.stderr and "prompt_style.json" in result.stderr
    assert not (tmp_path / "test_base_model.json").exists()


def test_a_malformed_conversation_file_stops_stage_1_before_anything_is_written(tmp_path):
    data = tmp_path / "chats.json"
    data.write_text(json.dumps([record for record, _ in MALFORMED]), encoding="utf-8")
    result = run_stage("part1_instruction_finetuning.py", "--data", str(data), "--prompt-style", "chatml",
                       "--output-dir", str(tmp_path / "run"))
    assert result.returncode == 2
    for _, message in MALFORMED:
        assert f"{data}: {message}" in result.stderr
    assert not (tmp_path / "run").exists() or not any((tmp_path / "run").iterdir())


def test_stage_3_asks_lm_eval_through_the_saved_template_with_the_system_prompt(chatml_run, trained_run):
    result = run_stage("part3_benchmark_evaluation.py", "--output-dir", str(chatml_run), "--models", "finetuned",
                       "--limit", "2", "--system-prompt", "Answer with one letter.")
    assert result.returncode == 0, result.stderr[-3000:]
    meta = json.loads((chatml_run / "benchmark_results.meta.json").read_text())
    assert meta["settings"]["chat_template"] == load_style(chatml_run / "finetuned").template.jinja
    samples = next((chatml_run / "benchmark" / "finetuned").rglob("samples_*.jsonl"))
    prompt = json.loads(samples.read_text().splitlines()[0])["arguments"]["gen_args_0"]["arg_0"]
    assert prompt.startswith("<bos><start_of_turn>system\nAnswer with one letter.")
    assert prompt.endswith("<start_of_turn>assistant\n")  # the generation prompt training taught
    # A text-style finetune has no template to put a system turn in: refused before anything loads.
    refused = run_stage("part3_benchmark_evaluation.py", "--output-dir", str(trained_run), "--system-prompt", "x")
    assert refused.returncode == 2 and "--system-prompt goes into the finetune's chat template" in refused.stderr


@pytest.mark.fast
def test_judges_see_a_conversations_earlier_turns_and_single_turn_prompts_stay_as_they_were():
    from instructkit.judge.prompts import pairwise_prompt, score_prompt

    record = validate_records([{"messages": THREE_TURNS}], "f.json")[0]
    context = ("### Earlier in the conversation (context only: judge the response to the last instruction):\n"
               "System: Be brief.\nUser: Name a colour.\nAssistant: Blue.\n\n### Instruction:\nAnother one?\n")
    assert context in score_prompt(record, "Red.") and context in pairwise_prompt(record, "Red.", "Blue.")
    single = {"instruction": "Another one?", "input": "", "output": "Green."}
    assert score_prompt(single, "Red.") == score_prompt(record, "Red.").replace(context, "### Instruction:\nAnother one?\n")
    assert "Earlier in the conversation" not in pairwise_prompt(single, "Red.", "Blue.")
