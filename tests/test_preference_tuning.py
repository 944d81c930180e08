"""Stage 1b end to end: DPO from stage 1's adapter on the default pairs (the reference is the SFT
model: loss ln 2 and margin 0 before the first step) learning held-out preferences on the embedded
model, and stage 0's pairs made by rewriting and by sampling it; then, on the tiny Llama's run
(mechanics: tests/tiny_models.py), stages 2, 3 and 4 with a third model and the report, KTO, a
killed run resumed, the export, and pairs from what a run's judge and people said."""

import json
import math
import os
import re
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import ROOT, JSONHandler, LocalServer, copy_run, kill_at_checkpoint, run_stage
from instructkit.judge.human import save_chat_rating
from instructkit.train.preference_config import DEFAULT_PAIRS

N_PAIRS = 40  # of the default pairs: 30 to tune on, 10 held out
DPO_ARGS = ["--max-steps", "3", "--batch-size", "4", "--val-fraction", "0.25", "--eval-steps", "3", "--lr", "5e-4"]


def _overlap(answer: str, expected: str) -> float:
    words, wanted = set(answer.lower().split()), set(expected.lower().split())
    return len(words & wanted) / max(len(wanted), 1)


class OverlapJudge(JSONHandler):
    """An OpenAI-compatible judge on 127.0.0.1 that scores by word overlap with the expected output
    and prefers the response closer to it, in either order (a deterministic stand-in for an API judge);
    between equally close ones (the tiny model's answers share no word with any output), the shorter."""

    def do_POST(self):
        self.reply_chat(self.answer(self.chat_messages()[-1]["content"]))

    def answer(self, prompt: str) -> str:
        expected = re.search(r"### Expected output:\n(.*?)\n\n###", prompt, re.S).group(1)
        if "### Response A:" in prompt:
            a, b = re.search(r"### Response A:\n(.*?)\n\n### Response B:\n(.*?)\n\nWhich", prompt, re.S).groups()
            diff = _overlap(a, expected) - _overlap(b, expected) or len(b) - len(a)
            return "A" if diff > 0 else "B" if diff < 0 else "tie"
        response = re.search(r"### Response to score:\n(.*?)\n\nReply", prompt, re.S).group(1)
        return str(round(100 * _overlap(response, expected)))


class PairMaker(OverlapJudge):
    """OverlapJudge that also rewrites an answer as stage 0's pairs-rewrite asks: "Certainly! " before
    it to be more polite, "Whatever. " before it to be impolite, and for `unchanged` the answer as it was."""

    unchanged = ""

    def answer(self, prompt: str) -> str:
        found = re.search(r"rewrite the response to be (.*?)\. Keep.*### Instruction:\n(.*?)\n.*### Response:\n(.*)$",
                          prompt, re.S)
        if not found:
            return super().answer(prompt)
        aspect, instruction, answer = found.groups()
        if instruction == self.unchanged:
            return answer
        return ("Certainly! " if aspect == "more polite" else "Whatever. ") + answer


def _preference_run(stage1: Path, target: Path):
    run = copy_run(stage1, target)
    pairs = json.loads(open(DEFAULT_PAIRS, encoding="utf-8").read())[:N_PAIRS]
    (run / "pairs.json").write_text(json.dumps(pairs))
    result = run_stage("part1b_preference_tuning.py", "--output-dir", str(run), "--data", str(run / "pairs.json"),
                       *DPO_ARGS)
    assert result.returncode == 0, result.stderr[-3000:]
    return run, result


@pytest.fixture(scope="module")
def preference_run(trained_run, tmp_path_factory):
    """DPO on the real finetune: what it learns needs real weights."""
    return _preference_run(trained_run, tmp_path_factory.mktemp("preference"))


@pytest.fixture(scope="module")
def tiny_preference_run(tiny_trained_run, tmp_path_factory):
    return _preference_run(tiny_trained_run, tmp_path_factory.mktemp("tiny-preference"))


