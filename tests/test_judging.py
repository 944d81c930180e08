"""Stage 4 on real judges: LitGPT and transformers run the embedded SmolLM2-135M-Instruct on stage 2's
real responses, the `openai` client talks to a real `litgpt serve` on 127.0.0.1, a person's ratings
come through stdin, and the report is opened in headless Chromium."""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import free_port, run_stage
from instructkit.evaluate.stats import bootstrap_ci, describe, length_controlled_win_rate, win_rate
from instructkit.judge.prompts import SCORE_PREFILL, parse_score, parse_verdict
from instructkit.judge.scoring import pairwise_outcome
from instructkit.models.references import EMBEDDED_JUDGE

LIMIT = 3
SECRET = "sk-instructkit-test-6f1d2c9a0b7e4f3d"


@pytest.mark.fast
@pytest.mark.parametrize("reply, score", [
    ("85", 85), ("Score: 85", 85), ("**85**", 85), ("85/100", 85), ("85 out of 100", 85), ("85.", 85),
    ("**Score:** 85", 85), ("Score: **85**", 85), ("## Score: 85", 85), ("Score: [[85]]", 85), ("`85`", 85),
    ("**Score:** 85\n\nThe response is correct.", 85), ("8,5", None),
    ("0", 0), ("100", 100), ("85\nThe response matches the expected output.", 85),
    ("Score: 10\n\nThe sentence has 10 words.", 10),
    ("between 70 and 80", None), ("70-80", None), ("8.5", None), ("Score: 99.999999999999", None),
    ("150", None), ("Score: 698", None), ("-5", None), ("I give it 85", None), ("", None), (None, None),
])
def test_score_parsing_is_strict(reply, score):
    parsed = parse_score(reply)
    assert parsed.value == score
    assert (parsed.how in ("exact", "first_line")) == (score is not None)


@pytest.mark.fast
def test_out_of_range_score_says_why():
    assert parse_score("Score: 698").how == "unparsed: 698 is outside 0-100"


@pytest.mark.fast
@pytest.mark.parametrize("reply, verdict", [
    ("A", "A"), ("[[B]]", "B"), ("Response A", "A"), ("tie.", "tie"), ("TIE", "tie"), ("Verdict: B", "B"),
    ("A or B", None), ("both", None), ("The answer is A.", None), ("", None),
])
def test_verdict_parsing_is_strict(reply, verdict):
    assert parse_verdict(reply).value == verdict


@pytest.mark.fast
@pytest.mark.parametrize("a_first, b_first, outcome, consistent", [
    ("A", "B", "win", True), ("B", "A", "loss", True), ("tie", "tie", "tie", True),
    ("A", "A", "tie", False), ("tie", "B", "tie", False), (None, "A", None, None),
])
def test_pairwise_verdict_that_flips_with_the_order_is_an_inconsistent_tie(a_first, b_first, outcome, consistent):
    """A's result against B, from the verdict with A shown first and the one with B shown first."""
    assert pairwise_outcome(a_first, b_first) == {"outcome": outcome, "consistent": consistent}


@pytest.mark.fast
def test_bootstrap_interval_covers_the_true_mean_at_about_the_stated_rate():
    # Skewed like judge scores: 100 * Beta(2, 5), true mean 100 * 2/7.
    rng = np.random.default_rng(1)
    true_mean, trials = 100 * 2 / 7, 300
    covered = 0
    for trial in range(trials):
        low, high = bootstrap_ci(100 * rng.beta(2, 5, size=40), seed=trial)
        covered += low <= true_mean <= high
    assert 0.90 <= covered / trials <= 0.98, covered / trials


@pytest.mark.fast
def test_identical_values_give_no_interval_and_small_win_rates_a_wilson_one():
    summary = describe([50, 50, 50, 50], seed=0)
    assert summary["ci95"] is None and summary["ci95_note"].startswith("degenerate: all 4 values are 50")
    assert describe([50, None], seed=0)["ci95"] is None and "ci95_note" not in describe([50, None], seed=0)
    five_wins = win_rate([1.0] * 5)
    assert five_wins["win_rate"] == 1.0 and five_wins["ci_method"] == "wilson"
    assert five_wins["ci95"] == pytest.approx((0.5655, 1.0), abs=1e-4)  # not [1.0, 1.0]
    # Wilson's interval for 7 wins of 10, as statsmodels' proportion_confint(7, 10, method="wilson") gives it.
    assert win_rate([1.0] * 7 + [0.0] * 3)["ci95"] == pytest.approx((0.3968, 0.8922), abs=1e-4)


