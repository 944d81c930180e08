"""Comparing with any model: stage 2 answers with a third model (the tiny Llama again, but through
SmolLM2's chat template, as any chat model) beside the base and the finetune of the tiny Llama's
Alpaca run, reusing their finished answers (mechanics: tests/tiny_models.py); stage 4
scores every column, judges finetuned:smol and finetuned:output in both orders, and writes task
metrics for all three."""

import json
import re
import shutil
from http.server import ThreadingHTTPServer

import pytest

from conftest import JSONHandler, run_stage, stage2_args
from instructkit.errors import UserError
from instructkit.generate.compare import parse_compare


class PlainJudgeServer(ThreadingHTTPServer):
    """An OpenAI-compatible judge that reads nothing: 50 for a score, and for a pair whichever answer
    is longer (a judge with the length bias the length-controlled win rate is for)."""

    daemon_threads = True

    def __init__(self):
        super().__init__(("127.0.0.1", 0), PlainJudgeHandler)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/v1"


class PlainJudgeHandler(JSONHandler):
    def do_POST(self):
        prompt = json.loads(self.rfile.read(int(self.headers["Content-Length"])))["messages"][-1]["content"]
        if "### Response A:" in prompt:
            a, b = re.search(r"### Response A:\n(.*)\n\n### Response B:\n(.*)\n\nWhich", prompt, re.DOTALL).groups()
            content = "A" if len(a) > len(b) else "B" if len(b) > len(a) else "tie"
        else:
            content = "50"
        self.reply(200, {"id": "x", "object": "chat.completion", "created": 0, "model": "judge",
                         "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": content}}]})


@pytest.mark.fast
def test_compare_names_are_checked_all_at_once():
    with pytest.raises(UserError) as error:
        parse_compare(["smol", "base=gpt2", "Big=x", "a=x", "a=y"])
    message = str(error.value)
    assert "'smol': write NAME=MODEL" in message and "'base=gpt2': the name must" in message
    assert "'Big=x': the name must" in message and "the name a is given twice" in message


def test_a_third_model_answers_beside_base_and_finetuned_and_stage4_compares_all(tiny_trained_run, tiny_responses_dir,
                                                                               tiny_llama, tmp_path, local_servers):
    out = tmp_path / "out"
    out.mkdir()
    for name in ("test_base_model.json", "test_base_model.meta.json"):  # stage 2's finished base and finetuned answers
        shutil.copy(tiny_responses_dir / name, out / name)
    result = run_stage("part2_generate_test_responses.py", *stage2_args(tiny_trained_run, out), "--compare", f"smol={tiny_llama}")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "reusing the base model's 6 responses" in result.stdout and "reusing the finetuned model's 6 responses" in result.stdout
    rows = json.loads((out / "test_base_model.json").read_text())
    before = json.loads((tiny_responses_dir / "test_base_model.json").read_text())
    assert [{k: r[k] for k in before[0]} for r in rows] == before  # the two answered columns are kept as they were
    assert all(isinstance(r["smol_model_response"], str) and r["smol_model_response"] for r in rows)
    assert [r["smol_model_response"] for r in rows] != [r["base_model_response"] for r in rows]
    meta = json.loads((out / "test_base_model.meta.json").read_text())
    assert meta["prompt_styles"] == {"base": "alpaca", "finetuned": "alpaca", "smol": "chat"}
    assert meta["models"] == ["base", "finetuned", "smol"] and "compare_smol" in meta["inputs"]
    assert list(meta["timings"]) == ["smol"]  # only the new model was loaded and asked

    judge = local_servers(PlainJudgeServer)
    result = run_stage("part4_local_evaluation.py", "--output-dir", str(out), "--judge", "openai:judge",
                       "--judge-base-url", judge.url, "--pairwise", "finetuned:smol,finetuned:output")
    assert result.returncode == 0, result.stderr[-3000:]
    scores = json.loads((out / "judge_scores.json").read_text())
    assert set(scores["summary"]) == {"base", "finetuned", "smol", "finetuned_minus_base"}
    assert scores["summary"]["smol"]["mean"] == 50 and scores["summary"]["smol"]["n_scored"] == 6
    for row in scores["records"]:
        assert set(row["pairwise"]) == {"finetuned:smol", "finetuned:output"}
        assert set(row["pairwise"]["finetuned:smol"]) == {"outcome", "consistent", "finetuned_first", "smol_first"}
        # The longer answer wins in both orders, so no verdict flips (unless the two are equally long).
        a, b = row["responses"]["finetuned"], row["responses"]["smol"]
        if len(a) != len(b):
            assert row["pairwise"]["finetuned:smol"]["outcome"] == ("win" if len(a) > len(b) else "loss")
    pair = scores["pairwise"]["finetuned:smol"]
    assert (pair["a"], pair["b"], pair["n_judged"]) == ("finetuned", "smol", 6)
    assert set(pair["mean_response_words"]) == {"finetuned", "smol"} and "win_rate" in pair["length_controlled"]
    metrics = json.loads((out / "task_metrics.json").read_text())
    assert set(metrics["summary"]) == {"base", "finetuned", "smol"}
    page = (out / "report.html").read_text()
    assert 'id="judge-smol"' in page and "<th>smol response</th>" in page and 'id="metrics-smol"' in page
    assert 'id="pair-finetuned:smol"' in page and "finetuned vs output" in page
    # Two pairs judged: the matrix shows each model's win rate against each other, both ways.
    from bs4 import BeautifulSoup

    matrix = BeautifulSoup(page, "html.parser").find(id="pairwise-matrix")
    header = [th.get_text() for th in matrix.find("tr").find_all("th")[1:]]
    cells = {(tr.th.get_text(), model): td.get_text() for tr in matrix.find_all("tr")[1:]
             for model, td in zip(header, tr.find_all("td"))}
    assert cells[("finetuned", "smol")] == f"{pair['win_rate']:.3f}"
    assert cells[("smol", "finetuned")] == f"{1 - pair['win_rate']:.3f}" and cells[("smol", "output")] == "·"