def test_dpo_starts_at_the_sft_model_and_learns_the_held_out_preferences(preference_run):
    run, result = preference_run
    summary = json.loads((run / "preference" / "training_summary.json").read_text())
    before, after = summary["val_before"], summary["val_after"]
    # The reference is the SFT adapter, so before a step the policy is the reference (LLaMA-Factory #8974)
    assert before["step"] == 0 and abs(before["loss"] - math.log(2)) < 1e-3
    assert before["margin"] == 0 and before["reward_chosen"] == 0 and before["accuracy"] == 0
    assert after["step"] == 3 and after["accuracy"] > before["accuracy"] and after["margin"] > 0
    assert after["loss"] < before["loss"]
    assert summary["method"]["reference"].startswith("the SFT adapter") and summary["method"]["reference_log_probs_precomputed"]
    assert summary["template_parity_check"]["checked"]
    # Test records of this run are never tuned on; every pair kept names its record in the file
    pairs = summary["pairs"]
    tuned = json.loads((run / "preference" / "pairs" / "train.json").read_text())
    held_out = json.loads((run / "preference" / "pairs" / "val.json").read_text())
    test = {(r["instruction"], r["input"]) for r in json.loads((run / "data" / "test.json").read_text())}
    assert pairs["train"] + pairs["val"] == pairs["n_pairs"] == N_PAIRS - pairs["n_test_prompts"]
    assert not {(p["instruction"], p["input"]) for p in tuned + held_out} & test
    assert all(p["source"]["file"].endswith("pairs.json") and isinstance(p["source"]["record"], int) for p in tuned)
    assert "margin=" in result.stderr  # the progress bar shows the margin
    assert (run / "preference" / "preference.png").stat().st_size > 10_000
    # One LoRA adapter on the base, without TRL's frozen reference copy
    config = json.loads((run / "preference" / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and not (run / "preference" / "ref").exists()
    # Unchanged: reused, without loading a model
    again = run_stage("part1b_preference_tuning.py", "--output-dir", str(run), "--data", str(run / "pairs.json"), *DPO_ARGS)
    assert again.returncode == 0 and "stage 1b already finished" in again.stdout


@pytest.fixture(scope="module")
def evaluated_run(tiny_preference_run):
    """Stages 2, 3 and 4 on the run after stage 1b, with no new flag (stage 4's judge: OverlapJudge)."""
    run, _ = tiny_preference_run
    # fp32: stage 6 answers in stage 2's precision, and the tiny model's greedy answers flip on bf16 rounding
    stage2 = run_stage("part2_generate_test_responses.py", "--output-dir", str(run), "--limit", "4",
                       "--max-new-tokens", "24", "--batch-size", "4", "--precision", "fp32")
    assert stage2.returncode == 0, stage2.stderr[-3000:]
    stage3 = run_stage("part3_benchmark_evaluation.py", "--output-dir", str(run), "--limit", "6")
    assert stage3.returncode == 0, stage3.stderr[-3000:]
    judge = LocalServer(OverlapJudge)
    threading.Thread(target=judge.serve_forever, daemon=True).start()
    try:
        stage4 = run_stage("part4_local_evaluation.py", "--output-dir", str(run), "--judge", "openai:overlap",
                           "--judge-base-url", judge.url, "--pairwise", env={**os.environ, "OPENAI_API_KEY": "k"})
    finally:
        judge.shutdown()
    assert stage4.returncode == 0, stage4.stderr[-3000:]
    return run, stage4


def test_stages_2_3_4_and_the_report_add_the_preference_model(evaluated_run):
    run, stage4 = evaluated_run
    rows = json.loads((run / "test_base_model.json").read_text())
    assert all({"base_model_response", "finetuned_model_response", "preference_model_response"} <= set(r) for r in rows)
    assert all(isinstance(r["preference_model_response"], str) for r in rows)  # the adapter loaded and answered
    scores = json.loads((run / "judge_scores.json").read_text())
    assert {"base", "finetuned", "preference", "finetuned_minus_base", "preference_minus_finetuned"} <= set(scores["summary"])
    assert set(scores["pairwise"]) == {"finetuned:base", "preference:finetuned"}  # --pairwise alone: each step
    metrics = json.loads((run / "task_metrics.json").read_text())
    assert "preference" in metrics["summary"] and metrics["preference_minus_finetuned"]["rouge_l"]["n_pairs"] == 4
    assert "preference - finetuned" in stage4.stdout
    benchmark = json.loads((run / "benchmark_results.json").read_text())
    assert set(benchmark["models"]) == {"base", "finetuned", "preference"}
    difference = benchmark["preference_minus_finetuned"]["mmlu_philosophy"]
    assert difference["mcnemar"]["n_paired"] == 6 and {"finetuned_only_correct", "preference_only_correct"} <= set(difference["mcnemar"])
    page = (run / "report.html").read_text()
    assert "Preference tuning (stage 1b)" in page and "held-out preference accuracy before" in page
    assert 'id="metrics-difference-preference"' in page and "<th>preference − finetuned</th>" in page


@pytest.fixture(scope="module")
def rated_run(evaluated_run):
    """The evaluated run with what the chat app saves (stage 5's own writer, entries as its page makes
    them, tests/test_chat_app.py): a choice between two answers, two ratings of a test record's
    stored answers, a rating of a free message's answer, and a choice of a stopped answer."""
    run, _ = evaluated_run  # its judge_scores.json holds stage 4's pairwise verdicts
    responses = run / "test_base_model.json"
    rows = json.loads(responses.read_text())
    save_chat_rating(run, responses, {"message": rows[1]["instruction"], "input": rows[1]["input"], "record_index": 1,
                                      "answers": {"base": "I do not know.", "finetuned": rows[1]["output"]},
                                      "preference": "finetuned", "history_turns": 0, "ratings": {}}, {})
    # (base against preference: stage 4 judged finetuned:base and preference:finetuned, and a pair
    # a second source repeats is kept once)
    answers = {"base": rows[0]["base_model_response"], "preference": rows[0]["preference_model_response"]}
    assert answers["base"] != answers["preference"]
    save_chat_rating(run, responses, {"message": rows[0]["instruction"], "input": rows[0]["input"], "record_index": 0,
                                      "answers": answers, "preference": None, "history_turns": 0,
                                      "ratings": {"base": 5, "preference": 95}}, {"base": 5, "preference": 95})
    save_chat_rating(run, responses, {"message": "Name a colour.", "input": "", "record_index": None,
                                      "answers": {"finetuned": "Blue."}, "preference": None, "history_turns": 0,
                                      "ratings": {"finetuned": 90}}, {})
    save_chat_rating(run, responses, {"message": "Name a shape.", "input": "", "record_index": None,
                                      "answers": {"base": "A circle.", "finetuned": "(stopped)"}, "preference": "finetuned",
                                      "history_turns": 0, "ratings": {}}, {})
    return run, rows, answers


def test_pairs_from_a_runs_judge_and_chat_ratings_train_end_to_end(rated_run, tiny_trained_run, tmp_path):
    run, rows, answers = rated_run
    target = copy_run(tiny_trained_run, tmp_path / "from-run")
    args = ["--output-dir", str(target), "--from-run", str(run), "--max-steps", "1", "--batch-size", "2",
            "--val-fraction", "0"]
    refused = run_stage("part1b_preference_tuning.py", *args)  # every pair asks a test record of this run
    assert refused.returncode == 2 and "--keep-test-prompts" in refused.stderr
    assert not (target / "preference").exists() and not (target / ".stage1b.partial").exists()
    result = run_stage("part1b_preference_tuning.py", *args, "--keep-test-prompts")
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((target / "preference" / "training_summary.json").read_text())
    kinds = summary["pairs"]["by_source"]
    assert kinds.get("chat preference") == 1 and kinds.get("human ratings") == 1, kinds
    assert kinds.get("judge pairwise", 0) >= 1, (kinds, summary["pairs"]["skipped_judgements"])
    assert summary["pairs"]["test_prompts_kept"] and summary["pairs"]["n_test_prompts"] == summary["pairs"]["n_pairs"]
    tuned = json.loads((target / "preference" / "pairs" / "train.json").read_text())
    chat = next(p for p in tuned if p["source"]["kind"] == "chat preference")
    assert chat["chosen"] == rows[1]["output"] and chat["rejected"] == "I do not know."
    assert chat["source"]["file"] == str(run / "human_ratings.json") and chat["source"]["chosen_model"] == "finetuned"
    assert chat["source"]["record"] == 1 and chat["instruction"] == rows[1]["instruction"]
    assert summary["pairs"]["skipped_judgements"]["had no answer"] >= 1  # the stopped answer is no answer
    rated = next(p for p in tuned if p["source"]["kind"] == "human ratings")
    assert (rated["chosen"], rated["rejected"], rated["source"]["record"]) == (answers["preference"], answers["base"], 0)
    assert rated["source"]["ratings"] == {"preference": 95, "base": 5}
    judged = next(p for p in tuned if p["source"]["kind"] == "judge pairwise")
    row = json.loads((run / "judge_scores.json").read_text())["records"][judged["source"]["record"]]
    assert judged["chosen"] == row["responses"][judged["source"]["chosen_model"]]


def test_kto_learns_from_pairs_and_single_ratings(rated_run, tiny_trained_run, tmp_path):
    run, rows, _ = rated_run
    target = copy_run(tiny_trained_run, tmp_path / "kto")
    result = run_stage("part1b_preference_tuning.py", "--output-dir", str(target), "--method", "kto",
                       "--from-run", str(run), "--data", str(run / "pairs.json"), "--keep-test-prompts",
                       "--max-steps", "2", "--batch-size", "4", "--val-fraction", "0.25", "--eval-steps", "2")
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((target / "preference" / "training_summary.json").read_text())
    assert summary["method"]["trainer"] == "trl.KTOTrainer" and summary["method"]["loss_type"] == "kto"
    kinds = summary["pairs"]["by_source"]
    assert kinds["file"] > 0 and kinds["human rating"] == 2 and kinds["chat rating"] == 1, kinds
    splits = {name: json.loads((target / "preference" / "pairs" / f"{name}.json").read_text()) for name in ("train", "val")}
    items = splits["train"] + splits["val"]
    # each pair is two examples and each rating one, an answer with the same label once (a rating
    # can be half of a pair too)
    for name, split in splits.items():
        answers = {(p["instruction"], p["chosen"], True) for p in split if "chosen" in p} | {
            (p["instruction"], p["rejected"], False) for p in split if "chosen" in p} | {
            (p["instruction"], p["completion"], p["label"]) for p in split if "completion" in p}
        assert summary["pairs"]["examples"][name] == len(answers)
    colour = next(p for p in items if p["source"]["kind"] == "chat rating")
    assert (colour["instruction"], colour["completion"], colour["label"]) == ("Name a colour.", "Blue.", True)
    bad = next(p for p in items if p["source"]["kind"] == "human rating" and p["source"]["model"] == "base")
    assert bad["label"] is False and bad["completion"] == rows[0]["base_model_response"]
    before, after = summary["val_before"], summary["val_after"]
    assert before["margin"] == 0 and "kl" in after and after["step"] == 2


def test_a_killed_preference_run_resumes_its_trained_adapter(tiny_preference_run, tiny_trained_run, tmp_path):
    run, _ = tiny_preference_run
    target = copy_run(tiny_trained_run, tmp_path / "resume")
    command = [sys.executable, str(ROOT / "part1b_preference_tuning.py"), "--output-dir", str(target),
               "--data", str(run / "pairs.json"), "--max-steps", "4", "--batch-size", "4", "--val-fraction", "0.25",
               "--eval-steps", "2", "--lr", "5e-4"]
    kill_at_checkpoint(command, ROOT, target, 2, staged=".stage1b.partial/preference")
    checkpoint = target / ".stage1b.partial" / "preference" / "checkpoints" / "checkpoint-2"
    assert not (checkpoint / "ref").exists()  # only the policy is saved: transformers resumes it
    saved = load_file(checkpoint / "adapter_model.safetensors")
    resumed = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    summary = json.loads((target / "preference" / "training_summary.json").read_text())
    assert summary["resumed"] and summary["steps"] == 4 and [e["step"] for e in summary["val_curve"]] == [0, 2, 4]
    # its time is of the 2 steps it trained, not of all 4
    assert summary["steps_this_run"] == 2 and abs(2 * summary["seconds_per_step"] - summary["train_s"]) <= 0.1
    # The training went on from step 2's adapter, not from the SFT weights (the policy would then be
    # the reference again, and its DPO loss ln 2 exactly)
    assert summary["train_curve"][2]["step"] == 3 and abs(summary["train_curve"][2]["loss"] - math.log(2)) > 1e-4
    sft = load_file(tiny_trained_run / "finetuned" / "adapter_model.safetensors")
    assert any(not torch.equal(saved[name], sft[name]) for name in saved), "step 2's checkpoint holds the SFT weights"


def test_stage0_makes_pairs_by_rewriting_and_by_sampling_the_sft_model_and_stage_1b_tunes_on_them(
        trained_run, tiny_trained_run, tmp_path, local_servers):
    # The real finetune: pairs-sample keeps answers that ended (random weights never end one), and
    # the judge scores them by their overlap with the expected output.
    run = copy_run(trained_run, tmp_path / "made")
    train = json.loads((run / "data" / "train.json").read_text())
    maker = type("Maker", (PairMaker,), {"unchanged": train[1]["instruction"]})
    server = local_servers(LocalServer, handler=maker)
    env = {**os.environ, "OPENAI_API_KEY": "sk-pair-maker-test"}  # (replies are redacted of the key)
    generator = ["--generator", "openai:maker", "--base-url", server.url, "--batch-size", "4", "--keep-dropped"]

    # LLMs-from-scratch's recipe: each answer rewritten more polite (chosen) or impolite (rejected)
    rewrite = run_stage("part0_generate_instruction_data.py", "--method", "pairs-rewrite", "--max-records", "10",
                        "--data", str(run / "data" / "train.json"), "--output-dir", str(tmp_path / "rewrite"),
                        *generator, env=env)
    assert rewrite.returncode == 0, rewrite.stderr[-3000:]
    pairs = json.loads((tmp_path / "rewrite" / "generated" / "pairs-rewrite.json").read_text())
    meta = json.loads((tmp_path / "rewrite" / "generated" / "pairs-rewrite.meta.json").read_text())
    assert meta["counts"]["dropped"] == {"rewrite is the answer unchanged": 1} and meta["counts"]["requests"] == 10
    dropped = json.loads((tmp_path / "rewrite" / "generated" / "pairs-rewrite.dropped.json").read_text())
    assert [d["record"] for d in dropped] == [1] and dropped[0]["reply"] == train[1]["output"]
    assert len(pairs) == 9 and 1 not in {p["source"]["record"] for p in pairs}
    assert {p["source"]["rewritten"] for p in pairs} == {"better", "worse"}  # --direction both: drawn per record
    for pair in pairs:
        record = train[pair["source"]["record"]]
        assert (pair["instruction"], pair["input"]) == (record["instruction"], record["input"])
        expected = ((f"Certainly! {record['output']}", record["output"]) if pair["source"]["rewritten"] == "better"
                    else (record["output"], f"Whatever. {record['output']}"))
        assert (pair["chosen"], pair["rejected"]) == expected

    # Best-of-n: the SFT model answers each record 3 times, the judge scores each different answer,
    # the best and the worst are the pair
    sample_args = ["part0_generate_instruction_data.py", "--method", "pairs-sample", "--samples", "3",
                   "--temperature", "1.3", "--max-new-tokens", "24", "--max-records", "8", "--min-score-gap", "1",
                   "--output-dir", str(run), *generator]
    sample = run_stage(*sample_args, env=env)
    assert sample.returncode == 0, sample.stderr[-3000:]
    made = run / "generated" / "pairs-sample.json"
    pairs = json.loads(made.read_text())
    meta = json.loads(made.with_name("pairs-sample.meta.json").read_text())
    dropped = json.loads(made.with_name("pairs-sample.dropped.json").read_text())
    assert meta["counts"]["records"] == 8 and meta["template_parity"]["checked"] and meta["temperature"] == 1.3
    assert len(pairs) + len(dropped) == 8 and pairs, meta["counts"]
    assert meta["counts"]["requests"] == sum(len(item["source"]["scores"]) for item in pairs) + sum(
        len(item["scores"]) for item in dropped)
    for pair in pairs:
        source, record = pair["source"], train[pair["source"]["record"]]
        assert pair["instruction"] == record["instruction"] and len(source["answers"]) == 3
        scored = source["scores"]
        assert set(scored) <= {a.strip() for a in source["answers"]} and source["scoring"] == "generate"
        assert scored == {a: round(100 * _overlap(a, record["output"])) for a in scored}  # what the judge said
        assert scored[pair["chosen"]] == max(scored.values()) and scored[pair["rejected"]] == min(scored.values())
        assert scored[pair["chosen"]] - scored[pair["rejected"]] >= 1
    again = run_stage(*sample_args, env=env)
    assert again.returncode == 0 and "stage 0 already finished" in again.stdout and json.loads(made.read_text()) == pairs
    # The sampling is seeded: done again from nothing, the same answers, scores and pairs
    redone = run_stage(*sample_args, "--overwrite", env=env)
    assert redone.returncode == 0 and json.loads(made.read_text()) == pairs

    # Stage 1b takes them with their provenance (plumbing: on the tiny run, whose split is the same)
    tiny = copy_run(tiny_trained_run, tmp_path / "tiny")
    tune = run_stage("part1b_preference_tuning.py", "--output-dir", str(tiny), "--data", str(made), "--max-steps", "1",
                     "--batch-size", "2", "--val-fraction", "0")
    assert tune.returncode == 0, tune.stderr[-3000:]
    summary = json.loads((tiny / "preference" / "training_summary.json").read_text())
    assert summary["pairs"]["by_source"] == {"file (sampled)": len(pairs)}
    tuned = json.loads((tiny / "preference" / "pairs" / "train.json").read_text())
    assert all(p["source"]["made"]["kind"] == "sampled" and p["source"]["file"] == str(made) for p in tuned)


def test_the_preference_adapter_exports_with_its_results_on_the_card_and_in_the_report(evaluated_run):
    """Stage 6 on stage 1b's adapter, both GGUF types (the default): its stage 2 column is the one
    compared, the Modelfile takes the smaller file, stages 3-4's results of the preference model go
    on the card, and the report gains the export section."""
    from instructkit.export.gguf_files import gguf_metadata

    run, _ = evaluated_run
    result = run_stage("part6_export.py", "--output-dir", str(run), "--model", "preference", "--parity-records", "4")
    assert result.returncode == 0, result.stderr[-3000:]
    parity = json.loads((run / "export" / "parity.json").read_text())
    assert parity["compared_with"] == "test_base_model.json, column preference"
    assert all(a["records"] == 4 for a in parity["artifacts"])
    name = f"{run.resolve().name}-preference"
    assert {a["artifact"] for a in parity["artifacts"]} >= {"merged/ (transformers)", f"{name}-f16.gguf (transformers)",
                                                           f"{name}-q8_0.gguf (transformers)"}
    merged = next(a for a in parity["artifacts"] if a["artifact"] == "merged/ (transformers)")
    assert merged["identical"] >= 3 and merged["prompt_ids_identical"] == 4
    for gguf_type, file_type in (("f16", 1), ("q8_0", 7)):  # llama.cpp's LlamaFileType
        metadata = gguf_metadata(run / "export" / f"{name}-{gguf_type}.gguf")
        assert (metadata["architecture"], metadata["file_type"]) == ("llama", file_type)
    assert f"FROM ./{name}-q8_0.gguf\n" in (run / "export" / "Modelfile").read_text()  # the smaller file
    card = (run / "export" / "README.md").read_text()
    assert "- dpo" in card and "| stage 3 (lm-evaluation-harness) | mmlu_philosophy | acc |" in card
    assert "| stage 4 (task metrics) | test split | ROUGE-L |" in card
    page = (run / "report.html").read_text()
    assert 'id="export-parity"' in page and f"{name}-q8_0.gguf (transformers)" in page