# --- the transformers judge ---------------------------------------------------------------------

@pytest.fixture(scope="module")
def hf_judge():
    from instructkit.judge.judges import HFJudge

    return HFJudge(EMBEDDED_JUDGE)


def score_mass_one_at_a_time(model, tokenizer, prompt: str, score: int, tree) -> float:
    """P(the reply is the whole number `score`) from plain forward passes, no tree: the score's tokens,
    then a token that does not carry the number on, or a full stop and then no digit."""
    def forward(text: str):
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        with torch.inference_mode():
            logits = model(torch.tensor([ids])).logits[0].float()
        width = logits.shape[-1]
        pad = lambda mask: torch.cat([mask[:width], torch.zeros(max(0, width - len(mask)), dtype=torch.bool)])  # noqa: E731
        return ids, torch.softmax(logits, -1), pad(tree.continues_number), pad(tree.digit_start)

    prompt_len = len(tokenizer(prompt, add_special_tokens=False)["input_ids"])
    ids, probs, continues, digits = forward(f"{prompt} {score}")
    path = float(torch.tensor([probs[i - 1, ids[i]] for i in range(prompt_len, len(ids))]).prod())
    dotted, dot_probs, _, _ = forward(f"{prompt} {score}.")
    assert dotted[:len(ids)] == ids and len(dotted) == len(ids) + 1
    after_dot = float(dot_probs[len(ids) - 1, dotted[-1]]) * float(1 - dot_probs[-1][digits].sum())
    return path * (float(1 - probs[-1][continues].sum()) + after_dot)


def _score_prompts(judge, responses_dir, n: int) -> list[str]:
    from instructkit.judge.prompts import SYSTEM, score_prompt
    from instructkit.models.backends import user_turn

    records = json.loads((responses_dir / "test_base_model.json").read_text())[:n]
    return [judge.chat_text(user_turn(score_prompt(r, r["finetuned_model_response"]), SYSTEM), SCORE_PREFILL)
            for r in records]


def test_one_pass_score_tree_matches_one_score_at_a_time_on_a_left_padded_batch(hf_judge, responses_dir):
    from instructkit.judge.judges import ScoreTree

    prompts = _score_prompts(hf_judge, responses_dir, 3)
    ids = [hf_judge.tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
    assert len({len(i) for i in ids}) == 3, "prompts of different lengths, so the batch is left-padded"
    tree = ScoreTree(hf_judge.tokenizer, SCORE_PREFILL)
    batch = tree.score_masses(hf_judge.model, ids)
    for prompt, masses in zip(prompts, batch):
        assert 0 < sum(masses.values()) <= 1 + 1e-5
        for score in (0, 7, 10, 42, 85, 100):
            expected = score_mass_one_at_a_time(hf_judge.model, hf_judge.tokenizer, prompt, score, tree)
            assert masses[score] == pytest.approx(expected, rel=1e-3, abs=1e-7)


def test_a_decimal_is_no_score_in_either_path(hf_judge):
    from instructkit.judge.judges import ScoreTree

    tree = ScoreTree(hf_judge.tokenizer, SCORE_PREFILL)
    for text in ("5", ".5", ",5"):  # what follows "8" in "85", "8.5", "8,5": the number goes on
        assert tree.continues_number[hf_judge.tokenizer.convert_tokens_to_ids(hf_judge.tokenizer.tokenize(text))[0]]
    assert parse_score("8.5").value is None and parse_score("8,5").value is None and parse_score("85.").value == 85


def test_probability_scoring_with_an_output_layer_wider_than_the_tokenizer(judge_model, responses_dir, hf_judge):
    """Qwen2.5 and Phi-3 pad their vocabulary: a real model widened the same way still scores, and
    still matches one-at-a-time scoring."""
    from instructkit.judge.judges import ScoreTree
    from instructkit.models.loading import load_causal_lm

    wide = load_causal_lm(judge_model).eval()
    wide.resize_token_embeddings(len(hf_judge.tokenizer) + 64, mean_resizing=False)
    assert wide.get_output_embeddings().weight.shape[0] == len(hf_judge.tokenizer) + 64
    [prompt] = _score_prompts(hf_judge, responses_dir, 1)
    tree = ScoreTree(hf_judge.tokenizer, SCORE_PREFILL)
    [masses] = tree.score_masses(wide, [hf_judge.tokenizer(prompt, add_special_tokens=False)["input_ids"]])
    for score in (3, 85):
        assert masses[score] == pytest.approx(score_mass_one_at_a_time(wide, hf_judge.tokenizer, prompt, score, tree),
                                              rel=1e-3, abs=1e-7)


def test_probability_scoring_refuses_flash_attention_and_loads_sdpa(hf_judge):
    """A tree mask through FlashAttention 2 would be ignored (it takes no 4D mask); FA2 needs a CUDA
    GPU, so a model that claims it stands in for one here."""
    from types import SimpleNamespace

    from instructkit.errors import UserError
    from instructkit.judge.judges import ScoreTree, load_judge

    fa2_model = SimpleNamespace(config=SimpleNamespace(_attn_implementation="flash_attention_2"))
    with pytest.raises(UserError, match="needs attention that takes a custom mask"):
        ScoreTree(hf_judge.tokenizer, SCORE_PREFILL).score_masses(fa2_model, [[1, 2, 3]])
    judge = load_judge(f"hf:{EMBEDDED_JUDGE}", scoring="probability")
    assert judge.model.config._attn_implementation == "sdpa"


@pytest.mark.fast
def test_length_controlled_win_rate_takes_out_a_judge_that_prefers_longer_answers():
    import numpy as np

    rng = np.random.default_rng(0)
    longer_by = rng.normal(15, 30, size=300)  # the finetuned answers are longer on average (words)
    # The longer answer always wins: the raw win rate is far from 0.5, the length-controlled one near
    # it, and the summary says that length alone explains the verdicts.
    always = [float(d > 0) for d in longer_by]
    controlled = length_controlled_win_rate(always, longer_by)
    assert win_rate(always)["win_rate"] == pytest.approx(0.66, abs=0.01)
    assert abs(controlled["win_rate"] - 0.5) < 0.05 and "length alone explains" in controlled["note"]
    # A judge swayed by length only (no quality difference), with noise: the same, without the note.
    swayed = [float(u < 1 / (1 + np.exp(-2.5 * np.tanh(d / longer_by.std())))) for u, d in zip(rng.random(300), longer_by)]
    controlled = length_controlled_win_rate(swayed, longer_by)
    assert win_rate(swayed)["win_rate"] > 0.58 and abs(controlled["win_rate"] - 0.5) < 0.05 and "note" not in controlled
    # A better model and a judge blind to length: the win rate stands.
    better = [float(u < 0.75) for u in rng.random(300)]
    assert length_controlled_win_rate(better, longer_by)["win_rate"] == pytest.approx(win_rate(better)["win_rate"], abs=0.04)


# --- stage 4 end to end -------------------------------------------------------------------------

@pytest.fixture(scope="module")
def stage4_dir(trained_run, responses_dir, tmp_path_factory) -> Path:
    """Stages 1 and 2's artifacts (training summary, loss plot, responses) where stage 4 runs."""
    output_dir = tmp_path_factory.mktemp("stage4")
    shutil.copy(responses_dir / "test_base_model.json", output_dir)
    (output_dir / "finetuned").mkdir()
    for name in ("training_summary.json", "loss.png"):
        shutil.copy(trained_run / "finetuned" / name, output_dir / "finetuned")
    return output_dir


def stage4(output_dir: Path, *args: str, **kwargs) -> subprocess.CompletedProcess:
    return run_stage("part4_local_evaluation.py", "--input", str(output_dir / "test_base_model.json"),
                     "--output-dir", str(output_dir), "--limit", str(LIMIT), *args, **kwargs)


@pytest.fixture(scope="module")
def litgpt_scores(stage4_dir) -> dict:
    result = stage4(stage4_dir, "--judge", f"litgpt:{EMBEDDED_JUDGE}", "--pairwise")
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"== stage 4: judge litgpt:{EMBEDDED_JUDGE} (generate)" in result.stdout
    assert f"report: {stage4_dir / 'report.html'}" in result.stdout
    assert "== task metrics against the expected output" in result.stdout
    return json.loads((stage4_dir / "judge_scores.json").read_text())


def test_litgpt_judge_scores_every_response_strictly(litgpt_scores):
    assert litgpt_scores["judge"]["kind"] == "litgpt"
    assert len(litgpt_scores["records"]) == LIMIT
    for model in ("base", "finetuned"):
        entries = [row["scores"][model] for row in litgpt_scores["records"]]
        for entry in entries:
            assert entry["reply"].startswith(SCORE_PREFILL)  # the judge's own words are kept
            assert entry["score"] == parse_score(entry["reply"]).value  # and read strictly
            if entry["score"] is None:
                assert entry["retried"] and entry["parse"].startswith("unparsed")
        scored = [e["score"] for e in entries if e["score"] is not None]
        summary = litgpt_scores["summary"][model]
        assert (summary["n_scored"], summary["n_total"]) == (len(scored), LIMIT)  # nulls are counted, not zeros
        assert summary["mean"] == (pytest.approx(np.mean(scored)) if scored else None)


def test_pairwise_asks_both_orders_and_counts_flips(litgpt_scores):
    for row in litgpt_scores["records"]:
        pair = row["pairwise"]["finetuned:base"]  # --pairwise alone: the finetune's win rate against the base
        assert pair["base_first"]["reply"].startswith("Verdict:")
        assert {k: pair[k] for k in ("outcome", "consistent")} == pairwise_outcome(
            pair["finetuned_first"]["value"], pair["base_first"]["value"])
    summary = litgpt_scores["pairwise"]["finetuned:base"]
    assert (summary["a"], summary["b"]) == ("finetuned", "base")
    assert summary["wins"] + summary["ties"] + summary["losses"] == summary["n_judged"]
    if summary["n_judged"]:
        assert summary["flip_rate"] == pytest.approx(summary["inconsistent"] / summary["n_judged"], abs=1e-4)
    assert set(summary["mean_response_words"]) == {"base", "finetuned"} and "longer" in summary["note"]
    assert set(summary["length_controlled"]) >= {"win_rate", "method"}


def test_rerun_keeps_the_finished_scores(stage4_dir, litgpt_scores):
    result = stage4(stage4_dir, "--judge", f"litgpt:{EMBEDDED_JUDGE}", "--pairwise")
    assert result.returncode == 0 and "stage 4 judging already finished" in result.stdout
    assert json.loads((stage4_dir / "judge_scores.json").read_text()) == litgpt_scores


def test_default_judge_scores_by_probability_and_agrees(stage4_dir, litgpt_scores, tmp_path):
    """No judge flags: the embedded judge through transformers, every response an expected score."""
    shutil.copy(stage4_dir / "test_base_model.json", tmp_path)
    result = stage4(tmp_path, "--compare-with", str(stage4_dir / "judge_scores.json"))
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"== stage 4: judge hf:{EMBEDDED_JUDGE} (probability)" in result.stdout
    scores = json.loads((tmp_path / "judge_scores.json").read_text())
    meta = json.loads((tmp_path / "judge_scores.meta.json").read_text())
    assert meta["precision"] in ("fp32", "bf16") and meta["precision_reason"]
    for row in scores["records"]:
        for entry in row["scores"].values():
            assert 0 <= entry["score"] <= 100 and 0 < entry["coverage"] <= 1
    assert scores["summary"]["base"]["n_scored"] == LIMIT
    assert scores["summary"]["finetuned_minus_base"]["n_pairs"] == LIMIT
    both = sum(row["scores"][m]["score"] is not None for row in litgpt_scores["records"] for m in ("base", "finetuned"))
    assert scores["agreement"]["n"] == both


def test_hf_judge_generates_replies(stage4_dir, tmp_path):
    shutil.copy(stage4_dir / "test_base_model.json", tmp_path)
    result = stage4(tmp_path, "--scoring", "generate", "--limit", "2")
    assert result.returncode == 0, result.stderr[-3000:]
    rows = json.loads((tmp_path / "judge_scores.json").read_text())["records"]
    assert len(rows) == 2 and all(r["scores"][m]["reply"].startswith(SCORE_PREFILL) for r in rows for m in r["scores"])


def test_probability_scoring_needs_a_transformers_judge(stage4_dir, tmp_path):
    result = stage4(stage4_dir, "--judge", f"litgpt:{EMBEDDED_JUDGE}", "--scoring", "probability",
                    "--output-dir", str(tmp_path))
    assert result.returncode == 2 and "--scoring probability reads the judge's token probabilities" in result.stderr


def test_bad_responses_file_names_file_record_and_field(stage4_dir, tmp_path):
    rows = json.loads((stage4_dir / "test_base_model.json").read_text())
    del rows[1]["finetuned_model_response"]
    bad = tmp_path / "responses.json"
    bad.write_text(json.dumps(rows))
    result = run_stage("part4_local_evaluation.py", "--input", str(bad), "--output-dir", str(tmp_path / "out"))
    assert result.returncode == 2
    assert f"{bad}: record 1: missing field 'finetuned_model_response'" in result.stderr
    assert not (tmp_path / "out" / "judge_scores.json").exists()


# --- an OpenAI-compatible server ----------------------------------------------------------------

@pytest.fixture(scope="module")
def litgpt_server(tmp_path_factory):
    """`litgpt serve` with its OpenAI spec, on the embedded judge's LitGPT checkpoint."""
    from instructkit.judge.judges import litgpt_checkpoint

    port = free_port()
    log = tmp_path_factory.mktemp("server") / "litgpt_serve.log"
    command = [str(Path(sys.executable).parent / "litgpt"), "serve", str(litgpt_checkpoint(EMBEDDED_JUDGE)),
               "--openai_spec", "true", "--port", str(port), "--accelerator", "cpu", "--max_new_tokens", "16"]
    with open(log, "w") as out:
        server = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.time() + 300
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as reply:
                    if reply.status == 200:
                        break
            except OSError:
                pass
            assert server.poll() is None and time.time() < deadline, log.read_text()[-3000:]
            time.sleep(1)
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=60)


def test_openai_judge_against_a_real_server_never_leaks_the_key(litgpt_server, stage4_dir, tmp_path):
    shutil.copy(stage4_dir / "test_base_model.json", tmp_path)
    result = stage4(tmp_path, "--judge", "openai:smollm2", "--judge-base-url", litgpt_server, "--limit", "2",
                    "--concurrency", "2", env={**os.environ, "OPENAI_API_KEY": SECRET})
    assert result.returncode == 0, result.stderr[-3000:]
    scores = json.loads((tmp_path / "judge_scores.json").read_text())
    assert scores["judge"] == {"kind": "openai", "model": "smollm2", "base_url": litgpt_server,
                               "scoring": "generate", "seed": 0}
    for row in scores["records"]:
        for entry in row["scores"].values():
            assert "error" not in entry and isinstance(entry["reply"], str)  # the server answered every request
            assert entry["score"] == parse_score(entry["reply"]).value
    assert SECRET not in result.stdout + result.stderr
    for path in tmp_path.rglob("*"):
        if path.is_file():
            assert SECRET.encode() not in path.read_bytes(), path


def test_openai_judge_needs_a_key_for_the_official_api(stage4_dir, tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "OPENAI_API_KEY"}
    result = stage4(stage4_dir, "--judge", "openai:gpt-4o-mini", "--output-dir", str(tmp_path), env=env)
    assert result.returncode == 2 and "OPENAI_API_KEY" in result.stderr


# --- a person's ratings -------------------------------------------------------------------------

def test_human_ratings_are_blind_saved_as_given_and_resumable(stage4_dir, litgpt_scores):
    first = stage4(stage4_dir, "--human", input="70\nnot a number\ns\nq\n")
    assert first.returncode == 0, first.stderr[-3000:]
    assert "please type a whole number from 0 to 100" in first.stdout
    shown = first.stdout.split("===== response", 1)[1].rsplit("human ratings:", 1)[0]
    headers = re.findall(r"^(?:=====|---) .*$", shown, flags=re.MULTILINE)
    assert headers and not any("base" in h or "finetuned" in h for h in headers)  # the model stays hidden
    saved = json.loads((stage4_dir / "human_ratings.json").read_text())["ratings"]
    assert [r["rating"] for r in saved] == [70]

    second = stage4(stage4_dir, "--human", input="40\n")  # end of input saves and stops
    assert second.returncode == 0 and "1 of 6 responses rated" in second.stdout
    saved = json.loads((stage4_dir / "human_ratings.json").read_text())["ratings"]
    assert [r["rating"] for r in saved] == [70, 40]
    assert len({(r["model"], r["index"]) for r in saved}) == 2


# --- the report ---------------------------------------------------------------------------------

def chromium_dom(url: str) -> str:
    browser = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    assert browser, "Chromium is not installed: `make test` installs Debian's chromium package"
    result = subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=5000",
                             "--dump-dom", url], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def test_report_opens_in_chromium_with_averages_and_one_row_per_record(stage4_dir, litgpt_scores):
    from bs4 import BeautifulSoup

    report = stage4_dir / "report.html"  # written by the stage 4 run behind litgpt_scores
    page = BeautifulSoup(chromium_dom(report.as_uri()), "html.parser")
    for model in ("base", "finetuned"):
        mean = litgpt_scores["summary"][model]["mean"]
        assert page.find(id=f"judge-{model}").get_text().find("n/a" if mean is None else f"{mean:.1f}") >= 0
    rows = page.find(id="records").tbody.find_all("tr")
    assert len(rows) == LIMIT
    assert [r.find_all("td")[2].get_text() for r in rows] == [r["output"] for r in litgpt_scores["records"]]
    assert "Stage 3 (benchmark) has not run here" in page.get_text()
    assert page.find("img", alt="training and validation loss")["src"].startswith("data:image/png;base64,")
    # The judge-free task metrics lead, above the judge's scores, with the numbers of task_metrics.json.
    metrics = json.loads((stage4_dir / "task_metrics.json").read_text())
    text = page.get_text()
    assert text.index("Task metrics (stage 4, no judge)") < text.index("Judge scores (stage 4)")
    for model in ("base", "finetuned"):
        cells = page.find(id=f"metrics-{model}").find_all("td")
        assert [c.get_text().split()[0] for c in cells] == [f"{metrics['summary'][model][m]['mean']:.1f}"
                                                            for m in ("exact_match", "rouge_l", "chrf", "bleu")]
    assert page.find(id="metrics-difference").find_all("td")[1].get_text().startswith(
        f"{metrics['finetuned_minus_base']['rouge_l']['mean']:+.1f}")
    # Error analysis: the records where the finetune lost most ROUGE-L against the base, worst first.
    changes = sorted((r["finetuned"]["rouge_l"] - r["base"]["rouge_l"], r["index"]) for r in metrics["records"]
                     if r["base"] and r["finetuned"])
    losses = [c for c in changes if c[0] < 0][:5]
    table = page.find(id="largest-losses")
    shown = [(float(tr.find_all("td")[-1].get_text()), int(tr.find_all("td")[0].get_text()))
             for tr in table.find_all("tr")[1:]] if table else []
    assert shown == [(pytest.approx(round(change, 1), abs=0.051), index) for change, index in losses]

    # Error analysis by kind of task (our default data names each record's category), worst change first.
    responses = json.loads((stage4_dir / "test_base_model.json").read_text())
    by_category: dict[str, list[dict]] = {}
    for row in metrics["records"]:
        by_category.setdefault(responses[row["index"]]["category"], []).append(row)
    shown_rows = page.find(id="categories").find_all("tr")[1:]
    assert len(shown_rows) == len(by_category)
    changes = []
    for tr in shown_rows:
        category = tr.th.get_text().split()[0]
        cells = [td.get_text().split()[0] for td in tr.find_all("td")]
        rows_of = by_category[category]
        assert cells[0] == f"{sum(r['base']['rouge_l'] for r in rows_of) / len(rows_of):.1f}"
        changes.append(sum(r["finetuned"]["rouge_l"] - r["base"]["rouge_l"] for r in rows_of) / len(rows_of))
    assert [round(c, 3) for c in changes] == sorted(round(c, 3) for c in changes)
    assert page.find("img", alt="finetuned minus base ROUGE-L per category")

    word = litgpt_scores["records"][0]["instruction"].split()[-1]
    expected = sum(word.lower() in r.get_text().lower() for r in rows)
    filtered = BeautifulSoup(chromium_dom(report.as_uri() + "#filter=" + word), "html.parser")
    visible = [r for r in filtered.find(id="records").tbody.find_all("tr") if not r.has_attr("hidden")]
    assert len(visible) == expected and filtered.find(id="shown").get_text() == str(expected)


@pytest.mark.fast
def test_report_shows_absent_stages_instead_of_failing(tmp_path):
    from instructkit.report.build import build_report

    page = build_report(tmp_path).read_text()
    for stage in ("Stage 1 (finetuning)", "Stage 3 (benchmark)", "Stage 2 (test responses)"):
        assert f"{stage} has not run here" in page
